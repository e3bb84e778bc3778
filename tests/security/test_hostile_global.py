"""The class's global index (spec.globalStore), attacked with a tenant's own credentials: every tenant of the class
may read it, none may write, delete, lock it beyond reading, bend its policies or grants, or become the roles that
guard it; a tenant with a database of its own may now connect to the shared database, and gains nothing else there.
The platform's writer login may change the global index and nothing of any tenant's.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from hostile_kit import (
    DATABASE,
    DEADLINE_SECONDS,
    DEDICATED,
    SHARED_DATABASE,
    TENANT_CONNECTION_OPTIONS,
    Attempts,
    Fleet,
    FreshTenants,
    Superuser,
    Tenant,
    finishes_within,
)
from psycopg import sql

from tenantstore.backends import GlobalPlacement
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.pgvector_global import global_table_name
from tenantstore.backends.postgres import PostgresServer
from tenantstore.models import GlobalIndex, Metric

DIMENSION = 3
GLOBAL_ROWS = 4


class Global:
    def __init__(self, index: GlobalIndex, placement: GlobalPlacement, writer: dict[str, str]):
        self.index, self.placement, self.writer = index, placement, writer
        self.table = placement.table

    def writer_connect(self, database: str = SHARED_DATABASE) -> psycopg.Connection[Any]:
        return psycopg.connect(self.writer["uri"].rsplit("/", 1)[0] + f"/{database}", autocommit=True,
                               connect_timeout=5, options=TENANT_CONNECTION_OPTIONS)

    def rows(self, superuser: Superuser) -> list[tuple[Any, ...]]:
        return superuser.rows(SHARED_DATABASE,
                              f"SELECT id, embedding::text, metadata::text FROM {self.table} ORDER BY id")


@pytest.fixture(scope="module")
async def global_index(operator_server: PostgresServer, superuser: Superuser) -> AsyncIterator[Global]:
    index = GlobalIndex("hostile-docs", DIMENSION, Metric.COSINE)
    placement, writer, _ = await PgvectorStore(operator_server).ensure_global(index, "writer-secret-pw", True)
    made = Global(index, placement, writer)
    with made.writer_connect() as conn:
        for i in range(GLOBAL_ROWS):
            conn.execute(f"INSERT INTO {made.table} (id, embedding, metadata) VALUES (%s, %s, '{{}}')",
                         (f"doc-{i}", f"[1,{i},1]"))
    yield made
    superuser.rows(SHARED_DATABASE, f"DROP TABLE {made.table}")
    for role in (index.writer_role, index.reader_role):
        superuser.rows(SHARED_DATABASE, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        superuser.rows(SHARED_DATABASE, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
async def readers(fresh: FreshTenants, operator_server: PostgresServer, global_index: Global
                  ) -> dict[str, Tenant]:
    """A free tenant (in the shared database) and an enterprise one (a database of its own), both readers."""
    tenants = {"free": await fresh.make("hxgf"), "enterprise": await fresh.make("hxge", DATABASE, DEDICATED,
                                                                                connection_limit=3)}
    for tenant in tenants.values():
        placement, _ = await PgvectorStore(operator_server).grant_global(tenant.store, global_index.index)
        assert placement == global_index.placement
    return tenants


@pytest.fixture(autouse=True)
def global_rows_untouched(global_index: Global, superuser: Superuser) -> Iterator[None]:
    before = global_index.rows(superuser)
    yield
    assert global_index.rows(superuser) == before, "the global index's rows changed"


def global_session(tenant: Tenant) -> psycopg.Connection[Any]:
    """The tenant's login on the shared database: the Secret's globalUri."""
    return tenant.connect(SHARED_DATABASE)


WRITES = {
    "insert a row": "INSERT INTO {table} (id, embedding) VALUES ('hx', '[1,1,1]')",
    "update every row": "UPDATE {table} SET metadata = '{{\"hx\": true}}'",
    "delete every row": "DELETE FROM {table}",
    "delete through a writable CTE": "WITH gone AS (DELETE FROM {table} RETURNING id) SELECT count(*) FROM gone",
    "truncate it": "TRUNCATE {table}",
    "upsert over a row": "INSERT INTO {table} (id, embedding) VALUES ('doc-0', '[9,9,9]') ON CONFLICT (id) DO UPDATE "
                         "SET embedding = EXCLUDED.embedding",
    "lock it for update": "SELECT id FROM {table} FOR UPDATE",
    "lock it in ROW EXCLUSIVE mode": "LOCK TABLE {table} IN ROW EXCLUSIVE MODE",
    "lock it in ACCESS EXCLUSIVE mode": "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE",
    "add a policy that lets everyone write": "CREATE POLICY hx ON {table} FOR ALL TO PUBLIC USING (true) "
                                             "WITH CHECK (true)",
    "widen the reader's policy": "ALTER POLICY {reader} ON {table} USING (true)",
    "drop the writer's policy": "DROP POLICY {writer} ON {table}",
    "turn row-level security off": "ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
    "stop forcing row-level security": "ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
    "take the table over": "ALTER TABLE {table} OWNER TO CURRENT_USER",
    "add a trigger": "CREATE TRIGGER hx BEFORE INSERT ON {table} FOR EACH ROW "
                     "EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "add a rule": "CREATE RULE hx AS ON SELECT TO {table} DO INSTEAD SELECT * FROM {table}",
    "rename it": "ALTER TABLE {table} RENAME TO hx_global",
    "drop it": "DROP TABLE {table}",
    "become the reader role": "SET ROLE {reader}",
    "become the writer login": "SET ROLE {writer}",
    "pass the reader role to PUBLIC": "GRANT {reader} TO PUBLIC",
    "make the writer's login its own": "ALTER ROLE {writer} PASSWORD 'hx-taken'",
    "create a look-alike in the shared schema": "CREATE TABLE tenantstore_vectors.hx_global (id text)",
    "create a schema in the shared database": "CREATE SCHEMA hx_shadow",
    "write through an updatable view of its own": "CREATE VIEW {own}.hx_view AS SELECT * FROM {table}; "
                                                  "INSERT INTO {own}.hx_view (id, embedding) VALUES ('hx', '[1,1,1]')",
    "delete through a SECURITY DEFINER function of its own": "CREATE FUNCTION {own}.hx_purge() RETURNS void "
                                                             "LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM {table}'; "
                                                             "SELECT {own}.hx_purge()",
}


def render(statement: str, global_index: Global, own_schema: str = "pg_temp") -> sql.Composable:
    """`own`: a schema the attacker owns in the shared database (an enterprise tenant has none there)."""
    schema, table = global_index.table.split(".")
    return sql.SQL(statement).format(table=sql.Identifier(schema, table),
                                     reader=sql.Identifier(global_index.index.reader_role),
                                     writer=sql.Identifier(global_index.index.writer_role),
                                     own=sql.Identifier(own_schema))


@pytest.mark.parametrize("who", ["free", "enterprise"])
def test_a_reader_can_read_and_change_nothing(who: str, readers: dict[str, Tenant], global_index: Global,
                                               attempts: Attempts, superuser: Superuser) -> None:
    tenant = readers[who]
    with global_session(tenant) as conn:
        assert conn.execute(render("SELECT count(*) FROM {table}", global_index)).fetchone() == (GLOBAL_ROWS,)
        own = tenant.schema if tenant.database == SHARED_DATABASE else "pg_temp"
        for name, statement in WRITES.items():
            def attack(statement: str = statement) -> Any:
                with conn.transaction(force_rollback=True):
                    cursor = conn.execute(render(statement, global_index, own))
                    return cursor.fetchall() if cursor.description else cursor.rowcount
            attempts.refused(f"global index: {who} tenant tries to {name}", attack,
                             expect=(psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedObject))
        def grant_itself() -> Any:
            conn.execute(render("GRANT INSERT, DELETE ON {table} TO CURRENT_USER", global_index))  # only a warning
            return conn.execute("SELECT has_table_privilege(%s, 'INSERT') OR has_table_privilege(%s, 'DELETE')",
                                (global_index.table, global_index.table)).fetchone()
        attempts.refused(f"global index: {who} tenant grants itself the writer's privileges", grant_itself,
                         harmless=lambda result: result == (False,))
    grants = superuser.rows(SHARED_DATABASE, "SELECT grantee::regrole::text, privilege_type FROM pg_class c, "
                            "aclexplode(c.relacl) WHERE c.oid = %s::regclass AND grantee <> c.relowner ORDER BY 1, 2",
                            (global_index.table,))
    assert {grantee for grantee, _ in grants} == {global_index.index.reader_role, global_index.index.writer_role}


async def global_pass_finishes(operator_server: PostgresServer, global_index: Global, release: Callable[[], None],
                               held: str) -> None:
    """The operator's pass over the global index ends in time and without an error while the attacker holds on."""
    timed = await finishes_within(PgvectorStore(operator_server).ensure_global(
        global_index.index, "writer-secret-pw", False), DEADLINE_SECONDS, release)
    assert timed.in_time, f"the operator's global pass waited on {held}"
    assert timed.error is None, timed.error


async def test_a_reader_holding_its_read_lock_stalls_neither_the_platform_nor_the_operator(
        readers: dict[str, Tenant], global_index: Global, operator_server: PostgresServer) -> None:
    tenant = readers["free"]
    holder = global_session(tenant)
    holder.execute("BEGIN")
    holder.execute(render("LOCK TABLE {table} IN ACCESS SHARE MODE", global_index))
    try:
        with global_index.writer_connect() as writer, writer.transaction(force_rollback=True):
            writer.execute(render("INSERT INTO {table} (id, embedding) VALUES ('while-locked', '[1,0,0]')",
                                  global_index))
        await global_pass_finishes(operator_server, global_index, holder.rollback, "a reader's lock")
    finally:
        holder.close()


async def test_a_reader_holding_the_advisory_keys_of_the_index_name_stalls_not_the_operator(
        readers: dict[str, Tenant], global_index: Global, operator_server: PostgresServer) -> None:
    """Every reader knows the global table's name; the keys the operator once locked it by are any role's to take."""
    holder = global_session(readers["free"])
    for name in (f"tenantstore-global/{global_table_name(global_index.index)}", global_index.placement.table):
        for key in ("hashtextextended(%s, 0)", "hashtext(%s)"):
            holder.execute(f"SELECT pg_advisory_lock({key})", (name,))
    try:
        await global_pass_finishes(operator_server, global_index, holder.close, "a reader's advisory lock")
    finally:
        holder.close()


def test_a_database_tenant_floods_the_shared_database_only_up_to_its_own_limit(
        readers: dict[str, Tenant], global_index: Global, attempts: Attempts) -> None:
    """Reading the global index opens the shared database to it; its connection limit still bounds it."""
    tenant = readers["enterprise"]
    with contextlib.ExitStack() as held:
        opened = 0

        def flood() -> int:
            nonlocal opened
            for _ in range(10):
                held.enter_context(global_session(tenant))
                opened += 1
            return opened
        attempts.refused("global index: enterprise tenant floods the shared database past its connection limit",
                         flood, expect=psycopg.OperationalError, message="too many connections")
        assert opened == 3
        with global_index.writer_connect() as writer:  # the platform is not locked out
            assert writer.execute(render("SELECT count(*) FROM {table}", global_index)).fetchone() == (GLOBAL_ROWS,)


def test_the_writer_login_changes_the_global_index_and_nothing_of_a_tenants(
        readers: dict[str, Tenant], global_index: Global, fleet: Fleet, attempts: Attempts) -> None:
    victim = fleet["victim"]
    with global_index.writer_connect() as conn:
        attacks: dict[str, Callable[[], Any]] = {
            "read a tenant's partition": lambda: conn.execute(f"SELECT * FROM {victim.partition}").fetchall(),
            "read the shared parent": lambda: conn.execute(f"SELECT * FROM {fleet.shared_table}").fetchall(),
            "read a tenant's tables": lambda: conn.execute(f"SELECT * FROM {victim.schema}.ledger").fetchall(),
            "become a tenant": lambda: conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(victim.role))),
            "become the reader role": lambda: conn.execute(render("SET ROLE {reader}", global_index)),
            "create a table next to the global index": lambda: conn.execute(
                "CREATE TABLE tenantstore_vectors.hx_writer (id text)"),
            "change the global index's policies": lambda: conn.execute(render("DROP POLICY {reader} ON {table}",
                                                                              global_index)),
        }
        for name, attack in attacks.items():
            def contained(attack: Callable[[], Any] = attack) -> Any:
                with conn.transaction(force_rollback=True):
                    return attack()
            attempts.refused(f"global index: the writer login tries to {name}", contained)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        global_index.writer_connect(fleet["enterprise_victim"].database).close()
