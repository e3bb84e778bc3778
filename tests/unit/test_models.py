"""Pure logic: parsing, defaults, effective quotas, claims and conditions."""
from __future__ import annotations

import pytest

from tenantstore import conditions
from tenantstore.conditions import Condition
from tenantstore.errors import StoreClassNotFound, TenantIdConflict
from tenantstore.models import (InvalidResource, Quotas, RelationalIsolation, StoreClass, TenantStoreSpec, Tier,
                                VectorIsolation, backend_name, desired_store, format_quantity, parse_quantity)
from tenantstore.reconcile import ClaimRef, check_claim, resolve_store_class


def class_body(name: str = "standard", default: bool = True, tiers: dict | None = None) -> dict:
    return {"metadata": {"name": name, "generation": 1,
                         "annotations": {"storeclass.tenancy.dev/is-default-class": "true"} if default else {}},
            "spec": {"postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "ops"}},
                     "tiers": tiers or {}}}


def tenant_body(**spec: object) -> dict:
    return {"metadata": {"name": "acme", "namespace": "customers", "uid": "u-1"},
            "spec": {"tenantId": "acme", "vector": {"dimension": 384}, **spec}}


@pytest.mark.parametrize("text, expected", [("1Gi", 2**30), ("20Gi", 20 * 2**30), ("500M", 500_000_000),
                                            ("1024", 1024), (2048, 2048), ("1.5Ki", 1536)])
def test_quantities_parse_as_kubernetes_writes_them(text: str | int, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("fraction", ["0.5", "1.5", "1.0001k"])
def test_a_fraction_of_a_byte_is_refused_not_rounded_to_unlimited(fraction: str) -> None:
    with pytest.raises(InvalidResource, match="whole number of bytes"):
        parse_quantity(fraction)


def test_a_bad_quantity_names_itself() -> None:
    with pytest.raises(InvalidResource, match="12 parsecs"):
        parse_quantity("12 parsecs")


def test_quantities_are_reported_in_the_unit_users_wrote() -> None:
    assert format_quantity(20 * 2**30) == "20Gi" and format_quantity(1000) == 1000


def test_spec_defaults() -> None:
    spec = TenantStoreSpec.from_body(tenant_body())
    assert spec.tier is Tier.FREE and spec.metric.value == "cosine" and spec.secret_name == "acme-store"
    assert spec.deletion_policy.value == "Delete" and spec.quota_action.value == "Block"


def test_effective_quotas_override_the_tier_field_by_field() -> None:
    store_class = StoreClass.from_body(class_body(tiers={"pro": {"quotas": {"maxConnections": 7}}}))
    spec = TenantStoreSpec.from_body(tenant_body(tier="pro", quotas={"maxDocuments": 50000}))
    store = desired_store(spec, store_class, "u-1")
    assert store.quotas == Quotas(max_documents=50000, max_storage_bytes=20 * 2**30, max_connections=7,
                                  max_daily_queries=100_000)
    assert store.quotas.to_status()["maxStorageBytes"] == "20Gi"


def test_enterprise_gets_its_own_database_and_index_by_default() -> None:
    store = desired_store(TenantStoreSpec.from_body(tenant_body(tier="enterprise")),
                          StoreClass.from_body(class_body()), "u-1")
    assert (store.relational, store.vector) == (RelationalIsolation.DATABASE, VectorIsolation.DEDICATED)
    assert store.database == "tenant_acme" and store.schema == "public"
    assert store.connection_limit == 100


def test_unlimited_connections_become_postgres_minus_one() -> None:
    store_class = StoreClass.from_body(class_body(tiers={"free": {"quotas": {"maxConnections": 0}}}))
    assert desired_store(TenantStoreSpec.from_body(tenant_body()), store_class, "u").connection_limit == -1


def test_backend_names_are_valid_identifiers() -> None:
    assert backend_name("a-b-c") == "tenant_a_b_c"
    assert len(backend_name("a" * 40)) <= 63


def test_default_class_is_found_by_annotation() -> None:
    classes = {"other": StoreClass.from_body(class_body("other", default=False)),
               "standard": StoreClass.from_body(class_body())}
    assert resolve_store_class("", classes).name == "standard"
    with pytest.raises(StoreClassNotFound, match="missing"):
        resolve_store_class("missing", classes)
    with pytest.raises(StoreClassNotFound, match="no StoreClass is annotated"):
        resolve_store_class("", {"other": classes["other"]})


def test_the_oldest_claim_wins() -> None:
    older = ClaimRef("2026-01-01T00:00:00Z", "b", "ns1", "first")
    newer = ClaimRef("2026-01-02T00:00:00Z", "a", "ns2", "second")
    check_claim("acme", older, [newer])
    with pytest.raises(TenantIdConflict, match="ns1/first"):
        check_claim("acme", newer, [older])


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    first = conditions.merge_conditions([], [Condition("Ready", False, "Provisioning")], 1)
    first[0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    same = conditions.merge_conditions(first, [Condition("Ready", False, "BackendUnavailable")], 1)
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z" and same[0]["reason"] == "BackendUnavailable"
    flipped = conditions.merge_conditions(same, [Condition("Ready", True, "Provisioned")], 2)
    assert flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z" and flipped[0]["observedGeneration"] == 2


def test_unchanged_status_needs_no_write() -> None:
    current = {"phase": "Ready", "observedGeneration": 3}
    assert conditions.status_changes(current, {"phase": "Ready", "observedGeneration": 3}) == {}
    assert conditions.status_changes(current, {"phase": "Ready", "observedGeneration": 4}) == {"observedGeneration": 4}
