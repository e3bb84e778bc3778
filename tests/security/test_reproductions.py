"""The seven reported attacks, reproduced step by step with a tenant's own credentials; each must be refused."""
from __future__ import annotations

import secrets
import urllib.parse
from typing import Any

import psycopg
import pytest
from hostile_kit import (
    BOOKKEEPING_SCHEMA,
    DATABASE,
    DEADLINE_SECONDS,
    DEDICATED,
    LOCK_MODES,
    SHARED_DATABASE,
    Attempts,
    Fleet,
    FreshTenants,
    SqlResult,
    Superuser,
    Tenant,
    advisory_lock_statements,
    block_writes,
    desired,
    finishes_within,
    grab,
    operator_teardown,
    others_keep_working,
    owned_objects,
    reveals_nothing_foreign,
    snapshot,
)
from trap_kit import LOG_TABLE, TrapWatch, judge_operator_steps, operator_steps, overloads, plant, trap_function

from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import ReconcileError, TenantIdConflict


async def test_a_view_made_before_a_quota_block_shows_and_deletes_only_its_own_rows(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    peek, victim = await fresh.make("hxpeek"), await fresh.make("hxpeekv")
    plant(peek, [f"CREATE VIEW {peek.schema}.peek AS SELECT namespace, id, metadata FROM {fleet.shared_table}",
                 f"CREATE VIEW {peek.schema}.peek_own AS SELECT namespace, id, metadata FROM {peek.partition}",
                 f"CREATE VIEW {peek.schema}.peek_victim AS SELECT namespace, id, metadata FROM {victim.partition}"])
    victim_before = snapshot(superuser, [victim])
    admin_owned_before = owned_objects(superuser, SHARED_DATABASE, fleet.admin_role, [peek.schema])
    await block_writes(operator_server, peek)

    def run(statement: str) -> SqlResult:
        with peek.connect() as conn:
            cursor = conn.execute(statement)
            return SqlResult(cursor.fetchall() if cursor.description else [], cursor.rowcount, cursor.description is not None)

    def only_own(result: SqlResult) -> bool:
        return reveals_nothing_foreign(result, peek.id)

    def nothing_deleted(result: SqlResult) -> bool:
        return result.rowcount <= 0

    failures = []
    for name, statement, harmless in (
            ("counts namespaces through its view over the shared parent",
             f"SELECT namespace, count(*) FROM {peek.schema}.peek GROUP BY namespace", only_own),
            ("reads its view over its own partition", f"SELECT * FROM {peek.schema}.peek_own", only_own),
            ("reads its view over a victim's partition", f"SELECT * FROM {peek.schema}.peek_victim", only_own),
            ("deletes a victim's rows through its view over the shared parent",
             f"DELETE FROM {peek.schema}.peek WHERE namespace = '{victim.id}'", nothing_deleted),
            ("updates a victim's rows through its view over the shared parent",
             f"UPDATE {peek.schema}.peek SET metadata = '{{}}' WHERE namespace = '{victim.id}'", nothing_deleted),
            ("deletes through its view over a victim's partition", f"DELETE FROM {peek.schema}.peek_victim", nothing_deleted)):
        try:
            attempts.refused(f"blocked free tenant {name}", lambda statement=statement: run(statement),
                             expect=psycopg.Error, harmless=harmless)
        except AssertionError as failure:
            failures.append(str(failure))

    def handed_to_the_admin() -> list[str]:
        return sorted(owned_objects(superuser, SHARED_DATABASE, fleet.admin_role, [peek.schema]) - admin_owned_before)

    try:
        attempts.refused("quota block of a free tenant hands the tenant's views to the admin", handed_to_the_admin,
                         harmless=lambda gained: not gained)
    except AssertionError as failure:
        failures.append(str(failure))
    assert snapshot(superuser, [victim]) == victim_before, "the victim's rows changed"
    assert not failures, "\n".join(failures)


async def test_format_overloads_do_not_hijack_the_routine_reconcile(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make("hxfmt", DATABASE, DEDICATED)
    fresh.mark_trapped(attacker)
    plant(attacker, [*trap_function("public", attacker, fleet["free"], [fleet["victim"], fleet["enterprise_victim"]]),
                     *overloads("public")])
    # The trap is live: the tenant's own call of format(text, text, text) lands in its overload.
    assert read_log_after(attacker, superuser, "SELECT format('%I.%I', 'a'::text, 'b'::text)") == [attacker.role]
    watch = TrapWatch(superuser, attacker, fleet["free"], fleet.admin_role, "public")
    steps = operator_steps(operator_server, attacker)
    await judge_operator_steps(attempts, watch, "format() overloads in an enterprise database",
                               {"routine reconcile": steps["routine reconcile"]})


async def test_a_vectors_view_over_a_granting_function_is_not_read_by_the_usage_measurement(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser,
        attempts: Attempts) -> None:
    attacker = await fresh.make("hxvw", DATABASE, DEDICATED)
    fresh.mark_trapped(attacker)
    plant(attacker, [
        *trap_function("public", attacker, fleet["free"], [fleet["victim"], fleet["enterprise_victim"]]),
        "DROP TABLE public.vectors",
        "CREATE FUNCTION public.hx_rows() RETURNS TABLE (id text, embedding vector, metadata jsonb) LANGUAGE plpgsql "
        "AS $$ BEGIN PERFORM public.hx_trap('vectors view'); RETURN QUERY SELECT 'hx'::text, '[1,1,1]'::vector, '{}'::jsonb; END $$",
        "CREATE VIEW public.vectors AS SELECT * FROM public.hx_rows()",
    ])
    assert read_log_after(attacker, superuser, "SELECT count(*) FROM public.vectors") == [attacker.role]
    watch = TrapWatch(superuser, attacker, fleet["free"], fleet.admin_role, "public")
    steps = operator_steps(operator_server, attacker)
    await judge_operator_steps(attempts, watch, "vectors view over a granting function", {
        "usage measurement": steps["usage measurement"], "migration reads": steps["migration reads"],
        "routine reconcile": steps["routine reconcile"]})


def read_log_after(tenant: Tenant, superuser: Superuser, query: str) -> list[str]:
    """Who the trap log names after the tenant itself runs `query`; the log is emptied again afterwards."""
    with tenant.connect() as conn:
        conn.execute(query)
    rows = superuser.rows(tenant.database, f"SELECT DISTINCT who::text FROM public.{LOG_TABLE}")
    superuser.rows(tenant.database, f"TRUNCATE public.{LOG_TABLE}")
    return [who for (who,) in rows]


def test_locking_the_shared_parent_is_refused_while_others_keep_working(fleet: Fleet, attempts: Attempts) -> None:
    attacker, shared = fleet["free"], fleet.shared_table
    failures = []
    with attacker.connect() as conn:
        conn.execute("BEGIN")

        def lock_exclusively() -> None:
            conn.execute("SAVEPOINT hx_lock")
            try:
                conn.execute(f"LOCK TABLE ONLY {shared} IN ACCESS EXCLUSIVE MODE")
            except psycopg.Error:
                conn.execute("ROLLBACK TO SAVEPOINT hx_lock")
                raise

        try:
            attempts.refused("free tenant locks ONLY the shared parent IN ACCESS EXCLUSIVE MODE in an open transaction",
                             lock_exclusively)
        except AssertionError as failure:
            failures.append(str(failure))
        granted = [mode for mode in LOCK_MODES if grab(conn, f"LOCK TABLE ONLY {shared} IN {mode} MODE")]
        # Meanwhile, with the attacker's transaction still open, the others work as usual.
        problems = others_keep_working(fleet)
    assert not failures and not granted and not problems, (
        f"{failures}; lock modes granted on the shared parent: {granted}; other tenants: {problems}")


async def test_advisory_locks_on_the_operators_keys_stall_neither_provisioning_nor_teardown(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, attempts: Attempts) -> None:
    doomed = await fresh.make("hxadvdrop")
    attacker = fleet["free"]

    async def provision_next() -> None:
        await fresh.make("hxadvnew", seed=False)

    failures = []
    for name, phase in (("stall provisioning a new tenant of that dimension", provision_next),
                        ("stall another tenant's teardown", lambda: operator_teardown(operator_server, doomed.store))):
        holder = attacker.connect()
        try:
            for statement in advisory_lock_statements():
                holder.execute(statement)
            holder.execute("BEGIN")
            for statement in advisory_lock_statements("pg_advisory_xact_lock"):
                holder.execute(statement)
            timed = await finishes_within(phase(), DEADLINE_SECONDS, release=holder.close)
        finally:
            holder.close()
        try:
            attempts.record(f"advisory locks a tenant holds on every operator key {name}",
                            timed.in_time and timed.error is None, timed.describe())
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, "\n".join(failures)


def retained_state(superuser: Superuser, tenant: Tenant) -> dict[str, Any]:
    """Everything of a retained tenant an adoption attempt could touch: data, role, claim."""
    state: dict[str, Any] = dict(snapshot(superuser, [tenant]))
    state["role"] = superuser.rows("postgres", "SELECT rolpassword, rolcanlogin, rolconnlimit FROM pg_authid "
                                               "WHERE rolname = %s", (tenant.role,))
    state["comment"] = superuser.value("postgres", "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
                                                   "WHERE rolname = %s", (tenant.role,))
    state["schema owner"] = superuser.value(SHARED_DATABASE, "SELECT nspowner::regrole::text FROM pg_namespace "
                                                             "WHERE nspname = %s", (tenant.schema,))
    if superuser.value(SHARED_DATABASE, "SELECT to_regclass(%s) IS NOT NULL", (f"{BOOKKEEPING_SCHEMA}.claims",)):
        state["claim"] = superuser.rows(SHARED_DATABASE, f"SELECT * FROM {BOOKKEEPING_SCHEMA}.claims WHERE role = %s",
                                        (tenant.role,))
    return state


async def test_a_retained_tenant_is_adopted_only_from_its_own_namespace(
        fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser, attempts: Attempts) -> None:
    original = await fresh.make("hxret", owner="ns-a/x")
    relational = PostgresRelationalStore(operator_server)
    await relational.release(original.store)
    retained = retained_state(superuser, original)

    for label, intruder in (("a schema tenant", desired("hxret", owner="ns-b/y")),
                            ("an enterprise tenant", desired("hxret", DATABASE, DEDICATED, owner="ns-b/w"))):
        fresh.track(intruder)
        await attempts.refused_async(
            f"a TenantStore of another namespace adopts a retained tenant as {label}",
            lambda intruder=intruder: relational.ensure(intruder, "hx-intruder-password", password_is_new=True),
            expect=TenantIdConflict)
        assert retained_state(superuser, original) == retained, "the refused adoption changed the retained tenant"
    assert not superuser.database_exists("tenant_hxret"), "the refused adoption created a database"
    with original.connect() as conn:  # the old password still logs in and the data is there
        assert conn.execute(f"SELECT count(*) FROM {original.schema}.ledger").fetchone() == (3,)

    heir = desired("hxret", owner="ns-a/z")
    fresh.track(heir)
    placement, _ = await relational.ensure(heir, original.password, password_is_new=False)
    vectors, _ = await PgvectorStore(operator_server).ensure(heir)
    assert (placement.role, vectors.table) == (original.role, original.vectors.table)
    adopted = Tenant(heir, original.password, placement, vectors)
    assert snapshot(superuser, [adopted]) == snapshot(superuser, [original]) == {
        key: value for key, value in retained.items() if "/" in key}, "the adoption changed the data"


MALFORMED_ADMIN_URIS = [
    ("a stray percent sign in the password", "postgresql://admin:s3cr%ZZet@127.0.0.1:1/tenants", "s3cr%ZZet"),
    ("a space in the password", "postgresql://admin:hunter 2@127.0.0.1:1/tenants", "hunter 2"),
    ("a key without '=' in key/value form", "host=127.0.0.1 port=1 password=hunter2 dbname", "hunter2"),
    ("an unterminated quote in key/value form", "host=127.0.0.1 port=1 password='hunter3 dbname=tenants", "hunter3"),
    ("a port out of range", "postgresql://admin:pa55-range@127.0.0.1:99999/tenants", "pa55-range"),
    ("a port that is not a number", "postgresql://admin:pa55-letters@127.0.0.1:abc/tenants", "pa55-letters"),
    ("an unknown query parameter", "postgresql://admin:pa55-query@127.0.0.1:1/tenants?hx=1", "pa55-query"),
    ("the password as a query parameter", "postgresql://admin@127.0.0.1:1/tenants?password=pa55-param&sslmode=bogus",
     "pa55-param"),
    ("a broken IPv6 host", "postgresql://admin:pa55-ipv6@[::1/tenants", "pa55-ipv6"),
    ("a closed port", "postgresql://admin:pa55-closed@127.0.0.1:1/tenants", "pa55-closed"),
    ("the wrong password for the real server", "postgresql://tenantstore_admin:wr0ng-{token}@127.0.0.1:{port}/tenants",
     "wr0ng-{token}"),
]


def texts_of(error: BaseException | None) -> list[str]:
    """str, repr and args of an error and of every error chained to it (cause and context)."""
    texts, pending, seen = [], [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args), *getattr(current, "__notes__", [])]
        pending += [current.__cause__, current.__context__]
    return texts


@pytest.mark.parametrize(("label", "uri", "password"), MALFORMED_ADMIN_URIS, ids=[row[0] for row in MALFORMED_ADMIN_URIS])
async def test_an_admin_uri_that_cannot_be_used_never_echoes_its_password(
        label: str, uri: str, password: str, fleet: Fleet, attempts: Attempts) -> None:
    values = {"token": secrets.token_hex(6), "port": fleet["free"].relational.port}
    uri, password = uri.format(**values), password.format(**values)

    async def connect() -> None:
        server = PostgresServer(uri, SHARED_DATABASE)
        try:
            async with server.connect("template1") as conn:
                await conn.execute("SELECT 1")
        finally:
            await server.close()

    error: BaseException | None = None
    try:
        await connect()
    except Exception as raised:  # noqa: BLE001 - what it raises, and what it says, is the point
        error = raised
    spellings = {password, urllib.parse.quote(password), urllib.parse.quote(password, safe="")}
    leaks = [text for text in texts_of(error) if any(spelling in text for spelling in spellings)]
    verdict = (f"{type(error).__name__}: {texts_of(error)[0][:200]}" if error else "it connected")
    attempts.record(f"an admin URI with {label} leaks its password through the error", error is not None and not leaks,
                    f"{verdict}; the password appears in: {leaks[:2]}" if leaks else verdict,
                    as_expected=isinstance(error, ReconcileError))
