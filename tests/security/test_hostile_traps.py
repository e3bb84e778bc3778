"""Code a tenant leaves where the operator's admin connections might run it, then the operator's own code paths.

Overloads and shadows of the functions and operators the operator calls, a database whose defaults put the
tenant's schema (or its role) first, a `vectors` table replaced by one with a trigger, a CHECK, a DEFAULT and a
policy that run code, a database made a template so it outlives its teardown, objects a quota block might hand
to the admin. After every operator step: no role gained anything, no trap ran as anyone but its author, nothing
of the tenant's became the admin's.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from hostile_kit import (
    DATABASE,
    DEADLINE_SECONDS,
    DEDICATED,
    Attempts,
    Fleet,
    FreshTenants,
    Superuser,
    Tenant,
    add_dedicated_target,
    block_writes,
    finishes_within,
    operator_made,
    operator_teardown,
    owned_objects,
    records,
    wait_until,
)
from psycopg import sql
from trap_kit import (
    TrapWatch,
    admin_schema_squat,
    judge_operator_steps,
    operator_steps,
    overloads,
    plant,
    shadows,
    trap_function,
)

from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import ReconcileError


async def test_every_operator_path_against_a_trapped_enterprise_database(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make("hxtrap", DATABASE, DEDICATED)
    watch = TrapWatch(superuser, attacker, fleet["free"], fleet.admin_role, "public")
    fresh.mark_trapped(attacker)
    plant(attacker, [*trap_function("public", attacker, fleet["free"], [fleet["victim"], fleet["enterprise_victim"]]),
                     *overloads("public"), *shadows("public"), *admin_schema_squat(fleet.admin_role, "public"),
                     # Whoever connects now searches the admin-named schema and public before pg_catalog.
                     f'ALTER DATABASE {attacker.database} SET search_path = "$user", public, pg_catalog'])
    await judge_operator_steps(attempts, watch, "trapped enterprise database", operator_steps(operator_server, attacker))


async def test_a_free_tenants_shadows_in_its_own_schema_never_run_for_the_operator(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make("hxshadow")
    schema = attacker.schema
    watch = TrapWatch(superuser, attacker, fleet["free"], fleet.admin_role, schema, scope=[schema])
    fresh.mark_trapped(attacker)
    plant(attacker, [*trap_function(schema, attacker, fleet["free"], [fleet["victim"], fleet["enterprise_victim"]]),
                     *overloads(schema), *shadows(schema)])
    for name, statement in {
            "free tenant puts its schema first in the shared database's search_path":
                f"ALTER DATABASE {attacker.database} SET search_path = {schema}, public",
            "free tenant puts its schema first in the admin's search_path":
                f"ALTER ROLE {fleet.admin_role} SET search_path = {schema}, public",
            "free tenant puts its schema first in the admin's search_path in the shared database":
                f"ALTER ROLE {fleet.admin_role} IN DATABASE {attacker.database} SET search_path = {schema}, public"}.items():
        attempts.refused(name, lambda statement=statement: plant(attacker, [statement]))
    await judge_operator_steps(attempts, watch, "free tenant's shadows in its own schema",
                               operator_steps(operator_server, attacker))


async def test_a_dedicated_table_replaced_mid_move_runs_nothing_for_the_operator(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make("hxmvt")
    await add_dedicated_target(operator_server, attacker)
    schema, dedicated = attacker.schema, attacker.dedicated
    assert dedicated is not None
    watch = TrapWatch(superuser, attacker, fleet["free"], fleet.admin_role, schema, scope=[schema])
    fresh.mark_trapped(attacker)
    plant(attacker, [
        *trap_function(schema, attacker, fleet["free"], [fleet["victim"], fleet["enterprise_victim"]]),
        # The schema is the tenant's, so the admin's table in it can be dropped and replaced.
        f"DROP TABLE {dedicated.table}",
        f"CREATE TABLE {dedicated.table} (id text PRIMARY KEY, embedding vector(3) NOT NULL, "
        f"metadata jsonb NOT NULL DEFAULT '{{}}' CHECK ({schema}.hx_trap_true('check constraint')), "
        f"stamp boolean DEFAULT {schema}.hx_trap_true('column default'))",
        f"CREATE FUNCTION {schema}.hx_trap_row() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM {schema}.hx_trap('trigger'); RETURN NEW; END $$",
        f"CREATE TRIGGER hx_trap_row BEFORE INSERT OR UPDATE ON {dedicated.table} FOR EACH ROW "
        f"EXECUTE FUNCTION {schema}.hx_trap_row()",
        f"ALTER TABLE {dedicated.table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {dedicated.table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY hx_trap_policy ON {dedicated.table} USING ({schema}.hx_trap_true('policy')) "
        f"WITH CHECK ({schema}.hx_trap_true('policy check'))",
        f"GRANT ALL ON {dedicated.table} TO PUBLIC",
        f"INSERT INTO {dedicated.table} (id, embedding) VALUES ('{attacker.marker}-x', '[1,1,1]')",
    ])
    relational, vectors = PostgresRelationalStore(operator_server), PgvectorStore(operator_server)
    target = dataclasses.replace(attacker.store, vector=DEDICATED)
    blocked = dataclasses.replace(target, writes_allowed=False)

    async def measure() -> None:
        await relational.measure([target])
        await vectors.measure([(attacker.store, attacker.vectors), (target, dedicated)])

    async def block() -> None:
        await relational.ensure_write_access(blocked)
        await vectors.ensure_write_access(blocked, dedicated)

    async def read_back() -> None:
        await vectors.count(target, dedicated)
        await vectors.read_batch(target, dedicated, None, 10)

    steps: dict[str, Callable[[], Awaitable[Any]]] = {
        "the move ensures its dedicated target": lambda: vectors.ensure(target),
        "the move copies a batch": lambda: vectors.write_batch(target, dedicated, records(2, "hx-moved")),
        "the move reads its target back": read_back,
        "the isolation probe of its namespace": lambda: vectors.probe_isolation(attacker.store, attacker.vectors),
        "usage measurement": measure,
        "quota block": block,
        "the move drops its source": lambda: vectors.teardown(attacker.store),
        "teardown": lambda: operator_teardown(operator_server, target),
    }
    await judge_operator_steps(attempts, watch, "dedicated table replaced mid move", steps)


async def test_a_database_default_role_does_not_make_the_operator_act_as_the_tenant(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make("hxrole", DATABASE, DEDICATED)
    fresh.mark_trapped(attacker)
    plant(attacker, [f"ALTER DATABASE {attacker.database} SET role = '{attacker.role}'"])
    vectors = PgvectorStore(operator_server)

    async def recreate_dedicated_table() -> str:
        await vectors.teardown(attacker.store)
        await vectors.ensure(attacker.store)
        return str(superuser.value(attacker.database, "SELECT pg_get_userbyid(relowner)::text FROM pg_class "
                                                      "WHERE oid = to_regclass('public.vectors')"))

    await attempts.refused_async("enterprise tenant's database default role makes the operator create its table as the tenant",
                                 recreate_dedicated_table, expect=(ReconcileError, psycopg.Error),
                                 harmless=lambda owner: owner == fleet.admin_role)
    attempts.refused("enterprise tenant adds a trigger to the dedicated table the operator recreated",
                     lambda: plant(attacker, [
                         "CREATE FUNCTION public.hx_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
                         "CREATE TRIGGER hx_on_vectors BEFORE INSERT ON public.vectors FOR EACH ROW "
                         "EXECUTE FUNCTION public.hx_trigger()"]))


DATABASE_SETTINGS_AGAINST_TEARDOWN = {
    "marks its database a template": "IS_TEMPLATE true",
    "limits its database to no connections": "CONNECTION LIMIT 0",
    "closes its database to connections": "WITH ALLOW_CONNECTIONS false",
}


@pytest.mark.parametrize("trick", DATABASE_SETTINGS_AGAINST_TEARDOWN, ids=str)
async def test_a_database_setting_does_not_let_it_outlive_its_teardown(
        trick: str, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make(f"hxkeep{list(DATABASE_SETTINGS_AGAINST_TEARDOWN).index(trick)}", DATABASE, DEDICATED)
    try:
        plant(attacker, [f"ALTER DATABASE {attacker.database} {DATABASE_SETTINGS_AGAINST_TEARDOWN[trick]}"])
    except psycopg.Error:
        pass  # refused is fine: the teardown below is what is judged

    await attempts.refused_async(f"enterprise tenant {trick} to outlive its teardown",
                                 lambda: teardown_then_residue(operator_server, superuser, attacker),
                                 harmless=lambda left: not left)


async def test_a_slow_autovacuum_of_its_own_table_does_not_let_it_outlive_its_teardown(
        fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser, attempts: Attempts) -> None:
    """DROP DATABASE WITH (FORCE) may not end an autovacuum worker for a non-superuser, and a table's own
    settings can keep one vacuuming it, a page at a time, for many minutes."""
    attacker = await fresh.make("hxvacuum", DATABASE, DEDICATED)
    plant(attacker, [
        "CREATE TABLE public.hx_churn (id int, body text) WITH (autovacuum_vacuum_cost_delay = 100, "
        "autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0)",
        "INSERT INTO public.hx_churn SELECT n, repeat('x', 200) FROM generate_series(1, 50000) n",
        "DELETE FROM public.hx_churn"])
    with attacker.connect() as conn:
        churn = conn.execute("SELECT 'public.hx_churn'::regclass::oid").fetchone()[0]

    def vacuuming_the_churn() -> bool:
        return bool(superuser.value("postgres", "SELECT count(*) FROM pg_stat_progress_vacuum WHERE datname = %s "
                                                "AND relid = %s", (attacker.database, churn)))

    with autovacuum_naptime(superuser, "1s"):  # the server's default, a minute, would only make the test wait
        wait_until(vacuuming_the_churn, 120, "an autovacuum worker on the tenant's table")
        await attempts.refused_async("enterprise tenant keeps an autovacuum worker in its database to outlive its "
                                     "teardown", lambda: teardown_then_residue(operator_server, superuser, attacker),
                                     harmless=lambda left: not left)


async def teardown_then_residue(operator_server: PostgresServer, superuser: Superuser, tenant: Tenant) -> list[str]:
    """What of an enterprise tenant is left after the operator's teardown, and how the teardown went if badly."""
    timed = await finishes_within(operator_teardown(operator_server, tenant.store), DEADLINE_SECONDS,
                                  release=lambda: None)
    left = [what for what, present in (("database", superuser.database_exists(tenant.database)),
                                       ("role", superuser.role_exists(tenant.role))) if present]
    return left + ([timed.describe()] if timed.error or not timed.in_time else [])


@contextlib.contextmanager
def autovacuum_naptime(superuser: Superuser, naptime: str) -> Iterator[None]:
    superuser.rows("postgres", sql.SQL("ALTER SYSTEM SET autovacuum_naptime = {}").format(sql.Literal(naptime)))
    superuser.rows("postgres", "SELECT pg_reload_conf()")
    try:
        yield
    finally:
        superuser.rows("postgres", "ALTER SYSTEM RESET autovacuum_naptime")
        superuser.rows("postgres", "SELECT pg_reload_conf()")


async def test_a_quota_block_never_hands_an_enterprise_tenants_objects_to_the_admin(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make("hxtakee", DATABASE, DEDICATED)
    fresh.mark_trapped(attacker)
    plant(attacker, [
        "CREATE VIEW public.hx_view AS SELECT * FROM public.ledger",
        "CREATE MATERIALIZED VIEW public.hx_matview AS SELECT * FROM public.ledger",
        "CREATE FUNCTION public.hx_definer() RETURNS name LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user'",
        "CREATE SCHEMA hx_extra",
        "CREATE TABLE hx_extra.notes (body text)",
    ])
    before = owned_objects(superuser, attacker.database, fleet.admin_role)
    await block_writes(operator_server, attacker)

    def handed_to_the_admin() -> list[str]:
        after = owned_objects(superuser, attacker.database, fleet.admin_role)
        return sorted(after - before - operator_made(after, attacker))

    attempts.refused("quota block of an enterprise tenant hands the tenant's objects to the admin",
                     handed_to_the_admin, harmless=lambda gained: not gained)
    attempts.refused("blocked enterprise tenant runs its SECURITY DEFINER function as its new owner",
                     lambda: read_one(attacker, "SELECT public.hx_definer()::text"),
                     expect=psycopg.Error, harmless=lambda who: who not in (fleet.admin_role, "postgres"))


def read_one(tenant: Tenant, query: str) -> Any:
    with tenant.connect() as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


async def test_a_view_over_another_tenants_partition_does_not_block_its_teardown(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    """CREATE VIEW checks no privilege on what it reads: a view can depend on a partition its owner may not read."""
    victim = await fresh.make("hxpinned")
    try:
        plant(fleet["free"], [f"CREATE VIEW {fleet['free'].schema}.hx_pin AS SELECT id FROM {victim.partition}"])
    except psycopg.Error:
        pass  # refused at creation is fine: the teardown below is what is judged

    async def teardown_then_residue() -> list[str]:
        timed = await finishes_within(operator_teardown(operator_server, victim.store), DEADLINE_SECONDS,
                                      release=lambda: None)
        left = await PgvectorStore(operator_server).residue(victim.store)
        left += await PostgresRelationalStore(operator_server).residue(victim.store)
        return left + ([timed.describe()] if timed.error or not timed.in_time else [])

    await attempts.refused_async("free tenant pins another tenant's partition with a view so its teardown fails",
                                 teardown_then_residue, harmless=lambda left: not left)

