"""Provisioning cost against the number of tenants, for the operator and for the floor.

    python -m bench.provisioning                 # N = 200, operator run then floor run
    python -m bench.provisioning --n 1000
    python -m bench.provisioning --sweep 100,300,1000
    python -m bench.provisioning --n 10 --out /tmp/x --no-plot   # the smoke run the tests use

One invocation starts one local environment of its own (control plane + embedded Postgres, ~10 s) and, for
each N, runs the operator run and then the floor run in it, each in a namespace of its own; between runs
the shared vector tables are dropped and Postgres is vacuumed, so both start from the same state. Per run:

1. provision: N TenantStores created at once (80 % free, 15 % pro, 5 % enterprise, pgvector, one StoreClass),
   until all are Ready; per-tenant time-to-Ready as this process's watch saw it (first seen -> Ready);
2. the run's process (the operator, or the floor script): CPU seconds and peak RSS;
3. API requests (the API server's apiserver_request_total, less the user's own creates and deletes and this
   process's watch) and SQL statements (pg_stat_statements, every role but the benchmark's superuser), per tenant;
4. restart with N converged tenants: time until the new operator process is idle (every tenant's resume
   logged and no log line for --quiet seconds), the DDL statements and API writes it caused (the floor: 0);
5. verify: one periodic verification pass of the restarted operator over the N converged tenants (its
   duration as the operator logs it, its SQL statements, API requests and tenant logins; the floor: 0);
6. delete all N: time until every TenantStore is gone and until nothing of them is left (roles, schemas,
   databases, partitions, policies, Secrets).

Writes OUT/provisioning-N.json (every figure, operator and floor and their ratio) and redraws
OUT/provisioning.png from every provisioning-*.json in OUT. See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from bench import kit
from tenantstore_dev.environment import OperatorProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results"
USER_REQUESTS = ("tenantstores POST", "tenantstores DELETE")  # the user's part, in both runs
EXPERIMENT_ENV = "TENANTSTORE_BENCH_EXPERIMENT"
# The operator's own usage interval (tenantstore run --usage-interval).
OPERATOR_USAGE_INTERVAL = 60.0
# The first operator process runs no verification pass while the benchmark lasts: none mixes into provisioning
# (the floor has none); the restarted process's passes are measured as a phase of their own.
NO_VERIFICATION_INTERVAL = 86_400.0
# The operator's StoreClass check runs this often, and first this long after start (not an option).
STORECLASS_CHECK_INTERVAL = 60.0
# Passes the verify phase waits through at most for one that runs alone (--verify-passes).
VERIFY_PASSES = 8
# How long before the next pass can begin its bracket opens (the readings take well under a second).
BRACKET_LEAD_SECONDS = 2.0

# (key in a run's figures, unit, what it is)
FIGURES: list[tuple[str, str, str]] = [
    ("provision.all_ready_seconds", "s", "create N at once until all are Ready"),
    ("provision.time_to_ready.p50", "s", "per-tenant time-to-Ready, median"),
    ("provision.time_to_ready.p95", "s", "per-tenant time-to-Ready, 95th percentile"),
    ("provision.time_to_ready.p99", "s", "per-tenant time-to-Ready, 99th percentile"),
    ("process.cpu_seconds", "s", "CPU seconds of the operator (floor: the floor script) over the whole run"),
    ("process.peak_rss_mb", "MB", "peak RSS of the operator (floor: the floor script) over the whole run"),
    ("provision.cpu_seconds", "s", "CPU seconds while provisioning"),
    ("provision.api_requests_per_tenant", "req", "API requests per tenant while provisioning"),
    ("provision.api_writes_per_tenant", "req", "API writes (POST/PUT/PATCH/DELETE) per tenant while provisioning"),
    ("provision.sql_statements_per_tenant", "stmt", "SQL statements per tenant while provisioning"),
    ("provision.ddl_per_tenant", "stmt", "DDL statements per tenant while provisioning"),
    ("restart.idle_seconds", "s", "restart with N converged tenants: until idle"),
    ("restart.first_usage_measurement_done_seconds", "s",
     "restart: until the first usage measurement (1 s + random jitter after start) is done"),
    ("restart.ddl_statements", "stmt", "DDL statements the restart caused"),
    ("restart.api_writes", "req", "API writes the restart caused"),
    ("restart.tenant_api_writes", "req", "API writes the restart caused to TenantStores and their Secrets"),
    ("restart.api_requests", "req", "API requests the restart caused"),
    ("restart.sql_statements", "stmt", "SQL statements the restart caused"),
    ("verify.seconds", "s", "one verification pass over N converged tenants: its duration, as the operator logs it"),
    ("verify.tenants", "tenants", "tenants the verification pass checked"),
    ("verify.sql_statements", "stmt", "SQL statements of the verification pass"),
    ("verify.sql_statements_per_tenant", "stmt", "SQL statements of the verification pass per tenant checked"),
    ("verify.api_requests", "req", "API requests of the verification pass"),
    ("verify.api_writes", "req", "API writes of the verification pass (nothing changed: 0)"),
    ("verify.logins", "logins", "tenant logins of the verification pass (checking Secrets; Postgres's log)"),
    ("verify.logins_per_tenant", "logins", "tenant logins of the verification pass per tenant checked"),
    ("verify.cpu_seconds", "s",
     "operator CPU seconds over the verification pass's bracket (from 2 s before it could begin until settled)"),
    ("delete.all_gone_seconds", "s", "delete all N until every finalizer is released (all gone)"),
    ("delete.residue_zero_seconds", "s", "delete all N until nothing of them is left"),
    ("delete.residue_total", "objects", "objects left after delete (must be 0)"),
    ("delete.api_requests_per_tenant", "req", "API requests per tenant while deleting"),
    ("delete.sql_statements_per_tenant", "stmt", "SQL statements per tenant while deleting"),
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the driver process

class DriverProcess:
    """bench/floor.py as its own process: the user in the operator run, the floor in the floor run."""

    def __init__(self, env: kit.BenchEnvironment, namespace: str, args: argparse.Namespace, log_path: Path):
        self.env, self.namespace, self.args, self.log_path = env, namespace, args, log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> DriverProcess:
        command = [sys.executable, "-m", "bench.floor", "--serve", "--kubeconfig", str(self.env.kubeconfig),
                   "--admin-uri", self.env.local.admin_uri, "--namespace", self.namespace,
                   "--store-class", kit.STORE_CLASS, "--concurrency", str(self.args.concurrency)]
        if self.args.floor_pool_size:
            command += ["--pool-size", str(self.args.floor_pool_size)]
        with self.log_path.open("ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                cwd=REPO_ROOT, env={**{k: v for k, v in os.environ.items() if k != EXPERIMENT_ENV},
                                    "PYTHONPATH": str(REPO_ROOT)},
                limit=2**22)
        ready = await self._answer(120)
        if not ready.get("ok"):
            raise RuntimeError(f"the driver did not start: {ready}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the driver exited; see {self.log_path}")
        return json.loads(line)

    async def command(self, cmd: str, tenants: list[dict[str, str]], timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps({"cmd": cmd, "tenants": tenants}) + "\n").encode())
        await self.process.stdin.drain()
        answer = await self._answer(timeout)
        if not answer.get("ok"):
            raise RuntimeError(f"driver command {cmd} failed ({answer.get('error_count')} errors): "
                               f"{answer.get('errors')}")
        return answer

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


# --------------------------------------------------------------------------- one run

class Run:
    """What one run (operator or floor) needs: namespace, tenants, watch and counters."""

    def __init__(self, env: kit.BenchEnvironment, kind: str, n: int, args: argparse.Namespace, tag: str):
        self.env, self.kind, self.n, self.args = env, kind, n, args
        self.namespace = f"bench-{kind[:2]}-{n}-{tag}"
        self.prefix = f"{kind[0]}{n}{tag}"
        self.tenants = kit.run_tenants(self.prefix, n)
        self.names = [tenant["name"] for tenant in self.tenants]
        self.metrics = kit.ApiServerMetrics(env.server, env.ssl_context())
        self.pg = kit.PgStats(env.superuser_uri())
        self.watcher = kit.TenantWatcher(env.server, env.ssl_context(), self.namespace)
        self.system = kit.SystemCpu(env)
        self.deadline_seconds = args.phase_timeout or (120 + 1.0 * n)
        self.log_dir = env.workdir

    def deadline(self) -> float:
        return time.monotonic() + self.deadline_seconds

    async def kube_residue(self) -> dict[str, int]:
        """Tenant Secrets and TenantStores left in the run's namespace (counted as the benchmark's requests)."""
        self.watcher.requests[("secrets", "LIST")] += 1
        url = f"{self.env.server}/api/v1/namespaces/{self.namespace}/secrets"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.env.ssl_context())) as session:
            async with session.get(url, params={"labelSelector": kit.TENANT_ID_LABEL}) as response:
                response.raise_for_status()
                secrets_left = len((await response.json()).get("items", ()))
        return {"secrets": secrets_left, "tenantstores": len(self.watcher.present)}

    async def residue(self) -> dict[str, int]:
        kube_counts = await self.kube_residue()
        return await asyncio.to_thread(kit.residue, self.env, self.namespace, self.prefix, kube_counts)

    def own_requests(self, watcher_before: Mapping[tuple[str, str], int], answers: list[dict[str, Any]]
                     ) -> dict[tuple[str, str], int]:
        """The benchmark's requests in a phase: the user's creates and deletes and the watch's lists."""
        own: dict[tuple[str, str], int] = {}
        for key, count in self.watcher.requests.items():
            if count - watcher_before.get(key, 0):
                own[key] = count - watcher_before.get(key, 0)
        for answer in answers:
            for key, count in answer.get("requests", {}).items():
                if key in USER_REQUESTS:
                    resource, verb = key.rsplit(" ", 1)
                    own[(resource, verb)] = own.get((resource, verb), 0) + count
        return own

    async def settle(self, follower: kit.LogFollower | None, deadline: float) -> bool:
        """Until the operator's trailing work (events, patches) is done: a quiet log and no API write for 1.5 s
        (reads and the periodic usage job's lines do not count: they never stop)."""
        if follower is None:
            return True
        while time.monotonic() < deadline:
            if not await follower.quiet(self.args.quiet, deadline):
                return False
            first = await asyncio.to_thread(self.metrics.scrape)
            await asyncio.sleep(1.5)
            second = await asyncio.to_thread(self.metrics.scrape)
            if kit.api_delta(first, second)["writes"] == 0 and \
                    time.monotonic() - follower.last_line_at >= self.args.quiet:
                return True
        return False

    # --- phases ---

    async def begin_phase(self, sampler: kit.ProcessSampler | None) -> PhaseStart:
        """API and SQL counters reset or read, CPU noted (no sampler: the process is not started yet)."""
        api = await asyncio.to_thread(self.metrics.scrape)
        await asyncio.to_thread(self.pg.reset)
        return PhaseStart(api=api, watcher=dict(self.watcher.requests), cpu=sampler.cpu() if sampler else 0.0,
                          system=self.system.snapshot(), started=time.monotonic())

    async def end_phase(self, start: PhaseStart, sampler: kit.ProcessSampler, follower: kit.LogFollower | None,
                        deadline: float, answer: dict[str, Any]) -> dict[str, Any]:
        """The figures every phase reports: the driver's, CPU, API requests and SQL statements per tenant."""
        settled = await self.settle(follower, deadline)
        cpu = sampler.cpu() - start.cpu
        system = kit.SystemCpu.delta(start.system, self.system.snapshot())
        elapsed = time.monotonic() - start.started
        api_after = await asyncio.to_thread(self.metrics.scrape)
        sql = await asyncio.to_thread(self.pg.read)
        api = kit.api_delta(start.api, api_after, self.own_requests(start.watcher, [answer]))
        return {
            "driver_seconds": answer["seconds"], "driver_backend_retries": answer.get("backend_retries", 0),
            "settled": settled, "phase_seconds": round(elapsed, 3),
            "cpu_seconds": round(cpu, 3),
            "machine_cpu_seconds": {self.kind: round(cpu, 2), **system},
            "api": api, "api_requests_per_tenant": round(api["requests"] / self.n, 3),
            "api_writes_per_tenant": round(api["writes"] / self.n, 3),
            "sql": sql, "sql_statements_per_tenant": round(sql["statements"] / self.n, 3),
            "ddl_per_tenant": round(sql["ddl"] / self.n, 3),
        }

    async def provision(self, driver: DriverProcess, sampler: kit.ProcessSampler,
                        follower: kit.LogFollower | None) -> dict[str, Any]:
        start = await self.begin_phase(sampler)
        deadline = self.deadline()
        command = asyncio.create_task(driver.command("create" if self.kind == "operator" else "provision",
                                                     self.tenants, self.deadline_seconds))
        try:
            await self.watcher.wait(lambda: self.watcher.ready_count(self.names) == self.n or command.done()
                                    and command.exception() is not None, deadline,
                                    f"all {self.n} TenantStores Ready")
        except TimeoutError:
            ready = self.watcher.ready_count(self.names)
            command.cancel()
            raise TimeoutError(f"{self.kind} run: only {ready}/{self.n} Ready after {self.deadline_seconds:.0f}s")
        answer = await command
        all_ready = max(self.watcher.ready_at[name] for name in self.names) - start.started
        times = [self.watcher.ready_at[name] - self.watcher.first_seen[name] for name in self.names]
        return {"all_ready_seconds": round(all_ready, 3), "time_to_ready": kit.percentiles(times),
                **await self.end_phase(start, sampler, follower, deadline, answer)}

    async def delete(self, driver: DriverProcess, sampler: kit.ProcessSampler,
                     follower: kit.LogFollower | None) -> dict[str, Any]:
        start = await self.begin_phase(sampler)
        deadline = self.deadline()
        command = asyncio.create_task(driver.command("delete" if self.kind == "operator" else "teardown",
                                                     self.tenants, self.deadline_seconds))
        gone = lambda: all(name in self.watcher.gone_at for name in self.names)  # noqa: E731
        try:
            await self.watcher.wait(lambda: gone() or command.done() and command.exception() is not None,
                                    deadline, f"all {self.n} TenantStores gone")
        except TimeoutError:
            left = sum(1 for name in self.names if name not in self.watcher.gone_at)
            command.cancel()
            raise TimeoutError(f"{self.kind} run: {left}/{self.n} TenantStores still there after "
                               f"{self.deadline_seconds:.0f}s")
        answer = await command
        all_gone = max(self.watcher.gone_at[name] for name in self.names) - start.started
        found = await self.residue()
        while sum(found.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            found = await self.residue()
        residue_zero = time.monotonic() - start.started if not sum(found.values()) else None
        return {
            "all_gone_seconds": round(all_gone, 3),
            # The residue check runs right after the last TenantStore is gone, so this is at least all_gone.
            "residue_zero_seconds": None if residue_zero is None else round(max(residue_zero, all_gone), 3),
            "residue": found, "residue_total": sum(found.values()),
            **await self.end_phase(start, sampler, follower, deadline, answer),
        }


@dataclasses.dataclass(frozen=True)
class PhaseStart:
    """What a phase's figures are measured against."""

    api: Any
    watcher: dict[tuple[str, str], int]
    cpu: float
    system: Any
    started: float


# --------------------------------------------------------------------------- the operator run

def usage_interval(args: argparse.Namespace, restarted: bool) -> float:
    """The usage interval of the first or the restarted operator process. --usage-interval only shortens the
    first process's (the wait for every tenant's first measurement); the restarted process keeps at least the
    operator's own, so that no usage measurement falls into the verification pass measured after the restart,
    or --restarted-usage-interval (a pass over thousands of tenants takes longer than the operator's own)."""
    interval = args.usage_interval or OPERATOR_USAGE_INTERVAL
    if restarted:
        return args.restarted_usage_interval or max(interval, OPERATOR_USAGE_INTERVAL)
    return interval


def operator_args(args: argparse.Namespace, restarted: bool) -> list[str]:
    """`tenantstore run` options of the first or the restarted operator process (--operator-arg last: it wins)."""
    verify_interval = args.verify_interval if restarted else NO_VERIFICATION_INTERVAL
    own = ["--verify-interval", f"{verify_interval:g}"]
    if args.usage_interval or (restarted and args.restarted_usage_interval):
        own += ["--usage-interval", f"{usage_interval(args, restarted):g}"]
    return own + list(args.operator_arg or [])


async def start_operator(env: kit.BenchEnvironment, log_name: str, args: argparse.Namespace, restarted: bool
                         ) -> tuple[OperatorProcess, float]:
    """Start an operator process; returns it and the monotonic time just before it was spawned."""
    operator = env.local.operator(log_name=log_name, extra_args=operator_args(args, restarted))
    saved = {key: os.environ.get(key) for key in (EXPERIMENT_ENV, "PYTHONPATH")}
    if args.experiment:  # the what-if knobs of bench/experiments/sitecustomize.py, for this process only
        os.environ[EXPERIMENT_ENV] = args.experiment
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "bench" / "experiments"),
                                                                 saved["PYTHONPATH"]]))
    started = time.monotonic()
    try:
        await asyncio.to_thread(operator.start, 120)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert operator.process is not None
    return operator, started


class Profiler:
    """py-spy record against a pid for one phase (bench --profile); raw collapsed stacks plus a flame graph."""

    def __init__(self, pid: int, out: Path, rate: int):
        self.out = out
        self.process: subprocess.Popen[bytes] | None = None
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(binary).exists():
            log("--profile: py-spy is not installed (pip install py-spy); not profiling")
            return
        self.process = subprocess.Popen([binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                         "--output", str(out), "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> Path | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None
        return self.out if self.out.exists() else None


@contextlib.asynccontextmanager
async def started_run(env: kit.BenchEnvironment, kind: str, n: int, args: argparse.Namespace, tag: str
                      ) -> AsyncIterator[tuple[Run, DriverProcess]]:
    """A run's namespace, its watch and its driver process, removed again afterwards."""
    run = Run(env, kind, n, args, tag)
    env.namespace(run.namespace)
    await run.watcher.start()
    driver = await DriverProcess(env, run.namespace, args, env.workdir / f"driver-{run.namespace}.log").start()
    try:
        yield run, driver
    finally:
        await driver.stop()
        await run.watcher.stop()
        env.delete_namespace(run.namespace)


async def operator_run(env: kit.BenchEnvironment, n: int, args: argparse.Namespace, tag: str,
                       result: dict[str, Any]) -> None:
    async with started_run(env, "operator", n, args, tag) as (run, driver):
        await measure_operator(env, run, driver, n, args, result)


async def measure_operator(env: kit.BenchEnvironment, run: Run, driver: DriverProcess, n: int,
                           args: argparse.Namespace, result: dict[str, Any]) -> None:
    user = kit.ProcessSampler(driver.pid).start()
    log_name = f"operator-{run.namespace}.log"
    operator, _ = await start_operator(env, log_name, args, restarted=False)
    assert operator.process is not None
    sampler = kit.ProcessSampler(operator.process.pid).start()
    follower = kit.LogFollower(operator.log_path, operator.log_offset, run.namespace).start()
    result.update({"namespace": run.namespace, "operator_args": operator_args(args, restarted=False),
                   "restarted_operator_args": operator_args(args, restarted=True),
                   "experiment": args.experiment or None,
                   "operator_log": str(operator.log_path)})
    try:
        # Idle before the clock starts: the StoreClass checked, the first (empty) usage measurement done.
        await follower.quiet(args.quiet, time.monotonic() + 60)
        profiler = Profiler(operator.process.pid, args.out / f"profile-provision-{n}.txt", args.profile_rate) \
            if args.profile else None
        log(f"operator run N={n}: provisioning")
        result["provision"] = await run.provision(driver, sampler, follower)
        rss_after_provision = round(sampler.rss() / 2**20, 1)
        if profiler and (path := profiler.stop()):
            result["provision"]["profile"] = str(path)
        log(f"operator run N={n}: all Ready in {result['provision']['all_ready_seconds']}s; restarting")

        # Restart with N converged tenants: provisioned, and measured once by the usage job (otherwise the
        # restart's own first measurement would write every tenant's first usage figures).
        waited = time.monotonic()
        measure_deadline = waited + usage_interval(args, restarted=False) * 1.5 + 30
        try:
            await run.watcher.wait(lambda: all(name in run.watcher.measured for name in run.names),
                                   measure_deadline, "every tenant's first usage measurement")
        except TimeoutError:
            log(f"operator run N={n}: only {len(run.watcher.measured)}/{n} tenants measured; restarting anyway")
        await follower.quiet(args.quiet, time.monotonic() + 60)
        result["converged"] = {"measured": len(run.watcher.measured), "waited_seconds":
                               round(time.monotonic() - waited, 2), "rss_mb": round(sampler.rss() / 2**20, 1)}
        peak_first = sampler.peak()
        cpu_first = sampler.cpu()
        await follower.stop()
        usage_passes_first = follower.usage_passes
        await asyncio.to_thread(operator.stop)
        sampler.stop()
        before_restart = await run.begin_phase(None)
        offset = operator.log_path.stat().st_size
        follower = kit.LogFollower(operator.log_path, offset, run.namespace).start()
        operator, started = await start_operator(env, log_name, args, restarted=True)
        assert operator.process is not None
        sampler = kit.ProcessSampler(operator.process.pid).start()
        restart_profiler = Profiler(operator.process.pid, args.out / f"profile-restart-{n}.txt", args.profile_rate) \
            if args.profile else None
        deadline = run.deadline()
        while follower.resumed < n and time.monotonic() < deadline and operator.process.poll() is None:
            await asyncio.sleep(0.05)
        resumed_all = follower.resumed >= n
        quiet = await follower.quiet(args.quiet, deadline)
        idle = follower.last_line_at - started if resumed_all and quiet else None
        cpu_at_idle, idle_read_at = sampler.cpu(), time.monotonic() - started  # read once quiet after idle
        lines_at_idle = follower.lines
        restart_profile = restart_profiler.stop() if restart_profiler else None
        # A restart also measures every tenant's usage once (the per-class timer: 1 s after start plus a
        # random jitter of up to a tenth of the interval). Its work is counted too, and timed apart.
        # At 10,000 tenants a pass outlasts a minute: it is waited for as long as the first process's longest.
        longest_pass = max((usage_pass["seconds"] for usage_pass in usage_passes_first), default=0.0)
        measure_deadline = min(deadline,
                               started + 1 + usage_interval(args, restarted=True) / 10 + 30 + longest_pass * 1.5)
        while not follower.measured and time.monotonic() < measure_deadline:
            await asyncio.sleep(0.05)
        measured_at = follower.last_line_at - started if follower.measured else None
        first_usage_pass = first_usage_pass_figures(follower, idle_read_at if idle is not None else None,
                                                    measured_at, sampler.cpu() - cpu_at_idle)
        await follower.quiet(args.quiet, deadline)
        # Anything the restart still does shortly after (counted below, reported as late log lines).
        lines_at_measured = follower.lines
        await asyncio.sleep(args.after_idle)
        late_lines = follower.lines - lines_at_measured
        api_after = await asyncio.to_thread(run.metrics.scrape)
        sql = await asyncio.to_thread(run.pg.read)
        restart_closed = time.monotonic()
        api = kit.api_delta(before_restart.api, api_after, run.own_requests(before_restart.watcher, []))
        result["restart"] = {
            "idle_seconds": None if idle is None else round(idle, 3), "resumed": follower.resumed,
            "first_usage_measurement_done_seconds": None if measured_at is None else round(measured_at, 3),
            "first_usage_pass": first_usage_pass,
            "log_lines": lines_at_idle, "late_log_lines": late_lines, "observed_seconds":
                round(time.monotonic() - started, 3),
            "ddl_statements": sql["ddl"], "sql_statements": sql["statements"], "sql": sql,
            "api_writes": api["writes"], "api_requests": api["requests"], "api": api,
            # Writes to tenants' own objects (the target: none for tenants that need nothing); the rest, if
            # any, is the StoreClass's status and Events.
            "tenant_api_writes": sum(count for key, count in api["by_resource_verb"].items()
                                     if key.split(" ")[0].split("/")[0] in ("tenantstores", "secrets")
                                     and key.rsplit(" ", 1)[1] in kit.WRITE_VERBS),
            "cpu_seconds": round(sampler.cpu(), 3),
            "profile": str(restart_profile) if restart_profile else None,
            "rss_mb_when_idle": round(sampler.rss() / 2**20, 1),
            "peak_rss_mb": round(sampler.peak() / 2**20, 1),
            "machine_cpu_seconds": {"operator": round(sampler.cpu(), 2),
                                    **kit.SystemCpu.delta(before_restart.system, run.system.snapshot())},
        }
        log(f"operator run N={n}: restart idle after {result['restart']['idle_seconds']}s, "
            f"{sql['ddl']} DDL, {api['writes']} API writes, {sql['statements']} SQL statements; first usage pass "
            f"{json.dumps(first_usage_pass)}; waiting for a verification pass")

        try:
            result["verify"] = await measure_verification(run, sampler, follower, args, started)
        except TimeoutError as error:  # reported; the tenants are still deleted
            log(f"operator run N={n}: {error}")
            result["verify"] = {"error": f"{type(error).__name__}: {error}"}
        # A pass that began before the restart's counters were read is in the restart's figures too.
        overlapping = [found for found in follower.verify_passes if found.started < restart_closed]
        result["restart"]["verify_passes_overlapping"] = len(overlapping)
        if overlapping:
            log(f"operator run N={n}: {len(overlapping)} verification pass(es) began before the restart's "
                f"figures were read; they include its work (a longer --verify-interval avoids that)")
        verified = result["verify"]
        if "error" not in verified:
            log(f"operator run N={n}: verification pass over {verified['tenants']} tenants in "
                f"{verified['seconds']}s, {verified['sql_statements']} SQL statements, {verified['api_writes']} "
                f"API writes, {verified['logins']} logins; deleting")

        # Each usage pass as the operator timed it (duration, tenants measured), while provisioning and after
        # the restart (the restart's figures hold its first one's SQL and CPU).
        result["usage_passes"] = {"first_process": usage_passes_first, "restarted": list(follower.usage_passes)}
        result["delete"] = await run.delete(driver, sampler, follower)
        log(f"operator run N={n}: all gone in {result['delete']['all_gone_seconds']}s, residue "
            f"{result['delete']['residue_total']}")
        peak = max(peak_first, sampler.peak())
        result["process"] = {
            "cpu_seconds": round(result["provision"]["cpu_seconds"] + result["restart"]["cpu_seconds"] +
                                 result["delete"]["cpu_seconds"], 3),
            "peak_rss_mb": round(peak / 2**20, 1), "rss_mb_after_provision": rss_after_provision,
            "first_process_cpu_seconds_incl_startup": round(cpu_first, 3),
            "log_errors": follower.errors,
        }
        result["user_driver"] = {"cpu_seconds": round(user.cpu(), 3), "peak_rss_mb": round(user.peak() / 2**20, 1)}
    finally:
        await follower.stop()
        await asyncio.to_thread(operator.stop)
        sampler.stop()
        user.stop()


@dataclasses.dataclass(frozen=True)
class OtherTimer:
    """A per-StoreClass timer of the operator besides the verification pass. Kopf starts its next run an
    interval after the last one ended (the first, the initial delay after start)."""

    name: str
    initial_delay: float
    interval: float
    longest_run: float  # from its start to its end, at most: its jitter and its work

    def next_start(self, follower: kit.LogFollower, process_started: float) -> float:
        last = follower.timer_ended.get(self.name)
        return process_started + self.initial_delay if last is None else last + self.interval


def other_timers(args: argparse.Namespace) -> list[OtherTimer]:
    usage = usage_interval(args, restarted=True)
    return [OtherTimer("measure_tenants", 1.0, usage, usage / 10 + 5),
            OtherTimer("check_storeclass", STORECLASS_CHECK_INTERVAL, STORECLASS_CHECK_INTERVAL, 3.0)]


def first_usage_pass_figures(follower: kit.LogFollower, idle_read_at: float | None, done: float | None,
                             cpu_since_idle: float) -> dict[str, Any] | None:
    """The restarted process's first usage pass, and its operator CPU when it began after the restart was idle and the
    CPU read (the pass's jitter allows it): then the CPU since that reading is the pass's, with the few timer runs
    beside it."""
    if done is None or not follower.usage_passes:
        return None
    usage_pass = follower.usage_passes[-1]
    began_after_idle = idle_read_at is not None and done - usage_pass["seconds"] >= idle_read_at
    return {**usage_pass, "began_after_idle": began_after_idle,
            "operator_cpu_seconds": round(cpu_since_idle, 3) if began_after_idle else None}


async def measure_verification(run: Run, sampler: kit.ProcessSampler, follower: kit.LogFollower,
                               args: argparse.Namespace, process_started: float) -> dict[str, Any]:
    """One verification pass over the converged tenants, alone: nothing else of the operator runs meanwhile.

    Passes cannot be triggered, so the benchmark waits for one. The pass after the process's first is the
    earliest measured (the first also writes the StoreClass's IsolationBroken condition, which the first
    process, verifying nothing, never set). A pass begins an interval (plus a jitter of up to a tenth) after
    the one before ended, and so do the usage job and the StoreClass check after their own last runs: a pass
    whose bracket one of them could fall into is let pass. Otherwise the counters are read just before the
    pass can begin and again once it has ended and the operator has settled. The bracket is kept if the pass
    began after the first reading, neither timer ended in it or could have begun before its end, and no other
    log line of the operator came until it was quiet after the second reading. After --verify-passes passes
    without one, the last bracket is reported with `clean` false.
    """
    interval = args.verify_interval
    timers = other_timers(args)
    passes = args.verify_passes
    deadline = time.monotonic() + passes * (interval * 1.1 + 60) + run.deadline_seconds
    passed_by: list[dict[str, Any]] = []
    previous = await follower.verify_pass(max(1, len(follower.verify_passes)), deadline)
    while True:
        last_chance = len(passed_by) >= passes - 1
        ended = follower.timer_ended[kit.LogFollower.VERIFY_TIMER]
        opens = ended + interval - BRACKET_LEAD_SECONDS
        # The latest the bracket should close: the interval and its jitter, the pass (a bit longer than the
        # last one), settling (quiet, then 1.5 s without a write) and the readings.
        closes = ended + interval * 1.1 + previous.seconds * 1.3 + args.quiet + 3
        clash = [timer.name for timer in timers
                 if opens - timer.longest_run < timer.next_start(follower, process_started) < closes]
        if not clash:
            await asyncio.sleep(max(0.0, opens - time.monotonic()))
            # A timer that was due before the bracket and has not ended yet is still running.
            clash = [timer.name for timer in timers if timer.next_start(follower, process_started) < closes]
        if clash and not last_chance:
            passed_by.append({"problems": [f"{' and '.join(clash)} could run in its bracket"]})
            previous = await follower.verify_pass(len(follower.verify_passes) + 1, deadline)
            continue
        await asyncio.sleep(max(0.0, opens - time.monotonic()))
        found, problems = await bracket_verify_pass(run, sampler, follower, args, timers, process_started, deadline)
        if not problems or last_chance:
            if problems:
                log(f"verify: no pass ran alone in {passes} ({'; '.join(problems)}); reporting the last")
            return {**found, "clean": not problems, "passed_by": passed_by}
        passed_by.append({"problems": problems, **{key: value for key, value in found.items()
                                                   if key not in ("sql", "api", "connections_by_application")}})
        previous = follower.verify_passes[-1]


async def bracket_verify_pass(run: Run, sampler: kit.ProcessSampler, follower: kit.LogFollower,
                              args: argparse.Namespace, timers: list[OtherTimer], process_started: float,
                              deadline: float) -> tuple[dict[str, Any], list[str]]:
    """The next pass's figures between two readings of the counters, and what else the bracket may have held."""
    connections = run.env.connections()
    opened = time.monotonic()
    start = await run.begin_phase(sampler)
    log_mark = connections.mark()
    passes_before, other_before = len(follower.verify_passes), follower.other_lines
    verified = await follower.verify_pass(passes_before + 1, deadline)
    settled = await run.settle(follower, deadline)
    cpu = sampler.cpu() - start.cpu
    system = kit.SystemCpu.delta(start.system, run.system.snapshot())
    elapsed = time.monotonic() - start.started
    api_after = await asyncio.to_thread(run.metrics.scrape)
    sql = await asyncio.to_thread(run.pg.read)
    logins = await asyncio.to_thread(connections.since, log_mark)
    closed = time.monotonic()
    api = kit.api_delta(start.api, api_after, run.own_requests(start.watcher, []))
    problems = []
    if verified.started < start.started:
        problems.append("the pass began before the counters were read")
    if len(follower.verify_passes) != passes_before + 1:
        problems.append("another pass ended in the bracket")
    for timer in timers:
        if opened <= follower.timer_ended.get(timer.name, 0.0) <= closed:
            problems.append(f"{timer.name} ended in the bracket")
        elif timer.next_start(follower, process_started) < closed:
            problems.append(f"{timer.name} may have begun in the bracket")
    # Other work that began in the bracket shows up once the operator is quiet again.
    await follower.quiet(args.quiet, deadline)
    if follower.other_lines != other_before:
        problems.append(f"{follower.other_lines - other_before} log lines of other work")

    def per_tenant(count: int | None) -> float | None:
        return None if count is None or not verified.tenants else round(count / verified.tenants, 3)
    found = {
        "seconds": verified.seconds, "tenants": verified.tenants, "adrift": verified.adrift,
        "outcome": verified.outcome,
        "sql_statements": sql["statements"], "sql_statements_per_tenant": per_tenant(sql["statements"]),
        "ddl_statements": sql["ddl"], "api_requests": api["requests"], "api_writes": api["writes"],
        "logins": logins["verify_logins"], "logins_per_tenant": per_tenant(logins["verify_logins"]),
        "postgres_connections": logins["connections"], "connections_by_application": logins["by_application"],
        "cpu_seconds": round(cpu, 3), "machine_cpu_seconds": {"operator": round(cpu, 2), **system},
        "bracket_seconds": round(elapsed, 3), "settled": settled,
        "pass_began_after_bracket_seconds": round(verified.started - start.started, 3),
        "sql": sql, "api": api,
    }
    return found, problems


async def floor_run(env: kit.BenchEnvironment, n: int, args: argparse.Namespace, tag: str,
                    result: dict[str, Any]) -> None:
    async with started_run(env, "floor", n, args, tag) as (run, driver):
        await measure_floor(run, driver, n, args, result)


async def measure_floor(run: Run, driver: DriverProcess, n: int, args: argparse.Namespace,
                        result: dict[str, Any]) -> None:
    sampler = kit.ProcessSampler(driver.pid).start()
    result.update({"namespace": run.namespace, "concurrency": args.concurrency,
                   "pool_size": args.floor_pool_size or "the operator's"})
    try:
        cpu_idle = sampler.cpu()  # imports and connecting: not part of the work
        log(f"floor run N={n}: provisioning")
        result["provision"] = await run.provision(driver, sampler, None)
        log(f"floor run N={n}: all Ready in {result['provision']['all_ready_seconds']}s; deleting")
        # Without an operator there is nothing to restart: 0 is the floor.
        result["restart"] = {"idle_seconds": 0.0, "ddl_statements": 0, "api_writes": 0, "tenant_api_writes": 0,
                             "api_requests": 0, "sql_statements": 0, "cpu_seconds": 0.0}
        # Nor is there a verification pass.
        result["verify"] = {"seconds": 0.0, "tenants": 0, "adrift": 0, "sql_statements": 0,
                            "sql_statements_per_tenant": 0.0, "api_requests": 0, "api_writes": 0, "logins": 0,
                            "logins_per_tenant": 0.0, "cpu_seconds": 0.0}
        result["delete"] = await run.delete(driver, sampler, None)
        log(f"floor run N={n}: all gone in {result['delete']['all_gone_seconds']}s, residue "
            f"{result['delete']['residue_total']}")
        result["process"] = {"cpu_seconds": round(result["provision"]["cpu_seconds"] +
                                                  result["delete"]["cpu_seconds"], 3),
                             "peak_rss_mb": round(sampler.peak() / 2**20, 1),
                             "startup_cpu_seconds": round(cpu_idle, 3)}
    finally:
        sampler.stop()


# --------------------------------------------------------------------------- figures, ratios, targets

def lookup(run: Mapping[str, Any], key: str) -> Any:
    value: Any = run
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def figures(operator: Mapping[str, Any], floor: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    table = []
    for key, unit, meaning in FIGURES:
        mine = lookup(operator, key)
        theirs = lookup(floor, key) if floor else None
        ratio: float | str | None
        if floor is None or mine is None or theirs is None:
            ratio = None
        elif theirs == 0:
            ratio = "n/a" if mine else "n/a (both 0)"
        else:
            ratio = round(mine / theirs, 3)
        table.append({"figure": key, "unit": unit, "meaning": meaning, "operator": mine, "floor": theirs,
                      "ratio": ratio})
    return table


def targets(n: int, operator: Mapping[str, Any], table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The benchmark's targets, judged where this N is the N they name."""
    by_key = {row["figure"]: row for row in table}
    found = []

    def target(name: str, applies: bool, value: Any, met: bool | None) -> None:
        applies = applies and value is not None
        found.append({"target": name, "evaluated": applies, "value": value if applies else None,
                      "met": met if applies else None})
    ready = lookup(operator, "provision.all_ready_seconds")
    ratio = by_key["provision.all_ready_seconds"]["ratio"]
    target("1,000 TenantStores Ready within 30 s (2 cores)", n == 1000, ready, ready is not None and ready <= 30)
    target("1,000 TenantStores Ready within 1.5x of the floor", n == 1000, ratio,
           isinstance(ratio, float) and ratio <= 1.5)
    p99 = lookup(operator, "provision.time_to_ready.p99")
    target("p99 time-to-Ready <= 2 s at N = 200", n == 200, p99, p99 is not None and p99 <= 2)
    idle, ddl = lookup(operator, "restart.idle_seconds"), lookup(operator, "restart.ddl_statements")
    target("restart with 1,000 converged tenants idle within 15 s", n == 1000, idle, idle is not None and idle <= 15)
    target("restart with 1,000 converged tenants: zero DDL", n == 1000, ddl, ddl == 0)
    rss = lookup(operator, "process.peak_rss_mb")
    target("operator peak RSS <= 250 MB at N = 5,000", n == 5000, rss, rss is not None and rss <= 250)
    return found


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty_files": len([line for line in git("status", "--porcelain").splitlines() if line])}


def machine() -> dict[str, Any]:
    import psutil  # noqa: PLC0415

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def planned_runs(n: int, asked: str, floor_up_to: int) -> tuple[list[str], str | None]:
    """The runs for N (--runs, less the floor above --floor-up-to), and why the floor is not among them."""
    runs = [kind.strip() for kind in asked.split(",") if kind.strip()]
    if "floor" not in runs:
        return runs, f"not asked for (--runs {asked})"
    if n > floor_up_to:
        return [kind for kind in runs if kind != "floor"], (
            f"N = {n} is above --floor-up-to {floor_up_to}: the floor would take too long")
    return runs, None


async def one_n(env: kit.BenchEnvironment, n: int, args: argparse.Namespace) -> dict[str, Any]:
    tag = secrets.token_hex(2)
    result: dict[str, Any] = {"benchmark": "provisioning", "n": n,
                              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine(), "git": git_state(),
                              "mix": {"free": 0.80, "pro": 0.15, "enterprise": 0.05},
                              "tiers": {tier: kit.tier_mix(n).count(tier) for tier in ("free", "pro", "enterprise")},
                              "vector": {"backend": "pgvector", "dimension": kit.DIMENSION, "metric": kit.METRIC}}
    runs, result["floor_not_run"] = planned_runs(n, args.runs, args.floor_up_to)
    result["runs"] = runs
    for kind in runs:
        await asyncio.to_thread(env.between_runs)
        result[kind] = {}
        try:
            await (operator_run if kind == "operator" else floor_run)(env, n, args, tag, result[kind])
        except Exception as error:  # noqa: BLE001 (a failed run is reported, and the other still runs)
            log(f"{kind} run N={n} failed: {error}")
            result[kind]["error"] = f"{type(error).__name__}: {error}"
    result["figures"] = figures(result.get("operator", {}), result.get("floor"))
    result["targets"] = targets(n, result.get("operator", {}), result["figures"])
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return result


def print_table(result: Mapping[str, Any]) -> None:
    print(f"\nN = {result['n']}  ({result['tiers']})")
    print(f"{'figure':40} {'operator':>12} {'floor':>12} {'ratio':>10}")
    for row in result["figures"]:
        def show(value: Any) -> str:
            return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{row['figure']:40} {show(row['operator']):>12} {show(row['floor']):>12} {show(row['ratio']):>10}")
    for target in result["targets"]:
        if target["evaluated"]:
            print(f"target: {target['target']}: {target['value']} -> {'met' if target['met'] else 'NOT met'}")


async def main_async(args: argparse.Namespace) -> list[Path]:
    sizes = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.n]
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tenantstore-bench-", dir=args.workdir))
    env = kit.BenchEnvironment(workdir)
    written: list[Path] = []
    log(f"starting a local environment in {workdir}")
    try:
        await asyncio.to_thread(env.start)
        for n in sizes:
            result = await one_n(env, n, args)
            path = args.out / f"provisioning-{n}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            written.append(path)
            print_table(result)
            log(f"wrote {path}")
    finally:
        await asyncio.to_thread(env.stop)
        if args.keep:
            log(f"kept {workdir} (operator logs, driver logs, cluster and Postgres logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.sweep:
        summary = args.out / "sweep.json"
        summary.write_text(json.dumps({"sizes": sizes, "results": [str(p.name) for p in written]}, indent=2) + "\n")
    if not args.no_plot:
        from bench.plot import plot  # noqa: PLC0415 (matplotlib is only needed for the picture)

        picture = plot(args.out)
        if picture:
            log(f"wrote {picture}")
            written.append(picture)
    return written


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.provisioning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="tenants (default: %(default)s)")
    parser.add_argument("--sweep", default="", help="comma-separated Ns, e.g. 100,300,1000 (overrides --n)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where JSON and PNG go (default: bench/results)")
    parser.add_argument("--workdir", default=None, help="parent of the environment's temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the environment's directory (logs) afterwards")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="requests in flight for the user's creates/deletes and the floor's work")
    parser.add_argument("--floor-pool-size", type=int, default=0,
                        help="the floor's Postgres pool (default: the operator's own PostgresServer pool)")
    parser.add_argument("--runs", default="operator,floor",
                        help="which runs, in order (default: %(default)s; 'operator' alone: no ratios)")
    parser.add_argument("--floor-up-to", type=int, default=1000,
                        help="the floor runs for N up to this only; above it the JSON's floor_not_run says so "
                             "(default: %(default)s)")
    parser.add_argument("--quiet", type=float, default=2.0,
                        help="seconds without an operator log line that count as idle (default: %(default)s)")
    parser.add_argument("--after-idle", type=float, default=3.0,
                        help="seconds the restart is still watched after idle, for late work (default: %(default)s)")
    parser.add_argument("--phase-timeout", type=float, default=0,
                        help="deadline of each phase in seconds (default: 120 + N)")
    parser.add_argument("--usage-interval", type=float, default=0,
                        help="pass --usage-interval to the first operator process (default: the operator's own, "
                             "60 s); the restarted one keeps at least 60 s")
    parser.add_argument("--restarted-usage-interval", type=float, default=0,
                        help="the restarted operator's --usage-interval (default: the longer of --usage-interval "
                             "and the operator's own)")
    parser.add_argument("--verify-interval", type=float, default=40,
                        help="the restarted operator's --verify-interval (default: %(default)s): its first pass "
                             "(at half the interval) must begin after the restart phase; a later one that runs "
                             "alone is measured. The first process verifies nothing")
    parser.add_argument("--verify-passes", type=int, default=VERIFY_PASSES,
                        help="passes the verify phase waits through at most for one that runs alone, then reports "
                             "the last with `clean` false (default: %(default)s)")
    parser.add_argument("--operator-arg", action="append", help="extra argument for `tenantstore run` (repeatable)")
    parser.add_argument("--experiment", default="",
                        help="what-if knobs for the operator process, e.g. worker_limit=32,pool_size=8 "
                             "(see bench/experiments/sitecustomize.py); recorded in the JSON")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy record the operator while provisioning and while restarting "
                             "(OUT/profile-provision-N.txt, OUT/profile-restart-N.txt)")
    parser.add_argument("--profile-rate", type=int, default=50)
    parser.add_argument("--no-plot", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A benchmark stopped with SIGTERM stops what it started (control plane, Postgres, operator), as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
