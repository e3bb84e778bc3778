"""Backends per StoreClass, built from the Secrets the class names and reused across reconciles."""
from __future__ import annotations

import dataclasses
import logging
import time

from tenantstore.backends import RelationalStore, Step, VectorStore
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.pinecone import PineconeClient, PineconeStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import StoreClassInvalid, StoreClassNotReady
from tenantstore.kube import Secrets
from tenantstore.models import StoreClass


@dataclasses.dataclass(frozen=True)
class Backends:
    server: PostgresServer
    relational: RelationalStore
    vector: VectorStore
    secret_extras: dict[str, str] = dataclasses.field(default_factory=dict)  # what the class adds to tenant Secrets


logger = logging.getLogger(__name__)

# How long a class's prerequisite check stands for the reconciles that rely on it.
PREFLIGHT_MAX_AGE_SECONDS = 30.0


class BackendRegistry:
    def __init__(self, secrets: Secrets):
        self.secrets = secrets
        self._servers: dict[tuple[str, str], PostgresServer] = {}
        self._pinecone: dict[tuple[str, str], PineconeClient] = {}
        self._class_keys: dict[str, tuple[tuple[str, str], tuple[str, str] | None]] = {}
        self._preflights: dict[tuple[str, int, tuple[str, str]], tuple[float, list[Step]]] = {}

    async def for_class(self, store_class: StoreClass) -> Backends:
        current = self._servers.get(self._class_keys.get(store_class.name, (("", ""), None))[0])
        # After a refused login the cached URI may be the old one of a rotation: read the Secret again.
        admin_uri = await self.secrets.value(store_class.admin_secret,
                                             fresh=current is not None and current.login_refused)
        key = (admin_uri, store_class.shared_database)
        server = self._servers.get(key)
        if server is None:
            server = PostgresServer(admin_uri, store_class.shared_database)
            self._servers[key] = server
        vector, extras, pinecone_key = await self._vector_store(store_class, server)
        await self._forget_rotated(store_class.name, key, pinecone_key)
        return Backends(server=server, relational=PostgresRelationalStore(server), vector=vector, secret_extras=extras)

    async def _forget_rotated(self, class_name: str, server_key: tuple[str, str],
                              pinecone_key: tuple[str, str] | None) -> None:
        """A rotated admin URI or API key: close what the old one opened, once no class uses it any more."""
        previous = self._class_keys.get(class_name)
        self._class_keys[class_name] = (server_key, pinecone_key)
        if previous is None or previous == (server_key, pinecone_key):
            return
        in_use = set(self._class_keys.values())
        old_server, old_pinecone = previous
        if old_server != server_key and all(keys[0] != old_server for keys in in_use):
            if (server := self._servers.pop(old_server, None)) is not None:
                logger.info("closing the connection pool of a rotated admin credential (%s)", class_name)
                await server.close()
        if old_pinecone is not None and old_pinecone != pinecone_key and all(keys[1] != old_pinecone
                                                                               for keys in in_use):
            if (client := self._pinecone.pop(old_pinecone, None)) is not None:
                await client.close()

    async def preflight(self, store_class: StoreClass, backends: Backends,
                        max_age: float = PREFLIGHT_MAX_AGE_SECONDS) -> list[Step]:
        """The class's missing prerequisites (empty when usable), checked at most every `max_age` seconds."""
        key = (store_class.name, store_class.generation, (backends.server.admin_uri, backends.server.shared_database))
        cached = self._preflights.get(key)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        problems = await backends.relational.preflight() + await backends.vector.preflight()
        self._preflights = {k: v for k, v in self._preflights.items() if k[0] != store_class.name}
        self._preflights[key] = (time.monotonic(), problems)
        return problems

    async def require_ready(self, store_class: StoreClass, backends: Backends) -> None:
        """Before anything is made for a new tenant: a class that cannot hold it gets nothing started."""
        problems = await self.preflight(store_class, backends)
        if problems:
            raise StoreClassNotReady(f"StoreClass {store_class.name} is not ready ({problems[0].reason}): "
                                     + "; ".join(problem.message for problem in problems))

    async def _vector_store(self, store_class: StoreClass, server: PostgresServer
                            ) -> tuple[VectorStore, dict[str, str], tuple[str, str] | None]:
        if store_class.vector_backend == "pgvector":
            return PgvectorStore(server), {}, None
        if store_class.vector_backend == "pinecone" and store_class.pinecone is not None:
            settings = store_class.pinecone
            api_key = await self.secrets.value(settings.api_key_secret)
            key = (api_key, settings.host)
            client = self._pinecone.get(key)
            if client is None:
                client = self._pinecone[key] = PineconeClient(api_key, settings.host)
            # Only when the class says so: a Pinecone key opens the whole project, every tenant's vectors.
            extras = {"pineconeApiKey": api_key} if settings.expose_api_key else {}
            return PineconeStore(client, server, settings), extras, key
        raise StoreClassInvalid(f"vector backend {store_class.vector_backend!r} is not available in this operator")

    async def close(self) -> None:
        for client in self._pinecone.values():
            await client.close()
        self._pinecone.clear()
        for server in self._servers.values():
            await server.close()
        self._servers.clear()
