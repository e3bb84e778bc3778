"""Moves between StoreClasses: when the spec asks for one, what status.migration says, and how copies compare."""
from __future__ import annotations

import dataclasses
import datetime

from tenantstore import classmoves, migration
from tenantstore.backends import VectorRecord, audit_table
from tenantstore.models import TenantStoreSpec

from .world import store_class


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
