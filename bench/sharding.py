"""Provisioning by several active replicas (`tenantstore run --shards S`): does the work split, and what does each
replica cost? One invocation: for each replica count R, R operator processes with --shards S in a namespace of
their own, N TenantStores created at once (32 in flight, by bench/floor.py as the user), until all are Ready,
then deleted until nothing of them is left. Per run: all Ready, time-to-Ready percentiles, each replica's CPU,
peak RSS and the tenants it reconciled, and the CPU of the API server, etcd and Postgres.

    python -m bench.sharding --n 1000 --replicas 0,1,3 --shards 12   (0: one operator without --shards)

Results in bench/results/sharding-N.json.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import kit
from bench.provisioning import DEFAULT_OUT as RESULTS, DriverProcess, log
from tenantstore.sharding import shard_of
from tenantstore_dev.environment import wait_for

LEASE = "bench"
RECONCILED = re.compile(r"shard \d+: reconcile of \S+ ended on (?P<replica>\S+)")


def replica_args(namespace: str, shards: int) -> list[str]:
    # No verification pass during provisioning, as in bench/provisioning.py's first operator process.
    quiet = ["--verify-interval", "86400"]
    if not shards:  # the baseline: one operator, no sharding
        return [*quiet, "--namespace", namespace]
    return ["--shards", str(shards), "--leader-elect-namespace", namespace, "--leader-elect-lease", LEASE,
            "--lease-duration", "15", "--renew-deadline", "10", "--retry-period", "1", *quiet]


def held_leases(env: kit.BenchEnvironment, namespace: str) -> dict[str, str]:
    assert env.local.kubectl is not None
    listed = env.local.kubectl.get("leases", namespace=namespace) or {"items": []}
    return {item["metadata"]["name"]: (item.get("spec") or {}).get("holderIdentity") or ""
            for item in listed["items"] if item["metadata"]["name"].startswith(f"{LEASE}-shard-")}


async def one_run(env: kit.BenchEnvironment, n: int, replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench-shards-{replicas}"
    prefix = f"bs{replicas}"
    env.between_runs()
    env.namespace(namespace)
    shards = args.shards if replicas else 0  # 0 replicas: the baseline, one operator without --shards
    processes = [env.local.operator(log_name=f"sharding-{replicas}-{index}.log",
                                    extra_args=replica_args(namespace, shards)) for index in range(max(replicas, 1))]
    for process in processes:
        process.start()
    if shards:  # every shard held, by every replica (when there are shards enough), before the clock starts
        wait_for("every shard held", lambda: len(found := held_leases(env, namespace)) == shards and all(
            found.values()) and len(set(found.values())) == min(replicas, shards), timeout=120)
    samplers = [kit.ProcessSampler(process.process.pid).start() for process in processes if process.process]
    system = kit.SystemCpu(env)
    watcher = kit.TenantWatcher(env.server, env.ssl_context(), namespace)
    await watcher.start()
    driver = await DriverProcess(env, namespace, args, env.workdir / f"driver-{replicas}.log").start()
    tenants = kit.run_tenants(prefix, n)
    names = [tenant["name"] for tenant in tenants]
    try:
        cpu_before, system_before = [s.cpu() for s in samplers], system.snapshot()
        started = time.monotonic()
        await driver.command("create", tenants, args.phase_timeout)
        await watcher.wait(lambda: watcher.ready_count(names) == n, started + args.phase_timeout,
                           f"all {n} TenantStores Ready")
        all_ready = max(watcher.ready_at[name] for name in names) - started
        times = [watcher.ready_at[name] - watcher.first_seen[name] for name in names]
        provision_cpu = [round(s.cpu() - before, 2) for s, before in zip(samplers, cpu_before)]
        provision_system = kit.SystemCpu.delta(system_before, system.snapshot())
        reconciled = collections.Counter(
            found["replica"] for process in processes
            for found in map(RECONCILED.search, process.log_since_start().splitlines()) if found)

        deleting = time.monotonic()
        await driver.command("delete", tenants, args.phase_timeout)
        await watcher.wait(lambda: all(name in watcher.gone_at for name in names), deleting + args.phase_timeout,
                           f"all {n} TenantStores gone")
        all_gone = max(watcher.gone_at[name] for name in names) - deleting
        residue = kit.residue(env, namespace, prefix, {})
        while sum(residue.values()) and time.monotonic() < deleting + args.phase_timeout:
            await asyncio.sleep(0.5)
            residue = kit.residue(env, namespace, prefix, {})
    finally:
        await driver.stop()
        await watcher.stop()
        for process in processes:
            process.stop()
        for sampler in samplers:
            sampler.stop()
        env.delete_namespace(namespace)
    by_shard = collections.Counter(shard_of(tenant["tenantId"], shards) for tenant in tenants) if shards else {}
    return {
        "replicas": replicas, "shards": shards, "n": n,
        "provision": {"all_ready_seconds": round(all_ready, 3), "time_to_ready": kit.percentiles(times),
                      "replica_cpu_seconds": provision_cpu, "machine_cpu_seconds": provision_system},
        "replica_peak_rss_mb": [round(s.peak() / 2**20, 1) for s in samplers],
        "tenants_reconciled_per_replica": sorted(reconciled.values(), reverse=True),
        "tenants_per_shard": [by_shard[shard] for shard in range(shards)],
        "delete": {"all_gone_seconds": round(all_gone, 3), "residue_total": sum(residue.values())},
    }


async def main_async(args: argparse.Namespace) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="tenantstore-bench-shards-"))
    env = kit.BenchEnvironment(workdir)
    log(f"environment in {workdir}")
    env.start()
    try:
        runs = []
        for replicas in args.replicas:
            log(f"{replicas} replica(s), {args.shards} shards, {args.n} TenantStores")
            runs.append(await one_run(env, args.n, replicas, args))
            log(json.dumps(runs[-1]))
    finally:
        env.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sharding-{args.n}.json"
    out.write_text(json.dumps({"measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs},
                              indent=2))
    print(f"{'replicas':>8} {'all Ready s':>11} {'p99 s':>6} {'CPU per replica s':>24} {'peak RSS MB':>20} "
          f"{'reconciled':>18}")
    for run in runs:
        provision = run["provision"]
        print(f"{run['replicas']:>8} {provision['all_ready_seconds']:>11} {provision['time_to_ready']['p99']:>6} "
              f"{str(provision['replica_cpu_seconds']):>24} {str(run['replica_peak_rss_mb']):>20} "
              f"{str(run['tenants_reconciled_per_replica']):>18}")
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sharding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="TenantStores per run (default %(default)s)")
    parser.add_argument("--replicas", default="0,1,3", help="replica counts, one run each; 0 is the baseline: one "
                                                            "operator without --shards (default %(default)s)")
    parser.add_argument("--shards", type=int, default=12, help="--shards of every replica (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=32, help="the user's requests in flight")
    parser.add_argument("--phase-timeout", type=float, default=900.0, help="seconds per phase at most")
    args = parser.parse_args(argv)
    args.replicas = [int(value) for value in args.replicas.split(",")]
    args.floor_pool_size = None  # the driver's option (bench/floor.py), unused here
    return args


def main(argv: list[str] | None = None) -> int:
    print(f"results: {asyncio.run(main_async(parse(argv)))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
