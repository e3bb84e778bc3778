"""The operator's own records in a class's shared database, out of every tenant's reach.

Schema `tenantstore` belongs to the admin role and grants nothing to anyone: tenants can neither read who
claimed which tenantId nor take the locks the operator serializes on. (Advisory locks would not do: any
role that can connect may take any advisory key.)

- `claims`: which TenantStore owns a tenant role, and which namespace a retained tenant belongs to.
- `locks`: one row per operator lock; `SELECT ... FOR UPDATE` on a row is the lock.
- `daily_query_baseline`: per role, the statement count at the day's first measurement.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from psycopg import sql

SCHEMA = "tenantstore"
CLAIMS = sql.Identifier(SCHEMA, "claims")
LOCKS = sql.Identifier(SCHEMA, "locks")
BASELINES = sql.Identifier(SCHEMA, "daily_query_baseline")

# DROP OWNED rewrites the ACLs of shared objects; two at once fail ("tuple concurrently updated"), so
# teardowns and changes of tenant role memberships take this lock.
SHARED_ACL_LOCK = "shared-acl"
# Placements wait for each other here, legitimately; only tenants' locks are bounded by the session's timeout.
LOCK_WAIT = "60s"

_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
    sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(SCHEMA)),
    sql.SQL("CREATE TABLE IF NOT EXISTS {} (role name PRIMARY KEY, tenant_id text NOT NULL, owner_uid text, "
            "owner_namespace text NOT NULL, owner_name text NOT NULL)").format(CLAIMS),
    sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY)").format(LOCKS),
    sql.SQL("CREATE TABLE IF NOT EXISTS {} (role name PRIMARY KEY, day date NOT NULL, "
            "calls bigint NOT NULL)").format(BASELINES),
]


@dataclasses.dataclass(frozen=True)
class Claim:
    """Who holds a tenant role: a TenantStore's uid, or None while the tenant is retained."""

    owner_uid: str | None
    owner_namespace: str
    owner_name: str


async def ensure_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    present = await (await conn.execute(
        "SELECT count(*) = 3 AS ready FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname IN ('claims', 'locks', 'daily_query_baseline')", (SCHEMA,))).fetchone()
    if present and present["ready"]:
        return
    async with conn.transaction():
        for statement in _DDL:
            await conn.execute(statement)


def lock_statements(name: str) -> list[sql.Composed]:
    """Statements that take the operator lock `name` until their transaction ends."""
    return [sql.SQL("INSERT INTO {} (name) VALUES ({}) ON CONFLICT DO NOTHING").format(LOCKS, sql.Literal(name)),
            sql.SQL("SELECT 1 FROM {} WHERE name = {} FOR UPDATE").format(LOCKS, sql.Literal(name))]


async def hold_lock(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    """Take the operator lock `name` until the current transaction ends, waiting for other operator work."""
    await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_WAIT)))
    for statement in lock_statements(name):
        await conn.execute(statement)
    await conn.execute("SET LOCAL lock_timeout = DEFAULT")


def record_claim(role: str, tenant_id: str, owner_uid: str, owner_namespace: str, owner_name: str) -> sql.Composed:
    """A statement that makes `owner_uid` the holder of `role` (with CREATE ROLE, in one transaction)."""
    return sql.SQL(
        "INSERT INTO {} (role, tenant_id, owner_uid, owner_namespace, owner_name) VALUES ({}, {}, {}, {}, {}) "
        "ON CONFLICT (role) DO UPDATE SET owner_uid = EXCLUDED.owner_uid, owner_namespace = "
        "EXCLUDED.owner_namespace, owner_name = EXCLUDED.owner_name").format(
        CLAIMS, *(sql.Literal(value) for value in (role, tenant_id, owner_uid, owner_namespace, owner_name)))


async def read_claim(conn: psycopg.AsyncConnection[Any], role: str) -> Claim | None:
    row = await (await conn.execute(sql.SQL("SELECT owner_uid, owner_namespace, owner_name FROM {} WHERE role = %s")
                                    .format(CLAIMS), (role,))).fetchone()
    return Claim(row["owner_uid"], row["owner_namespace"], row["owner_name"]) if row else None


async def adopt_claim(conn: psycopg.AsyncConnection[Any], role: str, owner_uid: str, owner_namespace: str,
                      owner_name: str) -> bool:
    """Take over a retained claim of the same namespace; False when someone else was faster or it is not ours."""
    cursor = await conn.execute(sql.SQL(
        "UPDATE {} SET owner_uid = %s, owner_name = %s WHERE role = %s AND owner_uid IS NULL "
        "AND owner_namespace = %s RETURNING role").format(CLAIMS), (owner_uid, owner_name, role, owner_namespace))
    return await cursor.fetchone() is not None


async def release_claim(conn: psycopg.AsyncConnection[Any], role: str, owner_uid: str) -> None:
    await conn.execute(sql.SQL("UPDATE {} SET owner_uid = NULL WHERE role = %s AND owner_uid = %s").format(CLAIMS),
                       (role, owner_uid))


def not_the_tenants_query(role: str) -> sql.Composed:
    """The isolation canary's `SET LOCAL ROLE <role>` and one query, which pg_stat_statements records as the
    tenant's (the SET too, where it tracks utility statements): they leave its daily query count as it was."""
    return sql.SQL(
        "UPDATE {} SET calls = calls + CASE "
        "WHEN coalesce(current_setting('pg_stat_statements.track', true), 'none') = 'none' THEN 0 "
        "ELSE 1 + (coalesce(current_setting('pg_stat_statements.track_utility', true), 'off') = 'on')::int END "
        "WHERE role = {}").format(BASELINES, sql.Literal(role))


def forget_role(role: str) -> list[sql.Composed]:
    """Statements that remove everything the operator recorded about a dropped tenant role."""
    return [sql.SQL("DELETE FROM {} WHERE role = {}").format(table, sql.Literal(role)) for table in (CLAIMS, BASELINES)]


async def records_of(conn: psycopg.AsyncConnection[Any], role: str) -> list[str]:
    """What the operator still records about `role` (empty after a complete teardown)."""
    left = []
    for label, table in (("claim", CLAIMS), ("daily query baseline", BASELINES)):
        if await (await conn.execute(sql.SQL("SELECT 1 FROM {} WHERE role = %s").format(table), (role,))).fetchone():
            left.append(f"{label} of role {role}")
    return left
