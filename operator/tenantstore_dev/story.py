"""The demo's story of one AI-assistant SaaS, told with the operator and the client library, the span of each step
printed: onboarding, the platform's global docs, a tenant's writes and searches (its own store, one user's scope,
the global docs), the same search in another tenant with a different count, and offboarding."""
from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import tenantstore_client as ts
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tenantstore_dev.environment import Kubectl
from tenantstore_dev.span_sink import SpanSink

SHOWN_ATTRIBUTES = ("gen_ai.memory.scope", "gen_ai.memory.namespace", "gen_ai.memory.search.result.count",
                    "gen_ai.memory.record.count", "gen_ai.provider.name")


@dataclasses.dataclass(frozen=True)
class Step:
    title: str
    span: str  # the span's name
    kind: str
    attributes: dict[str, Any]

    def describe(self) -> str:
        shown = " ".join(f"{key}={self.attributes[key]}" for key in SHOWN_ATTRIBUTES if key in self.attributes)
        return f"{self.title}\n      span: {self.span} [{self.kind}] {shown}"


def client_spans() -> InMemorySpanExporter:
    """The client library's spans, kept in this process (as an application's OpenTelemetry SDK would send them)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def vector(dimension: int, *leading: float) -> list[float]:
    return [*leading, *([0.05] * (dimension - len(leading)))]


def secret_data(kubectl: Kubectl, namespace: str, name: str) -> dict[str, str]:
    body = json.loads(kubectl("get", "secret", name, "-n", namespace, "-o", "json"))
    return {key: base64.b64decode(value).decode() for key, value in body["data"].items()}


def tell(kubectl: Kubectl, namespace: str, class_name: str, sink: SpanSink, dimension: int,
         tenants: tuple[str, str], offboarded: str, say: Callable[[str], None] = print) -> list[Step]:
    """`tenants`: two Ready TenantStores of `class_name` in `namespace` (the first is the story's tenant);
    `offboarded`: the TenantStore deleted at the end."""
    exporter = client_spans()
    steps: list[Step] = []

    def record(title: str, span: Any) -> None:
        kind = span.kind.name if isinstance(span, ReadableSpan) else span.kind
        step = Step(title, span.name, kind, dict(span.attributes))
        steps.append(step)
        say(f"{len(steps)}. {step.describe()}")

    def client_span(operation: str) -> ReadableSpan:
        return [s for s in exporter.get_finished_spans() if s.name.startswith(operation)][-1]

    def operator_span(name: str) -> Any:
        return sink.wait_for(lambda span: span.name == name, timeout=60)

    first, second = tenants
    for name in tenants:
        record(f"onboarding: TenantStore {namespace}/{name} made by the operator",
               operator_span(f"create_memory_store {namespace}/{name}"))

    klass = json.loads(kubectl("get", "storeclass", class_name, "-o", "json"))
    shape = next(index for index in klass["status"]["globalStore"]["indexes"] if index["dimension"] == dimension)
    writer_namespace, writer_name = shape["writerSecret"].split("/")
    with ts.connect(secret_data(kubectl, writer_namespace, writer_name)) as platform:
        platform.upsert([ts.Vector(f"guide-{i}", vector(dimension, 1.0, 0.2 * i), {"topic": topic})
                         for i, topic in enumerate(("setup", "setup", "billing", "security"))])
    record(f"the platform writes its product docs to the global index {shape['name']}", client_span("update_memory"))

    store_secret = json.loads(kubectl("get", "tenantstore", first, "-n", namespace, "-o", "json"))["status"][
        "secretName"]
    other_secret = json.loads(kubectl("get", "tenantstore", second, "-n", namespace, "-o", "json"))["status"][
        "secretName"]
    probe = vector(dimension, 1.0, 0.1)
    alice = ts.scopes.user("alice")
    with ts.connect(secret_data(kubectl, namespace, store_secret)) as store, \
            ts.connect(secret_data(kubectl, namespace, other_secret)) as other:
        store.upsert([ts.Vector("memory-1", vector(dimension, 1.0, 0.3), {"kind": "preference"}),
                      ts.Vector("memory-2", vector(dimension, 0.2, 1.0), {"kind": "fact"})])
        record(f"{first} writes two memories to its own store", client_span("update_memory"))
        store.upsert([ts.Vector("alice-1", vector(dimension, 1.0, 0.1), {"kind": "preference"})], scope=alice)
        record(f"{first} writes a memory in its user alice's scope", client_span("update_memory"))
        store.query(probe, top_k=10)
        record(f"{first} searches its own store", client_span("search_memory"))
        store.query(probe, top_k=10, scope=alice)
        record(f"{first} searches alice's scope only", client_span("search_memory"))
        store.query_global(probe, top_k=10)
        record(f"{first} searches the global docs", client_span("search_memory"))
        other.query(probe, top_k=10)
        record(f"{second} runs the same search in its own store: a different count", client_span("search_memory"))

    kubectl("delete", "tenantstore", offboarded, "-n", namespace, "--wait=true", "--timeout=120s")
    record(f"offboarding: TenantStore {namespace}/{offboarded} deleted, everything it had removed",
           operator_span(f"delete_memory_store {namespace}/{offboarded}"))
    return steps
