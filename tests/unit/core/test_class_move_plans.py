"""Moves between StoreClasses: when the spec asks for one, what status.migration says, and how copies compare."""
from __future__ import annotations

import dataclasses
import datetime

from tenantstore import classmoves, migration
from tenantstore.backends import VectorPlacement, VectorRecord, audit_table
from tenantstore.models import TenantStoreSpec

from .fakes import FakeVectorStore
from .world import World, ready, reasons, spec_changed, store_class, tenant_body


def spec(store_class_name: str) -> TenantStoreSpec:
    return TenantStoreSpec.from_body({"metadata": {"name": "acme"}, "spec": {
        "tenantId": "acme", "storeClassName": store_class_name, "vector": {"dimension": 3}}})


PROVISIONED = {"storeClassName": "standard", "relational": {"role": "tenant_acme"}}


def test_a_provisioned_tenant_whose_spec_names_another_class_moves_there() -> None:
    assert classmoves.requested_class(spec("dedicated-pg"), PROVISIONED) == "dedicated-pg"


def test_no_move_for_the_same_class_an_empty_name_or_a_tenant_not_made_yet() -> None:
    assert classmoves.requested_class(spec("standard"), PROVISIONED) is None
    assert classmoves.requested_class(spec(""), PROVISIONED) is None  # the default class never moves a tenant
    assert classmoves.requested_class(spec("dedicated-pg"), {"storeClassName": "standard"}) is None
    assert classmoves.requested_class(spec("dedicated-pg"), {}) is None


def test_a_tier_change_record_is_not_a_class_move() -> None:
    tier_move = {"migration": {"from": "namespace", "to": "dedicated", "state": "Copying"}}
    class_move = {"migration": {"kind": "StoreClass", "fromClass": "a", "toClass": "b", "state": "Copying"}}

    assert classmoves.recorded(tier_move) is None
    assert classmoves.recorded(class_move) == class_move["migration"]
    assert classmoves.recorded({}) is None


def test_the_freeze_bound_is_the_class_setting_or_five_minutes() -> None:
    assert store_class(moves={"maxFreezeSeconds": 20}).max_move_freeze_seconds == 20
    assert store_class().max_move_freeze_seconds == 300


def test_copies_compare_values_to_float32_precision_and_metadata_exactly() -> None:
    written = [VectorRecord(id="a", values=[0.1, 0.2], metadata={"n": 7})]
    # What a float32 store hands back for 0.1 and 0.2, and a number's JSON type changed on the way.
    read_back = [VectorRecord(id="a", values=[0.10000000149011612, 0.20000000298023224], metadata={"n": 7.0})]

    assert migration.same_records(written, read_back)
    assert not migration.same_records(written, [VectorRecord(id="a", values=[0.1, 0.21], metadata={"n": 7})])
    assert not migration.same_records(written, [VectorRecord(id="a", values=[0.1, 0.2], metadata={"n": 8})])
    assert not migration.same_records(written, [VectorRecord(id="b", values=[0.1, 0.2], metadata={"n": 7})])
    assert not migration.same_records(written, [])


def test_a_trail_read_from_both_classes_shows_a_moved_entry_once() -> None:
    at = datetime.datetime(2026, 11, 2, 9, 30, tzinfo=datetime.UTC)
    original = audit_table.Entry("acme", "uid-1", "customers", "acme", "Provisioned", "role tenant_acme created",
                                 "kubectl", "trace", at)
    copy = dataclasses.replace(audit_table.carried(original, "standard"), at=at + datetime.timedelta(days=30))
    later = dataclasses.replace(original, action="StoreClassMoved", message="moved", at=copy.at)

    assert copy.message == "role tenant_acme created [recorded 2026-11-02T09:30:00+00:00 in StoreClass standard]"
    assert audit_table.without_copies([original, copy, later]) == [original, later]
    # The old class is gone: its entries live on as the copies.
    assert audit_table.without_copies([copy, later]) == [copy, later]


# --- a move of the vectors to a Pinecone class on the same Postgres, through reconcile_tenant ---

async def tenant_with_a_pinecone_class(count: int = 5) -> tuple[World, FakeVectorStore, dict]:
    world = World.make()
    cone = world.registry.vectors_of_class["cone"] = FakeVectorStore("pinecone")
    world.classes["cone"] = store_class("cone", default=False, vector={"backend": "pinecone"})
    body = await world.provision(tenant_body(storeClassName="standard"))
    world.vector.put(VectorPlacement.from_status(body["status"]["vectorStore"]), *records(count))
    return world, cone, body


def records(count: int) -> list[VectorRecord]:
    return [VectorRecord(id=f"v{n:02}", values=[float(n), 1.0], metadata={"n": n}) for n in range(count)]


async def test_the_vectors_move_to_the_other_backend_and_the_source_goes() -> None:
    world, cone, body = await tenant_with_a_pinecone_class()
    source = VectorPlacement.from_status(body["status"]["vectorStore"])

    outcome, moved = await world.converge(spec_changed(body, storeClassName="cone", storeClassChange="Move"))

    assert outcome.warning is None and ready(moved["status"]) == ("True", "Provisioned")
    status = moved["status"]
    assert status["storeClassName"] == "cone" and status["vectorStore"]["backend"] == "pinecone"
    assert not status.get("migration") and status["lastClassMove"]["outcome"] == "Completed"
    target = VectorPlacement.from_status(status["vectorStore"])
    assert list(cone.stored(target).values()) == records(5)
    assert world.vector.stored(source) == {}  # the pgvector side is gone, the role and schema stay
    assert world.secrets.secrets[("customers", "acme-store")].data["vectorBackend"] == "pinecone"
    steps = reasons(outcome)
    assert "StoreClassMoveCopied" in steps and "StoreClassMoved" in steps
    states = [change["migration"]["state"] for change in world.reports if (change.get("migration") or {}).get("kind")]
    assert list(dict.fromkeys(states)) == ["Provisioning", "PreCopying", "Copying", "CuttingOver",
                                           "SourcePendingDeletion"]


async def test_a_copy_that_does_not_verify_leaves_the_tenant_writing_where_it_was() -> None:
    world, cone, body = await tenant_with_a_pinecone_class()
    source = VectorPlacement.from_status(body["status"]["vectorStore"])
    cone.corrupt_copies = True

    outcome, kept = await world.converge(spec_changed(body, storeClassName="cone", storeClassChange="Move"))

    assert outcome.warning is not None and outcome.warning.reason == "MigrationVerificationFailed"
    assert outcome.retry_after == 30
    assert kept["status"]["storeClassName"] == "standard" and not kept["status"].get("migration")
    assert world.vector.writes_refused == set()  # the freeze is lifted: the tenant writes where it was
    assert cone.dedicated == {} and not any(cone.records.values())  # the partial copy is removed
    assert world.secrets.secrets[("customers", "acme-store")].data["vectorBackend"] == "pgvector"
    assert len(world.vector.stored(source)) == 5

    cone.corrupt_copies = False  # the retry copies again, and verifies
    _, moved = await world.converge(kept)
    assert moved["status"]["storeClassName"] == "cone" and ready(moved["status"])[0] == "True"


async def test_a_second_reconcile_after_a_move_touches_no_backend() -> None:
    world, _, body = await tenant_with_a_pinecone_class()
    _, moved = await world.converge(spec_changed(body, storeClassName="cone", storeClassChange="Move"))
    world.registry.vector.calls.clear()
    world.registry.vectors_of_class["cone"].calls.clear()

    outcome, again = await world.converge(moved)

    assert outcome.events == [] and again["status"] == moved["status"]
    assert not any(call in ("write_batch", "delete_ids", "teardown") for call in world.vector.calls)


async def test_a_tenant_whose_secret_was_deleted_gets_one_that_logs_in_after_the_move() -> None:
    world, _, body = await tenant_with_a_pinecone_class()
    del world.secrets.secrets[("customers", "acme-store")]

    _, moved = await world.converge(spec_changed(body, storeClassName="cone", storeClassChange="Move"))

    assert moved["status"]["storeClassName"] == "cone"
    written = world.secrets.secrets[("customers", "acme-store")].data["password"]
    assert world.relational.roles["tenant_acme"].password == written
