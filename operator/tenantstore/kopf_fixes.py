"""A work-around for Kopf behaviour that does not scale to thousands of TenantStores.

On start-up Kopf gives every listed object a worker; each worker, after indexing its object, drops the
resource's "not indexed yet" toggle and waits until every index is ready. `ToggleSet.drop_toggle` wakes all
waiters even when the toggle is already gone, so N workers wake N waiters each: a restart with 5,000
TenantStores spent 177 s of CPU in asyncio wake-ups before resuming any (bench/README.md). Waking the
waiters only when a toggle really leaves the set keeps the semantics and makes the start-up linear.
"""
from __future__ import annotations

from typing import Any

from kopf._cogs.aiokits import aiotoggles

_PATCHED = "_tenantstore_wakes_only_on_change"


def wake_index_waiters_only_on_change() -> None:
    toggle_set = aiotoggles.ToggleSet
    if getattr(toggle_set.drop_toggle, _PATCHED, False):
        return
    original = toggle_set.drop_toggle

    async def drop_toggle(self: aiotoggles.ToggleSet, toggle: Any) -> None:
        if toggle in self:  # an absent toggle changes nothing, so nobody needs waking
            await original(self, toggle)

    setattr(drop_toggle, _PATCHED, True)
    toggle_set.drop_toggle = drop_toggle  # type: ignore[method-assign]
