"""Fixtures of the hostile-tenant suite.

A fleet of tenants shared by the whole run, made by the operator's own backends (free and pro tenants in one shared index,
enterprise tenants with databases of their own, and tenants that are Blocked, Suspended or mid tier move),
fresh tenants for attacks that wreck their attacker, a snapshot of every victim's data around each test, a
check that no role gained anything, and the summary line of all attempts.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hostile_kit import (
    ATTEMPTS,
    DATABASE,
    DEDICATED,
    NAMESPACE,
    SCHEMA,
    SHARED_DATABASE,
    Attempts,
    Fleet,
    FreshTenants,
    Superuser,
    Tenant,
    add_dedicated_target,
    block_writes,
    desired,
    privilege_problems,
    provision,
    remove,
    revoke_everything,
    snapshot,
    suspend,
)
from psycopg import sql

from tenantstore.backends.postgres import PostgresServer
from tenantstore_dev.postgres import EmbeddedPostgres


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not ATTEMPTS.outcomes:
        return
    terminalreporter.write_line(f"hostile-tenant suite: {ATTEMPTS.attempted} attempts, {ATTEMPTS.refused_count} refused")
    for outcome in ATTEMPTS.outcomes.values():
        if outcome.verdict != "refused":
            terminalreporter.write_line(f"  {outcome.verdict}: {outcome.name}: {outcome.detail}")


@pytest.fixture(scope="session")
def attempts() -> Attempts:
    return ATTEMPTS


@pytest.fixture(scope="session")
def superuser(postgres: EmbeddedPostgres) -> Iterator[Superuser]:
    checker = Superuser(postgres.superuser_uri)
    yield checker
    checker.close()


@pytest.fixture(scope="session")
async def operator_server(admin_uri: str) -> AsyncIterator[PostgresServer]:
    server = PostgresServer(admin_uri, SHARED_DATABASE)
    yield server
    await server.close()


@pytest.fixture(scope="session")
async def fleet(operator_server: PostgresServer, superuser: Superuser) -> AsyncIterator[Fleet]:
    server = operator_server
    tenants: dict[str, Tenant] = {}
    try:
        # At the backend level a tier is its isolation and quotas: the pro victim differs from free ones in its limit.
        for key, tenant_id, relational, vector, connection_limit in (
                ("free", "hxfa", SCHEMA, NAMESPACE, 10), ("victim", "hxfv", SCHEMA, NAMESPACE, 10),
                ("pro_victim", "hxpv", SCHEMA, NAMESPACE, 20), ("enterprise", "hxea", DATABASE, DEDICATED, 30),
                ("enterprise_victim", "hxev", DATABASE, DEDICATED, 30), ("blocked", "hxblk", SCHEMA, NAMESPACE, 10),
                ("enterprise_blocked", "hxeblk", DATABASE, DEDICATED, 30), ("suspended", "hxsus", SCHEMA, NAMESPACE, 10),
                ("moving", "hxmov", SCHEMA, NAMESPACE, 10)):
            tenants[key] = await provision(server, desired(tenant_id, relational, vector, connection_limit=connection_limit))
        for tenant in tenants.values():
            superuser.keep(tenant.database)
        await add_dedicated_target(server, tenants["moving"])
        await block_writes(server, tenants["blocked"])
        await block_writes(server, tenants["enterprise_blocked"])
        await suspend(server, tenants["suspended"])

        parents = {superuser.value(SHARED_DATABASE, "SELECT inhparent::regclass::text FROM pg_inherits "
                                                    "WHERE inhrelid = to_regclass(%s)", (tenant.partition,))
                   for tenant in tenants.values() if tenant.store.vector is NAMESPACE}
        assert len(parents) == 1 and None not in parents, f"the namespace tenants are not in one shared index: {parents}"
        shared = parents.pop()
        # Statistics hold row values; attacks try to read them, so there must be some.
        superuser.rows(SHARED_DATABASE, f"ANALYZE {shared}")
        yield Fleet(tenants, shared, server.admin_role, server, superuser)
    finally:
        for tenant in tenants.values():
            await remove(server, superuser, tenant.store)


@pytest.fixture
async def fresh(operator_server: PostgresServer, superuser: Superuser) -> AsyncIterator[FreshTenants]:
    tenants = FreshTenants(operator_server, superuser)
    yield tenants
    await tenants.remove_all()


@pytest.fixture(autouse=True)
def victims_untouched(fleet: Fleet, superuser: Superuser) -> Iterator[None]:
    """Every victim's rows, byte for byte, are what they were before the test."""
    before = snapshot(superuser, fleet.victims)
    yield
    after = snapshot(superuser, fleet.victims)
    changed = {name: f"{before[name]} -> {after.get(name)}" for name in before if after.get(name) != before[name]}
    assert not changed, f"a victim's data changed: {changed}"


@pytest.fixture(autouse=True)
def no_role_gained_anything(fleet: Fleet, superuser: Superuser) -> Iterator[None]:
    """No tenant of the fleet ends a test with a membership, an elevated attribute or another connection limit."""
    yield
    problems = [problem for tenant in fleet.tenants.values() for problem in privilege_problems(superuser, tenant)]
    if problems:
        for tenant in fleet.tenants.values():  # put the fleet back, so one breach does not fail every later test
            role = sql.Identifier(tenant.role)
            revoke_everything(superuser, tenant.role)
            superuser.rows(SHARED_DATABASE, sql.SQL(
                "ALTER ROLE {} NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} {}").format(
                role, sql.Literal(tenant.store.connection_limit), sql.SQL("NOLOGIN" if tenant.store.suspended else "LOGIN")))
    assert not problems, f"a tenant role gained privileges: {problems}"
