"""A StoreClass's global index (spec.globalStore), its writer Secret, and tenants searching it through the client
library, with scopes and memory-operation spans: pgvector on the embedded Postgres, Pinecone through the SDK on the
local API server.

The class's index is made by the backend's `ensure_global`, the platform writes with the writer Secret's data, and
tenants search with the Secrets the operator's own `secret_data` builds.
"""
from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import tenantstore_client as ts
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pinecone_server import PineconeTestServer
from vector_kit import FAST_RETRIES, PASSWORD, SETTINGS, tenant

from tenantstore.backends import GlobalPlacement, VectorStore
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.pgvector_global import GlobalIndexDrifted
from tenantstore.backends.pinecone import GLOBAL_NAMESPACE, PineconeClient, PineconeStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import DesiredStore, GlobalIndex, Metric, RelationalIsolation, TenantStoreSpec, \
    VectorIsolation
from tenantstore.reconcile import secret_data
from tenantstore_dev.story import client_spans

DIMENSION = 4
PRODUCT_DOCS = [ts.Vector(f"guide-{i}", [1.0, i / 4, 0.5, 0.1], {"section": "setup" if i < 2 else "billing"})
                for i in range(3)]
QUERY = [1.0, 0.1, 0.5, 0.1]


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The application's OpenTelemetry SDK, as a service using the client library would install it."""
    return client_spans()


class Platform:
    """One class's global index on one backend, tenants reading it, and the clients opened on the way."""

    def __init__(self, backend: str, pg: PostgresServer, vectors: VectorStore, pinecone: PineconeTestServer | None):
        self.backend, self.pg, self.vectors, self.pinecone = backend, pg, vectors, pinecone
        self.index = GlobalIndex(f"docs-{uuid.uuid4().hex[:6]}", DIMENSION, Metric.COSINE)
        self.tenants: list[DesiredStore] = []
        self.clients: list[Any] = []
        self.placement: GlobalPlacement | None = None
        self.writer: dict[str, str] = {}

    async def make_global(self, password: str = "writer-pw-1", password_is_new: bool = True) -> list[str]:
        self.placement, self.writer, steps = await self.vectors.ensure_global(self.index, password, password_is_new)
        return [step.reason for step in steps]

    async def tenant(self, prefix: str, isolation: VectorIsolation = VectorIsolation.NAMESPACE,
                     relational: RelationalIsolation = RelationalIsolation.SCHEMA) -> dict[str, str]:
        store = dataclasses.replace(tenant(prefix, DIMENSION, isolation), relational=relational)
        relational_placement, _ = await PostgresRelationalStore(self.pg).ensure(store, PASSWORD, password_is_new=True)
        vector, _ = await self.vectors.ensure(store)
        self.tenants.append(store)
        placement, _ = await self.vectors.grant_global(store, self.index)
        assert placement == self.placement
        spec = TenantStoreSpec.from_body({"metadata": {"name": store.tenant_id}, "spec": {
            "tenantId": store.tenant_id, "tier": "pro", "vector": {"dimension": DIMENSION}}})
        extras = {"pineconeApiKey": self.pinecone.api_key} if self.pinecone else {}
        return secret_data(spec, relational_placement, vector, PASSWORD, extras, placement)

    def open(self, secret: dict[str, str]) -> Any:
        client = ts.connect(secret)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await asyncio.to_thread(client.close)
        for store in self.tenants:
            await self.vectors.teardown(store)
            await PostgresRelationalStore(self.pg).teardown(store)


@pytest.fixture(params=["pgvector", "pinecone"])
async def platform(request: pytest.FixtureRequest, pg: PostgresServer) -> AsyncIterator[Platform]:
    if request.param == "pgvector":
        built = Platform("pgvector", pg, PgvectorStore(pg), None)
        yield built
        await built.close()
        return
    server: PineconeTestServer = request.getfixturevalue("pinecone_server")
    client = PineconeClient(server.api_key, server.host, FAST_RETRIES)
    built = Platform("pinecone", pg, PineconeStore(client, pg, SETTINGS), server)
    yield built
    await built.close()
    await client.close()


@pytest.fixture
async def pg_platform(pg: PostgresServer) -> AsyncIterator[Platform]:
    """pgvector only: what Postgres itself holds to (grants, policies, logins)."""
    built = Platform("pgvector", pg, PgvectorStore(pg), None)
    yield built
    await built.close()


async def test_the_platform_writes_the_global_index_and_every_tenant_searches_it(platform: Platform,
                                                                                spans: InMemorySpanExporter) -> None:
    assert "GlobalIndexCreated" in await platform.make_global()
    assert await platform.make_global(password_is_new=False) == []  # a second pass changes nothing
    writer = platform.open(platform.writer)
    assert await asyncio.to_thread(writer.upsert, PRODUCT_DOCS) == 3

    acme_secret, globex_secret = await platform.tenant("gla"), await platform.tenant("glb")
    assert acme_secret["globalStore"] == platform.index.store_name
    acme, globex = platform.open(acme_secret), platform.open(globex_secret)
    await asyncio.to_thread(acme.upsert, [ts.Vector("acme-note", [1.0, 0.1, 0.5, 0.0], {"section": "setup"})])
    spans.clear()

    mine = await asyncio.to_thread(acme.query, QUERY, 10)
    theirs = await asyncio.to_thread(globex.query, QUERY, 10)
    shared = await asyncio.to_thread(acme.query_global, QUERY, 10)
    assert [m.id for m in mine] == ["acme-note"] and theirs == []
    assert sorted(m.id for m in shared) == ["guide-0", "guide-1", "guide-2"]
    assert [m.id for m in await asyncio.to_thread(globex.query_global, QUERY, 10, {"section": "billing"})] == [
        "guide-2"]

    # The same search, three stores, three counts: isolation as the traces show it.
    searches = [s for s in spans.get_finished_spans() if s.attributes["gen_ai.operation.name"] == "search_memory"]
    assert [(s.name, s.kind.name, s.attributes["gen_ai.memory.search.result.count"],
             s.attributes["gen_ai.memory.scope"]) for s in searches] == [
        (f"search_memory {acme_secret['tenantId']}", "CLIENT", 1, "tenant"),
        (f"search_memory {globex_secret['tenantId']}", "CLIENT", 0, "tenant"),
        (f"search_memory {platform.index.store_name}", "CLIENT", 3, "global"),
        (f"search_memory {platform.index.store_name}", "CLIENT", 1, "global")]
    assert searches[0].attributes["gen_ai.memory.store.id"] == acme_secret["tenantId"]
    assert searches[0].attributes["gen_ai.provider.name"] == platform.backend

    # A tenant's Secret cannot change the global index through the library.
    for attempt in (lambda: acme._global.upsert(PRODUCT_DOCS[:1]), lambda: acme._global.delete(ids=["guide-0"])):
        with pytest.raises(ts.ReadOnlyCredential):
            await asyncio.to_thread(attempt)
    assert len(await asyncio.to_thread(writer.query, QUERY, 10)) == 3


async def test_pgvector_itself_refuses_a_tenant_that_writes_the_global_index(pg_platform: Platform) -> None:
    """Past the library: the tenant's own login, straight at the table."""
    platform = pg_platform
    await platform.make_global()
    writer = platform.open(platform.writer)
    await asyncio.to_thread(writer.upsert, PRODUCT_DOCS)
    for secret in (await platform.tenant("glw"), await platform.tenant(
            "gle", VectorIsolation.DEDICATED, RelationalIsolation.DATABASE)):
        assert secret["globalUri"].endswith("/tenants")  # a database of its own: the global index is elsewhere
        table = psycopg.sql.Identifier(*secret["globalTable"].split("."))
        with psycopg.connect(secret["globalUri"], autocommit=True) as conn:
            assert conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone() == (3,)
            for statement in ("INSERT INTO {} (id, embedding) VALUES ('x', '[1,0,0,0]')",
                              "UPDATE {} SET metadata = '{{}}'", "DELETE FROM {}", "TRUNCATE {}",
                              "LOCK TABLE {} IN EXCLUSIVE MODE", "SELECT * FROM {} FOR UPDATE",
                              "CREATE POLICY everyone ON {} USING (true)",
                              "ALTER TABLE {} DISABLE ROW LEVEL SECURITY"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    conn.execute(psycopg.sql.SQL(statement).format(table))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(platform.index.reader_role)))
            conn.execute(psycopg.sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(table))  # a warning, no grant
            assert conn.execute("SELECT has_table_privilege('public', %s, 'SELECT')",
                                (secret["globalTable"],)).fetchone() == (False,)
    assert len(await asyncio.to_thread(writer.query, QUERY, 10)) == 3


async def test_a_lost_writer_secret_gets_a_new_password_that_works(pg_platform: Platform) -> None:
    platform = pg_platform
    await platform.make_global("first-pw")
    assert await platform.make_global("second-pw", password_is_new=True) == ["GlobalWriterPasswordReset"]
    with psycopg.connect(platform.writer["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (platform.index.writer_role,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(platform.writer["uri"].replace("second-pw", "first-pw")).close()


async def test_grants_and_policies_someone_added_are_taken_back(
        pg_platform: Platform, pg: PostgresServer) -> None:
    platform = pg_platform
    await platform.make_global()
    assert platform.placement is not None
    table = psycopg.sql.Identifier(*platform.placement.table.split("."))
    async with pg.connect() as conn:
        for statement in ("GRANT INSERT ON {} TO PUBLIC", "CREATE POLICY anyone ON {} FOR ALL TO PUBLIC USING (true)",
                          "ALTER TABLE {} NO FORCE ROW LEVEL SECURITY", "GRANT TRUNCATE ON {} TO {}",
                          "GRANT UPDATE ON {} TO {}"):
            await conn.execute(psycopg.sql.SQL(statement).format(table, psycopg.sql.Identifier(
                platform.index.writer_role if "TRUNCATE" in statement else platform.index.reader_role)))
    assert await platform.make_global(password_is_new=False) == ["GlobalIndexRepaired"]
    async with pg.connect() as conn:
        row = await (await conn.execute(
            "SELECT relforcerowsecurity AS forced, has_table_privilege('public', oid, 'INSERT') AS public_insert, "
            "(SELECT count(*) FROM pg_policy WHERE polrelid = c.oid AND polname = 'anyone') AS extra "
            "FROM pg_class c WHERE oid = to_regclass(%s)", (platform.placement.table,))).fetchone()
    assert row == {"forced": True, "public_insert": False, "extra": 0}
    async with pg.connect() as conn:  # the writer and the reader keep exactly what they were given
        held = await (await conn.execute(
            "SELECT privilege_type, grantee::regrole::text AS grantee FROM pg_class c, aclexplode(c.relacl) "
            "WHERE c.oid = to_regclass(%s) AND grantee <> c.relowner ORDER BY 2, 1",
            (platform.placement.table,))).fetchall()
    assert [(r["grantee"], r["privilege_type"]) for r in held] == [
        (platform.index.reader_role, "SELECT"),
        *((platform.index.writer_role, p) for p in ("DELETE", "INSERT", "SELECT", "UPDATE"))]
    assert await platform.make_global(password_is_new=False) == []


async def test_scopes_keep_a_tenants_users_and_projects_apart(platform: Platform) -> None:
    await platform.make_global()
    secret = await platform.tenant("scp")
    store = platform.open(secret)
    alice, bob, q4 = ts.scopes.user("alice"), ts.scopes.user("bob"), ts.scopes.project("q4")
    await asyncio.to_thread(store.upsert, [ts.Vector("shared-1", [1.0, 0.0, 0.0, 0.0])])
    await asyncio.to_thread(store.upsert, [ts.Vector(f"a-{i}", [1.0, i, 0.0, 0.0], {"n": i}) for i in range(3)], alice)
    await asyncio.to_thread(store.upsert, [ts.Vector("b-0", [1.0, 0.0, 1.0, 0.0])], bob)
    await asyncio.to_thread(store.upsert, [ts.Vector("q-0", [1.0, 0.0, 0.0, 1.0])], q4)

    def ids(matches: list[ts.Match]) -> list[str]:
        return sorted(match.id for match in matches)

    assert ids(await asyncio.to_thread(store.query, QUERY, 10, None, False, alice)) == ["a-0", "a-1", "a-2"]
    assert ids(await asyncio.to_thread(store.query, QUERY, 10, {"n": {"$gte": 1}}, False, alice)) == ["a-1", "a-2"]
    assert ids(await asyncio.to_thread(store.query, QUERY, 10, None, False, [bob, q4])) == ["b-0", "q-0"]
    everything = await asyncio.to_thread(store.query, QUERY, 10)
    assert ids(everything) == ["a-0", "a-1", "a-2", "b-0", "q-0", "shared-1"]  # unscoped: the whole store
    assert {m.id: m.scope for m in everything}["b-0"] == bob and {m.id: m.scope for m in everything}["shared-1"] is None
    assert all("_scope" not in m.metadata and "_tenant" not in m.metadata for m in everything)

    assert sorted(await asyncio.to_thread(store.fetch, ["a-0", "b-0", "shared-1"], alice)) == ["a-0"]
    await asyncio.to_thread(store.delete, ["a-0", "b-0"], None, alice)  # bob's b-0 is not alice's to delete
    assert sorted(await asyncio.to_thread(store.fetch, ["a-0", "b-0"])) == ["b-0"]
    await asyncio.to_thread(store.delete, None, {"n": 2}, alice)
    assert ids(await asyncio.to_thread(store.query, QUERY, 10, None, False, alice)) == ["a-1"]

    # Another tenant's scope of the same name is its own: nothing of this tenant's shows there.
    other = platform.open(await platform.tenant("sco"))
    assert await asyncio.to_thread(other.query, QUERY, 10, None, False, alice) == []
    with pytest.raises(ts.InvalidRequest, match="library's own"):
        await asyncio.to_thread(store.upsert, [ts.Vector("x", [1.0, 0, 0, 0], {"_scope": bob})])
    with pytest.raises(ts.InvalidRequest, match="scope is user_"):
        await asyncio.to_thread(store.query, QUERY, 10, None, False, "team_x")


async def test_pinecone_keeps_the_global_namespace_out_of_the_tenant_count(pinecone_server: PineconeTestServer,
                                                                           pg: PostgresServer) -> None:
    client = PineconeClient(pinecone_server.api_key, pinecone_server.host, FAST_RETRIES)
    platform = Platform("pinecone", pg, PineconeStore(client, pg, SETTINGS), pinecone_server)
    try:
        await platform.make_global()
        assert platform.placement is not None and platform.placement.namespace == GLOBAL_NAMESPACE
        await platform.tenant("pgc")
        pool = await platform.vectors.shared_pool()
        assert [(index.name, index.tenants) for index in pool] == [(platform.placement.index, 1)]
    finally:
        await platform.close()
        await client.close()


async def test_a_writer_password_changed_by_hand_is_put_back(
        pg_platform: Platform, pg: PostgresServer) -> None:
    platform = pg_platform
    await platform.make_global("kept-pw")
    async with pg.connect() as conn:
        await conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD 'by-hand'").format(
            psycopg.sql.Identifier(platform.index.writer_role)))
    assert await platform.make_global("kept-pw", password_is_new=False) == ["GlobalWriterPasswordReset"]
    with psycopg.connect(platform.writer["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (platform.index.writer_role,)
    assert await platform.make_global("kept-pw", password_is_new=False) == []


async def test_the_isolation_probe_allows_reading_the_global_index_and_nothing_more(
        pg_platform: Platform, pg: PostgresServer) -> None:
    platform = pg_platform
    await platform.make_global()
    secret = await platform.tenant("glp")
    store = platform.tenants[-1]
    placement = (await platform.vectors.ensure(store))[0]
    assert await platform.vectors.probe_isolation(store, placement) is None
    async with pg.connect() as conn:  # a grant someone made by hand: a way to change what every tenant reads
        await conn.execute(psycopg.sql.SQL("GRANT INSERT ON {} TO {}").format(
            psycopg.sql.Identifier(*secret["globalTable"].split(".")), psycopg.sql.Identifier(store.role)))
    problem = await platform.vectors.probe_isolation(store, placement)
    assert problem is not None and secret["globalTable"].split(".")[1] in problem


async def test_with_drift_policy_report_a_changed_grant_is_reported_not_taken_back(
        pg_platform: Platform, pg: PostgresServer) -> None:
    platform = pg_platform
    await platform.make_global()
    assert platform.placement is not None
    table = psycopg.sql.Identifier(*platform.placement.table.split("."))
    async with pg.connect() as conn:
        await conn.execute(psycopg.sql.SQL("GRANT DELETE ON {} TO PUBLIC").format(table))
    with pytest.raises(GlobalIndexDrifted, match="driftPolicy is Report"):
        await platform.vectors.ensure_global(platform.index, "writer-pw-1", False, repair=False)
    async with pg.connect() as conn:
        row = await (await conn.execute("SELECT has_table_privilege('public', %s, 'DELETE') AS kept",
                                        (platform.placement.table,))).fetchone()
    assert row == {"kept": True}
    assert await platform.make_global(password_is_new=False) == ["GlobalIndexRepaired"]


async def test_a_tenant_that_lost_its_read_access_is_found_and_given_it_back(
        pg_platform: Platform, pg: PostgresServer) -> None:
    platform = pg_platform
    await platform.make_global()
    await platform.tenant("glv")
    await platform.tenant("glk")
    lost, kept = platform.tenants[-2:]
    assert await platform.vectors.verify_global(platform.index, [lost, kept]) == {}
    async with pg.connect() as conn:
        await conn.execute(psycopg.sql.SQL("REVOKE {} FROM {}").format(
            psycopg.sql.Identifier(platform.index.reader_role), psycopg.sql.Identifier(lost.role)))
    drifts = await platform.vectors.verify_global(platform.index, [lost, kept])
    assert list(drifts) == [lost.tenant_id] and drifts[lost.tenant_id][0].kind == "GrantMissing"
    assert (await platform.vectors.grant_global(lost, platform.index))[1][0].reason == "GlobalReadGranted"
    assert await platform.vectors.verify_global(platform.index, [lost, kept]) == {}
