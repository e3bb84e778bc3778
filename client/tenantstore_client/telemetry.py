"""OpenTelemetry spans for memory operations, in the GenAI convention: `update_memory <store>` for writes and
deletes, `search_memory <store>` for queries (the tenant's, a scope's, or the class's global index), kind CLIENT,
with the result count. They go wherever the application's OpenTelemetry SDK sends spans (nowhere without one).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from tenantstore_client import scopes as scoping
from tenantstore_client.secret import Coordinates

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the API is a dependency; a vendored copy without it still works, untraced
    trace = None

UPDATE, SEARCH = "update_memory", "search_memory"


class Recorder:
    """What the operation found out: set by the caller, written to the span when it ends."""

    def __init__(self, span: Any):
        self.span = span

    def found(self, count: int) -> None:
        if self.span is not None:
            self.span.set_attribute("gen_ai.memory.search.result.count", count)
            self.span.set_attribute("gen_ai.memory.record.count", count)

    def wrote(self, count: int) -> None:
        if self.span is not None:
            self.span.set_attribute("gen_ai.memory.record.count", count)


@contextlib.contextmanager
def operation(name: str, coordinates: Coordinates, scopes: Sequence[str] = ()) -> Iterator[Recorder]:
    if trace is None:
        yield Recorder(None)
        return
    store = coordinates.store_name or "tenantstore"
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": name,
        "gen_ai.memory.store.name": store,
        "gen_ai.memory.scope": "global" if coordinates.scope == "global" else scoping.kind(scopes),
        "gen_ai.memory.type": "long_term",
        "gen_ai.provider.name": coordinates.backend.value,
    }
    if coordinates.tenant_id:
        attributes["gen_ai.memory.store.id"] = attributes["tenancy.tenant_id"] = coordinates.tenant_id
    if scopes:
        attributes["gen_ai.memory.namespace"] = ",".join(scopes)
    elif coordinates.namespace:
        attributes["gen_ai.memory.namespace"] = coordinates.namespace
    tracer = trace.get_tracer("tenantstore_client")
    with tracer.start_as_current_span(f"{name} {store}", kind=SpanKind.CLIENT, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            yield Recorder(span)
        except BaseException as error:
            # The type only: drivers' messages may quote connection strings.
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
