"""One contract, every vector backend: pgvector on the embedded Postgres, Pinecone on the local API server, and
the in-memory test backend (memory_backend.py), each built through the registry the operator uses.

What a tenant sees is checked the way a tenant would look: on pgvector as the tenant's own Postgres role
(row-level security does the isolating), on Pinecone through the SDK on the index host with the tenant's
namespace (Pinecone keys are project-wide; the namespace is the isolation).
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator

import psycopg
import pytest
from pinecone import AsyncPinecone
from pinecone_server import PineconeTestServer
from memory_backend import MemoryStore
from psycopg import sql
from vector_kit import PASSWORD, fresh_dimension, reasons, records, tenant, unit

from tenantstore import migration
from tenantstore.backends import SharedIndex, Step, VectorPlacement, VectorRecord, VectorStore
from tenantstore.backends.pgvector import PgvectorStore, index_name_of
from tenantstore.backends.pinecone import PineconeStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import DesiredStore, Metric, SecretKeyRef, StoreClass, VectorIsolation, dedicated_index_name
from tenantstore.registry import BackendRegistry

PGVECTOR_DISTANCE = {Metric.COSINE: "<=>", Metric.EUCLIDEAN: "<->", Metric.DOTPRODUCT: "<#>"}


@dataclasses.dataclass
class Harness:
    """A backend plus the ways to look at it from outside."""

    name: str
    vectors: VectorStore
    pg: PostgresServer
    pinecone: PineconeTestServer | None = None

    @property
    def relational(self) -> PostgresRelationalStore:
        return PostgresRelationalStore(self.pg)

    async def provision(self, store: DesiredStore) -> tuple[VectorPlacement, list[Step]]:
        # The tenant's role first: pgvector grants it access to its vectors.
        await self.relational.ensure(store, PASSWORD, password_is_new=True)
        return await self.vectors.ensure(store)

    async def teardown(self, store: DesiredStore) -> list[Step]:
        steps = await self.vectors.teardown(store)
        return steps + await self.relational.teardown(store)

    async def query_as_tenant(self, store: DesiredStore, placement: VectorPlacement, vector: list[float],
                              top_k: int = 10) -> list[str]:
        if isinstance(self.vectors, MemoryStore):
            return self.vectors.nearest(placement, vector, top_k, store.metric.value)
        if self.pinecone is None:
            return await self._pgvector_query(store, placement, vector, top_k)
        async with AsyncPinecone(api_key=self.pinecone.api_key, host=self.pinecone.host) as client:
            index = await client.index(host=placement.host)
            async with index:
                answer = await index.query(vector=vector, top_k=top_k, namespace=placement.namespace)
        return [match.id for match in answer.matches]

    async def _pgvector_query(self, store: DesiredStore, placement: VectorPlacement, vector: list[float],
                              top_k: int) -> list[str]:
        schema, table = placement.table.split(".", 1)
        uri = f"postgresql://{store.role}:{PASSWORD}@{self.pg.host}:{self.pg.port}/{store.database}"
        query = sql.SQL("SELECT id FROM {} ORDER BY embedding {} %s::vector LIMIT %s").format(
            sql.Identifier(schema, table), sql.SQL(PGVECTOR_DISTANCE[store.metric]))
        async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
            rows = await (await conn.execute(query, (str(vector), top_k))).fetchall()
        return [row[0] for row in rows]

    async def dedicated_exists(self, store: DesiredStore) -> bool:
        if isinstance(self.vectors, MemoryStore):
            return await self.vectors.residue(store) != []
        if self.pinecone is not None:
            return self.pinecone.index(dedicated_index_name(store.tenant_id)) is not None
        async with self.pg.connect(store.database) as conn:
            query = "SELECT to_regclass(format('%%I.vectors', %s::text)) IS NOT NULL AS present"
            row = await (await conn.execute(query, (store.schema,))).fetchone()
        return bool(row["present"])

    async def pool(self, dimension: int, metric: Metric) -> dict[str, int]:
        """Shared index -> tenants placed in it, as the backend itself stores it."""
        prefix = f"shared-{dimension}-{metric.value}-"
        if isinstance(self.vectors, MemoryStore):
            return {index.name: index.tenants for index in await self.vectors.shared_pool()
                    if index.name.startswith(prefix)}
        if self.pinecone is not None:
            return {name: len([ns for ns in self.pinecone.namespaces(name) if ns != "__default__"])
                    for name in self.pinecone.index_names() if name.startswith(prefix)}
        async with self.pg.connect() as conn:
            tables = await PgvectorStore(self.pg).shared_tables(conn, dimension, metric)
        return {index_name_of(table): tenants for table, tenants in tables}


class ClassSecrets:
    """The Secrets a test StoreClass names: the admin URI."""

    def __init__(self, admin_uri: str):
        self.admin_uri = admin_uri

    async def value(self, ref: SecretKeyRef, fresh: bool = False) -> str:
        return self.admin_uri


@pytest.fixture
async def memory_vectors(admin_uri: str) -> AsyncIterator[VectorStore]:
    """The in-memory backend, registered by its module and found by name, as the operator finds pgvector."""
    registry = BackendRegistry(ClassSecrets(admin_uri))  # type: ignore[arg-type]
    store_class = StoreClass.from_body({"metadata": {"name": "in-memory"}, "spec": {
        "postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "ops"}}, "vector": {"backend": "memory"}}})
    yield (await registry.for_class(store_class)).vector
    await registry.close()


@pytest.fixture(params=["pgvector", "pinecone", "memory"])
def harness(request: pytest.FixtureRequest, pg: PostgresServer) -> Harness:
    if request.param == "memory":
        return Harness("memory", request.getfixturevalue("memory_vectors"), pg)
    if request.param == "pgvector":
        return Harness("pgvector", PgvectorStore(pg), pg)
    # Only the Pinecone run starts a Pinecone server (and checks what it saw).
    store: PineconeStore = request.getfixturevalue("pinecone_store")
    return Harness("pinecone", store, pg, request.getfixturevalue("pinecone_server"))


async def test_namespaces_isolate_tenants_count_and_delete(harness: Harness) -> None:
    dimension = fresh_dimension()
    alpha, beta = tenant("alpha", dimension), tenant("beta", dimension)
    alpha_at, steps = await harness.provision(alpha)
    beta_at, _ = await harness.provision(beta)
    assert "NamespaceCreated" in reasons(steps)
    assert alpha_at.index == beta_at.index == f"shared-{dimension}-cosine-1"
    assert (alpha_at.namespace, beta_at.namespace) == (alpha.tenant_id, beta.tenant_id)
    assert alpha_at.backend == harness.name

    await harness.vectors.write_batch(alpha, alpha_at, records("a", 3, dimension))
    await harness.vectors.write_batch(beta, beta_at, records("b", 2, dimension))
    assert sorted(await harness.query_as_tenant(alpha, alpha_at, unit(dimension))) == ["a-000", "a-001", "a-002"]
    assert sorted(await harness.query_as_tenant(beta, beta_at, unit(dimension))) == ["b-000", "b-001"]
    assert await harness.vectors.count(alpha, alpha_at) == 3
    assert await harness.vectors.count(beta, beta_at) == 2

    assert await harness.vectors.ensure(alpha) == (alpha_at, [])  # nothing changed, nothing done

    await harness.teardown(alpha)
    assert await harness.vectors.residue(alpha) == []
    assert await harness.vectors.count(beta, beta_at) == 2  # the neighbour keeps its vectors
    await harness.teardown(beta)
    assert await harness.vectors.residue(beta) == []
    assert await harness.pool(dimension, Metric.COSINE) == {f"shared-{dimension}-cosine-1": 0}  # kept, empty


async def test_dedicated_index_lifecycle(harness: Harness) -> None:
    dimension = fresh_dimension()
    store = tenant("solo", dimension, VectorIsolation.DEDICATED, metric=Metric.EUCLIDEAN)
    placement, steps = await harness.provision(store)
    assert "DedicatedIndexCreated" in reasons(steps)
    assert placement.index == f"ts-{store.tenant_id}" and not placement.namespace
    assert await harness.dedicated_exists(store)

    await harness.vectors.write_batch(store, placement, records("d", 4, dimension))
    nearest = await harness.query_as_tenant(store, placement, [1.0] + [0.5] * (dimension - 1), top_k=2)
    assert nearest == ["d-000", "d-001"]  # euclidean: closest first
    assert await harness.vectors.count(store, placement) == 4
    assert await harness.vectors.ensure(store) == (placement, [])

    await harness.teardown(store)
    assert not await harness.dedicated_exists(store)
    assert await harness.vectors.residue(store) == []


async def test_batches_page_in_id_order_and_upserts_do_not_duplicate(harness: Harness) -> None:
    dimension = fresh_dimension()
    source = tenant("mover", dimension)
    target = dataclasses.replace(source, vector=VectorIsolation.DEDICATED)  # the same tenant, other isolation
    shared_at, _ = await harness.provision(source)
    dedicated_at, _ = await harness.vectors.ensure(target)
    written = records("id", 25, dimension)
    await harness.vectors.write_batch(source, shared_at, written)
    await harness.vectors.write_batch(source, shared_at, written[:5])  # written twice: still one copy

    copied, after = [], None
    while batch := await harness.vectors.read_batch(source, shared_at, after, limit=10):
        await harness.vectors.write_batch(target, dedicated_at, batch)
        await harness.vectors.write_batch(target, dedicated_at, batch)  # a resumed copy rewrites a batch
        copied += batch
        after = batch[-1].id
    assert copied == written
    assert await harness.vectors.count(target, dedicated_at) == await harness.vectors.count(source, shared_at) == 25
    assert await harness.vectors.read_batch(target, dedicated_at, "id-023", 10) == written[24:]
    assert await harness.vectors.read_batch(target, dedicated_at, "id-024", 10) == []

    await harness.vectors.teardown(target)
    await harness.teardown(source)
    assert await harness.vectors.residue(source) == await harness.vectors.residue(target) == []


async def test_a_resync_writes_only_what_differs_and_deletes_what_the_source_no_longer_has(harness: Harness) -> None:
    dimension = fresh_dimension()
    source = tenant("resync", dimension)
    target = dataclasses.replace(source, vector=VectorIsolation.DEDICATED)
    shared_at, _ = await harness.provision(source)
    dedicated_at, _ = await harness.vectors.ensure(target)
    source_side = migration.VectorSide(harness.vectors, source, shared_at)
    target_side = migration.VectorSide(harness.vectors, target, dedicated_at)
    written = records("id", 30, dimension)
    await harness.vectors.write_batch(source, shared_at, written)

    async def ignore(copied: int, total: int, last_id: str | None) -> None:
        del copied, total, last_id
    assert await migration.copy_vectors(source_side, target_side, None, ignore, 7, verified=False) == 30
    # The tenant goes on writing after the copy: two changed, three deleted, four new.
    changed = [dataclasses.replace(record, metadata={"n": -1}) for record in written[3:5]]
    await harness.vectors.write_batch(source, shared_at, [*changed, *records("new", 4, dimension)])
    await harness.vectors.delete_ids(source, shared_at, ["id-010", "id-011", "id-029", "never-there"])

    done = await migration.resync(source_side, target_side, 7, read_size=7)  # pages interleave with writes
    assert (done.total, done.written, done.deleted) == (31, 6, 3)
    await migration.verify(source_side, target_side, 31)
    assert await harness.vectors.read_batch(target, dedicated_at, None, 100) == \
        await harness.vectors.read_batch(source, shared_at, None, 100)
    again = await migration.resync(source_side, target_side, 7, read_size=5)  # nothing differs: nothing is written
    assert (again.total, again.written, again.deleted) == (31, 0, 0)

    await harness.vectors.teardown(target)
    await harness.teardown(source)


@pytest.mark.parametrize("isolation", [VectorIsolation.NAMESPACE, VectorIsolation.DEDICATED])
async def test_expire_deletes_only_vectors_that_outlived_retention(harness: Harness, isolation) -> None:
    dimension = fresh_dimension()
    store = dataclasses.replace(tenant("ret", dimension), vector=isolation)
    placement, _ = await harness.provision(store)
    now = datetime.datetime.now(datetime.UTC)
    old = [VectorRecord(f"old-{i:02}", unit(dimension, i), {"written_at": (now - datetime.timedelta(days=100))
                                                            .timestamp()}) for i in range(30)]
    new = [VectorRecord(f"new-{i:02}", unit(dimension, i), {"written_at": now.timestamp()}) for i in range(5)]
    table = sql.Identifier(*placement.table.split("."))
    if harness.name == "pgvector":  # a table made before retention existed has no written_at column
        parent = sql.Identifier("tenantstore_vectors", placement.index.replace("-", "_")) \
            if placement.namespace else table
        async with harness.pg.connect(store.database) as conn:
            await conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN written_at").format(parent))
    await harness.vectors.write_batch(store, placement, old + new)
    if harness.name == "pgvector":  # the time is a column there: the tenant wrote the old ones long ago
        # The column comes back without a rewrite; what was there counts as written now, so nothing goes.
        assert await harness.vectors.expire(store, placement, now - datetime.timedelta(days=90), 100) == 0
        async with harness.pg.connect(store.database) as conn:
            await conn.execute(sql.SQL("UPDATE {} SET written_at = %s WHERE id LIKE 'old-%%'").format(table),
                               (now - datetime.timedelta(days=100),))
    cutoff = now - datetime.timedelta(days=90)
    assert await harness.vectors.expire(store, placement, cutoff, 20) == 20  # bounded
    assert await harness.vectors.expire(store, placement, cutoff, 20) == 10
    assert await harness.vectors.expire(store, placement, cutoff, 20) == 0
    remaining, after = [], None
    while batch := await harness.vectors.read_batch(store, placement, after, 50):
        remaining += [record.id for record in batch]
        after = batch[-1].id
    assert remaining == [record.id for record in new]
    await harness.teardown(store)


async def test_a_full_shared_index_rolls_over_to_the_next(harness: Harness) -> None:
    dimension = fresh_dimension()
    stores = [tenant(f"pool{i}", dimension, capacity=2) for i in range(3)]
    placements = [(await harness.provision(store))[0] for store in stores]
    first, second = f"shared-{dimension}-cosine-1", f"shared-{dimension}-cosine-2"
    assert [placement.index for placement in placements] == [first, first, second]
    assert await harness.pool(dimension, Metric.COSINE) == {first: 2, second: 1}

    pool = [index for index in await harness.vectors.shared_pool() if index.dimension == dimension]
    assert pool == [SharedIndex(first, dimension, "cosine", 2), SharedIndex(second, dimension, "cosine", 1)]

    await harness.teardown(stores[0])  # room again in the first: the next tenant goes there
    fourth = tenant("pool3", dimension, capacity=2)
    assert (await harness.provision(fourth))[0].index == first
    for store in (*stores[1:], fourth):
        await harness.teardown(store)


async def test_an_empty_shared_index_goes_only_when_the_class_does_not_keep_it(harness: Harness) -> None:
    dimension = fresh_dimension()
    kept, passing = tenant("kept", dimension), dataclasses.replace(tenant("passing", dimension),
                                                                   shared_index_keep_empty=False)
    await harness.provision(kept)
    await harness.provision(passing)
    assert "SharedIndexDropped" not in reasons(await harness.teardown(passing))  # `kept` is still there
    assert "SharedIndexDropped" not in reasons(await harness.teardown(kept))  # kept: the class keeps empty ones
    assert [index.tenants for index in await harness.vectors.shared_pool() if index.dimension == dimension] == [0]

    last = dataclasses.replace(tenant("last", dimension), shared_index_keep_empty=False)
    assert (await harness.provision(last))[0].index == f"shared-{dimension}-cosine-1"  # the empty one is reused
    assert "SharedIndexDropped" in reasons(await harness.teardown(last))
    assert [index for index in await harness.vectors.shared_pool() if index.dimension == dimension] == []


async def test_a_search_probe_times_one_query_on_the_tenants_own_store(harness: Harness) -> None:
    dimension = fresh_dimension()
    store = tenant("probed", dimension)
    placement, _ = await harness.provision(store)
    await harness.vectors.write_batch(store, placement, records("p", 3, dimension))
    seconds = await harness.vectors.probe_search(store, placement, unit(dimension), 2)
    assert 0 <= seconds < 5
    assert await harness.vectors.count(store, placement) == 3  # a probe reads, nothing else
    await harness.teardown(store)


async def test_vectors_copy_from_pgvector_to_pinecone_and_back_and_verify(
        pg: PostgresServer, pinecone_store: PineconeStore) -> None:
    dimension = fresh_dimension()
    store = tenant("across", dimension)
    pgvector = PgvectorStore(pg)
    await PostgresRelationalStore(pg).ensure(store, PASSWORD, password_is_new=True)
    in_postgres, _ = await pgvector.ensure(store)
    in_pinecone, _ = await pinecone_store.ensure(dataclasses.replace(store, vector=VectorIsolation.DEDICATED))
    # Values a float32 does not hold exactly: each backend hands them back in its own digits.
    written = [VectorRecord(f"x-{i:03}", [0.1 * (i + 1)] + [0.3] * (dimension - 1), {"n": i, "tag": "t"})
               for i in range(12)]
    await pgvector.write_batch(store, in_postgres, written)
    postgres_side = migration.VectorSide(pgvector, store, in_postgres)
    pinecone_side = migration.VectorSide(pinecone_store, dataclasses.replace(store, vector=VectorIsolation.DEDICATED),
                                         in_pinecone)

    async def ignore(copied: int, total: int, last_id: str | None) -> None:
        del copied, total, last_id
    assert await migration.copy_vectors(postgres_side, pinecone_side, None, ignore, 5) == 12
    await pgvector.delete_ids(store, in_postgres, [record.id for record in written])
    assert await migration.copy_vectors(pinecone_side, postgres_side, None, ignore, 5) == 12
    back = await pgvector.read_batch(store, in_postgres, None, 100)
    assert migration.same_records(back, written)
    assert not migration.same_records(back, [*written[:-1], dataclasses.replace(written[-1], values=[0.0] * dimension)])

    await pinecone_store.teardown(pinecone_side.store)
    await pgvector.teardown(store)
    await PostgresRelationalStore(pg).teardown(store)
