"""The search-latency SLO end to end: a class with spec.slo, its tenants with vectors probed as themselves (the
histogram on /metrics; that a probe is not one of the
tenant's daily queries is checked in tests/backends/test_verify.py), an empty tenant not probed, the objective exported for the alert, and a deleted tenant's
latency series gone with it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import tenantstore_client as ts
from e2e_kit import store_class, tenant_secret, tenant_store, wait_for_condition, wait_until_gone
from test_observability import scrape, tenant_value

from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for

LATENCY = "tenantstore_tenant_search_latency_seconds_count"


@pytest.fixture
def probed_class(kubectl: Kubectl) -> Iterator[str]:
    kubectl.apply(store_class("probed", slo={"searchLatency": {"p95": "50ms"}, "probesPerSecond": 20}))
    yield "probed"
    kubectl("delete", "storeclass", "probed", "--ignore-not-found")


def test_tenants_with_vectors_are_probed_as_themselves(kubectl: Kubectl, operator: OperatorProcess, namespace: str,
                                                      probed_class: str) -> None:
    for name in ("searched", "empty"):
        kubectl.apply(tenant_store(name, namespace, name, storeClassName=probed_class, dimension=8))
    for name in ("searched", "empty"):
        wait_for_condition(kubectl, namespace, name, "Ready", "True")
    with ts.connect(tenant_secret(kubectl, namespace, "searched-store")) as store:
        store.upsert([ts.Vector(f"doc-{i}", [1.0, i / 10] + [0.0] * 6) for i in range(50)])
    wait_for("50 documents in status", lambda: kubectl.get("tenantstore", "searched", namespace)["status"]
             .get("usage", {}).get("documents") == 50, timeout=30)

    def probed_twice() -> dict | None:
        samples = scrape(operator.metrics_url)
        return samples if (tenant_value(samples, LATENCY, "searched") or 0) >= 2 else None
    samples = wait_for("the probe to have searched the tenant twice", probed_twice, timeout=60)
    labels = {"namespace": namespace, "tier": "free", "storeclass": probed_class}
    assert tenant_value(samples, LATENCY, "searched", **labels) >= 2
    total = tenant_value(samples, "tenantstore_tenant_search_latency_seconds_sum", "searched")
    assert total is not None and 0 < total < 5 * tenant_value(samples, LATENCY, "searched")
    assert tenant_value(samples, LATENCY, "empty") is None  # nothing to search: not probed
    assert samples[("tenantstore_storeclass_search_latency_objective_seconds",
                    frozenset({"storeclass": probed_class}.items()))] == 0.05

    kubectl("delete", "tenantstore", "searched", "-n", namespace)
    wait_until_gone(kubectl, "tenantstore", "searched", namespace)
    wait_for("the deleted tenant's latency series to go", lambda: tenant_value(
        scrape(operator.metrics_url), LATENCY, "searched") is None, timeout=30)
