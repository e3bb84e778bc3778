"""A work-around for Kopf behaviour that does not scale to thousands of TenantStores.

On start-up Kopf's watcher makes a "not indexed yet" toggle per listed object in one shared ToggleSet and
starts a worker per object; each worker indexes its object, drops its toggle and waits until the set is all
on. `ToggleSet.make_toggle` and `drop_toggle` wake every waiter on every call, so N objects wake N waiters
N times: a restart with 5,000 TenantStores spent ~180 s of CPU in asyncio wake-ups before resuming any
(bench/README.md). Waiters only wait for the set's aggregate state, so waking them only when that state
flips keeps the semantics and makes the start-up linear. The two methods below are Kopf's own plus that
check; `wake_waiters_only_on_change` refuses a Kopf whose ToggleSet no longer looks like the one they copy.
"""
from __future__ import annotations

from kopf._cogs.aiokits import aiotoggles

_PATCHED = "_tenantstore_wakes_only_on_change"


async def make_toggle(self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
                      ) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        was_on = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != was_on:
            self._condition.notify_all()
    return toggle


async def drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        was_on = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != was_on:
            self._condition.notify_all()


def wake_waiters_only_on_change() -> None:
    toggle_set = aiotoggles.ToggleSet
    if getattr(toggle_set.drop_toggle, _PATCHED, False):
        return
    probe = toggle_set(all)
    if not (hasattr(probe, "_toggles") and hasattr(probe, "_condition") and hasattr(probe, "is_on")):
        raise RuntimeError("kopf's ToggleSet changed: review tenantstore/kopf_fixes.py against it")
    for method in (make_toggle, drop_toggle):
        setattr(method, _PATCHED, True)
    toggle_set.make_toggle = make_toggle  # type: ignore[method-assign]
    toggle_set.drop_toggle = drop_toggle  # type: ignore[method-assign]
