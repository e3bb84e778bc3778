"""The tenant's vectors in Postgres: its partition of a shared table (row-level security holds it to its
namespace) or its dedicated table, through a pool of connections that log in as the tenant.

The table and namespace come from the Secret and are written into every statement by this module; no method takes
them. A rotated password reaches new connections through the pool's conninfo callable.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore_client import checks, filters
from tenantstore_client import scopes as scoping
from tenantstore_client.closing import AsyncClosedOnExit, ClosedOnExit
from tenantstore_client.errors import InvalidRequest, ReadOnlyCredential, WritesBlocked
from tenantstore_client.scopes import Scopes
from tenantstore_client.secret import Coordinates, GlobalReader, SecretReader
from tenantstore_client.telemetry import SEARCH, UPDATE, operation
from tenantstore_client.types import Filter, Match, Vector

DISTANCE = {"cosine": "<=>", "euclidean": "<->", "dotproduct": "<#>"}


def score(metric: str, distance: float) -> float:
    """Pinecone's score from pgvector's distance: similarity, dot product, or squared distance."""
    if metric == "cosine":
        return 1.0 - distance
    if metric == "dotproduct":
        return -distance  # <#> is the negative inner product
    return distance * distance


class Statements:
    """The SQL for one tenant's table; identifiers through sql.Identifier, values as parameters."""

    def __init__(self, coordinates: Coordinates):
        schema, _, name = coordinates.table.partition(".")
        self.table = sql.Identifier(schema, name)
        self.namespace, self.metric = coordinates.namespace, coordinates.metric
        self.distance = sql.SQL(DISTANCE.get(coordinates.metric, "<=>"))

    def upsert(self) -> sql.Composable:
        # A write is a new write for retention: written_at moves with every upsert of an id.
        if self.namespace:
            return sql.SQL("INSERT INTO {} (namespace, id, embedding, metadata, written_at) "
                           "VALUES ({}, %s, %s, %s, now()) ON CONFLICT (namespace, id) DO UPDATE SET "
                           "embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata, "
                           "written_at = EXCLUDED.written_at").format(self.table, sql.Literal(self.namespace))
        return sql.SQL("INSERT INTO {} (id, embedding, metadata, written_at) VALUES (%s, %s, %s, now()) "
                       "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata, "
                       "written_at = EXCLUDED.written_at").format(self.table)

    @staticmethod
    def upsert_rows(records: Sequence[Vector], scope: str | None, tenant_id: str) -> list[tuple[str, str, Jsonb]]:
        return [(record.id, json.dumps([float(v) for v in record.values]),
                 Jsonb(scoping.stamped(record.metadata, scope, tenant_id))) for record in records]

    def query(self, vector: Sequence[float], top_k: int, filter: Filter | None,
              include_values: bool) -> tuple[sql.Composable, list[Any]]:
        text = json.dumps(list(vector))
        where = sql.SQL("WHERE {}").format(filters.to_sql(filter)) if filter else sql.SQL("")
        values = sql.SQL(", embedding::text AS embedding") if include_values else sql.SQL("")
        statement = sql.SQL("SELECT id, embedding {} %s AS distance, metadata{} FROM {} {} "
                            "ORDER BY embedding {} %s LIMIT %s").format(
            self.distance, values, self.table, where, self.distance)
        return statement, [text, text, top_k]

    def fetch(self) -> sql.Composable:
        return sql.SQL("SELECT id, embedding::text AS embedding, metadata FROM {} WHERE id = ANY(%s)").format(
            self.table)

    def delete(self, by_ids: bool, filter: Filter | None) -> sql.Composable:
        conditions = ([sql.SQL("id = ANY(%s)")] if by_ids else []) + ([filters.to_sql(filter)] if filter else [])
        return sql.SQL("DELETE FROM {} WHERE {}").format(self.table, sql.SQL(" AND ").join(conditions))

    def count(self) -> sql.Composable:
        return sql.SQL("SELECT count(*) AS vectors FROM {}").format(self.table)

    def matches(self, rows: Iterable[dict[str, Any]]) -> list[Match]:
        return [Match(id=row["id"], score=score(self.metric, row["distance"]),
                      metadata=scoping.visible(row["metadata"]), scope=scoping.scope_of(row["metadata"]),
                      values=json.loads(row["embedding"]) if "embedding" in row else None) for row in rows]

    @staticmethod
    def fetched(rows: Iterable[dict[str, Any]], scopes: Sequence[str], tenant_id: str) -> dict[str, Vector]:
        return {row["id"]: Vector(id=row["id"], values=json.loads(row["embedding"]),
                                  metadata=scoping.visible(row["metadata"]))
                for row in rows if scoping.in_scopes(row["metadata"], scopes, tenant_id)}


# With a filter the ANN index scan goes on until it has top_k rows that pass, in exact distance order.
ITERATIVE_SCAN = "SET LOCAL hnsw.iterative_scan = strict_order"


@contextlib.contextmanager
def refusals_explained(coordinates: Coordinates, upsert: bool) -> Iterator[None]:
    """Postgres's own refusals of a change, as the library's errors (the Secret may lag a Block by a minute).
    A quota Block refuses upserts only: a refused delete is reported as Postgres put it."""
    try:
        yield
    except psycopg.errors.ReadOnlySqlTransaction as error:
        raise ReadOnlyCredential(f"Postgres refused the change: this login is read-only ({error})") from error
    except psycopg.errors.InsufficientPrivilege as error:
        if coordinates.read_only:
            raise ReadOnlyCredential(f"Postgres refused the change: this credential is readOnly ({error})") from error
        if not upsert:
            raise
        raise WritesBlocked(f"Postgres refused the write: the tenant's writes are blocked while it is over a "
                            f"quota, or {coordinates.table} is not this login's to write ({error})") from error
    except psycopg.errors.DataException as error:
        raise InvalidRequest(f"Postgres refused the values: {error}") from error


class AsyncPgvectorStore(AsyncClosedOnExit):
    def __init__(self, reader: SecretReader | GlobalReader, pool_size: int = 4):
        self.reader = reader
        self.pool_size = pool_size
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
            self._conninfo, min_size=0, max_size=pool_size, open=False, kwargs={"autocommit": True,
                                                                                  "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection)
        self._global: AsyncPgvectorStore | None = None

    async def _conninfo(self) -> str:
        return (await self._coordinates()).uri

    async def _coordinates(self) -> Coordinates:
        if self.reader.stale:  # a file read: off the event loop
            return await asyncio.to_thread(self.reader.refresh)
        return self.reader.last_read

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        if self._global is not None:
            await self._global.close()
        await self.pool.close()

    async def upsert(self, vectors: Iterable[Vector], scope: str | None = None) -> int:
        coordinates = await self._coordinates()
        scoped = scoping.single(scope)
        with operation(UPDATE, coordinates, scoped) as span:
            checks.may_write(coordinates)
            records = checks.vectors(vectors, coordinates)
            if records:
                statements = Statements(coordinates)
                rows = statements.upsert_rows(records, scope, coordinates.tenant_id)
                with refusals_explained(coordinates, upsert=True):
                    async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                        await cursor.executemany(statements.upsert(), rows)
            span.wrote(len(records))
        return len(records)

    async def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                    include_values: bool = False, scope: Scopes = None) -> list[Match]:
        coordinates = await self._coordinates()
        scoped = scoping.listed(scope)
        with operation(SEARCH, coordinates, scoped) as span:
            floats = checks.values(vector, coordinates, "query vector")
            checks.top_k(top_k)
            filters.check(filter)
            where = scoping.confined(filter, scoped, coordinates.tenant_id)
            statements = Statements(coordinates)
            statement, params = statements.query(floats, top_k, where, include_values)
            async with self.pool.connection() as conn, conn.transaction():
                if where:
                    await conn.execute(ITERATIVE_SCAN)
                rows = await (await conn.execute(statement, params)).fetchall()
            span.found(len(rows))
        return statements.matches(rows)

    async def query_global(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                           include_values: bool = False) -> list[Match]:
        if self._global is None:
            self._global = AsyncPgvectorStore(GlobalReader(self.reader), max(1, self.pool_size // 2))
            await self._global.open()
        return await self._global.query(vector, top_k, filter, include_values)

    async def fetch(self, ids: Iterable[str], scope: Scopes = None) -> dict[str, Vector]:
        wanted = checks.ids(ids)
        coordinates = await self._coordinates()
        statements = Statements(coordinates)
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(statements.fetch(), [wanted])).fetchall()
        return statements.fetched(rows, scoping.listed(scope), coordinates.tenant_id)

    async def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None,
                     scope: Scopes = None) -> None:
        coordinates = await self._coordinates()
        scoped = scoping.listed(scope)
        with operation(UPDATE, coordinates, scoped):
            checks.may_change(coordinates)
            params = _delete_params(ids, filter)
            where = scoping.confined(filter, scoped, coordinates.tenant_id)
            with refusals_explained(coordinates, upsert=False):
                async with self.pool.connection() as conn:
                    await conn.execute(Statements(coordinates).delete(ids is not None, where), params)

    async def count(self) -> int:
        statements = Statements(await self._coordinates())
        async with self.pool.connection() as conn:
            row = await (await conn.execute(statements.count())).fetchone()
        return int(row["vectors"]) if row else 0


class PgvectorStore(ClosedOnExit):
    def __init__(self, reader: SecretReader | GlobalReader, pool_size: int = 4):
        self.reader = reader
        self.pool_size = pool_size
        self.pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            lambda: reader.current().uri, min_size=0, max_size=pool_size, open=False,
            kwargs={"autocommit": True, "row_factory": dict_row}, check=ConnectionPool.check_connection)
        self._global: PgvectorStore | None = None

    def open(self) -> None:
        self.pool.open()

    def close(self) -> None:
        if self._global is not None:
            self._global.close()
        self.pool.close()

    def upsert(self, vectors: Iterable[Vector], scope: str | None = None) -> int:
        coordinates = self.reader.current()
        scoped = scoping.single(scope)
        with operation(UPDATE, coordinates, scoped) as span:
            checks.may_write(coordinates)
            records = checks.vectors(vectors, coordinates)
            if records:
                statements = Statements(coordinates)
                rows = statements.upsert_rows(records, scope, coordinates.tenant_id)
                with refusals_explained(coordinates, upsert=True):
                    with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                        cursor.executemany(statements.upsert(), rows)
            span.wrote(len(records))
        return len(records)

    def query(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
              include_values: bool = False, scope: Scopes = None) -> list[Match]:
        coordinates = self.reader.current()
        scoped = scoping.listed(scope)
        with operation(SEARCH, coordinates, scoped) as span:
            floats = checks.values(vector, coordinates, "query vector")
            checks.top_k(top_k)
            filters.check(filter)
            where = scoping.confined(filter, scoped, coordinates.tenant_id)
            statements = Statements(coordinates)
            statement, params = statements.query(floats, top_k, where, include_values)
            with self.pool.connection() as conn, conn.transaction():
                if where:
                    conn.execute(ITERATIVE_SCAN)
                rows = conn.execute(statement, params).fetchall()
            span.found(len(rows))
        return statements.matches(rows)

    def query_global(self, vector: Sequence[float], top_k: int = 10, filter: Filter | None = None,
                     include_values: bool = False) -> list[Match]:
        if self._global is None:
            self._global = PgvectorStore(GlobalReader(self.reader), max(1, self.pool_size // 2))
            self._global.open()
        return self._global.query(vector, top_k, filter, include_values)

    def fetch(self, ids: Iterable[str], scope: Scopes = None) -> dict[str, Vector]:
        wanted = checks.ids(ids)
        coordinates = self.reader.current()
        statements = Statements(coordinates)
        with self.pool.connection() as conn:
            rows = conn.execute(statements.fetch(), [wanted]).fetchall()
        return statements.fetched(rows, scoping.listed(scope), coordinates.tenant_id)

    def delete(self, ids: Iterable[str] | None = None, filter: Filter | None = None, scope: Scopes = None) -> None:
        coordinates = self.reader.current()
        scoped = scoping.listed(scope)
        with operation(UPDATE, coordinates, scoped):
            checks.may_change(coordinates)
            params = _delete_params(ids, filter)
            where = scoping.confined(filter, scoped, coordinates.tenant_id)
            with refusals_explained(coordinates, upsert=False):
                with self.pool.connection() as conn:
                    conn.execute(Statements(coordinates).delete(ids is not None, where), params)

    def count(self) -> int:
        statements = Statements(self.reader.current())
        with self.pool.connection() as conn:
            row = conn.execute(statements.count()).fetchone()
        return int(row["vectors"]) if row else 0


def _delete_params(ids: Iterable[str] | None, filter: Filter | None) -> list[Any]:
    if (ids is None) == (filter is None):
        raise InvalidRequest("delete takes ids or a filter (one of them)")
    if filter is not None:
        filters.check(filter)
        return []
    return [checks.ids(ids)]
