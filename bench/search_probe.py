"""The search-latency probe's overhead at N tenants (`make bench-probe`, N = 1,000 by default).

On an embedded Postgres of its own: N tenants provisioned with the operator's own backends (a schema and a
partition of a shared vector table each; every 20th an enterprise tenant with its own database and table), each
loaded with VECTORS vectors through the client library with the tenant's own credentials (the load a tenant's
application puts there). Then one probe pass over every tenant with no pause between probes (what a probe costs,
alone) and the tenants' own query through the library (what the tenant sees, for comparison). The overhead at a
class's rate is rate × cost per probe. Prints one `search-probe:` line; writes bench/results/search-probe-N.json.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import random
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import tenantstore_client as ts

from bench import floor, kit
from tenantstore import slo
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import (DesiredStore, Metric, Quotas, RelationalIsolation, SearchSlo, StoreClass,
                                TenantStoreSpec, VectorIsolation)
from tenantstore.reconcile import secret_data
from tenantstore_dev.postgres import EmbeddedPostgres

DIMENSION = 384
PASSWORD = "bench-tenant-pw"
RESULTS = Path(__file__).resolve().parent / "results"
RATES = (1, 2, 10)  # probes per second a class might be given, for the overhead table


def log(message: str) -> None:
    print(f"[bench search-probe {time.strftime('%H:%M:%S')}] {message}", flush=True)


def desired(index: int) -> DesiredStore:
    dedicated = index % 20 == 19
    return DesiredStore(
        tenant_id=f"probe-{index:05d}", uid=f"00000000-0000-4000-8000-{index:012d}",
        tenant_store=f"bench/probe-{index:05d}", dimension=DIMENSION, metric=Metric.COSINE,
        relational=RelationalIsolation.DATABASE if dedicated else RelationalIsolation.SCHEMA,
        vector=VectorIsolation.DEDICATED if dedicated else VectorIsolation.NAMESPACE,
        quotas=Quotas(0, 0, 5, 0), suspended=False, shared_database="tenants", shared_index_capacity=10_000)


def vectors(rng: random.Random, count: int) -> list[ts.Vector]:
    return [ts.Vector(f"doc-{i:05d}", [rng.random() for _ in range(DIMENSION)], {"n": i}) for i in range(count)]


async def provision(server: PostgresServer, stores: list[DesiredStore], concurrency: int) -> list[dict[str, str]]:
    """Each tenant's Secret data, as the operator would write it."""
    gate = asyncio.Semaphore(concurrency)
    relational, vector_store = PostgresRelationalStore(server), PgvectorStore(server)

    retries: collections.Counter[str] = collections.Counter()

    async def one(store: DesiredStore) -> dict[str, str]:
        async with gate:  # the steps are idempotent: retried as the operator retries them
            placement, _ = await floor.retry(lambda: relational.ensure(store, PASSWORD, password_is_new=True), retries)
            vector_placement, _ = await floor.retry(lambda: vector_store.ensure(store), retries)
        spec = TenantStoreSpec.from_body({"metadata": {"name": store.tenant_id}, "spec": {
            "tenantId": store.tenant_id, "vector": {"dimension": DIMENSION, "metric": "cosine"}}})
        return secret_data(spec, placement, vector_placement, PASSWORD)
    return list(await asyncio.gather(*(one(store) for store in stores)))


async def load(secrets_data: list[dict[str, str]], count: int, concurrency: int, seed: int) -> float:
    """Every tenant writes `count` vectors through the client library, as itself; the seconds it took."""
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(index: int, data: dict[str, str]) -> None:
        async with gate:
            async with await ts.connect_async(data, pool_size=1) as store:
                await store.upsert(vectors(random.Random(seed + index), count))
    await asyncio.gather(*(one(i, data) for i, data in enumerate(secrets_data)))
    return time.monotonic() - started


def body(store: DesiredStore, data: dict[str, str], documents: int) -> dict[str, Any]:
    """The TenantStore as the probe pass reads it from the operator's index."""
    vector_store = {"backend": "pgvector", "index": data["vectorIndex"], "namespace": data["vectorNamespace"],
                    "table": data["vectorTable"]}
    return {"metadata": {"uid": store.uid, "name": store.tenant_id, "namespace": "bench"},
            "spec": {"tenantId": store.tenant_id,
                     "tier": "enterprise" if store.vector is VectorIsolation.DEDICATED else "pro",
                     "vector": {"dimension": DIMENSION, "metric": "cosine"}},
            "status": {"phase": "Ready", "usage": {"documents": documents}, "vectorStore": vector_store,
                       "storeClassName": "bench",
                       "relational": {"database": data["database"], "schema": data["schema"], "role": data["user"]},
                       "isolation": {"relational": store.relational.value, "vector": store.vector.value}}}


async def tenants_own_queries(secrets_data: list[dict[str, str]], sample: int, seed: int) -> list[float]:
    """The same query through the library, logged in as the tenant (the first query on a warm connection)."""
    rng = random.Random(seed)
    latencies = []
    for data in rng.sample(secrets_data, min(sample, len(secrets_data))):
        async with await ts.connect_async(data, pool_size=1) as store:
            await store.count()  # the login and first round trip are not the query's
            query = slo.unit_vector(DIMENSION, rng)
            started = time.perf_counter()
            await store.query(query, top_k=5)
            latencies.append(time.perf_counter() - started)
    return latencies


async def run(n: int, count: int, concurrency: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tenantstore-bench-probe-") as workdir:
        postgres = EmbeddedPostgres(Path(workdir))
        postgres.initialise()
        postgres.start()
        try:
            admin_uri = postgres.prepare_for_tenantstore(admin_password=secrets.token_urlsafe(16))
            postmaster = psutil.Process(int((postgres.datadir / "postmaster.pid").read_text().splitlines()[0]))
            server = PostgresServer(admin_uri, "tenants")
            stores = [desired(i) for i in range(n)]
            log(f"provisioning {n} tenants")
            started = time.monotonic()
            secrets_data = await provision(server, stores, concurrency)
            provision_seconds = time.monotonic() - started
            log(f"provisioned in {provision_seconds:.1f} s; loading {count} vectors each through the client library")
            load_seconds = await load(secrets_data, count, concurrency, seed)
            log(f"loaded in {load_seconds:.1f} s; one probe pass over every tenant")

            store_class = StoreClass.from_body({"metadata": {"name": "bench"}, "spec": {
                "postgres": {"adminSecretRef": {"name": "admin", "namespace": "bench"}},
                "tiers": {"pro": {"vector": "namespace"}, "enterprise": {"vector": "dedicated"}}}})
            objective = SearchSlo(p95_seconds=0.05, probes_per_second=1_000_000, top_k=5)
            bodies = [body(store, data, count) for store, data in zip(stores, secrets_data)]
            vector_store = PgvectorStore(server)
            passes = slo.ProbePass()
            passes.rng.seed(seed)
            me = psutil.Process()
            cpu_before, pg_before, wall_before = sum(me.cpu_times()[:2]), kit.postgres_cpu(postmaster), time.monotonic()
            probes = await passes.run(store_class, objective, bodies, vector_store, interval=1.0,
                                      pause=lambda _: asyncio.sleep(0, result=False))
            wall = time.monotonic() - wall_before
            operator_cpu = sum(me.cpu_times()[:2]) - cpu_before
            pg_cpu = kit.postgres_cpu(postmaster) - pg_before
            latencies = [probe.seconds for probe in probes if probe.seconds is not None]
            failed = len(probes) - len(latencies)
            log(f"{len(probes)} probes in {wall:.1f} s ({failed} failed); the tenants' own queries for comparison")
            own = await tenants_own_queries(secrets_data, min(100, n), seed)
            await server.close()
        finally:
            postgres.stop("immediate")
    per_probe = {"operator_cpu_ms": round(operator_cpu / len(probes) * 1000, 3),
                 "postgres_cpu_ms": round(pg_cpu / len(probes) * 1000, 3),
                 "wall_ms": round(wall / len(probes) * 1000, 3)}
    return {
        "n": n, "vectors_per_tenant": count, "dimension": DIMENSION, "seed": seed,
        "provision_seconds": round(provision_seconds, 1), "load_seconds": round(load_seconds, 1),
        "load_vectors_per_second": round(n * count / load_seconds, 1),
        "probes": len(probes), "failed": failed, "per_probe": per_probe,
        "probe_latency_seconds": kit.percentiles(latencies),
        "tenant_query_latency_seconds": kit.percentiles(own),
        "overhead_at_rate": {str(rate): {"operator_cores": round(rate * operator_cpu / len(probes), 5),
                                         "postgres_cores": round(rate * pg_cpu / len(probes), 5),
                                         "seconds_to_cover_every_tenant": math.ceil(n / rate)}
                             for rate in RATES},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="tenants (default 1000)")
    parser.add_argument("--vectors", type=int, default=200, help="vectors each tenant writes (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="provisioning and load in flight (default 8)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes (default bench/results)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.n, args.vectors, args.concurrency, args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"search-probe-{args.n}.json").write_text(json.dumps(result, indent=2) + "\n")
    per, lat = result["per_probe"], result["probe_latency_seconds"]
    print(f"search-probe: n={result['n']} probes={result['probes']} failed={result['failed']} "
          f"operator_cpu_ms={per['operator_cpu_ms']} postgres_cpu_ms={per['postgres_cpu_ms']} "
          f"wall_ms={per['wall_ms']} probe_p50={lat['p50']} probe_p95={lat['p95']} "
          f"tenant_query_p50={result['tenant_query_latency_seconds']['p50']} "
          f"load={result['load_vectors_per_second']} vectors/s", flush=True)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
