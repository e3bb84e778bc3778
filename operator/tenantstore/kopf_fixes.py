"""A work-around for Kopf behaviour that does not scale to thousands of TenantStores.

On start-up Kopf's watcher makes a "not indexed yet" toggle per listed object in one shared ToggleSet and
starts a worker per object; each worker indexes its object, drops its toggle and waits until the set is all
on. `ToggleSet.make_toggle` and `drop_toggle` wake every waiter on every call, so N objects wake N waiters
N times: a restart with 5,000 TenantStores spent ~180 s of CPU in asyncio wake-ups before resuming any
(bench/README.md). Waiters only wait for the set's aggregate state, so waking them only when that state
flips keeps the semantics and makes the start-up linear. The two methods below are Kopf's own plus that
check. A Kopf whose ToggleSet no longer looks like the one they copy is left alone, with a warning: slower
restarts, not a broken operator.
"""
from __future__ import annotations

import logging
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
