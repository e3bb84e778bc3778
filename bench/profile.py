"""Where the operator's CPU goes: a summary of py-spy's raw (collapsed) stacks from `bench --profile`.

    python -m bench.profile bench/results/profile-provision-1000.txt

Two views of the same samples:
- by package (exclusive): each sample goes to the innermost frame's package (ssl, json, kopf, psycopg, ...);
- by activity (inclusive): the share of samples whose stack passes through a known part of the operator
  (a Kopf handler, Kopf's own patching, event posting, indexing, watching, the Secrets client, ...).
"""
from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path
from typing import Any

# (activity, pattern on a frame "function (file:line)"); a sample counts for every activity its stack matches.
ACTIVITIES: list[tuple[str, str]] = [
    ("handler: reconcile_tenantstore (whole)", r"^reconcile_tenantstore \(handlers\.py"),
    ("handler: delete_tenantstore (whole)", r"^delete_tenantstore \(handlers\.py"),
    ("timer: measure_tenants (usage job)", r"^measure_tenants \(handlers\.py"),
    ("  backends: Postgres/pgvector calls (psycopg)", r"\(psycopg/"),
    ("  tenant Secrets (kubernetes_asyncio client)", r"\(kubernetes_asyncio/"),
    ("  SCRAM verifier (pbkdf2)", r"^scram_sha256_verifier"),
    ("  tracing (OpenTelemetry)", r"\(opentelemetry/|\(tracing\.py"),
    ("kopf: indexes (tenant_id_index, tenants_by_class, store_class_index)", r"^index_resource \(kopf/"),
    ("  tenants_by_class deepcopy", r"^tenants_by_class \(handlers\.py"),
    ("kopf: on.event handlers (metrics series)", r"^observe_tenantstore|^observe_storeclass"),
    ("kopf: patching objects (finalizer, status, annotations)", r"^patch_obj \(kopf/"),
    ("kopf: posting Events", r"\(kopf/_core/engines/posting"),
    ("kopf: watch stream (reading, JSON)", r"\(kopf/_cogs/clients/watching"),
    ("kopf: per-object processing (all of it)", r"^process_resource_event \(kopf/"),
    ("logging", r"\(logging/"),
    ("json encode/decode", r"\(json/"),
    ("TLS (ssl)", r"\(ssl\.py|^SSLProtocol|\(asyncio/sslproto"),
    ("aiohttp (HTTP client)", r"\(aiohttp/"),
    ("thread pool (Kopf's sync handlers, aiohttp's proxy/netrc lookups)", r"^_worker \(concurrent/futures/thread"),
]

PACKAGE = re.compile(r"\((?:.*?/)?(?:site-packages/)?([A-Za-z_][\w]*)(?:/|\.py)")


def parse(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def package_of(frame: str) -> str:
    match = re.search(r"\(([^():]+):\d+\)$", frame)
    if not match:
        return "?"
    file = match.group(1)
    if file.startswith("<"):
        return "python"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py")


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    samples = parse(path)
    total = sum(count for _, count in samples) or 1
    by_package: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    by_activity: collections.Counter[str] = collections.Counter()
    patterns = [(name, re.compile(pattern)) for name, pattern in ACTIVITIES]
    for frames, count in samples:
        by_package[package_of(frames[-1])] += count
        by_leaf[frames[-1]] += count
        for name, pattern in patterns:
            if any(pattern.search(frame) for frame in frames):
                by_activity[name] += count

    def share(counter: collections.Counter[str], limit: int) -> list[dict[str, Any]]:
        return [{"what": key, "percent": round(100 * value / total, 1)} for key, value in counter.most_common(limit)]
    return {"samples": total, "by_activity_inclusive": [
                {"what": name, "percent": round(100 * by_activity[name] / total, 1)} for name, _ in ACTIVITIES],
            "by_package_exclusive": share(by_package, 15), "hottest_frames": share(by_leaf, top)}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(summarize(Path(argv[0])), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
