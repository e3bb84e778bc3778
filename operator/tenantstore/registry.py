"""Backends per StoreClass, built from the Secrets the class names and reused across reconciles."""
from __future__ import annotations

import dataclasses

from tenantstore.backends import RelationalStore, VectorStore
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import StoreClassInvalid
from tenantstore.kube import Secrets
from tenantstore.models import StoreClass


@dataclasses.dataclass(frozen=True)
class Backends:
    server: PostgresServer
    relational: RelationalStore
    vector: VectorStore


class BackendRegistry:
    def __init__(self, secrets: Secrets):
        self.secrets = secrets
        self._servers: dict[tuple[str, str], PostgresServer] = {}

    async def for_class(self, store_class: StoreClass) -> Backends:
        admin_uri = await self.secrets.value(store_class.admin_secret)
        key = (admin_uri, store_class.shared_database)
        server = self._servers.get(key)
        if server is None:
            # A rotated admin Secret yields a new key; the old pool is closed at shutdown.
            server = self._servers[key] = PostgresServer(admin_uri, store_class.shared_database)
        return Backends(server=server, relational=PostgresRelationalStore(server),
                        vector=self._vector_store(store_class, server))

    @staticmethod
    def _vector_store(store_class: StoreClass, server: PostgresServer) -> VectorStore:
        if store_class.vector_backend == "pgvector":
            return PgvectorStore(server)
        raise StoreClassInvalid(f"vector backend {store_class.vector_backend!r} is not available in this operator")

    async def close(self) -> None:
        for server in self._servers.values():
            await server.close()
        self._servers.clear()
