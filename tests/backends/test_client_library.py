"""The client library (client/tenantstore_client) against both backends, with one contract: pgvector on the
embedded Postgres, Pinecone through the SDK on the local API server, each for a namespace in a shared index and
for a dedicated index, through the sync and the async API.

Each tenant is provisioned by the operator's own backends and its Secret built by the operator's own
`secret_data`, so the library reads exactly what a mounted Secret holds.
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import tenantstore_client as ts
from pinecone_server import PineconeTestServer
from psycopg import sql
from vector_kit import FAST_RETRIES, PASSWORD, SETTINGS, tenant

from tenantstore.backends import VectorStore
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.pinecone import PineconeClient, PineconeStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import DesiredStore, Metric, TenantStoreSpec, VectorIsolation
from tenantstore.reconcile import secret_data

DIMENSION = 4
# Eight documents on distinct directions, with metadata the filters below pick from.
DOCUMENTS = [ts.Vector(f"doc-{i}", [1.0, i / 8, (i % 3) / 3, 0.25],
                       {"lang": "en" if i % 2 == 0 else "de", "year": 2020 + i, "tags": ["a", "b"] if i < 3 else ["c"],
                        **({"draft": True} if i == 7 else {})})
             for i in range(8)]
QUERY = [1.0, 0.0, 0.0, 0.25]


def by_cosine(query: list[float], documents: list[ts.Vector]) -> list[str]:
    """The exact nearest-first order, computed here: the oracle both backends are held to."""
    def similarity(values: Any) -> float:
        dot = sum(a * b for a, b in zip(query, values))
        return dot / (math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in values)))
    return [d.id for d in sorted(documents, key=lambda d: -similarity(d.values))]


class Client:
    """One shape for both APIs: the sync store is driven from a thread, as a sync application would call it."""

    def __init__(self, store: Any, is_async: bool):
        self.store, self.is_async = store, is_async

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.store, name)
        if self.is_async:
            return method
        return lambda *args, **kwargs: asyncio.to_thread(method, *args, **kwargs)


@dataclasses.dataclass
class Tenant:
    store: DesiredStore
    secret: dict[str, str]
    backend: str
    pinecone: PineconeTestServer | None = None


class World:
    """Provisions tenants on one backend and opens clients from their Secrets."""

    def __init__(self, backend: str, pg: PostgresServer, vectors: VectorStore, is_async: bool,
                 pinecone: PineconeTestServer | None):
        self.backend, self.pg, self.vectors, self.is_async, self.pinecone = backend, pg, vectors, is_async, pinecone
        self.dimension = DIMENSION
        self.opened: list[Client] = []
        self.tenants: list[DesiredStore] = []

    async def tenant(self, prefix: str, isolation: VectorIsolation,
                     metric: Metric = Metric.COSINE) -> Tenant:
        store = tenant(prefix, self.dimension, isolation, metric=metric)
        relational, _ = await PostgresRelationalStore(self.pg).ensure(store, PASSWORD, password_is_new=True)
        vector, _ = await self.vectors.ensure(store)
        self.tenants.append(store)
        spec = TenantStoreSpec.from_body({"metadata": {"name": store.tenant_id}, "spec": {
            "tenantId": store.tenant_id, "tier": "pro", "vector": {"dimension": self.dimension,
                                                                  "metric": metric.value}}})
        extras = {"pineconeApiKey": self.pinecone.api_key} if self.pinecone else {}
        return Tenant(store, secret_data(spec, relational, vector, PASSWORD, extras), self.backend, self.pinecone)

    async def open(self, secret: ts.SecretSource | Mapping[str, str] | Path, **options: Any) -> Client:
        if self.is_async:
            client = Client(await ts.connect_async(secret, **options), True)
        else:
            client = Client(await asyncio.to_thread(ts.connect, secret, **options), False)
        self.opened.append(client)
        return client

    async def close(self) -> None:
        for client in self.opened:
            await client.close()
        for store in self.tenants:
            await self.vectors.teardown(store)
            await PostgresRelationalStore(self.pg).teardown(store)


@pytest.fixture(params=["pgvector-async", "pgvector-sync", "pinecone-async", "pinecone-sync"])
async def world(request: pytest.FixtureRequest, pg: PostgresServer) -> AsyncIterator[World]:
    backend, api = request.param.split("-")
    if backend == "pgvector":
        built = World(backend, pg, PgvectorStore(pg), api == "async", None)
        yield built
        await built.close()
        return
    server: PineconeTestServer = request.getfixturevalue("pinecone_server")
    operator_client = PineconeClient(server.api_key, server.host, FAST_RETRIES)
    built = World(backend, pg, PineconeStore(operator_client, pg, SETTINGS), api == "async", server)
    yield built
    await built.close()
    await operator_client.close()


@pytest.fixture(params=["async", "sync"])
async def pg_world(request: pytest.FixtureRequest, pg: PostgresServer) -> AsyncIterator[World]:
    """pgvector only: what Postgres itself refuses (Pinecone keys are per project; it cannot refuse)."""
    built = World("pgvector", pg, PgvectorStore(pg), request.param == "async", None)
    yield built
    await built.close()


async def wait_for_count(client: Client, expected: int) -> None:
    """Pinecone's counts may lag; the local server's do not, but the contract allows it."""
    deadline = time.monotonic() + 10
    while (count := await client.count()) != expected:
        assert time.monotonic() < deadline, f"count stayed {count}, expected {expected}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("isolation", [VectorIsolation.NAMESPACE, VectorIsolation.DEDICATED])
async def test_upsert_query_fetch_delete_and_count(world: World, isolation: VectorIsolation) -> None:
    acme = await world.tenant("lib", isolation)
    client = await world.open(acme.secret)
    assert await client.upsert(DOCUMENTS) == 8
    await wait_for_count(client, 8)

    nearest = await client.query(QUERY, top_k=3)
    assert [match.id for match in nearest] == by_cosine(QUERY, DOCUMENTS)[:3]
    assert nearest[0].score == pytest.approx(1.0, abs=1e-5)  # cosine similarity with itself
    assert nearest[0].metadata == {"lang": "en", "year": 2020, "tags": ["a", "b"]}  # the library's field hidden
    assert nearest[0].values is None
    with_values = await client.query(QUERY, top_k=1, include_values=True)
    assert with_values[0].values == pytest.approx(DOCUMENTS[0].values)

    fetched = await client.fetch(["doc-2", "doc-5", "missing"])
    assert sorted(fetched) == ["doc-2", "doc-5"]
    assert fetched["doc-5"].metadata == DOCUMENTS[5].metadata
    assert fetched["doc-5"].values == pytest.approx(DOCUMENTS[5].values)

    await client.upsert([ts.Vector("doc-2", [0.0, 1.0, 0.0, 0.0], {"lang": "fr"})])  # replaces by id
    assert (await client.fetch(["doc-2"]))["doc-2"].metadata == {"lang": "fr"}
    await wait_for_count(client, 8)

    await client.delete(ids=["doc-0", "doc-1"])
    await client.delete(filter={"lang": "fr"})
    await wait_for_count(client, 5)
    assert sorted(await client.fetch([d.id for d in DOCUMENTS])) == ["doc-3", "doc-4", "doc-5", "doc-6", "doc-7"]


FILTERS = [
    ({"lang": "de"}, ["doc-1", "doc-3", "doc-5", "doc-7"]),
    ({"lang": {"$ne": "de"}}, ["doc-0", "doc-2", "doc-4", "doc-6"]),
    ({"year": {"$gte": 2025}}, ["doc-5", "doc-6", "doc-7"]),
    ({"year": {"$gt": 2021, "$lt": 2024}}, ["doc-2", "doc-3"]),
    ({"year": {"$in": [2021, 2024, 1999]}}, ["doc-1", "doc-4"]),
    ({"year": {"$nin": [2020, 2023, 2026]}}, ["doc-1", "doc-2", "doc-4", "doc-5", "doc-7"]),
    ({"tags": "a"}, ["doc-0", "doc-1", "doc-2"]),  # a list field matches when any element does
    ({"tags": {"$in": ["c", "z"]}, "lang": "en"}, ["doc-4", "doc-6"]),
    ({"draft": {"$exists": True}}, ["doc-7"]),
    ({"$or": [{"draft": True}, {"year": 2020}]}, ["doc-0", "doc-7"]),
    ({"$and": [{"lang": "en"}, {"year": {"$lte": 2022}}]}, ["doc-0", "doc-2"]),
]


async def test_metadata_filters_mean_the_same_on_both_backends(world: World) -> None:
    acme = await world.tenant("flt", VectorIsolation.NAMESPACE)
    client = await world.open(acme.secret)
    await client.upsert(DOCUMENTS)
    everything = [match.id for match in await client.query(QUERY, top_k=8)]
    assert everything == by_cosine(QUERY, DOCUMENTS)
    for filter, expected in FILTERS:
        got = [match.id for match in await client.query(QUERY, top_k=8, filter=filter)]
        assert got == [doc for doc in everything if doc in expected], filter


async def test_a_tenant_sees_and_changes_only_its_own_namespace(world: World) -> None:
    acme, rival = await world.tenant("own", VectorIsolation.NAMESPACE), await world.tenant("riv", VectorIsolation.NAMESPACE)
    assert acme.secret["vectorIndex"] == rival.secret["vectorIndex"]  # neighbours in one shared index
    mine, theirs = await world.open(acme.secret), await world.open(rival.secret)
    await mine.upsert(DOCUMENTS[:3])
    await theirs.upsert([ts.Vector("doc-0", [0.0, 0.0, 1.0, 0.0], {"owner": "rival"})])  # the same id

    assert [m.id for m in await theirs.query(QUERY, top_k=10)] == ["doc-0"]
    assert (await theirs.fetch(["doc-0", "doc-1"]))["doc-0"].metadata == {"owner": "rival"}
    await theirs.delete(filter={"lang": {"$exists": True}})  # matches only acme's documents: none of rival's
    await theirs.delete(ids=["doc-1", "doc-2"])
    await wait_for_count(mine, 3)
    assert (await mine.fetch(["doc-0"]))["doc-0"].metadata == DOCUMENTS[0].metadata
    await wait_for_count(theirs, 1)


async def test_a_secret_forged_to_name_a_neighbours_table_reaches_nothing(pg_world: World) -> None:
    """pgvector: Postgres holds the boundary even against an edited Secret. (Pinecone keys are per project: there
    the namespace in the Secret is the boundary, and a forged one is the documented limit of Pinecone isolation.)"""
    victim, attacker = await pg_world.tenant("vic", VectorIsolation.NAMESPACE), await pg_world.tenant("att", VectorIsolation.NAMESPACE)
    await (await pg_world.open(victim.secret)).upsert(DOCUMENTS[:2])
    forged = await pg_world.open({**attacker.secret, "vectorTable": victim.secret["vectorTable"],
                               "vectorNamespace": victim.secret["vectorNamespace"]})
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await forged.query(QUERY)
    with pytest.raises(ts.WritesBlocked, match="not this login's to write"):
        await forged.upsert([ts.Vector("planted", [1.0, 0.0, 0.0, 0.0])])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await forged.delete(ids=["doc-0"])
    # Its own partition with the neighbour's namespace: row-level security refuses the row.
    mislabelled = await pg_world.open({**attacker.secret, "vectorNamespace": victim.secret["vectorNamespace"]})
    with pytest.raises(ts.WritesBlocked, match="row-level security"):
        await mislabelled.upsert([ts.Vector("planted", [1.0, 0.0, 0.0, 0.0])])
    assert sorted(await (await pg_world.open(victim.secret)).fetch(["doc-0", "doc-1", "planted"])) == ["doc-0", "doc-1"]


async def test_read_only_credentials_are_refused_changes_with_a_clear_error(world: World) -> None:
    acme = await world.tenant("ro", VectorIsolation.NAMESPACE)
    writer = await world.open(acme.secret)
    await writer.upsert(DOCUMENTS[:2])
    reader = await world.open({**acme.secret, "access": "readOnly", "vectorAccess": "readOnly"})
    with pytest.raises(ts.ReadOnlyCredential, match="readOnly"):
        await reader.upsert([ts.Vector("new", [1.0, 0.0, 0.0, 0.0])])
    with pytest.raises(ts.ReadOnlyCredential):
        await reader.delete(ids=["doc-0"])
    with pytest.raises(ts.ReadOnlyCredential):
        await reader.delete(filter={"lang": "en"})
    assert [m.id for m in await reader.query(QUERY, top_k=5)] == by_cosine(QUERY, DOCUMENTS[:2])
    assert await reader.count() == 2
    assert sorted(await writer.fetch(["doc-0", "doc-1", "new"])) == ["doc-0", "doc-1"]


async def test_writes_blocked_refuses_upserts_and_allows_deletes(world: World, tmp_path: Path) -> None:
    acme = await world.tenant("blk", VectorIsolation.NAMESPACE)
    mounted = tmp_path / "acme-store"
    mounted.mkdir()
    for key, value in acme.secret.items():
        (mounted / key).write_text(value)
    client = await world.open(mounted, refresh_seconds=0)  # re-read the files every call
    await client.upsert(DOCUMENTS[:3])

    (mounted / "writesBlocked").write_text("true")  # what the operator writes while a Block quota holds
    with pytest.raises(ts.WritesBlocked, match="quota"):
        await client.upsert([ts.Vector("doc-9", [1.0, 1.0, 0.0, 0.0])])
    await client.delete(ids=["doc-0"])
    await wait_for_count(client, 2)
    assert [m.id for m in await client.query(QUERY, top_k=5)] == by_cosine(QUERY, DOCUMENTS[1:3])

    (mounted / "writesBlocked").unlink()
    await client.upsert([ts.Vector("doc-9", [1.0, 1.0, 0.0, 0.0])])
    await wait_for_count(client, 3)


async def test_postgres_refusing_a_write_is_reported_as_blocked(pg_world: World) -> None:
    """The Secret lags the Block by up to the kubelet's sync: Postgres refuses first, the error says why."""
    acme = await pg_world.tenant("pgb", VectorIsolation.DEDICATED)
    client = await pg_world.open(acme.secret)
    await client.upsert(DOCUMENTS[:2])
    blocked = dataclasses.replace(acme.store, writes_allowed=False)
    await PostgresRelationalStore(pg_world.pg).ensure_write_access(blocked)
    await pg_world.vectors.ensure_write_access(blocked, (await pg_world.vectors.ensure(acme.store))[0])
    with pytest.raises(ts.WritesBlocked, match="Postgres refused"):
        await client.upsert([ts.Vector("doc-9", [1.0, 1.0, 0.0, 0.0])])
    assert await client.count() == 2


async def test_every_write_carries_the_time_retention_counts_from(world: World) -> None:
    acme = await world.tenant("ret", VectorIsolation.NAMESPACE)
    client = await world.open(acme.secret)
    before = time.time()
    await client.upsert(DOCUMENTS[:2])
    if world.pinecone is not None:
        held = world.pinecone.records(acme.secret["vectorIndex"], acme.secret["vectorNamespace"])
        stamps = [record.metadata["written_at"] for record in held.values()]
    else:
        schema, table = acme.secret["vectorTable"].split(".")
        async with world.pg.connect() as conn:
            rows = await (await conn.execute(sql.SQL("SELECT extract(epoch FROM written_at) AS at FROM {}").format(
                sql.Identifier(schema, table)))).fetchall()
        stamps = [float(row["at"]) for row in rows]
    assert len(stamps) == 2 and all(int(before) <= stamp <= time.time() + 1 for stamp in stamps)
    with pytest.raises(ts.InvalidRequest, match="written_at"):
        await client.upsert([ts.Vector("doc-9", [1.0, 0.0, 0.0, 0.0], {"written_at": 0})])


async def test_bad_requests_fail_before_anything_is_sent(world: World) -> None:
    acme = await world.tenant("bad", VectorIsolation.NAMESPACE)
    client = await world.open(acme.secret)
    bad_calls: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
        ("upsert", ([ts.Vector("short", [1.0, 0.0])],), {}, "2 values, the tenant's vectors have 4"),
        ("upsert", ([ts.Vector("", [1.0, 0.0, 0.0, 0.0])],), {}, "vector id"),
        ("upsert", ([ts.Vector("zero", [0.0, 0.0, 0.0, 0.0])],), {}, "non-zero"),
        ("upsert", ([ts.Vector("x", [1.0, 0.0, 0.0, 0.0], {"$where": 1})],), {}, "metadata field"),
        ("upsert", ([ts.Vector("x", [1.0, 0.0, 0.0, 0.0], {"nested": {"a": 1}})],), {}, "list of strings"),
        ("query", (QUERY,), {"filter": {"year": {"$regex": "x"}}}, "unknown operator"),
        ("query", (QUERY,), {"filter": {"$not": {"a": 1}}}, "top level"),
        ("query", (QUERY,), {"filter": {"year": {"$gt": "2020"}}}, "compares numbers"),
        ("query", (QUERY,), {"top_k": 0}, "top_k"),
        ("delete", (), {}, "ids or a filter"),
        ("fetch", ([],), {}, "at least one id"),
    ]
    for method, args, kwargs, message in bad_calls:
        with pytest.raises(ts.InvalidRequest, match=message):
            await getattr(client, method)(*args, **kwargs)
    assert await client.count() == 0


async def test_a_secret_that_is_not_a_store_is_refused_clearly(world: World) -> None:
    acme = await world.tenant("cfg", VectorIsolation.NAMESPACE)
    with pytest.raises(ts.ConfigurationError, match="vectorBackend"):
        await world.open({**acme.secret, "vectorBackend": "milvus"})
    needed = "uri" if world.backend == "pgvector" else "vectorHost"
    with pytest.raises(ts.ConfigurationError, match=needed):
        await world.open({key: value for key, value in acme.secret.items() if key != needed})


async def test_environment_variables_describe_the_store(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    acme = await world.tenant("env", VectorIsolation.DEDICATED, metric=Metric.EUCLIDEAN)
    for key, value in acme.secret.items():
        name = "".join(f"_{c}" if c.isupper() else c.upper() for c in key)
        monkeypatch.setenv(f"TENANTSTORE_{name}", value)
    client = await world.open(ts.Environment())
    await client.upsert(DOCUMENTS[:3])
    nearest = await client.query([1.0, 0.0, 0.0, 0.25], top_k=3)
    assert [m.id for m in nearest] == ["doc-0", "doc-1", "doc-2"]
    # Pinecone's euclidean score is the squared distance: 0 for itself, (1/8)^2 + (1/3)^2 for doc-1.
    assert [m.score for m in nearest[:2]] == pytest.approx([0.0, 1 / 64 + 1 / 9], abs=1e-5)


async def test_the_password_a_rotation_writes_reaches_new_connections(pg_world: World, tmp_path: Path) -> None:
    acme = await pg_world.tenant("rot", VectorIsolation.NAMESPACE)
    mounted = tmp_path / "acme-store"
    mounted.mkdir()
    for key, value in acme.secret.items():
        (mounted / key).write_text(value)
    client = await pg_world.open(mounted, refresh_seconds=0, pool_size=1)
    await client.upsert(DOCUMENTS[:1])
    new_uri = acme.secret["uri"].replace(f":{PASSWORD}@", ":rotated-pw-2@")
    async with pg_world.pg.connect() as conn:
        await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD 'rotated-pw-2'").format(sql.Identifier(acme.store.role)))
        (mounted / "uri").write_text(new_uri)
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                           (acme.store.role,))
    assert await client.count() == 1  # the pool found its connection dead and logged in with the new password
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(acme.secret["uri"])
