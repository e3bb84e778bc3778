"""A StoreClass's global index on pgvector: one table per (dimension, metric) in the shared database, owned by the
admin, that every tenant of the class may read and only the platform's writer login may change.

Who may do what is held twice, as for a tenant's partition: by grants (a NOLOGIN reader role with SELECT, which
each tenant role is a member of WITH INHERIT TRUE, SET FALSE; a writer login with SELECT, INSERT, UPDATE and
DELETE) and by forced row-level security with a policy per role (the reader's FOR SELECT only). A tenant can
neither write, delete, truncate, lock it beyond ACCESS SHARE, add a policy or trigger (it owns nothing here), nor
become the reader role and pass it on. Every pass compares the table, its policies and its grants with that and
puts back what differs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenantstore.api import Reason
from tenantstore.backends import Drift, GlobalPlacement, Step, bookkeeping
from tenantstore.backends.postgres import (MANAGED_COMMENT, PostgresServer, execute_at_once, fetch_one,
                                           scram_sha256_verifier)
from tenantstore.errors import ObjectReplaced, ReconcileError
from tenantstore.models import DesiredStore, GlobalIndex

GLOBAL_SCHEMA = "tenantstore_vectors"  # the shared indexes' schema: tenants may not create anything there
GLOBAL_TABLE_PREFIX = "global_"  # only the admin creates tables in that schema
WRITER_CONNECTION_LIMIT = 20
WRITER_PRIVILEGES = ("DELETE", "INSERT", "SELECT", "UPDATE")
# The operator's DDL on the global table waits this long for a tenant's ACCESS SHARE lock, then tries next pass.
DDL_LOCK_TIMEOUT = "2s"


class GlobalIndexDrifted(ReconcileError):
    reason = "GlobalIndexDrifted"
    retry_after = None


def global_table_name(index: GlobalIndex) -> str:
    return f"{GLOBAL_TABLE_PREFIX}{index.dimension}_{index.metric.value}_{index.key}"


def placement_of(index: GlobalIndex, database: str) -> GlobalPlacement:
    return GlobalPlacement(backend="pgvector", name=index.store_name, database=database,
                           table=f"{GLOBAL_SCHEMA}.{global_table_name(index)}")


async def ensure(server: PostgresServer, index: GlobalIndex, password: str, password_is_new: bool,
                 create_table: Any, repair: bool = True) -> tuple[GlobalPlacement, list[Step]]:
    """Make the global table, its reader role and writer login as described above; repair what differs (only
    report it, `repair` False: GlobalIndexDrifted). `create_table(conn, qualified, index)` makes the table with
    the class's vector type and ANN index."""
    table = global_table_name(index)
    qualified = sql.Identifier(GLOBAL_SCHEMA, table)
    reader, writer = sql.Identifier(index.reader_role), sql.Identifier(index.writer_role)
    steps: list[Step] = []
    async with server.connect() as conn, conn.transaction():
        # The operator's own lock row, not an advisory key: every reader of the index knows its table's name, and
        # any role that can connect may hold any advisory key for as long as it likes.
        await bookkeeping.hold_lock(conn, f"global:{table}")
        await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(DDL_LOCK_TIMEOUT)))
        roles = {row["rolname"]: row for row in await (await conn.execute(
            "SELECT rolname, rolcanlogin, rolinherit, shobj_description(oid, 'pg_authid') AS comment "
            "FROM pg_roles WHERE rolname = ANY(%s)", ([index.reader_role, index.writer_role],))).fetchall()}
        for name, role_row in roles.items():
            if role_row["comment"] != MANAGED_COMMENT:
                raise ObjectReplaced(f"Postgres role {name} exists and was not made by tenantstore; the global "
                                     f"index {index.store_name} will not use it")
        statements: list[sql.Composable] = []
        if index.reader_role not in roles:
            statements += [sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(reader),
                           sql.SQL("COMMENT ON ROLE {} IS {}").format(reader, sql.Literal(MANAGED_COMMENT))]
        verifier = sql.Literal(scram_sha256_verifier(password))
        if index.writer_role not in roles:
            statements += [sql.SQL("CREATE ROLE {} LOGIN NOINHERIT CONNECTION LIMIT {} PASSWORD {}").format(
                               writer, sql.Literal(WRITER_CONNECTION_LIMIT), verifier),
                           sql.SQL("COMMENT ON ROLE {} IS {}").format(writer, sql.Literal(MANAGED_COMMENT))]
            steps.append(Step("GlobalWriterCreated", f"login {index.writer_role} may write the global index "
                                                     f"{index.store_name} (Secret {index.writer_secret})"))
        elif password_is_new or not roles[index.writer_role]["rolcanlogin"] or \
                not await _logs_in(server, index.writer_role, password):
            statements.append(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(writer, verifier))
            steps.append(Step("GlobalWriterPasswordReset", f"login {index.writer_role}'s password set to the one "
                                                           f"Secret {index.writer_secret} holds"))
        if statements:
            await execute_at_once(conn, statements)
        kind = await _table_kind(conn, table)
        if kind == "foreign":
            raise ObjectReplaced(f"{GLOBAL_SCHEMA}.{table} is not the global table the operator made; the operator "
                                 f"will not use it")
        if kind is None:
            await create_table(conn, qualified, index)
            steps.append(Step("GlobalIndexCreated", f"global index {index.store_name} created as "
                                                    f"{GLOBAL_SCHEMA}.{table}"))
        repairs = await _access_repairs(conn, server.shared_database, index, table)
        if repairs and kind is not None and not repair:  # driftPolicy Report: said, not changed
            raise GlobalIndexDrifted(f"global index {index.store_name}: its grants, policies or row security are "
                                     f"not as made ({len(repairs)} statements would put them back; driftPolicy "
                                     f"is Report)")
        if repairs:
            await execute_at_once(conn, repairs)
            if kind is not None:
                steps.append(Step("GlobalIndexRepaired", f"global index {index.store_name}: its grants and policies "
                                                         f"were put back as made ({len(repairs)} statements)"))
    return placement_of(index, server.shared_database), steps


async def _logs_in(server: PostgresServer, role: str, password: str) -> bool:
    """Whether the writer Secret's password still opens the login (someone may have changed it by hand). A login
    refused for another reason (its connections all in use, say) is no reason to change the password."""
    try:
        conn = await psycopg.AsyncConnection.connect(make_conninfo(
            server.conninfo(server.shared_database), user=role, password=password))
    except psycopg.OperationalError as error:
        return not (error.sqlstate == "28P01" or "password authentication failed" in str(error))
    await conn.close()
    return True


async def _table_kind(conn: psycopg.AsyncConnection[Any], table: str) -> str | None:
    row = await fetch_one(conn, """
        SELECT c.relkind = 'r' AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AS ours
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s""", GLOBAL_SCHEMA, table)
    return None if row is None else ("ours" if row["ours"] else "foreign")


async def _access_repairs(conn: psycopg.AsyncConnection[Any], database: str, index: GlobalIndex,
                          table: str) -> list[sql.Composable]:
    """The statements that make the table's row security, policies and grants exactly as made (none if they are)."""
    row = await (await conn.execute("""
        SELECT c.relrowsecurity AND c.relforcerowsecurity AS forced,
               ARRAY(SELECT p.polname || ':' || p.polcmd::text || ':' || array_to_string(ARRAY(
                              SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END
                                FROM unnest(p.polroles) AS r ORDER BY 1), ',')
                       || ':' || coalesce(pg_get_expr(p.polqual, p.polrelid), '')
                       || ':' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
                       FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY 1) AS policies,
               ARRAY(SELECT (CASE WHEN a.grantee = 0 THEN 'public' ELSE a.grantee::regrole::text END)
                              || ':' || a.privilege_type
                       FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                      WHERE a.grantee <> c.relowner ORDER BY 1) AS grants,
               has_schema_privilege(%(reader)s, %(schema)s, 'USAGE') AS reader_usage,
               has_schema_privilege(%(writer)s, %(schema)s, 'USAGE') AS writer_usage,
               has_database_privilege(%(reader)s, %(database)s, 'CONNECT') AS reader_connect,
               has_database_privilege(%(writer)s, %(database)s, 'CONNECT') AS writer_connect,
               current_user::regrole::text AS admin
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND c.relname = %(table)s""",
        {"reader": index.reader_role, "writer": index.writer_role, "schema": GLOBAL_SCHEMA, "table": table,
         "database": database})).fetchone()
    assert row is not None  # made or found above, in the same transaction
    qualified = sql.Identifier(GLOBAL_SCHEMA, table)
    reader, writer = sql.Identifier(index.reader_role), sql.Identifier(index.writer_role)
    wanted_policies = {
        f"tenantstore_operator:*:{row['admin']}:true:true",
        f"{index.reader_role}:r:{index.reader_role}:true:",
        f"{index.writer_role}:*:{index.writer_role}:true:true",
    }
    statements: list[sql.Composable] = []
    if not row["forced"]:
        statements.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY").format(
            qualified))
    policies = set(row["policies"])
    for policy in sorted(policies - wanted_policies):
        statements.append(sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(policy.split(":", 1)[0]), qualified))
    made = {policy.split(":", 1)[0] for policy in policies & wanted_policies}
    if "tenantstore_operator" not in made:
        statements.append(sql.SQL("CREATE POLICY tenantstore_operator ON {} FOR ALL TO CURRENT_USER USING (true) "
                                  "WITH CHECK (true)").format(qualified))
    if index.reader_role not in made:
        statements.append(sql.SQL("CREATE POLICY {} ON {} FOR SELECT TO {} USING (true)").format(
            reader, qualified, reader))
    if index.writer_role not in made:
        statements.append(sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING (true) WITH CHECK (true)").format(
            writer, qualified, writer))
    wanted_grants = {f"{index.reader_role}:SELECT", *(f"{index.writer_role}:{p}" for p in WRITER_PRIVILEGES)}
    grants = set(row["grants"])
    # Anyone holding more than made loses all of it; the reader and the writer then get theirs back.
    revoked = sorted({grant.rsplit(":", 1)[0] for grant in grants - wanted_grants})
    for grantee in revoked:
        statements.append(sql.SQL("REVOKE ALL ON {} FROM {}").format(
            qualified, sql.SQL("PUBLIC") if grantee == "public" else sql.Identifier(grantee.strip('"'))))
    if index.reader_role in revoked or f"{index.reader_role}:SELECT" not in grants:
        statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(qualified, reader))
    if index.writer_role in revoked or not all(f"{index.writer_role}:{p}" in grants for p in WRITER_PRIVILEGES):
        statements.append(sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in WRITER_PRIVILEGES), qualified, writer))
    for role, usage, connect in ((reader, row["reader_usage"], row["reader_connect"]),
                                 (writer, row["writer_usage"], row["writer_connect"])):
        if not usage:
            statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(GLOBAL_SCHEMA), role))
        if not connect:
            statements.append(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role))
    return statements


def members_of(store: DesiredStore) -> list[str]:
    """The tenant's roles that read the global index: its own, and its readOnly credentials' role."""
    return [store.role, *([store.reader_role] if store.has_readers else [])]


MEMBERS = """
    SELECT member.rolname FROM pg_auth_members m
      JOIN pg_roles member ON member.oid = m.member
     WHERE m.roleid = to_regrole(%s) AND member.rolname = ANY(%s)
       AND m.inherit_option AND NOT m.set_option AND NOT m.admin_option"""


async def verify(server: PostgresServer, index: GlobalIndex, stores: Sequence[DesiredStore]
                 ) -> dict[str, list[Drift]]:
    roles = [role for store in stores for role in members_of(store)]
    async with server.connect() as conn:
        present = {row["rolname"] for row in await (await conn.execute(MEMBERS, (index.reader_role, roles))).fetchall()}
    found: dict[str, list[Drift]] = {}
    for store in stores:
        if missing := [role for role in members_of(store) if role not in present]:
            found[store.tenant_id] = [Drift(Reason.GRANT_MISSING, f"{', '.join(missing)} can no longer read the "
                                                                   f"global index {index.store_name}")]
    return found


async def grant(server: PostgresServer, store: DesiredStore, index: GlobalIndex
                ) -> tuple[GlobalPlacement | None, list[Step]]:
    """Make the tenant's role (and its readOnly role) members of the global reader role: they read, nothing more.
    None until the class has made the index (and its reader role)."""
    members = members_of(store)
    async with server.connect() as conn:
        if await _table_kind(conn, global_table_name(index)) != "ours" or not await fetch_one(
                conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", index.reader_role):
            return None, []
        cursor = await conn.execute(MEMBERS, (index.reader_role, members))
        present = {row["rolname"] for row in await cursor.fetchall()}
        missing = [member for member in members if member not in present]
        placement = placement_of(index, server.shared_database)
        if not missing:
            return placement, []
        await execute_at_once(conn, [
            sql.SQL("GRANT {} TO {} WITH INHERIT TRUE, SET FALSE, ADMIN FALSE").format(
                sql.Identifier(index.reader_role), sql.Identifier(member)) for member in missing])
    return placement, [Step("GlobalReadGranted", f"{', '.join(missing)} may read, and only read, the global index "
                                                 f"{index.store_name}")]
