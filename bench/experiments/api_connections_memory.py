"""What a burst of API requests costs a client in memory, with aiohttp's connector unbounded (Kopf's) or bounded.

    python -m bench.experiments.api_connections_memory --requests 700 --limits 0,64

A local TLS server (its own process, a throw-away self-signed certificate) answers each PATCH after 0.5 s, as a
busy API server does; the client sends all requests at once and reports how much its RSS grew. bench/README.md
("Where the operator's memory goes") quotes its figures. Loopback only; it ends by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import ssl
import subprocess
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

BODY = json.dumps({"metadata": {"name": "t" * 40}, "spec": {"padding": "x" * 3000}})  # a TenantStore's size


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def serve(cert: Path, key: Path, ready: multiprocessing.Queue, seconds: float) -> None:  # type: ignore[type-arg]
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.5)
        return web.Response(text=BODY, content_type="application/json")

    async def run() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_route("PATCH", "/x", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context, backlog=4096)
        await site.start()
        ready.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]  # noqa: SLF001
        await asyncio.sleep(seconds)
        await runner.cleanup()

    asyncio.run(run())


async def burst(port: int, cert: Path, requests: int, limit: int) -> float:
    context = ssl.create_default_context(cafile=str(cert))
    before = rss_mb()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, ssl=context)) as session:
        async def one() -> None:
            async with session.patch(f"https://127.0.0.1:{port}/x", data=BODY) as response:
                await response.read()
        await asyncio.gather(*(one() for _ in range(requests)))
        return rss_mb() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=700)
    parser.add_argument("--limits", default="0,64", help="connector limits to try, 0 for none (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        ready: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        server = multiprocessing.Process(target=serve, args=(cert, key, ready, 300.0), daemon=True)
        server.start()
        try:
            port = ready.get(timeout=30)
            for limit in (int(value) for value in args.limits.split(",")):
                # A fresh process per limit: memory freed after a burst stays with the process that had it.
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    grown = pool.apply(_burst_in_process, (port, cert, args.requests, limit))
                print(f"{args.requests} requests at once, connector limit {limit or 'none'}: RSS +{grown:.0f} MB "
                      f"({1024 * grown / args.requests:.0f} KB per request)")
        finally:
            server.terminate()
            server.join()


def _burst_in_process(port: int, cert: Path, requests: int, limit: int) -> float:
    return asyncio.run(burst(port, cert, requests, limit))


if __name__ == "__main__":
    main()
