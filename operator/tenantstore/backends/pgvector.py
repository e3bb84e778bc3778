"""VectorStore on pgvector, in the same Postgres as the tenant's relational store.

namespace isolation: shared indexes are partitioned tables `tenantstore_vectors.shared_<dim>_<metric>_<n>`
(LIST-partitioned by namespace, owned by the admin role). A tenant gets one partition, a row-level-security
policy that lets its role see and write only rows of its namespace, and DML grants on the parent table
only, so it cannot reach the partitions directly.
dedicated isolation: a `vectors` table in the tenant's own schema (or its own database's public schema).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from tenantstore.backends import SharedIndex, Step, VectorPlacement, VectorRecord, VectorUsage
from tenantstore.backends.postgres import PostgresServer, execute_at_once, fetch_one
from tenantstore.errors import BackendUnavailable
from tenantstore.models import DesiredStore, Metric, VectorIsolation, dedicated_index_name, shared_index_name

SHARED_SCHEMA = "tenantstore_vectors"
DEDICATED_TABLE = "vectors"
# Reads and deletes stay while a quota blocks writes, so a tenant can always clean up to get back under it.
READ_PRIVILEGES = ("SELECT", "DELETE")
WRITE_PRIVILEGES = ("INSERT", "UPDATE")
# HNSW indexes on the `vector` type stop at 2,000 dimensions; larger vectors are stored unindexed.
HNSW_MAX_DIMENSIONS = 2000
OPERATOR_CLASSES = {Metric.COSINE: "vector_cosine_ops", Metric.EUCLIDEAN: "vector_l2_ops",
                    Metric.DOTPRODUCT: "vector_ip_ops"}


def shared_table_prefix(dimension: int, metric: Metric) -> str:
    return f"shared_{dimension}_{metric.value}_"


def partition_name(store: DesiredStore) -> str:
    # A tenant lives in at most one shared index, so its role name is a unique partition name.
    return store.role


class PgvectorStore:
    backend = "pgvector"

    def __init__(self, server: PostgresServer):
        self.server = server

    async def preflight(self) -> list[Step]:
        problems = []
        # Tenant databases are copies of template1, so it needs the extension as much as the shared database.
        for database in (self.server.shared_database, "template1"):
            async with self.server.connect(database) as conn:
                if not await fetch_one(conn, "SELECT 1 FROM pg_extension WHERE extname = 'vector'"):
                    problems.append(Step("VectorExtensionMissing", f"the vector extension is not installed in "
                                                                   f"database {database} (a superuser must run "
                                                                   f"CREATE EXTENSION vector there)"))
        return problems

    async def ensure(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        if store.vector is VectorIsolation.NAMESPACE:
            return await self._ensure_namespace(store)
        return await self._ensure_dedicated(store)

    # --- namespace isolation: a partition of a shared index ---

    async def _ensure_namespace(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        try:
            table, steps = await self._place_namespace(store, at_once=True)
        except psycopg.errors.DuplicateObject:  # a policy of the role's outlived its partition: go step by step
            table, steps = await self._place_namespace(store, at_once=False)
        return VectorPlacement(backend=self.backend, index=index_name_of(table), namespace=store.tenant_id,
                               table=f"{SHARED_SCHEMA}.{table}"), steps

    async def _place_namespace(self, store: DesiredStore, at_once: bool) -> tuple[str, list[Step]]:
        steps: list[Step] = []
        async with self.server.connect() as conn:
            async with conn.transaction():
                # One placement at a time per (dimension, metric), across operator replicas: no index over capacity.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                                   (f"tenantstore:placement:{store.dimension}:{store.metric.value}",))
                table = await self._current_shared_table(conn, store)
                if table is not None:
                    return table, await self._ensure_namespace_access(conn, store, table)
                table, created = await self._table_with_room(conn, store)
                if created:
                    steps.append(Step("SharedIndexCreated", f"shared index {index_name_of(table)} created"))
                partition = sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN ({})").format(
                    sql.Identifier(SHARED_SCHEMA, partition_name(store)), sql.Identifier(SHARED_SCHEMA, table),
                    sql.Literal(store.tenant_id))
                steps.append(Step("NamespaceCreated", f"namespace {store.tenant_id} placed in shared index "
                                                      f"{index_name_of(table)}"))
                if at_once:
                    # Every free or pro tenant waits for this lock: a new namespace's DDL goes in one round trip.
                    await execute_at_once(conn, [partition, *self._new_namespace_access(store, table)])
                    steps += self._new_namespace_access_steps(store, table)
                else:
                    await conn.execute(partition)
                    steps += await self._ensure_namespace_access(conn, store, table)
        return table, steps

    @staticmethod
    def _new_namespace_access(store: DesiredStore, table: str) -> list[sql.Composable]:
        """What _ensure_namespace_access would do for a role with no policy or grant on this table yet."""
        qualified, role, namespace = sql.Identifier(SHARED_SCHEMA, table), sql.Identifier(store.role), \
            sql.Literal(store.tenant_id)
        privileges = READ_PRIVILEGES + (WRITE_PRIVILEGES if store.writes_allowed else ())
        return [sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING (namespace = {}) WITH CHECK (namespace = {})")
                .format(role, qualified, role, namespace, namespace),
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SHARED_SCHEMA), role),
                sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(", ").join(sql.SQL(p) for p in sorted(privileges)),
                                                       qualified, role)]

    @staticmethod
    def _new_namespace_access_steps(store: DesiredStore, table: str) -> list[Step]:
        granted = "read and write" if store.writes_allowed else "read and delete (writes blocked until under quota)"
        return [Step("NamespaceIsolated", f"row-level security policy limits {store.role} to namespace "
                                          f"{store.tenant_id}"),
                Step("VectorAccessGranted", f"{store.role} may {granted} its vectors in {SHARED_SCHEMA}.{table}")]

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

    async def _table_with_room(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> tuple[str, bool]:
        pool = await self.shared_tables(conn, store.dimension, store.metric)
        for table, tenants in pool:
            if tenants < store.shared_index_capacity:
                return table, False
        number = max((shared_table_number(table) for table, _ in pool), default=0) + 1
        table = shared_index_name(store.dimension, store.metric, number).replace("-", "_")
        await self._create_shared_table(conn, table, store)
        return table, True

    async def _create_shared_table(self, conn: psycopg.AsyncConnection[Any], table: str, store: DesiredStore) -> None:
        if not await fetch_one(conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SHARED_SCHEMA):
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SHARED_SCHEMA)))
        qualified = sql.Identifier(SHARED_SCHEMA, table)
        await conn.execute(sql.SQL("""
            CREATE TABLE {} (
                namespace text NOT NULL,
                id text NOT NULL,
                embedding vector({}) NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                PRIMARY KEY (namespace, id)
            ) PARTITION BY LIST (namespace)""").format(qualified, sql.Literal(store.dimension)))
        await conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(qualified))
        await self._create_ann_index(conn, qualified, store)

    async def _create_ann_index(self, conn: psycopg.AsyncConnection[Any], table: sql.Identifier,
                                store: DesiredStore) -> None:
        if store.dimension <= HNSW_MAX_DIMENSIONS:
            await conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (embedding {})").format(
                table, sql.SQL(OPERATOR_CLASSES[store.metric])))

    async def _ensure_namespace_access(self, conn: psycopg.AsyncConnection[Any], store: DesiredStore,
                                       table: str) -> list[Step]:
        steps: list[Step] = []
        qualified, role = sql.Identifier(SHARED_SCHEMA, table), sql.Identifier(store.role)
        policy = await fetch_one(conn, "SELECT 1 FROM pg_policies WHERE schemaname = %s AND tablename = %s "
                                       "AND policyname = %s", SHARED_SCHEMA, table, store.role)
        if policy is None:
            namespace = sql.Literal(store.tenant_id)
            await conn.execute(sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING (namespace = {}) "
                                       "WITH CHECK (namespace = {})").format(role, qualified, role, namespace, namespace))
            steps.append(Step("NamespaceIsolated", f"row-level security policy limits {store.role} to namespace "
                                                   f"{store.tenant_id}"))
        steps += await self._ensure_grants(conn, store, SHARED_SCHEMA, table)
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
        """Grant or revoke INSERT and UPDATE on the tenant's vectors (quota Block)."""
        schema, table = placement.table.split(".", 1)
        async with self.server.connect(store.database if not placement.namespace else None) as conn:
            return await self._ensure_grants(conn, store, schema, table)

    # --- dedicated isolation: the tenant's own table ---

    async def _ensure_dedicated(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        steps: list[Step] = []
        async with self.server.connect(store.database) as conn:
            if not await self._dedicated_table_exists(conn, store):
                async with conn.transaction():
                    qualified = sql.Identifier(store.schema, DEDICATED_TABLE)
                    await conn.execute(sql.SQL("""
                        CREATE TABLE {} (
                            id text PRIMARY KEY,
                            embedding vector({}) NOT NULL,
                            metadata jsonb NOT NULL DEFAULT '{{}}'
                        )""").format(qualified, sql.Literal(store.dimension)))
                    await self._create_ann_index(conn, qualified, store)
                steps.append(Step("DedicatedIndexCreated", f"dedicated vector table {store.database}."
                                                           f"{store.schema}.{DEDICATED_TABLE} created"))
            steps += await self._ensure_grants(conn, store, store.schema, DEDICATED_TABLE)
        return VectorPlacement(backend=self.backend, index=dedicated_index_name(store.tenant_id),
                               table=f"{store.schema}.{DEDICATED_TABLE}"), steps

    @staticmethod
    async def _dedicated_table_exists(conn: psycopg.AsyncConnection[Any], store: DesiredStore) -> bool:
        row = await fetch_one(conn, "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL AS present",
                              store.schema, DEDICATED_TABLE)
        return bool(row and row["present"])

    # --- data (admin access: the table owner is not subject to row-level security) ---

    def _data_target(self, store: DesiredStore, placement: VectorPlacement) -> tuple[str, sql.Composable, sql.Composable]:
        """(database, table, namespace filter) where this placement's vectors live."""
        schema, table = placement.table.split(".", 1)
        if placement.namespace:
            return (self.server.shared_database, sql.Identifier(schema, table),
                    sql.SQL("namespace = {}").format(sql.Literal(placement.namespace)))
        return store.database, sql.Identifier(schema, table), sql.SQL("true")

    async def measure(self, tenants: Sequence[tuple[DesiredStore, VectorPlacement]]) -> dict[str, VectorUsage]:
        usage: dict[str, VectorUsage] = {}
        shared = [(store, placement) for store, placement in tenants if placement.namespace]
        if shared:
            async with self.server.connect() as conn:
                # One grouped scan per shared table, and the size of each tenant's own partition.
                for table in sorted({placement.table for _, placement in shared}):
                    schema, name = table.split(".", 1)
                    try:
                        cursor = await conn.execute(sql.SQL("SELECT namespace, count(*) AS documents FROM {} "
                                                            "GROUP BY namespace").format(sql.Identifier(schema, name)))
                    except psycopg.errors.UndefinedTable:
                        continue  # an empty index dropped (keepEmpty: false) while we measured
                    counts = {row["namespace"]: int(row["documents"]) for row in await cursor.fetchall()}
                    for store, placement in shared:
                        if placement.table == table:
                            usage[store.tenant_id] = VectorUsage(documents=counts.get(placement.namespace, 0))
                cursor = await conn.execute("""
                    SELECT c.relname, pg_total_relation_size(c.oid) AS bytes FROM pg_class c
                      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)""",
                    (SHARED_SCHEMA, [partition_name(store) for store, _ in shared]))
                sizes = {row["relname"]: int(row["bytes"]) for row in await cursor.fetchall()}
                for store, _ in shared:
                    if store.tenant_id in usage:
                        usage[store.tenant_id] = dataclasses.replace(usage[store.tenant_id],
                                                                     storage_bytes=sizes.get(partition_name(store), 0))
        for store, placement in tenants:
            if not placement.namespace:  # dedicated: its bytes are in the tenant's schema or database already
                try:
                    usage[store.tenant_id] = VectorUsage(documents=await self.count(store, placement))
                except (psycopg.errors.UndefinedTable, BackendUnavailable):
                    continue  # being torn down (or its database is gone) while we measured: nothing to report
        return usage

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

    async def probe_isolation(self, store: DesiredStore, placement: VectorPlacement) -> str | None:
        if not placement.namespace:
            return None  # a dedicated table holds nobody else's rows
        schema, table = placement.table.split(".", 1)
        async with self.server.connect() as conn:
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(store.role)))
                row = await fetch_one(conn, sql.SQL("SELECT count(*) AS foreign_rows FROM {} WHERE namespace <> {}").format(
                    sql.Identifier(schema, table), sql.Literal(placement.namespace)))
        if row["foreign_rows"]:
            return f"{store.role} sees {row['foreign_rows']} rows of other namespaces in {placement.table}"
        return None

    async def count(self, store: DesiredStore, placement: VectorPlacement) -> int:
        database, table, where = self._data_target(store, placement)
        async with self.server.connect(database) as conn:
            row = await fetch_one(conn, sql.SQL("SELECT count(*) AS n FROM {} WHERE {}").format(table, where))
        return int(row["n"])

    async def read_batch(self, store: DesiredStore, placement: VectorPlacement, after_id: str | None,
                         limit: int) -> list[VectorRecord]:
        database, table, where = self._data_target(store, placement)
        query = sql.SQL("SELECT id, embedding::text AS embedding, metadata FROM {} WHERE {} AND id COLLATE \"C\" > %s "
                        "ORDER BY id COLLATE \"C\" LIMIT %s").format(table, where)
        async with self.server.connect(database) as conn:
            rows = await (await conn.execute(query, (after_id or "", limit))).fetchall()
        return [VectorRecord(id=row["id"], values=json.loads(row["embedding"]), metadata=row["metadata"] or {})
                for row in rows]

    async def write_batch(self, store: DesiredStore, placement: VectorPlacement,
                          records: Sequence[VectorRecord]) -> None:
        database, table, _ = self._data_target(store, placement)
        rows = [(record.id, json.dumps(record.values), json.dumps(record.metadata)) for record in records]
        async with self.server.connect(database) as conn:
            async with conn.transaction(), conn.cursor() as cursor:
                if placement.namespace:
                    await cursor.executemany(sql.SQL(
                        "INSERT INTO {} (namespace, id, embedding, metadata) VALUES ({}, %s, %s::vector, %s::jsonb) "
                        "ON CONFLICT (namespace, id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                        "metadata = EXCLUDED.metadata").format(table, sql.Literal(placement.namespace)), rows)
                else:
                    await cursor.executemany(sql.SQL(
                        "INSERT INTO {} (id, embedding, metadata) VALUES (%s, %s::vector, %s::jsonb) "
                        "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                        "metadata = EXCLUDED.metadata").format(table), rows)

    # --- teardown ---

    async def teardown(self, store: DesiredStore) -> list[Step]:
        if store.vector is VectorIsolation.DEDICATED:
            return await self._drop_dedicated(store)
        steps: list[Step] = []
        async with self.server.connect() as conn:
            async with conn.transaction():
                table = await self._current_shared_table(conn, store)
                if table is not None:
                    await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SHARED_SCHEMA, partition_name(store))))
                    steps.append(Step("NamespaceDropped", f"namespace {store.tenant_id} and its vectors removed from "
                                                          f"shared index {index_name_of(table)}"))
                for row in await (await conn.execute(
                        "SELECT tablename FROM pg_policies WHERE schemaname = %s AND policyname = %s",
                        (SHARED_SCHEMA, store.role))).fetchall():
                    await conn.execute(sql.SQL("DROP POLICY {} ON {}").format(
                        sql.Identifier(store.role), sql.Identifier(SHARED_SCHEMA, row["tablename"])))
                if table is not None and not store.shared_index_keep_empty:
                    steps += await self._drop_if_empty(conn, table)
        return steps

    async def _drop_if_empty(self, conn: psycopg.AsyncConnection[Any], table: str) -> list[Step]:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"tenantstore:placement:{table.split('_')[1]}:{table.split('_')[2]}",))
        if await fetch_one(conn, "SELECT 1 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
                                 "JOIN pg_namespace n ON n.oid = p.relnamespace WHERE n.nspname = %s AND p.relname = %s",
                           SHARED_SCHEMA, table):
            return []
        await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SHARED_SCHEMA, table)))
        return [Step("SharedIndexDropped", f"shared index {index_name_of(table)} was empty and the class does not "
                                           f"keep empty indexes")]

    async def _drop_dedicated(self, store: DesiredStore) -> list[Step]:
        """Its own table (a tier change back to a shared index; a full teardown drops the schema anyway)."""
        if store.database != self.server.shared_database:
            async with self.server.connect() as conn:
                if not await fetch_one(conn, "SELECT 1 FROM pg_database WHERE datname = %s", store.database):
                    return []  # its database is already gone, and the table with it
        async with self.server.connect(store.database) as conn:
            if not await self._dedicated_table_exists(conn, store):
                return []
            await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(store.schema, DEDICATED_TABLE)))
        return [Step("DedicatedIndexDropped", f"dedicated vector table {store.database}.{store.schema}."
                                              f"{DEDICATED_TABLE} dropped")]

    async def residue(self, store: DesiredStore) -> list[str]:
        left: list[str] = []
        async with self.server.connect() as conn:
            if (table := await self._current_shared_table(conn, store)) is not None:
                left.append(f"namespace {store.tenant_id} in shared index {index_name_of(table)}")
            if await fetch_one(conn, "SELECT 1 FROM pg_policies WHERE schemaname = %s AND policyname = %s",
                               SHARED_SCHEMA, store.role):
                left.append(f"row-level security policy {store.role}")
        return left


def index_name_of(table: str) -> str:
    return table.replace("_", "-")


def shared_table_number(table: str) -> int:
    """The n of shared_<dim>_<metric>_<n> (or of its index name shared-<dim>-<metric>-<n>)."""
    return int(table.replace("-", "_").rsplit("_", 1)[-1])
