"""Pure logic: parsing, defaults, effective quotas, claims and conditions."""
from __future__ import annotations

import dataclasses
import datetime

import pytest

from tenantstore import conditions
from tenantstore.backends import VectorPlacement
from tenantstore.conditions import Condition
from tenantstore.errors import StoreClassNotFound, TenantIdConflict
from tenantstore.models import (ExportDestination, InvalidResource, Quotas, RelationalIsolation, StoreClass,
                                TenantStoreSpec, Tier, VectorIsolation, backend_name, desired_store, format_quantity,
                                parse_duration, parse_quantity)
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


@pytest.mark.parametrize("path", ["../other-namespace/acme", "a/../../b", "./a", "a//b", "/", "", "a/b c", "a/.."])
def test_an_export_path_never_leaves_its_namespace(path: str) -> None:
    with pytest.raises(InvalidResource, match="volume.path"):
        ExportDestination.from_dict({"volume": {"path": path}}, "spec.destination")


def test_export_destinations_parse_and_describe_where_they_are() -> None:
    volume = ExportDestination.from_dict({"volume": {"path": "/acme/2026-11-30/"}}, "d")
    assert (volume.path, volume.describe("customers")) == ("acme/2026-11-30", "volume:customers/acme/2026-11-30")
    s3 = ExportDestination.from_dict({"s3": {"endpoint": "https://s3.example.com:9000/", "bucket": "exports",
                                             "prefix": "customers/acme", "credentialsSecret": {"name": "bucket"}}}, "d")
    assert s3.s3 is not None and s3.s3.endpoint == "https://s3.example.com:9000" and s3.s3.region == "us-east-1"
    assert s3.describe("customers") == "s3:exports/customers/acme"
    for bad, field in (({"endpoint": "ftp://x", "bucket": "exports", "prefix": "p"}, "endpoint"),
                       ({"endpoint": "http://x", "bucket": "Ex", "prefix": "p"}, "bucket"),
                       ({"endpoint": "http://x", "bucket": "exports", "prefix": "p"}, "credentialsSecret"),
                       ({"endpoint": "http://x", "bucket": "exports", "prefix": "../p",
                         "credentialsSecret": {"name": "s"}}, "prefix")):
        with pytest.raises(InvalidResource, match=field):
            ExportDestination.from_dict({"s3": bad}, "d")


@pytest.mark.parametrize(("text", "days", "seconds"), [("90d", 90, 0), ("36h", 1, 12 * 3600), ("1h30m", 0, 5400),
                                                       ("45s", 0, 45), ("1d1s", 1, 1)])
def test_retention_durations(text: str, days: int, seconds: int) -> None:
    assert parse_duration(text) == datetime.timedelta(days=days, seconds=seconds)


@pytest.mark.parametrize("text", ["", "90", "1w", "h", "-1d", "1.5d"])
def test_a_duration_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(InvalidResource):
        parse_duration(text)


def test_a_tenants_retention_overrides_its_tiers() -> None:
    tiers = {"pro": {"retention": {"vectors": {"maxAge": "365d"}}}}
    store_class = StoreClass.from_body({"metadata": {"name": "c"}, "spec": {
        "postgres": {"adminSecretRef": {"name": "s", "namespace": "n"}}, "tiers": tiers}})
    body = {"metadata": {"name": "acme", "namespace": "ns"},
            "spec": {"tenantId": "acme", "tier": "pro", "vector": {"dimension": 3}}}
    assert desired_store(TenantStoreSpec.from_body(body), store_class, "u").retention.vectors_max_age == \
        datetime.timedelta(days=365)
    body["spec"]["retention"] = {"vectors": {"maxAge": "90d"}}
    assert desired_store(TenantStoreSpec.from_body(body), store_class, "u").retention.vectors_max_age == \
        datetime.timedelta(days=90)
    body["spec"]["tier"] = "free"
    del body["spec"]["retention"]
    assert desired_store(TenantStoreSpec.from_body(body), store_class, "u").retention.vectors_max_age is None


def test_deletion_policy_export_needs_a_destination() -> None:
    body = {"metadata": {"name": "acme", "namespace": "ns"},
            "spec": {"tenantId": "acme", "vector": {"dimension": 3}, "deletionPolicy": "Export"}}
    with pytest.raises(InvalidResource, match="finalExport"):
        TenantStoreSpec.from_body(body)


def test_a_vector_placement_keeps_every_field_through_the_status() -> None:
    everything = VectorPlacement(**{field.name: f"{field.name}-1" for field in dataclasses.fields(VectorPlacement)})
    assert VectorPlacement.from_status(everything.to_status()) == everything
    shared = VectorPlacement(backend="pgvector", index="shared-384-cosine-1", namespace="acme")
    assert shared.to_status() == {"backend": "pgvector", "index": "shared-384-cosine-1", "namespace": "acme"}
    assert VectorPlacement.from_status(shared.to_status()) == shared
    assert VectorPlacement.from_status({"backend": "pgvector"}) is None
