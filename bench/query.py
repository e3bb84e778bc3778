"""What isolation costs per query (`make bench-query`): a tenant's nearest-neighbour search through its own role
against the same search by a superuser straight on the tenant's partition or table (the floor).

On an embedded Postgres of its own, with the operator's own backends: N tenants in one shared index (a partition of
a LIST-partitioned table each, row-level security holding each to its namespace), D tenants with a database and a
dedicated table of their own, and the class's global index, each loaded with VECTORS random vectors of 384
dimensions (generated in Postgres, so the load is the HNSW inserts and nothing else). Then, for SAMPLES queries per
kind, interleaved so caches favour neither side:

- tenant: the client library's query SQL, run as the tenant's role (RLS on, the role's policy applied);
- floor: the same SQL as the superuser (RLS bypassed), on the same partition or table;
- global: the tenant's search of the global index through its own role, against the superuser's.

each in a fresh session (the first query on a new connection: catalogs, policies and the plan all cold) and a
pooled one (a warm connection per store on each side). Prints one `query:` line per kind and session; writes
bench/results/query-N.json. Figures are query execution only: connecting is not the query's cost. The overhead is
the tenant's percentile minus the floor's (what the target is judged on), and, sample by sample, the paired
difference of the same query on the same store.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from tenantstore_client.pgvector import Statements
from tenantstore_client.secret import Coordinates

from bench import kit
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import (DesiredStore, GlobalIndex, Metric, Quotas, RelationalIsolation, TenantStoreSpec,
                                VectorIsolation)
from tenantstore.reconcile import secret_data
from tenantstore_dev.postgres import EmbeddedPostgres

DIMENSION = 384
PASSWORD = "bench-tenant-pw"
TOP_K = 10
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_OVERHEAD_MS, TARGET_RATIO = 1.0, 1.2  # at p95


def log(message: str) -> None:
    print(f"[bench query {time.strftime('%H:%M:%S')}] {message}", flush=True)


def desired(index: int, dedicated: bool) -> DesiredStore:
    prefix = "qd" if dedicated else "qs"
    return DesiredStore(
        tenant_id=f"{prefix}-{index:05d}", uid=f"00000000-0000-4000-8000-{index:012d}",
        tenant_store=f"bench/{prefix}-{index:05d}", dimension=DIMENSION, metric=Metric.COSINE,
        relational=RelationalIsolation.DATABASE if dedicated else RelationalIsolation.SCHEMA,
        vector=VectorIsolation.DEDICATED if dedicated else VectorIsolation.NAMESPACE,
        quotas=Quotas(0, 0, 10, 0), suspended=False, shared_database="tenants", shared_index_capacity=100_000)


def generated_rows(table: sql.Composable, namespace: str | None, count: int) -> sql.Composable:
    """`count` random unit-cube vectors made by Postgres itself (the correlated `i` makes each row its own)."""
    columns = sql.SQL("namespace, id, embedding") if namespace else sql.SQL("id, embedding")
    values = sql.SQL("{}, ").format(sql.Literal(namespace)) if namespace else sql.SQL("")
    return sql.SQL("INSERT INTO {} ({}) SELECT {}'doc-' || i, ARRAY(SELECT random() FROM generate_series(1, {}) "
                   "WHERE i IS NOT NULL)::vector({}) FROM generate_series(1, {}) AS i").format(
        table, columns, values, sql.Literal(DIMENSION), sql.Literal(DIMENSION), sql.Literal(count))


async def provision(server: PostgresServer, stores: list[DesiredStore], index: GlobalIndex
                    ) -> list[dict[str, str]]:
    relational, vectors = PostgresRelationalStore(server), PgvectorStore(server)
    placement, _, _ = await vectors.ensure_global(index, secrets.token_urlsafe(16), True)
    secrets_data = []
    for store in stores:
        relational_placement, _ = await relational.ensure(store, PASSWORD, password_is_new=True)
        vector_placement, _ = await vectors.ensure(store)
        await vectors.grant_global(store, index)
        spec = TenantStoreSpec.from_body({"metadata": {"name": store.tenant_id}, "spec": {
            "tenantId": store.tenant_id, "vector": {"dimension": DIMENSION, "metric": "cosine"}}})
        secrets_data.append(secret_data(spec, relational_placement, vector_placement, PASSWORD, None, placement))
    return secrets_data


def load(superuser_uri: Callable[[str], str], secrets_data: list[dict[str, str]], count: int,
         global_count: int, workers: int) -> float:
    """Every tenant's table and the global index filled, `workers` tables at a time (one connection each)."""
    jobs = [(data["database"], data["vectorTable"], data["vectorNamespace"] or None, count) for data in secrets_data]
    jobs.append(("tenants", secrets_data[0]["globalTable"], None, global_count))
    started = time.monotonic()

    def run(job: tuple[str, str, str | None, int]) -> None:
        database, table, namespace, rows = job
        with psycopg.connect(superuser_uri(database), autocommit=True) as conn:
            conn.execute(generated_rows(sql.Identifier(*table.split(".")), namespace, rows))
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*table.split("."))))

    async def all_jobs() -> None:
        gate = asyncio.Semaphore(workers)

        async def one(job: tuple[str, str, str | None, int]) -> None:
            async with gate:
                await asyncio.to_thread(run, job)
        await asyncio.gather(*(one(job) for job in jobs))
    asyncio.run(all_jobs())
    return time.monotonic() - started


def query_of(coordinates: Coordinates, rng: random.Random) -> tuple[sql.Composable, list[Any]]:
    """The client library's own statement for this store (what a tenant's query runs)."""
    probe = [rng.random() for _ in range(DIMENSION)]
    return Statements(coordinates).query(probe, TOP_K, None, False)


def timed(conn: psycopg.Connection[Any], statement: sql.Composable, params: list[Any]) -> float:
    started = time.perf_counter()
    rows = conn.execute(statement, params).fetchall()
    elapsed = time.perf_counter() - started
    assert len(rows) == TOP_K, f"{len(rows)} rows, {TOP_K} wanted"
    return elapsed


def measure(kind: str, targets: list[tuple[Coordinates, str, str]], samples: int, seed: int
            ) -> dict[str, dict[str, list[float]]]:
    """Latencies (seconds) per session mode and side. `targets`: (coordinates, tenant URI, superuser URI)."""
    rng = random.Random(seed)
    found: dict[str, dict[str, list[float]]] = {mode: {"tenant": [], "floor": []} for mode in ("fresh", "pooled")}
    pooled: dict[str, psycopg.Connection[Any]] = {}
    try:
        for sample in range(samples):
            coordinates, tenant_uri, floor_uri = targets[sample % len(targets)]
            statement, params = query_of(coordinates, rng)
            sides = [("tenant", tenant_uri), ("floor", floor_uri)]
            if sample % 2:
                sides.reverse()  # neither side always runs on the other's warm buffers
            for side, uri in sides:
                with psycopg.connect(uri, autocommit=True) as fresh:
                    fresh.execute("SELECT 1")  # the login's round trip is not the query's
                    found["fresh"][side].append(timed(fresh, statement, params))
                key = f"{side}:{sample % len(targets)}"  # a session per store on both sides, warmed alike
                if key not in pooled:
                    pooled[key] = psycopg.connect(uri, autocommit=True)
                    timed(pooled[key], statement, params)  # warm-up, not counted
                found["pooled"][side].append(timed(pooled[key], statement, params))
    finally:
        for conn in pooled.values():
            conn.close()
    log(f"{kind}: {samples} queries each side, fresh and pooled")
    return found


def summary(latencies: dict[str, list[float]]) -> dict[str, Any]:
    tenant, floor = kit.percentiles(latencies["tenant"]), kit.percentiles(latencies["floor"])
    result: dict[str, Any] = {"tenant_ms": {}, "floor_ms": {}, "overhead_ms": {}, "ratio": {}}
    for q in ("p50", "p95", "p99"):
        t, f = tenant[q] * 1000, floor[q] * 1000
        result["tenant_ms"][q], result["floor_ms"][q] = round(t, 3), round(f, 3)
        result["overhead_ms"][q], result["ratio"][q] = round(t - f, 3), round(t / f, 3) if f else None
    # The same query on the same store, tenant minus floor, sample by sample: what is left when the noise both
    # sides share (buffers, scheduling) cancels out.
    paired = kit.percentiles([t - f for t, f in zip(latencies["tenant"], latencies["floor"])])
    result["paired_overhead_ms"] = {q: round(paired[q] * 1000, 3) for q in ("p50", "p95", "p99")}
    result["meets_target"] = (result["overhead_ms"]["p95"] <= TARGET_OVERHEAD_MS
                              and (result["ratio"]["p95"] or 0) <= TARGET_RATIO)
    return result


def run(n: int, dedicated: int, count: int, global_count: int, samples: int, workers: int, seed: int,
        shared_buffers: str = "4GB") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tenantstore-bench-query-") as workdir:
        postgres = EmbeddedPostgres(Path(workdir))
        postgres.initialise()
        # Room for every table and index in memory, as a server sized for its data has: a fresh session then
        # measures what a session costs (catalogs, policies, plans), not copies from the OS's page cache.
        with (postgres.datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"\nshared_buffers = '{shared_buffers}'\n")
        postgres.start()
        try:
            admin_uri = postgres.prepare_for_tenantstore(admin_password=secrets.token_urlsafe(16))
            stores = [desired(i, False) for i in range(n)] + [desired(i, True) for i in range(dedicated)]
            index = GlobalIndex("bench", DIMENSION, Metric.COSINE)

            async def provisioned() -> list[dict[str, str]]:
                server = PostgresServer(admin_uri, "tenants")
                try:
                    return await provision(server, stores, index)
                finally:
                    await server.close()
            log(f"provisioning {n} shared-index tenants, {dedicated} dedicated and the global index")
            secrets_data = asyncio.run(provisioned())
            log(f"loading {count} vectors per tenant and {global_count} global ones ({workers} at a time)")
            load_seconds = load(postgres.superuser_uri, secrets_data, count, global_count, workers)
            log(f"loaded in {load_seconds:.0f} s")

            def targets(datas: list[dict[str, str]], table_key: str, uri_key: str, database_of: Callable[
                    [dict[str, str]], str]) -> list[tuple[Coordinates, str, str]]:
                return [(Coordinates.from_secret({**data, "vectorTable": data[table_key], "vectorNamespace": ""}),
                         data[uri_key], postgres.superuser_uri(database_of(data))) for data in datas]
            shared = [d for d in secrets_data if d["vectorNamespace"]]
            own = [d for d in secrets_data if not d["vectorNamespace"]]
            kinds = {"shared index (RLS on a partition)": targets(shared, "vectorTable", "uri", lambda d: "tenants"),
                     "dedicated table": targets(own, "vectorTable", "uri", lambda d: d["database"]),
                     "global index (through the reader role)": targets(shared, "globalTable", "globalUri",
                                                                       lambda d: "tenants")}
            figures = {}
            for kind, chosen in kinds.items():
                if chosen:
                    latencies = measure(kind, chosen, samples, seed)
                    figures[kind] = {mode: summary(latencies[mode]) for mode in latencies}
        finally:
            postgres.stop("immediate")
    return {"n": n, "dedicated": dedicated, "vectors_per_tenant": count, "global_vectors": global_count,
            "dimension": DIMENSION, "top_k": TOP_K, "samples": samples, "seed": seed, "shared_buffers": shared_buffers,
            "load_seconds": round(load_seconds, 1),
            "target": {"overhead_ms_p95": TARGET_OVERHEAD_MS, "ratio_p95": TARGET_RATIO}, "kinds": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="tenants in the shared index (default 100)")
    parser.add_argument("--dedicated", type=int, default=10, help="tenants with a dedicated table (default 10)")
    parser.add_argument("--vectors", type=int, default=10_000, help="vectors per tenant (default 10,000)")
    parser.add_argument("--global-vectors", type=int, default=10_000, help="vectors in the global index")
    parser.add_argument("--samples", type=int, default=1000, help="queries per kind and side (default 1,000)")
    parser.add_argument("--workers", type=int, default=2, help="tables loaded at once (default 2)")
    parser.add_argument("--shared-buffers", default="4GB", help="the server's shared_buffers (default 4GB)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes (default bench/results)")
    args = parser.parse_args(argv)
    result = run(args.n, args.dedicated, args.vectors, args.global_vectors, args.samples, args.workers, args.seed,
                 args.shared_buffers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"query-{args.n}.json").write_text(json.dumps(result, indent=2) + "\n")
    for kind, modes in result["kinds"].items():
        for mode, figure in modes.items():
            print(f"query: {kind}, {mode} session: tenant p50/p95/p99 {figure['tenant_ms']['p50']}/"
                  f"{figure['tenant_ms']['p95']}/{figure['tenant_ms']['p99']} ms, floor "
                  f"{figure['floor_ms']['p50']}/{figure['floor_ms']['p95']}/{figure['floor_ms']['p99']} ms, "
                  f"overhead p95 {figure['overhead_ms']['p95']} ms ({figure['ratio']['p95']}x), paired p50/p95 "
                  f"{figure['paired_overhead_ms']['p50']}/{figure['paired_overhead_ms']['p95']} ms"
                  f"{'' if figure['meets_target'] else ' ABOVE TARGET'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
