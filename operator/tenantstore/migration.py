"""Tier changes that move a tenant's vectors between a shared namespace and an index of its own.

The move is copy → verify → cut over → delete the source, recorded in status.migration at each step so an
operator killed anywhere resumes where it stopped: the copy restarts from the last recorded id and
upserts, so no vector is lost or duplicated; a cut-over recorded before the source is deleted makes the
next run finish the deletion instead of copying again. Tenant writes are refused on both sides while the
copy runs, so nothing written meanwhile is left behind.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tenantstore.backends import Step, VectorPlacement, VectorStore
from tenantstore.errors import ReconcileError
from tenantstore.api import Phase, Reason
from tenantstore.models import DesiredStore, RelationalIsolation, VectorIsolation

Report = Callable[[dict[str, Any]], Awaitable[None]]
SAMPLE_SIZE = 100
COUNT_SETTLE_SECONDS = 60.0
COPYING, SOURCE_PENDING_DELETION = "Copying", "SourcePendingDeletion"


class MigrationVerificationFailed(ReconcileError):
    reason = Reason.MIGRATION_VERIFICATION_FAILED
    retry_after = 30.0


@dataclasses.dataclass(frozen=True)
class Move:
    source: DesiredStore
    source_placement: VectorPlacement
    target: DesiredStore
    resume_after: str | None

    def record(self, state: str, **extra: Any) -> dict[str, Any]:
        return {"from": self.source.vector.value, "to": self.target.vector.value, "state": state,
                "source": self.source_placement.to_status(), **extra}


def pending_move(store: DesiredStore, status: Mapping[str, Any],
                 source_relational: RelationalIsolation | None = None) -> Move | None:
    """The move this reconcile must make or finish, from what status says was made; None when in place.

    `source_relational`: where the source's relational data still is, when that moves too (a dedicated
    pgvector table lives in the tenant's schema or database)."""
    recorded = status.get("migration") or {}
    placement = VectorPlacement.from_status(status.get("vectorStore"))
    store_as_it_was = dataclasses.replace(store, relational=source_relational) if source_relational else store
    if recorded.get("state") in (COPYING, SOURCE_PENDING_DELETION):
        source = dataclasses.replace(store_as_it_was, vector=VectorIsolation(recorded["from"]))
        return Move(source, VectorPlacement.from_status(recorded["source"]) or placement,
                    dataclasses.replace(store, vector=VectorIsolation(recorded["to"])),
                    recorded.get("lastId") if recorded.get("state") == COPYING else None)
    current = (status.get("isolation") or {}).get("vector")
    if placement is None or not current or current == store.vector.value:
        return None
    return Move(dataclasses.replace(store_as_it_was, vector=VectorIsolation(current)), placement, store, None)


async def move_vectors(vectors: VectorStore, move: Move, report: Report, batch_size: int
                       ) -> tuple[VectorPlacement, list[Step]]:
    """Copy, verify and cut over; returns the target placement. The caller deletes the source afterwards."""
    steps: list[Step] = []
    frozen_source = dataclasses.replace(move.source, writes_allowed=False)
    steps += await vectors.ensure_write_access(frozen_source, move.source_placement)
    target_placement, target_steps = await vectors.ensure(dataclasses.replace(move.target, writes_allowed=False))
    steps += target_steps
    total = await vectors.count(move.source, move.source_placement)
    after, copied = move.resume_after, await vectors.count(move.target, target_placement) if move.resume_after else 0
    await report({"phase": Phase.MIGRATING, "migration": move.record(COPYING, copied=copied, total=total, lastId=after)})
    while batch := await vectors.read_batch(move.source, move.source_placement, after, batch_size):
        await vectors.write_batch(move.target, target_placement, batch)
        after, copied = batch[-1].id, copied + len(batch)
        await report({"migration": move.record(COPYING, copied=min(copied, total), total=total, lastId=after)})
    await verify(vectors, move, target_placement, total)
    steps.append(Step("VectorsCopied", f"{total} vectors copied from {describe(move.source_placement)} to "
                                       f"{describe(target_placement)} and verified"))
    return target_placement, steps


async def verify(vectors: VectorStore, move: Move, target_placement: VectorPlacement, total: int) -> None:
    copied = await settled_count(vectors, move.target, target_placement, total)
    if copied != total:
        raise MigrationVerificationFailed(f"the target holds {copied} vectors, the source {total}; copying again")
    first_source = await vectors.read_batch(move.source, move.source_placement, None, SAMPLE_SIZE)
    first_target = await vectors.read_batch(move.target, target_placement, None, SAMPLE_SIZE)
    if first_source != first_target:
        raise MigrationVerificationFailed("a sample of ids and values differs between source and target")


async def finish(vectors: VectorStore, move: Move) -> list[Step]:
    """After the cut-over is recorded: delete the source."""
    return await vectors.teardown(move.source)


async def settled_count(vectors: VectorStore, store: DesiredStore, placement: VectorPlacement, expected: int) -> int:
    """The count once it is `expected`, or after COUNT_SETTLE_SECONDS: some backends (Pinecone) count
    eventually, so a count just after writes gets a bounded time to catch up."""
    deadline = time.monotonic() + COUNT_SETTLE_SECONDS
    while (count := await vectors.count(store, placement)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
    return count


def describe(placement: VectorPlacement) -> str:
    return f"namespace {placement.namespace} of {placement.index}" if placement.namespace else placement.index
