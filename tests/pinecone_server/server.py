"""A local HTTP server that answers like Pinecone's REST API, version 2026-07, for the endpoints the operator uses.

It follows the published OpenAPI documents `2026-07/db_control_2026-07.oas.yaml` and
`2026-07/db_data_2026-07.oas.yaml` (repository pinecone-io/pinecone-api): paths, operationIds, JSON field
names, status codes and the two error shapes (control plane `ErrorResponse`
`{"error": {"code", "message"}, "status"}`; data plane `rpcStatus` `{"code": <grpc int>, "message", "details"}`;
401 and the rate limiter's 429 are plain text on the data plane).

Only the subset the operator needs is implemented: classic vectors-API serverless indexes (schema of the
reserved `_values` dense field), their vectors (upsert, query, fetch, delete, list ids), index stats and the
namespace API. Each index gets its own listening port, so its `host` (`http://127.0.0.1:<port>`) alone
identifies it, as a real index host does.

Anything outside that subset, or a request the spec does not allow (unknown path or method, missing or
wrong `X-Pinecone-Api-Version`, missing or wrong `Api-Key`, a body the spec rejects), is answered with an
error and recorded in `problems`; the pytest fixture fails the test when any were recorded.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

from aiohttp import web

API_VERSION = "2026-07"
MAX_REQUEST_BYTES = 2 * 1024 * 1024
DEFAULT_NAMESPACE = "__default__"
INDEX_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,43}[a-z0-9])?$")
TAG_KEY = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
ASCII_NAME = re.compile(r"^[\x01-\x7f]{1,512}$")
METRICS = ("cosine", "euclidean", "dotproduct")
CLOUDS = ("aws", "gcp", "azure")

# gRPC status codes the data plane's rpcStatus carries.
GRPC = {"INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7,
        "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "UNIMPLEMENTED": 12, "INTERNAL": 13,
        "UNAVAILABLE": 14}
HTTP_CODE = {400: "INVALID_ARGUMENT", 403: "FORBIDDEN", 404: "NOT_FOUND", 409: "ALREADY_EXISTS",
             429: "RESOURCE_EXHAUSTED", 500: "UNKNOWN", 502: "UNKNOWN", 503: "UNAVAILABLE", 504: "UNKNOWN"}


class ApiFailure(Exception):
    """An error answer. `problem` marks requests a correct client never sends (they fail the test)."""

    def __init__(self, status: int, code: str, message: str, problem: bool = False):
        super().__init__(message)
        self.status, self.code, self.message, self.problem = status, code, message, problem


def invalid(message: str) -> ApiFailure:
    return ApiFailure(400, "INVALID_ARGUMENT", message, problem=True)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    operation: str  # the spec's operationId, or "unknown"
    method: str
    path: str
    status: int
    at: float  # time.monotonic() when the request arrived
    index: str | None = None


@dataclasses.dataclass
class Fault:
    status: int
    remaining: int
    retry_after: int | None
    message: str


@dataclasses.dataclass
class Record:
    values: list[float]
    metadata: dict[str, Any] | None


@dataclasses.dataclass
class Index:
    name: str
    dimension: int
    metric: str
    cloud: str
    region: str
    deletion_protection: str
    tags: dict[str, str]
    port: int
    ready_at: float
    site: web.BaseSite
    gone_at: float | None = None  # set by delete: Terminating until then
    namespaces: dict[str, dict[str, Record]] = dataclasses.field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self, now: float) -> str:
        if self.gone_at is not None:
            return "Terminating"
        return "Ready" if now >= self.ready_at else "Initializing"

    def model(self, now: float) -> dict[str, Any]:
        """The spec's IndexModel (a dense vectors-API index reports `_values` and `_sparse_values`)."""
        state = self.state(now)
        return {
            "name": self.name,
            "host": self.host,
            "status": {"ready": state == "Ready", "state": state},
            "deployment": {"deployment_type": "managed", "cloud": self.cloud, "region": self.region,
                           "environment": "local-test"},
            "read_capacity": {"mode": "OnDemand", "status": {"state": "Ready"}},
            "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": self.dimension,
                                              "metric": self.metric},
                                  "_sparse_values": {"type": "sparse_vector"}}},
            "tags": dict(self.tags) or None,
            "deletion_protection": self.deletion_protection,
        }


@dataclasses.dataclass(frozen=True)
class Route:
    plane: str  # "control" or "data"
    method: str
    pattern: re.Pattern[str]
    operation: str
    handler: Callable[..., Any]


def _page_token(last: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last}).encode()).decode()


def _after_token(token: str | None) -> str | None:
    if token is None:
        return None
    try:
        return str(json.loads(base64.urlsafe_b64decode(token.encode()))["after"])
    except (ValueError, KeyError, TypeError) as error:
        raise invalid(f"malformed paginationToken: {error}") from None


def _page(names: list[str], after: str | None, limit: int) -> tuple[list[str], str | None]:
    """One page of sorted names after `after`; the token for the next page when there is one."""
    rest = [name for name in names if after is None or name > after]
    page = rest[:limit]
    return page, (_page_token(page[-1]) if len(rest) > limit else None)


def _limit(raw: str | None, maximum: int = 100) -> int:
    if raw is None:
        return maximum
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise invalid(f"limit must be an integer between 1 and {maximum}, got {raw!r}")
    return int(raw)


def _require_keys(body: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(f"{what} does not accept {unknown} (allowed: {sorted(allowed)})")


def _require_params(params: Any, allowed: set[str]) -> None:
    unknown = sorted(set(params.keys()) - allowed)
    if unknown:
        raise invalid(f"unknown query parameters {unknown} (allowed: {sorted(allowed)})")


def _score(metric: str, query: list[float], values: list[float]) -> float:
    if metric == "euclidean":  # Pinecone reports the squared distance: lower is closer
        return sum((a - b) ** 2 for a, b in zip(query, values, strict=True))
    dot = sum(a * b for a, b in zip(query, values, strict=True))
    if metric == "dotproduct":
        return dot
    norms = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in values))
    return dot / norms if norms else 0.0


def _passes(metadata: dict[str, Any] | None, filter: Any) -> bool:
    """Pinecone's metadata filter language: $eq $ne $gt $gte $lt $lte $in $nin $exists, $and/$or; a bare value is
    $eq; a list-of-strings field matches $eq/$in when any element does."""
    if not isinstance(filter, dict) or not filter:
        raise invalid("filter must be a non-empty object")
    fields = metadata or {}
    for key, condition in filter.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise invalid(f"{key} takes a non-empty array")
            results = [_passes(metadata, part) for part in condition]
            if not (all(results) if key == "$and" else any(results)):
                return False
            continue
        if key.startswith("$"):
            raise invalid(f"unknown top-level operator {key}")
        operators = condition if isinstance(condition, dict) else {"$eq": condition}
        for operator, operand in operators.items():
            if not _condition_holds(fields, key, operator, operand):
                return False
    return True


def _condition_holds(fields: dict[str, Any], key: str, operator: str, operand: Any) -> bool:
    present, value = key in fields, fields.get(key)
    found = value if isinstance(value, list) else [value] if present else []
    if operator == "$eq":
        return operand in found
    if operator == "$ne":
        return operand not in found
    if operator in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise invalid(f"{operator} takes an array")
        hit = any(item in found for item in operand)
        return hit if operator == "$in" else not hit
    if operator == "$exists":
        return present == bool(operand)
    comparisons = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
                   "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}
    if operator not in comparisons:
        raise invalid(f"unknown filter operator {operator}")
    if isinstance(operand, bool) or not isinstance(operand, (int, float)):
        raise invalid(f"{operator} compares numbers")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and comparisons[operator](value, operand)


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise invalid("metadata must be an object")
    for key, value in metadata.items():
        if key.startswith("$"):
            raise invalid(f"metadata field {key!r} may not begin with '$'")
        scalar = isinstance(value, (str, int, float, bool))
        strings = isinstance(value, list) and all(isinstance(item, str) for item in value)
        if not (scalar or strings):
            raise invalid("Metadata value must be a string, number, boolean or list of strings")


class PineconeTestServer:
    """Start with `start()` (a background thread with its own event loop); `stop()` when done.

    Knobs for tests: `fail_next(operation, status, count, retry_after)` injects 429/5xx answers;
    `max_serverless_indexes` and `max_namespaces_per_index` are plan limits (403 past them);
    `ready_delay` and `terminate_delay` are how long indexes stay Initializing and Terminating.
    """

    def __init__(self, api_key: str | None = None, *, ready_delay: float = 0.05, terminate_delay: float = 0.05):
        self.api_key = api_key or f"pclocal-{secrets.token_hex(8)}"
        self.ready_delay = ready_delay
        self.terminate_delay = terminate_delay
        self.max_serverless_indexes: int | None = None
        self.max_namespaces_per_index: int | None = None
        # PINECONE.md: plan limits answer 403 QUOTA_EXCEEDED (the 2026-07 document's own example says FORBIDDEN).
        self.quota_error_code = "QUOTA_EXCEEDED"
        self.tolerate_unauthorized = False
        self.problems: list[str] = []
        self.requests: list[RequestRecord] = []
        self.namespace_high_water: dict[str, int] = {}
        self._indexes: dict[str, Index] = {}
        self._ports: dict[int, str] = {}
        self._faults: dict[str, list[Fault]] = {}
        self._hooks: dict[str, list[Callable[[PineconeTestServer], None]]] = {}
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._control_port = 0
        self._routes = self._route_table()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle (called from the test's thread) ---

    @property
    def host(self) -> str:
        """The control-plane URL to give the SDK as `host=`."""
        return f"http://127.0.0.1:{self._control_port}"

    def start(self) -> PineconeTestServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._start_app())
            except BaseException as error:  # noqa: BLE001 - reported to the starting thread
                failure.append(error)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="pinecone-test-server", daemon=True)
        self._thread.start()
        if not started.wait(10) or failure:
            raise RuntimeError(f"the Pinecone test server did not start: {failure}")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop_app(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def check(self) -> None:
        """Fail loudly if the server saw requests outside the spec subset it implements."""
        with self._lock:
            problems = list(self.problems)
        assert not problems, "the Pinecone test server saw requests the spec does not allow:\n" + "\n".join(problems)

    def take_problems(self) -> list[str]:
        with self._lock:
            taken, self.problems = self.problems, []
        return taken

    # --- knobs and views for tests ---

    def fail_next(self, operation: str, status: int = 429, count: int = 1, retry_after: int | None = None,
                  message: str | None = None) -> None:
        """The next `count` requests of `operation` (a spec operationId) get `status` instead of an answer."""
        if operation not in {route.operation for route in self._routes}:
            raise ValueError(f"unknown operation {operation!r}")
        default = "Too Many Requests" if status == 429 else "Internal server error"
        with self._lock:
            self._faults.setdefault(operation, []).append(Fault(status, count, retry_after, message or default))

    def before_next(self, operation: str, hook: Callable[[PineconeTestServer], None]) -> None:
        """Run `hook(server)` just before the next request of `operation` is answered (to stage races)."""
        if operation not in {route.operation for route in self._routes}:
            raise ValueError(f"unknown operation {operation!r}")
        with self._lock:
            self._hooks.setdefault(operation, []).append(hook)

    def index_names(self) -> list[str]:
        with self._lock:
            return sorted(self._indexes)

    def index(self, name: str) -> dict[str, Any] | None:
        """A copy of what the server holds about an index (model plus namespaces and record counts)."""
        with self._lock:
            index = self._indexes.get(name)
            if index is None:
                return None
            return {**index.model(time.monotonic()),
                    "namespaces": {ns: len(records) for ns, records in index.namespaces.items()}}

    def namespaces(self, name: str) -> dict[str, int]:
        info = self.index(name)
        return dict(info["namespaces"]) if info else {}

    def records(self, index: str, namespace: str) -> dict[str, Record]:
        """A copy of a namespace's records as stored (metadata included, as the client wrote it)."""
        with self._lock:
            held = self._indexes[index].namespaces.get(namespace or DEFAULT_NAMESPACE, {})
            return {vector_id: dataclasses.replace(record) for vector_id, record in held.items()}

    def drop_namespace(self, index: str, namespace: str) -> None:
        """Delete a namespace behind the client's back (as another actor would)."""
        with self._lock:
            self._indexes[index].namespaces.pop(namespace, None)

    def requests_for(self, operation: str) -> list[RequestRecord]:
        with self._lock:
            return [record for record in self.requests if record.operation == operation]

    # --- aiohttp plumbing (runs on the server's own loop) ---

    async def _start_app(self) -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES * 2)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        _, self._control_port = await self._listen()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _stop_app(self) -> None:
        self._reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reaper
        if self._runner is not None:
            await self._runner.cleanup()

    async def _listen(self) -> tuple[web.BaseSite, int]:
        site, port = self._loopback_site()
        await site.start()
        return site, port

    def _loopback_site(self) -> tuple[web.SockSite, int]:
        """A site on a fresh loopback port (a listening socket is cheap to open synchronously)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        assert self._runner is not None
        return web.SockSite(self._runner, sock), sock.getsockname()[1]

    async def _reap(self) -> None:
        """Terminating indexes disappear once their time is up (their host stops answering)."""
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            with self._lock:
                gone = [index for index in self._indexes.values() if index.gone_at is not None and now >= index.gone_at]
                for index in gone:
                    del self._indexes[index.name]
                    self._ports.pop(index.port, None)
            for index in gone:
                await index.site.stop()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        with self._lock:
            plane = "control" if port == self._control_port else "data"
            index_name = self._ports.get(port)
        raw_path = request.raw_path.split("?", 1)[0]
        route, params = self._match(plane, request.method, raw_path)
        operation = route.operation if route else "unknown"
        body = await request.read()
        try:
            self._check_headers(request)
            if route is None:
                raise ApiFailure(404, "NOT_FOUND", f"{request.method} {raw_path} is not a {API_VERSION} "
                                                   f"{plane}-plane operation this server implements", problem=True)
            response = self._run(route, plane, index_name, params, request, body)
        except ApiFailure as failure:
            response = self._failure(plane, failure, request)
        except Exception as error:  # noqa: BLE001 - a bug of this server must fail the test, not hang it
            response = self._failure(plane, ApiFailure(500, "INTERNAL", f"test server bug: {error!r}", problem=True),
                                     request)
        with self._lock:
            self.requests.append(RequestRecord(operation, request.method, raw_path, response.status, arrived,
                                               index_name))
        return response

    def _match(self, plane: str, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if route.plane == plane and route.method == method and match:
                return route, {key: unquote(value) for key, value in match.groupdict().items()}
        return None, {}

    def _check_headers(self, request: web.Request) -> None:
        version = request.headers.get("X-Pinecone-Api-Version")
        if version != API_VERSION:
            raise ApiFailure(400, "INVALID_ARGUMENT", f"X-Pinecone-Api-Version must be {API_VERSION!r}, "
                                                      f"got {version!r}", problem=True)
        if request.headers.get("Api-Key") != self.api_key:
            raise ApiFailure(401, "UNAUTHENTICATED", "Unauthorized", problem=not self.tolerate_unauthorized)

    def _run(self, route: Route, plane: str, index_name: str | None, params: dict[str, str],
             request: web.Request, body: bytes) -> web.Response:
        self._raise_injected_fault(route.operation)
        with self._lock:
            hooks = self._hooks.get(route.operation) or []
            hook = hooks.pop(0) if hooks else None
        if hook is not None:
            hook(self)
        payload = self._json_body(request, body)
        with self._lock:
            if plane == "data":
                index = self._indexes.get(index_name or "")
                if index is None:
                    raise ApiFailure(404, "NOT_FOUND", "Index not found")
                if index.state(time.monotonic()) == "Initializing":
                    raise ApiFailure(503, "UNAVAILABLE", f"Index {index.name} is not ready")
                status, answer = route.handler(index, payload, request.query, **params)
            else:
                status, answer = route.handler(payload, request.query, **params)
        if answer is None:
            return web.Response(status=status)
        return web.json_response(answer, status=status)

    def _raise_injected_fault(self, operation: str) -> None:
        with self._lock:
            queue = self._faults.get(operation) or []
            if not queue:
                return
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
        failure = ApiFailure(fault.status, HTTP_CODE.get(fault.status, "UNKNOWN"), fault.message)
        failure.retry_after = fault.retry_after  # type: ignore[attr-defined]
        raise failure

    @staticmethod
    def _json_body(request: web.Request, body: bytes) -> dict[str, Any] | None:
        if request.method in ("GET", "DELETE"):
            if body:
                raise invalid(f"{request.method} takes no body")
            return None
        if len(body) > MAX_REQUEST_BYTES:
            raise invalid(f"request of {len(body)} bytes exceeds the 2 MB limit")
        if request.content_type != "application/json":
            raise invalid(f"Content-Type must be application/json, got {request.content_type!r}")
        try:
            payload = json.loads(body or b"null")
        except ValueError as error:
            raise invalid(f"body is not JSON: {error}") from None
        if not isinstance(payload, dict):
            raise invalid("body must be a JSON object")
        return payload

    def _failure(self, plane: str, failure: ApiFailure, request: web.Request) -> web.Response:
        if failure.problem:
            with self._lock:
                self.problems.append(f"{request.method} {request.path_qs} -> {failure.status}: {failure.message}")
        headers = {}
        retry_after = getattr(failure, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if failure.status == 401 or (plane == "data" and failure.status == 429):
            # The authentication and rate-limiting layer answers in plain text (both documents say so).
            return web.Response(status=failure.status, text=failure.message, headers=headers)
        if plane == "control":
            body: dict[str, Any] = {"error": {"code": failure.code, "message": failure.message},
                                    "status": failure.status}
        else:
            code = GRPC.get(failure.code, GRPC["PERMISSION_DENIED"] if failure.status == 403 else GRPC["INTERNAL"])
            body = {"code": code, "message": failure.message, "details": []}
        return web.json_response(body, status=failure.status, headers=headers)

    def _route_table(self) -> list[Route]:
        name, namespace = r"(?P<name>[^/]+)", r"(?P<namespace>[^/]+)"
        table = [
            ("control", "GET", "/indexes", "list_indexes", self._list_indexes),
            ("control", "POST", "/indexes", "create_index", self._create_index),
            ("control", "GET", f"/indexes/{name}", "describe_index", self._describe_index),
            ("control", "PATCH", f"/indexes/{name}", "configure_index", self._configure_index),
            ("control", "DELETE", f"/indexes/{name}", "delete_index", self._delete_index),
            ("data", "POST", "/describe_index_stats", "describeIndexStats", self._describe_index_stats),
            ("data", "POST", "/query", "queryVectors", self._query),
            ("data", "POST", "/vectors/upsert", "upsertVectors", self._upsert),
            ("data", "GET", "/vectors/fetch", "fetchVectors", self._fetch),
            ("data", "POST", "/vectors/delete", "deleteVectors", self._delete_vectors),
            ("data", "GET", "/vectors/list", "listVectors", self._list_vectors),
            ("data", "GET", "/namespaces", "listNamespacesOperation", self._list_namespaces),
            ("data", "POST", "/namespaces", "createNamespace", self._create_namespace),
            ("data", "GET", f"/namespaces/{namespace}", "describeNamespace", self._describe_namespace),
            ("data", "DELETE", f"/namespaces/{namespace}", "deleteNamespace", self._delete_namespace),
        ]
        return [Route(plane, method, re.compile(path), operation, handler)
                for plane, method, path, operation, handler in table]

    # --- control plane (db_control_2026-07) ---

    def _list_indexes(self, body: None, query: Any) -> tuple[int, Any]:
        _require_params(query, set())
        now = time.monotonic()
        return 200, {"indexes": [index.model(now) for index in self._indexes.values()]}

    def _existing(self, name: str) -> Index:
        index = self._indexes.get(name)
        if index is None:
            raise ApiFailure(404, "NOT_FOUND", f"Index {name} not found.")
        return index

    def _describe_index(self, body: None, query: Any, name: str) -> tuple[int, Any]:
        _require_params(query, set())
        return 200, self._existing(name).model(time.monotonic())

    def _create_index(self, body: dict[str, Any], query: Any) -> tuple[int, Any]:
        _require_params(query, set())
        _require_keys(body, {"name", "deployment", "schema", "cmek_id", "read_capacity", "tags",
                             "deletion_protection"}, "CreateIndexRequest")
        name = body.get("name") or f"index-{secrets.token_hex(4)}"
        if not isinstance(name, str) or not INDEX_NAME.match(name):
            raise invalid("Index name must contain only lowercase alphanumeric characters or hyphens, "
                          "and must not begin or end with a hyphen (1-45 characters).")
        dimension, metric = self._classic_schema(body.get("schema"))
        cloud, region = self._deployment(body.get("deployment"))
        if body.get("read_capacity") not in (None, {"mode": "OnDemand"}):
            raise invalid("this test server implements OnDemand read capacity only")
        if "cmek_id" in body:
            raise invalid("this test server does not implement cmek_id")
        protection = self._deletion_protection(body.get("deletion_protection", "disabled"))
        tags = self._tags(body.get("tags"))
        if name in self._indexes:
            raise ApiFailure(409, "ALREADY_EXISTS", "Resource already exists.")
        if self.max_serverless_indexes is not None and len(self._indexes) >= self.max_serverless_indexes:
            raise ApiFailure(403, self.quota_error_code,
                             f"Request failed. You've reached the max serverless indexes allowed in project "
                             f"local ({self.max_serverless_indexes}). To add more serverless indexes, "
                             f"upgrade your plan.")
        index = self._new_index(name, dimension, metric, cloud, region, protection, tags)
        return 201, index.model(time.monotonic())

    def _new_index(self, name: str, dimension: int, metric: str, cloud: str, region: str, protection: str,
                   tags: dict[str, str]) -> Index:
        site, port = self._loopback_site()  # it starts on the loop right after
        starting = asyncio.get_running_loop().create_task(site.start())
        self._tasks.add(starting)
        starting.add_done_callback(self._tasks.discard)
        index = Index(name=name, dimension=dimension, metric=metric, cloud=cloud, region=region,
                      deletion_protection=protection, tags=tags, port=port,
                      ready_at=time.monotonic() + self.ready_delay, site=site)
        index.namespaces[DEFAULT_NAMESPACE] = {}
        self._indexes[name] = index
        self._ports[port] = name
        return index

    @staticmethod
    def _classic_schema(schema: Any) -> tuple[int, str]:
        if not isinstance(schema, dict) or set(schema) != {"fields"} or not isinstance(schema["fields"], dict):
            raise invalid("schema must be {'fields': {...}}")
        fields = schema["fields"]
        dense = fields.get("_values")
        if not isinstance(dense, dict) or set(fields) - {"_values", "_sparse_values"}:
            raise invalid("this test server implements classic vectors-API indexes only: a schema of the reserved "
                          "'_values' dense_vector field (optionally with '_sparse_values')")
        _require_keys(dense, {"type", "dimension", "metric"}, "the reserved _values field")
        dimension, metric = dense.get("dimension"), dense.get("metric")
        if dense.get("type") != "dense_vector" or not isinstance(dimension, int) or not 1 <= dimension <= 20000:
            raise invalid("_values must be a dense_vector with a dimension between 1 and 20000")
        if metric not in METRICS:
            raise invalid(f"metric must be one of {METRICS}, got {metric!r}")
        if "_sparse_values" in fields and fields["_sparse_values"] != {"type": "sparse_vector"}:
            raise invalid("_sparse_values must be {'type': 'sparse_vector'}")
        return dimension, metric

    @staticmethod
    def _deployment(deployment: Any) -> tuple[str, str]:
        if deployment is None:
            return "aws", "us-east-1"
        if not isinstance(deployment, dict) or deployment.get("deployment_type") != "managed":
            raise invalid("this test server implements managed (serverless) deployments only")
        _require_keys(deployment, {"deployment_type", "cloud", "region"}, "ManagedDeployment")
        cloud, region = deployment.get("cloud"), deployment.get("region")
        if cloud not in CLOUDS or not isinstance(region, str) or not region:
            raise invalid(f"deployment needs cloud (one of {CLOUDS}) and region")
        return cloud, region

    @staticmethod
    def _deletion_protection(value: Any) -> str:
        if value not in ("enabled", "disabled"):
            raise invalid(f"deletion_protection must be 'enabled' or 'disabled', got {value!r}")
        return value

    @staticmethod
    def _tags(tags: Any, current: dict[str, str] | None = None) -> dict[str, str]:
        """Validated tags merged over `current` ("" removes a key), as IndexTags says."""
        merged = dict(current or {})
        if tags is None:
            return merged
        if not isinstance(tags, dict):
            raise invalid("tags must be an object")
        for key, value in tags.items():
            if not TAG_KEY.match(key) or not isinstance(value, str) or len(value) > 120 \
                    or not all(32 <= ord(char) < 127 for char in value):
                raise invalid(f"invalid tag {key!r}: {value!r}")
            if value == "":
                merged.pop(key, None)
            else:
                merged[key] = value
        if len(merged) > 20:
            raise invalid("an index has at most 20 tags")
        return merged

    def _configure_index(self, body: dict[str, Any], query: Any, name: str) -> tuple[int, Any]:
        _require_params(query, set())
        _require_keys(body, {"deployment", "schema", "read_capacity", "tags", "deletion_protection"},
                      "ConfigureIndexRequest")
        if set(body) - {"tags", "deletion_protection"}:
            raise invalid("this test server implements configuring tags and deletion_protection only")
        index = self._existing(name)
        tags = self._tags(body.get("tags"), index.tags)
        if "deletion_protection" in body:
            index.deletion_protection = self._deletion_protection(body["deletion_protection"])
        index.tags = tags
        return 200, index.model(time.monotonic())

    def _delete_index(self, body: None, query: Any, name: str) -> tuple[int, Any]:
        _require_params(query, set())
        index = self._existing(name)
        if index.deletion_protection == "enabled":
            raise ApiFailure(403, "FORBIDDEN", "Deletion protection is enabled for this index. "
                                               "Disable deletion protection before retrying.")
        if index.gone_at is None:
            index.gone_at = time.monotonic() + self.terminate_delay
        return 202, None

    # --- data plane (db_data_2026-07), on the index's own host ---

    @staticmethod
    def _namespace_of(value: Any) -> str:
        if value is None or value == "":
            return DEFAULT_NAMESPACE
        if not isinstance(value, str) or not ASCII_NAME.match(value):
            raise invalid(f"namespace must be 1-512 ASCII characters, got {value!r}")
        return value

    def _make_namespace(self, index: Index, namespace: str) -> dict[str, Record]:
        if namespace in index.namespaces:
            return index.namespaces[namespace]
        tenants = len(index.namespaces) - (DEFAULT_NAMESPACE in index.namespaces)
        if self.max_namespaces_per_index is not None and tenants >= self.max_namespaces_per_index:
            raise ApiFailure(403, "PERMISSION_DENIED",
                             f"{self.quota_error_code}: Request failed. You've reached the max namespaces "
                             f"({self.max_namespaces_per_index}) allowed in serverless index {index.name}. "
                             f"To add more namespaces, upgrade your plan.")
        index.namespaces[namespace] = {}
        high = self.namespace_high_water.get(index.name, 0)
        self.namespace_high_water[index.name] = max(high, tenants + 1)
        return index.namespaces[namespace]

    def _describe_index_stats(self, index: Index, body: dict[str, Any], query: Any) -> tuple[int, Any]:
        _require_params(query, set())
        _require_keys(body, {"filter"}, "DescribeIndexStatsRequest")
        if body.get("filter"):
            raise invalid("Serverless and Starter indexes do not support describing index stats with "
                          "metadata filtering.")
        counts = {ns: {"vectorCount": len(records)} for ns, records in index.namespaces.items()
                  if ns != DEFAULT_NAMESPACE or records}
        return 200, {"namespaces": counts, "dimension": index.dimension, "indexFullness": 0.0,
                     "totalVectorCount": sum(len(records) for records in index.namespaces.values()),
                     "metric": index.metric, "vectorType": "dense"}

    def _upsert(self, index: Index, body: dict[str, Any], query: Any) -> tuple[int, Any]:
        _require_params(query, set())
        _require_keys(body, {"vectors", "namespace"}, "UpsertRequest")
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not 1 <= len(vectors) <= 1000:
            raise invalid("vectors must hold 1 to 1000 records")
        parsed = [self._vector(index, vector) for vector in vectors]
        records = self._make_namespace(index, self._namespace_of(body.get("namespace")))
        for vector_id, record in parsed:
            records[vector_id] = record
        return 200, {"upsertedCount": len(parsed)}

    @staticmethod
    def _vector(index: Index, vector: Any) -> tuple[str, Record]:
        if not isinstance(vector, dict):
            raise invalid("each vector must be an object")
        _require_keys(vector, {"id", "values", "sparseValues", "metadata"}, "Vector")
        if "sparseValues" in vector:
            raise invalid("this test server implements dense vectors only")
        vector_id, values = vector.get("id"), vector.get("values")
        if not isinstance(vector_id, str) or not ASCII_NAME.match(vector_id):
            raise invalid(f"vector id must be 1-512 ASCII characters, got {vector_id!r}")
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            raise invalid(f"vector {vector_id}: values must be a list of numbers")
        if len(values) != index.dimension:
            raise ApiFailure(400, "INVALID_ARGUMENT", f"Vector dimension {len(values)} does not match the "
                                                      f"dimension of the index {index.dimension}", problem=True)
        if all(abs(v) < 1e-8 for v in values):
            raise invalid(f"vector {vector_id}: Dense vectors must contain at least one non-zero value")
        metadata = vector.get("metadata")
        if metadata is not None:
            _check_metadata(metadata)
        return vector_id, Record([float(v) for v in values], metadata)

    def _query(self, index: Index, body: dict[str, Any], query: Any) -> tuple[int, Any]:
        _require_params(query, set())
        _require_keys(body, {"namespace", "topK", "filter", "includeValues", "includeMetadata", "vector",
                             "sparseVector", "id", "scanFactor", "maxCandidates"}, "QueryRequest")
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= 10000:
            raise invalid("topK must be an integer between 1 and 10000")
        if {"sparseVector", "scanFactor", "maxCandidates"} & set(body):
            raise invalid("this test server implements dense queries only")
        namespace = self._namespace_of(body.get("namespace"))
        records = index.namespaces.get(namespace, {})
        vector = self._query_vector(index, body, records)
        wanted = body.get("filter")
        ranked = sorted(((_score(index.metric, vector, record.values), vector_id, record)
                         for vector_id, record in records.items()
                         if wanted is None or _passes(record.metadata, wanted)),
                        key=lambda item: (item[0] if index.metric == "euclidean" else -item[0], item[1]))
        matches = []
        for score, vector_id, record in ranked[:top_k]:
            match: dict[str, Any] = {"id": vector_id, "score": score,
                                     "values": record.values if body.get("includeValues") else []}
            if body.get("includeMetadata") and record.metadata is not None:
                match["metadata"] = record.metadata
            matches.append(match)
        shown = "" if namespace == DEFAULT_NAMESPACE else namespace
        return 200, {"matches": matches, "namespace": shown, "usage": {"readUnits": 1}}

    @staticmethod
    def _query_vector(index: Index, body: dict[str, Any], records: dict[str, Record]) -> list[float]:
        if ("vector" in body) == ("id" in body):
            raise invalid("a query names exactly one of 'vector' or 'id'")
        if "id" in body:
            record = records.get(body["id"])
            if record is None:
                raise ApiFailure(400, "INVALID_ARGUMENT", f"No vector with id {body['id']!r} in the namespace")
            return record.values
        vector = body["vector"]
        if not isinstance(vector, list) or len(vector) != index.dimension:
            size = len(vector) if isinstance(vector, list) else "?"
            raise ApiFailure(400, "INVALID_ARGUMENT", f"Query vector dimension {size} does not match the "
                                                      f"dimension of the index {index.dimension}", problem=True)
        return [float(v) for v in vector]

    def _fetch(self, index: Index, body: None, query: Any) -> tuple[int, Any]:
        _require_params(query, {"ids", "namespace"})
        ids = query.getall("ids", [])
        if not 1 <= len(ids) <= 1000 or not all(ASCII_NAME.match(vector_id) for vector_id in ids):
            raise invalid("ids must name 1 to 1000 ASCII ids")
        namespace = self._namespace_of(query.get("namespace"))
        records = index.namespaces.get(namespace, {})
        vectors = {}
        for vector_id in ids:
            if (record := records.get(vector_id)) is not None:
                vectors[vector_id] = {"id": vector_id, "values": record.values,
                                      **({"metadata": record.metadata} if record.metadata is not None else {})}
        shown = "" if namespace == DEFAULT_NAMESPACE else namespace
        return 200, {"vectors": vectors, "namespace": shown, "usage": {"readUnits": 1}}

    def _delete_vectors(self, index: Index, body: dict[str, Any], query: Any) -> tuple[int, Any]:
        _require_params(query, set())
        _require_keys(body, {"ids", "deleteAll", "namespace", "filter"}, "DeleteRequest")
        records = index.namespaces.get(self._namespace_of(body.get("namespace")), {})
        if "filter" in body:
            if "ids" in body or body.get("deleteAll"):
                raise invalid("a delete by filter names neither 'ids' nor 'deleteAll'")
            for vector_id in [i for i, record in records.items() if _passes(record.metadata, body["filter"])]:
                del records[vector_id]
            return 200, {}
        ids, delete_all = body.get("ids"), body.get("deleteAll", False)
        if (ids is None) == (not delete_all):
            raise invalid("a delete names exactly one of 'ids' or 'deleteAll'")
        if ids is not None and (not isinstance(ids, list) or not 1 <= len(ids) <= 1000):
            raise invalid("ids must hold 1 to 1000 ids")
        for vector_id in ids if ids is not None else list(records):
            records.pop(vector_id, None)
        return 200, {}

    def _list_vectors(self, index: Index, body: None, query: Any) -> tuple[int, Any]:
        _require_params(query, {"prefix", "limit", "paginationToken", "namespace"})
        namespace = self._namespace_of(query.get("namespace"))
        prefix = query.get("prefix", "")
        ids = sorted(vector_id for vector_id in index.namespaces.get(namespace, {}) if vector_id.startswith(prefix))
        page, token = _page(ids, _after_token(query.get("paginationToken")), _limit(query.get("limit")))
        answer: dict[str, Any] = {"vectors": [{"id": vector_id} for vector_id in page],
                                  "namespace": "" if namespace == DEFAULT_NAMESPACE else namespace,
                                  "usage": {"readUnits": 1}}
        if token:
            answer["pagination"] = {"next": token}
        return 200, answer

    @staticmethod
    def _namespace_description(name: str, records: dict[str, Record]) -> dict[str, Any]:
        # record_count and size_bytes are uint64 serialized as decimal strings in 2026-07.
        size = sum(len(record.values) * 4 for record in records.values())
        return {"name": name, "record_count": str(len(records)), "size_bytes": str(size)}

    def _list_namespaces(self, index: Index, body: None, query: Any) -> tuple[int, Any]:
        _require_params(query, {"limit", "paginationToken", "prefix"})
        prefix = query.get("prefix", "")
        names = sorted(ns for ns, records in index.namespaces.items()
                       if ns.startswith(prefix) and (ns != DEFAULT_NAMESPACE or records))
        page, token = _page(names, _after_token(query.get("paginationToken")), _limit(query.get("limit")))
        answer: dict[str, Any] = {"namespaces": [self._namespace_description(ns, index.namespaces[ns]) for ns in page],
                                  "total_count": len(names)}
        if token:
            answer["pagination"] = {"next": token}
        return 200, answer

    def _create_namespace(self, index: Index, body: dict[str, Any], query: Any) -> tuple[int, Any]:
        _require_params(query, set())
        _require_keys(body, {"name", "schema"}, "CreateNamespaceRequest")
        if "schema" in body:
            raise invalid("this test server does not implement namespace metadata schemas")
        name = body.get("name")
        if not isinstance(name, str) or not ASCII_NAME.match(name) or name == DEFAULT_NAMESPACE:
            raise invalid(f"namespace name must be 1-512 ASCII characters other than {DEFAULT_NAMESPACE!r}")
        if name in index.namespaces:
            raise ApiFailure(409, "ALREADY_EXISTS", f"Namespace {name} already exists")
        return 200, self._namespace_description(name, self._make_namespace(index, name))

    def _named_namespace(self, index: Index, namespace: str) -> dict[str, Record]:
        if not ASCII_NAME.match(namespace):
            raise invalid(f"namespace must be 1-512 ASCII characters, got {namespace!r}")
        records = index.namespaces.get(namespace)
        if records is None:
            raise ApiFailure(404, "NOT_FOUND", f"Namespace {namespace} not found")
        return records

    def _describe_namespace(self, index: Index, body: None, query: Any, namespace: str) -> tuple[int, Any]:
        _require_params(query, set())
        return 200, self._namespace_description(namespace, self._named_namespace(index, namespace))

    def _delete_namespace(self, index: Index, body: None, query: Any, namespace: str) -> tuple[int, Any]:
        _require_params(query, set())
        self._named_namespace(index, namespace)
        del index.namespaces[namespace]
        return 200, {}


@contextlib.contextmanager
def running(**options: Any) -> Iterator[PineconeTestServer]:
    """A started server, stopped and checked on exit (for use outside pytest fixtures)."""
    server = PineconeTestServer(**options).start()
    try:
        yield server
    finally:
        server.stop()
    server.check()
