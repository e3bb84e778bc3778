"""Opening a tenant's store from its Secret: the one interface, whichever backend the Secret names."""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from tenantstore_client.scopes import Scopes
from tenantstore_client.secret import Backend, SecretReader, SecretSource, source_of
from tenantstore_client.types import Filter, Match, Vector

SecretLike = SecretSource | Mapping[str, str] | str | os.PathLike[str]


class TenantStore(Protocol):
    """A tenant's vectors. Every call is confined to the tenant's namespace or table, which the Secret names.

    `scope` (`scopes.user("alice")` is "user_alice", `scopes.project("q4")` "project_q4") confines a call further,
    to one user's or project's vectors inside the tenant's store; a query or fetch may name several. An unscoped
    call works on the whole of the tenant's store, every scope included."""

    def upsert(self, vectors: Iterable[Vector], scope: str | None = None) -> int:
        """Insert or replace vectors by id; the number written. ReadOnlyCredential, WritesBlocked."""

    def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
              include_values: bool = False, scope: Scopes = None) -> list[Match]:
        """The `top_k` nearest neighbours that pass `filter`, closest first."""

    def query_global(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                     include_values: bool = False) -> list[Match]:
        """The same search in the StoreClass's global index (read-only); ConfigurationError if it has none."""

    def fetch(self, ids: Iterable[str], scope: Scopes = None) -> dict[str, Vector]:
        """The vectors with these ids that exist (in the scopes, when named)."""

    def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None, scope: Scopes = None) -> None:
        """Delete by ids or by a metadata filter (allowed while writes are blocked). ReadOnlyCredential."""

    def count(self) -> int:
        """How many vectors the tenant has (on Pinecone, eventually consistent)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> TenantStore: ...

    def __exit__(self, *exception: object) -> None: ...


class AsyncTenantStore(Protocol):
    """TenantStore for asyncio: the same methods, awaited."""

    async def upsert(self, vectors: Iterable[Vector], scope: str | None = None) -> int: ...

    async def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                    include_values: bool = False, scope: Scopes = None) -> list[Match]: ...

    async def query_global(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                           include_values: bool = False) -> list[Match]: ...

    async def fetch(self, ids: Iterable[str], scope: Scopes = None) -> dict[str, Vector]: ...

    async def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None,
                     scope: Scopes = None) -> None: ...

    async def count(self) -> int: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> AsyncTenantStore: ...

    async def __aexit__(self, *exception: object) -> None: ...


def connect(secret: SecretLike, *, pool_size: int = 4, api_key: str | None = None,
            refresh_seconds: float = 5.0) -> TenantStore:
    """The tenant's store, open (`with connect(...) as store:` closes it). `secret`: the mounted Secret's
    directory, its data as a mapping, `Environment()`, or any SecretSource. `pool_size` bounds the connections (they count against the tenant's
    maxConnections quota); `api_key` is Pinecone's when the Secret does not carry it."""
    reader = SecretReader(source_of(secret), refresh_seconds)
    store: TenantStore
    if reader.last_read.backend is Backend.PGVECTOR:
        from tenantstore_client.pgvector import PgvectorStore
        store = PgvectorStore(reader, pool_size)
    else:
        from tenantstore_client.pinecone import PineconeStore
        store = PineconeStore(reader, api_key)
    store.open()
    return store


async def connect_async(secret: SecretLike, *, pool_size: int = 4, api_key: str | None = None,
                        refresh_seconds: float = 5.0) -> AsyncTenantStore:
    """connect() for asyncio: `async with await connect_async(...) as store:`, or close() it."""
    reader = await asyncio.to_thread(SecretReader, source_of(secret), refresh_seconds)
    store: AsyncTenantStore
    if reader.last_read.backend is Backend.PGVECTOR:
        from tenantstore_client.pgvector import AsyncPgvectorStore
        store = AsyncPgvectorStore(reader, pool_size)
    else:
        from tenantstore_client.pinecone import AsyncPineconeStore
        store = AsyncPineconeStore(reader, api_key)
    await store.open()
    return store
