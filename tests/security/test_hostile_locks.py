"""Locks and connections: a tenant may not lock what is not its own, and what it may hold (its own rows and
tables, any advisory key, an open transaction, all its connections) stalls neither other tenants nor the operator."""
from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest
from hostile_kit import (
    BOOKKEEPING_SCHEMA,
    DATABASE,
    DEADLINE_SECONDS,
    DEDICATED,
    LOCK_MODES,
    NAMESPACE,
    SCHEMA,
    TENANT_CONNECTION_OPTIONS,
    Attempts,
    Fleet,
    FreshTenants,
    SqlAttack,
    Superuser,
    block_writes,
    connections_of,
    desired,
    finishes_within,
    hold_everything,
    operator_teardown,
    others_keep_working,
    provision,
    run_sql_attack,
    wait_until,
)

from tenantstore.backends import LoginPlan
from tenantstore.backends import postgres as postgres_backend
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import Access, Credential, RelationalIsolation

LOCK_TARGETS = {
    "ONLY the shared parent": "ONLY {shared}",
    "the shared parent and its partitions": "{shared}",
    "a victim's partition": "{victim_partition}",
    "the operator's claims": f"{BOOKKEEPING_SCHEMA}.claims",
    "the operator's lock rows": f"{BOOKKEEPING_SCHEMA}.locks",
    "the operator's daily query baselines": f"{BOOKKEEPING_SCHEMA}.daily_query_baseline",
}
TABLE_LOCKS = [SqlAttack(f"free tenant locks {target} IN {mode} MODE", "free", (f"LOCK TABLE {table} IN {mode} MODE",),
                         transaction=True, inert_when_empty=False)
               for target, table in LOCK_TARGETS.items() for mode in LOCK_MODES]
TABLE_LOCKS += [SqlAttack(f"free tenant locks the moving tenant's dedicated table IN {mode} MODE", "free",
                          (f"LOCK TABLE {{mover_dedicated}} IN {mode} MODE",), transaction=True,
                          inert_when_empty=False)
                for mode in ("ACCESS SHARE", "ACCESS EXCLUSIVE")]
ROW_LOCKS = [SqlAttack(f"free tenant locks rows of {target} FOR {strength}", "free",
                       (f"SELECT id FROM {table} FOR {strength}",), transaction=True)
             for target, table in (("the shared parent", "{shared}"), ("a victim's partition", "{victim_partition}"))
             for strength in ("UPDATE", "NO KEY UPDATE", "SHARE", "KEY SHARE")]


@pytest.mark.parametrize("attack", TABLE_LOCKS + ROW_LOCKS, ids=str)
def test_locking_what_is_not_ones_own_is_refused(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


async def test_an_open_transaction_holding_everything_it_can_stalls_nobody(
        fleet: Fleet, fresh: FreshTenants, operator_server: PostgresServer, attempts: Attempts) -> None:
    """The attacker inserts, locks its rows and its own tables, takes every advisory key and stays idle in its
    transaction; each phase below is judged while it holds all of that."""
    attacker = await fresh.make("hxhold")
    doomed = await fresh.make("hxholddrop")
    server = operator_server
    failures = []

    def judge(name: str, refused: bool, detail: str) -> None:
        try:
            attempts.record(name, refused, detail)
        except AssertionError as failure:  # every phase is judged; the test fails at the end
            failures.append(str(failure))

    with hold_everything(attacker, fleet):
        problems = others_keep_working(fleet)
    judge("an idle transaction holding every lock it can blocks other tenants' reads and writes",
          not problems, "; ".join(problems) or "others read and wrote")

    async def provision_next() -> None:
        await fresh.make("hxholdnew", seed=False)

    async def measure_others() -> str:
        # The usage job measures a class's tenants together: the attacker is measured with its victims.
        victims = [fleet["victim"], fleet["pro_victim"], fleet["enterprise_victim"]]
        measured = [attacker, *victims]
        documents = await PgvectorStore(server).measure([(tenant.store, tenant.vectors) for tenant in measured])
        relational = await PostgresRelationalStore(server).measure([tenant.store for tenant in measured])
        wrong = {tenant.id: documents.get(tenant.id) for tenant in victims
                 if documents.get(tenant.id) is None or documents[tenant.id].documents != 3}
        unmeasured = [tenant.id for tenant in victims if tenant.id not in relational]
        return "; ".join([*([f"wrong documents: {wrong}"] if wrong else []),
                          *([f"no relational figures: {unmeasured}"] if unmeasured else [])])

    phases = {
        "an idle transaction holding every lock it can blocks provisioning into its shared index": provision_next,
        "an idle transaction holding every lock it can blocks another tenant's teardown":
            lambda: operator_teardown(server, doomed.store),
        "an idle transaction holding every lock it can stalls the usage measurement of other tenants": measure_others,
    }
    for name, phase in phases.items():
        held = hold_everything(attacker, fleet)
        try:
            timed = await finishes_within(phase(), DEADLINE_SECONDS, release=held.close)
        finally:
            held.close()
        complaint = timed.result if isinstance(timed.result, str) and timed.result else ""
        judge(name, timed.in_time and timed.error is None and not complaint, complaint or timed.describe())
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("tier", ["free", "enterprise"])
async def test_connections_beyond_the_connection_limit_are_refused(tier: str, fleet: Fleet, fresh: FreshTenants,
                                                                superuser: Superuser, attempts: Attempts) -> None:
    relational, vector = (SCHEMA, NAMESPACE) if tier == "free" else (DATABASE, DEDICATED)
    tenant = await fresh.make(f"hxconn{tier[0]}", relational, vector, connection_limit=2)
    wait_until(lambda: connections_of(superuser, tenant.role) == 0, 10, f"the seeding connection of {tenant.role} to end")
    connections = [tenant.connect() for _ in range(tenant.store.connection_limit)]
    try:
        attempts.refused(f"{tier} tenant opens more connections than its connection limit", lambda: tenant.connect().close(),
                         expect=psycopg.OperationalError, message="too many connections for role")
        problems = others_keep_working(fleet)
        assert not problems, f"a tenant at its connection limit disturbed others: {problems}"
    finally:
        for connection in connections:
            connection.close()


@pytest.mark.parametrize("relational", [SCHEMA, DATABASE], ids=["schema", "database"])
async def test_a_credential_login_holding_its_tenants_table_does_not_stall_the_teardown(
        relational: RelationalIsolation, fresh: FreshTenants, operator_server: PostgresServer,
        attempts: Attempts) -> None:
    """The owner's sessions are ended before its data is dropped; a scoped credential's must be too, or its open
    transaction keeps the lock DROP SCHEMA waits for, on every retry."""
    viewer = Credential("viewer", Access.READ_ONLY, "viewer-secret")
    store = dataclasses.replace(desired(f"hxcredhold{relational.value[0]}", relational,
                                        NAMESPACE if relational is SCHEMA else DEDICATED), credentials=(viewer,))
    fresh.track(store)
    login, password = store.credential_roles[0].logins[0], "viewer-password-1"
    relational_store = PostgresRelationalStore(operator_server)
    await relational_store.ensure(store, "owner-password", password_is_new=True)
    await relational_store.ensure_credentials(store, {viewer.name: LoginPlan(login, password, True)})
    tenant = await provision(operator_server, store, password="owner-password")

    place = tenant.relational
    reader = psycopg.connect(f"postgresql://{login}:{password}@{place.host}:{place.port}/{tenant.database}",
                             autocommit=True, connect_timeout=5, options=TENANT_CONNECTION_OPTIONS)
    try:
        reader.execute("BEGIN")
        reader.execute(f"SELECT count(*) FROM {tenant.schema}.ledger")  # held until the transaction ends
        timed = await finishes_within(operator_teardown(operator_server, store), DEADLINE_SECONDS,
                                      release=reader.close)
    finally:
        reader.close()
    attempts.record(f"a readOnly credential's open transaction stalls the teardown of its {relational.value} tenant",
                    timed.in_time and timed.error is None, timed.describe())


# What a tenant's transaction left open holds against its own quota block: the lock a read takes on its table
# (the block changes the table's owner), and its vector table locked outright (it may: it may update it).
HELD_AGAINST_THE_BLOCK = {
    "a read of its own table": "SELECT count(*) FROM {tenant.schema}.ledger",
    "its vector table locked exclusively": "LOCK TABLE {tenant.vectors.table} IN ACCESS EXCLUSIVE MODE",
}


@pytest.mark.parametrize("held", list(HELD_AGAINST_THE_BLOCK))
@pytest.mark.parametrize("relational", [SCHEMA, DATABASE], ids=["schema", "database"])
async def test_an_open_transaction_does_not_keep_a_tenant_from_its_quota_block(
        relational: RelationalIsolation, held: str, fresh: FreshTenants, operator_server: PostgresServer,
        attempts: Attempts) -> None:
    """Else the tenant's other sessions write on past the quota for as long as the transaction stays open."""
    tenant = await fresh.make(f"hxquotahold{relational.value[0]}{list(HELD_AGAINST_THE_BLOCK).index(held)}",
                              relational, NAMESPACE if relational is SCHEMA else DEDICATED)
    holder = tenant.connect()
    try:
        holder.execute("BEGIN")
        holder.execute(HELD_AGAINST_THE_BLOCK[held].format(tenant=tenant))  # held until the transaction ends
        timed = await finishes_within(block_writes(operator_server, tenant), DEADLINE_SECONDS, release=holder.close)
    finally:
        holder.close()
    attempts.record(f"{relational.value} tenant keeps its quota block away with {held} in an open transaction",
                    timed.in_time and timed.error is None, timed.describe())

    def write(statement: str, *params: object) -> None:
        with tenant.connect() as conn:
            conn.execute(statement, params)

    namespace = tenant.vectors.namespace
    attempts.refused(f"{relational.value} tenant writes its table after a block it held {held} against",
                     lambda: write(f"INSERT INTO {tenant.schema}.ledger VALUES (77, 'hx-over')"))
    attempts.refused(f"{relational.value} tenant writes its vectors after a block it held {held} against",
                     lambda: write(f"INSERT INTO {tenant.vectors.table} (namespace, id, embedding) VALUES (%s, 'hx', "
                                   f"'[1,1,1]')", namespace) if namespace else
                     write(f"INSERT INTO {tenant.vectors.table} (id, embedding) VALUES ('hx', '[1,1,1]')"))


async def test_an_open_transaction_on_the_source_of_a_tier_move_does_not_keep_it(
        fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser, attempts: Attempts) -> None:
    """The last step of a move drops its source; a session of the tenant opened before the switch may hold a lock
    there, and the source (its data, outside what is measured once the move is over) must not outlive the move."""
    tenant = await fresh.make("hxmovehold")
    holder = tenant.connect()
    try:
        holder.execute("BEGIN")
        holder.execute(f"SELECT count(*) FROM {tenant.schema}.ledger")  # held until the transaction ends
        timed = await finishes_within(PostgresRelationalStore(operator_server).drop_data(tenant.store),
                                      DEADLINE_SECONDS, release=holder.close)
    finally:
        holder.close()
    left = superuser.value(tenant.database, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (tenant.schema,))
    attempts.record("schema tenant keeps the source of its tier move with an open transaction",
                    timed.in_time and timed.error is None and not left, f"{left} schema left; {timed.describe()}")


# A lock a tenant keeps on one relation of its own so the usage job cannot measure it, while its other sessions write.
HIDING_LOCKS = {
    "schema tenant behind a table of its own": (SCHEMA, "LOCK TABLE {tenant.schema}.ledger IN ACCESS EXCLUSIVE MODE"),
    "schema tenant behind its vector partition": (SCHEMA, "LOCK TABLE {tenant.vectors.table} IN ACCESS EXCLUSIVE MODE"),
    "database tenant behind its vector table": (DATABASE, "LOCK TABLE {tenant.vectors.table} IN ACCESS EXCLUSIVE MODE"),
}


@pytest.mark.parametrize("hiding", list(HIDING_LOCKS))
async def test_a_relation_kept_locked_hides_what_a_tenant_stores_from_its_quota_for_a_bounded_time(
        hiding: str, fresh: FreshTenants, operator_server: PostgresServer, superuser: Superuser, attempts: Attempts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_backend, "EXCLUSIVE_LOCK_LIMIT_SECONDS", 2.0)  # 300 s in the operator
    relational, lock = HIDING_LOCKS[hiding]
    tenant = await fresh.make(f"hxhide{list(HIDING_LOCKS).index(hiding)}", relational,
                              NAMESPACE if relational is SCHEMA else DEDICATED)
    holder = tenant.connect()
    try:
        holder.execute("BEGIN")
        holder.execute(lock.format(tenant=tenant))
        with tenant.connect() as writer:  # what it would keep from its quota
            writer.execute(f"CREATE TABLE {tenant.schema}.hx_hoard AS "
                           f"SELECT n, repeat('x', 500) AS body FROM generate_series(1, 20000) n")
        hoard = superuser.value(tenant.database, "SELECT pg_relation_size(%s::regclass)", (f"{tenant.schema}.hx_hoard",))
        wait_until(lambda: lock_held_seconds(superuser, tenant.role) > 2.5, 10, "the lock to be held past the limit")

        async def measured() -> tuple[dict[str, Any], dict[str, Any]]:
            return (await PostgresRelationalStore(operator_server).measure([tenant.store]),
                    await PgvectorStore(operator_server).measure([(tenant.store, tenant.vectors)]))

        timed = await finishes_within(measured(), DEADLINE_SECONDS, release=holder.close)
    finally:
        holder.close()
    measured_relational, measured_vectors = timed.result or ({}, {})
    figures = (measured_relational.get(tenant.id), measured_vectors.get(tenant.id))
    attempts.record(f"{hiding} kept locked hides what it stores from its quota",
                    timed.in_time and timed.error is None and None not in figures
                    and figures[0].storage_bytes >= hoard, f"{timed.describe()}; figures {figures}, hoard {hoard} B")


def lock_held_seconds(superuser: Superuser, role: str) -> float:
    return float(superuser.value("postgres", "SELECT coalesce(extract(epoch FROM now() - min(a.xact_start)), 0) "
                                             "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                                             "WHERE l.granted AND l.mode = 'AccessExclusiveLock' AND a.usename = %s",
                                 (role,)))
