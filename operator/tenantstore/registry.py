"""Backends per StoreClass, built from the Secrets the class names and reused across reconciles.

Vector backends are found by name (`spec.vector.backend`) among those registered; the built-in ones
register when their modules are imported below.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import tenantstore.backends.pgvector  # noqa: F401 (registers pgvector)
import tenantstore.backends.pinecone  # noqa: F401 (registers pinecone)
from tenantstore.backends import VECTOR_BACKENDS, RelationalStore, Step, VectorBackend, VectorStore
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
        self._vector_backends: dict[str, VectorBackend] = {}
        self._server_of_class: dict[str, tuple[str, str]] = {}
        self._preflights: dict[tuple[str, int, tuple[str, str]], tuple[float, list[Step]]] = {}

    async def for_class(self, store_class: StoreClass) -> Backends:
        current = self._servers.get(self._server_of_class.get(store_class.name, ("", "")))
        # After a refused login the cached URI may be the old one of a rotation: read the Secret again.
        admin_uri = await self.secrets.value(store_class.admin_secret,
                                             fresh=current is not None and current.login_refused)
        key = (admin_uri, store_class.shared_database)
        server = self._servers.get(key)
        if server is None:
            server = PostgresServer(admin_uri, store_class.shared_database)
            self._servers[key] = server
        await self._forget_rotated(store_class.name, key)
        vector, extras = await self._vector_backend(store_class).build(
            store_class.name, store_class.vector_settings, server, self.secrets.value)
        return Backends(server=server, relational=PostgresRelationalStore(server), vector=vector, secret_extras=extras)

    def _vector_backend(self, store_class: StoreClass) -> VectorBackend:
        backend = self._vector_backends.get(store_class.vector_backend)
        if backend is None:
            factory = VECTOR_BACKENDS.get(store_class.vector_backend)
            if factory is None:
                raise StoreClassInvalid(f"vector backend {store_class.vector_backend!r} is not available in this "
                                        f"operator (known: {', '.join(sorted(VECTOR_BACKENDS))})")
            backend = self._vector_backends[store_class.vector_backend] = factory()
        return backend

    async def _forget_rotated(self, class_name: str, server_key: tuple[str, str]) -> None:
        """A rotated admin URI: close the old pool once no class uses it."""
        previous, self._server_of_class[class_name] = self._server_of_class.get(class_name), server_key
        if previous in (None, server_key) or previous in self._server_of_class.values():
            return
        if (server := self._servers.pop(previous, None)) is not None:
            logger.info("closing the connection pool of a rotated admin credential (%s)", class_name)
            await server.retire(self._servers[server_key])

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

    async def close(self) -> None:
        for backend in self._vector_backends.values():
            await backend.close()
        self._vector_backends.clear()
        for server in self._servers.values():
            await server.close()
        self._servers.clear()
