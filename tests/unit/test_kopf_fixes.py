"""Start-up with thousands of TenantStores: dropping an index toggle wakes the waiting workers only once."""
from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from tenantstore.kopf_fixes import wake_index_waiters_only_on_change

WORKERS = 300


async def wakeups_until_all_indexed() -> int:
    """Kopf's start-up pattern: every worker drops the resource's toggle, then waits for all indexes."""
    checks = 0
    indexed = aiotoggles.ToggleSet(all)
    listing = await indexed.make_toggle(name="listing not finished")
    original_is_on = indexed.is_on

    def counting_is_on() -> bool:
        nonlocal checks
        checks += 1
        return original_is_on()

    indexed.is_on = counting_is_on  # type: ignore[method-assign]
    resource = await indexed.make_toggle(name="resource not indexed")

    async def worker() -> None:
        await indexed.drop_toggle(resource)
        await indexed.wait_for(True)

    workers = []
    for _ in range(WORKERS):  # the listing arrives over time: earlier workers are already waiting
        workers.append(asyncio.create_task(worker()))
        for _ in range(3):
            await asyncio.sleep(0)
    await indexed.drop_toggle(listing)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    return checks


def test_workers_all_resume_and_each_is_woken_a_bounded_number_of_times() -> None:
    wake_index_waiters_only_on_change()
    wake_index_waiters_only_on_change()  # idempotent
    checks = asyncio.run(wakeups_until_all_indexed())
    # Unpatched, each of the 300 drops woke every waiting worker: tens of thousands of checks.
    assert checks <= 4 * WORKERS
