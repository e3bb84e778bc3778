"""RelationalStore on Postgres (psycopg 3, async): a role per tenant with a schema or a database it owns.

The operator logs in as the StoreClass's admin role (CREATEROLE, CREATEDB, not a superuser). Each tenant
role it creates is granted to the admin role, which is what lets a non-superuser end the tenant's
sessions and drop what the tenant owns. Which TenantStore claimed a role is recorded in the operator's
bookkeeping, in the same transaction as CREATE ROLE, so two TenantStores never share a tenant.

The admin's sessions trust nothing a tenant can make: their search_path is pinned to pg_catalog (a
tenant that owns a schema, or a whole database's `public`, cannot slip a function or an operator into
a name the operator calls), they never read through a tenant's objects, and they wait for a lock a
tenant holds only for a bounded time.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import hmac
import asyncio
import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from tenantstore import insights
from tenantstore.backends import Drift, IoLogin, LoginPlan, RelationalPlacement, RelationalUsage, Step, bookkeeping
from tenantstore.backends import postgres_credentials as credentials
from tenantstore.errors import BackendUnavailable, ReconcileError, SessionEnded, StoreClassInvalid, TenantIdConflict
from tenantstore.models import CredentialRole, DesiredStore, RelationalIsolation
from tenantstore.redaction import redact

T = TypeVar("T")
CONNECT_TIMEOUT_SECONDS = 5
# How long a change of the tenant's write access waits for a lock on the tenant's tables before it shuts the
# tenant's logins out (despite_tenant_locks).
TENANT_LOCK_PATIENCE = "2s"
# The usage job waits this long for a relation a tenant has locked, then measures the others without it.
MEASURE_LOCK_WAIT = "1s"
# A tenant that has kept a relation of its own locked exclusively for longer than this when the usage job cannot
# size it has its sessions ended and is measured: else one locked table would hide all it stores from its quota.
EXCLUSIVE_LOCK_LIMIT_SECONDS = 300.0
SCHEMA_SIZES = """
    SELECT n.nspname AS key, coalesce(sum(pg_total_relation_size(c.oid)), 0) AS value
      FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
     WHERE n.nspname = ANY(%s) GROUP BY n.nspname"""
# The operator's own dedicated vector table lives in the tenant's schema and stays the admin's.
OPERATOR_VECTOR_TABLE = "vectors"
RELATION_KEYWORDS = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE",
                     "f": "FOREIGN TABLE"}
SHARED_ACL_LOCK = bookkeeping.SHARED_ACL_LOCK
# Every admin session: names resolve in pg_catalog only (pg_temp last, so no temporary table shadows one),
# the session acts as the admin even where a tenant's database sets a default role, and no lock a tenant
# holds on its own objects stalls the operator for more than a few seconds.
ADMIN_SESSION_OPTIONS = "-c search_path=pg_catalog,pg_temp -c role=none -c lock_timeout=10s"
# The server's word that the class's own login is wrong (not that it is down).
REFUSED_LOGIN = re.compile(r'(role|database) "[^"]*" does not exist')
# A database's state, as the operator reads it: `invalid` is one a DROP DATABASE left half done (it can
# only be dropped); `settings_changed`, what its owner may change that locks the operator out.
DATABASE_STATE = """datconnlimit = -2 AS invalid,
                    datconnlimit <> -2 AND (NOT datallowconn OR datconnlimit <> -1 OR datistemplate) AS settings_changed"""
# What claimed_by says of a role no TenantStore holds: another's data either way, never to be torn down.
NOT_MANAGED = "(not managed by tenantstore)"
RETAINED = "(retained)"
# Written on every tenant role: tells the operator's roles from others, and nothing about the owner.
MANAGED_COMMENT = json.dumps({"managedBy": "tenantstore"})


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
        problem = None
        try:
            params = conninfo_to_dict(admin_uri)
            self.port = int(params.get("port") or 5432)
        except psycopg.Error as error:
            problem = redact(first_line(error), [admin_uri])
        except ValueError:  # the "port" may be a piece of a password with a raw '/' in it: never echo it
            problem = "its port is not a number"
        if problem is not None:  # raised outside the handler, so no traceback carries the driver's message
            raise StoreClassInvalid(f"the admin URI cannot be parsed: {problem}")
        self.password = str(params.get("password") or "")
        self.admin_role = str(params.get("user") or "")
        self.host = str(params.get("host") or "localhost")
        self._pool = psycopg_pool.AsyncConnectionPool(
            self.conninfo(shared_database), min_size=1, max_size=4, open=False, timeout=CONNECT_TIMEOUT_SECONDS * 2,
            check=psycopg_pool.AsyncConnectionPool.check_connection, configure=self._logged_in,
            kwargs={"autocommit": True, "row_factory": dict_row},
        )
        self._opened = False
        self._prepared = False
        self._preparing = asyncio.Lock()
        self.login_refused = False
        self._successor: PostgresServer | None = None

    async def _logged_in(self, _: psycopg.AsyncConnection[Any]) -> None:
        self.login_refused = False  # the password the operator holds is accepted (again)

    def conninfo(self, database: str) -> str:
        return make_conninfo(self.admin_uri, dbname=database, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                             application_name="tenantstore-operator", options=ADMIN_SESSION_OPTIONS)

    def scrub(self, text: str) -> str:
        return redact(text, [self.admin_uri, self.password])

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()  # connections in use end when they are given back

    async def retire(self, successor: PostgresServer) -> None:
        """A rotated admin credential: close the pool; work still holding this server goes on through the
        successor (a pass that began before the rotation must not fail halfway for it)."""
        self._successor = successor
        await self.close()

    @contextlib.asynccontextmanager
    async def connect(self, database: str | None = None) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """An autocommit connection (CREATE DATABASE needs one); use `conn.transaction()` for atomic steps."""
        if self._successor is not None:
            async with self._successor.connect(database) as conn:
                yield conn
            return
        database = database or self.shared_database
        unavailable: ReconcileError | None = None
        try:
            if database == self.shared_database:
                if not self._opened:
                    await self._pool.open(wait=False)
                    self._opened = True
                async with self._pool.connection() as conn:
                    if not self._prepared:
                        await self._prepare(conn)
                    yield conn
            else:
                async with await psycopg.AsyncConnection.connect(
                        self.conninfo(database), autocommit=True, row_factory=dict_row) as conn:
                    self.login_refused = False
                    yield conn
        except psycopg.errors.LockNotAvailable as error:
            # A lock held elsewhere (a tenant's on its own objects, or a long operator step): retry soon.
            unavailable = BackendUnavailable(f"Postgres at {self.host}:{self.port}: a lock was not granted in "
                                             f"time, retrying: {first_line(error)}", retry_after=5.0)
        except psycopg_pool.PoolTimeout:
            # The pool only says it waited: one direct attempt tells a refused login from an outage.
            unavailable = await self._diagnose(database)
        except psycopg.OperationalError as error:
            unavailable = self._refusal(error, database)
        except psycopg.errors.InternalError_ as error:
            # Two catalog updates of one row at once (e.g. grants on a shared schema): transient, retry soon.
            if "tuple concurrently updated" not in str(error):
                raise
            unavailable = BackendUnavailable(f"Postgres at {self.host}:{self.port}: concurrent catalog update, "
                                             f"retrying: {first_line(error)}", retry_after=1.0)
        if unavailable is not None:  # outside the handler: the driver's exception (and any secret in it) stays behind
            raise unavailable

    async def _diagnose(self, database: str) -> ReconcileError:
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo(database)):
                pass
        except psycopg.OperationalError as error:
            return self._refusal(error, database)
        return BackendUnavailable(f"Postgres at {self.host}:{self.port}: no connection free in the operator's pool")

    def _refusal(self, error: psycopg.OperationalError, database: str) -> ReconcileError:
        message = self.scrub(first_line(error))
        if isinstance(error, psycopg.errors.AdminShutdown):
            return SessionEnded(f"Postgres at {self.host}:{self.port} ended the operator's session: {message}")
        # The server answered and said no to the class's own settings: fixing them is up to a person.
        if "password authentication failed" in message:
            self.login_refused = True  # the class's Secret may hold a rotated password by now: re-read it
        if database == self.shared_database and (REFUSED_LOGIN.search(message) or any(sign in message for sign in (
                "password authentication failed", "no password supplied", "is not permitted to log in",
                "permission denied for database"))):
            return StoreClassInvalid(f"the admin login of Postgres at {self.host}:{self.port} is refused: {message}")
        if self.login_refused:  # in a tenant's own database: retried, as a rotation finishes by itself
            return BackendUnavailable(f"Postgres at {self.host}:{self.port} refused the admin login to database "
                                      f"{database} (a password rotated before the class's Secret?), retrying: {message}")
        return BackendUnavailable(f"Postgres at {self.host}:{self.port} is unreachable: {message}")

    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Once per server: the operator's bookkeeping, and a shared database only tenants of it may enter."""
        async with self._preparing:
            if self._prepared:
                return
            await bookkeeping.ensure_schema(conn)
            await close_to_public(conn, self.shared_database)
            self._prepared = True


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def reopened_database(database: str) -> sql.Composed:
    """What a tenant may have changed of the database it owns, back as the operator made it."""
    return sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true CONNECTION LIMIT -1 IS_TEMPLATE false").format(
        sql.Identifier(database))


async def drop_database(conn: psycopg.AsyncConnection[Any], database: str) -> None:
    """Drop a tenant's database, ending its sessions first.

    WITH (FORCE) refuses a non-superuser when an autovacuum worker is in the database: the worker has no role
    the admin could hold. A tenant can keep one there for hours (a slow vacuum its table's settings ask for),
    so when FORCE is refused the database is closed to new sessions, its clients are ended by hand, and a
    plain DROP, which stops autovacuum workers itself, follows. A session the admin may not end (a
    superuser's) still fails the drop, with Postgres's own reason.
    """
    name = sql.Identifier(database)
    try:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        return
    except psycopg.errors.InsufficientPrivilege:
        pass
    await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(name))
    await conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s "
                       "AND backend_type = 'client backend' AND pid <> pg_backend_pid()", (database,))
    await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))


async def end_sessions(conn: psycopg.AsyncConnection[Any], role: str) -> int:
    """End the role's sessions; waits (up to 5 s each) until they are gone, so status that says so is true."""
    row = await fetch_one(conn, """
        SELECT count(pg_terminate_backend(pid, 5000)) AS ended FROM pg_stat_activity
         WHERE usename = %s AND pid <> pg_backend_pid()""", role)
    return int(row["ended"]) if row else 0


@contextlib.asynccontextmanager
async def tenant_logins_shut_out(conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> AsyncIterator[None]:
    """The tenant's open logins (its own and its credentials') closed and their sessions ended for as long as the
    caller needs, then opened again. Should the operator stop in between, they stay closed until the tenant's next
    reconcile (verification reports the owner's closed login as LoginChanged drift)."""
    logins = [store.role, *await credentials.existing_logins(conn, store)]
    cursor = await conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin "
                                "ORDER BY rolname", (logins,))
    open_logins = [row["rolname"] for row in await cursor.fetchall()]
    for login in open_logins:
        await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(login)))
    try:
        for login in open_logins:
            await end_sessions(conn, login)
        yield
    finally:
        for login in open_logins:
            await conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(login)))


@contextlib.asynccontextmanager
async def tenant_lock_patience(conn: psycopg.AsyncConnection[Any], wait: str = TENANT_LOCK_PATIENCE
                               ) -> AsyncIterator[None]:
    """A transaction that waits `wait`, not the session's lock_timeout, for a lock a tenant may hold."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('lock_timeout', %s, true)", (wait,))
        yield


async def rows_by_key_past_locks(conn: psycopg.AsyncConnection[Any], query: sql.Composable | str,
                                 keys: list[str]) -> dict[str, Any]:
    """`query` (key and value of each of `keys`, given as one array) over many tenants' relations at once, such as
    their sizes, which lock each relation. A tenant holding one of its own locked keeps the others from being
    measured for no longer than MEASURE_LOCK_WAIT: the keys are then asked one at a time and its key is left out."""
    async def rows(asked: list[str]) -> dict[str, Any]:
        async with tenant_lock_patience(conn, MEASURE_LOCK_WAIT):
            cursor = await conn.execute(query, (asked,))
            return {row["key"]: row["value"] for row in await cursor.fetchall()}

    if not keys:
        return {}
    try:
        return await rows(keys)
    except psycopg.errors.LockNotAvailable:
        pass
    found: dict[str, Any] = {}
    for key in keys:
        with contextlib.suppress(psycopg.errors.LockNotAvailable):
            found.update(await rows([key]))
    return found


async def measured_despite_locks(conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                                 measure: Callable[[], Awaitable[T]]) -> T | None:
    """A tenant the usage job could not measure: if a session of its has held an exclusive lock on a relation for
    longer than EXCLUSIVE_LOCK_LIMIT_SECONDS, `measure` with its logins shut out; else None (measured next time)."""
    logins = [store.role, *await credentials.existing_logins(conn, store)]
    row = await fetch_one(conn, """
        SELECT coalesce(extract(epoch FROM now() - min(a.xact_start)), 0) AS held
          FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.granted AND l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND a.usename = ANY(%s)""",
                          logins)
    if row is None or float(row["held"]) < EXCLUSIVE_LOCK_LIMIT_SECONDS:
        return None
    async with tenant_logins_shut_out(conn, store):
        return await measure()


async def despite_tenant_locks(conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                               change: Callable[[], Awaitable[T]]) -> T:
    """Make a change to the tenant's write access (a quota Block, its end, a move's freeze) that must lock the
    tenant's own tables. A session of the tenant may hold one of them (a transaction left open over its table),
    which would put the change off for as long as it liked while its other sessions write on: when a lock is not
    granted, the change is made again with the tenant's logins shut out."""
    try:
        return await change()
    except psycopg.errors.LockNotAvailable:
        async with tenant_logins_shut_out(conn, store):
            return await change()


async def close_to_public(conn: psycopg.AsyncConnection[Any], database: str) -> None:
    """Only the shared database's own (schema) tenants may connect to it, not every role of the server, and
    only they may create temporary tables there (a readOnly credential's reader role may not).

    Tenants made before this rule get CONNECT and TEMPORARY first, so none of them loses anything. Where the
    admin does not own the database nothing changes, and the class's Ready condition says so.
    """
    row = await fetch_one(conn, """
        SELECT pg_get_userbyid(datdba) = current_user AS ours, EXISTS (
                 SELECT 1 FROM aclexplode(COALESCE(datacl, acldefault('d', datdba)))
                  WHERE grantee = 0 AND privilege_type IN ('CONNECT', 'TEMPORARY')) AS open_to_public
          FROM pg_database WHERE datname = current_database()""")
    if not (row and row["ours"] and row["open_to_public"]):
        return
    cursor = await conn.execute("""
        SELECT n.nspname AS role FROM pg_namespace n JOIN pg_roles r ON r.rolname = n.nspname
         WHERE starts_with(n.nspname, 'tenant_')""")
    database_name = sql.Identifier(database)
    statements = [sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database_name,
                                                                                sql.Identifier(row["role"]))
                  for row in await cursor.fetchall()]
    await execute_at_once(conn, [*statements, sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC")
                                 .format(database_name)])


async def execute_at_once(conn: psycopg.AsyncConnection[Any], statements: Sequence[sql.Composable]) -> None:
    """Several statements in one round trip, all or nothing (one implicit transaction outside a transaction block).

    For statements that take a lock other tenants' provisioning waits for (creating a role locks role
    memberships until commit): held for the server's own time, not for round trips to a busy operator.
    """
    await conn.execute(sql.SQL(";\n").join(statements))


async def extension_schema(conn: psycopg.AsyncConnection[Any], extension: str) -> str | None:
    """Where an extension's objects live in this database: the operator names them there, never by search_path."""
    row = await fetch_one(conn, "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                                "WHERE e.extname = %s", extension)
    return row["nspname"] if row else None


async def fetch_one(conn: psycopg.AsyncConnection[Any], query: sql.Composable | str, *params: Any) -> dict[str, Any] | None:
    cursor = await conn.execute(query, params or None)
    return await cursor.fetchone()


def legacy_claim(comment: str | None) -> bookkeeping.Claim | None:
    """A claim older releases wrote into the role's COMMENT; moved into the bookkeeping when met."""
    try:
        claim = json.loads(comment or "")
    except ValueError:
        return None
    if not isinstance(claim, dict) or claim.get("managedBy") != "tenantstore" or not claim.get("ownerName"):
        return None
    namespace, _, name = str(claim["ownerName"]).partition("/")
    return bookkeeping.Claim(claim.get("owner"), namespace, name)


def is_managed(comment: str | None) -> bool:
    try:
        return json.loads(comment or "").get("managedBy") == "tenantstore"
    except (ValueError, AttributeError):
        return False


class PostgresRelationalStore:
    def __init__(self, server: PostgresServer):
        self.server = server

    async def preflight(self) -> list[Step]:
        async with self.server.connect() as conn:
            row = await fetch_one(conn, """
                SELECT current_user AS admin, rolsuper, rolcreaterole, rolcreatedb,
                       has_database_privilege(current_database(), 'CREATE') AS can_create_schemas,
                       ARRAY(SELECT datname FROM pg_database d WHERE datallowconn AND EXISTS (
                               SELECT 1 FROM aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba)))
                                WHERE grantee = 0 AND privilege_type = 'CONNECT')
                               -- a tenant's own database (owned by one of the operator's roles) is closed by
                               -- its own reconcile, even one a crash interrupted right after CREATE DATABASE
                               AND NOT pg_has_role(current_user, d.datdba, 'MEMBER')
                             ORDER BY datname) AS open_databases
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
        if row["open_databases"]:
            # A tenant role must reach only its own database; these the admin cannot close itself.
            names = ", ".join(row["open_databases"])
            problems.append(Step("DatabasesOpenToPublic", f"every role, tenants included, may connect to database(s) "
                                                          f"{names}; a superuser should run REVOKE CONNECT ON "
                                                          f"DATABASE <name> FROM PUBLIC for each"))
        return problems

    async def server_identity(self) -> str:
        """What tells two Postgres servers apart, however they are addressed: when and on which port the
        server started (what any role may read)."""
        async with self.server.connect() as conn:
            row = await fetch_one(conn, "SELECT pg_catalog.pg_postmaster_start_time()::text || ' port ' || "
                                        "pg_catalog.current_setting('port') AS identity")
        return str(row["identity"])

    async def claimed_by(self, store: DesiredStore) -> str | None:
        async with self.server.connect() as conn:
            role = await self._inspect_role(conn, store.role)
        if role is None:
            return None
        claim = self._claim_of(role)
        if claim is None:
            return NOT_MANAGED
        return claim.owner_uid or RETAINED

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
        return await fetch_one(conn, sql.SQL("""
            SELECT r.rolcanlogin AS can_login, r.rolconnlimit AS connection_limit,
                   shobj_description(r.oid, 'pg_authid') AS comment,
                   pg_has_role(current_user, r.oid, 'USAGE') AS admin_has_privileges,
                   c.role IS NOT NULL AS recorded, c.owner_uid, c.owner_namespace, c.owner_name
              FROM pg_roles r LEFT JOIN {} c ON c.role = r.rolname
             WHERE r.rolname = %s""").format(bookkeeping.CLAIMS), role)

    @staticmethod
    def _claim_of(role: dict[str, Any]) -> bookkeeping.Claim | None:
        if role["recorded"]:
            return bookkeeping.Claim(role["owner_uid"], role["owner_namespace"], role["owner_name"])
        return legacy_claim(role["comment"])

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
                    sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(MANAGED_COMMENT)),
                    # Membership (with inherit) lets the admin act as the tenant's owner: terminate, drop, grant.
                    sql.SQL("GRANT {} TO CURRENT_USER").format(role),
                    bookkeeping.record_claim(store.role, store.tenant_id, store.uid, store.tenant_store_namespace,
                                             store.tenant_store_name)])
                return [Step("RoleCreated", f"Postgres role {store.role} created (connection limit "
                                            f"{store.connection_limit})")]
            except psycopg.errors.DuplicateObject:
                existing = await self._inspect_role(conn, store.role)  # lost a race: judge the winner's claim
                if existing is None:
                    raise
        if not is_managed(existing["comment"]):
            raise TenantIdConflict(f"Postgres role {store.role} exists and was not made by tenantstore")
        steps = await self._ensure_claim(conn, store, existing)
        if not existing["admin_has_privileges"]:
            await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
        if existing["connection_limit"] != store.connection_limit:
            await conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(role, sql.Literal(store.connection_limit)))
            steps.append(Step("ConnectionLimitChanged", f"role {store.role} connection limit set to {store.connection_limit}"))
        if existing["can_login"] == store.suspended:
            await conn.execute(sql.SQL("ALTER ROLE {} {}").format(role, sql.SQL("NOLOGIN" if store.suspended else "LOGIN")))
            if store.suspended:
                await end_sessions(conn, store.role)
            steps.append(Step("LoginChanged", f"role {store.role} can {'no longer' if store.suspended else 'again'} log in"))
        if password_is_new:
            await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(scram_sha256_verifier(password))))
            steps.append(Step("PasswordReset", f"role {store.role}'s password set to the one its Secret holds (the "
                                                f"Secret was missing, or no longer matched the role)"))
        return steps

    async def _ensure_claim(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                            existing: dict[str, Any]) -> list[Step]:
        """Ours already, or a retained tenant of our own namespace to adopt; anything else is a conflict."""
        claim = self._claim_of(existing)
        if claim is None:
            raise TenantIdConflict(f"Postgres role {store.role} carries no claim the operator can verify; "
                                   f"it will not be adopted")
        if not existing["recorded"]:  # a claim in an older release's COMMENT: move it into the bookkeeping
            await execute_at_once(conn, [
                bookkeeping.record_claim(store.role, store.tenant_id, claim.owner_uid, claim.owner_namespace,
                                         claim.owner_name),
                sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(store.role), sql.Literal(MANAGED_COMMENT))])
        if claim.owner_uid == store.uid:
            return []
        if claim.owner_uid:
            holder = (f"TenantStore {claim.owner_namespace}/{claim.owner_name}"
                      if claim.owner_namespace == store.tenant_store_namespace else "a TenantStore in another namespace")
            raise TenantIdConflict(f"tenantId {store.tenant_id} is already claimed by {holder}")
        # Retained data belongs to the namespace that made it: nobody elsewhere may adopt (or reset) it.
        if claim.owner_namespace != store.tenant_store_namespace or not await bookkeeping.adopt_claim(
                conn, store.role, store.uid, store.tenant_store_namespace, store.tenant_store_name):
            raise TenantIdConflict(f"tenantId {store.tenant_id} is retained by another namespace; only a "
                                   f"TenantStore in that namespace can adopt it")
        return [Step("RoleAdopted", f"retained Postgres role {store.role} adopted by this TenantStore")]

    async def _ensure_schema(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> list[Step]:
        schema, role = sql.Identifier(store.schema), sql.Identifier(store.role)
        grant_connect = sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
            sql.Identifier(store.database), role)
        row = await fetch_one(conn, "SELECT pg_get_userbyid(nspowner) AS owner, "
                                    "has_database_privilege(%s, current_database(), 'CONNECT') AND "
                                    "has_database_privilege(%s, current_database(), 'TEMPORARY') AS can_connect "
                                    "FROM pg_namespace WHERE nspname = %s", store.role, store.role, store.schema)
        if row is None:
            await execute_at_once(conn, [sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(schema, role), grant_connect])
            return [Step("SchemaCreated", f"schema {store.schema} in database {store.database} created, owned by {store.role}")]
        # The holding role (or, from older releases, the admin) owns it while writes are blocked.
        if row["owner"] not in (store.role, store.holding_role, self.server.admin_role):
            raise TenantIdConflict(f"schema {store.schema} exists and belongs to role {row['owner']}")
        if not row["can_connect"]:
            await conn.execute(grant_connect)
        return []

    async def _ensure_database(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> list[Step]:
        steps: list[Step] = []
        query = """
            SELECT pg_get_userbyid(datdba) AS owner,
                   EXISTS (SELECT 1 FROM aclexplode(COALESCE(datacl, acldefault('d', datdba))) WHERE grantee = 0)
                     AS public_can_connect, {state}
              FROM pg_database WHERE datname = %s""".format(state=DATABASE_STATE)
        row = await fetch_one(conn, query, store.database)
        if row is not None and row["invalid"]:  # a drop interrupted halfway: finish it, then make it anew
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(store.database)))
            row = None
        if row is None:
            await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(store.database), sql.Identifier(store.role)))
            steps.append(Step("DatabaseCreated", f"database {store.database} created, owned by {store.role}"))
            row = await fetch_one(conn, query, store.database)
        # The holding role owns it while the tenant's writes are refused (see ensure_write_access).
        if row["owner"] not in (store.role, store.holding_role, self.server.admin_role):
            raise TenantIdConflict(f"database {store.database} exists and belongs to role {row['owner']}")
        if row["public_can_connect"]:
            # Only the tenant (and, through it, the operator) may connect to a tenant's database.
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(store.database)))
        if row["settings_changed"]:
            await conn.execute(reopened_database(store.database))
            steps.append(Step("DatabaseSettingsRestored", f"database {store.database} accepts connections again and "
                                                          f"is no template"))
        return steps

    # --- write access (quota Block) ---
    #
    # The tenant owns its schema or database, and Postgres cannot refuse an owner's writes. So while writes
    # are blocked the tenant's holding role (NOLOGIN, privileged nowhere) takes ownership of the tenant's
    # schemas and relations, and the tenant keeps USAGE, SELECT, DELETE and TRUNCATE: reads and clean-up
    # work; INSERT, UPDATE and DDL are refused. Never the admin: a tenant's view owned by the admin would
    # read every tenant's rows. Unblocking hands everything back.

    async def ensure_write_access(self, store: DesiredStore) -> list[Step]:
        async with self.server.connect(store.database) as conn:
            if store.relational is RelationalIsolation.SCHEMA:
                row = await fetch_one(conn, "SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace "
                                            "WHERE nspname = %s", store.schema)
            else:
                row = await fetch_one(conn, "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database "
                                            "WHERE datname = current_database()")
            if row is None:
                return []
            holder = row["owner"]
            if holder == self.server.admin_role:  # blocked by an older release: the admin must let go first
                async with conn.transaction():
                    await self._hand_back(conn, store, holder)
                holder = store.role
            blocked = holder != store.role
            if blocked == (not store.writes_allowed):
                return []
            await despite_tenant_locks(conn, store, lambda: self._change_owners(conn, store, holder))
            if store.writes_allowed:
                return [Step("WritesRestored", f"{store.role} owns its {store.relational.value} again")]
            return [Step("WritesBlocked", f"{store.role} can read and delete but not write its "
                                          f"{store.relational.value} until it is under quota")]

    async def _change_owners(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore, holder: str) -> None:
        async with tenant_lock_patience(conn):
            if store.writes_allowed:
                await self._hand_back(conn, store, holder)
            else:
                await self._take_over(conn, store)

    async def _ensure_holding_role(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> None:
        if await fetch_one(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", store.holding_role):
            return
        holder = sql.Identifier(store.holding_role)
        # Membership lets the admin hand objects to it and back; the role itself can do nothing.
        await execute_at_once(conn, [sql.SQL("CREATE ROLE {} NOLOGIN").format(holder),
                                     sql.SQL("COMMENT ON ROLE {} IS {}").format(holder, sql.Literal(MANAGED_COMMENT)),
                                     sql.SQL("GRANT {} TO CURRENT_USER").format(holder)])

    async def _take_over(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> None:
        await self._ensure_holding_role(conn, store)
        role, holder = sql.Identifier(store.role), sql.Identifier(store.holding_role)
        if store.relational is RelationalIsolation.DATABASE:
            await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(store.database), holder))
            await conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(store.database), role))
        schemas = await self._tenant_schemas(conn, store, owner=store.role)
        for schema in schemas:
            await conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), holder))
        await self._reassign_relations(conn, schemas, from_role=store.role, to_role=store.holding_role, store=store)
        for schema in schemas:
            await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
            await conn.execute(sql.SQL("GRANT SELECT, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))
            await conn.execute(sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), role))

    async def _hand_back(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore, holder: str) -> None:
        if store.relational is RelationalIsolation.DATABASE:
            await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(store.database), sql.Identifier(store.role)))
        schemas = await self._tenant_schemas(conn, store, owner=holder)
        for schema in schemas:
            await conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                sql.Identifier(schema), sql.Identifier(store.role)))
        await self._reassign_relations(conn, schemas, from_role=holder, to_role=store.role, store=store)

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

    # --- scoped credentials (postgres_credentials.py) ---

    async def ensure_credentials(self, store: DesiredStore, plans: Mapping[str, LoginPlan]) -> list[Step]:
        """Each scoped credential's two logins as its spec and plan say (the current one open with the plan's
        password, the previous one open during an overlap, any other closed), and no other logins."""
        steps: list[Step] = []
        async with self.server.connect() as conn:
            logins = await credentials.existing_logins(conn, store)
            for role, existing in logins.items():
                credentials.check_ours(role, existing, is_managed)
            if store.has_readers:
                steps += await self._ensure_reader(conn, store, store.reader_role in logins)
            for credential in store.credential_roles:
                plan = plans[credential.name]
                for login in credential.logins:
                    steps += await self._ensure_login(conn, store, credential, login, plan, logins.get(login))
            wanted = {login for credential in store.credential_roles for login in credential.logins}
            if store.has_readers:
                wanted.add(store.reader_role)
            if set(logins) - wanted:
                steps += await self._drop_unwanted(conn, store, logins, wanted)
                left = set(await credentials.existing_logins(conn, store)) - wanted  # verified, as a teardown is
                if left:
                    raise BackendUnavailable(f"removed credentials still present: {', '.join(sorted(left))}")
        return steps

    async def _drop_unwanted(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                             logins: Mapping[str, Any], wanted: set[str]) -> list[Step]:
        """The scoped logins (and the reader role) found in `logins` but not `wanted`, dropped."""
        steps = [await self._drop_login(conn, role)
                 for role in sorted(set(logins) - wanted - {store.reader_role})]
        if store.reader_role in logins and store.reader_role not in wanted:
            steps += await self._drop_reader(conn, store)
        return steps

    async def _ensure_login(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore, credential: CredentialRole,
                            login: str, plan: LoginPlan, existing: dict[str, Any] | None) -> list[Step]:
        current = login == plan.current
        if current and (existing is None or plan.password_is_new):
            verifier: str | None = scram_sha256_verifier(plan.password)
        else:  # the login not in turn keeps a password nobody knows until its turn comes
            verifier = scram_sha256_verifier(secrets.token_urlsafe(24)) if existing is None else None
        open_ = current or login == plan.kept
        statements = credentials.login_statements(store, credential, login, open_, verifier, existing,
                                                  MANAGED_COMMENT)
        if not statements:
            return []
        await execute_at_once(conn, [*bookkeeping.lock_statements(SHARED_ACL_LOCK), *statements])
        if existing is None:
            return [Step("CredentialCreated", f"login {login} for credential {credential.name} "
                                              f"({credential.access.value}, connection limit "
                                              f"{credential.connection_limit})")] if current else []
        steps = []
        rights_changed = credentials.target_of(store, credential) not in existing["acts_as"]
        if (existing["can_login"] and not open_) or store.suspended or rights_changed:
            # Closed, suspended or given other rights: sessions opened before must not keep what they had.
            ended = await end_sessions(conn, login)
            if existing["can_login"] and not open_ and not store.suspended:
                steps.append(Step("CredentialRetired", f"login {login} of credential {credential.name} closed "
                                                       f"(its turn ended); {ended} session(s) ended"))
        if rights_changed or existing["connection_limit"] != credential.connection_limit:
            steps.append(Step("CredentialChanged", f"login {login} of credential {credential.name} set to "
                                                   f"{credential.access.value}, connection limit "
                                                   f"{credential.connection_limit}"))
        return steps

    async def _drop_login(self, conn: psycopg.AsyncConnection[Any], role: str) -> Step:
        await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        ended = await end_sessions(conn, role)
        await execute_at_once(conn, credentials.drop_login_statements(role))
        return credentials.removal_step(role, ended)

    async def _ensure_reader(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                             exists: bool) -> list[Step]:
        reader = sql.Identifier(store.reader_role)
        steps: list[Step] = []
        if not exists:
            await execute_at_once(conn, [
                *bookkeeping.lock_statements(SHARED_ACL_LOCK),
                sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(reader),
                sql.SQL("COMMENT ON ROLE {} IS {}").format(reader, sql.Literal(MANAGED_COMMENT)),
                # DROP OWNED BY needs the role's privileges, which it shares with the admin (read-only ones).
                sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET FALSE").format(reader)])
            steps.append(Step("ReaderRoleCreated", f"role {store.reader_role} (what readOnly credentials act as) "
                                                   f"created"))
        async with self.server.connect(store.database) as tenant_conn:
            grants = await credentials.reader_grants(tenant_conn, store)
            if not await fetch_one(tenant_conn, "SELECT 1 WHERE has_database_privilege(%s, current_database(), "
                                                "'CONNECT')", store.reader_role):
                grants.insert(0, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(store.database), reader))
            if grants:
                await execute_at_once(tenant_conn, grants)
                steps.append(Step("ReadAccessGranted", f"{store.reader_role} may read the tenant's tables in "
                                                       f"{store.relational.value} {store.schema if store.relational is RelationalIsolation.SCHEMA else store.database}"))
        return steps

    async def _drop_reader(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> list[Step]:
        """No readOnly credential left: the reader role goes, with its grants and policies (all databases)."""
        reader = sql.Identifier(store.reader_role)
        if store.relational is RelationalIsolation.DATABASE and await fetch_one(
                conn, "SELECT 1 FROM pg_database WHERE datname = %s", store.database):
            async with self.server.connect(store.database) as tenant_conn:
                await tenant_conn.execute(sql.SQL("DROP OWNED BY {}").format(reader))
        await execute_at_once(conn, [*bookkeeping.lock_statements(SHARED_ACL_LOCK),
                                     sql.SQL("DROP OWNED BY {}").format(reader),
                                     sql.SQL("DROP ROLE {}").format(reader),
                                     *bookkeeping.forget_role(store.reader_role)])
        return [Step("ReaderRoleDropped", f"role {store.reader_role} dropped (no readOnly credential left)")]

    async def teardown(self, store: DesiredStore) -> list[Step]:
        steps: list[Step] = []
        role = sql.Identifier(store.role)
        async with self.server.connect() as conn:
            if await self._inspect_role(conn, store.role) is not None:
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                ended = await end_sessions(conn, store.role)
                steps.append(Step("SessionsTerminated", f"role {store.role} can no longer log in; {ended} session(s) ended"))
            # Every login of the tenant is shut out before its data goes: a credential's open transaction would
            # otherwise hold a lock DROP SCHEMA waits for, on every retry.
            if await fetch_one(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", store.io_role):
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(store.io_role)))
                await end_sessions(conn, store.io_role)
            logins = await credentials.existing_logins(conn, store)
            for login in sorted(set(logins) - {store.reader_role}):
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(login)))
                await end_sessions(conn, login)
            steps += await self._drop_data(conn, store)
            doomed = sorted(logins) + [name for name in (store.role, store.holding_role, store.io_role)
                                       if await fetch_one(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", name)]
            if doomed:
                await self._forget_statements(conn, store.role)
                # Grants and policies the roles still hold in the shared database go with them.
                await execute_at_once(conn, [
                    *bookkeeping.lock_statements(SHARED_ACL_LOCK),
                    *(statement for name in doomed for statement in (
                        sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)),
                        sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))),
                    *bookkeeping.forget_role(store.role), *bookkeeping.forget_role(store.reader_role)])
                steps.append(Step("RoleDropped", f"Postgres role {store.role} dropped"))
            else:
                await execute_at_once(conn, bookkeeping.forget_role(store.role))
        return steps

    async def drop_data(self, store: DesiredStore) -> list[Step]:
        """A move's other side: the source once the tenant works on the target, or a copy the move gave up. The
        tenant may still hold a lock on a table there from a session opened before the switch."""
        async with self.server.connect() as conn:
            return await despite_tenant_locks(conn, store, lambda: self._drop_data(conn, store))

    async def _drop_data(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> list[Step]:
        if store.relational is RelationalIsolation.SCHEMA:
            if await fetch_one(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", store.schema):
                await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(store.schema)))
                return [Step("SchemaDropped", f"schema {store.schema} dropped from database {store.database}")]
        elif database := await fetch_one(conn, f"SELECT {DATABASE_STATE} FROM pg_database WHERE datname = %s",
                                         store.database):
            if database["settings_changed"]:  # e.g. its owner made it a template, which cannot be dropped
                await conn.execute(reopened_database(store.database))
            await drop_database(conn, store.database)
            return [Step("DatabaseDropped", f"database {store.database} dropped")]
        return []

    async def _forget_statements(self, conn: psycopg.AsyncConnection[Any], role: str) -> None:
        """Drop the role's entries (query texts included) from pg_stat_statements, where the admin may."""
        schema = await extension_schema(conn, "pg_stat_statements")
        if schema is None:
            return
        reset = sql.Identifier(schema, "pg_stat_statements_reset")
        signature = f"{sql.Identifier(schema).as_string(conn)}.pg_stat_statements_reset(oid, oid, bigint, boolean)"
        allowed = await fetch_one(conn, "SELECT to_regprocedure(%s) IS NOT NULL "
                                        "AND has_function_privilege(%s, 'EXECUTE') AS allowed", signature, signature)
        if allowed and allowed["allowed"]:
            await conn.execute(sql.SQL("SELECT {}(r.oid, 0, 0, false) FROM pg_roles r WHERE r.rolname = %s").format(reset),
                               (role,))

    async def release(self, store: DesiredStore) -> list[Step]:
        async with self.server.connect() as conn:
            role = await self._inspect_role(conn, store.role)
            claim = self._claim_of(role) if role else None
            if role is None or (claim is not None and claim.owner_uid not in (None, store.uid)):
                return []  # gone, or someone else's
            # Data stays, access goes: the scoped logins and the reader role are dropped (their Secrets go too).
            dropped = await self._drop_unwanted(conn, store, await credentials.existing_logins(conn, store), set())
            # The namespace stays on record: only a TenantStore of this namespace may adopt the tenant.
            await execute_at_once(conn, [
                bookkeeping.record_claim(store.role, store.tenant_id, None, store.tenant_store_namespace, store.tenant_store_name),
                sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(store.role), sql.Literal(MANAGED_COMMENT))])
        where = (f"schema {store.schema} in database {store.database}" if store.relational is RelationalIsolation.SCHEMA
                 else f"database {store.database}")
        return [*dropped, Step("Retained", f"kept Postgres role {store.role} and {where}; a new TenantStore with "
                                           f"tenantId {store.tenant_id} in namespace {store.tenant_store_namespace} "
                                           f"adopts them")]

    async def measure(self, stores: Sequence[DesiredStore]) -> dict[str, RelationalUsage]:
        roles = [store.role for store in stores]
        logins = {login: store.role for store in stores for credential in store.credential_roles
                  for login in credential.logins}
        schemas = {store.schema: store for store in stores if store.relational is RelationalIsolation.SCHEMA}
        databases = {store.database: store for store in stores if store.relational is RelationalIsolation.DATABASE}
        async with self.server.connect() as conn:
            by_login = await self._rows_by(conn, "SELECT usename AS key, count(*) AS value FROM pg_stat_activity "
                                                 "WHERE usename = ANY(%s) GROUP BY usename", roles + list(logins))
            connections: dict[str, int] = collections.Counter()
            for login, count in by_login.items():  # a tenant's connections are its credentials' too
                connections[logins.get(login, login)] += int(count)
            schema_bytes = await rows_by_key_past_locks(conn, SCHEMA_SIZES, list(schemas))
            for schema in set(schemas) - set(schema_bytes):  # gone, or kept locked by its tenant
                schema_bytes.update(await measured_despite_locks(
                    conn, schemas[schema], lambda schema=schema: rows_by_key_past_locks(conn, SCHEMA_SIZES, [schema]))
                    or {})
            database_bytes = await self._rows_by(conn, "SELECT datname AS key, pg_database_size(datname) AS value "
                                                       "FROM pg_database WHERE datname = ANY(%s)", list(databases))
            # A readWrite login's statements run as the tenant's role; a readOnly one's as the reader role.
            readers = {store.reader_role: store.role for store in stores if store.has_readers}
            statistics = await extension_schema(conn, "pg_stat_statements")  # None: not installed
            queries = await self._daily_queries(conn, statistics, roles + list(readers))
            if queries is not None:
                for reader, owner in readers.items():
                    queries[owner] = int(queries.get(owner, 0)) + int(queries.pop(reader, 0))
            statements = await self._statements(conn, statistics, {**{role: role for role in roles}, **readers})
            # A schema or database that is gone has no figure (not 0): the verification pass must still see what
            # went with it. A schema without tables is there, with 0 bytes; one whose tenant kept a table locked
            # past MEASURE_LOCK_WAIT has no figure this time.
            present = set(schema_bytes) | set(database_bytes)
        return {store.tenant_id: RelationalUsage(
            storage_bytes=int(schema_bytes[store.schema] if store.relational is RelationalIsolation.SCHEMA
                              else database_bytes[store.database]),
            connections=int(connections.get(store.role, 0)),
            daily_queries=None if queries is None else int(queries.get(store.role, 0)),
            queries=None if statements is None else insights.summarize(statements.get(store.role, ())),
        ) for store in stores if (store.schema if store.relational is RelationalIsolation.SCHEMA
                                  else store.database) in present}

    @staticmethod
    async def _rows_by(conn: psycopg.AsyncConnection[Any], query: str, keys: list[str]) -> dict[str, Any]:
        if not keys:
            return {}
        cursor = await conn.execute(query, (keys,))
        return {row["key"]: row["value"] for row in await cursor.fetchall()}

    @staticmethod
    async def _statements(conn: psycopg.AsyncConnection[Any], schema: str | None,
                          owners: Mapping[str, str]) -> dict[str, list[insights.Statement]] | None:
        """pg_stat_statements' rows (in `schema`) of the given roles, by the tenant role each belongs to."""
        if not owners or schema is None:
            return None
        cursor = await conn.execute(sql.SQL("""
            SELECT r.rolname AS role, s.query, s.calls, s.mean_exec_time, s.stddev_exec_time, s.rows
              FROM {} s JOIN pg_roles r ON r.oid = s.userid
             WHERE r.rolname = ANY(%s) AND s.calls > 0 AND strpos(s.query, %s) = 0""").format(
            sql.Identifier(schema, "pg_stat_statements")), (list(owners), insights.OPERATOR_MARK))
        found: dict[str, list[insights.Statement]] = collections.defaultdict(list)
        for row in await cursor.fetchall():
            found[owners[row["role"]]].append(insights.Statement(
                text=row["query"] or "", calls=int(row["calls"]), mean_ms=float(row["mean_exec_time"]),
                stddev_ms=float(row["stddev_exec_time"]), rows=int(row["rows"])))
        return found

    async def _daily_queries(self, conn: psycopg.AsyncConnection[Any], schema: str | None,
                             roles: list[str]) -> dict[str, int] | None:
        """Statements per role since the first measurement of the current UTC day (pg_stat_statements in
        `schema`)."""
        if not roles or schema is None:
            return None
        async with conn.transaction():
            cursor = await conn.execute(sql.SQL("""
                WITH totals AS (
                    SELECT r.rolname AS role, coalesce(sum(s.calls), 0)::bigint AS calls
                      FROM pg_roles r LEFT JOIN {statements} s ON s.userid = r.oid
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
                  LEFT JOIN {baseline} kept ON kept.role = t.role""").format(
                statements=sql.Identifier(schema, "pg_stat_statements"), baseline=bookkeeping.BASELINES), (roles,))
            return {row["key"]: max(int(row["value"] or 0), 0) for row in await cursor.fetchall()}

    async def verify(self, stores: Sequence[DesiredStore]) -> dict[str, list[Drift]]:
        if not stores:
            return {}
        async with self.server.connect() as conn:
            roles = {row["rolname"]: row for row in await (await conn.execute("""
                SELECT rolname, rolcanlogin, rolconnlimit,
                       has_database_privilege(oid, current_database(), 'CONNECT') AS can_connect
                  FROM pg_roles WHERE rolname = ANY(%s)""", ([store.role for store in stores],))).fetchall()}
            schemas = {row["nspname"]: row["owner"] for row in await (await conn.execute(
                "SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = ANY(%s)",
                ([store.schema for store in stores if store.relational is RelationalIsolation.SCHEMA],))).fetchall()}
            databases = {row["datname"]: row for row in await (await conn.execute(
                f"SELECT datname, pg_get_userbyid(datdba) AS owner, {DATABASE_STATE} "
                "FROM pg_database WHERE datname = ANY(%s)",
                ([store.database for store in stores if store.relational is RelationalIsolation.DATABASE],))).fetchall()}
            logins = {store.tenant_id: await credentials.existing_logins(conn, store)
                      for store in stores if store.credentials}
        return {store.tenant_id: drifts for store in stores
                if (drifts := self._drifts(store, roles.get(store.role), schemas, databases)
                    + credentials.drifts(store, logins.get(store.tenant_id, {})))}

    def _drifts(self, store: DesiredStore, role: dict[str, Any] | None, schemas: dict[str, str],
                databases: dict[str, dict[str, Any]]) -> list[Drift]:
        drifts: list[Drift] = []
        if role is None:
            drifts.append(Drift("RoleMissing", f"Postgres role {store.role} does not exist"))
        else:
            if role["rolcanlogin"] == store.suspended:
                drifts.append(Drift("LoginChanged", f"role {store.role} {'can' if role['rolcanlogin'] else 'cannot'} "
                                                    f"log in, the tenant is {'' if store.suspended else 'not '}suspended"))
            if role["rolconnlimit"] != store.connection_limit:
                drifts.append(Drift("ConnectionLimitChanged", f"role {store.role} has connection limit "
                                                              f"{role['rolconnlimit']}, not {store.connection_limit}"))
        owners = (store.role, store.holding_role, self.server.admin_role)
        if store.relational is RelationalIsolation.SCHEMA:
            if store.schema not in schemas:
                drifts.append(Drift("SchemaMissing", f"schema {store.schema} does not exist in database "
                                                     f"{store.database}", holds_data=True))
            elif schemas[store.schema] not in owners:
                drifts.append(Drift("OwnerChanged", f"schema {store.schema} belongs to {schemas[store.schema]}"))
            if role is not None and not role["can_connect"]:
                drifts.append(Drift("GrantMissing", f"role {store.role} may not connect to database {store.database}"))
        elif store.database not in databases or databases[store.database]["invalid"]:
            drifts.append(Drift("DatabaseMissing", f"database {store.database} does not exist (or was dropped "
                                                   f"halfway)", holds_data=True))
        elif databases[store.database]["owner"] not in owners:
            drifts.append(Drift("OwnerChanged", f"database {store.database} belongs to "
                                                f"{databases[store.database]['owner']}"))
        elif databases[store.database]["settings_changed"]:
            drifts.append(Drift("DatabaseSettingsChanged", f"database {store.database} refuses connections or is "
                                                           f"marked a template"))
        return drifts

    async def credentials_work(self, store: DesiredStore, password: str) -> bool | None:
        async with self.server.connect() as conn:
            # The check's login counts against the tenant's connection limit: while the tenant is connected,
            # it never takes the last free slot (checked on a later pass instead).
            full = await fetch_one(conn, """
                SELECT r.rolconnlimit >= 0 AND s.sessions > 0 AND s.sessions >= r.rolconnlimit - 1 AS full
                  FROM pg_roles r, LATERAL (SELECT count(*) AS sessions FROM pg_stat_activity a
                                             WHERE a.usename = r.rolname) s
                 WHERE r.rolname = %s""", store.role)
        if full is None or full["full"]:
            return None
        conninfo = make_conninfo(host=self.server.host, port=self.server.port, user=store.role, password=password,
                                 dbname=store.database, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                 application_name="tenantstore-operator-verify")
        try:
            async with await psycopg.AsyncConnection.connect(conninfo):
                return True
        except psycopg.OperationalError as error:
            # Only a refused password is drift; a full connection quota or an outage tells nothing.
            return False if "password authentication failed" in str(error) else None

    @contextlib.asynccontextmanager
    async def io_login(self, store: DesiredStore) -> AsyncIterator[IoLogin]:
        """A login that acts as the tenant and nothing more, for the Postgres client tools an export or a
        restore runs; it exists only meanwhile. Its sessions start as the tenant's role (options), it can
        become nothing else, and it is not counted against the tenant's connection limit."""
        password = secrets.token_urlsafe(24)
        role = sql.Identifier(store.io_role)
        async with self.server.connect() as conn:
            exists = await fetch_one(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", store.io_role)
            await execute_at_once(conn, [
                *bookkeeping.lock_statements(SHARED_ACL_LOCK),
                sql.SQL("ALTER ROLE {} LOGIN INHERIT CONNECTION LIMIT 4 PASSWORD {}" if exists else
                        "CREATE ROLE {} LOGIN INHERIT CONNECTION LIMIT 4 PASSWORD {}").format(
                    role, sql.Literal(scram_sha256_verifier(password))),
                sql.SQL("GRANT {} TO {} WITH INHERIT TRUE, SET TRUE").format(sql.Identifier(store.role), role),
                # So that the admin may end its sessions afterwards (as with every tenant role).
                sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET FALSE").format(role),
                sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(MANAGED_COMMENT))])
        try:
            yield IoLogin(host=self.server.host, port=self.server.port, user=store.io_role, password=password,
                          database=store.database, role=store.role)
        finally:
            async with self.server.connect() as conn:
                await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                await end_sessions(conn, store.io_role)
                await execute_at_once(conn, [*bookkeeping.lock_statements(SHARED_ACL_LOCK),
                                             sql.SQL("DROP ROLE IF EXISTS {}").format(role)])

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
            for role in (store.holding_role, store.io_role):
                if await fetch_one(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", role):
                    left.append(f"role {role}")
            left += [f"role {role}" for role in sorted(await credentials.existing_logins(conn, store))]
            left += await bookkeeping.records_of(conn, store.role)
        return left
