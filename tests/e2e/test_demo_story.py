"""The demo's story (`make demo`) on its own operator: each step's span, operator and client library alike, with
the GenAI convention's name and kind, and the counts that show isolation (the same search in two tenants and in
the global index)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_kit import ISOLATED_PREFIX, store_class, tenant_store, wait_for_condition

from tenantstore_dev import story
from tenantstore_dev.environment import Kubectl, LocalEnvironment
from tenantstore_dev.span_sink import SpanSink

NAMESPACE = f"{ISOLATED_PREFIX}story"
CLASS = "story-class"


@pytest.fixture
def sink() -> Iterator[SpanSink]:
    received = SpanSink().start()
    yield received
    received.stop()


def test_the_demo_story_prints_a_span_per_step(env: LocalEnvironment, kubectl: Kubectl, sink: SpanSink) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    kubectl.apply(store_class(CLASS, globalStore={"indexes": [{"dimension": 3, "metric": "cosine"}]}))
    operator = env.operator("operator-story.log", ["--namespace", NAMESPACE],
                            extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"})
    operator.start()
    try:
        for name in ("acme", "globex", "initech"):
            kubectl.apply(tenant_store(name, NAMESPACE, f"story-{name}", storeClassName=CLASS))
        for name in ("acme", "globex", "initech"):
            wait_for_condition(kubectl, NAMESPACE, name, "Ready", "True", timeout=120)
        printed: list[str] = []
        steps = story.tell(kubectl, NAMESPACE, CLASS, sink, 3, ("acme", "globex"), "initech", printed.append)
    finally:  # this operator's finalizers are on them: it stays until they are gone
        kubectl("delete", "tenantstores", "--all", "-n", NAMESPACE, "--wait=true", "--timeout=120s")
        kubectl("delete", "storeclass", CLASS, "--ignore-not-found", "--wait=true", "--timeout=60s")
        operator.stop()
        kubectl("delete", "namespace", NAMESPACE, "--wait=false")

    assert [(step.span, step.kind) for step in steps] == [
        (f"create_memory_store {NAMESPACE}/acme", "CLIENT"), (f"create_memory_store {NAMESPACE}/globex", "CLIENT"),
        (f"update_memory {CLASS}-global-3-cosine", "CLIENT"),
        ("update_memory story-acme", "CLIENT"), ("update_memory story-acme", "CLIENT"),
        ("search_memory story-acme", "CLIENT"), ("search_memory story-acme", "CLIENT"),
        (f"search_memory {CLASS}-global-3-cosine", "CLIENT"), ("search_memory story-globex", "CLIENT"),
        (f"delete_memory_store {NAMESPACE}/initech", "CLIENT")]
    searches = [(step.attributes["gen_ai.memory.scope"], step.attributes["gen_ai.memory.search.result.count"])
                for step in steps if step.span.startswith("search_memory")]
    assert searches == [("tenant", 3), ("user", 1), ("global", 4), ("tenant", 0)]
    assert steps[2].attributes["gen_ai.memory.scope"] == "global"  # the platform's write to the global index
    assert all(step.span in text for step, text in zip(steps, printed))
