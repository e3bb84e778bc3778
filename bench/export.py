"""The export benchmark: one TenantStoreExport of an N-vector tenant, on the real control plane and Postgres.

`make bench-export N=100000` starts the local environment (control plane, embedded PostgreSQL 18, the operator
as its own process), makes a pro tenant with N 384-dimensional vectors and a table of N rows written with the
tenant's own credentials, exports it to the export volume and reports: the time from `kubectl apply` to a
verified Completed, MB/s over the files written, and the operator's resident memory (sampled every 100 ms)
before and during the export. Results go to bench/results/export-<N>.json.
"""
from __future__ import annotations

import argparse
import base64
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from tenantstore_dev.environment import ADMIN_SECRET, OPERATOR_NAMESPACE, LocalEnvironment, wait_for

RESULTS = Path(__file__).parent / "results"
DIMENSION = 384


class RssSampler(threading.Thread):
    """The peak resident memory of a process, sampled until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return


def tenant_secret(env: LocalEnvironment, namespace: str, name: str) -> dict[str, str]:
    assert env.kubectl is not None
    data = env.kubectl.get("secret", name, namespace)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def fill(secret: dict[str, str], count: int) -> None:
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {secret['schema']}.events (id bigint PRIMARY KEY, kind text, body jsonb)")
        conn.execute(f"INSERT INTO {secret['schema']}.events SELECT g, 'kind-' || (g %% 7), "
                     f"jsonb_build_object('n', g, 'text', md5(g::text)) FROM generate_series(1, %s::int) g", (count,))
        for start in range(0, count, 10_000):  # random unit-ish vectors, in batches the server builds itself
            conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding, metadata) "
                         f"SELECT %s, 'doc-' || lpad(g::text, 7, '0'), "
                         f"(SELECT array_agg(random()::real) FROM generate_series(1, {DIMENSION}) WHERE g > 0)"
                         f"::vector, jsonb_build_object('n', g) FROM generate_series(%s::int, %s::int) g",
                         (secret["vectorNamespace"], start + 1, min(start + 10_000, count)))


def run(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tenantstore-bench-export-") as workdir:
        env = LocalEnvironment(Path(workdir))
        env.start()
        operator = env.operator(extra_args=["--verify-interval", "600", "--usage-interval", "600"])
        try:
            operator.start()
            kubectl = env.kubectl
            assert kubectl is not None and operator.process is not None
            kubectl.apply({"apiVersion": "tenancy.dev/v1alpha1", "kind": "StoreClass",
                           "metadata": {"name": "standard",
                                        "annotations": {"storeclass.tenancy.dev/is-default-class": "true"}},
                           "spec": {"postgres": {"adminSecretRef": {"name": ADMIN_SECRET,
                                                                    "namespace": OPERATOR_NAMESPACE, "key": "uri"},
                                                 "database": "tenants"},
                                    "vector": {"backend": "pgvector"}}})
            kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
            kubectl.apply({"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStore",
                           "metadata": {"name": "big", "namespace": "bench"},
                           "spec": {"tenantId": "big", "tier": "pro",
                                    "vector": {"dimension": DIMENSION, "metric": "cosine"}}})
            kubectl("wait", "--for=condition=Ready", "tenantstore/big", "-n", "bench", "--timeout=180s")
            started = time.monotonic()
            fill(tenant_secret(env, "bench", "big-store"), count)
            filled = time.monotonic() - started

            idle_rss = psutil.Process(operator.process.pid).memory_info().rss
            sampler = RssSampler(operator.process.pid)
            sampler.start()
            cpu_before = psutil.Process(operator.process.pid).cpu_times()
            started = time.monotonic()
            kubectl.apply({"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStoreExport",
                           "metadata": {"name": "big-export", "namespace": "bench"},
                           "spec": {"tenantStoreName": "big", "destination": {"volume": {"path": "big"}}}})
            status = wait_for("the export to complete", lambda: (
                (kubectl.get("tenantstoreexport", "big-export", "bench") or {}).get("status") or {}
            ) if ((kubectl.get("tenantstoreexport", "big-export", "bench") or {}).get("status") or {}).get(
                "phase") == "Completed" else None, timeout=3600, interval=0.2)
            seconds = time.monotonic() - started
            sampler.done.set()
            sampler.join()
            cpu_after = psutil.Process(operator.process.pid).cpu_times()
        finally:
            operator.stop()
            env.stop()
    size = status["sizeBytes"]
    return {
        "vectors": status["vectors"], "dimension": DIMENSION, "rows": status["rows"], "size_bytes": size,
        "seconds": round(seconds, 2), "mb_per_s": round(size / 1e6 / seconds, 1),
        "operator_cpu_seconds": round((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system), 2),
        "operator_rss_idle_mb": round(idle_rss / 2**20, 1), "operator_rss_peak_mb": round(sampler.peak / 2**20, 1),
        "fill_seconds": round(filled, 1),
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors (and table rows) of the tenant")
    args = parser.parse_args(argv)
    result = run(args.n)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"export-{args.n}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"export: {result['vectors']} vectors, {result['rows']} rows, {result['size_bytes'] / 1e6:.1f} MB in "
          f"{result['seconds']} s ({result['mb_per_s']} MB/s); operator RSS {result['operator_rss_idle_mb']} MB idle, "
          f"{result['operator_rss_peak_mb']} MB peak; {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
