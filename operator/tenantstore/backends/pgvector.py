"""VectorStore on pgvector, in the same Postgres as the tenant's relational store.

namespace isolation: shared indexes are partitioned tables `tenantstore_vectors.shared_<dim>_<metric>_<n>`
(LIST-partitioned by namespace, owned by the admin role). A tenant gets one partition, named after its
role, and works in it directly: DML on its own partition, a row-level-security policy there that admits
only its namespace, and no privilege at all on the shared parent, so it can neither read past its
namespace nor lock the table every other tenant of the index uses. Row-level security is forced on the
parent and on every partition; the admin reads through a policy of its own.
dedicated isolation: a `vectors` table in the tenant's own schema (or its own database's public schema),
owned by the admin. The tenant owns that schema and could put something else under the name, so the
admin checks what it is (under a lock) before it reads or writes there.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from tenantstore import insights, pool
from tenantstore.backends import (NAMESPACE_CREATED, Drift, GlobalPlacement, SecretValue, SharedIndex, Step,
                                  VectorPlacement, VectorRecord, VectorUsage, bookkeeping, pgvector_global,
                                  register_vector_backend)
from tenantstore.backends.postgres import (DATABASE_STATE, MEASURE_LOCK_WAIT, PostgresServer, despite_tenant_locks,
                                           execute_at_once, extension_schema, fetch_one, measured_despite_locks,
                                           reopened_database, rows_by_key_past_locks, tenant_lock_patience)
from tenantstore.errors import BackendUnavailable, ObjectReplaced
from tenantstore.models import (DesiredStore, GlobalIndex, Metric, VectorIsolation, dedicated_index_name,
                                shared_index_name)

SHARED_SCHEMA = "tenantstore_vectors"
DEDICATED_TABLE = "vectors"
# The admin's own policy on every shared table and partition (row-level security is forced on them).
OPERATOR_POLICY = "tenantstore_operator"
# Reads and deletes stay while a quota blocks writes, so a tenant can always clean up to get back under it.
READ_PRIVILEGES = ("SELECT", "DELETE")
WRITE_PRIVILEGES = ("INSERT", "UPDATE")
# HNSW indexes on the `vector` type stop at 2,000 dimensions; larger vectors are stored unindexed.
HNSW_MAX_DIMENSIONS = 2000
DISTANCE_OPERATORS = {Metric.COSINE: "<=>", Metric.EUCLIDEAN: "<->", Metric.DOTPRODUCT: "<#>"}
PROBE_TIMEOUT_MS = 5000  # a search probe that takes longer is reported as failed, not waited for
OPERATOR_CLASSES = {Metric.COSINE: "vector_cosine_ops", Metric.EUCLIDEAN: "vector_l2_ops",
                    Metric.DOTPRODUCT: "vector_ip_ops"}
# Each partition's size; a partition its tenant keeps locked is measured next time (rows_by_key_past_locks).
PARTITION_SIZES = sql.SQL("""
    SELECT c.relname AS key, pg_total_relation_size(c.oid) AS value FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {} AND c.relname = ANY(%s)""").format(
    sql.Literal(SHARED_SCHEMA))


def shared_table_prefix(dimension: int, metric: Metric) -> str:
    return f"shared_{dimension}_{metric.value}_"


def partition_name(store: DesiredStore) -> str:
    # A tenant lives in at most one shared index, so its role name is a unique partition name.
    return store.role


def operator_set_role(role: str) -> sql.Composed:
    """SET LOCAL ROLE, which pg_stat_statements files under the role it sets: marked as the operator's."""
    return sql.SQL("SET LOCAL ROLE /* {} */ {}").format(sql.SQL(insights.OPERATOR_MARK), sql.Identifier(role))


class PgvectorStore:
    backend = "pgvector"

    def __init__(self, server: PostgresServer):
        self.server = server

    async def preflight(self) -> list[Step]:
        problems = []
        # Tenant databases are copies of template1, so it needs the extension as much as the shared database.
        for database in (self.server.shared_database, "template1"):
            async with self.server.connect(database) as conn:
                if await extension_schema(conn, "vector") is None:
                    problems.append(Step("VectorExtensionMissing", f"the vector extension is not installed in "
                                                                   f"database {database} (a superuser must run "
                                                                   f"CREATE EXTENSION vector there)"))
        return problems

    async def ensure(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        if store.vector is VectorIsolation.NAMESPACE:
            placement, steps = await self._ensure_namespace(store)
        else:
            placement, steps = await self._ensure_dedicated(store)
        if store.has_readers:
            steps += await self._ensure_reader_access(store, placement)
        return placement, steps

    async def _ensure_reader_access(self, store: DesiredStore, placement: VectorPlacement) -> list[Step]:
        """readOnly credentials (as the tenant's reader role) may SELECT the tenant's vectors and nothing more:
        on a shared index through a SELECT-only policy of its own on the tenant's partition."""
        reader = sql.Identifier(store.reader_role)
        schema, table = placement.table.split(".", 1)
        async with self.server.connect(None if placement.namespace else store.database) as conn:
            row = await (await conn.execute("""
                SELECT has_schema_privilege(%(reader)s, %(schema)s, 'USAGE') AS usage,
                       has_table_privilege(%(reader)s, format('%%I.%%I', %(schema)s::text, %(table)s::text),
                                           'SELECT') AS can_select,
                       EXISTS (SELECT 1 FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                                 JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname = %(schema)s AND c.relname = %(table)s
                                  AND p.polname = %(reader)s) AS policy""",
                {"reader": store.reader_role, "schema": schema, "table": table})).fetchone()
            qualified = sql.Identifier(schema, table)
            statements: list[sql.Composable] = []
            if not row["usage"]:
                statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), reader))
            if not row["can_select"]:
                statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(qualified, reader))
            if placement.namespace and not row["policy"]:
                statements.append(sql.SQL("CREATE POLICY {} ON {} FOR SELECT TO {} USING (namespace = {})").format(
                    reader, qualified, reader, sql.Literal(store.tenant_id)))
            if not statements:
                return []
            await execute_at_once(conn, statements)
        return [Step("VectorReadAccessGranted", f"{store.reader_role} may read, and only read, the tenant's "
                                                f"vectors in {placement.table}")]

    # --- namespace isolation: a partition of a shared index ---

    async def _ensure_namespace(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        async with self.server.connect() as conn:
            async with conn.transaction():
                table = await self._current_shared_table(conn, store)
                if table is not None:  # placed before: it stays there, its access is kept as granted
                    return self._shared_placement(store, table), await self._ensure_namespace_access(conn, store, table)
            async with pool.locked(conn, self.backend, store.dimension, store.metric.value):
                index, steps = await pool.place(SharedTables(self, conn), store)
        return self._shared_placement(store, index.handle), steps

    def _shared_placement(self, store: DesiredStore, table: str) -> VectorPlacement:
        return VectorPlacement(backend=self.backend, index=index_name_of(table), namespace=store.tenant_id,
                               table=f"{SHARED_SCHEMA}.{partition_name(store)}")

    @staticmethod
    def _new_partition(store: DesiredStore, table: str) -> list[sql.Composable]:
        partition, role = sql.Identifier(SHARED_SCHEMA, partition_name(store)), sql.Identifier(store.role)
        namespace = sql.Literal(store.tenant_id)
        privileges = READ_PRIVILEGES + (WRITE_PRIVILEGES if store.writes_allowed else ())
        return [sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN ({})").format(
                    partition, sql.Identifier(SHARED_SCHEMA, table), namespace),
                *forced_row_security(partition),
                sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING (namespace = {}) WITH CHECK (namespace = {})")
                .format(role, partition, role, namespace, namespace),
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SHARED_SCHEMA), role),
                sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(", ").join(sql.SQL(p) for p in sorted(privileges)),
                                                       partition, role)]

    @staticmethod
    def _new_partition_steps(store: DesiredStore, table: str) -> list[Step]:
        granted = "read and write" if store.writes_allowed else "read and delete (writes blocked until under quota)"
        return [Step("NamespaceIsolated", f"row-level security policy limits {store.role} to namespace "
                                          f"{store.tenant_id}; the shared table grants it nothing"),
                Step("VectorAccessGranted", f"{store.role} may {granted} its vectors in "
                                            f"{SHARED_SCHEMA}.{partition_name(store)} (shared index {index_name_of(table)})")]

    async def _current_shared_table(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> str | None:
        row = await fetch_one(conn, """
            SELECT parent.relname AS parent FROM pg_inherits i
              JOIN pg_class child ON child.oid = i.inhrelid
              JOIN pg_class parent ON parent.oid = i.inhparent
              JOIN pg_namespace n ON n.oid = child.relnamespace
             WHERE n.nspname = %s AND child.relname = %s""", SHARED_SCHEMA, partition_name(store))
        return row["parent"] if row else None

    async def shared_tables(self, conn: psycopg.AsyncConnection[Any], dimension: int, metric: Metric
                            ) -> list[tuple[str, int]]:
        """The pool of shared indexes for a (dimension, metric): (table, tenants placed), oldest first."""
        cursor = await conn.execute("""
            SELECT parent.relname AS table, count(i.inhrelid) AS tenants FROM pg_class parent
              JOIN pg_namespace n ON n.oid = parent.relnamespace
              LEFT JOIN pg_inherits i ON i.inhparent = parent.oid
             WHERE n.nspname = %s AND parent.relkind = 'p' AND starts_with(parent.relname, %s)
             GROUP BY parent.relname""", (SHARED_SCHEMA, shared_table_prefix(dimension, metric)))
        rows = await cursor.fetchall()
        pool = [(row["table"], int(row["tenants"])) for row in rows]
        return sorted(pool, key=lambda entry: shared_table_number(entry[0]))

    async def _create_shared_table(self, conn: psycopg.AsyncConnection[Any], table: str, store: DesiredStore) -> None:
        if not await fetch_one(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SHARED_SCHEMA):
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SHARED_SCHEMA)))
        qualified = sql.Identifier(SHARED_SCHEMA, table)
        vector_type = await vector_type_of(conn, store.dimension)
        await conn.execute(sql.SQL("""
            CREATE TABLE {} (
                namespace text NOT NULL,
                id text NOT NULL,
                embedding {} NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                written_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (namespace, id)
            ) PARTITION BY LIST (namespace)""").format(qualified, vector_type))
        await execute_at_once(conn, forced_row_security(qualified))
        await self._create_ann_index(conn, qualified, store.dimension, store.metric)

    async def _create_ann_index(self, conn: psycopg.AsyncConnection[Any], table: sql.Identifier,
                                dimension: int, metric: Metric) -> None:
        if dimension <= HNSW_MAX_DIMENSIONS:
            schema = await extension_schema(conn, "vector")
            await conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (embedding {})").format(
                table, sql.Identifier(schema or "public", OPERATOR_CLASSES[metric])))

    async def _ensure_namespace_access(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                                       table: str) -> list[Step]:
        steps: list[Step] = []
        partition, role = sql.Identifier(SHARED_SCHEMA, partition_name(store)), sql.Identifier(store.role)
        row = await (await conn.execute("""
            SELECT c.relforcerowsecurity AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid
                                                        AND p.polname = %(operator)s) AS forced,
                   EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = %(role)s) AS policy,
                   (SELECT t.relforcerowsecurity AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid
                                                              AND p.polname = %(operator)s)
                      FROM pg_class t WHERE t.relname = %(parent)s AND t.relnamespace = c.relnamespace) AS parent_forced,
                   EXISTS (SELECT 1 FROM pg_policy p JOIN pg_class t ON t.oid = p.polrelid
                            WHERE t.relname = %(parent)s AND t.relnamespace = c.relnamespace
                              AND p.polname = %(role)s) AS parent_policy,
                   has_table_privilege(%(role)s, format('%%I.%%I', %(schema)s::text, %(parent)s::text),
                                       'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') AS parent_access
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = %(schema)s AND c.relname = %(partition)s""",
            {"role": store.role, "operator": OPERATOR_POLICY, "schema": SHARED_SCHEMA, "parent": table,
             "partition": partition_name(store)})).fetchone()
        parent = sql.Identifier(SHARED_SCHEMA, table)
        if row["parent_access"] or row["parent_policy"] or not row["parent_forced"]:
            # Placed by an older release, which let tenants use the shared table itself: now only their partition.
            await execute_at_once(conn, [
                sql.SQL("REVOKE ALL ON {} FROM {}").format(parent, role),
                *([sql.SQL("DROP POLICY {} ON {}").format(role, parent)] if row["parent_policy"] else []),
                *(forced_row_security(parent) if not row["parent_forced"] else [])])
        if not (row["forced"] and row["policy"]):
            namespace = sql.Literal(store.tenant_id)
            await execute_at_once(conn, [
                *(forced_row_security(partition) if not row["forced"] else []),
                *([sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING (namespace = {}) WITH CHECK (namespace = {})")
                   .format(role, partition, role, namespace, namespace)] if not row["policy"] else [])])
            steps.append(Step("NamespaceIsolated", f"row-level security policy limits {store.role} to namespace "
                                                   f"{store.tenant_id}; the shared table grants it nothing"))
        steps += await self._ensure_grants(conn, store, SHARED_SCHEMA, partition_name(store))
        return steps

    async def _ensure_grants(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore, schema: str,
                             table: str) -> list[Step]:
        cursor = await conn.execute("""
            SELECT privilege, has_table_privilege(%(role)s, format('%%I.%%I', %(schema)s::text, %(table)s::text),
                                                  privilege) AS held
              FROM unnest(%(privileges)s::text[]) AS privilege
            UNION ALL SELECT 'USAGE', has_schema_privilege(%(role)s, %(schema)s, 'USAGE')""",
            {"role": store.role, "schema": schema, "table": table,
             "privileges": list(READ_PRIVILEGES + WRITE_PRIVILEGES)})
        held = {row["privilege"] for row in await cursor.fetchall() if row["held"]}
        wanted = {"USAGE", *READ_PRIVILEGES, *(WRITE_PRIVILEGES if store.writes_allowed else ())}
        missing, extra = wanted - held, held & set(WRITE_PRIVILEGES) - wanted
        role, qualified = sql.Identifier(store.role), sql.Identifier(schema, table)
        if "USAGE" in missing:
            await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
        if missing - {"USAGE"}:
            await conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in sorted(missing - {"USAGE"})), qualified, role))
        if extra:
            await conn.execute(sql.SQL("REVOKE {} ON {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in sorted(extra)), qualified, role))
            return [Step("VectorWritesBlocked", f"{store.role} can read and delete its vectors in {schema}.{table} "
                                                f"but not write them until it is under quota")]
        if set(WRITE_PRIVILEGES) & missing and held & set(READ_PRIVILEGES):
            return [Step("VectorWritesRestored", f"{store.role} may write its vectors in {schema}.{table} again")]
        if missing:
            return [Step("VectorAccessGranted", f"{store.role} may read and write its vectors in {schema}.{table}")]
        return []

    async def ensure_write_access(self, store: DesiredStore, placement: VectorPlacement) -> list[Step]:
        """Grant or revoke INSERT and UPDATE on the tenant's vectors (quota Block). The tenant may lock its own
        table (it may update it), so the change shuts its logins out if it must (despite_tenant_locks)."""
        async with self.server.connect(None if placement.namespace else store.database) as conn:
            async def change() -> list[Step]:
                async with tenant_lock_patience(conn):
                    if placement.namespace:
                        return await self._ensure_grants(conn, store, SHARED_SCHEMA, partition_name(store))
                    async with self._dedicated_table(conn, store):
                        return await self._ensure_grants(conn, store, store.schema, DEDICATED_TABLE)
            return await despite_tenant_locks(conn, store, change)

    # --- dedicated isolation: the tenant's own table ---

    async def _ensure_dedicated(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        steps: list[Step] = []
        async with self.server.connect(store.database) as conn:
            if await dedicated_table_kind(conn, store) is None:
                async with conn.transaction():
                    await self._create_vector_table(conn, sql.Identifier(store.schema, DEDICATED_TABLE),
                                                    store.dimension, store.metric)
                steps.append(Step("DedicatedIndexCreated", f"dedicated vector table {store.database}."
                                                           f"{store.schema}.{DEDICATED_TABLE} created"))
            async with self._dedicated_table(conn, store):
                steps += await self._ensure_grants(conn, store, store.schema, DEDICATED_TABLE)
        return VectorPlacement(backend=self.backend, index=dedicated_index_name(store.tenant_id),
                               table=f"{store.schema}.{DEDICATED_TABLE}"), steps

    @contextlib.asynccontextmanager
    async def _dedicated_table(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                               lock_mode: str = "ACCESS SHARE") -> AsyncIterator[sql.Identifier]:
        """The tenant's dedicated table, locked for this transaction and checked to be the one the operator made.

        The tenant owns the schema: it may drop the table and put a view (over its own functions) in its
        place. Locked first, the name cannot change hands before the admin is done with it.
        """
        qualified = sql.Identifier(store.schema, DEDICATED_TABLE)
        async with conn.transaction():
            await conn.execute(sql.SQL("LOCK TABLE ONLY {} IN {} MODE").format(qualified, sql.SQL(lock_mode)))
            if await dedicated_table_kind(conn, store) != "ours":
                raise ObjectReplaced(f"{store.database}.{store.schema}.{DEDICATED_TABLE} is no longer the vector table "
                                     f"the operator made (the tenant replaced it); the operator will not use it")
            yield qualified

    # --- the class's global index (pgvector_global) ---

    async def ensure_global(self, index: GlobalIndex, writer_password: str, password_is_new: bool,
                            repair: bool = True) -> tuple[GlobalPlacement, dict[str, str], list[Step]]:
        placement, steps = await pgvector_global.ensure(self.server, index, writer_password, password_is_new,
                                                        self._create_global_table, repair)
        writer = {"uri": f"postgresql://{index.writer_role}:{writer_password}@{self.server.host}:{self.server.port}/"
                         f"{placement.database}",
                  "user": index.writer_role, "password": writer_password, "vectorBackend": self.backend,
                  "vectorTable": placement.table, "vectorStore": placement.name,
                  "vectorDimension": str(index.dimension), "vectorMetric": index.metric.value,
                  "vectorAccess": "readWrite", "vectorScope": "global"}
        return placement, writer, steps

    async def _create_global_table(self, conn: psycopg.AsyncConnection[Any], table: sql.Identifier,
                                   index: GlobalIndex) -> None:
        if not await fetch_one(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SHARED_SCHEMA):
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SHARED_SCHEMA)))
        await self._create_vector_table(conn, table, index.dimension, index.metric)

    async def _create_vector_table(self, conn: psycopg.AsyncConnection[Any], table: sql.Identifier, dimension: int,
                                   metric: Metric) -> None:
        """A table of one store's vectors (a dedicated index, a global index) with its ANN index."""
        await conn.execute(sql.SQL("""
            CREATE TABLE {} (
                id text PRIMARY KEY,
                embedding {} NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                written_at timestamptz NOT NULL DEFAULT now()
            )""").format(table, await vector_type_of(conn, dimension)))
        await self._create_ann_index(conn, table, dimension, metric)

    async def grant_global(self, store: DesiredStore, index: GlobalIndex
                           ) -> tuple[GlobalPlacement | None, list[Step]]:
        return await pgvector_global.grant(self.server, store, index)

    async def verify_global(self, index: GlobalIndex, stores: Sequence[DesiredStore]) -> dict[str, list[Drift]]:
        return await pgvector_global.verify(self.server, index, stores)

    # --- data (admin access through the operator's own row-level-security policy) ---

    @contextlib.asynccontextmanager
    async def _data_target(self, store: DesiredStore, placement: VectorPlacement, lock_mode: str = "ACCESS SHARE"
                           ) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], sql.Identifier]]:
        """A connection and the table that holds this placement's vectors (the tenant's partition, or its table)."""
        if placement.namespace:
            async with self.server.connect() as conn:
                yield conn, sql.Identifier(SHARED_SCHEMA, partition_name(store))
            return
        async with self.server.connect(store.database) as conn, \
                self._dedicated_table(conn, store, lock_mode) as table:
            yield conn, table

    async def measure(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, VectorUsage]:
        usage: dict[str, VectorUsage] = {}
        shared = [(store, placement) for store, placement in tenants if placement.namespace]
        if shared:
            async with self.server.connect() as conn:
                counts: dict[str, int] = {}
                for index in sorted({placement.index for _, placement in shared}):
                    counts.update(await self._count_namespaces(conn, index.replace("-", "_"),
                                                               [store for store, p in shared if p.index == index]))
                measured = await rows_by_key_past_locks(conn, PARTITION_SIZES,
                                                        [partition_name(store) for store, _ in shared])
                for store, placement in shared:  # gone, or kept locked by its tenant
                    if placement.namespace not in counts or partition_name(store) not in measured:
                        again = await measured_despite_locks(conn, store, lambda store=store: self._partition_figures(
                            conn, store))
                        if again is not None:
                            counts[placement.namespace], measured[partition_name(store)] = again
                # NULL: dropped (a teardown) between the catalog read and the size: gone, so no figure.
                sizes = {name: int(size) for name, size in measured.items() if size is not None}
                for store, placement in shared:
                    # A partition that is gone has no figure (not 0): the verification pass must still see
                    # how many documents went with it.
                    if placement.namespace in counts and partition_name(store) in sizes:
                        usage[store.tenant_id] = VectorUsage(documents=counts[placement.namespace],
                                                             storage_bytes=sizes[partition_name(store)])
        for store, placement in tenants:
            if not placement.namespace:  # dedicated: its bytes are in the tenant's schema or database already
                try:
                    documents = await self._count_dedicated(store)
                except (psycopg.errors.UndefinedTable, BackendUnavailable, ObjectReplaced):
                    continue  # torn down or replaced by its tenant while we measured: nothing to report
                if documents is not None:  # None: locked by its tenant, measured next time
                    usage[store.tenant_id] = VectorUsage(documents=documents)
        return usage

    async def _count_dedicated(self, store: DesiredStore) -> int | None:
        async with self.server.connect(store.database) as conn:
            async def count() -> int:
                async with self._dedicated_table(conn, store) as table:
                    row = await fetch_one(conn, sql.SQL("SELECT count(*) AS n FROM {}").format(table))
                return int(row["n"])
            try:
                return await count()
            except psycopg.errors.LockNotAvailable:
                return await measured_despite_locks(conn, store, count)

    async def _partition_figures(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> tuple[int, Any]:
        """Documents and bytes of one tenant's partition (its logins shut out by the caller)."""
        row = await fetch_one(conn, sql.SQL(
            "SELECT count(*) AS n, pg_total_relation_size(format('%%I.%%I', %s::text, %s::text)::regclass) AS bytes "
            "FROM {}").format(sql.Identifier(SHARED_SCHEMA, partition_name(store))), SHARED_SCHEMA, partition_name(store))
        return int(row["n"]), row["bytes"]

    async def _count_namespaces(self, conn: psycopg.AsyncConnection[Any], table: str,
                                stores: Sequence[DesiredStore]) -> dict[str, int]:
        """Documents per namespace: one grouped scan, or partition by partition when a tenant holds a lock."""
        try:
            async with tenant_lock_patience(conn, MEASURE_LOCK_WAIT):
                cursor = await conn.execute(sql.SQL("SELECT namespace, count(*) AS documents FROM {} "
                                                    "GROUP BY namespace").format(sql.Identifier(SHARED_SCHEMA, table)))
                counted = {row["namespace"]: int(row["documents"]) for row in await cursor.fetchall()}
            return {store.tenant_id: counted.get(store.tenant_id, 0) for store in stores}
        except psycopg.errors.UndefinedTable:
            return {}  # an empty index dropped (keepEmpty: false) while we measured
        except psycopg.errors.LockNotAvailable:
            pass
        counts: dict[str, int] = {}
        for store in stores:
            try:
                async with tenant_lock_patience(conn, MEASURE_LOCK_WAIT):
                    row = await fetch_one(conn, sql.SQL("SELECT count(*) AS n FROM {}").format(
                        sql.Identifier(SHARED_SCHEMA, partition_name(store))))
                counts[store.tenant_id] = int(row["n"])
            except (psycopg.errors.LockNotAvailable, psycopg.errors.UndefinedTable):
                continue  # its own tenant holds it (or it just went): measured next time
        return counts

    async def shared_pool(self) -> list[SharedIndex]:
        async with self.server.connect() as conn:
            cursor = await conn.execute("""
                SELECT parent.relname AS table, count(i.inhrelid) AS tenants FROM pg_class parent
                  JOIN pg_namespace n ON n.oid = parent.relnamespace
                  LEFT JOIN pg_inherits i ON i.inhparent = parent.oid
                 WHERE n.nspname = %s AND parent.relkind = 'p' AND starts_with(parent.relname, 'shared_')
                 GROUP BY parent.relname""", (SHARED_SCHEMA,))
            rows = await cursor.fetchall()
        pool = []
        for row in rows:
            _, dimension, metric, _ = row["table"].split("_")
            pool.append(SharedIndex(index_name_of(row["table"]), int(dimension), metric, int(row["tenants"])))
        return sorted(pool, key=lambda index: (index.dimension, index.metric, shared_table_number(index.name)))

    def shared_credential(self) -> str | None:
        return None  # each tenant logs in as its own role

    async def probe_isolation(self, store: DesiredStore, placement: VectorPlacement) -> str | None:
        if not placement.namespace:
            return None  # a dedicated table holds nobody else's rows
        async with self.server.connect() as conn:
            async with conn.transaction():
                # Any privilege on any other relation of the shared schema (its shared table, a neighbour's
                # partition) is a way past its namespace; reading a class's global index is the one exception.
                shared = await fetch_one(conn, """
                    SELECT string_agg(c.relname, ', ' ORDER BY c.relname) AS reachable
                      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = %s AND c.relname <> %s AND c.relkind IN ('r', 'p', 'v', 'm')
                       AND has_table_privilege(%s, c.oid,
                                               'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                       AND NOT (starts_with(c.relname, %s) AND c.relkind = 'r' AND c.relowner = current_user::regrole
                                AND NOT has_table_privilege(
                                    %s, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'))""",
                                         SHARED_SCHEMA, partition_name(store), store.role,
                                         pgvector_global.GLOBAL_TABLE_PREFIX, store.role)
                # Through the tenant's eyes: the operator's tables only, no tenant object on this path.
                await conn.execute(operator_set_role(store.role))
                row = await fetch_one(conn, sql.SQL("SELECT count(*) AS {} FROM {} WHERE namespace <> {}").format(
                    sql.Identifier(f"{insights.OPERATOR_MARK}_canary"),
                    sql.Identifier(SHARED_SCHEMA, partition_name(store)), sql.Literal(placement.namespace)))
                await conn.execute("RESET ROLE")
                # That statement ran as the tenant: it is the operator's, not one of the tenant's daily queries.
                await conn.execute(bookkeeping.not_the_tenants_query(store.role))
        if shared["reachable"]:
            return f"{store.role} holds privileges on {shared['reachable']} in {SHARED_SCHEMA}, beyond its own partition"
        foreign_rows = row[f"{insights.OPERATOR_MARK}_canary"]  # the column's alias marks the statement
        if foreign_rows:
            return f"{store.role} sees {foreign_rows} rows of other namespaces in its partition"
        return None

    async def probe_search(self, store: DesiredStore, placement: VectorPlacement, vector: Sequence[float],
                           top_k: int) -> float:
        try:
            return await self._probe_search(store, placement, vector, top_k)
        except psycopg.errors.LockNotAvailable:  # the tenant holds its own table locked (lock_timeout)
            raise BackendUnavailable(f"search probe of {store.tenant_id} not run: its vector table is locked") \
                from None
        except psycopg.errors.QueryCanceled:
            raise BackendUnavailable(f"search probe of {store.tenant_id} took longer than {PROBE_TIMEOUT_MS} ms") \
                from None

    async def _probe_search(self, store: DesiredStore, placement: VectorPlacement, vector: Sequence[float],
                            top_k: int) -> float:
        async with self._data_target(store, placement) as (conn, table), conn.transaction():
            schema_name, table_name = (SHARED_SCHEMA, partition_name(store)) if placement.namespace \
                else (store.schema, DEDICATED_TABLE)
            await conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS SHARE MODE").format(table))
            # Code that runs while the session acts as the tenant could RESET ROLE and go on as the admin: only
            # the vector extension's own type and operator may run here, and the lock keeps them from being
            # dropped and replaced (in a tenant's own database, it owns the schema they live in) until the end.
            genuine = await fetch_one(conn, """
                SELECT e.extnamespace::regnamespace::text AS schema FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'embedding'
                  JOIN pg_depend dt ON dt.classid = 'pg_type'::regclass AND dt.objid = a.atttypid AND dt.deptype = 'e'
                  JOIN pg_extension e ON e.oid = dt.refobjid AND e.extname = 'vector'
                  JOIN pg_operator o ON o.oprname = %s AND o.oprnamespace = e.extnamespace
                                    AND o.oprleft = a.atttypid AND o.oprright = a.atttypid
                  JOIN pg_depend do_ ON do_.classid = 'pg_operator'::regclass AND do_.objid = o.oid
                                    AND do_.deptype = 'e' AND do_.refobjid = e.oid
                 WHERE n.nspname = %s AND c.relname = %s""",
                DISTANCE_OPERATORS[store.metric], schema_name, table_name)
            if genuine is None:
                raise BackendUnavailable(f"search probe of {store.tenant_id} not run: its vector column or distance "
                                         f"operator is not the vector extension's")
            schema = sql.Identifier(genuine["schema"].strip('"'))
            query = sql.SQL("SELECT id AS {} FROM {} ORDER BY embedding OPERATOR({}.{}) %s::{}.vector LIMIT %s").format(
                sql.Identifier(f"{insights.OPERATOR_MARK}_probe"), table, schema,
                sql.SQL(DISTANCE_OPERATORS[store.metric]), schema)
            await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{PROBE_TIMEOUT_MS}ms")))
            await conn.execute(operator_set_role(store.role))
            started = time.perf_counter()
            await (await conn.execute(query, (json.dumps(list(vector)), top_k))).fetchall()
            elapsed = time.perf_counter() - started
            await conn.execute("RESET ROLE")
        # That query ran as the tenant: it is the operator's, not one of the tenant's daily queries (the
        # baselines live in the shared database, whichever database the query ran in).
        async with self.server.connect() as conn:
            await conn.execute(bookkeeping.not_the_tenants_query(store.role))
        return elapsed

    async def count(self, store: DesiredStore, placement: VectorPlacement) -> int:
        async with self._data_target(store, placement) as (conn, table):
            row = await fetch_one(conn, sql.SQL("SELECT count(*) AS n FROM {}").format(table))
        return int(row["n"])

    async def read_batch(self, store: DesiredStore, placement: VectorPlacement, after_id: str | None,
                         limit: int) -> list[VectorRecord]:
        query = sql.SQL("SELECT id, embedding::text AS embedding, metadata FROM {} WHERE id COLLATE \"C\" > %s "
                        "ORDER BY id COLLATE \"C\" LIMIT %s")
        async with self._data_target(store, placement) as (conn, table):
            rows = await (await conn.execute(query.format(table), (after_id or "", limit))).fetchall()
        return [VectorRecord(id=row["id"], values=json.loads(row["embedding"]), metadata=row["metadata"] or {})
                for row in rows]

    async def write_batch(self, store: DesiredStore, placement: VectorPlacement,
                          records: Sequence[VectorRecord]) -> None:
        rows = [(record.id, json.dumps(record.values), json.dumps(record.metadata)) for record in records]
        async with self._data_target(store, placement, lock_mode="ROW EXCLUSIVE") as (conn, table):
            vector_type = sql.Identifier(await extension_schema(conn, "vector") or "public", "vector")
            async with conn.transaction(), conn.cursor() as cursor:
                if placement.namespace:
                    await cursor.executemany(sql.SQL(
                        "INSERT INTO {} (namespace, id, embedding, metadata) VALUES ({}, %s, %s::{}, %s::jsonb) "
                        "ON CONFLICT (namespace, id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                        "metadata = EXCLUDED.metadata").format(table, sql.Literal(placement.namespace), vector_type), rows)
                else:
                    await cursor.executemany(sql.SQL(
                        "INSERT INTO {} (id, embedding, metadata) VALUES (%s, %s::{}, %s::jsonb) "
                        "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                        "metadata = EXCLUDED.metadata").format(table, vector_type), rows)

    async def delete_ids(self, store: DesiredStore, placement: VectorPlacement, ids: Sequence[str]) -> None:
        async with self._data_target(store, placement, lock_mode="ROW EXCLUSIVE") as (conn, table):
            if placement.namespace:
                await conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s AND id = ANY(%s)").format(table),
                                   (placement.namespace, list(ids)))
            else:
                await conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table), (list(ids),))

    async def expire(self, store: DesiredStore, placement: VectorPlacement, written_before: datetime.datetime,
                     limit: int) -> int:
        await self._ensure_written_at(store, placement)
        async with self._data_target(store, placement, lock_mode="ROW EXCLUSIVE") as (conn, table):
            cursor = await conn.execute(sql.SQL(
                "DELETE FROM {} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {} WHERE written_at < %s LIMIT %s))"
            ).format(table, table), (written_before, limit))
            return cursor.rowcount

    async def _ensure_written_at(self, store: DesiredStore, placement: VectorPlacement) -> None:
        """Tables made before retention existed get the column. A constant default: no table is rewritten,
        and rows already there count as written now (retention never deletes early)."""
        schema, name = (SHARED_SCHEMA, partition_name(store)) if placement.namespace else \
            (store.schema, DEDICATED_TABLE)
        async with self._data_target(store, placement) as (conn, _):
            if await fetch_one(conn, """
                    SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                      JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'written_at' AND NOT a.attisdropped""",
                               schema, name):
                return
        # A shared index's column is added to its parent (every partition at once); a dedicated table's to it.
        target = sql.Identifier(SHARED_SCHEMA, placement.index.replace("-", "_")) if placement.namespace else None
        async with self._data_target(store, placement, lock_mode="ACCESS EXCLUSIVE") as (conn, table):
            now = datetime.datetime.now(datetime.UTC)
            await conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS written_at timestamptz NOT NULL "
                                       "DEFAULT {}").format(target or table, sql.Literal(now)))
            await conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN written_at SET DEFAULT now()").format(
                target or table))

    # --- teardown ---

    async def teardown(self, store: DesiredStore) -> list[Step]:
        if store.vector is VectorIsolation.DEDICATED:
            return await self._drop_dedicated(store)
        steps: list[Step] = []
        async with self.server.connect() as conn:
            async with conn.transaction():
                table = await self._current_shared_table(conn, store)
                if table is not None:
                    # CASCADE: any tenant may define a view over any partition (CREATE VIEW checks no privilege
                    # on what it reads); such a view must not keep this tenant's data alive.
                    await conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(
                        sql.Identifier(SHARED_SCHEMA, partition_name(store))))
                    steps.append(Step("NamespaceDropped", f"namespace {store.tenant_id} and its vectors removed from "
                                                          f"shared index {index_name_of(table)}"))
                # Policies an older release put on the shared table itself.
                for row in await (await conn.execute(
                        "SELECT tablename FROM pg_policies WHERE schemaname = %s AND policyname = %s",
                        (SHARED_SCHEMA, store.role))).fetchall():
                    await conn.execute(sql.SQL("DROP POLICY {} ON {}").format(
                        sql.Identifier(store.role), sql.Identifier(SHARED_SCHEMA, row["tablename"])))
            if table is not None and not store.shared_index_keep_empty:
                async with pool.locked(conn, self.backend, store.dimension, store.metric.value):
                    steps += await pool.drop_if_empty(SharedTables(self, conn), shared_index(table))
        return steps

    async def _drop_dedicated(self, store: DesiredStore) -> list[Step]:
        """Its own table (a tier change back to a shared index; a full teardown drops the schema anyway)."""
        if store.database != self.server.shared_database:
            async with self.server.connect() as conn:
                row = await fetch_one(conn, f"SELECT {DATABASE_STATE} FROM pg_database WHERE datname = %s",
                                      store.database)
                if row is None or row["invalid"]:
                    return []  # its database is gone (or half dropped), and the table with it
                if row["settings_changed"]:  # its owner closed it: open it again, the operator must get in
                    await conn.execute(reopened_database(store.database))
        async with self.server.connect(store.database) as conn:
            if await dedicated_table_kind(conn, store) != "ours":
                return []  # gone, or no longer ours to drop (the tenant's schema goes with the tenant)
            # CASCADE: a view another role made over it must not keep it alive.
            await conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(store.schema, DEDICATED_TABLE)))
        return [Step("DedicatedIndexDropped", f"dedicated vector table {store.database}.{store.schema}."
                                              f"{DEDICATED_TABLE} dropped")]

    async def verify(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, list[Drift]]:
        drifts: dict[str, list[Drift]] = {}
        shared = [(store, placement) for store, placement in tenants if placement.namespace]
        if shared:
            async with self.server.connect() as conn:
                # The partition is named after the role; a role that is gone is the relational store's to
                # report (its privileges cannot be asked about), its partition is still judged here.
                cursor = await conn.execute("""
                    SELECT t.role, r.oid IS NOT NULL AS role_exists, parent.relname AS parent,
                           c.relforcerowsecurity AS forced,
                           EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = t.role) AS policy,
                           CASE WHEN r.oid IS NOT NULL THEN has_table_privilege(r.oid, c.oid, 'SELECT')
                                AND has_table_privilege(r.oid, c.oid, 'DELETE') END AS can_read,
                           CASE WHEN r.oid IS NOT NULL THEN has_table_privilege(r.oid, c.oid, 'INSERT')
                                AND has_table_privilege(r.oid, c.oid, 'UPDATE') END AS can_write
                      FROM unnest(%s::text[]) AS t(role)
                      LEFT JOIN pg_roles r ON r.rolname = t.role
                      JOIN pg_class c ON c.relname = t.role
                      JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = %s
                      LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
                      LEFT JOIN pg_class parent ON parent.oid = i.inhparent""",
                    ([partition_name(store) for store, _ in shared], SHARED_SCHEMA))
                found = {row["role"]: row for row in await cursor.fetchall()}
            for store, placement in shared:
                if (kinds := self._namespace_drifts(store, placement, found.get(partition_name(store)))):
                    drifts[store.tenant_id] = kinds
        for store, placement in tenants:
            if not placement.namespace and (kinds := await self._dedicated_drifts(store)):
                drifts[store.tenant_id] = kinds
        return drifts

    @staticmethod
    def _namespace_drifts(store: DesiredStore, placement: VectorPlacement, row: dict[str, Any] | None) -> list[Drift]:
        partition = f"{SHARED_SCHEMA}.{partition_name(store)}"
        if row is None:
            # A missing role is the relational store's to report; a missing partition is this one's.
            return [Drift("NamespaceMissing", f"namespace {store.tenant_id} ({partition}) is gone from shared index "
                                              f"{placement.index}", holds_data=True)]
        drifts = []
        if row["parent"] != placement.index.replace("-", "_"):
            drifts.append(Drift("NamespaceMissing", f"{partition} is no longer a namespace of shared index "
                                                    f"{placement.index}", holds_data=True))
        if not (row["forced"] and row["policy"]):
            drifts.append(Drift("PolicyMissing", f"the row-level security policy of {partition} is gone"))
        if row["role_exists"] and (not row["can_read"] or row["can_write"] != store.writes_allowed):
            drifts.append(Drift("GrantMissing", f"{store.role}'s privileges on {partition} are not the ones the "
                                                f"operator granted"))
        return drifts

    async def _dedicated_drifts(self, store: DesiredStore) -> list[Drift]:
        table = f"{store.database}.{store.schema}.{DEDICATED_TABLE}"
        try:
            async with self.server.connect(store.database) as conn:
                kind = await dedicated_table_kind(conn, store)
                if kind is None:
                    return [Drift("IndexMissing", f"dedicated vector table {table} does not exist", holds_data=True)]
                if kind == "foreign":
                    return [Drift(ObjectReplaced.reason, f"{table} was replaced by an object the operator did not make")]
                row = await (await conn.execute("""
                    SELECT bool_and(held) FILTER (WHERE privilege IN ('SELECT', 'DELETE')) AS can_read,
                           bool_and(held) FILTER (WHERE privilege IN ('INSERT', 'UPDATE')) AS can_write
                      FROM (SELECT privilege, has_table_privilege(%(role)s, format('%%I.%%I', %(schema)s::text,
                                                                    %(table)s::text), privilege) AS held
                              FROM unnest(ARRAY['SELECT', 'DELETE', 'INSERT', 'UPDATE']) AS privilege) AS privileges""",
                    {"role": store.role, "schema": store.schema, "table": DEDICATED_TABLE})).fetchone()
        except psycopg.errors.UndefinedObject:
            return []  # its role is gone: the relational store reports that
        except BackendUnavailable:
            # Its database is gone or closed by its owner: the relational store reports that. (One tenant's
            # database never makes the whole class look unreachable.)
            return []
        if not row["can_read"] or row["can_write"] != store.writes_allowed:
            return [Drift("GrantMissing", f"{store.role}'s privileges on {table} are not the ones the operator granted")]
        return []

    async def residue(self, store: DesiredStore) -> list[str]:
        left: list[str] = []
        async with self.server.connect() as conn:
            if (table := await self._current_shared_table(conn, store)) is not None:
                left.append(f"namespace {store.tenant_id} in shared index {index_name_of(table)}")
            if await fetch_one(conn, "SELECT 1 FROM pg_policies WHERE schemaname = %s AND policyname = %s",
                               SHARED_SCHEMA, store.role):
                left.append(f"row-level security policy {store.role}")
        return left


class PgvectorBackend:
    """`spec.vector.backend: pgvector` (the default): vectors in the class's own Postgres; no settings."""

    async def build(self, class_name: str, settings: Mapping[str, Any], server: PostgresServer,
                    secret_value: SecretValue) -> tuple[PgvectorStore, dict[str, str]]:
        return PgvectorStore(server), {}

    async def close(self) -> None:
        pass


register_vector_backend("pgvector", PgvectorBackend)


class SharedTables:
    """The pool's primitives on pgvector: shared indexes are partitioned tables, namespaces their partitions.

    Runs inside the pool's transaction: a new namespace's DDL commits with the lock that chose its index.
    """

    def __init__(self, store: PgvectorStore, conn: psycopg.AsyncConnection[Any]):
        self.vectors, self.conn = store, conn

    async def placement_of(self, store: DesiredStore) -> pool.PooledIndex | None:
        table = await self.vectors._current_shared_table(self.conn, store)
        return shared_index(table) if table else None

    async def indexes(self, store: DesiredStore) -> list[pool.PooledIndex]:
        return [shared_index(table, tenants)
                for table, tenants in await self.vectors.shared_tables(self.conn, store.dimension, store.metric)]

    async def create_index(self, store: DesiredStore, number: int) -> pool.PooledIndex:
        table = shared_index_name(store.dimension, store.metric, number).replace("-", "_")
        await self.vectors._create_shared_table(self.conn, table, store)
        return shared_index(table)

    async def add_namespace(self, store: DesiredStore, index: pool.PooledIndex) -> list[Step]:
        # Every free or pro tenant of the index waits for this lock: a new namespace's DDL goes in one round trip.
        await execute_at_once(self.conn, self.vectors._new_partition(store, index.handle))
        return [Step(NAMESPACE_CREATED, f"namespace {store.tenant_id} placed in shared index {index.name}"),
                *self.vectors._new_partition_steps(store, index.handle)]

    async def is_empty(self, index: pool.PooledIndex) -> bool:
        return not await fetch_one(self.conn, "SELECT 1 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
                                              "JOIN pg_namespace n ON n.oid = p.relnamespace "
                                              "WHERE n.nspname = %s AND p.relname = %s", SHARED_SCHEMA, index.handle)

    async def drop_index(self, index: pool.PooledIndex) -> None:
        # CASCADE: a tenant's view over the shared table must not keep it alive.
        await self.conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(SHARED_SCHEMA, index.handle)))


def shared_index(table: str, tenants: int = 0) -> pool.PooledIndex:
    return pool.PooledIndex(number=shared_table_number(table), name=index_name_of(table), tenants=tenants, handle=table)


def forced_row_security(table: sql.Identifier) -> list[sql.Composable]:
    """Row-level security that binds the table's owner too; the admin reads through a policy of its own."""
    return [sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY").format(table),
            sql.SQL("CREATE POLICY {} ON {} FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true)").format(
                sql.Identifier(OPERATOR_POLICY), table)]


async def vector_type_of(conn: psycopg.AsyncConnection[Any], dimension: int) -> sql.Composable:
    """`<schema>.vector(<dimension>)`, named where the extension lives, never found through search_path."""
    schema = await extension_schema(conn, "vector")
    return sql.SQL("{}({})").format(sql.Identifier(schema or "public", "vector"), sql.Literal(dimension))


async def dedicated_table_kind(conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> str | None:
    """None when absent; "ours" for the admin's own table; "foreign" for anything else under its name."""
    row = await fetch_one(conn, """
        SELECT c.relkind = 'r' AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AS ours
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s""", store.schema, DEDICATED_TABLE)
    return None if row is None else ("ours" if row["ours"] else "foreign")


def index_name_of(table: str) -> str:
    return table.replace("_", "-")


def shared_table_number(table: str) -> int:
    """The n of shared_<dim>_<metric>_<n> (or of its index name shared-<dim>-<metric>-<n>)."""
    return int(table.replace("-", "_").rsplit("_", 1)[-1])
