"""What the operator and other tenants keep to themselves: the bookkeeping schema, role passwords, who owns
which tenant, other connections' query text, other databases, other roles' logins."""
from __future__ import annotations

import psycopg
import pytest
from hostile_kit import (
    BOOKKEEPING_TABLES,
    AttackContext,
    Attempts,
    Fleet,
    SqlAttack,
    SqlResult,
    Tenant,
    no_foreign_rows,
    no_owner_identity,
    no_password_hashes,
    run_sql_attack,
)

from tenantstore.backends.postgres import PostgresServer

# The attacker's own statements may name its victims (earlier attacks did): only other roles' rows are judged.
OTHERS = "usename IS DISTINCT FROM current_user"


def free(name: str, *steps: str, **options: object) -> SqlAttack:
    return SqlAttack(f"free tenant {name}", "free", tuple(steps), **options)  # type: ignore[arg-type]


BOOKKEEPING = [
    *[free(f"reads the operator's {table} table", f"SELECT * FROM tenantstore.{table}") for table in BOOKKEEPING_TABLES],
    free("forges a claim", "INSERT INTO tenantstore.claims (role, tenant_id, owner_uid, owner_namespace, owner_name) "
                           "VALUES ('tenant_hxfuture', 'hxfuture', 'hx', 'hx', 'hx')"),
    free("releases a victim's claim", "UPDATE tenantstore.claims SET owner_uid = NULL WHERE role = '{victim_role}'"),
    free("moves a victim's claim into another namespace",
         "UPDATE tenantstore.claims SET owner_namespace = 'hx' WHERE role = '{victim_role}'"),
    free("deletes the claims", "DELETE FROM tenantstore.claims"),
    free("truncates the claims", "TRUNCATE tenantstore.claims"),
    free("rewinds its daily query baseline",
         "UPDATE tenantstore.daily_query_baseline SET calls = calls + 1000000 WHERE role = '{my_role}'"),
    free("takes the operator's lock rows", "SELECT * FROM tenantstore.locks FOR UPDATE", transaction=True),
    free("deletes the operator's lock rows", "DELETE FROM tenantstore.locks"),
    free("creates a table in the bookkeeping schema", "CREATE TABLE tenantstore.hx (id int)"),
    free("reads role passwords from pg_authid", "SELECT rolname, rolpassword FROM pg_authid"),
    free("reads role passwords from pg_shadow", "SELECT usename, passwd FROM pg_shadow"),
    free("reads role passwords from pg_roles", "SELECT rolname, rolpassword FROM pg_roles",
         expect=psycopg.Error, judge=no_password_hashes),
    free("reads role passwords from pg_user", "SELECT usename, passwd FROM pg_user",
         expect=psycopg.Error, judge=no_password_hashes),
    free("reads owners from role comments", "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles",
         expect=psycopg.Error, judge=no_owner_identity),
    free("reads owners from pg_shdescription", "SELECT description FROM pg_shdescription",
         expect=psycopg.Error, judge=no_owner_identity),
    free("reads owners from object comments", "SELECT description FROM pg_description",
         expect=psycopg.Error, judge=no_owner_identity),
    free("reads owners from database comments", "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database",
         expect=psycopg.Error, judge=no_owner_identity),
    SqlAttack("enterprise tenant reads owners from role comments", "enterprise",
              ("SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles",), expect=psycopg.Error,
              judge=no_owner_identity),
    free("reads the server's client authentication rules", "SELECT * FROM pg_hba_file_rules"),
    free("reads the server's configuration files", "SELECT * FROM pg_file_settings"),
]


@pytest.mark.parametrize("attack", BOOKKEEPING, ids=str)
def test_bookkeeping_and_secrets_stay_unreadable(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


def test_other_connections_query_text_stays_hidden(fleet: Fleet, attempts: Attempts) -> None:
    victim = fleet["victim"]
    with victim.connect() as victim_connection:
        # Table names survive pg_stat_statements' normalisation; the marker stays in pg_stat_activity.
        victim_connection.execute(f"SELECT secret FROM {victim.schema}.ledger WHERE secret <> 'hxsecret-{victim.id}-activity'")
        spying = {
            ("free", "reads another connection's query text from pg_stat_activity"):
                f"SELECT usename, query FROM pg_stat_activity WHERE {OTHERS}",
            ("free", "reads another connection's query text through pg_stat_get_activity"):
                "SELECT query FROM pg_stat_get_activity(NULL) WHERE usesysid IS DISTINCT FROM "
                "(SELECT oid FROM pg_roles WHERE rolname = current_user)",
            ("free", "reads another role's statements from pg_stat_statements"):
                "SELECT userid::regrole::text, query FROM pg_stat_statements "
                "WHERE userid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)",
            ("enterprise", "reads another connection's query text from pg_stat_activity"):
                f"SELECT usename, query FROM pg_stat_activity WHERE {OTHERS}",
        }

        def reveals_no_query_of(result: SqlResult, context: AttackContext) -> bool:
            return f"{victim.schema}.ledger" not in result.text() and no_foreign_rows(result, context)

        for (attacker, name), query in spying.items():
            run_sql_attack(attempts, fleet, SqlAttack(f"{attacker} tenant {name}", attacker, (query,),
                                                      expect=psycopg.Error, judge=reveals_no_query_of))


async def test_other_connections_cannot_be_ended(fleet: Fleet, attempts: Attempts, operator_server: PostgresServer) -> None:
    victim = fleet["victim"]
    async with operator_server.connect() as admin_connection:
        admin_pid = (await (await admin_connection.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"]
    with victim.connect() as victim_connection:
        victim_pid = victim_connection.info.backend_pid
        targets = {"a victim's connection": victim_pid, "the operator's connection": admin_pid}
        for target, pid in targets.items():
            for verb in ("terminate", "cancel"):
                run_sql_attack(attempts, fleet, SqlAttack(f"free tenant tries to {verb} {target}", "free",
                                                          (f"SELECT pg_{verb}_backend({pid})",)))
        assert victim_connection.execute("SELECT 1").fetchone() == (1,), "the victim's connection did not survive"


CROSS_DATABASE = [
    ("free", "tenant_hxev"), ("free", "tenant_hxea"), ("free", "postgres"), ("free", "template1"), ("free", "template0"),
    ("enterprise", "tenant_hxev"), ("enterprise", "tenants"), ("enterprise", "postgres"), ("enterprise", "template1"),
    ("enterprise_victim", "tenant_hxea"), ("blocked", "tenant_hxeblk"), ("enterprise_blocked", "tenants"),
    ("moving", "tenant_hxev"),
]


@pytest.mark.parametrize(("attacker", "database"), CROSS_DATABASE, ids=[f"{a} into {d}" for a, d in CROSS_DATABASE])
def test_a_tenant_connects_only_to_its_own_database(attacker: str, database: str, fleet: Fleet, attempts: Attempts) -> None:
    tenant = fleet[attacker]
    attempts.refused(f"{attacker} tenant connects to database {database}", lambda: tenant.connect(database).close(),
                     expect=psycopg.OperationalError,
                     message="permission denied for database|not currently accepting connections")


def other_login(tenant: Tenant, user: str, **options: object) -> None:
    """Log in as `user` with the tenant's own password."""
    psycopg.connect(host=tenant.relational.host, port=tenant.relational.port, dbname=tenant.database, user=user,
                    password=tenant.password, connect_timeout=5, **options).close()  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["victim", "admin", "superuser", "holding role", "replication"])
def test_a_tenant_password_opens_no_other_login(target: str, fleet: Fleet, attempts: Attempts) -> None:
    attacker = fleet["free"]
    user = {"victim": fleet["victim"].role, "admin": fleet.admin_role, "superuser": "postgres",
            "holding role": attacker.holding_role, "replication": attacker.role}[target]
    options = {"replication": "database"} if target == "replication" else {}
    attempts.refused(f"free tenant logs in as the {target} with its own password",
                     lambda: other_login(attacker, user, **options), expect=psycopg.OperationalError,
                     message="password authentication failed|not permitted to log in|permission denied to start WAL sender")
