"""A tenant's data written out (export) and loaded into a new tenant (restore).

An export is a directory:
  relational.sql          pg_dump's plain SQL of the tenant's schema (or database, without the operator's
                          vector table): tables, sequences with their values, views, functions; no owners or
                          grants. Taken in one snapshot; `psql` loads it.
  vectors-NNNNNN.jsonl    the vectors in id order, one JSON object per line: id, values, metadata.
  manifest.json           written last: the tenant, the row count of every table, the vector count, and the
                          size and sha256 of every file.

Both directions run as the tenant (a temporary login that can only act as the tenant's role), never as the
admin: a tenant's functions, views and dump file can do nothing the tenant could not do itself. psql runs
in restricted mode under a key made for the run, so a dump file edited by hand cannot run meta-commands.
An export resumes after a crash from the last vector file it recorded; a restore is idempotent (tables are
loaded in one transaction, vectors are upserts) and verified against the manifest.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenantstore import conditions, migration, pgclient
from tenantstore.backends import IoLogin, RelationalStore, VectorPlacement, VectorRecord, VectorStore
from tenantstore.destinations import Destination, lines_of
from tenantstore.errors import BackendUnavailable, ClientToolFailed, ExportFailed, RestoreFailed, RestoreImpossible
from tenantstore.redaction import redact
from tenantstore.models import DesiredStore, RelationalIsolation

FORMAT = 1
MANIFEST = "manifest.json"
RELATIONAL_FILE = "relational.sql"
VECTORS_PER_FILE = 10_000
READ_BATCH = 1_000
WRITE_BATCH = 500
MAX_ID_LENGTH = 512

Report = Callable[["ExportProgress"], Awaitable[None]]


@dataclasses.dataclass
class ExportProgress:
    """What an export has written so far (a TenantStoreExport's status.progress): a restart resumes from it."""

    relational: dict[str, Any] | None = None
    vector_files: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> ExportProgress:
        raw = raw or {}
        return cls(relational=raw.get("relational"), vector_files=list(raw.get("vectorFiles") or ()))

    def to_status(self) -> dict[str, Any]:
        return {"relational": self.relational, "vectorFiles": self.vector_files,
                "vectors": sum(part["records"] for part in self.vector_files)}


# --- export ---

async def export_tenant(store: DesiredStore, placement: VectorPlacement, relational: RelationalStore,
                        vectors: VectorStore, target: Destination, progress: ExportProgress,
                        report: Report) -> dict[str, Any]:
    """Write (or finish writing) the export, then read every file back and check it against the manifest."""
    try:
        return await _export(store, placement, relational, vectors, target, progress, report)
    except OSError as error:  # the volume: full, read-only, a file where a directory should be
        raise ExportFailed(f"{target}: {error.strerror or type(error).__name__}") from None


async def _export(store: DesiredStore, placement: VectorPlacement, relational: RelationalStore,
                  vectors: VectorStore, target: Destination, progress: ExportProgress,
                  report: Report) -> dict[str, Any]:
    await target.prepare()
    if progress.relational is None:
        progress.relational = await dump_relational(store, placement, relational, target)
        await report(progress)
    after = progress.vector_files[-1]["lastId"] if progress.vector_files else None
    while batch := await vectors.read_batch(store, placement, after, min(READ_BATCH, VECTORS_PER_FILE)):
        # A file streams batch by batch: memory holds one batch, not a file's worth of vectors.
        part = VectorFile(vectors, store, placement, batch)
        digest = await target.write(f"vectors-{len(progress.vector_files) + 1:06d}.jsonl", part.lines())
        after = part.last_id
        progress.vector_files.append({**digest.to_dict(), "records": part.records, "lastId": after})
        await report(progress)
        if part.records < VECTORS_PER_FILE:
            break
    manifest = {
        "format": FORMAT,
        "tenantId": store.tenant_id,
        "tenantStore": store.tenant_store,
        "uid": store.uid,
        "exportedAt": conditions.now_rfc3339(),
        "relational": progress.relational,
        "vectors": {"backend": placement.backend, "dimension": store.dimension, "metric": store.metric.value,
                    "count": sum(part["records"] for part in progress.vector_files),
                    "files": progress.vector_files},
    }
    await target.write_json(MANIFEST, manifest)
    await verify_files(target, manifest)
    return manifest


async def dump_relational(store: DesiredStore, placement: VectorPlacement, relational: RelationalStore,
                          target: Destination) -> dict[str, Any]:
    excluded = operator_table(store, placement)
    async with relational.io_login(store) as login, connect_as(login) as conn:
        # One snapshot for the row counts and the dump, shared with pg_dump; it never blocks the tenant.
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = (await (await conn.execute("SELECT pg_catalog.pg_export_snapshot()")).fetchone())[0]
        tables = await table_rows(conn, store, excluded)
        arguments = ["--no-owner", "--no-privileges", "--no-publications", "--no-subscriptions",
                     "--no-security-labels", "--no-tablespaces", "--exclude-extension=*", f"--snapshot={snapshot}"]
        if store.relational is RelationalIsolation.SCHEMA:
            arguments += ["--schema", store.schema]
        if excluded:
            arguments += ["--exclude-table", excluded]
        try:
            digest = await target.write(RELATIONAL_FILE, pgclient.stream_output("pg_dump", arguments,
                                                                                login.environment()))
        except ClientToolFailed as error:
            raise ExportFailed(str(error)) from None
        await conn.rollback()
    return {**digest.to_dict(), "isolation": store.relational.value, "schema": store.schema, "tables": tables}


def operator_table(store: DesiredStore, placement: VectorPlacement) -> str | None:
    """The operator's dedicated vector table inside the tenant's schema, exported as vectors, not as SQL."""
    return placement.table if placement.table and not placement.namespace else None


async def table_rows(conn: psycopg.AsyncConnection[Any], store: DesiredStore, excluded: str | None) -> dict[str, int]:
    """Rows per table the tenant has (schema.table), as the tenant sees them."""
    await conn.execute("SET LOCAL row_security = off")  # a policy the tenant set would be an error, never a filter
    schemas = [store.schema] if store.relational is RelationalIsolation.SCHEMA else None
    cursor = await conn.execute("""
        SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND (n.nspname = ANY(%s) OR %s::text[] IS NULL AND n.nspname <> 'information_schema'
               AND n.nspname NOT LIKE 'pg\\_%%')
         ORDER BY 1, 2""", (schemas, schemas))
    rows: dict[str, int] = {}
    for schema, table in await cursor.fetchall():
        name = f"{schema}.{table}"
        if name == excluded:
            continue
        counted = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
        rows[name] = int((await counted.fetchone())[0])
    return rows


@contextlib.asynccontextmanager
async def connect_as(login: IoLogin) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A session of the temporary login, acting as the tenant; a refused connection is an outage to retry."""
    refused: BackendUnavailable | None = None
    try:
        async with await psycopg.AsyncConnection.connect(conninfo(login)) as conn:
            yield conn
    except psycopg.OperationalError as error:
        refused = BackendUnavailable(redact(f"Postgres at {login.host}:{login.port}: "
                                            f"{str(error).strip().splitlines()[0]}", [login.password]))
    if refused is not None:
        raise refused


def conninfo(login: IoLogin) -> str:
    return make_conninfo(host=login.host, port=login.port, user=login.user, password=login.password,
                         dbname=login.database, options=f"-c role={login.role}", connect_timeout=10,
                         application_name="tenantstore-operator-io")


class VectorFile:
    """One vectors-NNNNNN.jsonl: up to VECTORS_PER_FILE records in id order, read as they are written."""

    def __init__(self, vectors: VectorStore, store: DesiredStore, placement: VectorPlacement,
                 first: list[VectorRecord]):
        self.vectors, self.store, self.placement = vectors, store, placement
        self.first = first
        self.records = 0
        self.last_id = first[-1].id

    async def lines(self) -> AsyncIterator[bytes]:
        batch = self.first
        while batch:
            self.records += len(batch)
            self.last_id = batch[-1].id
            yield jsonl(batch)
            room = VECTORS_PER_FILE - self.records
            batch = await self.vectors.read_batch(self.store, self.placement, self.last_id,
                                                  min(READ_BATCH, room)) if room else []


def jsonl(records: Sequence[VectorRecord]) -> bytes:
    return b"".join(json.dumps({"id": record.id, "values": record.values, "metadata": record.metadata},
                               separators=(",", ":")).encode() + b"\n" for record in records)


async def verify_files(directory: Destination, manifest: Mapping[str, Any]) -> None:
    """Every file the manifest lists is there, whole: the same size and sha256, the same number of vectors."""
    listed: list[Mapping[str, Any]] = [manifest["relational"], *manifest["vectors"]["files"]]
    for entry in listed:
        if not await directory.exists(entry["name"]):
            raise ExportFailed(f"{directory}: {entry['name']} is missing")
        found = await directory.digest(entry["name"])
        if (found.bytes, found.sha256) != (entry["bytes"], entry["sha256"]):
            raise ExportFailed(f"{directory}: {entry['name']} is not the file the manifest describes "
                               f"({found.bytes} bytes, sha256 {found.sha256[:12]}…)")
    if sum(entry["records"] for entry in manifest["vectors"]["files"]) != manifest["vectors"]["count"]:
        raise ExportFailed(f"{directory}: the vector files do not add up to the manifest's count")


# --- restore ---

@dataclasses.dataclass(frozen=True)
class Restored:
    source: str
    tables: int
    rows: int
    vectors: int

    def to_status(self) -> dict[str, Any]:
        return {"source": self.source, "tables": self.tables, "rows": self.rows, "vectors": self.vectors,
                "completedAt": conditions.now_rfc3339()}


async def read_manifest(source: Destination) -> dict[str, Any]:
    if not await source.exists(MANIFEST):
        raise RestoreFailed(f"{source} holds no complete export (no {MANIFEST})")
    try:
        manifest = await source.read_json(MANIFEST)
        if manifest.get("format") != FORMAT:
            raise RestoreFailed(f"{source}: export format {manifest.get('format')!r} is not {FORMAT}")
        await verify_files(source, manifest)
    except ExportFailed as error:
        raise RestoreFailed(str(error)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RestoreFailed(f"{source}: the manifest cannot be read ({type(error).__name__})") from None
    return manifest


async def restore_tenant(store: DesiredStore, placement: VectorPlacement, relational: RelationalStore,
                         vectors: VectorStore, source: Destination) -> Restored:
    """Load the export into the tenant (idempotent), then check tables, rows and vectors against the manifest."""
    try:
        return await _restore(store, placement, relational, vectors, source)
    except OSError as error:
        raise RestoreFailed(f"{source}: {error.strerror or type(error).__name__}") from None


async def _restore(store: DesiredStore, placement: VectorPlacement, relational: RelationalStore,
                   vectors: VectorStore, source: Destination) -> Restored:
    manifest = await read_manifest(source)
    exported = manifest["vectors"]
    if (exported["dimension"], exported["metric"]) != (store.dimension, store.metric.value):
        raise RestoreImpossible(f"{source} holds {exported['dimension']}-dimensional {exported['metric']} vectors; the "
                            f"tenant's are {store.dimension}-dimensional {store.metric.value}")
    wanted = await load_relational(store, relational, source, manifest["relational"],
                                   excluded=operator_table(store, placement))
    for entry in exported["files"]:
        batch: list[VectorRecord] = []
        async for line in lines_of(source.read(entry["name"])):
            batch.append(parse_record(line, store.dimension, entry["name"]))
            if len(batch) == WRITE_BATCH:
                await vectors.write_batch(store, placement, batch)
                batch = []
        if batch:
            await vectors.write_batch(store, placement, batch)
    count = await migration.settled_count(vectors, store, placement, exported["count"])
    if count != exported["count"]:
        raise RestoreFailed(f"the tenant holds {count} vectors after the restore, the export {exported['count']}")
    return Restored(str(source), len(wanted), sum(wanted.values()), exported["count"])


async def load_relational(store: DesiredStore, relational: RelationalStore, source: Destination,
                          exported: Mapping[str, Any], excluded: str | None) -> dict[str, int]:
    """Load relational.sql into the tenant's (empty) schema or database, as the tenant, in one transaction;
    then its tables and row counts must be the exported ones. Loaded already (a rerun): only checked."""
    source_schema = exported["schema"]
    wanted = {retarget_name(name, source_schema, store.schema): rows for name, rows in exported["tables"].items()}
    async with relational.io_login(store) as login:
        found = await tenant_tables(login, store, excluded)
        if found != wanted:
            if found:
                raise RestoreImpossible(f"the tenant already has tables ({', '.join(sorted(found)[:5])}) that are "
                                        f"not the export's: a restore only loads into an empty store")
            key = secrets.token_urlsafe(32)
            try:
                await pgclient.feed_input(
                    "psql", ["--no-psqlrc", "--quiet", "--single-transaction", "--set", "ON_ERROR_STOP=1",
                             "--file", "-"], login.environment(),
                    retargeted(lines_of(source.read(RELATIONAL_FILE)), source_schema, store.schema, key))
            except ClientToolFailed as error:
                raise RestoreFailed(f"{RELATIONAL_FILE} of {source} did not load (nothing of it was kept): "
                                    f"{error}") from None
            found = await tenant_tables(login, store, excluded)
            if found != wanted:
                raise RestoreFailed(f"after loading {RELATIONAL_FILE}, the tenant's tables and rows differ from the "
                                    f"export's: {describe_difference(wanted, found)}")
    return wanted


async def tenant_tables(login: IoLogin, store: DesiredStore, excluded: str | None) -> dict[str, int]:
    async with connect_as(login) as conn:
        return await table_rows(conn, store, excluded)


def parse_record(line: bytes, dimension: int, file: str) -> VectorRecord:
    try:
        raw = json.loads(line)
        record = VectorRecord(id=raw["id"], values=[float(value) for value in raw["values"]],
                              metadata=raw.get("metadata") or {})
        valid = isinstance(record.id, str) and 0 < len(record.id) <= MAX_ID_LENGTH \
            and len(record.values) == dimension and isinstance(record.metadata, dict)
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise RestoreImpossible(f"{file} holds a line that is not a {dimension}-dimensional vector record")
    return record


def retarget_name(name: str, source_schema: str, target_schema: str) -> str:
    schema, _, table = name.partition(".")
    return f"{target_schema}.{table}" if schema == source_schema else name


COPY_START = re.compile(rb"^COPY .* FROM stdin;\n$")


async def retargeted(lines: AsyncIterator[bytes], source_schema: str, target_schema: str,
                     key: str) -> AsyncIterator[bytes]:
    """The dump, for psql, into the tenant's own schema: names qualified with the exported schema are
    qualified with the tenant's (outside COPY data), the exported schema is not created again, and psql is
    restricted from the first line under a key only this run knows (meta-commands in the file are refused)."""
    qualified = re.compile(rb"(?<![\w$\".])" + re.escape(source_schema.encode()) + rb"\.")
    create_schema = f"CREATE SCHEMA {source_schema};\n".encode()
    yield f"\\restrict {key}\n".encode()
    in_copy = False
    async for line in lines:
        if in_copy:
            in_copy = line != b"\\.\n"
            yield line
            continue
        if line.startswith((b"\\restrict", b"\\unrestrict")) or line == create_schema:
            continue  # the dump's own key is not ours; the tenant's schema exists already
        if source_schema != target_schema:
            line = qualified.sub(target_schema.encode() + b".", line)
        in_copy = bool(COPY_START.match(line))
        yield line


def describe_difference(wanted: Mapping[str, int], found: Mapping[str, int]) -> str:
    missing = sorted(set(wanted) - set(found))
    different = sorted(name for name in set(wanted) & set(found) if wanted[name] != found[name])
    return "; ".join(part for part in (
        f"missing {', '.join(missing[:5])}" if missing else "",
        ", ".join(f"{name} has {found[name]} rows, not {wanted[name]}" for name in different[:5])) if part) \
        or "different tables"
