"""A timer's pass ends with its timer: nothing of a stopped operator run goes on working."""
from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aioenums

from tenantstore.handlers import ends_with_its_timer


def test_a_pass_is_cancelled_when_its_timer_is_stopped_and_runs_whole_otherwise() -> None:
    progress: list[str] = []

    @ends_with_its_timer
    async def long_pass(steps: int, **_: object) -> None:
        for step in range(steps):
            await asyncio.sleep(0.01)
            progress.append(f"step {step}")

    async def scenario() -> None:
        setter: aioenums.FlagSetter = aioenums.FlagSetter()
        stopped = aioenums.AsyncFlagWaiter(setter)  # what Kopf gives an async timer
        await long_pass(stopped=stopped, steps=3)  # not stopped: the pass runs to its end
        assert progress == ["step 0", "step 1", "step 2"]
        progress.clear()
        running = asyncio.ensure_future(long_pass(stopped=stopped, steps=1000))
        while len(progress) < 2:
            await asyncio.sleep(0.005)
        setter.set()
        await asyncio.wait_for(running, timeout=5)  # returns once stopped, long before its 1,000 steps
        done = len(progress)
        await asyncio.sleep(0.05)
        assert len(progress) == done < 1000  # and nothing of it goes on afterwards
        await long_pass(steps=2)  # as a plain handler (no timer), it just runs
        assert len(progress) == done + 2

    asyncio.run(scenario())
