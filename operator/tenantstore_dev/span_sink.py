"""A local OTLP/HTTP trace receiver for the demo: the operator exports its spans here (protobuf, /v1/traces), and
the demo prints the span of each step of its story. Loopback only; everything is kept in memory."""
from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str
    attributes: dict[str, Any]
    service: str


def value_of(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class SpanSink:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        sink = self

        class Receiver(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the handler's API
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                sink.receive(request)
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="span-sink", daemon=True)

    def start(self) -> SpanSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(span.name, KINDS.get(span.kind, str(span.kind)),
                                                 {a.key: value_of(a.value) for a in span.attributes},
                                                 str(resource.get("service.name", ""))))
        with self._lock:
            self.spans.extend(received)

    def wait_for(self, matches: Callable[[ReceivedSpan], bool], timeout: float = 30.0) -> ReceivedSpan:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = next((span for span in self.spans if matches(span)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError("no such span arrived")
            time.sleep(0.05)
