"""Tier changes: which move a reconcile must make or finish (migration.pending_move), the move itself through
reconcile_tenant (copy, verify, cut over, delete the source), resuming it, and the moves it refuses."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tenantstore import migration, relational_moves
from tenantstore.backends import VectorPlacement, VectorRecord
from tenantstore.errors import BackendUnavailable
from tenantstore.models import (DesiredStore, RelationalIsolation, StoreClass, TenantStoreSpec, VectorIsolation,
                                desired_store)

from .world import World, condition, ready, reasons, spec_changed, stalled, store_class, tenant_body

# Tiers that keep the relational isolation, so moving between them moves only vectors.
MOVABLE = {"enterprise": {"relational": "schema", "vector": "dedicated"}}
SHARED = {"backend": "pgvector", "index": "shared-384-cosine-1", "namespace": "acme",
          "table": "tenantstore_vectors.tenant_acme"}
DEDICATED = {"backend": "pgvector", "index": "ts-acme", "table": "tenant_acme.vectors"}


def records(count: int) -> list[VectorRecord]:
    return [VectorRecord(id=f"v{n:02}", values=[float(n), 1.0], metadata={"n": n}) for n in range(count)]


def placement(raw: Mapping[str, Any]) -> VectorPlacement:
    found = VectorPlacement.from_status(dict(raw))
    assert found is not None
    return found


def desired(tier: str, store_class_: StoreClass) -> DesiredStore:
    return desired_store(TenantStoreSpec.from_body(tenant_body(tier=tier)), store_class_, "uid-customers-acme",
                         "customers/acme")


async def movable_tenant(world: World, count: int = 5) -> dict[str, Any]:
    """A free tenant of a class whose enterprise tier keeps the schema, with `count` vectors in its namespace."""
    world.classes["standard"] = store_class(tiers=MOVABLE)
    body = await world.provision(tenant_body())
    world.vector.put(placement(body["status"]["vectorStore"]), *records(count))
    return body


# --- which move ---

def test_a_tenant_whose_vectors_are_where_its_tier_wants_them_has_no_move() -> None:
    status = {"isolation": {"relational": "schema", "vector": "namespace"}, "vectorStore": SHARED}

    assert migration.pending_move(desired("free", store_class(tiers=MOVABLE)), status) is None
    assert migration.pending_move(desired("enterprise", store_class(tiers=MOVABLE)), {}) is None  # nothing made yet


def test_a_tier_change_moves_from_what_status_says_was_made() -> None:
    status = {"isolation": {"relational": "schema", "vector": "namespace"}, "vectorStore": SHARED}

    move = migration.pending_move(desired("enterprise", store_class(tiers=MOVABLE)), status)

    assert move is not None
    assert (move.source.vector, move.target.vector) == (VectorIsolation.NAMESPACE, VectorIsolation.DEDICATED)
    assert move.source_placement == placement(SHARED) and move.resume_after is None


def test_a_copy_that_was_interrupted_resumes_after_the_last_copied_id() -> None:
    status = {"isolation": {"relational": "schema", "vector": "namespace"}, "vectorStore": SHARED,
              "migration": {"from": "namespace", "to": "dedicated", "state": "Copying", "source": SHARED,
                            "lastId": "v03", "copied": 4, "total": 9}}

    move = migration.pending_move(desired("enterprise", store_class(tiers=MOVABLE)), status)

    assert move is not None and move.resume_after == "v03" and move.source_placement == placement(SHARED)


def test_a_move_cut_over_before_its_source_was_deleted_only_deletes_the_source() -> None:
    status = {"isolation": {"relational": "schema", "vector": "dedicated"}, "vectorStore": DEDICATED,
              "migration": {"from": "namespace", "to": "dedicated", "state": "SourcePendingDeletion",
                            "source": SHARED}}

    move = migration.pending_move(desired("enterprise", store_class(tiers=MOVABLE)), status)

    assert move is not None and move.resume_after is None
    assert move.source.vector is VectorIsolation.NAMESPACE and move.source_placement == placement(SHARED)


# --- relational moves: which one a reconcile must make, finish, abandon or tear down ---

def test_a_tier_change_between_schema_and_database_is_a_relational_move() -> None:
    enterprise = desired("enterprise", store_class())
    move = relational_moves.pending(enterprise, {"isolation": {"relational": "schema", "vector": "namespace"}})
    assert move is not None and move.state == relational_moves.COPYING
    assert (move.source.relational, move.target.relational) == (RelationalIsolation.SCHEMA,
                                                                 RelationalIsolation.DATABASE)
    assert (move.source.database, move.target.database) == ("tenants", "tenant_acme")
    assert relational_moves.pending(enterprise, {"isolation": {"relational": "database"}}) is None


def test_a_recorded_switch_only_finishes_and_a_turned_back_copy_is_dropped() -> None:
    free, enterprise = desired("free", store_class()), desired("enterprise", store_class())
    switched = {"isolation": {"relational": "database"},
                "relationalMigration": {"from": "schema", "to": "database", "state": "SourcePendingDeletion"}}
    move = relational_moves.pending(enterprise, switched)
    assert move is not None and move.state == relational_moves.SOURCE_PENDING_DELETION
    assert move.source.relational is RelationalIsolation.SCHEMA
    copying = {"isolation": {"relational": "schema"},
               "relationalMigration": {"from": "schema", "to": "database", "state": "Copying"}}
    given_up = relational_moves.abandoned(free, copying)  # the tier went back to free mid-copy
    assert given_up is not None and given_up.relational is RelationalIsolation.DATABASE
    assert relational_moves.abandoned(enterprise, copying) is None
    side = relational_moves.other_side(free, copying)  # deleted mid-copy: both sides go
    assert side is not None and side.relational is RelationalIsolation.DATABASE


# --- the move ---

async def test_a_tier_change_moves_every_vector_to_the_tenants_own_index(world: World) -> None:
    body = await movable_tenant(world, count=5)

    outcome, body = await world.converge(spec_changed(body, tier="enterprise"))

    assert "VectorsCopied" in reasons(outcome) and "NamespaceDropped" in reasons(outcome)
    assert outcome.events[reasons(outcome).index("VectorsCopied")].message == (
        "5 vectors copied from namespace acme of shared-384-cosine-1 to ts-acme and verified")
    status = outcome.status
    assert status["phase"] == "Ready" and ready(status) == ("True", "Provisioned")
    migrating = condition(status, "Migrating")
    assert (migrating["status"], migrating["reason"], migrating["message"]) == ("False", "Done",
                                                                               "vectors live in ts-acme, tables in schema tenant_acme of database tenants")
    assert status["isolation"] == {"relational": "schema", "vector": "dedicated"}
    assert body["status"]["vectorStore"] == DEDICATED  # the shared placement's keys are gone, not merged
    assert "migration" not in body["status"]
    target = placement(DEDICATED)
    assert world.vector.stored(target) == {record.id: record for record in records(5)}
    assert world.vector.index_of("acme") is None
    assert not world.vector.writes_blocked(target)  # the tenant writes again, on the target
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and (secret.data["vectorIndex"], secret.data["vectorTable"]) == ("ts-acme",
                                                                                               "tenant_acme.vectors")
    assert secret.data["vectorNamespace"] == ""


async def test_the_move_reports_each_step_so_a_restart_can_resume(world: World) -> None:
    body = await movable_tenant(world, count=5)

    await world.converge(spec_changed(body, tier="enterprise"))

    reports = world.reports
    assert reports[0]["phase"] == "Migrating"
    assert (condition(reports[0], "Migrating")["status"], condition(reports[0], "Migrating")["reason"]) == \
        ("True", "Copying")
    copying = [r["migration"] for r in reports if (r.get("migration") or {}).get("state") == "Copying"]
    assert [(m["copied"], m["total"], m["lastId"]) for m in copying] == [(0, 5, None), (2, 5, "v01"),
                                                                         (4, 5, "v03"), (5, 5, "v04")]
    [cut_over] = [r for r in reports if (r.get("migration") or {}).get("state") == "SourcePendingDeletion"]
    assert cut_over["migration"]["source"] == SHARED
    assert cut_over["vectorStore"] == {"namespace": None, **DEDICATED}
    assert cut_over["isolation"] == {"relational": "schema", "vector": "dedicated"}
    assert {"migration": None} in reports
    assert reports[-1]["phase"] == "Ready"  # the end result, in full


async def test_the_source_is_frozen_while_it_is_copied(world: World) -> None:
    body = await movable_tenant(world, count=3)
    world.vector.fail("read_batch", BackendUnavailable("stop here"))

    await world.converge(spec_changed(body, tier="enterprise"))

    assert world.vector.writes_blocked(placement(SHARED))
    assert world.vector.writes_blocked(placement(DEDICATED))


async def test_a_move_back_to_a_shared_index_works_the_same_way(world: World) -> None:
    world.classes["standard"] = store_class(tiers=MOVABLE)
    body = await world.provision(tenant_body(tier="enterprise"))
    world.vector.put(placement(DEDICATED), *records(3))

    outcome, body = await world.converge(spec_changed(body, tier="pro"))

    assert ready(outcome.status) == ("True", "Provisioned")
    assert body["status"]["vectorStore"] == SHARED and "DedicatedIndexDropped" in reasons(outcome)
    assert world.vector.stored(placement(SHARED)) == {record.id: record for record in records(3)}
    assert world.vector.dedicated == {}


async def test_a_copy_interrupted_mid_way_resumes_from_the_last_copied_id_without_duplicates(world: World) -> None:
    body = await movable_tenant(world, count=5)
    world.vector.fail("write_batch", BackendUnavailable("connection lost"), times=1, after=1)

    outcome, body = await world.converge(spec_changed(body, tier="enterprise"))

    assert ready(outcome.status) == ("False", "BackendUnavailable")
    assert body["status"]["migration"]["state"] == "Copying" and body["status"]["migration"]["lastId"] == "v01"
    assert body["status"]["phase"] == "Migrating"
    world.vector.calls.clear()

    outcome, body = await world.converge(body)

    assert ready(outcome.status) == ("True", "Provisioned")
    assert world.vector.called("write_batch") == 2  # v02..v03, v04: what was copied is not copied again
    resumed = [r["migration"] for r in world.reports if (r.get("migration") or {}).get("state") == "Copying"]
    assert (resumed[0]["copied"], resumed[0]["lastId"]) == (2, "v01")
    assert world.vector.stored(placement(DEDICATED)) == {record.id: record for record in records(5)}


async def test_an_interrupted_copy_still_says_migrating(world: World) -> None:
    """The README: while vectors move, phase Migrating and condition Migrating=True."""
    body = await movable_tenant(world, count=5)
    world.vector.fail("write_batch", BackendUnavailable("connection lost"), times=1, after=1)

    _, body = await world.converge(spec_changed(body, tier="enterprise"))

    assert body["status"]["migration"]["state"] == "Copying" and body["status"]["phase"] == "Migrating"
    migrating = condition(body["status"], "Migrating")
    assert (migrating["status"], migrating["reason"]) == ("True", "Copying")


async def test_a_move_stopped_after_the_cut_over_finishes_by_deleting_the_source(world: World) -> None:
    body = await movable_tenant(world, count=4)
    world.vector.fail("teardown", BackendUnavailable("stopped"), times=1)
    _, body = await world.converge(spec_changed(body, tier="enterprise"))
    assert body["status"]["migration"]["state"] == "SourcePendingDeletion"
    world.vector.calls.clear()

    outcome, body = await world.converge(body)

    assert ready(outcome.status) == ("True", "Provisioned")
    assert world.vector.called("read_batch") == 0 and world.vector.called("write_batch") == 0
    assert world.vector.index_of("acme") is None and "migration" not in body["status"]
    assert len(world.vector.stored(placement(DEDICATED))) == 4


@pytest.mark.parametrize("fault", ["corrupt_copies", "lose_copies"])
async def test_a_copy_that_does_not_verify_keeps_the_tenant_migrating(world: World, fault: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The README: MigrationVerificationFailed leaves the tenant in phase Migrating (Migrating=True), retried."""
    monkeypatch.setattr(migration, "COUNT_SETTLE_SECONDS", 0.0)
    body = await movable_tenant(world, count=5)
    setattr(world.vector, fault, True)

    outcome, body = await world.converge(spec_changed(body, tier="enterprise"))

    assert ready(outcome.status) == ("False", "MigrationVerificationFailed")
    assert outcome.retry_after == 30.0 and stalled(outcome.status) is None
    assert body["status"]["migration"]["state"] == "Copying"
    assert world.vector.index_of("acme") is not None  # the source is kept
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.data["vectorIndex"] == "shared-384-cosine-1"
    assert body["status"]["phase"] == "Migrating"
    assert condition(body["status"], "Migrating")["status"] == "True"
