"""OpenTelemetry traces: a span per lifecycle operation, a child span per backend call, logs that carry both.

Spans use the GenAI memory semantic attributes (the tenant's store is a long-term memory store). They are
exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set and go nowhere otherwise.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tenantstore import metrics
from tenantstore.redaction import describe_exception, redact

TRACER = trace.get_tracer("tenantstore")
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")

CREATE, UPDATE, DELETE, SEARCH = "create_memory_store", "update_memory", "delete_memory_store", "search_memory"
EXPORT = "export_memory_store"


def configure(extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """Install the SDK's provider once per process (OpenTelemetry allows one); later calls add processors."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": "tenantstore-operator"}))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    return provider


def memory_attributes(operation: str, body: Mapping[str, Any]) -> dict[str, str]:
    spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body.get("metadata") or {}
    vector = status.get("vectorStore") or {}
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.memory.store.id": spec.get("tenantId", ""),
        "gen_ai.memory.store.name": f"{meta.get('namespace', '')}/{meta.get('name', '')}",
        "gen_ai.memory.scope": "tenant",
        "gen_ai.memory.type": "long_term",
        "tenancy.tenant_id": spec.get("tenantId", ""),
        "tenancy.tier": spec.get("tier", "free"),
        **({"gen_ai.provider.name": vector["backend"]} if vector.get("backend") else {}),
        **({"gen_ai.memory.namespace": vector.get("namespace") or vector.get("index")} if vector.get("index") else {}),
    }


@contextlib.contextmanager
def lifecycle(operation: str, body: Mapping[str, Any]) -> Iterator[Span]:
    """The span of one lifecycle operation on one tenant; the reconcile duration metric comes with it."""
    token = _tenant.set((body.get("spec") or {}).get("tenantId", ""))
    started = time.monotonic()
    result = "success"
    attributes = memory_attributes(operation, body)
    # The GenAI convention's name and kind: "{gen_ai.operation.name} {gen_ai.memory.store.name}", CLIENT.
    with TRACER.start_as_current_span(span_name(operation, attributes["gen_ai.memory.store.name"]),
                                      kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
                                      set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as error:
            result = "error"
            record_error(span, error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            metrics.RECONCILE_DURATION.labels(operation, result).observe(time.monotonic() - started)
            _tenant.reset(token)


def span_name(operation: str, store: str) -> str:
    return f"{operation} {store}" if store.strip("/") else operation


def record_error(span: Span, error: BaseException) -> None:
    """The SDK's exception event with its message and stack trace redacted (they quote drivers' errors)."""
    span.record_exception(error, attributes={"exception.message": redact(str(error)),
                                             "exception.stacktrace": describe_exception(error)})


@contextlib.contextmanager
def child_span(name: str, attributes: Mapping[str, str], kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span]:
    """A child span that records an escaping exception redacted (the SDK's own recording would not be)."""
    with TRACER.start_as_current_span(name, kind=kind, attributes=dict(attributes), record_exception=False,
                                      set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as error:
            record_error(current, error)
            current.set_status(Status(StatusCode.ERROR, redact(f"{type(error).__name__}: {error}")))
            raise


def annotate(attributes: Mapping[str, str]) -> None:
    """Add what became known during the operation (the backend, the namespace) to the current span."""
    trace.get_current_span().set_attributes(dict(attributes))


@contextlib.contextmanager
def backend_call(backend: str, operation: str) -> Iterator[Span]:
    started = time.monotonic()
    with child_span(f"{backend} {operation}",
                    {"gen_ai.provider.name": backend, "tenancy.backend.operation": operation}) as current:
        try:
            yield current
        finally:
            metrics.BACKEND_DURATION.labels(backend, operation).observe(time.monotonic() - started)


class TraceContextFilter(logging.Filter):
    """Appends the tenant id and trace id to log lines written while a tenant's operation runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        tenant, context = _tenant.get(), trace.get_current_span().get_span_context()
        if tenant and context.is_valid and not getattr(record, "tenant_id", None):
            record.tenant_id = tenant
            record.trace_id = format(context.trace_id, "032x")
            record.msg = f"{record.msg} [tenant={tenant} trace_id={record.trace_id}]"
        return True


def install_log_filter() -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceContextFilter())
