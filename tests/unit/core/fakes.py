"""In-memory stand-ins for everything the operator's core talks to: its two stores, the registry that hands
them out per StoreClass, tenant Secrets, Namespace labels and the status writer of the periodic jobs.

Each fake implements its interface by method name (tenantstore.backends.RelationalStore and VectorStore,
registry.BackendRegistry, kube.Secrets, kube.NamespaceLabels, kube.TenantStatuses) and keeps its state in
plain dicts that tests read afterwards. Every fake records which of its methods were called and can be told
to raise at a named method (`fail`); the stores can be made to drift (`drop_schema`, `change_password`,
`drop_namespace`, ...), the way a person with a psql prompt or a cloud console would.

The stores decide like the real ones where the core relies on it: a role's claim (which TenantStore holds
it, a retained one adoptable only from its own namespace), ownership while a Block quota holds writes, the
shared-index pool and its capacity, and which steps each change reports.
"""
from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client

from tenantstore.api import (API_VERSION, CREDENTIAL_LABEL, DATA_DIGEST_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL,
                             TENANT_ID_LABEL, WRITES_BLOCKED_ANNOTATION, WRITES_BLOCKED_KEY)
from tenantstore.backends import (NAMESPACE_CREATED, Drift, LoginPlan, RelationalPlacement, RelationalUsage,
                                  SharedIndex, Step, VectorPlacement, VectorRecord, VectorUsage)
from tenantstore.backends.postgres_credentials import LOGIN_SUFFIX
from tenantstore.errors import (BackendUnavailable, ObjectReplaced, SecretConflict, StoreClassInvalid,
                                StoreClassNotReady, TenantIdConflict)
from tenantstore.kube import NOT_READ, SecretDeletion, data_digest
from tenantstore.models import (DesiredStore, RelationalIsolation, SecretKeyRef, StoreClass, VectorIsolation,
                                dedicated_index_name, shared_index_name)

# What claimed_by answers for a role the operator did not make, and for a retained one (as the Postgres store).
NOT_MANAGED = "(not managed by tenantstore)"
RETAINED = "(retained)"
SHARED_SCHEMA = "tenantstore_vectors"


class BackendTouched(AssertionError):
    """A fake told to stay untouched was used: the path under test reached a backend."""


@dataclasses.dataclass
class Failure:
    error: Exception
    skip: int = 0  # calls that still succeed before the failures start
    times: int | None = None  # failures left; None: every call


class Recorder:
    """What a fake was asked (method names, in order), and the failures it was told to produce."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failures: dict[str, Failure] = {}
        self.forbidden = False

    def fail(self, method: str, error: Exception, *, times: int | None = None, after: int = 0) -> None:
        """Raise `error` from `method`: on every call, or `times` times; the first `after` calls succeed."""
        if not callable(getattr(self, method, None)):
            raise AttributeError(f"{type(self).__name__} has no method {method!r} to fail")
        self.failures[method] = Failure(error, skip=after, times=times)

    def recover(self) -> None:
        """Every failure told so far is over."""
        self.failures.clear()

    def forbid(self) -> None:
        """From now on any call fails the test (BackendTouched)."""
        self.forbidden = True

    def called(self, method: str) -> int:
        return self.calls.count(method)

    def enter(self, method: str) -> None:
        if self.forbidden:
            raise BackendTouched(f"{type(self).__name__}.{method} was called, and nothing should be")
        self.calls.append(method)
        failure = self.failures.get(method)
        if failure is None:
            return
        if failure.skip:
            failure.skip -= 1
            return
        if failure.times is not None:
            failure.times -= 1
            if failure.times <= 0:
                del self.failures[method]
        raise failure.error


# --- the relational store ---

@dataclasses.dataclass
class Claim:
    """Which TenantStore holds a tenant's role; uid None while it is retained (adoptable from `namespace`)."""

    uid: str | None
    namespace: str
    name: str


@dataclasses.dataclass
class Role:
    password: str
    can_login: bool
    connection_limit: int
    claim: Claim | None  # None: a role the operator did not make


class FakeRelationalStore(Recorder):
    """Roles, schemas and databases of one Postgres; a schema or database is owned by a role (or, while a
    Block quota holds the tenant's writes, by its holding role)."""

    def __init__(self, host: str = "db.test", port: int = 5432) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.roles: dict[str, Role] = {}
        self.schemas: dict[str, str] = {}  # schema of the shared database -> owner role
        self.databases: dict[str, str] = {}  # tenant database -> owner role
        self.usage: dict[str, RelationalUsage] = {}  # what `measure` reports, per tenant id
        self.preflight_problems: list[Step] = []
        self.stuck: set[str] = set()  # names teardown cannot remove (a lock a tenant holds, say)
        self.logins: dict[str, tuple[str, str, int, bool]] = {}  # credential login -> password, access, limit, login

    # RelationalStore

    async def server_identity(self) -> str:
        return f"{self.host}:{self.port}"

    async def ensure(self, store: DesiredStore, password: str, password_is_new: bool
                     ) -> tuple[RelationalPlacement, list[Step]]:
        self.enter("ensure")
        steps = self._ensure_role(store, password, password_is_new)
        steps += self._ensure_container(store)
        steps += self._write_access(store)
        return RelationalPlacement(host=self.host, port=self.port, database=store.database, schema=store.schema,
                                   role=store.role), steps

    async def ensure_credentials(self, store: DesiredStore, plans: Mapping[str, LoginPlan]) -> list[Step]:
        self.enter("ensure_credentials")
        steps = []
        wanted = set()
        for credential in store.credential_roles:
            plan = plans[credential.name]
            for login in credential.logins:
                wanted.add(login)
                existing = self.logins.get(login)
                open_ = (login in (plan.current, plan.kept)) and not store.suspended
                password = plan.password if login == plan.current and (existing is None or plan.password_is_new) \
                    else (existing[0] if existing else "unknown")
                state = (password, credential.access.value, credential.connection_limit, open_)
                if existing != state:
                    self.logins[login] = state
                    if existing is None and login == plan.current:
                        steps.append(Step("CredentialCreated", login))
        prefix = f"tscred_{store.tenant_id.replace('-', '_')}_"
        for role in sorted(set(self.logins) - wanted):
            if role.startswith(prefix) and LOGIN_SUFFIX.match(role[len(prefix):]):
                del self.logins[role]
                steps.append(Step("CredentialRemoved", role))
        return steps

    async def claimed_by(self, store: DesiredStore) -> str | None:
        self.enter("claimed_by")
        role = self.roles.get(store.role)
        if role is None:
            return None
        if role.claim is None:
            return NOT_MANAGED
        return role.claim.uid or RETAINED

    async def teardown(self, store: DesiredStore) -> list[Step]:
        self.enter("teardown")
        steps: list[Step] = []
        if (role := self.roles.get(store.role)) is not None:
            role.can_login = False
            steps.append(Step("SessionsTerminated", f"role {store.role} can no longer log in; its connections "
                                                    f"were ended"))
        objects, name = self._container(store)
        if name in objects and name not in self.stuck:
            del objects[name]
            steps.append(Step("SchemaDropped" if store.relational is RelationalIsolation.SCHEMA else "DatabaseDropped",
                              f"{store.relational.value} {name} dropped"))
        dropped = [name for name in (store.role, store.holding_role) if name in self.roles and name not in self.stuck]
        for name in dropped:
            del self.roles[name]
        if store.role in dropped:
            steps.append(Step("RoleDropped", f"Postgres role {store.role} dropped"))
        return steps

    async def release(self, store: DesiredStore) -> list[Step]:
        self.enter("release")
        role = self.roles.get(store.role)
        if role is None or role.claim is None or role.claim.uid not in (None, store.uid):
            return []  # gone, or someone else's
        role.claim = Claim(None, store.tenant_store_namespace, store.tenant_store_name)
        return [Step("Retained", f"kept Postgres role {store.role} and its {store.relational.value}; a new "
                                 f"TenantStore with tenantId {store.tenant_id} in namespace {store.tenant_store_namespace} "
                                 f"adopts them")]

    async def residue(self, store: DesiredStore) -> list[str]:
        self.enter("residue")
        objects, name = self._container(store)
        left = [f"role {store.role}"] if store.role in self.roles else []
        left += [f"{store.relational.value} {name}"] if name in objects else []
        left += [f"role {store.holding_role}"] if store.holding_role in self.roles else []
        return left

    async def preflight(self) -> list[Step]:
        self.enter("preflight")
        return list(self.preflight_problems)

    async def ensure_write_access(self, store: DesiredStore) -> list[Step]:
        self.enter("ensure_write_access")
        return self._write_access(store)

    async def measure(self, stores: Sequence[DesiredStore]) -> dict[str, RelationalUsage]:
        self.enter("measure")
        return {store.tenant_id: self.usage.get(store.tenant_id, RelationalUsage()) for store in stores}

    async def verify(self, stores: Sequence[DesiredStore]) -> dict[str, list[Drift]]:
        self.enter("verify")
        return {store.tenant_id: drifts for store in stores if (drifts := self._drifts(store))}

    async def credentials_work(self, store: DesiredStore, password: str) -> bool | None:
        self.enter("credentials_work")
        role = self.roles.get(store.role)
        if role is None:
            return False
        if not role.can_login:
            return None  # a role that may not log in tells nothing about the password
        return role.password == password

    # drift and set-up, as a person with a psql prompt would

    def add_role(self, role: str, password: str = "theirs", claim: Claim | None = None) -> Role:
        """A role made by someone else (claim None) or by another TenantStore (its claim)."""
        self.roles[role] = Role(password=password, can_login=True, connection_limit=-1, claim=claim)
        return self.roles[role]

    def drop_role(self, role: str) -> None:
        del self.roles[role]

    def drop_schema(self, schema: str) -> None:
        del self.schemas[schema]

    def drop_database(self, database: str) -> None:
        del self.databases[database]

    def change_password(self, role: str, password: str) -> None:
        self.roles[role].password = password

    def writes_blocked(self, store: DesiredStore) -> bool:
        objects, name = self._container(store)
        return objects.get(name) == store.holding_role

    # the decisions

    def _ensure_role(self, store: DesiredStore, password: str, password_is_new: bool) -> list[Step]:
        role = self.roles.get(store.role)
        if role is None:
            self.roles[store.role] = Role(password=password, can_login=not store.suspended,
                                          connection_limit=store.connection_limit,
                                          claim=Claim(store.uid, store.tenant_store_namespace, store.tenant_store_name))
            return [Step("RoleCreated", f"Postgres role {store.role} created (connection limit "
                                        f"{store.connection_limit})")]
        steps = self._ensure_claim(store, role)
        if role.connection_limit != store.connection_limit:
            role.connection_limit = store.connection_limit
            steps.append(Step("ConnectionLimitChanged", f"role {store.role} connection limit set to "
                                                        f"{store.connection_limit}"))
        if role.can_login == store.suspended:
            role.can_login = not store.suspended
            steps.append(Step("LoginChanged", f"role {store.role} can {'no longer' if store.suspended else 'again'} "
                                              f"log in"))
        if password_is_new:
            role.password = password
            steps.append(Step("PasswordReset", f"role {store.role}'s password set to the one its Secret holds"))
        return steps

    @staticmethod
    def _ensure_claim(store: DesiredStore, role: Role) -> list[Step]:
        """Ours already, or a retained tenant of our own namespace to adopt; anything else is a conflict."""
        if role.claim is None:
            raise TenantIdConflict(f"Postgres role {store.role} exists and was not made by tenantstore")
        if role.claim.uid == store.uid:
            return []
        if role.claim.uid is not None:
            raise TenantIdConflict(f"tenantId {store.tenant_id} is already claimed by TenantStore "
                                   f"{role.claim.namespace}/{role.claim.name}")
        if role.claim.namespace != store.tenant_store_namespace:
            raise TenantIdConflict(f"tenantId {store.tenant_id} is retained by another namespace; only a "
                                   f"TenantStore in that namespace can adopt it")
        role.claim = Claim(store.uid, store.tenant_store_namespace, store.tenant_store_name)
        return [Step("RoleAdopted", f"retained Postgres role {store.role} adopted by this TenantStore")]

    def _container(self, store: DesiredStore) -> tuple[dict[str, str], str]:
        if store.relational is RelationalIsolation.SCHEMA:
            return self.schemas, store.schema
        return self.databases, store.database

    def _ensure_container(self, store: DesiredStore) -> list[Step]:
        objects, name = self._container(store)
        owner = objects.get(name)
        if owner is None:
            objects[name] = store.role
            kind = "SchemaCreated" if store.relational is RelationalIsolation.SCHEMA else "DatabaseCreated"
            return [Step(kind, f"{store.relational.value} {name} created, owned by {store.role}")]
        if owner not in (store.role, store.holding_role):
            raise TenantIdConflict(f"{store.relational.value} {name} exists and belongs to role {owner}")
        return []

    def _write_access(self, store: DesiredStore) -> list[Step]:
        objects, name = self._container(store)
        if name not in objects or objects[name] not in (store.role, store.holding_role):
            return []
        blocked = objects[name] == store.holding_role
        if blocked == (not store.writes_allowed):
            return []
        if store.writes_allowed:
            objects[name] = store.role
            return [Step("WritesRestored", f"{store.role} owns its {store.relational.value} again")]
        self.roles.setdefault(store.holding_role, Role("", can_login=False, connection_limit=-1, claim=None))
        objects[name] = store.holding_role
        return [Step("WritesBlocked", f"{store.role} can read and delete but not write its "
                                      f"{store.relational.value} until it is under quota")]

    def _drifts(self, store: DesiredStore) -> list[Drift]:
        drifts: list[Drift] = []
        role = self.roles.get(store.role)
        if role is None:
            drifts.append(Drift("RoleMissing", f"Postgres role {store.role} does not exist"))
        else:
            if role.can_login == store.suspended:
                drifts.append(Drift("LoginChanged", f"role {store.role} {'can' if role.can_login else 'cannot'} "
                                                    f"log in"))
            if role.connection_limit != store.connection_limit:
                drifts.append(Drift("ConnectionLimitChanged", f"role {store.role} has connection limit "
                                                              f"{role.connection_limit}, not {store.connection_limit}"))
        objects, name = self._container(store)
        if name not in objects:
            kind = "SchemaMissing" if store.relational is RelationalIsolation.SCHEMA else "DatabaseMissing"
            drifts.append(Drift(kind, f"{store.relational.value} {name} does not exist", holds_data=True))
        elif objects[name] not in (store.role, store.holding_role):
            drifts.append(Drift("OwnerChanged", f"{store.relational.value} {name} belongs to {objects[name]}"))
        return drifts


# --- the vector store ---

@dataclasses.dataclass
class SharedIndexState:
    dimension: int
    metric: str
    number: int
    namespaces: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class DedicatedIndexState:
    replaced: bool = False  # the tenant put an object of its own under the name


class FakeVectorStore(Recorder):
    """Shared indexes (a pool per dimension and metric, each holding up to the class's capacity of
    namespaces) and dedicated indexes, with the records of each placement."""

    def __init__(self, backend: str = "pgvector") -> None:
        super().__init__()
        self.backend = backend
        self.indexes: dict[str, SharedIndexState] = {}
        self.dedicated: dict[str, DedicatedIndexState] = {}  # tenant id -> its own index
        self.records: dict[tuple[str, str], dict[str, VectorRecord]] = {}  # (index, namespace) -> id -> record
        self.writes_refused: set[tuple[str, str]] = set()  # placements whose tenant may only read and delete
        self.storage: dict[str, int] = {}  # storage bytes `measure` reports, per tenant id
        self.isolation_problems: dict[str, str] = {}  # what the probe sees through a tenant's eyes
        self.handed_to_every_tenant: str | None = None  # shared_credential: the class's own choice
        self.preflight_problems: list[Step] = []
        self.corrupt_copies = False  # write_batch stores other values than it was given
        self.lose_copies = False  # write_batch drops the last record of every batch

    # VectorStore: lifecycle

    async def ensure(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        self.enter("ensure")
        if store.vector is VectorIsolation.NAMESPACE:
            return self._ensure_namespace(store)
        return self._ensure_dedicated(store)

    async def ensure_write_access(self, store: DesiredStore, placement: VectorPlacement) -> list[Step]:
        self.enter("ensure_write_access")
        return self._grants(store, (placement.index, placement.namespace), new=False)

    async def teardown(self, store: DesiredStore) -> list[Step]:
        self.enter("teardown")
        if store.vector is VectorIsolation.DEDICATED:
            name = dedicated_index_name(store.tenant_id)
            if store.tenant_id not in self.dedicated:
                return []
            del self.dedicated[store.tenant_id]
            self._forget((name, ""))
            return [Step("DedicatedIndexDropped", f"dedicated index {name} dropped")]
        index = self.index_of(store.tenant_id)
        if index is None:
            return []
        self.indexes[index].namespaces.discard(store.tenant_id)
        self._forget((index, store.tenant_id))
        steps = [Step("NamespaceDropped", f"namespace {store.tenant_id} and its vectors removed from shared index "
                                          f"{index}")]
        if not store.shared_index_keep_empty and not self.indexes[index].namespaces:
            del self.indexes[index]
            steps.append(Step("SharedIndexDropped", f"shared index {index} was empty and the class does not keep "
                                                    f"empty indexes"))
        return steps

    async def residue(self, store: DesiredStore) -> list[str]:
        self.enter("residue")
        if store.vector is VectorIsolation.DEDICATED:
            return [f"dedicated index {dedicated_index_name(store.tenant_id)}"] if store.tenant_id in self.dedicated \
                else []
        index = self.index_of(store.tenant_id)
        return [f"namespace {store.tenant_id} in shared index {index}"] if index else []

    async def preflight(self) -> list[Step]:
        self.enter("preflight")
        return list(self.preflight_problems)

    async def verify(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, list[Drift]]:
        self.enter("verify")
        found: dict[str, list[Drift]] = {}
        for store, placement in tenants:
            if drifts := self._drifts(store, placement):
                found[store.tenant_id] = drifts
        return found

    async def probe_isolation(self, store: DesiredStore, placement: VectorPlacement) -> str | None:
        self.enter("probe_isolation")
        return self.isolation_problems.get(store.tenant_id)

    def shared_credential(self) -> str | None:
        return self.handed_to_every_tenant

    # VectorStore: data

    async def count(self, store: DesiredStore, placement: VectorPlacement) -> int:
        self.enter("count")
        return len(self._records_at(placement))

    async def read_batch(self, store: DesiredStore, placement: VectorPlacement, after_id: str | None,
                         limit: int) -> list[VectorRecord]:
        self.enter("read_batch")
        records = self._records_at(placement)
        return [records[id_] for id_ in sorted(records) if after_id is None or id_ > after_id][:limit]

    async def write_batch(self, store: DesiredStore, placement: VectorPlacement,
                          records: Sequence[VectorRecord]) -> None:
        self.enter("write_batch")
        target = self._records_at(placement)
        for record in records[:-1] if self.lose_copies else records:
            target[record.id] = dataclasses.replace(record, values=[-v for v in record.values]) \
                if self.corrupt_copies else record

    async def delete_ids(self, store: DesiredStore, placement: VectorPlacement, ids: Sequence[str]) -> None:
        self.enter("delete_ids")
        records = self._records_at(placement)
        for id_ in ids:
            records.pop(id_, None)

    # VectorStore: measurement

    async def measure(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, VectorUsage]:
        self.enter("measure")
        return {store.tenant_id: VectorUsage(documents=len(self.records.get(key, {})),
                                             storage_bytes=self.storage.get(store.tenant_id, 0))
                for store, placement in tenants if self._exists(key := (placement.index, placement.namespace))}

    async def shared_pool(self) -> list[SharedIndex]:
        self.enter("shared_pool")
        return [SharedIndex(name, index.dimension, index.metric, len(index.namespaces))
                for name, index in sorted(self.indexes.items())]

    # drift and set-up

    def index_of(self, tenant_id: str) -> str | None:
        return next((name for name, index in sorted(self.indexes.items()) if tenant_id in index.namespaces), None)

    def put(self, placement: VectorPlacement, *records: VectorRecord) -> None:
        """The tenant writes these records (with its own credentials)."""
        self._records_at(placement).update({record.id: record for record in records})

    def stored(self, placement: VectorPlacement) -> dict[str, VectorRecord]:
        return dict(self.records.get((placement.index, placement.namespace), {}))

    def drop_namespace(self, tenant_id: str) -> None:
        index = self.index_of(tenant_id)
        assert index is not None, f"{tenant_id} has no namespace"
        self.indexes[index].namespaces.discard(tenant_id)
        self._forget((index, tenant_id))

    def replace_dedicated(self, tenant_id: str) -> None:
        self.dedicated[tenant_id].replaced = True

    def writes_blocked(self, placement: VectorPlacement) -> bool:
        return (placement.index, placement.namespace) in self.writes_refused

    # the decisions

    def _ensure_namespace(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        steps: list[Step] = []
        index = self.index_of(store.tenant_id)
        if index is not None:
            steps += self._grants(store, (index, store.tenant_id), new=False)
        else:
            group = sorted((state.number, name) for name, state in self.indexes.items()
                           if (state.dimension, state.metric) == (store.dimension, store.metric.value))
            index = next((name for _, name in group if len(self.indexes[name].namespaces)
                          < store.shared_index_capacity), None)
            if index is None:
                number = group[-1][0] + 1 if group else 1
                index = shared_index_name(store.dimension, store.metric, number)
                self.indexes[index] = SharedIndexState(store.dimension, store.metric.value, number)
                steps.append(Step("SharedIndexCreated", f"shared index {index} created"))
            self.indexes[index].namespaces.add(store.tenant_id)
            self.records[(index, store.tenant_id)] = {}
            steps.append(Step(NAMESPACE_CREATED, f"namespace {store.tenant_id} placed in shared index {index}"))
            steps.append(Step("NamespaceIsolated", f"only {store.role} reaches namespace {store.tenant_id}"))
            steps += self._grants(store, (index, store.tenant_id), new=True)
        table = f"{SHARED_SCHEMA}.{store.role}" if self.backend == "pgvector" else ""
        return VectorPlacement(backend=self.backend, index=index, namespace=store.tenant_id, table=table), steps

    def _ensure_dedicated(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        name = dedicated_index_name(store.tenant_id)
        steps: list[Step] = []
        state = self.dedicated.get(store.tenant_id)
        if state is not None and state.replaced:
            raise ObjectReplaced(f"{store.schema}.vectors is no longer the vector table the operator made (the "
                                 f"tenant replaced it); the operator will not use it")
        if state is None:
            self.dedicated[store.tenant_id] = DedicatedIndexState()
            self.records[(name, "")] = {}
            steps.append(Step("DedicatedIndexCreated", f"dedicated index {name} created"))
            steps += self._grants(store, (name, ""), new=True)
        else:
            steps += self._grants(store, (name, ""), new=False)
        table = f"{store.schema}.vectors" if self.backend == "pgvector" else ""
        return VectorPlacement(backend=self.backend, index=name, table=table), steps

    def _grants(self, store: DesiredStore, key: tuple[str, str], new: bool) -> list[Step]:
        """Writes allowed or refused as `store.writes_allowed` says; `new`: the placement was just made."""
        refused = key in self.writes_refused
        if store.writes_allowed:
            self.writes_refused.discard(key)
        else:
            self.writes_refused.add(key)
        if new:
            granted = "read and write" if store.writes_allowed else "read and delete (writes blocked until under quota)"
            return [Step("VectorAccessGranted", f"{store.role} may {granted} its vectors in {key[0]}")]
        if refused == (not store.writes_allowed):
            return []
        if store.writes_allowed:
            return [Step("VectorWritesRestored", f"{store.role} may write its vectors in {key[0]} again")]
        return [Step("VectorWritesBlocked", f"{store.role} can read and delete its vectors in {key[0]} but not "
                                            f"write them until it is under quota")]

    def _drifts(self, store: DesiredStore, placement: VectorPlacement) -> list[Drift]:
        key = (placement.index, placement.namespace)
        if placement.namespace:
            if not self._exists(key):
                return [Drift("NamespaceMissing", f"namespace {store.tenant_id} is gone from shared index "
                                                  f"{placement.index}", holds_data=True)]
        else:
            state = self.dedicated.get(store.tenant_id)
            if state is None:
                return [Drift("IndexMissing", f"dedicated index {placement.index} does not exist", holds_data=True)]
            if state.replaced:
                return [Drift(ObjectReplaced.reason, f"{placement.index} was replaced by an object the operator "
                                                     f"did not make")]
        if (key in self.writes_refused) == store.writes_allowed:
            return [Drift("GrantMissing", f"{store.role}'s privileges on {placement.index} are not the ones the "
                                          f"operator granted")]
        return []

    def _exists(self, key: tuple[str, str]) -> bool:
        index, namespace = key
        if namespace:
            return index in self.indexes and namespace in self.indexes[index].namespaces
        return any(dedicated_index_name(tenant) == index for tenant in self.dedicated)

    def _records_at(self, placement: VectorPlacement) -> dict[str, VectorRecord]:
        key = (placement.index, placement.namespace)
        if not self._exists(key):
            raise BackendUnavailable(f"{placement.index}/{placement.namespace} does not exist")
        return self.records.setdefault(key, {})

    def _forget(self, key: tuple[str, str]) -> None:
        self.records.pop(key, None)
        self.writes_refused.discard(key)


# --- the registry ---

@dataclasses.dataclass(frozen=True)
class FakeServer:
    """What the core reads of a class's Postgres server (registry.Backends.server)."""

    host: str = "db.test"
    port: int = 5432
    admin_uri: str = "postgresql://tenantstore_admin:admin-password@db.test:5432/tenants"
    shared_database: str = "tenants"
    admin_role: str = "tenantstore_admin"
    login_refused: bool = False


@dataclasses.dataclass(frozen=True)
class FakeBackends:
    """Shaped like registry.Backends."""

    server: FakeServer
    relational: FakeRelationalStore
    vector: FakeVectorStore
    secret_extras: dict[str, str] = dataclasses.field(default_factory=dict)


class FakeRegistry(Recorder):
    """registry.BackendRegistry: the same backends for every class, preflight problems told in advance."""

    def __init__(self, relational: FakeRelationalStore, vector: FakeVectorStore,
                 secret_extras: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.relational, self.vector = relational, vector
        self.server = FakeServer(host=relational.host, port=relational.port)
        self.secret_extras = dict(secret_extras or {})
        self.preflight_problems: list[Step] = []  # besides what the stores' own preflight finds
        self.classes_built: list[str] = []
        # Classes whose vectors are elsewhere (another backend), on the same Postgres as every other class.
        self.vectors_of_class: dict[str, FakeVectorStore] = {}

    def forbid(self) -> None:
        """Any use of the registry or of the stores fails the test."""
        super().forbid()
        self.relational.forbid()
        self.vector.forbid()

    async def for_class(self, store_class: StoreClass) -> FakeBackends:
        self.enter("for_class")
        self.classes_built.append(store_class.name)
        return FakeBackends(server=dataclasses.replace(self.server, shared_database=store_class.shared_database),
                            relational=self.relational,
                            vector=self.vectors_of_class.get(store_class.name, self.vector),
                            secret_extras=dict(self.secret_extras))

    async def preflight(self, store_class: StoreClass, backends: FakeBackends, max_age: float = 30.0) -> list[Step]:
        self.enter("preflight")
        return [*self.preflight_problems, *await backends.relational.preflight(), *await backends.vector.preflight()]

    async def require_ready(self, store_class: StoreClass, backends: FakeBackends) -> None:
        self.enter("require_ready")
        problems = await self.preflight(store_class, backends)
        if problems:
            raise StoreClassNotReady(f"StoreClass {store_class.name} is not ready ({problems[0].reason}): "
                                     + "; ".join(problem.message for problem in problems))


# --- Kubernetes ---

@dataclasses.dataclass
class FakeSecret:
    data: dict[str, str]  # decoded values
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    owners: dict[str, str] = dataclasses.field(default_factory=dict)  # owner reference uid -> name
    held: bool = False  # another controller's finalizer keeps it after a delete


def encoded(data: Mapping[str, str]) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}


class FakeSecrets(Recorder):
    """kube.Secrets over a dict of Secrets; `writes` counts every API write (create, replace, patch, delete)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[tuple[str, str], FakeSecret] = {}
        self.class_values: dict[SecretKeyRef, str] = {}
        self.writes = 0

    def get(self, namespace: str, name: str) -> FakeSecret | None:
        return self.secrets.get((namespace, name))

    def put_foreign(self, namespace: str, name: str) -> None:
        """A Secret someone else made under the name a tenant wants."""
        self.secrets[(namespace, name)] = FakeSecret(data={"password": "not-yours"}, labels={"app": "other"})

    def remove(self, namespace: str, name: str) -> None:
        """Deleted by hand."""
        del self.secrets[(namespace, name)]

    # kube.Secrets

    async def value(self, ref: SecretKeyRef, fresh: bool = False) -> str:
        self.enter("value")
        if ref not in self.class_values:
            raise StoreClassInvalid(f"Secret {ref.namespace}/{ref.name} named by the StoreClass does not exist")
        return self.class_values[ref]

    async def read_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any]) -> client.V1Secret | None:
        self.enter("read_tenant_secret")
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return None
        self._check_ours(namespace, name, secret, owner)
        return self._as_api_object(namespace, name, secret)

    async def apply_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any],
                                  data: Mapping[str, str], writes_blocked: bool = False,
                                  current: client.V1Secret | None | object = NOT_READ, credential: str = "") -> bool:
        self.enter("apply_tenant_secret")
        labels = {TENANT_ID_LABEL: owner["spec"]["tenantId"], MANAGED_BY_LABEL: MANAGED_BY,
                  **({CREDENTIAL_LABEL: credential} if credential else {})}
        data = {**{k: v for k, v in data.items() if k != WRITES_BLOCKED_KEY},
                **({WRITES_BLOCKED_KEY: "true"} if writes_blocked else {})}
        annotations = {DATA_DIGEST_ANNOTATION: data_digest(encoded(data))}
        uid, owner_name = owner["metadata"]["uid"], owner["metadata"]["name"]
        secret = self.secrets.get((namespace, name))
        if secret is None:
            if writes_blocked:
                annotations[WRITES_BLOCKED_ANNOTATION] = "true"
            self.secrets[(namespace, name)] = FakeSecret(dict(data), labels, annotations, {uid: owner_name})
            self.writes += 1
            return True
        self._check_ours(namespace, name, secret, owner)
        annotations = {**{k: v for k, v in secret.annotations.items() if k != WRITES_BLOCKED_ANNOTATION},
                       **annotations, **({WRITES_BLOCKED_ANNOTATION: "true"} if writes_blocked else {})}
        if secret.data == dict(data) and uid in secret.owners and all(secret.labels.get(k) == v
                                                                     for k, v in labels.items()) \
                and annotations == secret.annotations:
            return False
        secret.data, secret.annotations, secret.owners = dict(data), annotations, {uid: owner_name}
        secret.labels.update(labels)
        self.writes += 1
        return True

    async def credential_secrets(self, namespace: str, owner: Mapping[str, Any]) -> dict[str, str]:
        self.enter("credential_secrets")
        return {name: secret.labels[CREDENTIAL_LABEL] for (space, name), secret in self.secrets.items()
                if space == namespace and CREDENTIAL_LABEL in secret.labels
                and owner["metadata"]["uid"] in secret.owners}

    async def mark_writes_blocked(self, namespace: str, name: str, owner: Mapping[str, Any], blocked: bool) -> bool:
        self.enter("mark_writes_blocked")
        secret = self.secrets.get((namespace, name))
        if secret is None or not self._is_ours(secret, owner):
            return False
        if (secret.annotations.get(WRITES_BLOCKED_ANNOTATION) == "true") == blocked:
            return False
        secret.annotations.pop(WRITES_BLOCKED_ANNOTATION, None)
        secret.data.pop(WRITES_BLOCKED_KEY, None)
        if blocked:
            secret.annotations[WRITES_BLOCKED_ANNOTATION] = secret.data[WRITES_BLOCKED_KEY] = "true"
        self.writes += 1
        return True

    async def delete_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any]) -> SecretDeletion:
        self.enter("delete_tenant_secret")
        secret = self.secrets.get((namespace, name))
        if secret is None or not self._is_ours(secret, owner):
            return SecretDeletion.ABSENT
        self.writes += 1
        if secret.held:
            return SecretDeletion.PENDING
        del self.secrets[(namespace, name)]
        return SecretDeletion.DELETED

    async def release_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any]) -> bool:
        self.enter("release_tenant_secret")
        secret = self.secrets.get((namespace, name))
        if secret is None or not self._is_ours(secret, owner):
            return False
        secret.owners.pop(owner["metadata"]["uid"], None)
        self.writes += 1
        return True

    # ownership, as kube.Secrets judges it

    @staticmethod
    def _is_ours(secret: FakeSecret, owner: Mapping[str, Any]) -> bool:
        if owner["metadata"]["uid"] in secret.owners:
            return True
        # An orphan made for the same tenant (left by deletionPolicy Retain) may be adopted.
        return not secret.owners and secret.labels.get(MANAGED_BY_LABEL) == MANAGED_BY \
            and secret.labels.get(TENANT_ID_LABEL) == owner["spec"]["tenantId"]

    def _check_ours(self, namespace: str, name: str, secret: FakeSecret, owner: Mapping[str, Any]) -> None:
        if not self._is_ours(secret, owner):
            raise SecretConflict(f"Secret {namespace}/{name} exists and is not managed for this TenantStore; set "
                                 f"spec.secretName to another name")

    @staticmethod
    def _as_api_object(namespace: str, name: str, secret: FakeSecret) -> client.V1Secret:
        references = [client.V1OwnerReference(api_version=API_VERSION, kind="TenantStore", name=owner_name, uid=uid,
                                               controller=True, block_owner_deletion=True)
                      for uid, owner_name in secret.owners.items()]
        return client.V1Secret(metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(secret.labels),
                                                            annotations=dict(secret.annotations),
                                                            owner_references=references or None),
                               data=encoded(secret.data), type="Opaque")


class FakeNamespaces(Recorder):
    """kube.NamespaceLabels: the labels of each Namespace."""

    def __init__(self, labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        super().__init__()
        self.namespaces: dict[str, dict[str, str]] = {name: dict(value) for name, value in (labels or {}).items()}

    async def labels(self, name: str) -> Mapping[str, str]:
        self.enter("labels")
        if name not in self.namespaces:
            raise BackendUnavailable(f"cannot read the labels of Namespace {name}: Not Found")
        return dict(self.namespaces[name])


class FakeStatuses(Recorder):
    """kube.TenantStatuses: the status patches the periodic jobs write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.patches: list[tuple[str, dict[str, Any]]] = []  # ("namespace/name", changes)

    async def patch(self, body: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
        self.enter("patch")
        meta = body["metadata"]
        self.patches.append((f"{meta['namespace']}/{meta['name']}", dict(changes)))

    async def patch_unless_changed(self, body: Mapping[str, Any], changes: Mapping[str, Any]) -> bool:
        await self.patch(body, changes)
        return True
