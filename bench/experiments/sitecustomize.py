"""What-if knobs for the benchmark (`--experiment`), loaded into the operator process through PYTHONPATH.

They try the changes bench/README.md proposes without editing the operator: each is read from
TENANTSTORE_BENCH_EXPERIMENT (comma-separated key=value) and applied at import or in a Kopf startup handler.
Not product settings; the shipped operator never sees this module.

    worker_limit=N        settings.queueing.worker_limit (reconciles in flight at once; Kopf's default: unlimited)
    posting_level=LEVEL   settings.posting.level (e.g. WARNING: only warnings become Events)
    pool_size=N           max connections of the shared database's pool (backends/postgres.py uses 4)
    async_handlers=1      run the sync index and on.event handlers as coroutines (Kopf runs sync handlers in
                          its thread pool: a thread hop per handler per watch event)
    reconcile_limit=N     at most N reconciles/teardowns talk to the backends at once (an asyncio.Semaphore
                          around reconcile.reconcile_tenant and reconcile.teardown_tenant)
    api_connections=N     the part for requests of the bound `tenantstore run` puts on Kopf's API connections
                          (kopf_fixes.API_REQUEST_CONNECTIONS, 64; the watch streams get room of their own).
                          Kopf's own connector has no limit: N requests in flight open N TLS connections
    tracemalloc=FRAMES    trace Python allocations (FRAMES frames each) and, whenever the process's RSS reaches a
                          new high above 150 MB (checked every second, in steps of 16 MB, at most every 20 s), write what holds the Python heap to
                          $TENANTSTORE_BENCH_TRACEMALLOC_OUT (default tracemalloc-<pid>.txt): where memory goes
                          at the peak. Tracing slows the process ~2x: read its sizes, not its timings
    mallocstats=SECONDS   every SECONDS, append the RSS, the live Python blocks and CPython's small-object
                          allocator statistics (sys._debugmallocstats: arenas, used and free pools, bytes in
                          allocated and in available blocks) and glibc's malloc totals (mallinfo2: bytes in use
                          and free in its heaps, bytes in mmapped chunks) to $TENANTSTORE_BENCH_MALLOCSTATS_OUT
                          (default mallocstats-<pid>.txt): how much of the RSS is live objects, how much kept free
    malloc_trim=SECONDS   every SECONDS, glibc's malloc_trim(0): free pages inside malloc's heaps go back to the OS.
                          With PYTHONMALLOC=malloc in the benchmark's environment (it is not a knob: it must be set
                          before the interpreter starts) Python's small objects live in those heaps too, instead of
                          CPython's arenas, which are returned only when wholly empty

Mind: worker_limit below the number of TenantStores deadlocks a restart: Kopf's workers wait for every
index to be populated from the initial listing, which needs workers that the limit does not let start.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time

_RAW = os.environ.get("TENANTSTORE_BENCH_EXPERIMENT", "")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


KNOBS = dict(item.split("=", 1) for item in _RAW.split(",") if "=" in item)
_LIBC = ctypes.CDLL("libc.so.6") if {"mallocstats", "malloc_trim"} & KNOBS.keys() else None  # glibc's malloc

if "tracemalloc" in KNOBS:
    import tracemalloc

    def _heap_at_peaks(out: str, step: int = 16 << 20, spacing: float = 20.0) -> None:
        # A snapshot of a few hundred MB of small objects takes seconds, with the GIL: not every second.
        highest, last = 150 << 20, 0.0  # below it: start-up, not tenants
        while True:
            time.sleep(1)
            rss = _rss()
            if rss < highest + step or time.monotonic() < last + spacing:
                continue
            highest, last = rss, time.monotonic()
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            traced = sum(stat.size for stat in snapshot.statistics("filename"))
            lines = [f"rss {rss / 2**20:.1f} MB, traced Python heap {traced / 2**20:.1f} MB", "", "by file:"]
            lines += [f"{stat.size / 2**20:8.2f} MB {stat.count:9d} blocks  {stat.traceback}"
                      for stat in snapshot.statistics("filename")[:25]]
            lines += ["", "by allocating line and its callers:"]
            for stat in snapshot.statistics("traceback")[:25]:
                lines.append(f"{stat.size / 2**20:8.2f} MB {stat.count:9d} blocks")
                lines += [f"      {frame}" for frame in stat.traceback.format(most_recent_first=True)[:2 * int(
                    KNOBS["tracemalloc"])]]
            with open(out, "w") as written:
                written.write("\n".join(lines) + "\n")

    tracemalloc.start(int(KNOBS["tracemalloc"]))
    threading.Thread(target=_heap_at_peaks, daemon=True, name="bench-tracemalloc", args=(os.environ.get(
        "TENANTSTORE_BENCH_TRACEMALLOC_OUT", f"tracemalloc-{os.getpid()}.txt"),)).start()

if "mallocstats" in KNOBS:
    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    _LIBC.mallinfo2.restype = _Mallinfo2

    def _allocator_stats(out: str, every: float) -> None:
        while True:
            time.sleep(every)
            rss, glibc = _rss(), _LIBC.mallinfo2()
            with open(out, "a") as written:
                written.write(f"=== {time.strftime('%H:%M:%S')} rss {rss / 2**20:.1f} MB, "
                              f"{sys.getallocatedblocks()} live blocks; glibc heaps {glibc.arena / 2**20:.1f} MB "
                              f"(in use {glibc.uordblks / 2**20:.1f}, free {glibc.fordblks / 2**20:.1f}), "
                              f"mmapped {glibc.hblkhd / 2**20:.1f} MB\n")
                written.flush()
                saved = os.dup(2)  # _debugmallocstats writes to the C stderr
                try:
                    os.dup2(written.fileno(), 2)
                    sys._debugmallocstats()  # noqa: SLF001
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)

    threading.Thread(target=_allocator_stats, daemon=True, name="bench-mallocstats", args=(os.environ.get(
        "TENANTSTORE_BENCH_MALLOCSTATS_OUT", f"mallocstats-{os.getpid()}.txt"), float(KNOBS["mallocstats"]))).start()

if "malloc_trim" in KNOBS:
    def _trim(every: float) -> None:
        while True:
            time.sleep(every)
            _LIBC.malloc_trim(0)

    threading.Thread(target=_trim, daemon=True, name="bench-malloc-trim", args=(float(KNOBS["malloc_trim"]),)).start()

if KNOBS:
    import kopf

    @kopf.on.startup()
    def _bench_experiment(settings: kopf.OperatorSettings, logger: logging.Logger, **_: object) -> None:
        if "worker_limit" in KNOBS:
            settings.queueing.worker_limit = int(KNOBS["worker_limit"])
        if "posting_level" in KNOBS:
            settings.posting.level = getattr(logging, KNOBS["posting_level"].upper())
        if KNOBS.get("async_handlers") == "1":
            import inspect

            registry = kopf.get_default_registry()
            handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]  # noqa: SLF001
            for handler in handlers:
                if not inspect.iscoroutinefunction(handler.fn):
                    object.__setattr__(handler, "fn", _as_coroutine(handler.fn))
        logger.info(f"benchmark experiment: {KNOBS}")

    def _as_coroutine(fn):  # type: ignore[no-untyped-def]
        async def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            return fn(*args, **kwargs)
        run.__name__ = getattr(fn, "__name__", "handler")
        return run

    if "pool_size" in KNOBS:
        import psycopg_pool

        from tenantstore.backends import postgres

        _original_init = postgres.PostgresServer.__init__

        def _init(self: postgres.PostgresServer, admin_uri: str, shared_database: str) -> None:
            _original_init(self, admin_uri, shared_database)
            self._pool = psycopg_pool.AsyncConnectionPool(
                self.conninfo(shared_database), min_size=1, max_size=int(KNOBS["pool_size"]), open=False,
                timeout=postgres.CONNECT_TIMEOUT_SECONDS * 2, check=psycopg_pool.AsyncConnectionPool.check_connection,
                kwargs=self._pool.kwargs)

        postgres.PostgresServer.__init__ = _init  # type: ignore[method-assign]

    if "api_connections" in KNOBS:
        from tenantstore import kopf_fixes

        kopf_fixes.API_REQUEST_CONNECTIONS = int(KNOBS["api_connections"])  # read when `tenantstore run` bounds

    if "reconcile_limit" in KNOBS:
        import asyncio

        from tenantstore import reconcile

        _gate = asyncio.Semaphore(int(KNOBS["reconcile_limit"]))

        def _limited(original):  # type: ignore[no-untyped-def]
            async def limited(*args, **kwargs):  # type: ignore[no-untyped-def]
                async with _gate:
                    return await original(*args, **kwargs)
            return limited

        reconcile.reconcile_tenant = _limited(reconcile.reconcile_tenant)  # type: ignore[assignment]
        reconcile.teardown_tenant = _limited(reconcile.teardown_tenant)  # type: ignore[assignment]
