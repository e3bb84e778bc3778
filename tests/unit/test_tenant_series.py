"""The per-tenant series a scrape shows, from the TenantStores and StoreClasses the operator has seen."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from tenantstore import metrics
from tenantstore.api import DEFAULT_CLASS_ANNOTATION


def store_class(name: str, default: bool, valid: bool = True) -> dict[str, Any]:
    annotations = {DEFAULT_CLASS_ANNOTATION: "true"} if default else {}
    admin = {"name": "pg-admin", "namespace": "ops"} if valid else {}  # a class without its admin Secret is unusable
    return {"metadata": {"name": name, "annotations": annotations}, "spec": {"postgres": {"adminSecretRef": admin}}}


def tenant(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "customers", "uid": f"uid-{name}"},
            "spec": {"tenantId": name, "tier": "pro"}}


def scraped_series() -> tuple[metrics.TenantSeries, CollectorRegistry]:
    series = metrics.TenantSeries()
    registry = CollectorRegistry()
    registry.register(series)
    return series, registry


def ready_series(registry: CollectorRegistry) -> dict[str, float]:
    """storeclass label -> value of the tenant's Ready gauge."""
    return {sample.labels["storeclass"]: sample.value
            for family in registry.collect() if family.name == "tenantstore_tenant_ready"
            for sample in family.samples}


def test_a_tenant_naming_no_class_keeps_one_series_from_its_creation_to_ready() -> None:
    series, registry = scraped_series()
    series.observe_store_class(store_class("archive", default=False))
    series.observe_store_class(store_class("standard", default=True))
    created = tenant("acme")

    series.observe_tenant(created)
    assert ready_series(registry) == {"standard": 0.0}

    series.observe_tenant({**created, "status": {"storeClassName": "standard", "phase": "Ready",
                                                 "conditions": [{"type": "Ready", "status": "True"}]}})
    assert ready_series(registry) == {"standard": 1.0}


def test_a_class_no_longer_the_default_names_no_new_tenant() -> None:
    series, registry = scraped_series()
    series.observe_store_class(store_class("standard", default=True))
    series.observe_store_class(store_class("standard", default=False))

    series.observe_tenant(tenant("acme"))
    assert ready_series(registry) == {"": 0.0}


def test_a_tenant_naming_no_class_is_not_labelled_with_a_default_class_that_cannot_be_used() -> None:
    series, registry = scraped_series()
    series.observe_store_class(store_class("archive", default=True, valid=False))
    series.observe_store_class(store_class("standard", default=True))

    series.observe_tenant(tenant("acme"))
    assert ready_series(registry) == {"standard": 0.0}  # where the reconcile provisions it
