"""Start-up with thousands of TenantStores: Kopf's per-object index toggles wake the waiting workers once."""
from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from tenantstore.kopf_fixes import wake_waiters_only_on_change

OBJECTS = 300


async def checks_until_all_indexed() -> int:
    """Kopf's start-up: per listed object the watcher makes a toggle and starts a worker that drops it
    and waits until everything is indexed; the listing's own toggle goes when the listing ends."""
    checks = 0
    indexed = aiotoggles.ToggleSet(all)
    original_is_on = indexed.is_on

    def counting_is_on() -> bool:
        nonlocal checks
        checks += 1
        return original_is_on()

    indexed.is_on = counting_is_on  # type: ignore[method-assign]
    listing = await indexed.make_toggle(name="listing not finished")

    async def worker(toggle: aiotoggles.Toggle) -> None:
        await indexed.drop_toggle(toggle)
        await indexed.wait_for(True)

    workers = []
    for number in range(OBJECTS):  # the listing arrives over time: earlier workers are already waiting
        toggle = await indexed.make_toggle(name=f"object {number}")
        workers.append(asyncio.create_task(worker(toggle)))
        for _ in range(3):
            await asyncio.sleep(0)
    await indexed.drop_toggle(listing)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    return checks


def test_every_worker_resumes_and_wakes_a_bounded_number_of_times() -> None:
    assert wake_waiters_only_on_change()  # the installed Kopf is the one the fix was written for
    assert wake_waiters_only_on_change()  # idempotent
    checks = asyncio.run(checks_until_all_indexed())
    # Kopf as released woke every waiting worker for each object: ~90,000 checks for 300 objects.
    assert checks <= 10 * OBJECTS


def test_a_set_still_wakes_its_waiters_when_it_flips() -> None:
    wake_waiters_only_on_change()

    async def scenario() -> bool:
        paused = aiotoggles.ToggleSet(any)
        waiter = asyncio.create_task(paused.wait_for(True))
        await asyncio.sleep(0)
        blocker = await paused.make_toggle(True, name="conflict")  # off -> on: the waiter goes
        await asyncio.wait_for(waiter, timeout=5)
        resumed = asyncio.create_task(paused.wait_for(False))
        await asyncio.sleep(0)
        await paused.drop_toggle(blocker)  # on -> off
        await asyncio.wait_for(resumed, timeout=5)
        return paused.is_on()

    assert asyncio.run(scenario()) is False
