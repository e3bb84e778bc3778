"""Attacks from tenants in the states the operator puts them in: Blocked by a quota, Suspended, and mid vector
tier move (a namespace partition and a dedicated table at once)."""
from __future__ import annotations

import psycopg
import pytest
from hostile_kit import (
    Attempts,
    CopyIn,
    Fleet,
    FreshTenants,
    SqlAttack,
    Superuser,
    run_sql_attack,
    superuser_finds_false,
    suspend,
)

from tenantstore.backends.postgres import PostgresServer

OUT_OF_BOUNDS = (psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation)


def blocked(name: str, *steps: str | CopyIn, **options: object) -> SqlAttack:
    return SqlAttack(f"blocked free tenant {name}", "blocked", tuple(steps), **options)  # type: ignore[arg-type]


def enterprise_blocked(name: str, *steps: str, **options: object) -> SqlAttack:
    return SqlAttack(f"blocked enterprise tenant {name}", "enterprise_blocked", tuple(steps), **options)  # type: ignore[arg-type]


def moving(name: str, *steps: str, **options: object) -> SqlAttack:
    return SqlAttack(f"moving tenant {name}", "moving", tuple(steps), **options)  # type: ignore[arg-type]


BLOCKED = [
    blocked("inserts into its vectors", "INSERT INTO {my_vectors} (namespace, id, embedding) VALUES ('{me}', 'hx-b1', '[1,0,0]')"),
    blocked("updates its vectors", "UPDATE {my_vectors} SET metadata = '{{\"more\": 1}}'"),
    blocked("upserts its vectors",
            "INSERT INTO {my_vectors} (namespace, id, embedding) SELECT namespace, id, embedding FROM {my_vectors} "
            "ON CONFLICT (namespace, id) DO UPDATE SET metadata = '{{}}'"),
    blocked("merges into its vectors",
            "MERGE INTO {my_vectors} t USING (VALUES ('{me}', 'hx-b2')) s(namespace, id) ON t.id = s.id "
            "WHEN NOT MATCHED THEN INSERT (namespace, id, embedding) VALUES (s.namespace, s.id, '[1,0,0]')"),
    blocked("copies into its vectors",
            CopyIn("COPY {my_vectors} (namespace, id, embedding) FROM STDIN", (("{me}", "hx-b3", "[1,0,0]"),))),
    blocked("inserts into its own table", "INSERT INTO {my_schema}.ledger VALUES (50, 'hx')"),
    blocked("updates its own table", "UPDATE {my_schema}.ledger SET secret = secret || '!'"),
    blocked("copies into its own table", CopyIn("COPY {my_schema}.ledger FROM STDIN", (("51", "hx"),))),
    blocked("draws from its own sequence", "SELECT nextval('{my_schema}.ledger_ids')"),
    blocked("creates a table", "CREATE TABLE {my_schema}.hx_more (id int)"),
    blocked("creates a table from a query", "CREATE TABLE {my_schema}.hx_more_rows AS SELECT generate_series(1, 1000) AS n"),
    blocked("creates a view", "CREATE VIEW {my_schema}.hx_more_view AS SELECT 1 AS one"),
    blocked("creates a function", "CREATE FUNCTION {my_schema}.hx_more_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    blocked("adds a column to its own table", "ALTER TABLE {my_schema}.ledger ADD COLUMN hx text"),
    blocked("takes its schema back", "ALTER SCHEMA {my_schema} OWNER TO {my_role}"),
    blocked("takes its table back", "ALTER TABLE {my_schema}.ledger OWNER TO {my_role}"),
    blocked("becomes its holding role", "SET ROLE {holding}"),
    blocked("grants itself its holding role", "GRANT {holding} TO {my_role}"),
    blocked("grants itself INSERT on its own table", "GRANT INSERT ON {my_schema}.ledger TO {my_role}",
            judge=superuser_finds_false("SELECT has_table_privilege('{my_role}', '{my_schema}.ledger', 'INSERT')")),
    blocked("grants itself INSERT on its vectors", "GRANT INSERT ON {my_vectors} TO {my_role}",
            judge=superuser_finds_false("SELECT has_table_privilege('{my_role}', '{my_vectors}', 'INSERT')")),
    blocked("reassigns its holding role's objects to itself", "REASSIGN OWNED BY {holding} TO {my_role}"),
    blocked("sets default privileges for its holding role",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {holding} GRANT ALL ON TABLES TO {my_role}"),
    enterprise_blocked("inserts into its vectors", "INSERT INTO {my_vectors} (id, embedding) VALUES ('hx-b4', '[1,0,0]')"),
    enterprise_blocked("updates its vectors", "UPDATE {my_vectors} SET metadata = '{{\"more\": 1}}'"),
    enterprise_blocked("inserts into its own table", "INSERT INTO public.ledger VALUES (52, 'hx')"),
    enterprise_blocked("creates a table", "CREATE TABLE public.hx_more (id int)"),
    enterprise_blocked("creates a schema", "CREATE SCHEMA hx_more"),
    enterprise_blocked("creates a function", "CREATE FUNCTION public.hx_more_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    enterprise_blocked("takes its database back", "ALTER DATABASE {my_database} OWNER TO {my_role}"),
    enterprise_blocked("takes public back", "ALTER SCHEMA public OWNER TO {my_role}"),
    enterprise_blocked("sets its database's search_path", "ALTER DATABASE {my_database} SET search_path = public"),
    enterprise_blocked("becomes its holding role", "SET ROLE {holding}"),
    enterprise_blocked("grants itself CREATE on its database", "GRANT CREATE ON DATABASE {my_database} TO {my_role}",
                       judge=superuser_finds_false("SELECT has_database_privilege('{my_role}', '{my_database}', 'CREATE')",
                                                   database="{my_database}")),
]

MOVING = [
    moving("selects the shared parent", "SELECT * FROM {shared}"),
    moving("selects a victim's partition", "SELECT * FROM {victim_partition}"),
    moving("copies the shared parent into its dedicated table",
           "INSERT INTO {my_dedicated} (id, embedding, metadata) SELECT id, embedding, metadata FROM {shared} "
           "WHERE namespace <> '{me}'"),
    moving("copies a victim's partition into its dedicated table",
           "INSERT INTO {my_dedicated} (id, embedding, metadata) SELECT id, embedding, metadata FROM {victim_partition}"),
    moving("writes a victim's namespace into its partition",
           "INSERT INTO {my_vectors} (namespace, id, embedding) VALUES ('{victim}', 'hx-m1', '[1,0,0]')", expect=OUT_OF_BOUNDS),
    moving("locks the shared parent", "LOCK TABLE {shared} IN ACCESS EXCLUSIVE MODE", transaction=True,
           inert_when_empty=False),
    moving("adds a trigger to its dedicated table",
           "CREATE FUNCTION {my_schema}.hx_moving_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
           "CREATE TRIGGER hx_on_dedicated BEFORE INSERT ON {my_dedicated} FOR EACH ROW "
           "EXECUTE FUNCTION {my_schema}.hx_moving_trigger()"),
    moving("takes ownership of its dedicated table", "ALTER TABLE {my_dedicated} OWNER TO {my_role}"),
    moving("adds a policy to its dedicated table", "CREATE POLICY hx_moving ON {my_dedicated} USING (true)"),
    moving("takes ownership of its partition", "ALTER TABLE {my_partition} OWNER TO {my_role}"),
]


@pytest.mark.parametrize("attack", BLOCKED, ids=str)
def test_a_blocked_tenant_cannot_write_or_win_its_objects_back(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


@pytest.mark.parametrize("attack", MOVING, ids=str)
def test_a_tenant_mid_move_reaches_nothing_more(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


@pytest.mark.parametrize("key", ["blocked", "enterprise_blocked"])
def test_a_blocked_tenant_still_reads_and_cleans_up(key: str, fleet: Fleet) -> None:
    """Block refuses writes only: reads work and deletes work (rolled back here)."""
    tenant = fleet[key]
    with tenant.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {tenant.vectors.table}").fetchone() == (3,)
        assert conn.execute(f"SELECT count(*) FROM {tenant.schema}.ledger").fetchone() == (3,)
        with conn.transaction(force_rollback=True):
            assert conn.execute(f"DELETE FROM {tenant.vectors.table}").rowcount == 3
            assert conn.execute(f"DELETE FROM {tenant.schema}.ledger").rowcount == 3


@pytest.mark.parametrize("database", ["own", "postgres"])
def test_a_suspended_tenant_cannot_log_in(database: str, fleet: Fleet, attempts: Attempts) -> None:
    tenant = fleet["suspended"]
    attempts.refused(f"suspended tenant logs in to the {database} database",
                     lambda: tenant.connect(None if database == "own" else database).close(),
                     expect=psycopg.OperationalError, message="not permitted to log in")


async def test_no_connection_outlives_a_suspension(fresh: FreshTenants, operator_server: PostgresServer,
                                                superuser: Superuser, attempts: Attempts) -> None:
    tenant = await fresh.make("hxsus2")
    idle = tenant.connect()
    busy = tenant.connect()
    busy.execute("BEGIN")
    busy.execute(f"SELECT id FROM {tenant.vectors.table} FOR UPDATE")
    busy.execute("SELECT pg_advisory_lock(hashtextextended('tenantstore:shared-acl', 0))")
    try:
        await suspend(operator_server, tenant)
        for name, connection in (("an idle connection", idle), ("a connection in an open transaction", busy)):
            attempts.refused(f"suspended tenant keeps using {name} opened before the suspension",
                             lambda connection=connection: connection.execute("SELECT 1").fetchone(),
                             expect=psycopg.OperationalError)
        held = superuser.value("postgres", "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                                           "WHERE a.usename = %s", (tenant.role,))
        assert held == 0, f"the suspended tenant's connections still hold {held} locks"
    finally:
        idle.close()
        busy.close()
