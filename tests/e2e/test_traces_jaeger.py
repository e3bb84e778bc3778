"""Traces received by a real backend: Jaeger (built from its Go module, in-memory storage, an OTLP receiver on
loopback) takes the operator's spans over OTLP/HTTP, and its query API gives back one trace per operation, the
lifecycle span with its gen_ai.memory.* attributes at the root and a child span per backend call."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from e2e_kit import ISOLATED_PREFIX, SEEN_PASSWORDS, get_json, tenant_secret, tenant_store, wait_for_condition, wait_until_gone

from tenantstore_dev.controlplane import ensure_jaeger, free_ports
from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for

NAMESPACE = f"{ISOLATED_PREFIX}jaeger"
SERVICE = "tenantstore-operator"


class Jaeger:
    def __init__(self, query_url: str, otlp_url: str):
        self.query_url, self.otlp_url = query_url, otlp_url

    def api(self, path: str, **params: str) -> Any:
        return get_json(f"{self.query_url}/api/{path}", **params)

    def traces(self, operation: str, tenant: str) -> list[dict[str, Any]]:
        """The traces whose root is `operation` on `tenant` (Jaeger's JSON: spans with tags and references)."""
        found = self.api("traces", service=SERVICE, operation=operation, limit="50", lookback="1h")["data"] or []
        return [trace for trace in found if any(
            span["operationName"] == operation and tags(span).get("gen_ai.memory.store.id") == tenant
            for span in trace["spans"])]


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", ())}


def roots(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [span for span in trace["spans"] if not span.get("references")]


def children(trace: dict[str, Any], parent: dict[str, Any]) -> set[str]:
    return {span["operationName"] for span in trace["spans"] for ref in span.get("references", ())
            if ref["refType"] == "CHILD_OF" and ref["spanID"] == parent["spanID"]}


@pytest.fixture(scope="module")
def jaeger(env: LocalEnvironment) -> Iterator[Jaeger]:
    binary = ensure_jaeger()
    work = env.workdir / "jaeger"
    work.mkdir(exist_ok=True)
    query, grpc, otlp = (f"127.0.0.1:{port}" for port in free_ports(3))
    config = {
        "service": {"extensions": ["jaeger_storage", "jaeger_query"],
                    "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["jaeger_storage_exporter"]}},
                    "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}}},
        "extensions": {"jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 10000}}}},
                       "jaeger_query": {"storage": {"traces": "memstore"}, "http": {"endpoint": query},
                                        "grpc": {"endpoint": grpc}}},
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": otlp}}}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    log = (work / "jaeger.log").open("w")
    process = subprocess.Popen([str(binary), "--config", str(work / "config.yaml")],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        server = Jaeger(f"http://{query}", f"http://{otlp}")

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"jaeger exited: {(work / 'jaeger.log').read_text()[-2000:]}")
            try:
                return server.api("services") is not None
            except OSError:
                return False
        wait_for("Jaeger's query API", answers, timeout=60)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def traced_operator(env: LocalEnvironment, kubectl: Kubectl, default_class: str,
                    jaeger: Jaeger) -> Iterator[OperatorProcess]:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    process = env.operator("operator-jaeger.log", ["--namespace", NAMESPACE],
                           extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_url,
                                      "OTEL_BSP_SCHEDULE_DELAY": "200"})
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_jaeger_receives_one_trace_per_operation_with_a_span_per_backend_call(
        env: LocalEnvironment, kubectl: Kubectl, jaeger: Jaeger, traced_operator: OperatorProcess) -> None:
    kubectl.apply(tenant_store("traced", NAMESPACE, "jaeger-traced", tier="pro"))
    wait_for_condition(kubectl, NAMESPACE, "traced", "Ready", "True")
    tenant_secret(kubectl, NAMESPACE, "traced-store")  # its password joins those no span may carry
    created_name, deleted_name = f"create_memory_store {NAMESPACE}/traced", f"delete_memory_store {NAMESPACE}/traced"
    [created] = wait_for("the creation's trace in Jaeger", lambda: jaeger.traces(created_name, "jaeger-traced"),
                         timeout=60)
    [root] = roots(created)  # one operation, one trace, one root
    assert root["operationName"] == created_name
    assert tags(root).get("span.kind") == "client"
    assert {key: tags(root).get(key) for key in ("gen_ai.operation.name", "gen_ai.memory.store.id",
                                                 "gen_ai.memory.store.name", "gen_ai.memory.type",
                                                 "gen_ai.provider.name", "gen_ai.memory.namespace",
                                                 "tenancy.tier")} == {
        "gen_ai.operation.name": "create_memory_store", "gen_ai.memory.store.id": "jaeger-traced",
        "gen_ai.memory.store.name": f"{NAMESPACE}/traced", "gen_ai.memory.type": "long_term",
        "gen_ai.provider.name": "pgvector", "gen_ai.memory.namespace": "jaeger-traced", "tenancy.tier": "pro"}
    assert {"kubernetes read_secret", "postgres ensure", "pgvector ensure", f"search_memory {NAMESPACE}/traced",
            "kubernetes apply_secret"} <= children(created, root)
    assert all(span["traceID"] == root["traceID"] for span in created["spans"])
    assert created["processes"][root["processID"]]["serviceName"] == SERVICE

    kubectl("delete", "tenantstore", "traced", "-n", NAMESPACE)
    wait_until_gone(kubectl, "tenantstore", "traced", NAMESPACE)
    deleted = wait_for("the deletion's trace in Jaeger", lambda: jaeger.traces(deleted_name, "jaeger-traced"),
                       timeout=60)
    for trace in deleted:  # a retried deletion is one trace per attempt, never one trace for both
        assert len(roots(trace)) == 1 and roots(trace)[0]["operationName"] == deleted_name
    assert any({"pgvector teardown", "postgres teardown"} <= children(trace, roots(trace)[0]) for trace in deleted)
    assert not {span["traceID"] for trace in deleted for span in trace["spans"]} & {root["traceID"]}

    received = json.dumps(created) + json.dumps(deleted)
    assert not any(secret in received for secret in SEEN_PASSWORDS | {env.admin_uri})
