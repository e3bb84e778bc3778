"""Scoped credentials in Postgres: two login roles per credential that act as the tenant's role (readWrite) or
as the tenant's reader role (readOnly), and nothing else. The two take turns, so that a rotation never breaks a
client: the login not in use gets a new password and the Secret moves to it, while the other stays open for the
rotation's overlap, then closes and its sessions end.

Each login is a member of the role it acts as WITH INHERIT FALSE, SET TRUE, and its sessions start as that role
(`ALTER ROLE ... SET role`): objects a readWrite login creates belong to the tenant's role, like the owner's, and
row-level security sees the tenant's role. A login that leaves that role (`SET ROLE NONE`) has no privileges at all.
The reader role (NOLOGIN) holds USAGE and SELECT on the tenant's schemas, tables and sequences, those the tenant
makes later included (default privileges), and a SELECT-only row-level security policy on its vectors.

The admin's sessions here read catalogs and run GRANTs; no statement reads through or runs a tenant's object.
"""
from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from tenantstore.api import Reason
from tenantstore.backends import Drift, Step, bookkeeping
from tenantstore.errors import TenantIdConflict
from tenantstore.models import Access, CredentialRole, DesiredStore, RelationalIsolation

# A login's own settings: where its sessions start, and (readOnly) a read-only default as a second fence.
READ_ONLY_SETTINGS = ("default_transaction_read_only=on",)
# What follows a tenant's prefix in its logins' names: a credential's name, then its turn.
LOGIN_SUFFIX = re.compile(r"^[a-z][a-z0-9]{0,12}_[ab]$")


def credential_prefix(store: DesiredStore) -> str:
    return f"tscred_{store.tenant_id.replace('-', '_')}_"


async def existing_logins(conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> dict[str, dict[str, Any]]:
    """The tenant's credential logins in Postgres, and its reader role, by role name, with what the admin must
    compare."""
    prefix = credential_prefix(store)
    cursor = await conn.execute("""
        SELECT r.rolname AS role, r.rolcanlogin AS can_login, r.rolconnlimit AS connection_limit,
               shobj_description(r.oid, 'pg_authid') AS comment, coalesce(r.rolconfig, '{}') AS settings,
               EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = %s
                          AND has_database_privilege(r.oid, d.oid, 'CONNECT')) AS can_connect,
               -- Each membership; '*' marks one with other options than SET alone (never the operator's).
               ARRAY(SELECT g.rolname || CASE WHEN m.set_option AND NOT m.inherit_option AND NOT m.admin_option
                                              THEN '' ELSE '*' END
                       FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                      WHERE m.member = r.oid ORDER BY 1) AS acts_as
          FROM pg_roles r WHERE starts_with(r.rolname, %s) OR r.rolname = %s""",
        (store.database, prefix, store.reader_role))
    # tscred_a_ also begins tenant a-b's logins (tscred_a_b_<name>_a): only "<name>_<turn>" follows ours.
    return {row["role"]: row for row in await cursor.fetchall()
            if row["role"] == store.reader_role or LOGIN_SUFFIX.match(row["role"][len(prefix):])}


def target_of(store: DesiredStore, credential: CredentialRole) -> str:
    return store.role if credential.access is Access.READ_WRITE else store.reader_role


def wanted_settings(store: DesiredStore, credential: CredentialRole) -> list[str]:
    return sorted([f"role={target_of(store, credential)}",
                   *(READ_ONLY_SETTINGS if credential.access is Access.READ_ONLY else ())])


def login_statements(store: DesiredStore, credential: CredentialRole, name: str, open_: bool, verifier: str | None,
                     existing: dict[str, Any] | None, managed_comment: str) -> list[sql.Composable]:
    """What makes the login `name` as wanted, open (may log in) or not; empty when it already is (the password
    aside, which only the caller knows)."""
    role, target = sql.Identifier(name), sql.Identifier(target_of(store, credential))
    can_login = open_ and not store.suspended
    login = sql.SQL("LOGIN" if can_login else "NOLOGIN")
    limit = sql.Literal(credential.connection_limit)
    statements: list[sql.Composable] = []
    if existing is None:
        statements += [sql.SQL("CREATE ROLE {} {} NOINHERIT CONNECTION LIMIT {} PASSWORD {}").format(
                           role, login, limit, sql.Literal(verifier)),
                       sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(managed_comment)),
                       # So that the admin may end its sessions (as with every tenant role).
                       sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET FALSE").format(role)]
        acts_as: list[str] = []
        settings: list[str] = []
        can_connect = False
    else:
        can_connect = existing["can_connect"]
        if existing["can_login"] != can_login or existing["connection_limit"] != credential.connection_limit:
            statements.append(sql.SQL("ALTER ROLE {} {} CONNECTION LIMIT {}").format(role, login, limit))
        if verifier is not None:
            statements.append(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(verifier)))
        acts_as, settings = list(existing["acts_as"]), sorted(existing["settings"])
    if not can_connect:  # checked for the login itself, before its session becomes the role it acts as
        statements.append(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(store.database), role))
    if acts_as != [target_of(store, credential)]:
        statements += [sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(other.rstrip("*")), role)
                       for other in acts_as]
        statements.append(sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(target, role))
    if settings != wanted_settings(store, credential):
        statements += [sql.SQL("ALTER ROLE {} RESET ALL").format(role),
                       sql.SQL("ALTER ROLE {} SET role = {}").format(role, sql.Literal(target_of(store, credential)))]
        if credential.access is Access.READ_ONLY:
            statements.append(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role))
    return statements


def check_ours(role: str, existing: dict[str, Any], is_managed: Any) -> None:
    if not is_managed(existing["comment"]):
        raise TenantIdConflict(f"Postgres role {role} exists and was not made by tenantstore")


def drop_login_statements(role: str) -> list[sql.Composable]:
    """A login owns nothing; its only grant is CONNECT on a database, a shared object that DROP OWNED revokes
    from any database (its sessions are ended first)."""
    return [*bookkeeping.lock_statements(bookkeeping.SHARED_ACL_LOCK),
            sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)),
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role))]


# --- the reader role's grants, in the database that holds the tenant's tables ---

async def reader_grants(conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> list[sql.Composable]:
    """GRANTs the reader lacks on the tenant's schemas, tables and sequences, and its default privileges."""
    reader, owner = sql.Identifier(store.reader_role), sql.Identifier(store.role)
    owners = [store.role, store.holding_role]
    # Schema isolation: the tenant's one schema. Database isolation: every schema its role (or holder) owns.
    cursor = await conn.execute("""
        SELECT n.nspname AS schema, has_schema_privilege(%(reader)s, n.oid, 'USAGE') AS usage,
               EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                          AND NOT has_table_privilege(%(reader)s, c.oid, 'SELECT')) AS unreadable
          FROM pg_namespace n
         WHERE (n.nspname = %(schema)s OR (%(whole_database)s AND pg_get_userbyid(n.nspowner) = ANY(%(owners)s)))""",
        {"reader": store.reader_role, "schema": store.schema, "owners": owners,
         "whole_database": store.relational is RelationalIsolation.DATABASE})
    statements: list[sql.Composable] = []
    for row in await cursor.fetchall():
        schema = sql.Identifier(row["schema"])
        if not row["usage"]:
            statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, reader))
        if row["unreadable"]:
            statements += [sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, reader),
                           sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, reader)]
    if not await has_default_privileges(conn, store):
        scope = sql.SQL(" IN SCHEMA {}").format(sql.Identifier(store.schema)) \
            if store.relational is RelationalIsolation.SCHEMA else sql.SQL("")
        statements += [sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} GRANT SELECT ON {} TO {}").format(
                           owner, scope, sql.SQL(kind), reader) for kind in ("TABLES", "SEQUENCES")]
        if store.relational is RelationalIsolation.DATABASE:
            statements.append(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT USAGE ON SCHEMAS TO {}")
                              .format(owner, reader))
    return statements


async def has_default_privileges(conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> bool:
    row = await (await conn.execute("""
        SELECT count(*) AS kinds FROM pg_default_acl d, aclexplode(d.defaclacl) a
         WHERE d.defaclrole = to_regrole(%s) AND a.grantee = to_regrole(%s) AND a.privilege_type = 'SELECT'""",
        (store.role, store.reader_role))).fetchone()
    return bool(row) and int(row["kinds"]) >= 2


def drifts(store: DesiredStore, logins: dict[str, dict[str, Any]]) -> list[Drift]:
    """A credential's login gone or changed by hand (what the verification pass reports and repairs). Which of
    the two is open is the reconcile's to judge (it follows the Secret), not a drift."""
    found = []
    for credential in store.credential_roles:
        for name in credential.logins:
            existing = logins.get(name)
            if existing is None:
                found.append(Drift(Reason.CREDENTIAL_MISSING, f"the login {name} of credential {credential.name} "
                                                              f"is gone"))
            elif login_statements(store, credential, name, existing["can_login"], None, existing, ""):
                found.append(Drift(Reason.CREDENTIAL_CHANGED, f"the login {name} of credential {credential.name} "
                                                              f"no longer acts as it should"))
    return found


def removal_step(role: str, ended: int) -> Step:
    return Step("CredentialRemoved", f"login {role} dropped; {ended} session(s) ended")
