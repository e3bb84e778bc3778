"""fleet: the per-class job that measures every tenant at once, judges quotas (Block, Alert) and enforces them,
and decides which tenants need a reconcile because their class or their namespace's labels changed."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tenantstore import fleet
from tenantstore.api import WRITES_BLOCKED_ANNOTATION
from tenantstore.backends import RelationalUsage, VectorPlacement, VectorRecord
from tenantstore.errors import BackendUnavailable

from .world import (CUSTOMERS_ONLY, NOW, World, condition, deleting, merge_patch, reasons, store_class,
                    tenant_body)

STANDARD = store_class()


def placement_of(body: Mapping[str, Any]) -> VectorPlacement:
    placement = VectorPlacement.from_status(body["status"]["vectorStore"])
    assert placement is not None
    return placement


def records(count: int) -> list[VectorRecord]:
    return [VectorRecord(id=f"v{n:02}", values=[float(n), 0.5]) for n in range(count)]


def after_patches(world: World, body: Mapping[str, Any]) -> dict[str, Any]:
    """The body once the job's status patches for it are applied."""
    status = dict(body["status"])
    for _, changes in world.statuses.patches:
        status = merge_patch(status, changes)
    world.statuses.patches.clear()
    return {**body, "status": status}


async def test_the_first_measurement_writes_the_figures_and_nothing_else(world: World) -> None:
    body = await world.provision(tenant_body())
    world.vector.put(placement_of(body), *records(3))
    world.relational.usage["acme"] = RelationalUsage(storage_bytes=8192, connections=2, daily_queries=40)
    world.vector.storage["acme"] = 1024
    writes = world.secrets.writes

    [measured] = await world.measure(STANDARD, [body])

    assert world.statuses.patches == [("customers/acme", {"usage": {
        "documents": 3, "storageBytes": 9216, "relationalStorageBytes": 8192, "connections": 2, "dailyQueries": 40,
        "measuredAt": NOW}})]
    assert measured.events == [] and measured.warning is False and not measured.verdict.exceeded
    assert world.secrets.writes == writes
    assert world.relational.called("ensure_write_access") == world.vector.called("ensure_write_access") == 0


async def test_the_same_figures_again_cost_no_api_write(world: World) -> None:
    body = await world.provision(tenant_body())
    world.vector.put(placement_of(body), *records(3))
    await world.measure(STANDARD, [body])
    body = after_patches(world, body)

    [measured] = await world.measure(STANDARD, [body])

    assert world.statuses.patches == [] and measured.events == []


async def test_all_tenants_of_a_class_are_measured_in_one_call_per_store(world: World) -> None:
    tenants = [await world.provision(tenant_body(name)) for name in ("acme", "globex", "initech")]

    measured = await world.measure(STANDARD, tenants)

    assert [m.body["metadata"]["name"] for m in measured] == ["acme", "globex", "initech"]
    assert world.relational.called("measure") == 1 and world.vector.called("measure") == 1


async def test_reaching_a_block_quota_refuses_writes_everywhere_and_says_so(world: World) -> None:
    body = await world.provision(tenant_body(quotas={"maxDocuments": 10}))
    world.vector.put(placement_of(body), *records(10))

    [measured] = await world.measure(STANDARD, [body])

    assert reasons(measured) == ["WritesBlocked", "VectorWritesBlocked", "SecretAnnotated", "WritesBlocked"]
    message = ("documents 10 of 10: writes are refused until usage falls under the limit or the quota is raised")
    assert measured.events[-1].message == message
    assert measured.warning is True and measured.verdict.blocks_writes
    [(_, changes)] = world.statuses.patches
    quota = condition(changes, "QuotaExceeded")
    assert (quota["status"], quota["reason"], quota["message"]) == ("True", "WritesBlocked", message)
    assert world.relational.schemas["tenant_acme"] == "tenantstore_hold_acme"
    assert world.vector.writes_blocked(placement_of(body))
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.annotations[WRITES_BLOCKED_ANNOTATION] == "true"


async def test_writes_come_back_when_usage_falls_under_the_limit(world: World) -> None:
    body = await world.provision(tenant_body(quotas={"maxDocuments": 10}))
    world.vector.put(placement_of(body), *records(10))
    await world.measure(STANDARD, [body])
    body = after_patches(world, body)
    world.vector.records[("shared-384-cosine-1", "acme")].pop("v00")  # the tenant deletes one

    [measured] = await world.measure(STANDARD, [body])

    assert reasons(measured) == ["WritesRestored", "VectorWritesRestored", "SecretAnnotated", "QuotaWithinLimits"]
    assert measured.warning is False
    [(_, changes)] = world.statuses.patches
    assert condition(changes, "QuotaExceeded")["reason"] == "WithinLimits"
    assert changes["usage"]["documents"] == 9
    assert world.relational.schemas["tenant_acme"] == "tenant_acme"
    assert not world.vector.writes_blocked(placement_of(body))
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and WRITES_BLOCKED_ANNOTATION not in secret.annotations


async def test_a_block_already_in_place_is_not_applied_again(world: World) -> None:
    body = await world.provision(tenant_body(quotas={"maxDocuments": 10}))
    world.vector.put(placement_of(body), *records(10))
    await world.measure(STANDARD, [body])
    body = after_patches(world, body)
    world.relational.calls.clear()

    [measured] = await world.measure(STANDARD, [body])

    assert measured.events == [] and measured.warning is False and world.statuses.patches == []
    assert world.relational.called("ensure_write_access") == 0


async def test_storage_counts_the_schema_and_the_vectors_together(world: World) -> None:
    body = await world.provision(tenant_body())  # free tier: 1Gi
    world.relational.usage["acme"] = RelationalUsage(storage_bytes=600 * 2**20)
    world.vector.storage["acme"] = 424 * 2**20

    [measured] = await world.measure(STANDARD, [body])

    assert measured.usage.storage_bytes == 2**30
    assert measured.verdict.blocks_writes
    assert measured.events[-1].message.startswith(f"storageBytes {2**30} of {2**30}: writes are refused")


async def test_an_alert_quota_is_reported_and_blocks_nothing(world: World) -> None:
    body = await world.provision(tenant_body(quotas={"maxDocuments": 10}, quotaAction="Alert"))
    world.vector.put(placement_of(body), *records(11))
    writes = world.secrets.writes

    [measured] = await world.measure(STANDARD, [body])

    assert reasons(measured) == ["LimitReached"]
    assert measured.events[0].message == "documents 11 of 10 (quotaAction Alert: reported, not blocked)"
    assert measured.warning is True and not measured.verdict.blocks_writes
    assert world.relational.called("ensure_write_access") == 0 and world.secrets.writes == writes
    assert not world.vector.writes_blocked(placement_of(body))


async def test_daily_queries_over_a_block_quota_are_reported_not_blocked(world: World) -> None:
    body = await world.provision(tenant_body())  # free tier: 1,000 queries a day
    world.relational.usage["acme"] = RelationalUsage(daily_queries=1_000)

    [measured] = await world.measure(STANDARD, [body])

    assert reasons(measured) == ["LimitReached"]
    assert measured.events[0].message == "dailyQueries 1000 of 1000 (quotaAction Block: reported, not blocked)"
    assert world.relational.schemas["tenant_acme"] == "tenant_acme"


async def test_connections_are_left_to_postgres(world: World) -> None:
    body = await world.provision(tenant_body())  # free tier: 5 connections
    world.relational.usage["acme"] = RelationalUsage(connections=7)

    [measured] = await world.measure(STANDARD, [body])

    assert not measured.verdict.exceeded and measured.events == []


@pytest.mark.parametrize("state", ["deleting", "migrating", "never provisioned", "invalid spec"])
async def test_tenants_that_are_not_settled_are_not_measured(world: World, state: str) -> None:
    body = await world.provision(tenant_body())
    if state == "deleting":
        body = deleting(body)
    elif state == "migrating":
        body["status"]["migration"] = {"state": "Copying", "from": "namespace", "to": "dedicated"}
    elif state == "never provisioned":
        body = tenant_body(status={"phase": "Pending"})
    else:
        body["spec"]["tenantId"] = "Not_Valid"
    world.registry.forbid()

    assert await world.measure(STANDARD, [body]) == []


async def test_a_tenant_that_vanished_while_measured_is_left_out(world: World) -> None:
    body = await world.provision(tenant_body())
    world.vector.drop_namespace("acme")  # a teardown racing the job

    assert await world.measure(STANDARD, [body]) == []
    assert world.statuses.patches == []


@pytest.mark.parametrize("fake, method", [("registry", "for_class"), ("relational", "measure"), ("vector", "measure")])
async def test_an_outage_is_raised_and_nothing_is_written(world: World, fake: str, method: str) -> None:
    body = await world.provision(tenant_body())
    {"registry": world.registry, "relational": world.relational, "vector": world.vector}[fake].fail(
        method, BackendUnavailable("cannot reach Postgres"))

    with pytest.raises(BackendUnavailable):
        await world.measure(STANDARD, [body])

    assert world.statuses.patches == []


# --- which tenants the job reconciles first ---

async def test_a_tenant_is_reconciled_when_its_class_changed_since(world: World) -> None:
    body = await world.provision(tenant_body())

    assert not fleet.needs_reconcile(store_class(generation=1), body)
    assert fleet.needs_reconcile(store_class(generation=2), body)
    assert not fleet.needs_reconcile(store_class(generation=2), tenant_body(status={"phase": "Pending"}))


async def test_namespace_labels_are_read_once_each_and_only_for_a_restricting_class(world: World) -> None:
    tenants = [await world.provision(tenant_body(name, namespace=namespace))
               for name, namespace in (("acme", "customers"), ("globex", "customers"), ("initech", "gone"))]
    world.namespaces.calls.clear()

    assert await fleet.namespace_labels(STANDARD, tenants, world.namespaces) == {}
    assert world.namespaces.calls == []

    found = await fleet.namespace_labels(store_class(allowedNamespaces=CUSTOMERS_ONLY), tenants, world.namespaces)

    assert list(found) == ["customers"]  # "gone" cannot be read: judged at the next run
    assert world.namespaces.calls == ["labels", "labels"]


async def test_admission_changed_when_the_namespaces_labels_disagree_with_the_ready_reason(world: World) -> None:
    restricted = world.classes["standard"] = store_class(allowedNamespaces=CUSTOMERS_ONLY)
    body = await world.provision(tenant_body())
    matching = {"customers": {"tenancy.dev/customers": "true"}}
    not_matching: dict[str, dict[str, str]] = {"customers": {}}

    assert not fleet.admission_changed(restricted, body, matching)
    assert fleet.admission_changed(restricted, body, not_matching)
    assert not fleet.admission_changed(restricted, body, {})  # labels not read: nothing to say

    world.namespaces.namespaces["customers"] = {}
    refused = world.written(body, await world.reconcile(body))
    assert not fleet.admission_changed(restricted, refused, not_matching)
    assert fleet.admission_changed(restricted, refused, matching)
