"""Work-arounds for Kopf behaviour that does not scale to thousands of TenantStores.

Restarts (`wake_waiters_only_on_change`):

On start-up Kopf's watcher makes a "not indexed yet" toggle per listed object in one shared ToggleSet and
starts a worker per object; each worker indexes its object, drops its toggle and waits until the set is all
on. `ToggleSet.make_toggle` and `drop_toggle` wake every waiter on every call, so N objects wake N waiters
N times: a restart with 5,000 TenantStores spent ~180 s of CPU in asyncio wake-ups before resuming any
(bench/README.md). Waiters only wait for the set's aggregate state, so waking them only when that state
flips keeps the semantics and makes the start-up linear. The two methods below are Kopf's own plus that
check. A Kopf whose ToggleSet no longer looks like the one they copy is left alone, with a warning: slower
restarts, not a broken operator.

Memory (`bound_api_connections`): Kopf's own API session has no connection limit, so N requests in flight
open N TLS connections, ~325 KB each (asyncio's TLS buffer and OpenSSL's state; memory the process keeps
after the burst). 1,000 TenantStores deleted at once finish their handlers in a burst, each with a finalizer
PATCH: the operator went from 200 to 330 MB; with the session bounded, 207 MB at its peak and no slower
(bench/README.md). Past the bound a request waits for a free connection.
"""
from __future__ import annotations

import logging
import types
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)
_PATCHED = "_tenantstore_wakes_only_on_change"


async def make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
    from kopf._cogs.aiokits import aiotoggles  # noqa: PLC0415 (checked by wake_waiters_only_on_change)

    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        was_on = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != was_on:
            self._condition.notify_all()
    return toggle


async def drop_toggle(self: Any, toggle: Any) -> None:
    async with self._condition:
        was_on = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != was_on:
            self._condition.notify_all()


def wake_waiters_only_on_change() -> bool:
    """Install the fix; False (and a warning) when this Kopf's internals differ from what it was written for."""
    try:
        from kopf._cogs.aiokits import aiotoggles  # noqa: PLC0415
        toggle_set = aiotoggles.ToggleSet
        probe = toggle_set(all)
        fits = isinstance(getattr(probe, "_toggles", None), set) and hasattr(probe, "_condition") \
            and callable(getattr(probe, "is_on", None)) and hasattr(aiotoggles, "Toggle")
    except (ImportError, AttributeError, TypeError):
        fits = False
    if not fits:
        logger.warning("kopf's ToggleSet is not the one tenantstore/kopf_fixes.py was written for: restarts with "
                       "thousands of TenantStores will be slow")
        return False
    if not getattr(toggle_set.drop_toggle, _PATCHED, False):
        for method in (make_toggle, drop_toggle):
            setattr(method, _PATCHED, True)
        toggle_set.make_toggle = make_toggle
        toggle_set.drop_toggle = drop_toggle
    return True


# Connections for requests; each watch stream holds one more for as long as it runs (below).
API_REQUEST_CONNECTIONS = 64
# Per watched namespace at most: TenantStores, TenantStoreExports, Secrets, and the cluster's StoreClasses.
WATCH_STREAMS_PER_NAMESPACE = 4


def bound_api_connections(namespaces: Sequence[str], requests: int | None = None) -> int | None:
    """Bound the connections of the API sessions Kopf makes from now on; returns the bound.

    None (Kopf's session unbounded, as before) where the watch streams cannot be counted ahead: namespace
    patterns or exclusions, for which Kopf watches each namespace it finds, or a Kopf whose session is built
    otherwise than this was written for."""
    if any(char in pattern for pattern in namespaces for char in "*?[!"):
        logger.info("namespace patterns: Kopf's API connections are left unbounded (their watch streams cannot "
                    "be counted ahead)")
        return None
    try:
        import aiohttp  # noqa: PLC0415
        from kopf._cogs.clients import auth  # noqa: PLC0415
        fits = auth.aiohttp is aiohttp or isinstance(auth.aiohttp, types.SimpleNamespace)
    except (ImportError, AttributeError):
        fits = False
    if not fits:
        logger.warning("kopf's API session is not the one tenantstore/kopf_fixes.py was written for: its "
                       "connections stay unbounded (more memory in bursts)")
        return None
    requests = API_REQUEST_CONNECTIONS if requests is None else requests  # read now: a benchmark may set it
    bound = requests + WATCH_STREAMS_PER_NAMESPACE * max(1, len(namespaces))

    class BoundedConnector(aiohttp.TCPConnector):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "limit": bound})

    # Only Kopf's session module sees the bounded connector; other aiohttp users keep their own limits.
    auth.aiohttp = types.SimpleNamespace(**{**vars(aiohttp), "TCPConnector": BoundedConnector})
    return bound
