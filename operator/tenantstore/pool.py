"""The shared-index pool, once for every vector backend.

Tenants of a (dimension, metric) share indexes `shared-<dim>-<metric>-<n>`: a tenant already placed stays
where it is; a new one joins the oldest index with room (fewer than the class's capacity); when all are full
the next index is made; an index left empty is dropped only when the class does not keep empty ones. All of
it happens under one lock per (backend, dimension, metric): a row of the operator's bookkeeping, which no
tenant can take or hold, so parallel reconciles and operator replicas never overfill an index.

A backend plugs in with a `PoolSession`: the few primitives it alone knows (list its indexes, make one, add
a namespace, tell and drop an empty one), called while the lock is held.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol

import psycopg

from tenantstore.backends import Step, bookkeeping
from tenantstore.models import DesiredStore


@dataclasses.dataclass(frozen=True)
class PooledIndex:
    number: int  # the n of shared-<dim>-<metric>-<n>
    name: str
    tenants: int
    handle: Any = None  # what the backend needs to use the index (a table name, an index description)


class PoolSession(Protocol):
    async def placement_of(self, store: DesiredStore) -> PooledIndex | None:
        """The shared index that holds the tenant's namespace already, if one does."""

    async def indexes(self, store: DesiredStore) -> list[PooledIndex]:
        """The shared indexes of the tenant's dimension and metric, with the tenants each holds."""

    async def create_index(self, store: DesiredStore, number: int) -> PooledIndex:
        """Make shared index number `number` of the tenant's dimension and metric."""

    async def add_namespace(self, store: DesiredStore, index: PooledIndex) -> list[Step]:
        """Give the tenant its namespace in `index`, with whatever isolates it there."""

    async def is_empty(self, index: PooledIndex) -> bool:
        ...

    async def drop_index(self, index: PooledIndex) -> None:
        ...


@contextlib.asynccontextmanager
async def locked(conn: psycopg.AsyncConnection[Any], backend: str, dimension: int, metric: str) -> AsyncIterator[None]:
    """The pool's lock for (backend, dimension, metric), held until the block's transaction ends."""
    async with conn.transaction():
        await bookkeeping.hold_lock(conn, f"{backend}-placement:{dimension}:{metric}")
        yield


async def place(session: PoolSession, store: DesiredStore) -> tuple[PooledIndex, list[Step]]:
    """Where the tenant's namespace lives: where it already is, else the oldest index with room, else a new one.

    The caller holds the pool's lock for the session's whole life.
    """
    placed = await session.placement_of(store)
    if placed is not None:
        return placed, []
    steps: list[Step] = []
    indexes = sorted(await session.indexes(store), key=lambda index: index.number)
    chosen = next((index for index in indexes if index.tenants < store.shared_index_capacity), None)
    if chosen is None:
        chosen = await session.create_index(store, max((index.number for index in indexes), default=0) + 1)
        steps.append(Step("SharedIndexCreated", f"shared index {chosen.name} created"))
    return chosen, steps + await session.add_namespace(store, chosen)


async def drop_if_empty(session: PoolSession, index: PooledIndex) -> list[Step]:
    """Drop a shared index nobody is placed in (the class does not keep empty ones); the caller holds the lock."""
    if not await session.is_empty(index):
        return []
    await session.drop_index(index)
    return [Step("SharedIndexDropped", f"shared index {index.name} was empty and the class does not keep "
                                       f"empty indexes")]
