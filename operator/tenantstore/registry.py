"""Backends per StoreClass, built from the Secrets the class names and reused across reconciles."""
from __future__ import annotations

import dataclasses

from tenantstore.backends import RelationalStore, VectorStore
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.pinecone import PineconeClient, PineconeStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import StoreClassInvalid
from tenantstore.kube import Secrets
from tenantstore.models import StoreClass


@dataclasses.dataclass(frozen=True)
class Backends:
    server: PostgresServer
    relational: RelationalStore
    vector: VectorStore
    secret_extras: dict[str, str] = dataclasses.field(default_factory=dict)  # what the class adds to tenant Secrets


class BackendRegistry:
    def __init__(self, secrets: Secrets):
        self.secrets = secrets
        self._servers: dict[tuple[str, str], PostgresServer] = {}
        self._pinecone: dict[tuple[str, str], PineconeClient] = {}

    async def for_class(self, store_class: StoreClass) -> Backends:
        admin_uri = await self.secrets.value(store_class.admin_secret)
        key = (admin_uri, store_class.shared_database)
        server = self._servers.get(key)
        if server is None:
            # A rotated admin Secret yields a new key; the old pool is closed at shutdown.
            server = self._servers[key] = PostgresServer(admin_uri, store_class.shared_database)
        vector, extras = await self._vector_store(store_class, server)
        return Backends(server=server, relational=PostgresRelationalStore(server), vector=vector, secret_extras=extras)

    async def _vector_store(self, store_class: StoreClass, server: PostgresServer
                            ) -> tuple[VectorStore, dict[str, str]]:
        if store_class.vector_backend == "pgvector":
            return PgvectorStore(server), {}
        if store_class.vector_backend == "pinecone" and store_class.pinecone is not None:
            settings = store_class.pinecone
            api_key = await self.secrets.value(settings.api_key_secret)
            key = (api_key, settings.host)
            client = self._pinecone.get(key)
            if client is None:
                # A rotated API key yields a new client; the old one is closed at shutdown.
                client = self._pinecone[key] = PineconeClient(api_key, settings.host)
            # Only when the class says so: a Pinecone key opens the whole project, every tenant's vectors.
            extras = {"pineconeApiKey": api_key} if settings.expose_api_key else {}
            return PineconeStore(client, server, settings), extras
        raise StoreClassInvalid(f"vector backend {store_class.vector_backend!r} is not available in this operator")

    async def close(self) -> None:
        for client in self._pinecone.values():
            await client.close()
        self._pinecone.clear()
        for server in self._servers.values():
            await server.close()
        self._servers.clear()
