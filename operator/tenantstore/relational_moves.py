"""Tier changes that move a tenant's relational data between a schema (in the shared database) and a
database of its own, with the discipline of vector moves (migration.py).

create the target → freeze the source (the tenant may read and delete, not write) → copy (pg_dump of the
source, loaded into the target as the tenant: tables, sequences with their values, views, functions) →
verify (the object list, every table's row count, a sample of rows) → the Secret and status switch to the
target → the source is dropped. status.relationalMigration records the step, so an operator killed
anywhere resumes: a copy is simply made again (the load is one transaction, and a loaded target is only
checked), a recorded switch goes on to the drop.

What cannot be moved is refused before anything changes (RelationalMigrationUnsupported): a database
tenant's objects outside its `public` schema (a schema tenant has only its one schema), and a table of the
tenant's own that has the name of the operator's dedicated vector table on the target side.
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from psycopg import sql

from tenantstore import export
from tenantstore.api import Phase
from tenantstore.backends import IoLogin, RelationalStore, Step, VectorPlacement
from tenantstore.backends.pgvector import DEDICATED_TABLE
from tenantstore.destinations import VolumeDirectory
from tenantstore.errors import RelationalMigrationUnsupported
from tenantstore.migration import MigrationVerificationFailed
from tenantstore.models import DesiredStore, ExportDestination, RelationalIsolation, VectorIsolation

COPYING, SOURCE_PENDING_DELETION = "Copying", "SourcePendingDeletion"
SAMPLE_ROWS = 100
# Where a move's dump waits between pg_dump and psql: a part of the export volume no namespace can name.
MOVES_AREA = ".moves"

Report = Callable[[dict[str, Any]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class RelationalMove:
    source: DesiredStore
    target: DesiredStore
    state: str

    def record(self, state: str) -> dict[str, Any]:
        return {"from": self.source.relational.value, "to": self.target.relational.value, "state": state}


def pending(store: DesiredStore, status: Mapping[str, Any]) -> RelationalMove | None:
    """The move this reconcile must make or finish; None when the data is where the tier wants it."""
    recorded = status.get("relationalMigration") or {}
    if recorded.get("state") == SOURCE_PENDING_DELETION and recorded.get("to") == store.relational.value:
        return RelationalMove(dataclasses.replace(store, relational=RelationalIsolation(recorded["from"])), store,
                              SOURCE_PENDING_DELETION)
    current = (status.get("isolation") or {}).get("relational")
    if not current or current == store.relational.value:
        return None
    return RelationalMove(dataclasses.replace(store, relational=RelationalIsolation(current)), store, COPYING)


def abandoned(store: DesiredStore, status: Mapping[str, Any]) -> DesiredStore | None:
    """A copy the spec turned back from (the tier changed again before the switch): its target, to drop."""
    recorded = status.get("relationalMigration") or {}
    if recorded.get("state") == COPYING and recorded.get("to") != store.relational.value:
        return dataclasses.replace(store, relational=RelationalIsolation(recorded["to"]))
    return None


def other_side(store: DesiredStore, status: Mapping[str, Any]) -> DesiredStore | None:
    """While a move is recorded, the side teardown would otherwise miss."""
    recorded = status.get("relationalMigration") or {}
    for side in (recorded.get("to"), recorded.get("from")):
        if side and side != store.relational.value:
            return dataclasses.replace(store, relational=RelationalIsolation(side))
    return None


def staging(export_dir: str, store: DesiredStore) -> VolumeDirectory:
    return VolumeDirectory(export_dir, MOVES_AREA, ExportDestination(store.uid))


def operator_table_of(store: DesiredStore, backend: str) -> str | None:
    """The operator's dedicated vector table a side has (or will have) inside the tenant's schema."""
    if store.vector is VectorIsolation.DEDICATED and backend == "pgvector":
        return f"{store.schema}.{DEDICATED_TABLE}"
    return None


async def check_movable(relational: RelationalStore, move: RelationalMove, source_vectors: VectorPlacement | None,
                        backend: str) -> None:
    """Before the target is made: RelationalMigrationUnsupported for what cannot be moved."""
    async with relational.io_login(move.source) as login:
        await refuse_unmovable(login, move, export.operator_table(move.source, source_vectors)
                               if source_vectors else None, operator_table_of(move.target, backend))


async def copy(relational: RelationalStore, move: RelationalMove, source_vectors: VectorPlacement | None,
               backend: str, export_dir: str, report: Report) -> list[Step]:
    """Freeze, copy and verify; the caller switches the Secret and status, then calls `finish`."""
    source_table = export.operator_table(move.source, source_vectors) if source_vectors else None
    target_table = operator_table_of(move.target, backend)
    await relational.ensure_write_access(dataclasses.replace(move.source, writes_allowed=False))
    await report({"phase": Phase.MIGRATING.value, "relationalMigration": move.record(COPYING)})
    directory = staging(export_dir, move.source)
    await directory.prepare()
    dumped = await export.dump_relational(move.source, source_vectors or VectorPlacement("", ""), relational,
                                          directory)
    loaded = await export.load_relational(move.target, relational, directory, dumped, excluded=target_table)
    await verify(relational, move, source_table, target_table)
    return [Step("RelationalDataCopied", f"{len(loaded)} tables ({sum(loaded.values())} rows), sequences, views "
                                         f"and functions copied from {describe(move.source)} to "
                                         f"{describe(move.target)} and verified")]


async def finish(relational: RelationalStore, move: RelationalMove, export_dir: str) -> list[Step]:
    steps = await relational.drop_data(move.source)
    shutil.rmtree(staging(export_dir, move.source).path, ignore_errors=True)
    return steps


def describe(store: DesiredStore) -> str:
    return f"schema {store.schema} of database {store.database}" \
        if store.relational is RelationalIsolation.SCHEMA else f"database {store.database}"


OBJECTS = """
    SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {}
    UNION ALL
    SELECT n.nspname, p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', 'function'
      FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                               WHERE d.objid = p.oid AND d.deptype = 'e')"""


async def object_rows(login: IoLogin, store: DesiredStore) -> list[tuple[str, str, str]]:
    """(schema, name, kind) of the tenant's tables, views, sequences and functions (not what extensions bring)."""
    where = sql.SQL("n.nspname = {}").format(sql.Literal(store.schema)) \
        if store.relational is RelationalIsolation.SCHEMA else \
        sql.SQL("n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'")
    async with export.connect_as(login) as conn:
        return list(await (await conn.execute(sql.SQL(OBJECTS).format(where, where))).fetchall())


async def objects(login: IoLogin, store: DesiredStore, excluded: str | None) -> set[tuple[str, str]]:
    """(kind, name) of the tenant's objects, schema left out, without the operator's vector table."""
    return {(kind, name) for schema, name, kind in await object_rows(login, store) if f"{schema}.{name}" != excluded}


async def refuse_unmovable(login: IoLogin, move: RelationalMove, source_table: str | None,
                           target_table: str | None) -> None:
    rows = await object_rows(login, move.source)
    others = sorted({schema for schema, _, _ in rows if schema != move.source.schema})
    if others and move.target.relational is RelationalIsolation.SCHEMA:
        raise RelationalMigrationUnsupported(
            f"the tenant's database has objects in schemas other than public ({', '.join(others[:5])}); a schema "
            f"tier holds one schema. The tenant keeps working as it is; move them to public, or revert spec.tier")
    clash = target_table and any(f"{move.target.schema}.{name}" == target_table and kind in ("r", "p", "v")
                                 and f"{schema}.{name}" != source_table for schema, name, kind in rows)
    if clash:
        raise RelationalMigrationUnsupported(
            f"the tenant has a table named {target_table.partition('.')[2]}, the name of the operator's vector "
            f"table in the new tier; rename it, or revert spec.tier")


async def verify(relational: RelationalStore, move: RelationalMove, source_table: str | None,
                 target_table: str | None) -> None:
    async with relational.io_login(move.source) as source:
        # One login acts as the tenant's one role on both sides; only the database differs.
        target = dataclasses.replace(source, database=move.target.database)
        await verify_between(source, move.source, source_table, target, move.target, target_table)


async def verify_between(source: IoLogin, source_store: DesiredStore, source_table: str | None,
                         target: IoLogin, target_store: DesiredStore, target_table: str | None) -> None:
    """The same objects on both sides (the operator's vector tables left out), and the same sample of each
    table's rows; MigrationVerificationFailed otherwise. Row counts were checked by the load."""
    before, after = await objects(source, source_store, source_table), await objects(target, target_store,
                                                                                    target_table)
    if before != after:
        raise MigrationVerificationFailed(f"the target's objects differ from the source's: missing "
                                          f"{sorted(before - after)[:5]}, unexpected {sorted(after - before)[:5]}")
    for name in await export.tenant_tables(source, source_store, source_table):
        table = name.partition(".")[2]
        if await sample(source, source_store.schema, table) != await sample(target, target_store.schema, table):
            raise MigrationVerificationFailed(f"a sample of rows of {table} differs between source and target")


async def sample(login: IoLogin, schema: str, table: str) -> list[str]:
    async with export.connect_as(login) as conn:
        await conn.execute("SET row_security = off")
        cursor = await conn.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY 1 LIMIT {}").format(
            sql.Identifier(schema, table), sql.Literal(SAMPLE_ROWS)))
        return [row[0] for row in await cursor.fetchall()]
