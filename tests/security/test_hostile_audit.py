"""The audit trail, attacked with a tenant's own login: no reading it, no forging, rewriting or deleting rows,
no expiring them early, no becoming its owner. The victim's rows are all there afterwards."""
from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from hostile_kit import Attempts, Fleet, SqlAttack, run_sql_attack

from tenantstore.backends import audit_table
from tenantstore_dev.postgres import ADMIN_ROLE
from tenantstore.backends.audit_table import Entry
from tenantstore.backends.postgres import PostgresServer

ENTRIES = "tenantstore_audit.entries"
OWNER = audit_table.owner_of(ADMIN_ROLE)


def tenant(attacker: str, name: str, *steps: str, **options: object) -> SqlAttack:
    return SqlAttack(f"{attacker} tenant {name}", attacker, tuple(steps), **options)  # type: ignore[arg-type]


AUDIT_ATTACKS = [
    tenant("free", "reads the audit trail", f"SELECT * FROM {ENTRIES}"),
    tenant("free", "forges an audit row", f"INSERT INTO {ENTRIES} (tenant_id, tenant_store_uid, namespace, name, "
                                          "action, message, actor, trace_id) VALUES ('{victim}', 'hx', 'hx', "
                                          "'hx', 'Deleted', 'forged', 'hx', '')"),
    tenant("free", "rewrites the victim's audit rows", f"UPDATE {ENTRIES} SET message = 'hx' "
                                                       "WHERE tenant_id = '{victim}'"),
    tenant("free", "deletes the victim's audit rows", f"DELETE FROM {ENTRIES} WHERE tenant_id = '{{victim}}'"),
    tenant("free", "truncates the audit trail", f"TRUNCATE {ENTRIES}"),
    tenant("free", "expires every audit row at once", "SELECT tenantstore_audit.expire(interval '0')"),
    tenant("free", "calls the audit trigger function", "SELECT tenantstore_audit.guard()",
           expect=(psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported)),
    tenant("free", "creates a table in the audit schema", "CREATE TABLE tenantstore_audit.hx (id int)"),
    tenant("free", "becomes the audit trail's owner", f"SET ROLE {OWNER}"),
    tenant("free", "grants itself the audit trail's owner", f"GRANT {OWNER} TO CURRENT_USER"),
    tenant("free", "renames the audit schema", "ALTER SCHEMA tenantstore_audit RENAME TO hx"),
    tenant("free", "drops the audit schema", "DROP SCHEMA tenantstore_audit CASCADE",
           expect=psycopg.errors.InsufficientPrivilege),
]


@pytest.fixture(scope="module")
async def victim_rows(fleet: Fleet, operator_server: PostgresServer) -> AsyncIterator[int]:
    """The trail made as the operator makes it, with rows of the victim's life; their number."""
    victim = fleet["victim"]
    rows = [Entry(victim.id, "uid-victim", "victims", "victim", action, f"the victim's {action}", "kubectl", "")
            for action in ("Provisioned", "LoginChanged", "TeardownVerified")]
    async with operator_server.connect() as conn:
        await audit_table.ensure(conn)
        await audit_table.append(conn, rows)
        yield len(await audit_table.trail(conn, victim.id))


@pytest.mark.parametrize("attack", AUDIT_ATTACKS, ids=str)
async def test_the_audit_trail_is_out_of_a_tenants_reach(attack: SqlAttack, fleet: Fleet, attempts: Attempts,
                                                         victim_rows: int, operator_server: PostgresServer) -> None:
    run_sql_attack(attempts, fleet, attack)
    async with operator_server.connect() as conn:
        trail = await audit_table.trail(conn, fleet["victim"].id)
    assert len(trail) == victim_rows and all(entry.message.startswith("the victim's") for entry in trail)
