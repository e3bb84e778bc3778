"""The two small interfaces every backend implements.

A RelationalStore gives a tenant its own Postgres role and a schema or a database; a VectorStore gives it
a namespace in a shared index or an index of its own (its lifecycle, its data for moves, its measurement).
Reconcile talks only to these interfaces. A vector backend registers itself by name
(`register_vector_backend`), reads its own StoreClass settings and plugs its shared indexes into the one
pool (tenantstore.pool): a new backend is one new module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from tenantstore.insights import QueryInsights
from tenantstore.models import DesiredStore, GlobalIndex, SecretKeyRef


# The step of a tenant joining a shared index: reconcile then looks through the tenant's eyes (isolation probe).
NAMESPACE_CREATED = "NamespaceCreated"


@dataclasses.dataclass(frozen=True)
class Step:
    """One change a backend made; it becomes a Kubernetes Event."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Drift:
    """Something of a provisioned tenant that is no longer as the operator made it."""

    kind: str  # becomes the Ready reason while it lasts, e.g. SchemaMissing
    message: str
    holds_data: bool = False  # what is gone held the tenant's data: re-made, it is empty


@dataclasses.dataclass(frozen=True)
class RelationalPlacement:
    host: str
    port: int
    database: str
    schema: str
    role: str

    def to_status(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class VectorPlacement:
    backend: str
    index: str
    namespace: str = ""
    table: str = ""
    host: str = ""

    # Read and written for every tenant in every usage pass: spelled out, not through dataclasses' reflection.
    def to_status(self) -> dict[str, Any]:
        fields = {"backend": self.backend, "index": self.index, "namespace": self.namespace, "table": self.table,
                  "host": self.host}
        return {key: value for key, value in fields.items() if value}

    @classmethod
    def from_status(cls, raw: dict[str, Any] | None) -> VectorPlacement | None:
        if not raw or not raw.get("backend") or not raw.get("index"):
            return None
        return cls(backend=raw["backend"], index=raw["index"], namespace=raw.get("namespace", ""),
                   table=raw.get("table", ""), host=raw.get("host", ""))


@dataclasses.dataclass(frozen=True)
class GlobalPlacement:
    """Where a class's global index is: what tenant Secrets (read) and the writer Secret (write) point at."""

    backend: str
    name: str  # GlobalIndex.store_name, as Secrets and spans call it
    table: str = ""  # pgvector: "schema.table"
    database: str = ""  # pgvector: the database that holds it
    namespace: str = ""  # Pinecone: the reserved namespace
    host: str = ""  # Pinecone: the shared index's host
    index: str = ""  # Pinecone: the shared index's name

    def to_status(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value}


@dataclasses.dataclass(frozen=True)
class IoLogin:
    """A temporary login whose sessions act as the tenant's role (`role`): what export and restore run as."""

    host: str
    port: int
    user: str
    password: str
    database: str
    role: str

    def environment(self) -> dict[str, str]:
        """libpq's environment for the client tools: the password never appears on a command line."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGPASSWORD": self.password,
                "PGDATABASE": self.database, "PGOPTIONS": f"-c role={self.role}", "PGCONNECT_TIMEOUT": "10",
                "PGAPPNAME": "tenantstore-operator-io"}


@dataclasses.dataclass(frozen=True)
class LoginPlan:
    """Which of a credential's two logins its Secret names, with what password, and which stays open too."""

    current: str
    password: str
    password_is_new: bool  # the current login must be given `password`
    kept: str | None = None  # the previous login, open until a rotation's overlap ends


@dataclasses.dataclass(frozen=True)
class VectorRecord:
    id: str
    values: list[float]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RelationalUsage:
    storage_bytes: int = 0
    connections: int = 0
    daily_queries: int | None = None  # None where the server cannot tell (no pg_stat_statements)
    queries: QueryInsights | None = None  # likewise


@dataclasses.dataclass(frozen=True)
class VectorUsage:
    documents: int = 0
    storage_bytes: int = 0  # only what the relational figure does not already include


@dataclasses.dataclass(frozen=True)
class SharedIndex:
    """One shared index of a StoreClass's pool, as StoreClass.status.sharedIndexes reports it."""

    name: str
    dimension: int
    metric: str
    tenants: int

    def to_status(self, capacity: int) -> dict[str, Any]:
        return {"name": self.name, "dimension": self.dimension, "metric": self.metric, "tenants": self.tenants,
                "capacity": capacity}


class RelationalStore(Protocol):
    async def ensure(self, store: DesiredStore, password: str, password_is_new: bool
                     ) -> tuple[RelationalPlacement, list[Step]]:
        """Make the role (with this password when created or when the password is new) and its schema or database."""

    async def ensure_credentials(self, store: DesiredStore, plans: Mapping[str, LoginPlan]) -> list[Step]:
        """The store's scoped credentials' logins as its spec and `plans` (by credential name) say, no others."""
        ...

    async def server_identity(self) -> str:
        """Equal for two stores on the same server, whatever address reaches it."""

    async def claimed_by(self, store: DesiredStore) -> str | None:
        """The uid of the TenantStore that claimed this tenant's role; None when absent; a marker when retained."""

    async def teardown(self, store: DesiredStore) -> list[Step]:
        """End the tenant's sessions, drop its schema or database, then its role."""

    async def drop_data(self, store: DesiredStore) -> list[Step]:
        """Drop the tenant's schema or database (store.relational says which), keeping its role: the source
        of a move between them, once the target is verified and in use."""

    async def release(self, store: DesiredStore) -> list[Step]:
        """Keep everything but give up the claim, so a new TenantStore with this tenantId can adopt it."""

    async def residue(self, store: DesiredStore) -> list[str]:
        """What of the tenant still exists (empty after a complete teardown)."""

    async def preflight(self) -> list[Step]:
        """The StoreClass prerequisites this backend finds missing (reason, message); empty when usable."""

    async def ensure_write_access(self, store: DesiredStore) -> list[Step]:
        """Let the tenant write its schema or database, or (store.writes_allowed False) only read and delete."""

    async def measure(self, stores: Sequence[DesiredStore]) -> dict[str, RelationalUsage]:
        """Usage per tenant id, measured in a few queries for all of them."""

    async def verify(self, stores: Sequence[DesiredStore]) -> dict[str, list[Drift]]:
        """Drift per tenant id (absent: as made), checked in a few queries for all of them."""

    async def credentials_work(self, store: DesiredStore, password: str) -> bool | None:
        """Whether the tenant's role logs in with this password; None when it cannot be told now."""

    def io_login(self, store: DesiredStore) -> contextlib.AbstractAsyncContextManager[IoLogin]:
        """A temporary login acting as the tenant (exports and restores run as it), removed on exit."""


class VectorLifecycle(Protocol):
    """A tenant's namespace or dedicated index: made, kept as made, checked, removed.

    `store.vector` says which isolation to act on, so a move can ensure the target and tear down the source
    of one tenant by passing the same store with a different isolation.
    """

    backend: str

    async def ensure(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        """Place the tenant (namespace isolation) or make its own index (dedicated), and grant it access."""

    async def ensure_write_access(self, store: DesiredStore, placement: VectorPlacement) -> list[Step]:
        """Allow or refuse the tenant's vector writes (store.writes_allowed); reads and deletes stay."""

    async def teardown(self, store: DesiredStore) -> list[Step]:
        ...

    async def residue(self, store: DesiredStore) -> list[str]:
        """What of the tenant's vectors still exists (empty after a complete teardown)."""

    async def preflight(self) -> list[Step]:
        """The class's prerequisites this backend finds missing; empty when usable."""

    async def verify(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, list[Drift]]:
        """Drift per tenant id of its namespace or index, its policy and grants (absent: as made)."""

    async def probe_isolation(self, store: DesiredStore, placement: VectorPlacement) -> str | None:
        """Look as the tenant: a description of what it can see beyond its namespace, None when isolated."""

    def shared_credential(self) -> str | None:
        """What the class itself hands every tenant that reaches beyond its own store (its configuration, not
        something a probe finds), None when nothing."""


class VectorData(Protocol):
    """The tenant's records, as moves (and exports) read and write them with the operator's own access."""

    async def count(self, store: DesiredStore, placement: VectorPlacement) -> int:
        """Vectors the tenant has there (eventually consistent on some backends)."""

    async def read_batch(self, store: DesiredStore, placement: VectorPlacement, after_id: str | None,
                         limit: int) -> list[VectorRecord]:
        """Up to `limit` records with ids greater than `after_id`, in id order (resumable paging)."""

    async def write_batch(self, store: DesiredStore, placement: VectorPlacement,
                          records: Sequence[VectorRecord]) -> None:
        """Upsert: writing the same records twice leaves one copy of each."""

    async def delete_ids(self, store: DesiredStore, placement: VectorPlacement, ids: Sequence[str]) -> None:
        """Delete these records (ids that are not there are no error)."""


class VectorRetention(Protocol):
    """Deleting a tenant's vectors that outlived its retention (spec.retention.vectors.maxAge)."""

    async def expire(self, store: DesiredStore, placement: VectorPlacement, written_before: datetime.datetime,
                     limit: int) -> int:
        """Delete up to `limit` of the tenant's vectors written before then; how many went. pgvector keeps the
        time in a `written_at` column (added where missing, without rewriting a table); Pinecone in the
        `written_at` metadata field (seconds since the epoch) that the tenant's client writes."""


class VectorMeasurement(Protocol):
    """What a class's periodic jobs read, for all of its tenants at once."""

    async def measure(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, VectorUsage]:
        """Documents (and storage not counted by the relational store) per tenant id."""

    async def shared_pool(self) -> list[SharedIndex]:
        """Every shared index this backend holds for the class, with the tenants placed in each."""

    async def probe_search(self, store: DesiredStore, placement: VectorPlacement, vector: Sequence[float],
                           top_k: int) -> float:
        """Seconds one nearest-neighbour query of `top_k` takes on the tenant's own store, as the tenant would
        run it (pgvector: as its role; Pinecone: in its namespace). Not one of the tenant's daily queries."""


class GlobalStores(Protocol):
    """A StoreClass's global indexes (spec.globalStore): read by every tenant of the class, written by the platform."""

    async def ensure_global(self, index: GlobalIndex, writer_password: str, password_is_new: bool,
                            repair: bool = True) -> tuple[GlobalPlacement, dict[str, str], list[Step]]:
        """Make the global index and its writer credential as made; the writer Secret's data with it. `repair`
        False (driftPolicy Report): what is no longer as made is reported (a ReconcileError), not changed."""

    async def grant_global(self, store: DesiredStore, index: GlobalIndex
                           ) -> tuple[GlobalPlacement | None, list[Step]]:
        """Let the tenant read, and only read, the class's global index of its vectors' shape; where that index
        is (None until the class has made it)."""

    async def verify_global(self, index: GlobalIndex, stores: Sequence[DesiredStore]) -> dict[str, list[Drift]]:
        """Per tenant id, what keeps a tenant from reading the class's global index as granted (absent: reads)."""


class VectorStore(VectorLifecycle, VectorData, VectorRetention, VectorMeasurement, GlobalStores, Protocol):
    """Everything the operator asks of a vector backend."""


# How the registry reads a Secret a StoreClass names (the admin URI, an API key).
SecretValue = Callable[[SecretKeyRef], Awaitable[str]]


class VectorBackend(Protocol):
    """A vector backend as the registry knows it: it reads its own StoreClass settings (`spec.vector.<name>`)
    and builds the store a class uses. One per operator; it may keep clients across classes."""

    async def build(self, class_name: str, settings: Mapping[str, Any], server: Any,
                    secret_value: SecretValue) -> tuple[VectorStore, dict[str, str]]:
        """The class's store, and what tenant Secrets of the class carry besides the coordinates."""

    async def close(self) -> None:
        ...


VECTOR_BACKENDS: dict[str, Callable[[], VectorBackend]] = {}


def register_vector_backend(name: str, factory: Callable[[], VectorBackend]) -> None:
    """Make `spec.vector.backend: <name>` usable: a new backend is its module plus this call in it."""
    VECTOR_BACKENDS[name] = factory
