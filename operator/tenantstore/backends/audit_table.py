"""The audit trail: an append-only table of every tenant's lifecycle, in the class's shared database.

It outlives Kubernetes Events (about an hour) and the tenants themselves: a deletion receipt stays after
the TenantStore and its roles are gone.

Schema `tenantstore_audit` and its table belong to `tsaudit_<admin role>`, a role nobody logs in as (one per
admin role: only the role that created it may make itself a member). The admin role is a member only while it
creates them (a transaction), then keeps INSERT and SELECT on the table and EXECUTE on `expire`, which deletes
rows past the class's audit retention and nothing else. Triggers refuse UPDATE, DELETE and TRUNCATE from anyone
but the owner. Tenants get nothing: no USAGE on the schema.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from tenantstore.errors import StoreClassNotReady

SCHEMA = "tenantstore_audit"
OWNER_PREFIX = "tsaudit_"
ENTRIES = sql.Identifier(SCHEMA, "entries")
MANAGED_COMMENT = json.dumps({"managedBy": "tenantstore"})
VERSION = "1"  # the table comment: a later layout changes it and migrates

_SCHEMA = sql.Identifier(SCHEMA)


def owner_of(admin: str) -> str:
    """The trail's owner role for this admin role (within Postgres's 63 characters)."""
    name = OWNER_PREFIX + admin
    return name if len(name) <= 63 else OWNER_PREFIX + hashlib.sha256(admin.encode()).hexdigest()[:32]


def _ddl(owner: str) -> list[sql.Composable]:
    """Made as the owner; every function pins its search_path (the admin's sessions and triggers trust no name)."""
    owner_id = sql.Identifier(owner)
    return [
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(_SCHEMA, owner_id),
        sql.SQL("SET LOCAL ROLE {}").format(owner_id),
        sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "at timestamptz NOT NULL DEFAULT clock_timestamp(), tenant_id text NOT NULL, "
                "tenant_store_uid text NOT NULL, namespace text NOT NULL, name text NOT NULL, "
                "action text NOT NULL, message text NOT NULL, actor text NOT NULL, trace_id text NOT NULL)")
        .format(ENTRIES),
        sql.SQL("CREATE INDEX entries_by_tenant ON {} (tenant_id, id)").format(ENTRIES),
        sql.SQL("CREATE INDEX entries_by_time ON {} (at)").format(ENTRIES),
        sql.SQL("COMMENT ON TABLE {} IS {}").format(ENTRIES, sql.Literal(VERSION)),
        # A row's time is the server's, whatever the INSERT says; only the owner (expire) changes rows.
        sql.SQL("""CREATE FUNCTION {}.guard() RETURNS trigger LANGUAGE plpgsql
               SET search_path = pg_catalog, pg_temp AS $$
               BEGIN
                 IF TG_OP = 'INSERT' THEN
                   NEW.at := clock_timestamp();
                   RETURN NEW;
                 END IF;
                 IF current_user <> {} THEN
                   RAISE EXCEPTION 'the audit trail is append-only' USING ERRCODE = 'insufficient_privilege';
                 END IF;
                 RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
               END $$""").format(_SCHEMA, sql.Literal(owner)),
        sql.SQL("CREATE TRIGGER stamp BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}.guard()")
        .format(ENTRIES, _SCHEMA),
        sql.SQL("CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}.guard()")
        .format(ENTRIES, _SCHEMA),
        sql.SQL("CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}.guard()")
        .format(ENTRIES, _SCHEMA),
        # The only deletion there is: rows older than the retention, and never younger than a day.
        sql.SQL("""CREATE FUNCTION {}.expire(keep interval) RETURNS bigint LANGUAGE sql SECURITY DEFINER
               SET search_path = pg_catalog, pg_temp AS $$
               WITH gone AS (DELETE FROM {} WHERE at < clock_timestamp() - GREATEST(keep, interval '1 day')
                             RETURNING 1)
               SELECT count(*) FROM gone $$""").format(_SCHEMA, ENTRIES),
        sql.SQL("REVOKE ALL ON FUNCTION {}.expire(interval), {}.guard() FROM PUBLIC").format(_SCHEMA, _SCHEMA),
    ]


def _grants(admin: sql.Identifier) -> list[sql.Composed]:
    """What the owner gives the admin role: append and read, and expire by the retention."""
    return [sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(_SCHEMA, admin),
            sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(ENTRIES, admin),
            sql.SQL("GRANT EXECUTE ON FUNCTION {}.expire(interval) TO {}").format(_SCHEMA, admin)]


@dataclasses.dataclass(frozen=True)
class Entry:
    tenant_id: str
    tenant_store_uid: str
    namespace: str
    name: str
    action: str
    message: str
    actor: str
    trace_id: str
    at: datetime.datetime | None = None  # set by the database

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at": self.at.isoformat() if self.at else None}


async def ensure(conn: psycopg.AsyncConnection[Any]) -> None:
    """The schema, table and grants, made once; refuses a schema someone else made under the name."""
    admin = str((await (await conn.execute("SELECT session_user AS admin")).fetchone())["admin"])
    owner = owner_of(admin)
    found = await (await conn.execute(
        "SELECT pg_get_userbyid(n.nspowner) AS owner, shobj_description(n.nspowner, 'pg_authid') AS comment, "
        "obj_description(c.oid, 'pg_class') AS version, has_table_privilege(c.oid, 'INSERT') AS can_insert "
        "FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'entries' "
        "WHERE n.nspname = %s", (SCHEMA,))).fetchone()
    if found is not None:
        if not found["owner"].startswith(OWNER_PREFIX) or found["comment"] != MANAGED_COMMENT \
                or found["version"] != VERSION:
            raise StoreClassNotReady(f"schema {SCHEMA} exists but was not made by tenantstore's audit trail "
                                     f"(owner {found['owner']}); the operator will not write to it")
        if found["can_insert"]:
            return
        if found["owner"] != owner:
            raise StoreClassNotReady(f"the audit trail in this database belongs to another admin role's "
                                     f"{found['owner']}; grant {admin} INSERT and SELECT on {SCHEMA}.entries")
        async with conn.transaction():
            await _as_owner(conn, admin, owner, [])
        return
    async with conn.transaction():
        role = await (await conn.execute("SELECT shobj_description(oid, 'pg_authid') AS comment FROM pg_roles "
                                         "WHERE rolname = %s", (owner,))).fetchone()
        if role is None:
            await conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
            await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(owner),
                                                                         sql.Literal(MANAGED_COMMENT)))
        elif role["comment"] != MANAGED_COMMENT:
            raise StoreClassNotReady(f"role {owner} exists but was not made by tenantstore")
        await _as_owner(conn, admin, owner, _ddl(owner))


async def _as_owner(conn: psycopg.AsyncConnection[Any], admin: str, owner: str,
                    statements: Sequence[sql.Composable]) -> None:
    """Run `statements` and the owner's grants with the admin a member of the owner, and end the membership
    in the same transaction: what the admin keeps are the grants on the schema's objects."""
    admin_id, owner_id = sql.Identifier(admin), sql.Identifier(owner)
    await conn.execute(sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(owner_id, admin_id))
    for statement in statements:
        await conn.execute(statement)
    await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(owner_id))
    for grant in _grants(admin_id):
        await conn.execute(grant)
    await conn.execute(sql.SQL("RESET ROLE"))
    await conn.execute(sql.SQL("REVOKE {} FROM {}").format(owner_id, admin_id))


async def append(conn: psycopg.AsyncConnection[Any], entries: Sequence[Entry]) -> None:
    async with conn.cursor() as cursor:
        await cursor.executemany(
            sql.SQL("INSERT INTO {} (tenant_id, tenant_store_uid, namespace, name, action, message, actor, trace_id) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(ENTRIES),
            [(e.tenant_id, e.tenant_store_uid, e.namespace, e.name, e.action, e.message, e.actor, e.trace_id)
             for e in entries])


async def trail(conn: psycopg.AsyncConnection[Any], tenant_id: str) -> list[Entry]:
    """A tenant's entries, oldest first; empty when the class has no audit trail yet."""
    if not (await (await conn.execute("SELECT to_regclass('tenantstore_audit.entries') IS NOT NULL AS made"))
            .fetchone())["made"]:
        return []
    cursor = await conn.execute(sql.SQL(
        "SELECT at, tenant_id, tenant_store_uid, namespace, name, action, message, actor, trace_id FROM {} "
        "WHERE tenant_id = %s ORDER BY id").format(ENTRIES), (tenant_id,))
    return [Entry(**row) for row in await cursor.fetchall()]


# An entry carried to another class's trail when its tenant moved there (the database sets a row's time).
CARRIED = re.compile(r" \[recorded (?P<at>\S+) in StoreClass (?P<store_class>\S+)\]$")


def carried(entry: Entry, store_class: str) -> Entry:
    """The copy of an entry that follows its tenant to another class: it names when and where it was written."""
    assert entry.at is not None
    return dataclasses.replace(entry, message=f"{entry.message} [recorded {entry.at.isoformat()} in StoreClass "
                                              f"{store_class}]", at=None)


def without_copies(entries: Sequence[Entry]) -> list[Entry]:
    """A trail read from several classes, each entry once: a carried copy goes when its original is there."""
    originals = {(entry.action, entry.message, entry.at.isoformat()) for entry in entries if entry.at is not None}
    kept = []
    for entry in entries:
        copy_of = CARRIED.search(entry.message)
        if copy_of is None or (entry.action, entry.message[:copy_of.start()], copy_of["at"]) not in originals:
            kept.append(entry)
    return kept


async def expire(conn: psycopg.AsyncConnection[Any], keep: datetime.timedelta) -> int:
    row = await (await conn.execute(sql.SQL("SELECT {}.expire(%s) AS gone").format(_SCHEMA), (keep,))).fetchone()
    return int(row["gone"]) if row else 0
