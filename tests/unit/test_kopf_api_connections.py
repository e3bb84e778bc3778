"""A burst of requests through Kopf's API session opens a bounded number of connections (kopf_fixes)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import auth

from tenantstore import kopf_fixes

BURST = 100  # requests at once, more than the bound below
REQUESTS = 20  # the bound's part for requests, small for the test


@pytest.fixture
def kopf_session_module() -> Iterator[None]:
    original = auth.aiohttp
    yield
    auth.aiohttp = original


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A server that answers after 0.2 s and counts the connections requests came over."""
    seen = {"connections": 0}
    connections: set[object] = set()

    async def answer(request: web.Request) -> web.Response:
        connections.add(request.transport)
        seen["connections"] = len(connections)
        await asyncio.sleep(0.2)
        return web.json_response({"kind": "Status"})

    app = web.Application()
    app.router.add_route("PATCH", "/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def connections_of_a_burst(server: str, seen: dict[str, int]) -> int:
    """BURST requests at once through the session Kopf makes on login; the connections they opened."""
    context = auth.APIContext(kopf.ConnectionInfo(server=server))  # as Kopf makes its session on login
    try:
        async def one() -> None:
            async with context.session.patch(f"{server}/x", data="{}") as response:
                await response.read()
        await asyncio.gather(*(one() for _ in range(BURST)))
    finally:
        await context.session.close()
    return seen["connections"]


async def test_a_burst_waits_for_a_bounded_number_of_connections(
        kopf_session_module: None, api_server: tuple[str, dict[str, int]]) -> None:
    bound = kopf_fixes.bound_api_connections(["tenants-a", "tenants-b"], requests=REQUESTS)
    assert bound == REQUESTS + 2 * kopf_fixes.WATCH_STREAMS_PER_NAMESPACE
    assert await connections_of_a_burst(*api_server) == bound


async def test_namespace_patterns_leave_kopf_unbounded(
        kopf_session_module: None, api_server: tuple[str, dict[str, int]]) -> None:
    # Kopf then watches every namespace it finds: the streams cannot be counted, and a bound could starve them.
    assert kopf_fixes.bound_api_connections(["!isolated-*"], requests=REQUESTS) is None
    assert await connections_of_a_burst(*api_server) == BURST


def test_other_aiohttp_sessions_keep_their_own_limits(kopf_session_module: None) -> None:
    kopf_fixes.bound_api_connections([], requests=REQUESTS)
    assert aiohttp.TCPConnector is not auth.aiohttp.TCPConnector
    assert auth.aiohttp.ClientSession is aiohttp.ClientSession
