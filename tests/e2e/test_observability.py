"""Metrics scraped from the running operator, spans of a real reconcile, and the tenant id on every span."""
from __future__ import annotations

import urllib.request

import psycopg
import pytest
from e2e_kit import ISOLATED_PREFIX, SEEN_PASSWORDS, tenant_secret, tenant_store, wait_for_condition
from kubernetes_asyncio import config as kube_config
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from tenantstore import reconcile, tracing
from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for
from tenantstore.kube import Namespaces, Secrets
from tenantstore.models import StoreClass
from tenantstore.registry import BackendRegistry


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def tenant_value(samples: dict, name: str, tenant: str, **labels: str) -> float | None:
    for (sample_name, sample_labels), value in samples.items():
        found = dict(sample_labels)
        if sample_name == name and found.get("tenant") == tenant and all(found.get(k) == v for k, v in labels.items()):
            return value
    return None


def test_per_tenant_series_follow_status_and_vanish_on_delete(kubectl: Kubectl, operator: OperatorProcess,
                                                              namespace: str) -> None:
    kubectl.apply(tenant_store("metered", namespace, "metered", tier="pro", quotas={"maxDocuments": 4}))
    wait_for_condition(kubectl, namespace, "metered", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "metered-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) VALUES "
                     "('metered', 'a', '[1,0,0]'), ('metered', 'b', '[0,1,0]')")
    wait_for("2 documents in status", lambda: (kubectl.get("tenantstore", "metered", namespace)["status"]
                                               .get("usage", {}).get("documents") == 2), timeout=30)

    def series_match_status() -> dict | None:
        samples = scrape(operator.metrics_url)
        return samples if tenant_value(samples, "tenantstore_tenant_documents", "metered") == 2 else None
    samples = wait_for("metrics to show 2 documents", series_match_status, timeout=30)
    status = kubectl.get("tenantstore", "metered", namespace)["status"]
    labels = {"namespace": namespace, "tier": "pro", "storeclass": "standard"}
    assert tenant_value(samples, "tenantstore_tenant_ready", "metered", **labels) == 1
    assert tenant_value(samples, "tenantstore_tenant_phase", "metered", phase="Ready") == 1
    assert tenant_value(samples, "tenantstore_tenant_phase", "metered", phase="Pending") == 0
    assert tenant_value(samples, "tenantstore_tenant_quota_limit", "metered", resource="documents") == 4
    assert tenant_value(samples, "tenantstore_tenant_quota_usage_ratio", "metered", resource="documents") == 0.5
    assert tenant_value(samples, "tenantstore_tenant_storage_bytes", "metered") == status["usage"]["storageBytes"]
    assert tenant_value(samples, "tenantstore_tenant_quota_exceeded", "metered") == 0
    assert samples[("tenantstore_tenants", frozenset({"phase": "Ready", "tier": "pro"}.items()))] >= 1
    assert any(name == "tenantstore_reconcile_duration_seconds_count" for name, _ in samples)
    # The measurement that found the 2 documents was a pass of the class's usage job, timed as one.
    usage_passes = ("tenantstore_usage_duration_seconds_count", frozenset({"storeclass": "standard"}.items()))
    wait_for("the usage job's passes timed", lambda: scrape(operator.metrics_url).get(usage_passes, 0) >= 1,
             timeout=30)
    assert any(name == "tenantstore_backend_operation_duration_seconds_count"
               and dict(labels).get("backend") == "postgres" for name, labels in samples)

    # A restart rebuilds the series from status alone.
    operator.stop()
    operator.start()
    wait_for("series rebuilt after a restart", series_match_status, timeout=30)

    kubectl("delete", "tenantstore", "metered", "-n", namespace, "--timeout=60s")
    wait_for("the deleted tenant's series to disappear", lambda: tenant_value(
        scrape(operator.metrics_url), "tenantstore_tenant_ready", "metered") is None, timeout=30)


async def test_a_reconcile_is_one_span_with_a_child_per_backend_call(env: LocalEnvironment, kubectl: Kubectl,
                                                                     default_class: str) -> None:
    """Runs the reconcile in this process (in a namespace no operator watches) to capture its spans in memory."""
    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter))
    namespace = f"{ISOLATED_PREFIX}traced"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubectl.apply(tenant_store("traced", namespace, "traced"))
    body = kubectl.get("tenantstore", "traced", namespace)
    api = await kube_config.new_client_from_config(config_file=str(env.control_plane.kubeconfig))
    secrets = Secrets(api)
    registry = BackendRegistry(secrets)
    classes = {default_class: StoreClass.from_body(kubectl.get("storeclass", default_class))}
    try:
        with tracing.lifecycle(tracing.CREATE, body):
            outcome = await reconcile.reconcile_tenant(body, classes, [], registry, secrets,
                                                       namespaces=Namespaces(api))
        assert outcome.status["phase"] == "Ready"
        body["status"] = outcome.status
        with tracing.lifecycle(tracing.DELETE, body):
            await reconcile.teardown_tenant(body, classes, registry, secrets)
    finally:
        await registry.close()
        await api.close()
        kubectl("delete", "tenantstore", "traced", "-n", namespace)  # no operator watches here: no finalizer

    spans = exporter.get_finished_spans()
    root = next(span for span in spans if span.name == f"create_memory_store {namespace}/traced")
    assert root.parent is None and root.kind.name == "CLIENT"  # the GenAI convention's name and kind
    for key, value in {"gen_ai.operation.name": "create_memory_store", "gen_ai.provider.name": "pgvector",
                       "gen_ai.memory.store.id": "traced", "gen_ai.memory.namespace": "traced",
                       "gen_ai.memory.type": "long_term", "tenancy.tier": "free"}.items():
        assert root.attributes[key] == value, key
    children = {span.name: span for span in spans if span.parent and span.parent.span_id == root.context.span_id}
    probe = f"search_memory {namespace}/traced"
    assert {"kubernetes read_secret", "postgres ensure", "pgvector ensure", probe,
            "kubernetes apply_secret"} <= set(children)
    assert children[probe].attributes["gen_ai.operation.name"] == "search_memory"
    assert children[probe].kind.name == "CLIENT"
    delete = next(span for span in spans if span.name == f"delete_memory_store {namespace}/traced")
    assert {span.name for span in spans if span.parent and span.parent.span_id == delete.context.span_id} >= {
        "pgvector teardown", "postgres teardown"}
    for span in spans:
        text = repr(dict(span.attributes)) + repr([event.attributes for event in span.events])
        assert not any(secret in text for secret in SEEN_PASSWORDS | {env.admin_uri}), span.name


def test_a_failing_operation_records_the_error_on_its_span() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter))
    body = {"metadata": {"name": "lost", "namespace": "nowhere"}, "spec": {"tenantId": "lost", "tier": "pro"}}
    with pytest.raises(RuntimeError, match="backend exploded"):
        with tracing.lifecycle(tracing.UPDATE, body):
            with tracing.backend_call("postgres", "ensure"):
                raise RuntimeError("backend exploded")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root, child = spans["update_memory nowhere/lost"], spans["postgres ensure"]
    assert child.parent.span_id == root.context.span_id
    assert root.status.status_code.name == "ERROR"
    assert [event.name for event in root.events] == ["exception"]
    assert root.attributes["tenancy.tier"] == "pro"
