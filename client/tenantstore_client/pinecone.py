"""The tenant's vectors in Pinecone: its namespace in a shared index, or its dedicated index, through the
official SDK.

Pinecone keys are per project, so Pinecone itself cannot hold a key to one namespace: this module is where the
boundary is kept. Every request carries the Secret's namespace (no method takes one); readOnly credentials and
a quota Block (`writesBlocked`) are refused here, before anything is sent.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tenantstore_client import checks, filters
from tenantstore_client.closing import AsyncClosedOnExit, ClosedOnExit
from tenantstore_client.errors import ConfigurationError, InvalidRequest
from tenantstore_client.secret import Coordinates, SecretReader
from tenantstore_client.types import Filter, Match, Vector

try:
    from pinecone import AsyncPinecone, Pinecone
except ImportError:  # the optional extra
    AsyncPinecone = Pinecone = None

UPSERT_BATCH = 1000  # Pinecone's limit per request
DEFAULT_NAMESPACE = "__default__"


def api_key_of(coordinates: Coordinates, api_key: str | None) -> str:
    key = api_key or coordinates.api_key or os.environ.get("PINECONE_API_KEY", "")
    if not key:
        raise ConfigurationError("no Pinecone API key: pass api_key, set PINECONE_API_KEY, or have the StoreClass "
                                 "write it to the Secret (spec.vector.pinecone.exposeApiKey)")
    if Pinecone is None:
        raise ConfigurationError("the Pinecone SDK is not installed: pip install 'tenantstore-client[pinecone]'")
    return key


def records(vectors: Sequence[Vector]) -> list[dict[str, Any]]:
    written_at = int(time.time())
    return [{"id": v.id, "values": [float(x) for x in v.values],
             "metadata": {**v.metadata, checks.WRITTEN_AT: written_at}} for v in vectors]


def batches(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [items[start:start + UPSERT_BATCH] for start in range(0, len(items), UPSERT_BATCH)]


def without_written_at(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (metadata or {}).items() if key != checks.WRITTEN_AT}


def matches(answer: Any, include_values: bool) -> list[Match]:
    return [Match(id=m.id, score=float(m.score), metadata=without_written_at(m.metadata),
                  values=list(m.values) if include_values else None) for m in answer.matches]


def fetched(answer: Any) -> dict[str, Vector]:
    return {vector_id: Vector(id=vector_id, values=list(v.values), metadata=without_written_at(v.metadata))
            for vector_id, v in answer.vectors.items()}


def counted(stats: Any, namespace: str) -> int:
    """Pinecone's counts are eventually consistent: a count may lag writes by seconds."""
    summary = (stats.namespaces or {}).get(namespace or DEFAULT_NAMESPACE)
    return int(summary.vector_count) if summary is not None else 0


def query_request(coordinates: Coordinates, vector: Sequence[float], top_k: int, filter: Filter | None,
                  include_values: bool) -> dict[str, Any]:
    floats = checks.values(vector, coordinates, "query vector")
    checks.top_k(top_k)
    filters.check(filter)
    return {"vector": floats, "top_k": top_k, "namespace": coordinates.namespace, "include_metadata": True,
            "include_values": include_values, **({"filter": dict(filter)} if filter else {})}


def delete_request(coordinates: Coordinates, ids: Iterable[str] | None, filter: Filter | None) -> dict[str, Any]:
    checks.may_change(coordinates)
    if (ids is None) == (filter is None):
        raise InvalidRequest("delete takes ids or a filter (one of them)")
    if filter is not None:
        filters.check(filter)
        return {"filter": dict(filter), "namespace": coordinates.namespace}
    return {"ids": checks.ids(ids or ()), "namespace": coordinates.namespace}


class AsyncPineconeStore(AsyncClosedOnExit):
    def __init__(self, reader: SecretReader, api_key: str | None = None):
        coordinates = reader.last_read
        self.reader, self.host = reader, coordinates.host
        self.client = AsyncPinecone(api_key=api_key_of(coordinates, api_key))
        self.index: Any = None

    async def _coordinates(self) -> Coordinates:
        if self.reader.stale:
            return await asyncio.to_thread(self.reader.refresh)
        return self.reader.last_read

    async def open(self) -> None:
        self.index = await self.client.index(host=self.host)

    async def close(self) -> None:
        if self.index is not None:
            await self.index.close()
        await self.client.close()

    async def upsert(self, vectors: Iterable[Vector]) -> int:
        coordinates = await self._coordinates()
        checks.may_write(coordinates)
        checked = checks.vectors(vectors, coordinates)
        for batch in batches(records(checked)):
            await self.index.upsert(vectors=batch, namespace=coordinates.namespace, show_progress=False)
        return len(checked)

    async def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                    include_values: bool = False) -> list[Match]:
        request = query_request(await self._coordinates(), vector, top_k, filter, include_values)
        return matches(await self.index.query(**request), include_values)

    async def fetch(self, ids: Iterable[str]) -> dict[str, Vector]:
        wanted = checks.ids(ids)
        coordinates = await self._coordinates()
        return fetched(await self.index.fetch(ids=wanted, namespace=coordinates.namespace))

    async def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None) -> None:
        await self.index.delete(**delete_request(await self._coordinates(), ids, filter))

    async def count(self) -> int:
        coordinates = await self._coordinates()
        return counted(await self.index.describe_index_stats(), coordinates.namespace)


class PineconeStore(ClosedOnExit):
    def __init__(self, reader: SecretReader, api_key: str | None = None):
        coordinates = reader.last_read
        self.reader, self.host = reader, coordinates.host
        self.client = Pinecone(api_key=api_key_of(coordinates, api_key))
        self.index: Any = None

    def open(self) -> None:
        self.index = self.client.index(host=self.host)

    def close(self) -> None:
        if self.index is not None:
            self.index.close()

    def upsert(self, vectors: Iterable[Vector]) -> int:
        coordinates = self.reader.current()
        checks.may_write(coordinates)
        checked = checks.vectors(vectors, coordinates)
        for batch in batches(records(checked)):
            self.index.upsert(vectors=batch, namespace=coordinates.namespace, show_progress=False)
        return len(checked)

    def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
              include_values: bool = False) -> list[Match]:
        request = query_request(self.reader.current(), vector, top_k, filter, include_values)
        return matches(self.index.query(**request), include_values)

    def fetch(self, ids: Iterable[str]) -> dict[str, Vector]:
        wanted = checks.ids(ids)
        return fetched(self.index.fetch(ids=wanted, namespace=self.reader.current().namespace))

    def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None) -> None:
        self.index.delete(**delete_request(self.reader.current(), ids, filter))

    def count(self) -> int:
        return counted(self.index.describe_index_stats(), self.reader.current().namespace)
