"""Export a tenant and restore it into a fresh one: every row and vector identical, for both vector backends.

Real PostgreSQL 18 with pg_dump and psql, the local Pinecone through the SDK; exports go to a directory.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import psycopg
import pytest
from vector_kit import fresh_dimension, records, tenant

from tenantstore import destinations, export, migration, settings
from tenantstore.backends import VectorStore
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.destinations import VolumeDirectory
from tenantstore.errors import DestinationRefused, RestoreFailed
from tenantstore.models import ExportDestination, RelationalIsolation, VectorIsolation
from tenantstore_dev.postgres import bin_dir

PASSWORD = "tenant-pw-1"


@pytest.fixture(autouse=True)
def client_tools() -> None:
    before = settings.current()
    settings.configure(dataclasses.replace(before, pg_bin_dir=str(bin_dir())))
    yield
    settings.configure(before)


def tenant_uri(server: PostgresServer, relational, password: str = PASSWORD) -> str:
    return f"postgresql://{relational.role}:{password}@{server.host}:{server.port}/{relational.database}"


def fill_relational(uri: str, schema: str) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.notes (id serial PRIMARY KEY, body text NOT NULL, tags jsonb)")
        conn.execute(f"INSERT INTO {schema}.notes (body, tags) SELECT 'note ' || g || E'\\t{schema}.x\\n', "
                     f"jsonb_build_object('g', g) FROM generate_series(1, 250) g")
        conn.execute(f"CREATE SEQUENCE {schema}.tickets START 1000")
        conn.execute(f"SELECT nextval('{schema}.tickets') FROM generate_series(1, 7)")
        conn.execute(f"CREATE VIEW {schema}.recent AS SELECT id, body FROM {schema}.notes WHERE id > 200")
        conn.execute(f"CREATE FUNCTION {schema}.note_count() RETURNS bigint LANGUAGE sql "
                     f"AS 'SELECT count(*) FROM {schema}.notes'")


def read_relational(uri: str, schema: str) -> dict[str, object]:
    with psycopg.connect(uri, autocommit=True) as conn:
        return {"notes": conn.execute(f"SELECT id, body, tags FROM {schema}.notes ORDER BY id").fetchall(),
                "sequence": conn.execute(f"SELECT last_value FROM {schema}.tickets").fetchone(),
                "view": conn.execute(f"SELECT count(*) FROM {schema}.recent").fetchone(),
                "function": conn.execute(f"SELECT {schema}.note_count()").fetchone()}


async def all_vectors(vectors: VectorStore, store, placement) -> list:
    found, after = [], None
    while batch := await vectors.read_batch(store, placement, after, 500):
        found += batch
        after = batch[-1].id
    return found


async def round_trip(server: PostgresServer, vectors: VectorStore, tmp_path: Path, source_isolation, target_isolation,
                     vector_isolation: VectorIsolation) -> None:
    dimension = fresh_dimension()
    relational = PostgresRelationalStore(server)
    source = dataclasses.replace(tenant("src", dimension, vector_isolation), relational=source_isolation)
    target = dataclasses.replace(tenant("dst", dimension, vector_isolation), relational=target_isolation)
    source_rel, _ = await relational.ensure(source, PASSWORD, True)
    source_vec, _ = await vectors.ensure(source)
    fill_relational(tenant_uri(server, source_rel), source.schema)
    written = records("v", 1234, dimension)
    await vectors.write_batch(source, source_vec, written)
    await migration.settled_count(vectors, source, source_vec, len(written))

    destination = VolumeDirectory(tmp_path, "team-a", ExportDestination("exports/src"))
    reported: list[dict] = []

    async def report(progress: export.ExportProgress) -> None:
        reported.append(progress.to_status())

    manifest = await export.export_tenant(source, source_vec, relational, vectors, destination,
                                          export.ExportProgress(), report)
    assert manifest["vectors"]["count"] == 1234 and len(manifest["vectors"]["files"]) == 1
    assert manifest["relational"]["tables"] == {f"{source.schema}.notes": 250}
    assert reported[-1]["vectors"] == 1234
    # Only the operator reads the export volume.
    assert all(oct(path.stat().st_mode & 0o777) in ("0o600", "0o700") for path in (tmp_path / "team-a").rglob("*"))
    async with server.connect() as conn:  # the temporary login the export ran as is gone
        assert await (await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (source.io_role,))).fetchone() \
            is None

    target_rel, _ = await relational.ensure(target, PASSWORD, True)
    target_vec, _ = await vectors.ensure(target)
    restored = await export.restore_tenant(target, target_vec, relational, vectors, destination)
    assert (restored.tables, restored.rows, restored.vectors) == (1, 250, 1234)
    source_rows = read_relational(tenant_uri(server, source_rel), source.schema)
    target_rows = read_relational(tenant_uri(server, target_rel), target.schema)
    # Data that merely mentions the old schema's name is left as it was.
    assert target_rows == source_rows
    assert await all_vectors(vectors, target, target_vec) == await all_vectors(vectors, source, source_vec)
    # Restoring again (an operator restarted after loading) changes nothing and still verifies.
    assert await export.restore_tenant(target, target_vec, relational, vectors, destination) == restored
    for store in (source, target):
        await vectors.teardown(store)
        await relational.teardown(store)
        assert await relational.residue(store) == []


@pytest.mark.parametrize(("source_isolation", "target_isolation", "vector_isolation"), [
    (RelationalIsolation.SCHEMA, RelationalIsolation.SCHEMA, VectorIsolation.NAMESPACE),
    (RelationalIsolation.DATABASE, RelationalIsolation.DATABASE, VectorIsolation.DEDICATED),
    (RelationalIsolation.SCHEMA, RelationalIsolation.DATABASE, VectorIsolation.NAMESPACE),
    (RelationalIsolation.DATABASE, RelationalIsolation.SCHEMA, VectorIsolation.DEDICATED),
])
async def test_pgvector_export_restores_identically(pg: PostgresServer, tmp_path: Path, source_isolation,
                                                    target_isolation, vector_isolation) -> None:
    await round_trip(pg, PgvectorStore(pg), tmp_path, source_isolation, target_isolation, vector_isolation)


async def test_pinecone_export_restores_identically(pg: PostgresServer, pinecone_store, tmp_path: Path) -> None:
    await round_trip(pg, pinecone_store, tmp_path, RelationalIsolation.SCHEMA, RelationalIsolation.SCHEMA,
                     VectorIsolation.NAMESPACE)


async def test_an_export_resumes_after_the_last_file_it_recorded(pg: PostgresServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "VECTORS_PER_FILE", 100)
    dimension = fresh_dimension()
    relational, vectors = PostgresRelationalStore(pg), PgvectorStore(pg)
    store = tenant("resume", dimension)
    await relational.ensure(store, PASSWORD, True)
    placement, _ = await vectors.ensure(store)
    await vectors.write_batch(store, placement, records("r", 350, dimension))
    destination = VolumeDirectory(tmp_path, "ns", ExportDestination("resume"))
    recorded: list[export.ExportProgress] = []

    class Crash(Exception):
        pass

    async def crash_after_two_files(progress: export.ExportProgress) -> None:
        recorded.append(export.ExportProgress.from_status(json.loads(json.dumps(progress.to_status()))))
        if len(progress.vector_files) == 2:
            raise Crash

    with pytest.raises(Crash):
        await export.export_tenant(store, placement, relational, vectors, destination, export.ExportProgress(),
                                   crash_after_two_files)
    resumed = recorded[-1]
    read_ids: list[str | None] = []
    original_read = vectors.read_batch

    async def counting_read(store_, placement_, after_id, limit):
        read_ids.append(after_id)
        return await original_read(store_, placement_, after_id, limit)

    monkeypatch.setattr(vectors, "read_batch", counting_read)

    async def report(progress: export.ExportProgress) -> None:
        pass

    manifest = await export.export_tenant(store, placement, relational, vectors, destination, resumed, report)
    assert read_ids[0] == "r-199"  # not from the start
    assert manifest["vectors"]["count"] == 350 and len(manifest["vectors"]["files"]) == 4
    await vectors.teardown(store)
    await relational.teardown(store)


async def test_a_tampered_export_is_refused_and_runs_nothing(pg: PostgresServer, tmp_path: Path) -> None:
    """An export edited by hand: a checksum mismatch is refused; even a consistent forgery (manifest rewritten)
    runs as the tenant, in psql's restricted mode: no shell command, no admin rights."""
    dimension = fresh_dimension()
    relational, vectors = PostgresRelationalStore(pg), PgvectorStore(pg)
    source, target = tenant("tamper-src", dimension), tenant("tamper-dst", dimension)
    source_rel, _ = await relational.ensure(source, PASSWORD, True)
    source_vec, _ = await vectors.ensure(source)
    fill_relational(tenant_uri(pg, source_rel), source.schema)
    directory = VolumeDirectory(tmp_path, "ns", ExportDestination("tampered"))
    manifest = await export.export_tenant(source, source_vec, relational, vectors, directory,
                                          export.ExportProgress(), lambda progress: _nothing())
    dump = directory.path / export.RELATIONAL_FILE
    marker = tmp_path / "pwned"
    dump.write_text(dump.read_text() + f"\n\\! touch {marker}\nCREATE ROLE intruder SUPERUSER;\n")
    target_rel, _ = await relational.ensure(target, PASSWORD, True)
    target_vec, _ = await vectors.ensure(target)
    with pytest.raises(RestoreFailed, match="not the file the manifest describes"):
        await export.restore_tenant(target, target_vec, relational, vectors, directory)

    found = await directory.digest(export.RELATIONAL_FILE)  # a forger rewrites the manifest too
    manifest["relational"].update(bytes=found.bytes, sha256=found.sha256)
    await directory.write_json(export.MANIFEST, manifest)
    with pytest.raises(RestoreFailed, match="restricted"):
        await export.restore_tenant(target, target_vec, relational, vectors, directory)
    assert not marker.exists()
    async with pg.connect(target.database) as conn:  # nothing of the file was kept
        assert await (await conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s",
                                         (target.schema,))).fetchone() is None
    async with pg.connect() as conn:
        assert await (await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'intruder'")).fetchone() is None
    for store in (source, target):
        await vectors.teardown(store)
        await relational.teardown(store)


async def _nothing() -> None:
    return None


async def test_an_export_to_s3_restores_identically(pg: PostgresServer, s3_server, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """SeaweedFS's S3 API, through the operator's own SigV4 client; files bigger than a part go multipart."""
    monkeypatch.setattr(destinations, "PART_BYTES", 5 << 20)  # S3's smallest part: the dump spans several
    dimension = fresh_dimension()
    relational, vectors = PostgresRelationalStore(pg), PgvectorStore(pg)
    source, target = tenant("s3-src", dimension), tenant("s3-dst", dimension)
    source_rel, _ = await relational.ensure(source, PASSWORD, True)
    source_vec, _ = await vectors.ensure(source)
    fill_relational(tenant_uri(pg, source_rel), source.schema)
    with psycopg.connect(tenant_uri(pg, source_rel), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {source.schema}.blobs AS SELECT g AS id, md5(g::text) || repeat('x', 400) AS body "
                     f"FROM generate_series(1, 40000) g")
    await vectors.write_batch(source, source_vec, records("v", 300, dimension))
    location = {"endpoint": s3_server.endpoint, "bucket": s3_server.bucket, "prefix": f"team-a/{source.tenant_id}",
                "credentialsSecret": {"name": "s3"}}
    destination = ExportDestination.from_dict({"s3": location}, "destination")
    credentials = {"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key}

    async def read_secret(namespace: str, name: str):
        return credentials if (namespace, name) == ("team-a", "s3") else None

    async def report(progress: export.ExportProgress) -> None:
        pass

    async with destinations.opened(destination, "team-a", str(tmp_path), read_secret) as bucket:
        manifest = await export.export_tenant(source, source_vec, relational, vectors, bucket,
                                              export.ExportProgress(), report)
        assert manifest["relational"]["bytes"] > 3 * (5 << 20)
    target_rel, _ = await relational.ensure(target, PASSWORD, True)
    target_vec, _ = await vectors.ensure(target)
    async with destinations.opened(destination, "team-a", str(tmp_path), read_secret) as bucket:
        restored = await export.restore_tenant(target, target_vec, relational, vectors, bucket)
    assert (restored.tables, restored.vectors) == (2, 300)
    assert read_relational(tenant_uri(pg, target_rel), target.schema) == \
        read_relational(tenant_uri(pg, source_rel), source.schema)
    assert await all_vectors(vectors, target, target_vec) == await all_vectors(vectors, source, source_vec)

    credentials["secretAccessKey"] = "not-the-key"
    with pytest.raises(DestinationRefused):
        async with destinations.opened(destination, "team-a", str(tmp_path), read_secret) as bucket:
            await bucket.prepare()
    for store in (source, target):
        await vectors.teardown(store)
        await relational.teardown(store)
