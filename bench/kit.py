"""What the provisioning benchmark measures with, shared by the operator run and the floor run.

- `BenchEnvironment`: the real local control plane and embedded Postgres (tenantstore_dev.environment), with
  pg_stat_statements sized so that every tenant's statements stay counted, and the benchmark's StoreClass.
- `TenantWatcher`: a watch on the run's namespace from the benchmark process, which timestamps each
  TenantStore's first appearance, its Ready transition and its disappearance itself (metav1 times have
  one-second resolution).
- `ApiServerMetrics`: the kube-apiserver's own /metrics (`apiserver_request_total`), diffed per phase.
- `PgStats`: pg_stat_statements (calls by every role but the superuser the benchmark itself uses), reset
  before each phase.
- `ProcessSampler`: CPU seconds (psutil) and peak RSS (sampled, and the kernel's high-water mark) of a pid.
- `LogFollower`: the operator's log, line by line with arrival times, for "idle" after a restart, and the
  verification passes it reports (`VerifyPass`).
- `PostgresConnections`: the connections Postgres authorized (its log, `log_connections = authorization`).
- `residue`: what of a run's tenants is left in Postgres and Kubernetes.

Everything talks to loopback addresses only and every wait has a deadline.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import random
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg

from tenantstore_dev.environment import ADMIN_SECRET, OPERATOR_NAMESPACE, LocalEnvironment
from tenantstore_dev.postgres import SUPERUSER
from tenantstore.api import GROUP, VERSION

PLURAL = "tenantstores"
STORE_CLASS = "bench"
DIMENSION = 384
METRIC = "cosine"
TENANT_ID_LABEL = "tenancy.dev/tenant-id"
# Resources whose API requests belong to provisioning (the operator's or the floor's); everything else on
# the API server (leases, the controller-manager's own bookkeeping) is background.
WORK_RESOURCES = ("tenantstores", "secrets", "events", "storeclasses")
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION")
# Neither the operator (Kopf watches) nor the floor (it has the body it created) reads single TenantStores:
# these are the controller-manager's garbage collector looking up the owner of a new or deleted Secret.
# They are reported apart, as background, not as the run's requests.
BACKGROUND_REQUESTS = ("tenantstores GET",)
DDL_KEYWORDS = ("CREATE", "ALTER", "DROP", "GRANT", "REVOKE", "COMMENT", "REASSIGN", "SECURITY")
# Enough entries that no statement of a 5,000-tenant phase is evicted (each tenant's DDL names its own objects,
# so every tenant adds distinct entries); eviction would undercount, and pg_stat_statements_info tells if it did.
PGSS_MAX = 100_000
# The application_name of the verification pass's tenant logins (tenantstore/backends/postgres.py).
VERIFY_LOGIN_APPLICATION = "tenantstore-operator-verify"


# --------------------------------------------------------------------------- the tenants of a run

def tier_mix(n: int, seed: int = 7) -> list[str]:
    """80 % free, 15 % pro, 5 % enterprise (at least one pro and one enterprise from N = 3), shuffled."""
    enterprise = max(1, round(n * 0.05)) if n >= 3 else 0
    pro = max(1, round(n * 0.15)) if n >= 3 else 0
    tiers = ["enterprise"] * enterprise + ["pro"] * pro + ["free"] * (n - enterprise - pro)
    random.Random(seed).shuffle(tiers)
    return tiers


def run_tenants(prefix: str, n: int) -> list[dict[str, str]]:
    """The N tenants of one run: TenantStore name, tenantId (unique to the run) and tier."""
    return [{"name": f"t{i:05d}", "tenantId": f"{prefix}-{i:05d}", "tier": tier}
            for i, tier in enumerate(tier_mix(n))]


def tenant_manifest(namespace: str, tenant: Mapping[str, str], store_class: str = STORE_CLASS) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TenantStore",
            "metadata": {"name": tenant["name"], "namespace": namespace},
            "spec": {"tenantId": tenant["tenantId"], "tier": tenant["tier"], "storeClassName": store_class,
                     "vector": {"dimension": DIMENSION, "metric": METRIC}}}


def store_class_manifest() -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StoreClass", "metadata": {"name": STORE_CLASS},
            "spec": {"postgres": {"adminSecretRef": {"name": ADMIN_SECRET, "namespace": OPERATOR_NAMESPACE,
                                                     "key": "uri"}, "database": "tenants"},
                     "vector": {"backend": "pgvector"}}}


def role_prefix(prefix: str) -> str:
    """The Postgres names of a run's tenants all start with this (tenant_<tenantId with _ for ->)."""
    return "tenant_" + prefix.replace("-", "_") + "_"


# --------------------------------------------------------------------------- the environment

class BenchEnvironment:
    """A LocalEnvironment of the benchmark's own (never the e2e tests'), shared by all runs of one invocation."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.local = LocalEnvironment(self.workdir)
        self.deleting: list[str] = []  # namespaces of earlier runs, still being emptied

    def start(self) -> None:
        self.local.start()
        # pg_stat_statements.max is read at server start: set it, then restart Postgres once.
        with psycopg.connect(self.local.postgres.superuser_uri(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET pg_stat_statements.max = {PGSS_MAX}")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track_utility = on")
            # One log line per authorized connection (user, database, application_name): how the verification
            # pass's logins are counted. The other aspects of log_connections stay off.
            conn.execute("ALTER SYSTEM SET log_connections = 'authorization'")
        self.local.postgres.stop("fast")
        self.local.postgres.start()
        assert self.local.kubectl is not None
        self.local.kubectl.apply(store_class_manifest())

    def stop(self) -> None:
        self.local.stop()

    @property
    def kubeconfig(self) -> Path:
        return self.local.control_plane.kubeconfig

    @property
    def server(self) -> str:
        return self.local.control_plane.server

    def ssl_context(self) -> ssl.SSLContext:
        pki = self.local.control_plane.pki
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        return context

    def superuser_uri(self, database: str = "tenants") -> str:
        return self.local.postgres.superuser_uri(database)

    def connections(self) -> PostgresConnections:
        return PostgresConnections(self.local.postgres.workdir / "postgres.log")

    def between_runs(self) -> None:
        """The same start for every run: the last run's namespace gone (the namespace controller deleting its
        thousands of Events would otherwise run alongside), no shared vector tables left, no bloat."""
        assert self.local.kubectl is not None
        while self.deleting:
            self.local.kubectl("wait", "--for=delete", f"namespace/{self.deleting[-1]}", "--timeout=600s")
            self.deleting.pop()
        with psycopg.connect(self.superuser_uri(), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS tenantstore_vectors CASCADE")
            conn.execute("VACUUM")
        with psycopg.connect(self.superuser_uri("postgres"), autocommit=True) as conn:
            conn.execute("VACUUM")

    def namespace(self, name: str) -> None:
        assert self.local.kubectl is not None
        self.local.kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def delete_namespace(self, name: str) -> None:
        assert self.local.kubectl is not None
        self.local.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
        self.deleting.append(name)


# --------------------------------------------------------------------------- the API server's own metrics

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ApiServerMetrics:
    """apiserver_request_total from the API server's /metrics, keyed by (resource, subresource, verb)."""

    def __init__(self, server: str, context: ssl.SSLContext):
        self.url = f"{server}/metrics"
        self.context = context

    def scrape(self) -> collections.Counter[tuple[str, str, str]]:
        with urllib.request.urlopen(self.url, context=self.context, timeout=30) as response:
            text = response.read().decode()
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, _, value = line.rpartition("} ")
            labels = dict(_LABEL.findall(labels_text))
            counts[(labels.get("resource", ""), labels.get("subresource", ""), labels.get("verb", ""))] += \
                int(float(value))
        return counts


def api_delta(before: Mapping[tuple[str, str, str], int], after: Mapping[tuple[str, str, str], int],
              minus: Mapping[tuple[str, str], int] | None = None) -> dict[str, Any]:
    """Requests to the work resources between two scrapes, less the ones the benchmark itself made.

    `minus` counts the benchmark's own requests by (resource, verb): the user's creates and deletes and the
    benchmark's watch. WATCH requests are counted when they end, so they are left out of the totals.
    """
    by_resource_verb: collections.Counter[str] = collections.Counter()
    for key, count in after.items():
        resource, subresource, verb = key
        if resource not in WORK_RESOURCES or verb == "WATCH":
            continue
        delta = count - before.get(key, 0)
        if delta:
            by_resource_verb[f"{resource}{'/' + subresource if subresource else ''} {verb}"] += delta
    for (resource, verb), count in (minus or {}).items():
        key = f"{resource} {verb}"
        if verb != "WATCH" and key in by_resource_verb:
            by_resource_verb[key] -= count
    background = {key: by_resource_verb.pop(key) for key in BACKGROUND_REQUESTS if key in by_resource_verb}
    cleaned = {key: value for key, value in sorted(by_resource_verb.items()) if value}
    return {"requests": sum(cleaned.values()),
            "writes": sum(value for key, value in cleaned.items() if key.rsplit(" ", 1)[1] in WRITE_VERBS),
            "by_resource_verb": cleaned, "background_gc_owner_lookups": sum(background.values())}


# --------------------------------------------------------------------------- Postgres statistics

class PgStats:
    """pg_stat_statements, read and reset as the superuser (whose own statements are left out)."""

    def __init__(self, superuser_uri: str):
        self.uri = superuser_uri

    def reset(self) -> None:
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def read(self) -> dict[str, Any]:
        with psycopg.connect(self.uri, autocommit=True) as conn:
            rows = conn.execute("""
                SELECT s.query, s.calls, s.total_exec_time, coalesce(r.rolname, '(dropped role)') AS role
                  FROM pg_stat_statements s LEFT JOIN pg_roles r ON r.oid = s.userid
                 WHERE s.userid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)""").fetchall()
            dealloc = conn.execute("SELECT dealloc FROM pg_stat_statements_info").fetchone()[0]
        by_keyword: collections.Counter[str] = collections.Counter()
        time_by_keyword: collections.Counter[str] = collections.Counter()
        by_role_kind: collections.Counter[str] = collections.Counter()
        time_by_shape: collections.Counter[str] = collections.Counter()
        calls_by_shape: collections.Counter[str] = collections.Counter()
        for query, calls, exec_ms, role in rows:
            keyword = first_keyword(query)
            by_keyword[keyword] += calls
            time_by_keyword[keyword] += exec_ms
            time_by_shape[statement_shape(query)] += exec_ms
            calls_by_shape[statement_shape(query)] += calls
            by_role_kind["tenant roles" if role.startswith("tenant_") or role == "(dropped role)" else role] += calls
        ddl = sum(count for keyword, count in by_keyword.items() if keyword in DDL_KEYWORDS)
        return {"statements": sum(by_keyword.values()), "ddl": ddl,
                "by_keyword": dict(by_keyword.most_common()),
                "exec_ms_by_keyword": {k: round(v, 1) for k, v in time_by_keyword.most_common()},
                "by_role": dict(by_role_kind), "evicted_entries": int(dealloc),
                # Where Postgres's time went (lock waits included), per statement shape, the costliest first.
                "top_statements": [{"statement": shape, "calls": calls_by_shape[shape], "exec_ms": round(ms, 1)}
                                   for shape, ms in time_by_shape.most_common(TOP_STATEMENTS)]}


TOP_STATEMENTS = 15


def statement_shape(query: str) -> str:
    """A statement with tenant names, identifiers and literals blanked, so each tenant's DDL counts as one."""
    shape = re.sub(r'"[^"]*"', '"…"', query)
    shape = re.sub(r"'[^']*'", "'…'", shape)
    shape = re.sub(r"\btenant_\w+", "tenant_…", shape)
    return re.sub(r"\s+", " ", shape).strip()[:120]


def first_keyword(query: str) -> str:
    text = re.sub(r"^(\s|--[^\n]*\n|/\*.*?\*/)+", "", query, flags=re.S)
    match = re.match(r"[A-Za-z]+", text)
    return match.group(0).upper() if match else "?"


# --------------------------------------------------------------------------- Postgres connections

_AUTHORIZED = re.compile(r"connection authorized: user=(?P<user>\S+)(?: database=(?P<database>\S+))?"
                         r"(?: application_name=(?P<application>\S+))?")


class PostgresConnections:
    """The connections Postgres authorized, read from its log (the environment sets log_connections =
    authorization); the benchmark's own (as the superuser) are left out."""

    def __init__(self, log_path: Path):
        self.log_path = log_path

    def mark(self) -> int:
        """Where the log ends now: count from here with `since`."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def since(self, offset: int) -> dict[str, Any]:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return {"connections": None, "verify_logins": None, "by_application": {}}
        by_application: collections.Counter[str] = collections.Counter()
        for match in _AUTHORIZED.finditer(text):
            if match["user"] != SUPERUSER:
                by_application[match["application"] or "(none)"] += 1
        return {"connections": sum(by_application.values()),
                "verify_logins": by_application.get(VERIFY_LOGIN_APPLICATION, 0),
                "by_application": dict(by_application.most_common())}


# --------------------------------------------------------------------------- residue

def residue(env: BenchEnvironment, namespace: str, prefix: str, kube_counts: Mapping[str, int]) -> dict[str, int]:
    """What of a run's tenants still exists: Postgres objects named after them, and (given) their Secrets."""
    like = role_prefix(prefix).replace("_", r"\_") + "%"
    with psycopg.connect(env.superuser_uri(), autocommit=True) as conn:
        def count(query: str) -> int:
            return int(conn.execute(query, (like,)).fetchone()[0])
        found = {
            "roles": count("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s"),
            "schemas": count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s"),
            "databases": count("SELECT count(*) FROM pg_database WHERE datname LIKE %s"),
            "partitions": count("""SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                                    JOIN pg_namespace n ON n.oid = c.relnamespace
                                   WHERE n.nspname = 'tenantstore_vectors' AND c.relname LIKE %s"""),
            "policies": count("SELECT count(*) FROM pg_policies WHERE policyname LIKE %s"),
        }
    return {**found, **kube_counts}


# --------------------------------------------------------------------------- watching TenantStores

class TenantWatcher:
    """Watches one namespace's TenantStores and timestamps, on this process's clock, when each appeared,
    became Ready and disappeared."""

    def __init__(self, server: str, context: ssl.SSLContext, namespace: str):
        self.base = f"{server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        self.context = context
        self.first_seen: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.gone_at: dict[str, float] = {}
        self.present: set[str] = set()
        self.measured: set[str] = set()  # TenantStores whose status shows a usage measurement
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.reconnects = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.context),
                                              timeout=aiohttp.ClientTimeout(total=None, sock_read=120))
        version = await self._list()
        self._task = asyncio.create_task(self._watch(version))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (stopping)
                pass
        await self._session.close()

    async def _list(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            self.requests[(PLURAL, "LIST")] += 1
            async with self._session.get(self.base) as response:
                # 429: a just-started API server (or a just-established CRD) asks to come back shortly.
                if response.status == 429 and time.monotonic() < deadline:
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                response.raise_for_status()
                body = await response.json()
                break
        now = time.monotonic()
        names = set()
        for item in body.get("items", ()):
            names.add(item["metadata"]["name"])
            self._observe("ADDED", item, now)
        for name in self.present - names:
            self._observe("DELETED", {"metadata": {"name": name}}, now)
        return body["metadata"]["resourceVersion"]

    async def _watch(self, version: str) -> None:
        try:
            while True:
                self.requests[(PLURAL, "WATCH")] += 1
                params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                          "timeoutSeconds": "60"}
                try:
                    async with self._session.get(self.base, params=params) as response:
                        if response.status == 410:
                            version = await self._list()
                            continue
                        response.raise_for_status()
                        async for line in response.content:
                            if not line.strip():
                                continue
                            event = json.loads(line)
                            kind, obj = event["type"], event["object"]
                            if kind == "ERROR":
                                version = await self._list() if obj.get("code") == 410 else version
                                break
                            version = obj["metadata"].get("resourceVersion", version)
                            if kind != "BOOKMARK":
                                self._observe(kind, obj, time.monotonic())
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as error:
                    # The stream broke off: go on from the last version seen (a few times, then give up).
                    self.reconnects += 1
                    if self.reconnects > 20:
                        raise
                    await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 (reported to whoever waits)
            self.error = error
            self._changed.set()
            raise

    def _observe(self, kind: str, obj: Mapping[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.present.discard(name)
            self.gone_at.setdefault(name, now)
        else:
            self.present.add(name)
            self.first_seen.setdefault(name, now)
            if (obj.get("status") or {}).get("usage"):
                self.measured.add(name)
            for condition in (obj.get("status") or {}).get("conditions") or ():
                if condition.get("type") == "Ready" and condition.get("status") == "True":
                    self.ready_at.setdefault(name, now)
        self._changed.set()

    async def wait(self, done: Any, deadline: float, what: str) -> None:
        """Until `done()` holds, failing with `what` at the monotonic `deadline`."""
        while not done():
            if self.error is not None:
                raise RuntimeError(f"the benchmark's watch failed: {self.error}") from self.error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass

    def ready_count(self, names: Iterable[str]) -> int:
        return sum(1 for name in names if name in self.ready_at)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def at(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
    return {"p50": round(at(0.50), 4), "p95": round(at(0.95), 4), "p99": round(at(0.99), 4),
            "max": round(ordered[-1], 4), "mean": round(sum(ordered) / len(ordered), 4)}


# --------------------------------------------------------------------------- a process's CPU and memory

class ProcessSampler:
    """Samples a process's RSS every `interval` seconds in a thread; CPU seconds from psutil on demand."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self._last_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}", daemon=True)

    def start(self) -> ProcessSampler:
        self.cpu()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def cpu(self) -> float:
        """User + system CPU seconds so far (the last known figure once the process is gone)."""
        try:
            times = self.process.cpu_times()
            self._last_cpu = times.user + times.system
        except psutil.Error:
            pass
        return self._last_cpu

    def high_water_mark(self) -> int:
        """The kernel's peak RSS for the process (VmHWM), 0 where /proc does not tell."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def rss(self) -> int:
        try:
            return self.process.memory_info().rss
        except psutil.Error:
            return 0

    def peak(self) -> int:
        self.peak_rss = max(self.peak_rss, self.high_water_mark())
        return self.peak_rss

    def stop(self) -> None:
        self.peak()
        self._stop.set()
        self._thread.join(timeout=5)


def postgres_cpu(postmaster: psutil.Process) -> float:
    """CPU seconds of a Postgres: the postmaster, its live backends, and the backends it has reaped."""
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in postmaster.children():
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.Error:
            pass
    return total


class SystemCpu:
    """CPU seconds of everything else on the machine that takes part: the API server, etcd, the
    controller-manager, Postgres (the postmaster, its live backends, and the backends that already ended,
    which the postmaster has reaped) and this benchmark process."""

    def __init__(self, env: BenchEnvironment):
        self.processes: dict[str, psutil.Process] = {}
        for name, pid in env.local.control_plane.pids.items():
            self.processes[name] = psutil.Process(pid)
        pid_file = env.local.postgres.datadir / "postmaster.pid"
        self.processes["postgres"] = psutil.Process(int(pid_file.read_text().splitlines()[0]))
        self.processes["benchmark"] = psutil.Process()

    def snapshot(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name, process in self.processes.items():
            try:
                if name == "postgres":
                    found[name] = postgres_cpu(process)
                else:
                    times = process.cpu_times()
                    found[name] = times.user + times.system
            except psutil.Error:
                found[name] = 0.0
        return found

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before.get(name, 0.0), 2) for name in after}


# --------------------------------------------------------------------------- the operator's log

_TIMER_ENDED = re.compile(rb"\[(?P<object>[^\]]+)\] Timer '(?P<name>\w+)' (?:succeeded|failed)")
_USAGE_MEASURED = re.compile(rb"measured StoreClass (?P<name>\S+): (?P<tenants>\d+) tenants, in (?P<seconds>[\d.]+) s")
_VERIFIED = re.compile(rb"verified StoreClass (?P<name>\S+): (?P<tenants>\d+) tenants, (?P<adrift>\d+) adrift, "
                       rb"(?P<outcome>.+), in (?P<seconds>[\d.]+) s")


@dataclasses.dataclass(frozen=True)
class VerifyPass:
    """One verification pass of a StoreClass, as the operator logged it at its end."""

    store_class: str
    tenants: int
    adrift: int
    outcome: str  # "backends answered", or "backends unavailable (reason)"
    seconds: float  # the pass's own duration, as the operator measured it
    arrived: float  # monotonic time the line was read (at most one poll, 50 ms, after it was written)

    @property
    def started(self) -> float:
        """When the pass began, on this process's clock (late by the log's poll delay at most)."""
        return self.arrived - self.seconds


class LogFollower:
    """Reads the operator's log as it grows and timestamps each line on arrival (polled every 50 ms)."""

    RESUMED = "Resuming is processed"
    MEASURED = ("Timer 'measure_tenants' succeeded", "Timer 'measure_tenants' failed")
    VERIFY_TIMER = "verify_tenants"
    # Lines a verification pass itself writes (its tally, Kopf's outcome, a canary that could not run).
    VERIFY_LINES = ("verified StoreClass", "Timer 'verify_tenants'", "isolation canary")

    def __init__(self, path: Path, offset: int, namespace: str = "", store_class: str = STORE_CLASS):
        self.path = path
        self.offset = offset
        self.namespace_tag = f"[{namespace}/".encode() if namespace else b""
        self.lines = 0
        self.resumed = 0
        self.measured = 0  # usage measurements (the per-StoreClass timer) that ended
        self.usage_passes: list[dict[str, float]] = []  # the store class's, as the operator timed them
        self.errors = 0
        self.store_class = store_class
        self.verify_passes: list[VerifyPass] = []  # the store class's passes, as they ended
        self.verify_timer_ends = 0  # Kopf's outcome lines of its passes (after one, only the StoreClass's patch)
        # When each of the store class's timers (Kopf's name) last ended: the next run begins an interval later.
        self.timer_ended: dict[str, float] = {}
        # Lines neither of a verification pass nor a timer's outcome for the store class: any other work.
        self.other_lines = 0
        self.last_line_at = time.monotonic()
        self._partial = b""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LogFollower:
        self._task = asyncio.create_task(self._follow())
        return self

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.poll()

    async def _follow(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.05)

    def poll(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except OSError:
            return
        if not chunk:
            return
        self.offset += len(chunk)
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        if complete:
            self.lines += len(complete)
            now = time.monotonic()
            for line in complete:
                timer_ended = _TIMER_ENDED.search(line)
                of_class_timer = timer_ended is not None and timer_ended["object"].decode() == self.store_class
                usage_pass = _USAGE_MEASURED.search(line)
                of_class_usage = usage_pass is not None and usage_pass["name"].decode() == self.store_class
                if of_class_usage:
                    self.usage_passes.append({"tenants": int(usage_pass["tenants"]),
                                              "seconds": float(usage_pass["seconds"])})
                if line.strip() and not of_class_timer and not of_class_usage and \
                        not any(marker.encode() in line for marker in self.VERIFY_LINES):
                    self.other_lines += 1
                if (verified := _VERIFIED.search(line)) and verified["name"].decode() == self.store_class:
                    self.verify_passes.append(VerifyPass(
                        store_class=self.store_class, tenants=int(verified["tenants"]),
                        adrift=int(verified["adrift"]), outcome=verified["outcome"].decode(errors="replace"),
                        seconds=float(verified["seconds"]), arrived=now))
                if timer_ended is not None and of_class_timer:
                    self.timer_ended[timer_ended["name"].decode()] = now
                    if timer_ended["name"].decode() == self.VERIFY_TIMER:
                        self.verify_timer_ends += 1
                if self.RESUMED.encode() in line and self.namespace_tag in line:
                    self.resumed += 1
                if any(marker.encode() in line for marker in self.MEASURED):
                    self.measured += 1  # the periodic usage job: counted, but not activity of the phase
                elif line.strip() and not of_class_usage:
                    self.last_line_at = time.monotonic()
                if b" ERROR " in line or b"Traceback" in line:
                    self.errors += 1

    async def quiet(self, seconds: float, deadline: float) -> bool:
        """Wait until no line arrived for `seconds`; False if the deadline came first."""
        while time.monotonic() < deadline:
            self.poll()
            if time.monotonic() - self.last_line_at >= seconds:
                return True
            await asyncio.sleep(0.05)
        return False

    async def verify_pass(self, count: int, deadline: float) -> VerifyPass:
        """The store class's `count`-th verification pass (1: the first this follower saw), once Kopf has also
        logged its outcome (after that, only the StoreClass's status patch, if any, is left)."""
        while time.monotonic() < deadline:
            self.poll()
            if len(self.verify_passes) >= count and self.verify_timer_ends >= count:
                return self.verify_passes[count - 1]
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no verification pass #{count} of StoreClass {self.store_class} in the log")
