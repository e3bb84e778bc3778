"""VectorStore on Pinecone serverless indexes, through the official async SDK (API version 2026-07).

namespace isolation: the tenant's namespace (named after its tenantId) in a shared serverless index
`shared-<dim>-<metric>-<n>` of its dimension and metric. Indexes of a (dimension, metric) form a pool; a
tenant joins the first one with fewer than `capacity` namespaces, else the next index is created. The
decision is made by the shared pool (pool.py) under its lock on the class's Postgres, so parallel reconciles and
operator replicas never put more than `capacity` tenants in one index. Shared indexes hold many tenants'
data, so they too are created with deletion protection; an empty one is deleted only when the class does
not keep empty indexes.
dedicated isolation: the tenant's own serverless index `ts-<tenantId>`, deletion protection on while the
tenant exists, tagged with the tenant.

Pinecone API keys are project-wide: what separates tenants of a shared index is the namespace the operator
gives each, and the key itself stays with the operator unless the class says otherwise.

Errors: 429 and 5xx are retried with bounded exponential backoff (Retry-After honoured), then surface as
BackendUnavailable; 401 as StoreClassInvalid; 403 on creating an index or namespace (a plan limit) as
VectorQuotaExceeded; connection failures as BackendUnavailable.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pinecone import (ApiError, AsyncPinecone, ConflictError, ForbiddenError, NotFoundError, PineconeConnectionError,
                      PineconeError, PineconeTimeoutError, RateLimitError, RetryConfig, ServiceError, UnauthorizedError)

from tenantstore import pool
from tenantstore.backends import (NAMESPACE_CREATED, Drift, GlobalPlacement, SecretValue, SharedIndex, Step,
                                  VectorPlacement, VectorRecord, VectorUsage, register_vector_backend)
from tenantstore.backends.postgres import PostgresServer
from tenantstore.errors import (BackendUnavailable, ReconcileError, StoreClassInvalid, TenantIdConflict,
                                VectorQuotaExceeded)
from tenantstore.models import (DesiredStore, GlobalIndex, InvalidResource, SecretKeyRef, VectorIsolation,
                                dedicated_index_name, shared_index_name)

if TYPE_CHECKING:
    from pinecone.async_client.async_index import AsyncIndex

logger = logging.getLogger(__name__)

T = TypeVar("T")
SHARED_INDEX = re.compile(r"^shared-(?P<dimension>\d+)-(?P<metric>cosine|euclidean|dotproduct)-(?P<number>\d+)$")
MANAGED_BY = {"managed-by": "tenantstore"}
DEFAULT_NAMESPACE = "__default__"
# The class's global knowledge in the first shared index of its shape; tenant ids cannot hold '_', so no tenant's.
GLOBAL_NAMESPACE = "_global"
# The reserved schema field of a classic index, served by the vectors API (upsert, query, fetch, list).
VALUES_FIELD = "_values"
LIST_PAGE_MAX = 100  # list vector ids / list namespaces page size limit
FETCH_MAX_IDS = 100  # ids per fetch: they travel in the query string...
FETCH_MAX_ID_CHARS = 4000  # ...which servers cap in length
UPSERT_MAX_RECORDS = 1000
UPSERT_MAX_BYTES = 1_500_000  # below Pinecone's 2 MB per request, leaving room for the envelope
CURSOR_CACHE_SIZE = 256
# Retention: the metadata field (seconds since the epoch) that says when a vector was written, and how many
# ids one expiry call looks at before it stops (the next call continues from there).
WRITTEN_AT_FIELD = "written_at"
RETENTION_SCAN = 5_000


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long one Pinecone call may keep trying, and how long to wait for an index to change state."""

    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 20.0
    deadline: float = 60.0  # seconds for one call, retries included
    index_timeout: float = 300.0  # an index becoming Ready, or gone after delete
    poll_first: float = 0.1
    poll_max: float = 5.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with jitter, never shorter than the server's Retry-After."""
        ceiling = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)


class PineconeClient:
    """One API key and control-plane endpoint: the SDK's control-plane client plus one data-plane client per
    index host, reused across reconciles and closed with the registry."""

    def __init__(self, api_key: str, host: str = "", policy: RetryPolicy | None = None):
        self.policy = policy or RetryPolicy()
        self.api_key = api_key  # what the class's global-index writer Secret carries
        # The SDK's own control-plane retries are off so that `call` alone decides (and bounds) them.
        self.control = AsyncPinecone(api_key=api_key, host=host or None, retry_config=RetryConfig(max_retries=0))
        self._indexes: dict[str, AsyncIndex] = {}
        # (host, namespace, last id) -> the list page token that continues after it, for resumable paging.
        self.cursors: collections.OrderedDict[tuple[str, str, str], str] = collections.OrderedDict()
        self.retention_cursors: dict[tuple[str, str], str] = {}  # (host, namespace): where expiry continues

    async def index(self, host: str) -> AsyncIndex:
        if host not in self._indexes:
            index = await self.control.index(host=host)
            if host in self._indexes:  # another coroutine made one meanwhile
                await index.close()
            else:
                self._indexes[host] = index
        return self._indexes[host]

    async def forget(self, host: str) -> None:
        """Close the data-plane client of an index that was deleted."""
        if (index := self._indexes.pop(host, None)) is not None:
            await index.close()

    async def close(self) -> None:
        for index in self._indexes.values():
            await index.close()
        self._indexes.clear()
        await self.control.close()

    async def call(self, what: str, operation: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Run `operation(*args, **kwargs)`, one Pinecone request, retrying 429, 5xx and connection failures
        within the policy."""
        deadline = time.monotonic() + self.policy.deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                return await operation(*args, **kwargs)
            except UnauthorizedError as error:
                raise StoreClassInvalid(f"Pinecone rejected the API key while {what} (HTTP 401); check the Secret "
                                        f"named by spec.vector.pinecone.apiKeySecretRef") from error
            except (RateLimitError, ServiceError, PineconeConnectionError, PineconeTimeoutError) as error:
                delay = self.policy.backoff(attempt, retry_after_of(error))
                if attempt >= self.policy.attempts or time.monotonic() + delay > deadline:
                    raise BackendUnavailable(f"Pinecone did not answer while {what}: {describe(error)} "
                                             f"(gave up after {attempt} attempts)",
                                             retry_after=max(delay, 5.0)) from error
                logger.info("Pinecone %s while %s; retrying in %.1fs", describe(error), what, delay)
                await asyncio.sleep(delay)


def retry_after_of(error: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After on a 429, or on a 503 that sends one)."""
    if isinstance(error, RateLimitError):
        return error.retry_after
    raw = (getattr(error, "headers", None) or {}).get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: the exponential backoff stands in for it


def describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return f"HTTP {error.status_code} {error.message}".strip()
    return str(error) or type(error).__name__


@contextlib.contextmanager
def pinecone_errors(what: str) -> Iterator[None]:
    """What the SDK still raises after `call` becomes a ReconcileError that names the operation."""
    try:
        yield
    except ForbiddenError as error:
        raise StoreClassInvalid(f"Pinecone refused {what}: {error.message}") from error
    except ApiError as error:
        raise ReconcileError(f"Pinecone refused {what}: {describe(error)}") from error
    except PineconeError as error:
        raise ReconcileError(f"Pinecone client error while {what}: {error}") from error




class SharedIndexes:
    """The pool's primitives on Pinecone: shared serverless indexes and their namespaces."""

    def __init__(self, store: PineconeStore):
        self.pinecone = store
        # One look per placement: the index list and each index's namespaces are read once (API rate limits).
        self._models: list[tuple[int, Any]] | None = None
        self._occupants: dict[str, set[str]] = {}

    async def _usable(self, store: DesiredStore) -> list[tuple[int, Any]]:
        if self._models is None:
            self._models = [(number, model if model.status.ready else await self.pinecone._wait_ready(model.name))
                            for number, model in await self.pinecone._pool(store)
                            if model.status.state != "Terminating"]
        return self._models

    async def _tenants(self, model: Any) -> set[str]:
        if model.name not in self._occupants:
            self._occupants[model.name] = await self.pinecone._tenants_in(model.host)
        return self._occupants[model.name]

    async def placement_of(self, store: DesiredStore) -> pool.PooledIndex | None:
        for _, model in await self._usable(store):
            if store.tenant_id in await self._tenants(model):
                return shared_index(model)
        return None

    async def indexes(self, store: DesiredStore) -> list[pool.PooledIndex]:
        return [shared_index(model, len(await self._tenants(model))) for _, model in await self._usable(store)]

    async def create_index(self, store: DesiredStore, number: int) -> pool.PooledIndex:
        name = shared_index_name(store.dimension, store.metric, number)
        tags = {**MANAGED_BY, "pool": f"{store.dimension}-{store.metric.value}"}
        if not await self.pinecone._create_index(name, store, tags):
            raise BackendUnavailable(f"Pinecone index {name} appeared while placing {store.tenant_id}; "
                                     f"placement will be retried")
        return shared_index(await self.pinecone._wait_ready(name))

    async def add_namespace(self, store: DesiredStore, index: pool.PooledIndex) -> list[Step]:
        await self.pinecone._create_namespace(index.handle, store.tenant_id)
        return [Step(NAMESPACE_CREATED, f"namespace {store.tenant_id} placed in shared index {index.name}")]

    async def is_empty(self, index: pool.PooledIndex) -> bool:
        # Tenants, or vectors someone put in the default namespace, keep it.
        return not await self.pinecone._namespaces(index.handle.host)

    async def drop_index(self, index: pool.PooledIndex) -> None:
        client = self.pinecone.client
        await client.call(f"configuring index {index.name}", self.pinecone.indexes.configure, index.name,
                          deletion_protection="disabled")
        with contextlib.suppress(NotFoundError):
            await client.call(f"deleting index {index.name}", self.pinecone.indexes.delete, index.name, timeout=-1)


def shared_index(model: Any, tenants: int = 0) -> pool.PooledIndex:
    match = SHARED_INDEX.match(model.name)
    return pool.PooledIndex(number=int(match["number"]) if match else 0, name=model.name, tenants=tenants,
                            handle=model)


@dataclasses.dataclass(frozen=True)
class PineconeSettings:
    """spec.vector.pinecone: the Pinecone project a class's vectors live in."""

    api_key_secret: SecretKeyRef
    cloud: str = "aws"
    region: str = "us-east-1"
    host: str = ""  # control-plane endpoint override; empty means the SDK's default
    expose_api_key: bool = False

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> PineconeSettings:
        raw = raw or {}
        try:
            secret = SecretKeyRef.from_dict(raw.get("apiKeySecretRef"), default_key="apiKey")
        except InvalidResource as error:
            raise InvalidResource(f"spec.vector.pinecone.apiKeySecretRef: {error}") from None
        return cls(api_key_secret=secret, cloud=raw.get("cloud") or "aws", region=raw.get("region") or "us-east-1",
                   host=raw.get("host") or "", expose_api_key=bool(raw.get("exposeApiKey", False)))


class PineconeBackend:
    """`spec.vector.backend: pinecone`: one client per (API key, host), shared by the classes that name it."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], PineconeClient] = {}
        self._client_of_class: dict[str, tuple[str, str]] = {}

    async def build(self, class_name: str, settings: Mapping[str, Any], server: PostgresServer,
                    secret_value: SecretValue) -> tuple[PineconeStore, dict[str, str]]:
        try:
            parsed = PineconeSettings.from_dict(settings)
        except InvalidResource as error:
            raise StoreClassInvalid(str(error)) from None
        api_key = await secret_value(parsed.api_key_secret)
        key = (api_key, parsed.host)
        if key not in self._clients:
            self._clients[key] = PineconeClient(api_key, parsed.host)
        previous, self._client_of_class[class_name] = self._client_of_class.get(class_name), key
        if previous not in (None, key) and previous not in self._client_of_class.values():
            await self._clients.pop(previous).close()  # a rotated key: its client goes once no class uses it
        # Only when the class says so: a Pinecone key opens the whole project, every tenant's vectors.
        extras = {"pineconeApiKey": api_key} if parsed.expose_api_key else {}
        return PineconeStore(self._clients[key], server, parsed), extras

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


register_vector_backend("pinecone", PineconeBackend)


def index_schema(store: DesiredStore | GlobalIndex) -> dict[str, Any]:
    return {"fields": {VALUES_FIELD: {"type": "dense_vector", "dimension": store.dimension,
                                      "metric": store.metric.value}}}


def is_ours(model: Any, tenant_id: str) -> bool:
    tags = dict(model.tags or {})
    return tags.get("tenant") == tenant_id and tags.get("managed-by") == MANAGED_BY["managed-by"]


class PineconeStore:
    backend = "pinecone"

    def __init__(self, client: PineconeClient, server: PostgresServer, settings: PineconeSettings):
        self.client = client
        self.server = server  # the class's Postgres: the operator's locks there serialize placement
        self.settings = settings

    @property
    def indexes(self) -> Any:
        return self.client.control.indexes

    async def preflight(self) -> list[Step]:
        try:
            await self._list_indexes()
        except StoreClassInvalid as error:
            return [Step("PineconeApiKeyRejected", str(error))]
        except BackendUnavailable as error:
            return [Step("PineconeUnreachable", str(error))]
        except PineconeError as error:
            return [Step("PineconeRefused", f"Pinecone refused to list indexes: {describe(error)}")]
        return []

    async def ensure(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        if store.vector is VectorIsolation.NAMESPACE:
            with pinecone_errors(f"placing namespace {store.tenant_id}"):
                return await self._ensure_namespace(store)
        with pinecone_errors(f"making dedicated index {dedicated_index_name(store.tenant_id)}"):
            return await self._ensure_dedicated(store)

    # --- indexes: describe, create, wait ---

    async def _list_indexes(self) -> list[Any]:
        return await self.client.call("listing indexes", lambda: self.indexes.list().to_list())

    async def _describe(self, name: str) -> Any | None:
        try:
            return await self.client.call(f"describing index {name}", self.indexes.describe, name)
        except NotFoundError:
            return None

    async def _create_index(self, name: str, store: DesiredStore | GlobalIndex, tags: dict[str, str]) -> bool:
        """Create a serverless index (deletion protection on); False when the name is already taken."""
        try:
            await self.client.call(
                f"creating index {name}", self.indexes.create,
                name=name, schema=index_schema(store), tags=tags, deletion_protection="enabled",
                deployment={"deployment_type": "managed", "cloud": self.settings.cloud,
                            "region": self.settings.region},
                timeout=-1)  # return at once: `_wait_ready` polls with our own deadline
        except ConflictError:
            return False
        except ForbiddenError as error:
            raise VectorQuotaExceeded(f"Pinecone refused to create index {name}: {error.message}") from error
        return True

    async def _wait_ready(self, name: str) -> Any:
        deadline = time.monotonic() + self.client.policy.index_timeout
        interval = self.client.policy.poll_first
        while True:
            model = await self._describe(name)
            state = model.status.state if model else "absent"
            if model is not None and model.status.ready:
                return model
            if state in ("InitializationFailed", "Failed", "Terminating", "absent"):
                raise BackendUnavailable(f"Pinecone index {name} cannot be used: it is {state}", retry_after=30.0)
            if time.monotonic() + interval > deadline:
                raise BackendUnavailable(f"Pinecone index {name} is still {state} after "
                                         f"{self.client.policy.index_timeout:.0f}s", retry_after=15.0)
            await asyncio.sleep(interval)
            interval = min(interval * 2, self.client.policy.poll_max)

    async def _wait_gone(self, name: str) -> None:
        deadline = time.monotonic() + self.client.policy.index_timeout
        interval = self.client.policy.poll_first
        while (model := await self._describe(name)) is not None:
            if time.monotonic() + interval > deadline:
                raise BackendUnavailable(f"Pinecone index {name} is still {model.status.state} after "
                                         f"{self.client.policy.index_timeout:.0f}s", retry_after=15.0)
            await asyncio.sleep(interval)
            interval = min(interval * 2, self.client.policy.poll_max)

    # --- namespace isolation: a namespace of a shared index ---

    async def _pool(self, store: DesiredStore | GlobalIndex) -> list[tuple[int, Any]]:
        """The shared indexes of the tenant's (dimension, metric): (number, model), oldest first."""
        pool = [(int(match["number"]), model) for model in await self._list_indexes()
                if (match := SHARED_INDEX.match(model.name))
                and (int(match["dimension"]), match["metric"]) == (store.dimension, store.metric.value)]
        return sorted(pool, key=lambda entry: entry[0])

    async def _namespaces(self, host: str, prefix: str | None = None) -> dict[str, Any]:
        """Every namespace of an index (name -> description), page by page."""
        index = await self.client.index(host)
        found: dict[str, Any] = {}
        token: str | None = None
        while True:
            page = await self.client.call(f"listing namespaces of {host}", index.list_namespaces_paginated,
                                          prefix=prefix, limit=LIST_PAGE_MAX, pagination_token=token)
            found.update({namespace.name: namespace for namespace in page.namespaces})
            token = page.pagination.next if page.pagination else None
            if not token:
                return found

    async def _tenants_in(self, host: str) -> set[str]:
        return {name for name in await self._namespaces(host) if name not in (DEFAULT_NAMESPACE, GLOBAL_NAMESPACE, "")}

    async def _ensure_namespace(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        async with self.server.connect() as conn, pool.locked(conn, self.backend, store.dimension, store.metric.value):
            index, steps = await pool.place(SharedIndexes(self), store)
        return self._shared_placement(store, index.handle), steps

    async def _create_namespace(self, model: Any, namespace: str) -> None:
        index = await self.client.index(model.host)
        try:
            await self.client.call(f"creating namespace {namespace} in {model.name}", index.create_namespace,
                                   name=namespace)
        except ConflictError:
            pass  # made by an earlier attempt that did not finish
        except ForbiddenError as error:
            raise VectorQuotaExceeded(f"Pinecone refused to create namespace {namespace} in shared index "
                                      f"{model.name}: {error.message} (a plan limit: lower "
                                      f"spec.vector.sharedIndex.capacity or upgrade the Pinecone plan)") from error

    # --- the class's global index: a reserved namespace of the first shared index of its shape ---

    async def ensure_global(self, index: GlobalIndex, writer_password: str, password_is_new: bool,
                            repair: bool = True) -> tuple[GlobalPlacement, dict[str, str], list[Step]]:
        """Pinecone keys are per project: the writer Secret carries the class's key, and tenants' read-only access
        to the namespace is kept by the client library (it has no call that writes there). Nothing to drift but
        the namespace, which is made when missing."""
        del writer_password, password_is_new, repair
        steps: list[Step] = []
        with pinecone_errors(f"placing the global index {index.store_name}"):
            async with self.server.connect() as conn, pool.locked(conn, self.backend, index.dimension,
                                                                  index.metric.value):
                shared = await self._pool(index)
                if shared:
                    model = shared[0][1] if shared[0][1].status.ready else await self._wait_ready(shared[0][1].name)
                else:
                    name = shared_index_name(index.dimension, index.metric, 0)
                    await self._create_index(name, index, {**MANAGED_BY, "pool": f"{index.dimension}-"
                                                                                  f"{index.metric.value}"})
                    model = await self._wait_ready(name)
                if GLOBAL_NAMESPACE not in await self._namespaces(model.host, prefix=GLOBAL_NAMESPACE):
                    await self._create_namespace(model, GLOBAL_NAMESPACE)
                    steps.append(Step("GlobalIndexCreated", f"global index {index.store_name} created as namespace "
                                                            f"{GLOBAL_NAMESPACE} of shared index {model.name}"))
        placement = GlobalPlacement(backend=self.backend, name=index.store_name, namespace=GLOBAL_NAMESPACE,
                                    host=model.host, index=model.name)
        writer = {"vectorBackend": self.backend, "vectorHost": model.host, "vectorIndex": model.name,
                  "vectorNamespace": GLOBAL_NAMESPACE, "vectorStore": index.store_name,
                  "vectorDimension": str(index.dimension), "vectorMetric": index.metric.value,
                  "vectorAccess": "readWrite", "vectorScope": "global", "pineconeApiKey": self.client.api_key}
        return placement, writer, steps

    async def grant_global(self, store: DesiredStore, index: GlobalIndex
                           ) -> tuple[GlobalPlacement | None, list[Step]]:
        # Nothing in Pinecone to grant (a project's key reads every namespace): only where the index is.
        with pinecone_errors(f"finding the global index {index.store_name}"):
            shared = await self._pool(index)
            if not shared or GLOBAL_NAMESPACE not in await self._namespaces(shared[0][1].host,
                                                                            prefix=GLOBAL_NAMESPACE):
                return None, []
        model = shared[0][1]
        return GlobalPlacement(backend=self.backend, name=index.store_name, namespace=GLOBAL_NAMESPACE,
                               host=model.host, index=model.name), []

    async def verify_global(self, index: GlobalIndex, stores: Sequence[DesiredStore]) -> dict[str, list[Drift]]:
        return {}  # no grant to lose: the class's check keeps the namespace

    def _shared_placement(self, store: DesiredStore, model: Any) -> VectorPlacement:
        return VectorPlacement(backend=self.backend, index=model.name, namespace=store.tenant_id, host=model.host)

    # --- dedicated isolation: the tenant's own index ---

    async def _ensure_dedicated(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        name, steps = dedicated_index_name(store.tenant_id), []
        tags = {**MANAGED_BY, "tenant": store.tenant_id}
        model = await self._describe(name)
        if model is None:
            if await self._create_index(name, store, tags):
                steps.append(Step("DedicatedIndexCreated", f"dedicated index {name} created (deletion protection on)"))
        else:
            self._check_dedicated(model, store)
            if model.status.state == "Terminating":
                raise BackendUnavailable(f"Pinecone index {name} is still being deleted; it is made again once gone")
        model = await self._wait_ready(name)
        self._check_dedicated(model, store)  # also when a racing create won: it must be ours all the same
        steps += await self._repair_dedicated(model, tags)
        return VectorPlacement(backend=self.backend, index=name, host=model.host), steps

    @staticmethod
    def _check_dedicated(model: Any, store: DesiredStore) -> None:
        if not is_ours(model, store.tenant_id):
            raise TenantIdConflict(f"Pinecone index {model.name} exists and was not made by tenantstore for "
                                   f"tenant {store.tenant_id}")
        if (model.dimension, model.metric) != (store.dimension, store.metric.value):
            raise TenantIdConflict(f"Pinecone index {model.name} holds {model.dimension}-dimensional {model.metric} "
                                   f"vectors, not {store.dimension}-dimensional {store.metric.value}")

    async def _repair_dedicated(self, model: Any, tags: dict[str, str]) -> list[Step]:
        missing_tags = {key: value for key, value in tags.items() if (model.tags or {}).get(key) != value}
        if model.deletion_protection == "enabled" and not missing_tags:
            return []
        await self.client.call(f"configuring index {model.name}", self.indexes.configure, model.name,
                               deletion_protection="enabled", tags=missing_tags or None)
        return [Step("DeletionProtectionEnabled", f"dedicated index {model.name} is protected from deletion again")]

    # --- teardown ---

    async def teardown(self, store: DesiredStore) -> list[Step]:
        if store.vector is VectorIsolation.NAMESPACE:
            with pinecone_errors(f"deleting namespace {store.tenant_id}"):
                return await self._teardown_namespace(store)
        with pinecone_errors(f"deleting dedicated index {dedicated_index_name(store.tenant_id)}"):
            return await self._teardown_dedicated(store)

    async def _placed_in(self, store: DesiredStore) -> list[Any]:
        """Shared indexes of the tenant's group that hold its namespace (one, unless something went wrong)."""
        found = []
        for _, model in await self._pool(store):
            if model.status.state != "Terminating" and model.host and \
                    store.tenant_id in await self._namespaces(model.host, prefix=store.tenant_id):
                found.append(model)
        return found

    async def _teardown_namespace(self, store: DesiredStore) -> list[Step]:
        steps = []
        for model in await self._placed_in(store):
            index = await self.client.index(model.host)
            with contextlib.suppress(NotFoundError):  # already gone: that is what we wanted
                await self.client.call(f"deleting namespace {store.tenant_id} from {model.name}",
                                       index.delete_namespace, name=store.tenant_id)
            steps.append(Step("NamespaceDeleted", f"namespace {store.tenant_id} and its vectors removed from "
                                                  f"shared index {model.name}"))
            if not store.shared_index_keep_empty:
                steps += await self._drop_if_empty(store, model)
        return steps

    async def _drop_if_empty(self, store: DesiredStore, model: Any) -> list[Step]:
        async with self.server.connect() as conn, pool.locked(conn, self.backend, store.dimension, store.metric.value):
            steps = await pool.drop_if_empty(SharedIndexes(self), shared_index(model))
        if steps:
            await self.client.forget(model.host)
        return steps

    async def _teardown_dedicated(self, store: DesiredStore) -> list[Step]:
        name, steps = dedicated_index_name(store.tenant_id), []
        model = await self._describe(name)
        if model is None or not is_ours(model, store.tenant_id):
            return steps  # never made, already gone, or someone else's: touch nothing
        if model.status.state != "Terminating":
            if model.deletion_protection == "enabled":
                await self.client.call(f"configuring index {name}", self.indexes.configure, name,
                                       deletion_protection="disabled")
                steps.append(Step("DeletionProtectionDisabled", f"deletion protection of index {name} turned off"))
            try:
                await self.client.call(f"deleting index {name}", self.indexes.delete, name, timeout=-1)
            except NotFoundError:
                pass
            except ForbiddenError as error:  # protection turned on again in between: next reconcile retries
                raise BackendUnavailable(f"Pinecone refused to delete index {name}: {error.message}") from error
            steps.append(Step("DedicatedIndexDeleted", f"dedicated index {name} and its vectors deleted"))
        await self._wait_gone(name)
        if model.host:
            await self.client.forget(model.host)
        return steps

    async def verify(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, list[Drift]]:
        """Each namespace still in its shared index (one listing per index), each dedicated index still there."""
        drifts: dict[str, list[Drift]] = {}
        with pinecone_errors("verifying the tenants' namespaces and indexes"):
            by_host: dict[str, list[tuple[DesiredStore, VectorPlacement]]] = {}
            for store, placement in tenants:
                if placement.namespace:
                    by_host.setdefault(placement.host, []).append((store, placement))
            for host, members in by_host.items():
                try:
                    present = set(await self._namespaces(host))
                except NotFoundError:
                    present = set()  # the whole shared index is gone
                for store, placement in members:
                    if placement.namespace not in present:
                        drifts[store.tenant_id] = [Drift("NamespaceMissing", f"namespace {placement.namespace} is gone "
                                                                             f"from shared index {placement.index}",
                                                         holds_data=True)]
            dedicated = [(store, placement) for store, placement in tenants if not placement.namespace]
            if dedicated:
                indexes = {model.name for model in await self._list_indexes()}
                for store, placement in dedicated:
                    if placement.index not in indexes:
                        drifts[store.tenant_id] = [Drift("IndexMissing", f"dedicated index {placement.index} is gone",
                                                         holds_data=True)]
        return drifts

    async def residue(self, store: DesiredStore) -> list[str]:
        with pinecone_errors(f"looking for what is left of tenant {store.tenant_id}"):
            if store.vector is VectorIsolation.NAMESPACE:
                return [f"namespace {store.tenant_id} in shared index {model.name}"
                        for model in await self._placed_in(store)]
            model = await self._describe(dedicated_index_name(store.tenant_id))
            if model is not None and is_ours(model, store.tenant_id):
                return [f"dedicated index {model.name} ({model.status.state})"]
            return []

    # --- quotas ---

    async def ensure_write_access(self, store: DesiredStore, placement: VectorPlacement) -> list[Step]:
        # Pinecone has no per-namespace or per-index permissions (keys are project-wide) and the tenant holds
        # no key of its own: there is nothing to take away here.
        return []

    async def shared_pool(self) -> list[SharedIndex]:
        """Every shared index of the project (all groups), with the tenant namespaces in each."""
        pool = []
        with pinecone_errors("listing the shared indexes"):
            for model in await self._list_indexes():
                match = SHARED_INDEX.match(model.name)
                if match and model.status.state != "Terminating" and model.host:
                    pool.append(SharedIndex(model.name, int(match["dimension"]), match["metric"],
                                            len(await self._tenants_in(model.host))))
        return sorted(pool, key=lambda index: (index.dimension, index.metric, int(index.name.rsplit("-", 1)[1])))

    def shared_credential(self) -> str | None:
        if self.settings.expose_api_key:
            return ("tenant Secrets carry the project-wide Pinecone API key (spec.vector.pinecone.exposeApiKey): "
                    "it reaches every namespace and index of the project")
        return None

    async def probe_isolation(self, store: DesiredStore, placement: VectorPlacement) -> str | None:
        """The tenant's only handle on Pinecone is the index host and namespace in its Secret (queries are
        namespace-scoped). A class that hands out the project's key says so in `shared_credential`: that is its
        configuration, the same for every tenant, not something this look finds."""
        if placement.namespace and placement.namespace != store.tenant_id:
            return f"the tenant is pointed at namespace {placement.namespace}, not its own {store.tenant_id}"
        return None

    async def probe_search(self, store: DesiredStore, placement: VectorPlacement, vector: Sequence[float],
                           top_k: int) -> float:
        index = await self.client.index(await self._host_of(placement))
        with pinecone_errors(f"probing search in {placement.index}"):
            started = time.perf_counter()
            await index.query(vector=list(vector), top_k=top_k, namespace=placement.namespace)
            return time.perf_counter() - started

    async def measure(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, VectorUsage]:
        """Records and bytes per tenant, from one namespace listing per index."""
        by_host: dict[str, dict[str, Any]] = {}
        usage: dict[str, VectorUsage] = {}
        with pinecone_errors("measuring vector usage"):
            for store, placement in tenants:
                host = await self._host_of(placement)
                if host not in by_host:
                    by_host[host] = await self._namespaces(host)
                namespaces = [by_host[host].get(placement.namespace)] if placement.namespace \
                    else list(by_host[host].values())
                usage[store.tenant_id] = VectorUsage(
                    documents=sum(int(ns.record_count) for ns in namespaces if ns is not None),
                    storage_bytes=sum(int(ns.size_bytes) for ns in namespaces if ns is not None))
        return usage

    # --- data (migrations) ---

    async def _host_of(self, placement: VectorPlacement) -> str:
        if placement.host:
            return placement.host
        model = await self._describe(placement.index)
        if model is None or not model.host:
            raise BackendUnavailable(f"Pinecone index {placement.index} does not exist (or has no host yet)")
        return model.host

    async def _data(self, placement: VectorPlacement) -> tuple[str, Any]:
        host = await self._host_of(placement)
        return host, await self.client.index(host)

    async def count(self, store: DesiredStore, placement: VectorPlacement) -> int:
        with pinecone_errors(f"counting vectors of {store.tenant_id}"):
            _, index = await self._data(placement)
            stats = await self.client.call(f"describing index stats of {placement.index}", index.describe_index_stats)
        if not placement.namespace:
            return int(stats.total_vector_count)
        summary = stats.namespaces.get(placement.namespace)
        return int(summary.vector_count) if summary else 0

    async def read_batch(self, store: DesiredStore, placement: VectorPlacement, after_id: str | None,
                         limit: int) -> list[VectorRecord]:
        with pinecone_errors(f"reading vectors of {store.tenant_id}"):
            host, index = await self._data(placement)
            ids = await self._ids_after(host, index, placement.namespace, after_id, limit)
            records: list[VectorRecord] = []
            for chunk in fetch_chunks(ids):
                fetched = await self.client.call(f"fetching vectors from {placement.index}", index.fetch,
                                                 ids=chunk, namespace=placement.namespace)
                records += [VectorRecord(id=vector_id, values=list(fetched.vectors[vector_id].values),
                                         metadata=dict(fetched.vectors[vector_id].metadata or {}))
                            for vector_id in chunk if vector_id in fetched.vectors]
        return records

    async def _ids_after(self, host: str, index: Any, namespace: str, after_id: str | None, limit: int) -> list[str]:
        """Up to `limit` ids greater than `after_id` in Pinecone's (bytewise) order.

        Pinecone pages ids with opaque tokens, not "start after"; the token that followed a batch is kept,
        so a copy that asks for the next batch continues where it stopped instead of rescanning.
        """
        token = self.client.cursors.pop((host, namespace, after_id), None) if after_id else None
        skip = after_id if after_id and token is None else None
        page_size = max(1, min(limit, LIST_PAGE_MAX))
        ids: list[str] = []
        while len(ids) < limit:
            page = await self.client.call(f"listing vector ids of {host}", index.list_paginated,
                                          namespace=namespace, limit=page_size, pagination_token=token)
            ids += [item.id for item in page.vectors if skip is None or item.id > skip]
            token = page.pagination.next if page.pagination else None
            if not token:
                break
        if len(ids) == limit and token:
            self._remember_cursor((host, namespace, ids[-1]), token)
        return ids[:limit]

    def _remember_cursor(self, key: tuple[str, str, str], token: str) -> None:
        self.client.cursors[key] = token
        while len(self.client.cursors) > CURSOR_CACHE_SIZE:
            self.client.cursors.popitem(last=False)

    async def write_batch(self, store: DesiredStore, placement: VectorPlacement,
                          records: Sequence[VectorRecord]) -> None:
        with pinecone_errors(f"writing vectors of {store.tenant_id}"):
            _, index = await self._data(placement)
            for chunk in upsert_chunks(records):
                await self.client.call(f"upserting vectors into {placement.index}", index.upsert,
                                       vectors=chunk, namespace=placement.namespace)


    async def delete_ids(self, store: DesiredStore, placement: VectorPlacement, ids: Sequence[str]) -> None:
        with pinecone_errors(f"deleting vectors of {store.tenant_id}"):
            _, index = await self._data(placement)
            for chunk in fetch_chunks(list(ids)):
                await self.client.call(f"deleting vectors from {placement.index}", index.delete, ids=chunk,
                                       namespace=placement.namespace)

    async def expire(self, store: DesiredStore, placement: VectorPlacement, written_before: datetime.datetime,
                     limit: int) -> int:
        """Pinecone cannot delete by a metadata filter on serverless indexes: scan ids (at most RETENTION_SCAN
        per call, continuing where the last call stopped), fetch their metadata, delete the expired ones."""
        cutoff = written_before.timestamp()
        expired: list[str] = []
        with pinecone_errors(f"expiring vectors of {store.tenant_id}"):
            host, index = await self._data(placement)
            key = (host, placement.namespace)
            token, scanned = self.client.retention_cursors.pop(key, None), 0
            while scanned < RETENTION_SCAN and len(expired) < limit:
                page = await self.client.call(f"listing vector ids of {host}", index.list_paginated,
                                              namespace=placement.namespace, limit=LIST_PAGE_MAX,
                                              pagination_token=token)
                ids = [item.id for item in page.vectors]
                scanned += len(ids)
                for chunk in fetch_chunks(ids):
                    fetched = await self.client.call(f"fetching vectors from {placement.index}", index.fetch,
                                                     ids=chunk, namespace=placement.namespace)
                    expired += [vector_id for vector_id in chunk if vector_id in fetched.vectors
                                and is_older(fetched.vectors[vector_id].metadata, cutoff)]
                token = page.pagination.next if page.pagination else None
                if not token:
                    break
            if token:
                self.client.retention_cursors[key] = token
            expired = expired[:limit]
            for chunk in fetch_chunks(expired):
                await self.client.call(f"deleting expired vectors from {placement.index}", index.delete,
                                       ids=chunk, namespace=placement.namespace)
        return len(expired)


def is_older(metadata: Mapping[str, Any] | None, cutoff: float) -> bool:
    written = (metadata or {}).get(WRITTEN_AT_FIELD)
    return isinstance(written, (int, float)) and not isinstance(written, bool) and written < cutoff


def chunked(items: Iterable[T], size_of: Callable[[T], int], max_count: int, max_size: int) -> Iterator[list[T]]:
    """Consecutive groups of at most `max_count` items and (unless one item alone is bigger) `max_size`."""
    chunk: list[T] = []
    size = 0
    for item in items:
        item_size = size_of(item)
        if chunk and (len(chunk) >= max_count or size + item_size > max_size):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


def fetch_chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    """Ids in groups small enough for one fetch request's query string."""
    return chunked(ids, len, FETCH_MAX_IDS, FETCH_MAX_ID_CHARS)


def upsert_chunks(records: Sequence[VectorRecord]) -> Iterator[list[dict[str, Any]]]:
    """Records as upsert payloads within Pinecone's per-request limits (1,000 records, 2 MB)."""
    return chunked((wire_vector(record) for record in records), lambda vector: len(json.dumps(vector)),
                   UPSERT_MAX_RECORDS, UPSERT_MAX_BYTES)


def wire_vector(record: VectorRecord) -> dict[str, Any]:
    vector: dict[str, Any] = {"id": record.id, "values": list(record.values)}
    if record.metadata:
        vector["metadata"] = dict(record.metadata)
    return vector
