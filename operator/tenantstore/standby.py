"""`tenantstore run --leader-elect`: stand by until elected, then run the operator; signals and liveness.

The standby serves the liveness endpoint itself (it is alive, just not leading); the leader hands the port to
Kopf, whose endpoint also runs the operator's `@kopf.on.probe` checks.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web

from tenantstore import kube
from tenantstore.leader import ElectionConfig, LeaseLock, RunOperator, acquire, lead


class StandbyHealth:
    """The liveness endpoint while standing by: 200 and who we are, so probes pass on the standby."""

    def __init__(self, endpoint: str, identity: str, state: Mapping[str, Any] | None = None):
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme != "http":
            raise ValueError(f"unsupported liveness endpoint {endpoint!r}: only http:// is served")
        self.host, self.port, self.path = parts.hostname or "localhost", parts.port or 80, parts.path or "/"
        self.identity = identity
        self.state = dict(state) if state is not None else {"leader": False}
        self._runner: aiohttp.web.AppRunner | None = None

    async def _health(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text=json.dumps({**self.state, "identity": self.identity}),
                                    content_type="application/json")

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.get(self.path, self._health)])
        self._runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # frees the port for Kopf's own endpoint
            self._runner = None


@contextlib.asynccontextmanager
async def standby_health(endpoint: str | None, identity: str) -> AsyncIterator[None]:
    server = StandbyHealth(endpoint, identity) if endpoint else None
    if server is not None:
        await server.start()
    try:
        yield
    finally:
        if server is not None:
            await server.stop()


async def run_elected(config: ElectionConfig, run_operator: RunOperator, liveness: str | None) -> int:
    """Stand by, lead, and exit: the body of `tenantstore run --leader-elect`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # While leading, Kopf installs its own handlers; its exit then ends `lead` the same way.
        loop.add_signal_handler(signum, stop.set)
    api = await kube.api_client()
    try:
        lock = LeaseLock(api, config)
        async with standby_health(liveness, config.identity):
            if not await acquire(lock, stop):
                return 0
        return await lead(lock, run_operator, stop)
    finally:
        await api.close()
