"""RelationalStore on Postgres (psycopg 3, async): a role per tenant with a schema or a database it owns.

The operator logs in as the StoreClass's admin role (CREATEROLE, CREATEDB, not a superuser). Each tenant
role it creates is granted to the admin role, which is what lets a non-superuser end the tenant's
sessions and drop what the tenant owns. The role's COMMENT records which TenantStore claimed it: that
claim is atomic (CREATE ROLE either happens or fails), so two TenantStores never share a tenant.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from tenantstore.backends import RelationalPlacement, RelationalUsage, Step
from tenantstore.errors import BackendUnavailable, TenantIdConflict
from tenantstore.models import DesiredStore, RelationalIsolation

CONNECT_TIMEOUT_SECONDS = 5
# The operator's own dedicated vector table lives in the tenant's schema and stays the admin's.
OPERATOR_VECTOR_TABLE = "vectors"
# The operator's own bookkeeping in the shared database (the admin role owns it).
OPERATOR_SCHEMA = "tenantstore"
BASELINE_TABLE_NAME = "daily_query_baseline"
BASELINE_TABLE = sql.Identifier(OPERATOR_SCHEMA, BASELINE_TABLE_NAME)
RELATION_KEYWORDS = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE",
                     "f": "FOREIGN TABLE"}
# DROP OWNED rewrites the ACLs of shared objects the role was granted (the shared vector tables and their
# schema); two at once fail with "tuple concurrently updated", so teardowns take this lock for it.
SHARED_ACL_LOCK = "tenantstore:shared-acl"


def scram_sha256_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM verifier Postgres stores, computed here so the plain password never reaches the server's logs."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


class PostgresServer:
    """Connections to one Postgres, as the admin role a StoreClass names.

    The shared database gets a small pool; a tenant's own database gets a short-lived connection, because
    there may be thousands of them and each is touched only when that tenant changes.
    """

    def __init__(self, admin_uri: str, shared_database: str):
        self.admin_uri = admin_uri
        self.shared_database = shared_database
        params = conninfo_to_dict(admin_uri)
        self.admin_role = str(params.get("user") or "")
        self.host = str(params.get("host") or "localhost")
        self.port = int(params.get("port") or 5432)
        self._pool = psycopg_pool.AsyncConnectionPool(
            self.conninfo(shared_database), min_size=1, max_size=4, open=False, timeout=CONNECT_TIMEOUT_SECONDS * 2,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "row_factory": dict_row},
        )
        self._opened = False

    def conninfo(self, database: str) -> str:
        return make_conninfo(self.admin_uri, dbname=database, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                             application_name="tenantstore-operator")

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def connect(self, database: str | None = None) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """An autocommit connection (CREATE DATABASE needs one); use `conn.transaction()` for atomic steps."""
        database = database or self.shared_database
        try:
            if database == self.shared_database:
                if not self._opened:
                    await self._pool.open(wait=False)
                    self._opened = True
                async with self._pool.connection() as conn:
                    yield conn
            else:
                async with await psycopg.AsyncConnection.connect(
                        self.conninfo(database), autocommit=True, row_factory=dict_row) as conn:
                    yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
            raise BackendUnavailable(f"Postgres at {self.host}:{self.port} is unreachable: {first_line(error)}") from error
        except psycopg.errors.InternalError_ as error:
            # Two catalog updates of one row at once (e.g. grants on a shared table): transient, retry soon.
            if "tuple concurrently updated" not in str(error):
                raise
            raise BackendUnavailable(f"Postgres at {self.host}:{self.port}: concurrent catalog update, "
                                     f"retrying: {first_line(error)}", retry_after=1.0) from error


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


async def execute_at_once(conn: psycopg.AsyncConnection[Any], statements: Sequence[sql.Composable]) -> None:
    """Several statements in one round trip, all or nothing (one implicit transaction outside a transaction block).

    For statements that take a lock other tenants' provisioning waits for (creating a role locks role
    memberships until commit): held for the server's own time, not for round trips to a busy operator.
    """
    await conn.execute(sql.SQL(";\n").join(statements))


async def fetch_one(conn: psycopg.AsyncConnection[Any], query: sql.Composable | str, *params: Any) -> dict[str, Any] | None:
    cursor = await conn.execute(query, params or None)
    return await cursor.fetchone()


def role_claim(store: DesiredStore, claimed: bool) -> str:
    owner = {"owner": store.uid, "ownerName": store.owner} if claimed else {"owner": None}
    return json.dumps({"managedBy": "tenantstore", "tenantId": store.tenant_id, **owner}, sort_keys=True)


def parse_claim(comment: str | None) -> dict[str, Any] | None:
    try:
        claim = json.loads(comment or "")
    except ValueError:
        return None
    return claim if isinstance(claim, dict) and claim.get("managedBy") == "tenantstore" else None


class PostgresRelationalStore:
    def __init__(self, server: PostgresServer):
        self.server = server

    async def preflight(self) -> list[Step]:
        async with self.server.connect() as conn:
            row = await fetch_one(conn, """
                SELECT current_user AS admin, rolsuper, rolcreaterole, rolcreatedb,
                       has_database_privilege(current_database(), 'CREATE') AS can_create_schemas
                  FROM pg_roles WHERE rolname = current_user""")
        problems = []
        if row["rolsuper"]:
            problems.append(Step("AdminRoleIsSuperuser", f"admin role {row['admin']} is a superuser; give the "
                                                         f"operator a role with only CREATEROLE and CREATEDB"))
        if not (row["rolcreaterole"] and row["rolcreatedb"]):
            problems.append(Step("AdminRoleLacksPrivileges", f"admin role {row['admin']} needs CREATEROLE and CREATEDB"))
        if not row["can_create_schemas"]:
            problems.append(Step("AdminRoleLacksPrivileges", f"admin role {row['admin']} cannot create schemas in "
                                                             f"database {self.server.shared_database}"))
        return problems

    async def owner_of(self, store: DesiredStore) -> str | None:
        async with self.server.connect() as conn:
            role = await self._inspect_role(conn, store.role)
        if role is None:
            return None
        claim = parse_claim(role["claim"])
        return claim.get("owner") if claim else "(not managed by tenantstore)"

    async def ensure(self, store: DesiredStore, password: str, password_is_new: bool
                     ) -> tuple[RelationalPlacement, list[Step]]:
        steps: list[Step] = []
        async with self.server.connect() as conn:
            steps += await self._ensure_role(conn, store, password, password_is_new)
            if store.relational is RelationalIsolation.SCHEMA:
                steps += await self._ensure_schema(conn, store)
            else:
                steps += await self._ensure_database(conn, store)
        steps += await self.ensure_write_access(store)
        placement = RelationalPlacement(host=self.server.host, port=self.server.port, database=store.database,
                                        schema=store.schema, role=store.role)
        return placement, steps

    async def _inspect_role(self, conn: psycopg.AsyncConnection[Any], role: str) -> dict[str, Any] | None:
        return await fetch_one(conn, """
            SELECT r.rolcanlogin AS can_login, r.rolconnlimit AS connection_limit,
                   shobj_description(r.oid, 'pg_authid') AS claim,
                   pg_has_role(current_user, r.oid, 'USAGE') AS admin_has_privileges
              FROM pg_roles r WHERE r.rolname = %s""", role)

    async def _ensure_role(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore, password: str,
                           password_is_new: bool) -> list[Step]:
        role = sql.Identifier(store.role)
        existing = await self._inspect_role(conn, store.role)
        if existing is None:
            try:
                await execute_at_once(conn, [
                    sql.SQL("CREATE ROLE {} {} CONNECTION LIMIT {} PASSWORD {}").format(
                        role, sql.SQL("NOLOGIN" if store.suspended else "LOGIN"),
                        sql.Literal(store.connection_limit), sql.Literal(scram_sha256_verifier(password))),
                    sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(role_claim(store, claimed=True))),
                    # Membership (with inherit) lets the admin act as the tenant's owner: terminate, drop, grant.
                    sql.SQL("GRANT {} TO CURRENT_USER").format(role)])
                return [Step("RoleCreated", f"Postgres role {store.role} created (connection limit "
                                            f"{store.connection_limit})")]
            except psycopg.errors.DuplicateObject:
                existing = await self._inspect_role(conn, store.role)  # lost a race: judge the winner's claim
                if existing is None:
                    raise
        claim = parse_claim(existing["claim"])
        if claim is None:
            raise TenantIdConflict(f"Postgres role {store.role} exists and was not made by tenantstore")
        steps: list[Step] = []
        if claim.get("owner") != store.uid:
            if claim.get("owner") is not None:
                raise TenantIdConflict(f"tenantId {store.tenant_id} is already claimed by TenantStore "
                                       f"{claim.get('ownerName') or claim['owner']}")
            await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(role_claim(store, claimed=True))))
            steps.append(Step("RoleAdopted", f"retained Postgres role {store.role} adopted by this TenantStore"))
        if not existing["admin_has_privileges"]:
            await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
        if existing["connection_limit"] != store.connection_limit:
            await conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(role, sql.Literal(store.connection_limit)))
            steps.append(Step("ConnectionLimitChanged", f"role {store.role} connection limit set to {store.connection_limit}"))
        if existing["can_login"] == store.suspended:
            await conn.execute(sql.SQL("ALTER ROLE {} {}").format(role, sql.SQL("NOLOGIN" if store.suspended else "LOGIN")))
            if store.suspended:
                await self._terminate_sessions(conn, store.role)
            steps.append(Step("LoginChanged", f"role {store.role} can {'no longer' if store.suspended else 'again'} log in"))
        if password_is_new:
            await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(scram_sha256_verifier(password))))
            steps.append(Step("PasswordReset", f"role {store.role} got a new password (its Secret was missing)"))
        return steps

    async def _ensure_schema(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> list[Step]:
        row = await fetch_one(conn, "SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = %s",
                              store.schema)
        if row is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(store.schema), sql.Identifier(store.role)))
            return [Step("SchemaCreated", f"schema {store.schema} in database {store.database} created, owned by {store.role}")]
        if row["owner"] not in (store.role, self.server.admin_role):  # the admin holds it while writes are blocked
            raise TenantIdConflict(f"schema {store.schema} exists and belongs to role {row['owner']}")
        return []

    async def _ensure_database(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> list[Step]:
        steps: list[Step] = []
        query = """
            SELECT pg_get_userbyid(datdba) AS owner,
                   EXISTS (SELECT 1 FROM aclexplode(COALESCE(datacl, acldefault('d', datdba))) WHERE grantee = 0)
                     AS public_can_connect
              FROM pg_database WHERE datname = %s"""
        row = await fetch_one(conn, query, store.database)
        if row is None:
            await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(store.database), sql.Identifier(store.role)))
            steps.append(Step("DatabaseCreated", f"database {store.database} created, owned by {store.role}"))
            row = await fetch_one(conn, query, store.database)
        if row["owner"] not in (store.role, self.server.admin_role):
            raise TenantIdConflict(f"database {store.database} exists and belongs to role {row['owner']}")
        if row["public_can_connect"]:
            # Only the tenant (and, through it, the operator) may connect to a tenant's database.
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(store.database)))
        return steps

    # --- write access (quota Block) ---
    #
    # The tenant owns its schema or database, and Postgres cannot refuse an owner's writes. So while writes
    # are blocked the admin role takes ownership of the tenant's schemas and relations and grants the tenant
    # USAGE, SELECT, DELETE and TRUNCATE: reads and clean-up work, INSERT, UPDATE and DDL are refused.
    # Unblocking hands everything back.

    async def ensure_write_access(self, store: DesiredStore) -> list[Step]:
        async with self.server.connect(store.database) as conn:
            if store.relational is RelationalIsolation.SCHEMA:
                row = await fetch_one(conn, "SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace "
                                            "WHERE nspname = %s", store.schema)
            else:
                row = await fetch_one(conn, "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database "
                                            "WHERE datname = current_database()")
            blocked = row is not None and row["owner"] != store.role
            if row is None or blocked == (not store.writes_allowed):
                return []
            async with conn.transaction():
                if store.writes_allowed:
                    await self._hand_back(conn, store)
                    return [Step("WritesRestored", f"{store.role} owns its {store.relational.value} again")]
                await self._take_over(conn, store)
                return [Step("WritesBlocked", f"{store.role} can read and delete but not write its "
                                              f"{store.relational.value} until it is under quota")]

    async def _take_over(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> None:
        role = sql.Identifier(store.role)
        if store.relational is RelationalIsolation.DATABASE:
            await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(store.database)))
            await conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(store.database), role))
        schemas = await self._tenant_schemas(conn, store, owner=store.role)
        for schema in schemas:
            await conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO CURRENT_USER").format(sql.Identifier(schema)))
        await self._reassign_relations(conn, schemas, from_role=store.role, to_role=self.server.admin_role, store=store)
        for schema in schemas:
            await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
            await conn.execute(sql.SQL("GRANT SELECT, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))
            await conn.execute(sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))

    async def _hand_back(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> None:
        if store.relational is RelationalIsolation.DATABASE:
            await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(store.database), sql.Identifier(store.role)))
        schemas = await self._tenant_schemas(conn, store, owner=self.server.admin_role)
        for schema in schemas:
            await conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                sql.Identifier(schema), sql.Identifier(store.role)))
        await self._reassign_relations(conn, schemas, from_role=self.server.admin_role, to_role=store.role, store=store)

    async def _tenant_schemas(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore, owner: str) -> list[str]:
        if store.relational is RelationalIsolation.SCHEMA:
            return [store.schema]
        # In its own database the tenant may have made schemas of its own; public belongs to the database owner.
        cursor = await conn.execute("""
            SELECT nspname FROM pg_namespace
             WHERE (pg_get_userbyid(nspowner) = %s OR nspname = 'public')
               AND NOT starts_with(nspname, 'pg_') AND nspname <> 'information_schema' ORDER BY nspname""", (owner,))
        return [row["nspname"] for row in await cursor.fetchall()]

    async def _reassign_relations(self, conn: psycopg.AsyncConnection[Any], schemas: list[str], from_role: str,
                                  to_role: str, store: DesiredStore) -> None:
        # Tables first: their ownership carries the sequences their columns own.
        for kinds in (("r", "p"), ("v", "m", "S", "f")):
            cursor = await conn.execute("""
                SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = ANY(%s) AND pg_get_userbyid(c.relowner) = %s AND c.relkind = ANY(%s)
                   AND NOT (n.nspname = %s AND c.relname = %s)
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')
                                   AND d.classid = 'pg_class'::regclass AND c.relkind = 'S')""",
                (schemas, from_role, list(kinds), store.schema, OPERATOR_VECTOR_TABLE))
            for row in await cursor.fetchall():
                await conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
                    sql.SQL(RELATION_KEYWORDS[row["relkind"]]), sql.Identifier(row["nspname"], row["relname"]),
                    sql.Identifier(to_role)))

    async def _terminate_sessions(self, conn: psycopg.AsyncConnection[Any], role: str) -> int:
        # Wait (up to 5 s each) until the sessions are gone, so "Suspended" is true when status says so.
        row = await fetch_one(conn, """
            SELECT count(pg_terminate_backend(pid, 5000)) AS ended FROM pg_stat_activity
             WHERE usename = %s AND pid <> pg_backend_pid()""", role)
        return int(row["ended"]) if row else 0

    async def teardown(self, store: DesiredStore) -> list[Step]:
        steps: list[Step] = []
        role = sql.Identifier(store.role)
        async with self.server.connect() as conn:
            if await self._inspect_role(conn, store.role) is not None:
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                ended = await self._terminate_sessions(conn, store.role)
                steps.append(Step("SessionsTerminated", f"role {store.role} can no longer log in; {ended} session(s) ended"))
            if store.relational is RelationalIsolation.SCHEMA:
                if await fetch_one(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", store.schema):
                    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store.schema)))
                    steps.append(Step("SchemaDropped", f"schema {store.schema} dropped from database {store.database}"))
            elif await fetch_one(conn, "SELECT 1 FROM pg_database WHERE datname = %s", store.database):
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(store.database)))
                steps.append(Step("DatabaseDropped", f"database {store.database} dropped"))
            if await self._inspect_role(conn, store.role) is not None:
                # Grants and policies the role still holds in the shared database go with it.
                await execute_at_once(conn, [
                    sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))").format(sql.Literal(SHARED_ACL_LOCK)),
                    sql.SQL("DROP OWNED BY {}").format(role), sql.SQL("DROP ROLE IF EXISTS {}").format(role)])
                steps.append(Step("RoleDropped", f"Postgres role {store.role} dropped"))
        return steps

    async def release(self, store: DesiredStore) -> list[Step]:
        async with self.server.connect() as conn:
            if await self._inspect_role(conn, store.role) is None:
                return []
            await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                sql.Identifier(store.role), sql.Literal(role_claim(store, claimed=False))))
        where = (f"schema {store.schema} in database {store.database}" if store.relational is RelationalIsolation.SCHEMA
                 else f"database {store.database}")
        return [Step("Retained", f"kept Postgres role {store.role} and {where}; a new TenantStore with "
                                 f"tenantId {store.tenant_id} adopts them")]

    async def measure(self, stores: Sequence[DesiredStore]) -> dict[str, RelationalUsage]:
        roles = [store.role for store in stores]
        schemas = {store.schema: store for store in stores if store.relational is RelationalIsolation.SCHEMA}
        databases = {store.database: store for store in stores if store.relational is RelationalIsolation.DATABASE}
        async with self.server.connect() as conn:
            connections = await self._rows_by(conn, "SELECT usename AS key, count(*) AS value FROM pg_stat_activity "
                                                    "WHERE usename = ANY(%s) GROUP BY usename", roles)
            schema_bytes = await self._rows_by(conn, """
                SELECT n.nspname AS key, sum(pg_total_relation_size(c.oid)) AS value
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'm') GROUP BY n.nspname""", list(schemas))
            database_bytes = await self._rows_by(conn, "SELECT datname AS key, pg_database_size(datname) AS value "
                                                       "FROM pg_database WHERE datname = ANY(%s)", list(databases))
            queries = await self._daily_queries(conn, roles)
        return {store.tenant_id: RelationalUsage(
            storage_bytes=int(schema_bytes.get(store.schema, 0) if store.relational is RelationalIsolation.SCHEMA
                              else database_bytes.get(store.database, 0)),
            connections=int(connections.get(store.role, 0)),
            daily_queries=None if queries is None else int(queries.get(store.role, 0)),
        ) for store in stores}

    @staticmethod
    async def _rows_by(conn: psycopg.AsyncConnection[Any], query: str, keys: list[str]) -> dict[str, Any]:
        if not keys:
            return {}
        cursor = await conn.execute(query, (keys,))
        return {row["key"]: row["value"] for row in await cursor.fetchall()}

    async def _daily_queries(self, conn: psycopg.AsyncConnection[Any], roles: list[str]) -> dict[str, int] | None:
        """Statements per role since the first measurement of the current UTC day (needs pg_stat_statements)."""
        if not roles or not (await fetch_one(conn, "SELECT to_regclass('pg_stat_statements') IS NOT NULL AS present"))["present"]:
            return None
        await self._ensure_baseline_table(conn)
        async with conn.transaction():
            cursor = await conn.execute(sql.SQL("""
                WITH totals AS (
                    SELECT r.rolname AS role, coalesce(sum(s.calls), 0)::bigint AS calls
                      FROM pg_roles r LEFT JOIN pg_stat_statements s ON s.userid = r.oid
                     WHERE r.rolname = ANY(%s) GROUP BY r.rolname),
                today AS (SELECT (now() AT TIME ZONE 'UTC')::date AS day),
                rebased AS (
                    INSERT INTO {baseline} AS old (role, day, calls)
                    SELECT t.role, today.day, t.calls FROM totals t, today
                    ON CONFLICT (role) DO UPDATE SET day = EXCLUDED.day, calls = EXCLUDED.calls
                     WHERE old.day <> EXCLUDED.day OR old.calls > EXCLUDED.calls
                    RETURNING role, calls)
                SELECT t.role AS key, t.calls - coalesce(r.calls, kept.calls) AS value
                  FROM totals t LEFT JOIN rebased r ON r.role = t.role
                  LEFT JOIN {baseline} kept ON kept.role = t.role""").format(baseline=BASELINE_TABLE), (roles,))
            return {row["key"]: max(int(row["value"] or 0), 0) for row in await cursor.fetchall()}

    async def _ensure_baseline_table(self, conn: psycopg.AsyncConnection[Any]) -> None:
        present = await fetch_one(conn, "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL AS present",
                                  OPERATOR_SCHEMA, BASELINE_TABLE_NAME)
        if present["present"]:
            return
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(OPERATOR_SCHEMA)))
        await conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (role name PRIMARY KEY, day date NOT NULL, "
                                   "calls bigint NOT NULL)").format(BASELINE_TABLE))

    async def residue(self, store: DesiredStore) -> list[str]:
        left: list[str] = []
        async with self.server.connect() as conn:
            if await fetch_one(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", store.role):
                left.append(f"role {store.role}")
            if store.relational is RelationalIsolation.SCHEMA:
                if await fetch_one(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", store.schema):
                    left.append(f"schema {store.schema}")
            elif await fetch_one(conn, "SELECT 1 FROM pg_database WHERE datname = %s", store.database):
                left.append(f"database {store.database}")
        return left
