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
from tenantstore_client import scopes as scoping
from tenantstore_client.closing import AsyncClosedOnExit, ClosedOnExit
from tenantstore_client.errors import ConfigurationError, InvalidRequest
from tenantstore_client.scopes import Scopes
from tenantstore_client.secret import Coordinates, GlobalReader, SecretReader
from tenantstore_client.telemetry import SEARCH, UPDATE, operation
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


def records(vectors: Sequence[Vector], scope: str | None, tenant_id: str) -> list[dict[str, Any]]:
    written_at = int(time.time())
    return [{"id": v.id, "values": [float(x) for x in v.values],
             "metadata": {**scoping.stamped(v.metadata, scope, tenant_id), checks.WRITTEN_AT: written_at}}
            for v in vectors]


def batches(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [items[start:start + UPSERT_BATCH] for start in range(0, len(items), UPSERT_BATCH)]


def without_written_at(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in scoping.visible(metadata).items() if key != checks.WRITTEN_AT}


def matches(answer: Any, include_values: bool) -> list[Match]:
    return [Match(id=m.id, score=float(m.score), metadata=without_written_at(m.metadata),
                  scope=scoping.scope_of(m.metadata), values=list(m.values) if include_values else None)
            for m in answer.matches]


def fetched(answer: Any, scopes: Sequence[str], tenant_id: str) -> dict[str, Vector]:
    return {vector_id: Vector(id=vector_id, values=list(v.values), metadata=without_written_at(v.metadata))
            for vector_id, v in answer.vectors.items() if scoping.in_scopes(v.metadata, scopes, tenant_id)}


def counted(stats: Any, namespace: str) -> int:
    """Pinecone's counts are eventually consistent: a count may lag writes by seconds."""
    summary = (stats.namespaces or {}).get(namespace or DEFAULT_NAMESPACE)
    return int(summary.vector_count) if summary is not None else 0


def query_request(coordinates: Coordinates, vector: Sequence[float], top_k: int, filter: Filter | None,
                  include_values: bool, scopes: Sequence[str]) -> dict[str, Any]:
    floats = checks.values(vector, coordinates, "query vector")
    checks.top_k(top_k)
    filters.check(filter)
    where = scoping.confined(filter, scopes, coordinates.tenant_id)
    return {"vector": floats, "top_k": top_k, "namespace": coordinates.namespace, "include_metadata": True,
            "include_values": include_values, **({"filter": dict(where)} if where else {})}


def delete_request(coordinates: Coordinates, ids: Iterable[str] | None, filter: Filter | None,
                   scopes: Sequence[str]) -> dict[str, Any]:
    """Pinecone deletes by ids or by a filter, never both: a scoped delete by ids is a fetch, then this."""
    checks.may_change(coordinates)
    if (ids is None) == (filter is None):
        raise InvalidRequest("delete takes ids or a filter (one of them)")
    if filter is not None:
        filters.check(filter)
        return {"filter": dict(scoping.confined(filter, scopes, coordinates.tenant_id) or filter),
                "namespace": coordinates.namespace}
    return {"ids": checks.ids(ids or ()), "namespace": coordinates.namespace}


class AsyncPineconeStore(AsyncClosedOnExit):
    def __init__(self, reader: SecretReader | GlobalReader, api_key: str | None = None):
        coordinates = reader.last_read
        self.reader, self.host, self.api_key = reader, coordinates.host, api_key
        self.client = AsyncPinecone(api_key=api_key_of(coordinates, api_key))
        self.index: Any = None
        self._global: AsyncPineconeStore | None = None

    async def _coordinates(self) -> Coordinates:
        if self.reader.stale:
            return await asyncio.to_thread(self.reader.refresh)
        return self.reader.last_read

    async def open(self) -> None:
        self.index = await self.client.index(host=self.host)

    async def close(self) -> None:
        if self._global is not None:
            await self._global.close()
        if self.index is not None:
            await self.index.close()
        await self.client.close()

    async def upsert(self, vectors: Iterable[Vector], scope: str | None = None) -> int:
        coordinates = await self._coordinates()
        scoped = scoping.single(scope)
        with operation(UPDATE, coordinates, scoped) as span:
            checks.may_write(coordinates)
            checked = checks.vectors(vectors, coordinates)
            for batch in batches(records(checked, scope, coordinates.tenant_id)):
                await self.index.upsert(vectors=batch, namespace=coordinates.namespace, show_progress=False)
            span.wrote(len(checked))
        return len(checked)

    async def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                    include_values: bool = False, scope: Scopes = None) -> list[Match]:
        coordinates = await self._coordinates()
        scoped = scoping.listed(scope)
        with operation(SEARCH, coordinates, scoped) as span:
            request = query_request(coordinates, vector, top_k, filter, include_values, scoped)
            found = matches(await self.index.query(**request), include_values)
            span.found(len(found))
        return found

    async def query_global(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                           include_values: bool = False) -> list[Match]:
        if self._global is None:
            self._global = AsyncPineconeStore(GlobalReader(self.reader), self.api_key)
            await self._global.open()
        return await self._global.query(vector, top_k, filter, include_values)

    async def fetch(self, ids: Iterable[str], scope: Scopes = None) -> dict[str, Vector]:
        wanted = checks.ids(ids)
        coordinates = await self._coordinates()
        answer = await self.index.fetch(ids=wanted, namespace=coordinates.namespace)
        return fetched(answer, scoping.listed(scope), coordinates.tenant_id)

    async def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None,
                     scope: Scopes = None) -> None:
        coordinates = await self._coordinates()
        scoped = scoping.listed(scope)
        with operation(UPDATE, coordinates, scoped):
            if scoped and ids is not None:
                ids = list(await self.fetch(ids, scoped)) or None
                if ids is None:
                    return
            await self.index.delete(**delete_request(coordinates, ids, filter, scoped))

    async def count(self) -> int:
        coordinates = await self._coordinates()
        return counted(await self.index.describe_index_stats(), coordinates.namespace)


class PineconeStore(ClosedOnExit):
    def __init__(self, reader: SecretReader | GlobalReader, api_key: str | None = None):
        coordinates = reader.last_read
        self.reader, self.host, self.api_key = reader, coordinates.host, api_key
        self.client = Pinecone(api_key=api_key_of(coordinates, api_key))
        self.index: Any = None
        self._global: PineconeStore | None = None

    def open(self) -> None:
        self.index = self.client.index(host=self.host)

    def close(self) -> None:
        if self._global is not None:
            self._global.close()
        if self.index is not None:
            self.index.close()

    def upsert(self, vectors: Iterable[Vector], scope: str | None = None) -> int:
        coordinates = self.reader.current()
        scoped = scoping.single(scope)
        with operation(UPDATE, coordinates, scoped) as span:
            checks.may_write(coordinates)
            checked = checks.vectors(vectors, coordinates)
            for batch in batches(records(checked, scope, coordinates.tenant_id)):
                self.index.upsert(vectors=batch, namespace=coordinates.namespace, show_progress=False)
            span.wrote(len(checked))
        return len(checked)

    def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
              include_values: bool = False, scope: Scopes = None) -> list[Match]:
        coordinates = self.reader.current()
        scoped = scoping.listed(scope)
        with operation(SEARCH, coordinates, scoped) as span:
            request = query_request(coordinates, vector, top_k, filter, include_values, scoped)
            found = matches(self.index.query(**request), include_values)
            span.found(len(found))
        return found

    def query_global(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                     include_values: bool = False) -> list[Match]:
        if self._global is None:
            self._global = PineconeStore(GlobalReader(self.reader), self.api_key)
            self._global.open()
        return self._global.query(vector, top_k, filter, include_values)

    def fetch(self, ids: Iterable[str], scope: Scopes = None) -> dict[str, Vector]:
        wanted = checks.ids(ids)
        coordinates = self.reader.current()
        answer = self.index.fetch(ids=wanted, namespace=coordinates.namespace)
        return fetched(answer, scoping.listed(scope), coordinates.tenant_id)

    def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None, scope: Scopes = None) -> None:
        coordinates = self.reader.current()
        scoped = scoping.listed(scope)
        with operation(UPDATE, coordinates, scoped):
            if scoped and ids is not None:
                ids = list(self.fetch(ids, scoped)) or None
                if ids is None:
                    return
            self.index.delete(**delete_request(coordinates, ids, filter, scoped))

    def count(self) -> int:
        return counted(self.index.describe_index_stats(), self.reader.current().namespace)
