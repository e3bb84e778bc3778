"""The Pinecone backend's behaviour under Pinecone's errors, limits and races, through the real SDK."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import socket

import httpx
import pytest
from pinecone import AsyncPinecone
from pinecone_server import PineconeTestServer
from vector_kit import FAST_RETRIES, SETTINGS, fresh_dimension, reasons, records, tenant

from tenantstore.backends import VectorRecord
from tenantstore.backends import pinecone as pinecone_backend
from tenantstore.backends.pinecone import PineconeClient, PineconeStore, RetryPolicy, fetch_chunks, upsert_chunks
from tenantstore.backends.postgres import PostgresServer
from tenantstore.errors import BackendUnavailable, StoreClassInvalid, TenantIdConflict, VectorQuotaExceeded
from tenantstore.models import SecretKeyRef, StoreClass, VectorIsolation
from tenantstore.registry import BackendRegistry


def gaps(server: PineconeTestServer, operation: str) -> list[float]:
    times = [record.at for record in server.requests_for(operation)]
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


async def test_rate_limited_control_plane_waits_for_retry_after(pinecone_server: PineconeTestServer,
                                                                pinecone_store: PineconeStore) -> None:
    pinecone_server.fail_next("describe_index", 503, count=1, retry_after=1)
    pinecone_server.fail_next("create_index", 429, count=1, retry_after=1)
    store = tenant("patient", fresh_dimension(), VectorIsolation.DEDICATED)
    placement, steps = await pinecone_store.ensure(store)
    assert "DedicatedIndexCreated" in reasons(steps) and placement.host
    assert [r.status for r in pinecone_server.requests_for("describe_index")][:2] == [503, 404]
    assert [r.status for r in pinecone_server.requests_for("create_index")] == [429, 201]
    assert gaps(pinecone_server, "describe_index")[0] >= 0.95  # Retry-After: 1 honoured, on a 503 too
    assert gaps(pinecone_server, "create_index")[0] >= 0.95


async def test_rate_limited_and_failing_data_plane_calls_are_retried(pinecone_server: PineconeTestServer,
                                                                     pinecone_store: PineconeStore) -> None:
    dimension = fresh_dimension()
    pinecone_server.fail_next("createNamespace", 429, count=1, retry_after=1)
    pinecone_server.fail_next("upsertVectors", 503, count=2)
    pinecone_server.fail_next("describeIndexStats", 500, count=1)
    store = tenant("bumpy", dimension)
    placement, _ = await pinecone_store.ensure(store)
    await pinecone_store.write_batch(store, placement, records("r", 5, dimension))
    assert await pinecone_store.count(store, placement) == 5
    assert [r.status for r in pinecone_server.requests_for("createNamespace")] == [429, 200]
    assert gaps(pinecone_server, "createNamespace")[0] >= 0.95
    assert [r.status for r in pinecone_server.requests_for("upsertVectors")] == [503, 503, 200]


async def test_rate_limits_that_do_not_end_become_backend_unavailable(pinecone_server: PineconeTestServer,
                                                                      pg: PostgresServer) -> None:
    pinecone_server.fail_next("list_indexes", 429, count=50, retry_after=0)
    policy = RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.1, deadline=5.0)
    client = PineconeClient(pinecone_server.api_key, pinecone_server.host, policy)
    try:
        with pytest.raises(BackendUnavailable, match="gave up after 3 attempts"):
            await PineconeStore(client, pg, SETTINGS).ensure(tenant("throttled", fresh_dimension()))
    finally:
        await client.close()
    assert len(pinecone_server.requests_for("list_indexes")) == 3


@pytest.mark.parametrize("code", ["QUOTA_EXCEEDED", "FORBIDDEN"])  # PINECONE.md's code, and the 2026-07 example's
async def test_index_quota_surfaces_as_vector_quota_exceeded(pinecone_server: PineconeTestServer,
                                                             pinecone_store: PineconeStore, code: str) -> None:
    pinecone_server.max_serverless_indexes = 1
    pinecone_server.quota_error_code = code
    dimension = fresh_dimension()
    await pinecone_store.ensure(tenant("first", dimension, VectorIsolation.DEDICATED))
    with pytest.raises(VectorQuotaExceeded, match="max serverless indexes") as raised:
        await pinecone_store.ensure(tenant("second", dimension, VectorIsolation.DEDICATED))
    assert raised.value.reason == "VectorQuotaExceeded" and raised.value.retry_after == 30
    assert len(pinecone_server.requests_for("create_index")) == 2  # refused once, not hammered


async def test_namespace_quota_surfaces_as_vector_quota_exceeded(pinecone_server: PineconeTestServer,
                                                                 pinecone_store: PineconeStore) -> None:
    pinecone_server.max_namespaces_per_index = 1  # the plan allows fewer than the class's capacity
    dimension = fresh_dimension()
    await pinecone_store.ensure(tenant("one", dimension, capacity=5))
    with pytest.raises(VectorQuotaExceeded, match="max namespaces .* lower spec.vector.sharedIndex.capacity"):
        await pinecone_store.ensure(tenant("two", dimension, capacity=5))


async def test_dedicated_index_is_protected_tagged_and_unprotected_before_deletion(
        pinecone_server: PineconeTestServer, pinecone_store: PineconeStore) -> None:
    store = tenant("guarded", fresh_dimension(), VectorIsolation.DEDICATED)
    placement, _ = await pinecone_store.ensure(store)
    index = pinecone_server.index(placement.index)
    assert index["deletion_protection"] == "enabled"
    assert index["tags"] == {"tenant": store.tenant_id, "managed-by": "tenantstore"}
    assert len(placement.index) <= 45

    async with AsyncPinecone(api_key=pinecone_server.api_key, host=pinecone_server.host) as admin:
        await admin.indexes.configure(placement.index, deletion_protection="disabled")  # someone turned it off
    assert reasons((await pinecone_store.ensure(store))[1]) == ["DeletionProtectionEnabled"]
    assert pinecone_server.index(placement.index)["deletion_protection"] == "enabled"

    pinecone_server.terminate_delay = 0.3  # Terminating for a while: teardown waits until it is gone
    steps = await pinecone_store.teardown(store)
    assert reasons(steps) == ["DeletionProtectionDisabled", "DedicatedIndexDeleted"]
    assert pinecone_server.index(placement.index) is None
    assert [r.status for r in pinecone_server.requests_for("delete_index")] == [202]  # never refused with 403
    configured = pinecone_server.requests_for("configure_index")[-1]
    assert configured.at < pinecone_server.requests_for("delete_index")[0].at
    assert await pinecone_store.teardown(store) == [] and await pinecone_store.residue(store) == []


async def test_an_index_that_never_gets_ready_fails_at_the_deadline(pinecone_server: PineconeTestServer,
                                                                    pg: PostgresServer) -> None:
    pinecone_server.ready_delay = 60
    client = PineconeClient(pinecone_server.api_key, pinecone_server.host,
                            RetryPolicy(index_timeout=0.3, poll_first=0.05, poll_max=0.1))
    try:
        with pytest.raises(BackendUnavailable, match="still Initializing after"):
            store = tenant("slow", fresh_dimension(), VectorIsolation.DEDICATED)
            await PineconeStore(client, pg, SETTINGS).ensure(store)
    finally:
        await client.close()


async def test_an_index_of_the_same_name_not_made_for_the_tenant_is_left_alone(
        pinecone_server: PineconeTestServer, pinecone_store: PineconeStore) -> None:
    dimension = fresh_dimension()
    store = tenant("squatted", dimension, VectorIsolation.DEDICATED)
    async with AsyncPinecone(api_key=pinecone_server.api_key, host=pinecone_server.host) as admin:
        await admin.indexes.create(name=f"ts-{store.tenant_id}", dimension=dimension, metric="cosine", timeout=-1)
    with pytest.raises(TenantIdConflict, match="not made by tenantstore"):
        await pinecone_store.ensure(store)
    assert await pinecone_store.teardown(store) == [] and await pinecone_store.residue(store) == []
    assert pinecone_server.index(f"ts-{store.tenant_id}") is not None


async def test_a_namespace_already_gone_counts_as_deleted(pinecone_server: PineconeTestServer,
                                                          pinecone_store: PineconeStore) -> None:
    dimension = fresh_dimension()
    early, racing = tenant("early", dimension), tenant("racing", dimension)
    early_at, _ = await pinecone_store.ensure(early)
    racing_at, _ = await pinecone_store.ensure(racing)

    pinecone_server.drop_namespace(early_at.index, early.tenant_id)  # deleted by someone else before teardown
    assert await pinecone_store.teardown(early) == []
    # Listed, then gone before our delete arrives: the delete answers 404, which is success too.
    pinecone_server.before_next("deleteNamespace", lambda s: s.drop_namespace(racing_at.index, racing.tenant_id))
    assert reasons(await pinecone_store.teardown(racing)) == ["NamespaceDeleted"]
    assert [r.status for r in pinecone_server.requests_for("deleteNamespace")] == [404]
    assert await pinecone_store.residue(early) == await pinecone_store.residue(racing) == []


async def test_parallel_placement_across_replicas_never_exceeds_capacity(
        pinecone_server: PineconeTestServer, admin_uri: str) -> None:
    """Ten tenants at once, capacity 3, from two 'replicas' (own Postgres pools, own Pinecone clients)."""
    dimension = fresh_dimension()
    replicas = []
    for _ in range(2):
        client = PineconeClient(pinecone_server.api_key, pinecone_server.host, FAST_RETRIES)
        replicas.append(PineconeStore(client, PostgresServer(admin_uri, "tenants"), SETTINGS))
    stores = [tenant(f"rush{i}", dimension, capacity=3) for i in range(10)]
    try:
        results = await asyncio.gather(*(replicas[i % 2].ensure(store) for i, store in enumerate(stores)))
    finally:
        for replica in replicas:
            await replica.client.close()
            await replica.server.close()

    held = {name: set(pinecone_server.namespaces(name)) - {"__default__"} for name in pinecone_server.index_names()}
    assert sorted(held) == [f"shared-{dimension}-cosine-{n}" for n in (1, 2, 3, 4)]
    assert all(len(tenants) <= 3 for tenants in held.values())
    assert max(pinecone_server.namespace_high_water.values()) == 3  # never more than capacity, at any moment
    for store, (placement, _) in zip(stores, results, strict=True):
        assert store.tenant_id in held[placement.index]
    assert sum(len(tenants) for tenants in held.values()) == 10


async def test_reading_batches_continues_from_the_last_page(pinecone_server: PineconeTestServer,
                                                            pinecone_store: PineconeStore) -> None:
    dimension = fresh_dimension()
    store = tenant("pager", dimension)
    placement, _ = await pinecone_store.ensure(store)
    await pinecone_store.write_batch(store, placement, records("v", 30, dimension))
    after, pages, lists = None, [], []
    while batch := await pinecone_store.read_batch(store, placement, after, limit=10):
        pages.append([record.id for record in batch])
        lists.append(len(pinecone_server.requests_for("listVectors")))
        after = batch[-1].id
    assert [page[0] for page in pages] == ["v-000", "v-010", "v-020"]
    assert lists == [1, 2, 3]  # one list request per batch: the token that followed a batch is reused
    resumed = await pinecone_store.read_batch(store, placement, "v-015", limit=10)  # no cursor for it: rescans
    assert [record.id for record in resumed] == [f"v-{i:03}" for i in range(16, 26)]


async def test_usage_is_measured_and_isolation_probed(pinecone_server: PineconeTestServer,
                                            pinecone_store: PineconeStore) -> None:
    dimension = fresh_dimension()
    shared, dedicated = tenant("small", dimension), tenant("big", dimension, VectorIsolation.DEDICATED)
    shared_at, _ = await pinecone_store.ensure(shared)
    dedicated_at, _ = await pinecone_store.ensure(dedicated)
    await pinecone_store.write_batch(shared, shared_at, records("s", 2, dimension))
    await pinecone_store.write_batch(dedicated, dedicated_at, records("d", 7, dimension))
    usage = await pinecone_store.measure([(shared, shared_at), (dedicated, dedicated_at)])
    assert (usage[shared.tenant_id].documents, usage[dedicated.tenant_id].documents) == (2, 7)
    assert usage[dedicated.tenant_id].storage_bytes > usage[shared.tenant_id].storage_bytes > 0
    assert await pinecone_store.ensure_write_access(shared, shared_at) == []
    assert await pinecone_store.probe_isolation(shared, shared_at) is None
    assert pinecone_store.shared_credential() is None
    exposing = PineconeStore(pinecone_store.client, pinecone_store.server,
                             dataclasses.replace(SETTINGS, expose_api_key=True))
    # The class's own choice, reported on the class: not a finding that fails each tenant's placement.
    assert "project-wide Pinecone API key" in exposing.shared_credential()
    assert await exposing.probe_isolation(shared, shared_at) is None


async def test_a_rejected_api_key_is_a_store_class_problem(pinecone_server: PineconeTestServer,
                                                           pg: PostgresServer) -> None:
    pinecone_server.tolerate_unauthorized = True
    client = PineconeClient("not-the-key", pinecone_server.host, FAST_RETRIES)
    store = PineconeStore(client, pg, SETTINGS)
    try:
        with pytest.raises(StoreClassInvalid, match="Pinecone rejected the API key"):
            await store.ensure(tenant("locked", fresh_dimension()))
        assert reasons(await store.preflight()) == ["PineconeApiKeyRejected"]
    finally:
        await client.close()


async def test_an_unreachable_pinecone_is_backend_unavailable(pg: PostgresServer) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = PineconeClient("key", f"http://127.0.0.1:{port}", RetryPolicy(attempts=2, first_delay=0.01))
    store = PineconeStore(client, pg, SETTINGS)
    try:
        with pytest.raises(BackendUnavailable, match="Pinecone did not answer"):
            await store.ensure(tenant("offline", fresh_dimension()))
        assert reasons(await store.preflight()) == ["PineconeUnreachable"]
    finally:
        await client.close()


async def test_the_server_fails_loudly_on_requests_outside_the_spec(pinecone_server: PineconeTestServer) -> None:
    headers = {"Api-Key": pinecone_server.api_key, "X-Pinecone-Api-Version": "2026-07"}
    async with httpx.AsyncClient(base_url=pinecone_server.host) as http:
        assert (await http.get("/indexes", headers={"Api-Key": pinecone_server.api_key})).status_code == 400
        assert (await http.get("/indexes", headers={**headers, "X-Pinecone-Api-Version": "2025-01"})).status_code == 400
        assert (await http.get("/collections", headers=headers)).status_code == 404
        assert (await http.post("/indexes", headers=headers, json={"name": "x", "dimension": 3})).status_code == 400
        assert (await http.get("/indexes", headers={**headers, "Api-Key": "wrong"})).status_code == 401
        assert (await http.get("/indexes", headers=headers)).status_code == 200
    problems = pinecone_server.take_problems()
    assert len(problems) == 5, problems
    assert "X-Pinecone-Api-Version" in problems[0] and "/collections" in problems[2] and "dimension" in problems[3]


async def test_the_registry_builds_the_store_from_the_class_and_its_secret(
        pinecone_server: PineconeTestServer, admin_uri: str) -> None:
    class FakeSecrets:
        async def value(self, ref: SecretKeyRef, fresh: bool = False) -> str:
            return {"pg-admin": admin_uri, "pinecone": pinecone_server.api_key}[ref.name]

    body = {"metadata": {"name": "vectors"}, "spec": {
        "postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "ops"}},
        "vector": {"backend": "pinecone", "pinecone": {
            "apiKeySecretRef": {"name": "pinecone", "namespace": "ops"}, "region": "eu-west-1",
            "host": pinecone_server.host}}}}
    store_class = StoreClass.from_body(body)
    registry = BackendRegistry(FakeSecrets())  # type: ignore[arg-type]
    try:
        first, second = await registry.for_class(store_class), await registry.for_class(store_class)
        assert isinstance(first.vector, PineconeStore) and first.vector.backend == "pinecone"
        assert first.vector.client is second.vector.client  # one client per (key, host), reused
        assert await first.vector.preflight() == []
        placement, _ = await first.vector.ensure(tenant("wired", fresh_dimension(), VectorIsolation.DEDICATED))
        assert pinecone_server.index(placement.index)["deployment"]["region"] == "eu-west-1"
    finally:
        await registry.close()



async def test_placement_counts_tenants_across_namespace_pages(pinecone_server: PineconeTestServer,
                                                               pinecone_store: PineconeStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pinecone_backend, "LIST_PAGE_MAX", 2)  # namespaces arrive two per page
    dimension = fresh_dimension()
    stores = [tenant(f"paged{i}", dimension, capacity=3) for i in range(5)]
    indexes = [(await pinecone_store.ensure(store))[0].index for store in stores]
    first, second = f"shared-{dimension}-cosine-1", f"shared-{dimension}-cosine-2"
    assert indexes == [first] * 3 + [second] * 2
    shared = pinecone_server.index(first)
    assert shared["deletion_protection"] == "enabled"  # many tenants' data: protected like a dedicated index
    assert shared["tags"] == {"managed-by": "tenantstore", "pool": f"{dimension}-cosine"}
    placement, steps = await pinecone_store.ensure(stores[2])  # found again across pages: stays put
    assert (placement.index, steps) == (first, [])
    listings = pinecone_server.requests_for("listNamespacesOperation")
    assert len(listings) > len(pinecone_server.requests_for("list_indexes"))  # more than one page per look


def test_writes_and_reads_are_split_within_request_limits() -> None:
    small = [VectorRecord(f"id-{i}", [1.0]) for i in range(2500)]
    assert [len(chunk) for chunk in upsert_chunks(small)] == [1000, 1000, 500]
    wide = [VectorRecord(f"w-{i}", [0.123456789] * 20000) for i in range(10)]  # ~250 kB each as JSON
    chunks = list(upsert_chunks(wide))
    assert all(len(json.dumps(chunk)) < 2_000_000 for chunk in chunks) and sum(map(len, chunks)) == 10
    assert "metadata" not in upsert_chunks(small[:1]).__next__()[0]  # no empty metadata on the wire
    long_ids = [f"{i:03}" + "x" * 497 for i in range(30)]
    assert [len(chunk) for chunk in fetch_chunks(long_ids)] == [8, 8, 8, 6]
