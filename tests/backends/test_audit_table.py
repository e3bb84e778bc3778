"""The audit table against a real Postgres: append-only for the operator's own admin role, stamped by the server,
expired only past the retention, and never written into a schema someone else made."""
from __future__ import annotations

import datetime
import secrets
import socket
import types
from typing import Any

import psycopg
import pytest

from tenantstore.audit import AuditTrail
from tenantstore.backends import audit_table
from tenantstore.backends.audit_table import Entry
from tenantstore.backends.postgres import PostgresServer
from tenantstore.errors import ReconcileError, StoreClassNotReady
from tenantstore.models import StoreClass
from tenantstore_dev.postgres import ADMIN_ROLE, EmbeddedPostgres

OWNER = audit_table.owner_of(ADMIN_ROLE)


def entries(tenant_id: str, *actions: str) -> list[Entry]:
    return [Entry(tenant_id, "uid-1", "customers", tenant_id, action, f"{action} happened", "kubectl", "ab" * 16)
            for action in actions]


def a_tenant() -> str:
    return f"audit-{secrets.token_hex(4)}"


async def test_rows_come_back_in_order_stamped_by_the_server(pg: PostgresServer) -> None:
    tenant_id = a_tenant()
    before = datetime.datetime.now(datetime.UTC)
    async with pg.connect() as conn:
        await audit_table.ensure(conn)
        await audit_table.ensure(conn)  # made once; a second call changes nothing
        await audit_table.append(conn, entries(tenant_id, "Provisioned", "LoginChanged"))
        await audit_table.append(conn, entries(tenant_id, "TeardownVerified"))
        await audit_table.append(conn, entries(a_tenant(), "Provisioned"))
        trail = await audit_table.trail(conn, tenant_id)
    assert [entry.action for entry in trail] == ["Provisioned", "LoginChanged", "TeardownVerified"]
    assert all(before - datetime.timedelta(seconds=5) <= entry.at <= datetime.datetime.now(datetime.UTC)
               for entry in trail if entry.at)
    assert trail[0].actor == "kubectl" and trail[0].trace_id == "ab" * 16


async def test_a_backdated_insert_gets_the_servers_time(pg: PostgresServer) -> None:
    tenant_id = a_tenant()
    async with pg.connect() as conn:
        await audit_table.ensure(conn)
        await conn.execute("INSERT INTO tenantstore_audit.entries (at, tenant_id, tenant_store_uid, namespace, name, "
                           "action, message, actor, trace_id) VALUES ('2001-01-01', %s, '', '', '', 'Forged', '', "
                           "'', '')", (tenant_id,))
        trail = await audit_table.trail(conn, tenant_id)
    assert trail[0].at and trail[0].at.year >= 2026


@pytest.mark.parametrize("statement", [
    "UPDATE tenantstore_audit.entries SET message = 'rewritten'",
    "DELETE FROM tenantstore_audit.entries",
    "TRUNCATE tenantstore_audit.entries",
    f"SET ROLE {OWNER}",
    "ALTER TABLE tenantstore_audit.entries DISABLE TRIGGER append_only",
    "DROP TABLE tenantstore_audit.entries",
])
async def test_the_operators_admin_role_can_only_append(pg: PostgresServer, statement: str) -> None:
    tenant_id = a_tenant()
    async with pg.connect() as conn:
        await audit_table.ensure(conn)
        await audit_table.append(conn, entries(tenant_id, "Provisioned"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(statement)
        # Postgres keeps the creator's ADMIN option on the owner role; what it must not have is its privileges.
        powers = await (await conn.execute("SELECT pg_has_role(current_user, %s, 'SET') AS can_set, "
                                           "pg_has_role(current_user, %s, 'USAGE') AS inherits",
                                           (OWNER, OWNER))).fetchone()
        assert powers == {"can_set": False, "inherits": False}
        assert [entry.message for entry in await audit_table.trail(conn, tenant_id)] == ["Provisioned happened"]


async def test_expire_deletes_only_rows_past_the_retention(pg: PostgresServer, postgres: EmbeddedPostgres) -> None:
    old, recent = a_tenant(), a_tenant()
    async with pg.connect() as conn:
        await audit_table.ensure(conn)
        await audit_table.append(conn, entries(old, "Provisioned") + entries(recent, "Provisioned"))
    # Only a superuser, bypassing the triggers, can make a row old.
    async with await psycopg.AsyncConnection.connect(postgres.superuser_uri(pg.shared_database),
                                                     autocommit=True) as superuser:
        await superuser.execute("SET session_replication_role = replica")
        await superuser.execute("UPDATE tenantstore_audit.entries SET at = now() - interval '10 days' "
                                "WHERE tenant_id = %s", (old,))
    async with pg.connect() as conn:
        assert await audit_table.expire(conn, datetime.timedelta(days=30)) == 0
        assert await audit_table.expire(conn, datetime.timedelta(days=5)) >= 1
        assert await audit_table.trail(conn, old) == []
        await audit_table.expire(conn, datetime.timedelta(0))  # a day is kept whatever the retention says
        assert len(await audit_table.trail(conn, recent)) == 1


async def test_a_schema_someone_else_made_under_the_name_is_refused(admin_uri: str, postgres: EmbeddedPostgres,
                                                                    pg: PostgresServer) -> None:
    database = f"audit_squat_{secrets.token_hex(3)}"
    async with await psycopg.AsyncConnection.connect(postgres.superuser_uri(), autocommit=True) as superuser:
        await superuser.execute(f'CREATE DATABASE "{database}" OWNER "{pg.admin_role}"')
    squatted = PostgresServer(admin_uri, database)
    try:
        async with squatted.connect() as conn:
            await conn.execute("CREATE SCHEMA tenantstore_audit")  # made by another hand than the trail's
            await conn.execute("CREATE TABLE tenantstore_audit.entries (id int)")
            with pytest.raises(StoreClassNotReady, match="not made by tenantstore"):
                await audit_table.ensure(conn)
    finally:
        await squatted.close()


class OneServer:
    """The registry as the trail sees it: the class's backends, here only its Postgres."""

    def __init__(self, server: PostgresServer):
        self.server = server

    async def for_class(self, store_class: StoreClass) -> Any:
        return types.SimpleNamespace(server=self.server)


async def test_rows_stay_queued_while_postgres_does_not_answer(pg: PostgresServer, admin_uri: str) -> None:
    tenant_id = a_tenant()
    store_class = StoreClass.from_body({"metadata": {"name": "audited"}, "spec": {
        "postgres": {"adminSecretRef": {"name": "admin", "namespace": "default"}}}})
    unreachable = PostgresServer(admin_uri.replace(f":{pg.port}/", f":{closed_port()}/"), pg.shared_database)
    trail = AuditTrail(OneServer(unreachable))  # type: ignore[arg-type]
    trail.know(store_class)
    body = {"kind": "TenantStore", "metadata": {"uid": "u", "namespace": "n", "name": "t"},
            "spec": {"tenantId": tenant_id, "storeClassName": "audited"}}
    trail.record(body, "Provisioned", "made", actor="kubectl", trace_id="")
    with pytest.raises(ReconcileError):
        await trail.flush()
    assert trail.pending() == 1
    trail.backends = OneServer(pg)  # type: ignore[assignment]
    await trail.flush()
    assert trail.pending() == 0
    await trail.close()
    await unreachable.close()
    async with pg.connect() as conn:
        assert [entry.action for entry in await audit_table.trail(conn, tenant_id)] == ["Provisioned"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_each_admin_role_gets_a_trail_of_its_own(postgres: EmbeddedPostgres) -> None:
    """Classes of one Postgres may log in as different admin roles: each makes (and owns through) its own."""
    admin, database = f"audit_admin_{secrets.token_hex(3)}", f"audit_other_{secrets.token_hex(3)}"
    async with await psycopg.AsyncConnection.connect(postgres.superuser_uri(), autocommit=True) as superuser:
        await superuser.execute(f"CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD 'other-admin'")
        await superuser.execute(f'CREATE DATABASE "{database}" OWNER {admin}')
    other = PostgresServer(f"postgresql://{admin}:other-admin@127.0.0.1:{postgres.port}/{database}", database)
    try:
        async with other.connect() as conn:
            await audit_table.ensure(conn)
            await audit_table.append(conn, entries("audit-other", "Provisioned"))
            assert [entry.action for entry in await audit_table.trail(conn, "audit-other")] == ["Provisioned"]
            owner = await (await conn.execute("SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace "
                                              "WHERE nspname = 'tenantstore_audit'")).fetchone()
        assert owner == {"owner": audit_table.owner_of(admin)} != {"owner": OWNER}
    finally:
        await other.close()
