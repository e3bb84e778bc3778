"""Tools of the hostile-tenant suite.

Tenants are provisioned by the operator's own backends (no Kubernetes); an attacker then holds nothing but
what its credential Secret would give it: a URI that logs in as its own role. A superuser's connection (names
resolved in pg_catalog only, never acting as anyone else) takes the snapshots and checks side effects.
Every attack is registered in ATTEMPTS, which the suite's terminal summary reports.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from tenantstore.backends import RelationalPlacement, VectorPlacement, VectorRecord
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import ReconcileError
from tenantstore.models import DesiredStore, Metric, Quotas, RelationalIsolation, VectorIsolation

SCHEMA, DATABASE = RelationalIsolation.SCHEMA, RelationalIsolation.DATABASE
NAMESPACE, DEDICATED = VectorIsolation.NAMESPACE, VectorIsolation.DEDICATED

DIMENSION = 3
SHARED_DATABASE = "tenants"
SHARED_VECTOR_SCHEMA = "tenantstore_vectors"
BOOKKEEPING_SCHEMA = "tenantstore"
# Every TenantStore of the suite lives in this Kubernetes namespace unless a test says otherwise; a role
# comment or catalog that names it gives an owner away.
OWNER_NAMESPACE = "hxsec-ns"
# Generous, so connections a previous test closed (the server ends them asynchronously) never trip it.
FLEET_CONNECTION_LIMIT = 10
# Provisioning takes well under a second here; a lock held by a tenant would make it wait far longer.
DEADLINE_SECONDS = 20.0
# A test that meets a lock fails with a lock timeout instead of hanging the run.
TENANT_CONNECTION_OPTIONS = "-c statement_timeout=20s -c lock_timeout=5s"
# The checker's connections resolve names in pg_catalog only and act as the superuser, whatever a tenant's
# database sets as its defaults (search_path, role).
SUPERUSER_OPTIONS = "-c search_path=pg_catalog,pg_temp -c role=none -c statement_timeout=30s"
LOCK_MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
              "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")
# Every name the operator has used or uses for a lock (advisory keys hash them).
OPERATOR_LOCK_NAMES = tuple(
    [f"tenantstore:placement:{DIMENSION}:{metric.value}" for metric in Metric]
    + [f"placement:{DIMENSION}:{metric.value}" for metric in Metric]
    + ["tenantstore:shared-acl", "shared-acl", "tenantstore", "tenantstore:placement", "placement"])
BOOKKEEPING_TABLES = ("claims", "placements", "locks", "daily_query_baseline")

# Data of tenant <id> carries "hxsecret-<id>": seeing another tenant's marker is a leak.
MARKER = re.compile(r"hxsecret-([a-z0-9]+)")
KNOWN_TENANT_IDS: set[str] = set()
KNOWN_OWNER_UIDS: dict[str, str] = {}  # uid -> tenant id

ErrorClasses = type[BaseException] | tuple[type[BaseException], ...]
T = TypeVar("T")


# --- the attempt register ---

@dataclasses.dataclass(frozen=True)
class Outcome:
    name: str
    verdict: str  # "refused", "refused-otherwise" (refused, but not the way the design says) or "breached"
    detail: str


class Attempts:
    """Counts distinct attack attempts and how each ended; a breach fails the test that made it."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}

    @property
    def attempted(self) -> int:
        return len(self.outcomes)

    @property
    def refused_count(self) -> int:
        return sum(outcome.verdict != "breached" for outcome in self.outcomes.values())

    def record(self, name: str, refused: bool, detail: str, *, as_expected: bool = True) -> None:
        if name in self.outcomes:
            raise AssertionError(f"attempt {name!r} is registered twice: every attempt must be distinct")
        verdict = "breached" if not refused else "refused" if as_expected else "refused-otherwise"
        self.outcomes[name] = Outcome(name, verdict, detail[:600])
        if verdict == "breached":
            raise AssertionError(f"NOT refused: {name}: {detail}")
        if verdict == "refused-otherwise":
            raise AssertionError(f"refused, but not as the design says: {name}: {detail}")

    def refused(self, name: str, attack: Callable[[], T], *, expect: ErrorClasses = psycopg.errors.InsufficientPrivilege,
                message: str | None = None, harmless: Callable[[T], bool] | None = None,
                inert: Callable[[T], bool] | None = None) -> None:
        """Run `attack`; it is refused if it raises `expect` (matching `message`), or returns what `harmless` accepts.

        `inert` tells an attack that went through but gained nothing (refused in effect, not as the design says).
        """
        try:
            result = attack()
        except Exception as error:  # noqa: BLE001 - every way an attack ends is judged below
            self._judge_error(name, error, expect, message)
            return
        self._judge_result(name, result, harmless, inert)

    async def refused_async(self, name: str, attack: Callable[[], Awaitable[T]], *,
                            expect: ErrorClasses = psycopg.errors.InsufficientPrivilege, message: str | None = None,
                            harmless: Callable[[T], bool] | None = None) -> None:
        try:
            result = await attack()
        except Exception as error:  # noqa: BLE001
            self._judge_error(name, error, expect, message)
            return
        self._judge_result(name, result, harmless, None)

    def _judge_error(self, name: str, error: Exception, expect: ErrorClasses, message: str | None) -> None:
        text = f"{type(error).__name__}: {first_line(error)}"
        if isinstance(error, expect) and (message is None or re.search(message, str(error))):
            self.record(name, True, text)
        elif isinstance(error, (psycopg.Error, ReconcileError, *(expect if isinstance(expect, tuple) else (expect,)))):
            self.record(name, True, f"{text} (expected {describe(expect)}"
                                    f"{' matching ' + repr(message) if message else ''})", as_expected=False)
        else:
            raise error  # neither a refusal nor a success: a bug, shown with its own traceback

    def _judge_result(self, name: str, result: Any, harmless: Callable[[Any], bool] | None,
                      inert: Callable[[Any], bool] | None) -> None:
        if harmless is not None and harmless(result):
            self.record(name, True, f"went through without effect: {short(result)}")
        elif inert is not None and inert(result):
            self.record(name, True, f"went through, gaining nothing, where the design refuses it: {short(result)}",
                        as_expected=False)
        else:
            self.record(name, False, f"went through: {short(result)}")


ATTEMPTS = Attempts()


def describe(expect: ErrorClasses) -> str:
    classes = expect if isinstance(expect, tuple) else (expect,)
    return " or ".join(cls.__name__ for cls in classes)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def short(value: Any, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- the superuser's view ---

class Superuser:
    """Sync superuser connections for snapshots and checks; those to long-lived databases are kept open."""

    def __init__(self, uri_for: Callable[[str], str]):
        self._uri_for = uri_for
        self._kept: dict[str, psycopg.Connection[Any]] = {}
        self._keep = {SHARED_DATABASE, "postgres"}

    def keep(self, database: str) -> None:
        """Keep a connection to `database` (one the test run does not drop) instead of opening one per query."""
        self._keep.add(database)

    def connect(self, database: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self._uri_for(database), autocommit=True, options=SUPERUSER_OPTIONS,
                               application_name="hx-checker", connect_timeout=5)

    def rows(self, database: str, query: str | sql.Composable, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        if database not in self._keep:
            # Tenants' databases are dropped WITH (FORCE) by the operator: never keep a connection to one.
            with self.connect(database) as conn:
                cursor = conn.execute(query, params)
                return cursor.fetchall() if cursor.description else []
        for retry in (False, True):
            conn = self._kept.get(database)
            if conn is None or conn.closed or conn.broken:
                conn = self._kept[database] = self.connect(database)
            try:
                cursor = conn.execute(query, params)
                return cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError:
                if retry:
                    raise
                self._kept.pop(database, None)
        raise AssertionError("unreachable")

    def value(self, database: str, query: str | sql.Composable, params: Sequence[Any] | None = None) -> Any:
        rows = self.rows(database, query, params)
        return rows[0][0] if rows else None

    def database_exists(self, database: str) -> bool:
        return bool(self.value("postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (database,)))

    def role_exists(self, role: str) -> bool:
        return bool(self.value("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)))

    def close(self) -> None:
        for conn in self._kept.values():
            conn.close()
        self._kept.clear()


# --- tenants ---

def desired(tenant_id: str, relational: RelationalIsolation = SCHEMA, vector: VectorIsolation = NAMESPACE, *,
            owner: str | None = None, uid: str | None = None, connection_limit: int = FLEET_CONNECTION_LIMIT,
            suspended: bool = False, writes_allowed: bool = True) -> DesiredStore:
    store = DesiredStore(tenant_id=tenant_id, uid=uid or str(uuid.uuid4()), tenant_store=owner or f"{OWNER_NAMESPACE}/{tenant_id}",
                         dimension=DIMENSION, metric=Metric.COSINE, relational=relational, vector=vector,
                         quotas=Quotas(0, 0, connection_limit, 0), suspended=suspended,
                         shared_database=SHARED_DATABASE, shared_index_capacity=100, writes_allowed=writes_allowed)
    KNOWN_TENANT_IDS.add(tenant_id)
    KNOWN_OWNER_UIDS[store.uid] = tenant_id
    return store


def holding_role_of(store: DesiredStore) -> str:
    return getattr(store, "holding_role", None) or "tenantstore_hold_" + store.tenant_id.replace("-", "_")


@dataclasses.dataclass
class Tenant:
    store: DesiredStore
    password: str
    relational: RelationalPlacement
    vectors: VectorPlacement                 # where its vectors live now
    dedicated: VectorPlacement | None = None  # mid tier move: the dedicated target as well

    @property
    def id(self) -> str:
        return self.store.tenant_id

    @property
    def role(self) -> str:
        return self.store.role

    @property
    def database(self) -> str:
        return self.store.database

    @property
    def schema(self) -> str:
        return self.store.schema

    @property
    def partition(self) -> str:
        return f"{SHARED_VECTOR_SCHEMA}.{self.role}"

    @property
    def holding_role(self) -> str:
        return holding_role_of(self.store)

    @property
    def marker(self) -> str:
        return f"hxsecret-{self.id}"

    def uri(self, database: str | None = None, password: str | None = None) -> str:
        return (f"postgresql://{self.role}:{password or self.password}@{self.relational.host}:{self.relational.port}/"
                f"{database or self.database}")

    def connect(self, database: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection with nothing but the tenant's credentials, as its Secret gives them."""
        return psycopg.connect(self.uri(database), autocommit=True, connect_timeout=5, options=TENANT_CONNECTION_OPTIONS,
                               application_name="hx-tenant", **kwargs)

    def data_tables(self) -> list[tuple[str, str]]:
        """(database, table) of everything the tenant stores, for snapshots."""
        tables = [(self.database, f"{self.schema}.ledger")]
        tables.append((SHARED_DATABASE, self.partition) if self.vectors.namespace else (self.database, self.vectors.table))
        if self.dedicated is not None:
            tables.append((self.database, self.dedicated.table))
        return tables


async def provision(server: PostgresServer, store: DesiredStore, *, seed: bool = True,
                    password: str | None = None) -> Tenant:
    password = password or secrets.token_urlsafe(18)
    relational, _ = await PostgresRelationalStore(server).ensure(store, password, password_is_new=True)
    vectors, _ = await PgvectorStore(server).ensure(store)
    tenant = Tenant(store, password, relational, vectors)
    if seed:
        seed_data(tenant)
    return tenant


async def add_dedicated_target(server: PostgresServer, tenant: Tenant, *, seed: bool = True) -> None:
    """The state of a vector tier move in flight: the namespace partition and the dedicated table both exist."""
    tenant.dedicated, _ = await PgvectorStore(server).ensure(dataclasses.replace(tenant.store, vector=DEDICATED))
    if seed:
        with tenant.connect() as conn:
            for n in (1, 2, 3):
                conn.execute(f"INSERT INTO {tenant.dedicated.table} (id, embedding, metadata) VALUES (%s, %s, %s)",
                             (f"{tenant.marker}-d{n}", f"[{n},2,1]", f'{{"secret": "{tenant.marker}-dmeta-{n}"}}'))


def seed_data(tenant: Tenant) -> None:
    """What a real tenant keeps: a table of its own (with a sequence) and a few vectors, written with its credentials."""
    with tenant.connect() as conn:
        conn.execute(f"CREATE SEQUENCE {tenant.schema}.ledger_ids")
        conn.execute(f"CREATE TABLE {tenant.schema}.ledger (id int PRIMARY KEY, secret text NOT NULL)")
        for n in (1, 2, 3):
            conn.execute(f"INSERT INTO {tenant.schema}.ledger VALUES (%s, %s)", (n, f"{tenant.marker}-ledger-{n}"))
            metadata = f'{{"secret": "{tenant.marker}-meta-{n}"}}'
            if tenant.vectors.namespace:
                conn.execute(f"INSERT INTO {tenant.vectors.table} (namespace, id, embedding, metadata) "
                             f"VALUES (%s, %s, %s, %s)", (tenant.vectors.namespace, f"{tenant.marker}-v{n}",
                                                          f"[{n},1,{len(tenant.id)}]", metadata))
            else:
                conn.execute(f"INSERT INTO {tenant.vectors.table} (id, embedding, metadata) VALUES (%s, %s, %s)",
                             (f"{tenant.marker}-v{n}", f"[{n},1,{len(tenant.id)}]", metadata))


async def block_writes(server: PostgresServer, tenant: Tenant) -> None:
    """Quota Block, as the usage job applies it: relational and vector writes refused, reads kept."""
    blocked = dataclasses.replace(tenant.store, writes_allowed=False)
    await PostgresRelationalStore(server).ensure_write_access(blocked)
    await PgvectorStore(server).ensure_write_access(blocked, tenant.vectors)
    tenant.store = blocked


async def suspend(server: PostgresServer, tenant: Tenant) -> None:
    suspended = dataclasses.replace(tenant.store, suspended=True)
    await PostgresRelationalStore(server).ensure(suspended, tenant.password, password_is_new=False)
    tenant.store = suspended


async def operator_teardown(server: PostgresServer, store: DesiredStore, *, both_vector_isolations: bool = False) -> None:
    vectors = PgvectorStore(server)
    if both_vector_isolations:
        other = DEDICATED if store.vector is NAMESPACE else NAMESPACE
        await vectors.teardown(dataclasses.replace(store, vector=other))
    await vectors.teardown(store)
    await PostgresRelationalStore(server).teardown(store)


def scrub(superuser: Superuser, store: DesiredStore) -> None:
    """Remove whatever of a tenant is left, as the superuser, whatever state an attack left it in."""
    roles = [role for role in (store.role, holding_role_of(store)) if superuser.role_exists(role)]
    if roles:
        superuser.rows("postgres", "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = ANY(%s)",
                       (roles,))
    database = f"tenant_{store.tenant_id.replace('-', '_')}"
    if superuser.database_exists(database):
        # A tenant may have made its database a template or closed it: neither may keep it alive.
        superuser.rows("postgres", sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false ALLOW_CONNECTIONS true").format(
            sql.Identifier(database)))
        superuser.rows("postgres", sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
    superuser.rows(SHARED_DATABASE, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store.role)))
    # CASCADE: another tenant's view may depend on the partition (that is one of the attacks).
    superuser.rows(SHARED_DATABASE, sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
        sql.Identifier(SHARED_VECTOR_SCHEMA, store.role)))
    for (table,) in superuser.rows(SHARED_DATABASE, "SELECT tablename::text FROM pg_policies WHERE schemaname = %s "
                                                    "AND policyname = %s", (SHARED_VECTOR_SCHEMA, store.role)):
        superuser.rows(SHARED_DATABASE, sql.SQL("DROP POLICY {} ON {}").format(
            sql.Identifier(store.role), sql.Identifier(SHARED_VECTOR_SCHEMA, table)))
    for role in roles:
        superuser.rows(SHARED_DATABASE, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        superuser.rows(SHARED_DATABASE, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    for table in BOOKKEEPING_TABLES:
        if superuser.value(SHARED_DATABASE, "SELECT to_regclass(%s) IS NOT NULL", (f"{BOOKKEEPING_SCHEMA}.{table}",)) and \
                superuser.value(SHARED_DATABASE, "SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass "
                                                 "AND attname = 'role'", (f"{BOOKKEEPING_SCHEMA}.{table}",)):
            superuser.rows(SHARED_DATABASE, sql.SQL("DELETE FROM {} WHERE role = %s").format(
                sql.Identifier(BOOKKEEPING_SCHEMA, table)), (store.role,))


async def remove(server: PostgresServer, superuser: Superuser, store: DesiredStore) -> None:
    """The operator's teardown first; whatever it could not remove (an attack may have seen to that), the superuser does."""
    try:
        await asyncio.wait_for(operator_teardown(server, store, both_vector_isolations=True), DEADLINE_SECONDS)
    except Exception:  # noqa: BLE001 - cleanup: the scrub below removes what is left either way
        pass
    scrub(superuser, store)


class FreshTenants:
    """Tenants of one test (an attack may wreck its attacker); removed after the test whatever happened."""

    def __init__(self, server: PostgresServer, superuser: Superuser):
        self.server, self.superuser = server, superuser
        self.stores: list[DesiredStore] = []
        self.trapped: set[str] = set()

    def mark_trapped(self, tenant: Tenant) -> None:
        """The tenant set traps for the operator: after the test only the superuser removes it, so cleanup
        springs none of them (the test itself runs the operator's teardown when it judges it)."""
        self.trapped.add(tenant.role)

    async def make(self, tenant_id: str, relational: RelationalIsolation = SCHEMA,
                   vector: VectorIsolation = NAMESPACE, *, seed: bool = True, **options: Any) -> Tenant:
        store = desired(tenant_id, relational, vector, **options)
        self.track(store)  # before provisioning: removed even when provisioning is cut short
        return await provision(self.server, store, seed=seed)

    def track(self, store: DesiredStore) -> None:
        self.stores.append(store)

    async def remove_all(self) -> None:
        errors = []
        for store in reversed(self.stores):
            try:
                if store.role in self.trapped:
                    scrub(self.superuser, store)
                else:
                    await remove(self.server, self.superuser, store)
            except Exception as error:  # noqa: BLE001 - remove the others first, then report
                errors.append(error)
        if errors:
            raise errors[0]


# --- snapshots and side effects ---

def snapshot(superuser: Superuser, tenants: Iterable[Tenant]) -> dict[str, str]:
    """(count, md5 of every row) of each table the tenants keep, read as the superuser."""
    by_database: dict[str, list[str]] = {}
    for tenant in tenants:
        for database, table in tenant.data_tables():
            by_database.setdefault(database, []).append(table)
    digest: dict[str, str] = {}
    for database, tables in by_database.items():
        present = [table for (table,) in superuser.rows(
            database, "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL", (tables,))]
        digest.update({f"{database}/{table}": "missing" for table in tables if table not in present})
        if not present:
            continue
        parts = [sql.SQL("SELECT {name}, count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
                         "FROM {table} t").format(name=sql.Literal(f"{database}/{table}"),
                                                  table=sql.Identifier(*table.split(".", 1)))
                 for table in present]
        for name, value in superuser.rows(database, sql.SQL(" UNION ALL ").join(parts)):
            digest[name] = value
    return digest


def memberships(superuser: Superuser, role: str) -> list[str]:
    return [name for name, _ in grants_to(superuser, role)]


def grants_to(superuser: Superuser, role: str) -> list[tuple[str, str]]:
    """(granted role, grantor) of every membership `role` holds."""
    return [(granted, grantor) for granted, grantor in superuser.rows("postgres", """
        SELECT r.rolname::text, m.grantor::regrole::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
         WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY 1""", (role,))]


def revoke_everything(superuser: Superuser, role: str) -> None:
    """Undo a breach so one does not fail every later test; a membership is revoked as the grantor made it."""
    for granted, grantor in grants_to(superuser, role):
        superuser.rows("postgres", sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(
            sql.Identifier(granted), sql.Identifier(role), sql.Identifier(grantor)))


def owned_objects(superuser: Superuser, database: str, owner: str, schemas: Sequence[str] | None = None) -> set[str]:
    """Relations, functions, operators, types, schemas (and the database itself) `owner` owns in `database`."""
    if not superuser.database_exists(database):
        return set()
    where_schema = "AND n.nspname = ANY(%(schemas)s)" if schemas else "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    rows = superuser.rows(database, f"""
        WITH who AS (SELECT oid FROM pg_roles WHERE rolname = %(owner)s)
        SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relowner = (SELECT oid FROM who) {where_schema}
        UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.proowner = (SELECT oid FROM who) {where_schema}
        UNION ALL SELECT 'operator ' || o.oid::regoperator::text FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE o.oprowner = (SELECT oid FROM who) {where_schema}
        UNION ALL SELECT 'type ' || n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE t.typowner = (SELECT oid FROM who) AND t.typrelid = 0 AND t.typelem = 0 {where_schema}
        UNION ALL SELECT 'schema ' || n.nspname FROM pg_namespace n WHERE n.nspowner = (SELECT oid FROM who) {where_schema}
        UNION ALL SELECT 'database ' || datname FROM pg_database
         WHERE datdba = (SELECT oid FROM who) AND datname = current_database()""",
        {"owner": owner, "schemas": list(schemas or [])})
    return {name for (name,) in rows}


def operator_made(objects: set[str], tenant: Tenant) -> set[str]:
    """What the operator itself legitimately owns among `objects`: the dedicated table and its index, sequence, TOAST."""
    tables = {placement.table for placement in (tenant.vectors, tenant.dedicated) if placement and not placement.namespace}
    keep = set()
    for name in objects:
        relation = name.removeprefix("relation ")
        if any(relation == table or relation.startswith(f"{table.split('.')[0]}.vectors_") for table in tables):
            keep.add(name)
    return keep


def role_attributes(superuser: Superuser, role: str) -> dict[str, Any] | None:
    rows = superuser.rows("postgres", """
        SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolconnlimit, rolcanlogin
          FROM pg_roles WHERE rolname = %s""", (role,))
    if not rows:
        return None
    keys = ("superuser", "createrole", "createdb", "replication", "bypassrls", "connection_limit", "can_login")
    return dict(zip(keys, rows[0], strict=True))


def privilege_problems(superuser: Superuser, tenant: Tenant) -> list[str]:
    """What a tenant's role must never gain: memberships, elevated attributes, a lifted connection limit."""
    problems = [f"{tenant.role} became a member of {granted}" for granted in memberships(superuser, tenant.role)]
    attributes = role_attributes(superuser, tenant.role)
    if attributes is not None:
        elevated = [key for key in ("superuser", "createrole", "createdb", "replication", "bypassrls") if attributes[key]]
        if elevated:
            problems.append(f"{tenant.role} gained {', '.join(elevated)}")
        if attributes["connection_limit"] != tenant.store.connection_limit:
            problems.append(f"{tenant.role} connection limit is {attributes['connection_limit']}, "
                            f"not {tenant.store.connection_limit}")
        if attributes["can_login"] == tenant.store.suspended:
            problems.append(f"{tenant.role} can{'' if attributes['can_login'] else ' not'} log in "
                            f"although it is {'' if tenant.store.suspended else 'not '}suspended")
    return problems


# --- judging what an attack returned ---

@dataclasses.dataclass
class SqlResult:
    rows: list[tuple[Any, ...]]
    rowcount: int
    is_read: bool = False
    notices: list[str] = dataclasses.field(default_factory=list)
    copied: str = ""

    def text(self) -> str:
        return "\n".join([repr(self.rows), *self.notices, self.copied])


def foreign_markers(text: str, attacker_id: str) -> set[str]:
    return {owner for owner in MARKER.findall(text) if owner != attacker_id}


def foreign_cells(rows: Sequence[Sequence[Any]], attacker_id: str) -> set[str]:
    """Cells that are another tenant's id, such as the namespace column of its rows."""
    others = KNOWN_TENANT_IDS - {attacker_id}
    return {str(cell) for row in rows for cell in row if isinstance(cell, str) and cell in others}


def reveals_nothing_foreign(result: SqlResult, attacker_id: str) -> bool:
    return not foreign_markers(result.text(), attacker_id) and not foreign_cells(result.rows, attacker_id)


def reveals_no_owner(text: str, attacker_id: str) -> bool:
    """No other tenant's owner (namespace, name or uid of its TenantStore) in `text`."""
    uids = [uid for uid, owner in KNOWN_OWNER_UIDS.items() if owner != attacker_id]
    return f'{OWNER_NAMESPACE}/' not in text.replace(f"{OWNER_NAMESPACE}/{attacker_id}", "") and \
        not any(uid in text for uid in uids)


# --- waiting with a deadline ---

@dataclasses.dataclass
class Timed:
    in_time: bool
    result: Any = None
    error: BaseException | None = None

    def describe(self) -> str:
        if not self.in_time and isinstance(self.error, TimeoutError):
            return "did not finish within the deadline, nor after the attacker let go"
        if not self.in_time:
            return "did not finish within the deadline (it finished only after the attacker let go)"
        return f"failed: {type(self.error).__name__}: {first_line(self.error)}" if self.error else "finished in time"


async def finishes_within(awaitable: Awaitable[T], seconds: float, release: Callable[[], None]) -> Timed:
    """Await with a deadline; past it, `release` the attacker's hold so the operator can finish, then report late."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    in_time = bool(done)
    if not in_time:
        release()
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return Timed(False, error=TimeoutError("still running after the attacker let go"))
    error = task.exception()
    return Timed(in_time, None if error else task.result(), error)


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `condition` until it holds, failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds:.0f} s waiting for {what}")
        time.sleep(0.05)


def connections_of(superuser: Superuser, role: str) -> int:
    return int(superuser.value("postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)))


def records(count: int, prefix: str) -> list[VectorRecord]:
    return [VectorRecord(f"{prefix}-{n}", [float(n), 0.5, 1.0], {"n": n}) for n in range(1, count + 1)]


# --- the fleet every attack module shares ---

# The fleet's victims: their data's snapshot must never change (attackers are "free", "enterprise", "blocked",
# "enterprise_blocked", "suspended" and "moving", which is a victim too: nothing it tries may change its own rows).
VICTIM_KEYS = ("victim", "pro_victim", "enterprise_victim", "moving")


@dataclasses.dataclass
class Fleet:
    tenants: dict[str, Tenant]
    shared_table: str  # the LIST-partitioned parent all namespace tenants of the suite share
    admin_role: str
    server: PostgresServer
    superuser: Superuser

    def __getitem__(self, key: str) -> Tenant:
        return self.tenants[key]

    @property
    def victims(self) -> list[Tenant]:
        return [self.tenants[key] for key in VICTIM_KEYS]

    def fields(self, attacker_key: str) -> dict[str, str]:
        """Names an attack template may use; `me`/`my_*` are the attacker's own."""
        me, victim, pro, enterprise_victim = (self.tenants[attacker_key], self.tenants["victim"],
                                              self.tenants["pro_victim"], self.tenants["enterprise_victim"])
        mover = self.tenants["moving"]
        return {
            "me": me.id, "my_role": me.role, "my_schema": me.schema, "my_database": me.database,
            "my_vectors": me.vectors.table, "my_partition": me.partition, "holding": me.holding_role,
            "my_dedicated": me.dedicated.table if me.dedicated else f"{me.schema}.vectors",
            "shared": self.shared_table, "admin": self.admin_role,
            "victim": victim.id, "victim_role": victim.role, "victim_schema": victim.schema,
            "victim_partition": victim.partition, "pro_victim_partition": pro.partition,
            "enterprise_victim_role": enterprise_victim.role, "enterprise_victim_db": enterprise_victim.database,
            "mover_dedicated": mover.dedicated.table if mover.dedicated else "",
        }


# --- SQL attacks, described as data ---

@dataclasses.dataclass(frozen=True)
class CopyOut:
    template: str


@dataclasses.dataclass(frozen=True)
class CopyIn:
    template: str
    rows: tuple[tuple[str, ...], ...]


Step = str | CopyOut | CopyIn
Judge = Callable[[SqlResult, "AttackContext"], bool]


@dataclasses.dataclass(frozen=True)
class SqlAttack:
    """Steps run in one connection of the attacker; the attack is refused if a step raises `expect`, or if the
    last step's result satisfies `judge` (it went through and gained nothing)."""

    name: str
    attacker: str
    steps: tuple[Step, ...]
    expect: ErrorClasses = psycopg.errors.InsufficientPrivilege
    judge: Judge | None = None
    transaction: bool = False  # inside BEGIN ... ROLLBACK (LOCK and cursors need a transaction block)
    database: str | None = None  # a template; the attacker's own database by default
    # Whether a statement that went through reading nothing foreign and changing no row gained nothing. Not so
    # for LOCK: holding the lock is the gain.
    inert_when_empty: bool = True

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass
class AttackContext:
    fleet: Fleet
    attacker: Tenant
    fields: dict[str, str]

    def render(self, template: str) -> str:
        return template.format_map(self.fields)


def run_step(conn: psycopg.Connection[Any], step: Step, context: AttackContext) -> SqlResult:
    if isinstance(step, CopyOut):
        with conn.cursor() as cursor, cursor.copy(context.render(step.template)) as copy:
            copied = b"".join(bytes(chunk) for chunk in copy)
        return SqlResult([], -1, is_read=True, copied=copied.decode(errors="replace"))
    if isinstance(step, CopyIn):
        with conn.cursor() as cursor:
            with cursor.copy(context.render(step.template)) as copy:
                for row in step.rows:
                    copy.write_row([context.render(cell) for cell in row])
            return SqlResult([], cursor.rowcount)
    cursor = conn.execute(context.render(step))
    if cursor.description is None:
        return SqlResult([], cursor.rowcount)
    return SqlResult(cursor.fetchall(), cursor.rowcount, is_read=True)


def run_sql_attack(attempts: Attempts, fleet: Fleet, attack: SqlAttack) -> None:
    context = AttackContext(fleet, fleet[attack.attacker], fleet.fields(attack.attacker))
    database = context.render(attack.database) if attack.database else None

    def attack_once() -> SqlResult:
        notices: list[str] = []
        with context.attacker.connect(database) as conn:
            conn.add_notice_handler(lambda diag: notices.append(f"{diag.severity}: {diag.message_primary}"))
            if attack.transaction:
                conn.execute("BEGIN")
            try:
                result = SqlResult([], -1)
                for step in attack.steps:
                    result = run_step(conn, step, context)
            finally:
                if attack.transaction and not conn.broken:
                    conn.execute("ROLLBACK")
        result.notices = notices
        return result

    harmless = (lambda result: attack.judge(result, context)) if attack.judge else None  # type: ignore[misc]
    # A judge has the last word on a statement that went through; without one, "gained nothing" is a lesser refusal.
    inert = (lambda result: gained_nothing(result, context)) if attack.inert_when_empty and not attack.judge else None
    attempts.refused(attack.name, attack_once, expect=attack.expect, harmless=harmless, inert=inert)


def gained_nothing(result: SqlResult, context: "AttackContext") -> bool:
    """Read nothing of anyone else, changed no row: refused in effect, if not in the way the design says."""
    return reveals_nothing_foreign(result, context.attacker.id) and (result.is_read or result.rowcount <= 0)


# Judges: what makes a statement that went through harmless.

def no_foreign_rows(result: SqlResult, context: AttackContext) -> bool:
    return reveals_nothing_foreign(result, context.attacker.id)


def no_rows_touched(result: SqlResult, context: AttackContext) -> bool:
    return result.rowcount <= 0


def skipped_with_warning(result: SqlResult, context: AttackContext) -> bool:
    return any("skipping" in notice for notice in result.notices)


def no_owner_identity(result: SqlResult, context: AttackContext) -> bool:
    return reveals_no_owner(result.text(), context.attacker.id)


def no_password_hashes(result: SqlResult, context: AttackContext) -> bool:
    return "SCRAM-SHA-256$" not in result.text() and not re.search(r"md5[0-9a-f]{32}", result.text())


def superuser_finds_false(template: str, database: str = SHARED_DATABASE) -> Judge:
    """For GRANTs Postgres answers with a warning only: the privilege must still be missing afterwards."""
    def judge(result: SqlResult, context: AttackContext) -> bool:
        return context.fleet.superuser.value(context.render(database), context.render(template)) is False
    return judge


# --- holding locks the way an attacker would ---

def grab(conn: psycopg.Connection[Any], statement: str) -> bool:
    """Take what `statement` takes inside the open transaction; a refusal leaves the transaction (and the rest) held."""
    conn.execute("SAVEPOINT hx_grab")
    try:
        conn.execute(statement)
    except psycopg.Error:
        conn.execute("ROLLBACK TO SAVEPOINT hx_grab")
        return False
    conn.execute("RELEASE SAVEPOINT hx_grab")
    return True


def advisory_lock_statements(function: str = "pg_advisory_lock") -> list[str]:
    """Every advisory key the operator's lock names could hash to, in both key spaces."""
    statements = []
    for name in OPERATOR_LOCK_NAMES:
        statements += [f"SELECT {function}(hashtextextended('{name}', 0))", f"SELECT {function}(hashtext('{name}'))",
                       f"SELECT {function}(hashtext('{name}'), 0)"]
    return statements


def hold_everything(tenant: Tenant, fleet: Fleet) -> psycopg.Connection[Any]:
    """An attacker's connection left open mid-transaction, holding every lock it can get on its own objects and on
    every advisory key the operator uses, after trying (and failing) to lock what is not its own."""
    conn = tenant.connect()
    for statement in advisory_lock_statements():
        conn.execute(statement)
    conn.execute("BEGIN")
    if tenant.vectors.namespace:
        grab(conn, f"INSERT INTO {tenant.vectors.table} (namespace, id, embedding) VALUES ('{tenant.id}', 'hx-open', '[1,1,1]')")
    else:
        grab(conn, f"INSERT INTO {tenant.vectors.table} (id, embedding) VALUES ('hx-open', '[1,1,1]')")
    grab(conn, f"SELECT id FROM {tenant.vectors.table} FOR UPDATE")
    grab(conn, f"LOCK TABLE {tenant.vectors.table} IN ACCESS EXCLUSIVE MODE")
    grab(conn, f"LOCK TABLE {tenant.schema}.ledger IN ACCESS EXCLUSIVE MODE")
    for statement in advisory_lock_statements("pg_advisory_xact_lock"):
        grab(conn, statement)
    for target in (f"ONLY {fleet.shared_table}", fleet.shared_table, fleet["victim"].partition,
                   *(f"{BOOKKEEPING_SCHEMA}.{table}" for table in BOOKKEEPING_TABLES)):
        grab(conn, f"LOCK TABLE {target} IN ACCESS SHARE MODE")
    return conn


def others_keep_working(fleet: Fleet, keys: Sequence[str] = ("victim", "pro_victim", "enterprise_victim")) -> list[str]:
    """Other tenants read and write their own vectors and tables (rolled back, so their snapshots stay)."""
    problems = []
    for key in keys:
        tenant = fleet[key]
        try:
            with tenant.connect() as conn:
                count = conn.execute(f"SELECT count(*) FROM {tenant.vectors.table}").fetchone()[0]  # type: ignore[index]
                if count != 3:
                    problems.append(f"{key} sees {count} of its 3 vectors")
                with conn.transaction(force_rollback=True):
                    if tenant.vectors.namespace:
                        conn.execute(f"INSERT INTO {tenant.vectors.table} (namespace, id, embedding) "
                                     f"VALUES ('{tenant.id}', 'hx-probe', '[1,2,3]')")
                    else:
                        conn.execute(f"INSERT INTO {tenant.vectors.table} (id, embedding) VALUES ('hx-probe', '[1,2,3]')")
                    conn.execute(f"UPDATE {tenant.vectors.table} SET metadata = metadata")
                    conn.execute(f"UPDATE {tenant.schema}.ledger SET secret = secret")
        except psycopg.Error as error:
            problems.append(f"{key}: {type(error).__name__}: {first_line(error)}")
    return problems
