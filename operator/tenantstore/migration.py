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
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from tenantstore.backends import Step, VectorPlacement, VectorRecord, VectorStore
from tenantstore.errors import ReconcileError
from tenantstore.api import Phase, Reason
from tenantstore.models import DesiredStore, RelationalIsolation, VectorIsolation

Report = Callable[[dict[str, Any]], Awaitable[None]]
SAMPLE_SIZE = 100
COUNT_SETTLE_SECONDS = 60.0
# Records per read of a resync: each read sorts the tenant's vectors by id (no index serves that order), so a
# pass with writes refused reads in few, large batches.
RESYNC_READ_SIZE = 5_000
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


@dataclasses.dataclass(frozen=True)
class VectorSide:
    """One end of a copy: the backend, the tenant as that side makes it, and where its vectors are."""

    vectors: VectorStore
    store: DesiredStore
    placement: VectorPlacement


Progress = Callable[[int, int, str | None], Awaitable[None]]  # (copied, total, last id)


class FreezeLimitReached(Exception):
    """A copy that would keep the tenant's writes refused longer than its class allows."""


async def move_vectors(vectors: VectorStore, move: Move, report: Report, batch_size: int
                       ) -> tuple[VectorPlacement, list[Step]]:
    """Copy, verify and cut over; returns the target placement. The caller deletes the source afterwards."""
    steps: list[Step] = []
    frozen_source = dataclasses.replace(move.source, writes_allowed=False)
    steps += await vectors.ensure_write_access(frozen_source, move.source_placement)
    target_placement, target_steps = await vectors.ensure(dataclasses.replace(move.target, writes_allowed=False))
    steps += target_steps
    started = False

    async def progress(copied: int, total: int, last_id: str | None) -> None:
        nonlocal started
        changes: dict[str, Any] = {"migration": move.record(COPYING, copied=copied, total=total, lastId=last_id)}
        await report(changes if started else {"phase": Phase.MIGRATING, **changes})
        started = True

    total = await copy_vectors(VectorSide(vectors, move.source, move.source_placement),
                               VectorSide(vectors, move.target, target_placement), move.resume_after, progress,
                               batch_size)
    steps.append(Step("VectorsCopied", f"{total} vectors copied from {describe(move.source_placement)} to "
                                       f"{describe(target_placement)} and verified"))
    return target_placement, steps


async def copy_vectors(source: VectorSide, target: VectorSide, resume_after: str | None, progress: Progress,
                       batch_size: int, deadline: float | None = None, verified: bool = True) -> int:
    """Copy every vector in id order (resuming after `resume_after`), then verify (unless not `verified`: a
    copy while the tenant still writes); returns how many there were.

    `deadline` (a time.time()): once it has passed, FreezeLimitReached is raised between batches."""
    total = await source.vectors.count(source.store, source.placement)
    after = resume_after
    copied = await target.vectors.count(target.store, target.placement) if resume_after else 0
    await progress(copied, total, after)
    while batch := await source.vectors.read_batch(source.store, source.placement, after, batch_size):
        if deadline is not None and time.time() > deadline:
            raise FreezeLimitReached(f"{copied} of {total} vectors were copied")
        await target.vectors.write_batch(target.store, target.placement, batch)
        after, copied = batch[-1].id, copied + len(batch)
        await progress(min(copied, total), total, after)
    if verified:
        await verify(source, target, total)
    return total


@dataclasses.dataclass
class Resynced:
    total: int = 0  # the source's records
    written: int = 0  # missing from the target, or different there
    deleted: int = 0  # in the target only


async def resync(source: VectorSide, target: VectorSide, batch_size: int, deadline: float | None = None,
                 read_size: int = RESYNC_READ_SIZE) -> Resynced:
    """Make the target hold exactly the source's records, writing only what differs: after a copy made while
    the tenant still wrote, this (with writes frozen) is all the freeze has to wait for. Both sides are read
    in id order, side by side; a batch written lands behind the target's read position."""
    done = Resynced()
    writes: list[VectorRecord] = []
    deletes: list[str] = []
    sources, targets = in_id_order(source, read_size), in_id_order(target, read_size)
    left, right = await anext(sources, None), await anext(targets, None)
    while left is not None or right is not None:
        if right is None or (left is not None and left.id < right.id):
            assert left is not None
            writes.append(left)
            done.total += 1
            left = await anext(sources, None)
        elif left is None or right.id < left.id:
            deletes.append(right.id)
            right = await anext(targets, None)
        else:
            if not same_records([left], [right]):
                writes.append(left)
            done.total += 1
            left, right = await anext(sources, None), await anext(targets, None)
        if len(writes) >= batch_size or len(deletes) >= batch_size:
            if deadline is not None and time.time() > deadline:
                raise FreezeLimitReached(f"{done.total} vectors were compared, {done.written} written again")
            await flush(target, writes, deletes, done)
    await flush(target, writes, deletes, done)
    return done


async def in_id_order(side: VectorSide, batch_size: int) -> AsyncIterator[VectorRecord]:
    after = None
    while batch := await side.vectors.read_batch(side.store, side.placement, after, batch_size):
        for record in batch:
            yield record
        after = batch[-1].id


async def flush(target: VectorSide, writes: list[VectorRecord], deletes: list[str], done: Resynced) -> None:
    if writes:
        await target.vectors.write_batch(target.store, target.placement, writes)
        done.written += len(writes)
        writes.clear()
    if deletes:
        await target.vectors.delete_ids(target.store, target.placement, deletes)
        done.deleted += len(deletes)
        deletes.clear()


async def verify(source: VectorSide, target: VectorSide, total: int) -> None:
    copied = await settled_count(target.vectors, target.store, target.placement, total)
    if copied != total:
        raise MigrationVerificationFailed(f"the target holds {copied} vectors, the source {total}; copying again")
    first_source = await source.vectors.read_batch(source.store, source.placement, None, SAMPLE_SIZE)
    first_target = await target.vectors.read_batch(target.store, target.placement, None, SAMPLE_SIZE)
    if not same_records(first_source, first_target):
        raise MigrationVerificationFailed("a sample of ids and values differs between source and target")


def same_records(left: Sequence[VectorRecord], right: Sequence[VectorRecord]) -> bool:
    """Equal ids and metadata, and values equal to float32 precision: backends keep vectors as float32 and
    may hand them back with more (or fewer) digits than they were written with."""
    return len(left) == len(right) and all(
        a.id == b.id and a.metadata == b.metadata and (a.values == b.values or len(a.values) == len(b.values) and all(
            math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a.values, b.values)))
        for a, b in zip(left, right))


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
