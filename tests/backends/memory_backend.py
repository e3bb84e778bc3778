"""A vector backend that keeps everything in memory, for tests.

It is what a new backend costs: its store, the pool's few primitives for its shared indexes, and its
registration, in one module. The shared contract suite (test_vector_contract.py) runs against it exactly as
against pgvector and Pinecone, through the same registry the operator uses.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tenantstore import pool
from tenantstore.backends import (NAMESPACE_CREATED, Drift, SecretValue, SharedIndex, Step, VectorPlacement,
                                  VectorRecord, VectorUsage, register_vector_backend)
from tenantstore.models import DesiredStore, VectorIsolation, dedicated_index_name, shared_index_name

Records = dict[str, VectorRecord]


@dataclasses.dataclass
class MemoryService:
    """The "vector service": shared indexes (name -> namespace -> records) and dedicated indexes."""

    shared: dict[str, dict[str, Records]] = dataclasses.field(default_factory=dict)
    dedicated: dict[str, Records] = dataclasses.field(default_factory=dict)
    placing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # the pool's lock, in process


class MemoryPool:
    def __init__(self, service: MemoryService):
        self.service = service

    def _group(self, store: DesiredStore) -> list[str]:
        prefix = f"shared-{store.dimension}-{store.metric.value}-"
        return [name for name in self.service.shared if name.startswith(prefix)]

    async def placement_of(self, store: DesiredStore) -> pool.PooledIndex | None:
        return next((self._index(name) for name in self._group(store)
                     if store.tenant_id in self.service.shared[name]), None)

    async def indexes(self, store: DesiredStore) -> list[pool.PooledIndex]:
        return [self._index(name) for name in self._group(store)]

    async def create_index(self, store: DesiredStore, number: int) -> pool.PooledIndex:
        name = shared_index_name(store.dimension, store.metric, number)
        self.service.shared[name] = {}
        return self._index(name)

    async def add_namespace(self, store: DesiredStore, index: pool.PooledIndex) -> list[Step]:
        self.service.shared[index.name][store.tenant_id] = {}
        return [Step(NAMESPACE_CREATED, f"namespace {store.tenant_id} placed in shared index {index.name}")]

    async def is_empty(self, index: pool.PooledIndex) -> bool:
        return not self.service.shared.get(index.name)

    async def drop_index(self, index: pool.PooledIndex) -> None:
        self.service.shared.pop(index.name, None)

    def _index(self, name: str) -> pool.PooledIndex:
        return pool.PooledIndex(number=int(name.rsplit("-", 1)[1]), name=name,
                                tenants=len(self.service.shared[name]), handle=name)


class MemoryStore:
    backend = "memory"

    def __init__(self, service: MemoryService):
        self.service = service

    # --- lifecycle ---

    async def ensure(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        if store.vector is VectorIsolation.NAMESPACE:
            async with self.service.placing:
                index, steps = await pool.place(MemoryPool(self.service), store)
            return VectorPlacement(self.backend, index.name, namespace=store.tenant_id), steps
        name = dedicated_index_name(store.tenant_id)
        steps = [] if name in self.service.dedicated else [Step("DedicatedIndexCreated", f"index {name} created")]
        self.service.dedicated.setdefault(name, {})
        return VectorPlacement(self.backend, name), steps

    async def ensure_write_access(self, store: DesiredStore, placement: VectorPlacement) -> list[Step]:
        return []

    async def teardown(self, store: DesiredStore) -> list[Step]:
        if store.vector is VectorIsolation.DEDICATED:
            gone = self.service.dedicated.pop(dedicated_index_name(store.tenant_id), None)
            return [] if gone is None else [Step("DedicatedIndexDeleted", "dedicated index deleted")]
        steps: list[Step] = []
        async with self.service.placing:
            sessions = MemoryPool(self.service)
            index = await sessions.placement_of(store)
            if index is not None:
                del self.service.shared[index.name][store.tenant_id]
                steps.append(Step("NamespaceDeleted", f"namespace {store.tenant_id} deleted from {index.name}"))
                if not store.shared_index_keep_empty:
                    steps += await pool.drop_if_empty(sessions, index)
        return steps

    async def residue(self, store: DesiredStore) -> list[str]:
        if store.vector is VectorIsolation.DEDICATED:
            name = dedicated_index_name(store.tenant_id)
            return [f"dedicated index {name}"] if name in self.service.dedicated else []
        placed = await MemoryPool(self.service).placement_of(store)
        return [f"namespace {store.tenant_id} in {placed.name}"] if placed else []

    async def preflight(self) -> list[Step]:
        return []

    async def verify(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, list[Drift]]:
        return {store.tenant_id: [Drift("NamespaceMissing", f"{placement.namespace or placement.index} is gone",
                                        holds_data=True)]
                for store, placement in tenants if self._records_or_none(placement) is None}

    async def probe_isolation(self, store: DesiredStore, placement: VectorPlacement) -> str | None:
        return None  # each namespace is a dict of its own

    # --- data ---

    def _records_or_none(self, placement: VectorPlacement) -> Records | None:
        if placement.namespace:
            return self.service.shared.get(placement.index, {}).get(placement.namespace)
        return self.service.dedicated.get(placement.index)

    def _records(self, store: DesiredStore, placement: VectorPlacement) -> Records:
        records = self._records_or_none(placement)
        if records is None:
            raise KeyError(f"{placement.index}/{placement.namespace} does not exist")
        return records

    async def count(self, store: DesiredStore, placement: VectorPlacement) -> int:
        return len(self._records(store, placement))

    async def read_batch(self, store: DesiredStore, placement: VectorPlacement, after_id: str | None,
                         limit: int) -> list[VectorRecord]:
        records = self._records(store, placement)
        return [records[key] for key in sorted(records) if after_id is None or key > after_id][:limit]

    async def write_batch(self, store: DesiredStore, placement: VectorPlacement,
                          records: Sequence[VectorRecord]) -> None:
        self._records(store, placement).update({record.id: record for record in records})

    async def delete_ids(self, store: DesiredStore, placement: VectorPlacement, ids: Sequence[str]) -> None:
        records = self._records(store, placement)
        for key in ids:
            records.pop(key, None)

    async def expire(self, store: DesiredStore, placement: VectorPlacement, written_before: datetime.datetime,
                     limit: int) -> int:
        # Like Pinecone: the time is the metadata's written_at (seconds since the epoch).
        records = self._records(store, placement)
        expired = [key for key, record in records.items()
                   if isinstance(record.metadata.get("written_at"), (int, float))
                   and record.metadata["written_at"] < written_before.timestamp()][:limit]
        for key in expired:
            del records[key]
        return len(expired)

    # --- measurement ---

    async def measure(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, VectorUsage]:
        return {store.tenant_id: VectorUsage(documents=len(records))
                for store, placement in tenants if (records := self._records_or_none(placement)) is not None}

    async def shared_pool(self) -> list[SharedIndex]:
        pool_view = []
        for name, namespaces in self.service.shared.items():
            _, dimension, metric, _ = name.split("-")
            pool_view.append(SharedIndex(name, int(dimension), metric, len(namespaces)))
        return sorted(pool_view, key=lambda index: (index.dimension, index.metric, index.name))

    async def probe_search(self, store: DesiredStore, placement: VectorPlacement, vector: Sequence[float],
                           top_k: int) -> float:
        started = time.perf_counter()
        self.nearest(placement, list(vector), top_k, store.metric.value)
        return time.perf_counter() - started

    # --- what the tenant sees (for the contract suite: the tenant's own query) ---

    def nearest(self, placement: VectorPlacement, vector: list[float], top_k: int, metric: str) -> list[str]:
        records = self._records_or_none(placement) or {}

        def distance(record: VectorRecord) -> float:
            if metric == "euclidean":
                return math.dist(record.values, vector)
            dot = sum(a * b for a, b in zip(record.values, vector))
            if metric == "dotproduct":
                return -dot
            return 1 - dot / (math.hypot(*record.values) * math.hypot(*vector))
        return [record.id for record in sorted(records.values(), key=distance)[:top_k]]


class MemoryBackend:
    def __init__(self) -> None:
        self.service = MemoryService()

    async def build(self, class_name: str, settings: Mapping[str, Any], server: Any,
                    secret_value: SecretValue) -> tuple[MemoryStore, dict[str, str]]:
        return MemoryStore(self.service), {}

    async def close(self) -> None:
        pass


register_vector_backend("memory", MemoryBackend)
