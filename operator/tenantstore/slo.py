"""Search-latency probes: the per-tenant latency a StoreClass's `slo.searchLatency` is held to.

Per class with spec.slo, a periodic pass queries non-empty tenants' own stores (as the tenant's role on
pgvector, in its namespace on Pinecone) with a random vector, one at a time and at most `probesPerSecond`, going
round the tenants from where the last pass stopped: the cost is bounded by the rate, whatever the number of
tenants. The latencies feed tenantstore_tenant_search_latency_seconds; the alert compares its p95 with the
class's objective.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from tenantstore import reconcile, verify
from tenantstore.backends import VectorPlacement, VectorStore
from tenantstore.errors import ReconcileError
from tenantstore.models import InvalidResource, SearchSlo, StoreClass, TenantStoreSpec

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Probe:
    body: Mapping[str, Any]
    seconds: float | None  # None: the probe failed (the verification pass reports outages)


def probed_tenants(tenants: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Ready, provisioned tenants with vectors, in a stable order (the cursor goes round it)."""
    eligible = [body for body in verify.verifiable(tenants)
                if (body.get("status") or {}).get("phase") == "Ready"
                and int(((body.get("status") or {}).get("usage") or {}).get("documents", 0)) > 0]
    return sorted(eligible, key=lambda body: body["metadata"]["uid"])


def this_turn(tenants: Sequence[Mapping[str, Any]], after_uid: str, count: int) -> list[Mapping[str, Any]]:
    """Up to `count` tenants following the one with `after_uid`, wrapping round (each once at most)."""
    if not tenants:
        return []
    start = next((i for i, body in enumerate(tenants) if body["metadata"]["uid"] > after_uid), 0)
    rotated = [*tenants[start:], *tenants[:start]]
    return rotated[:count]


def unit_vector(dimension: int, rng: random.Random) -> list[float]:
    values = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


class ProbePass:
    """One class's probes; remembers where it stopped so the next pass goes on from there."""

    def __init__(self) -> None:
        self.after_uid = ""
        self.rng = random.Random()

    async def run(self, store_class: StoreClass, slo: SearchSlo, tenants: Sequence[Mapping[str, Any]],
                  vectors: VectorStore, interval: float, pause: Callable[[float], Awaitable[bool]]) -> list[Probe]:
        """Probe up to probes_per_second × interval tenants, spaced 1/rate apart; `pause(seconds)` waits and
        says whether to stop (the operator is shutting down or the class went away)."""
        eligible = probed_tenants(tenants)
        turn = this_turn(eligible, self.after_uid, max(1, int(slo.probes_per_second * interval)))
        probes: list[Probe] = []
        spacing = 1.0 / slo.probes_per_second
        for position, body in enumerate(turn):
            if position and await pause(spacing):
                break
            started = time.monotonic()
            probes.append(await self.probe(store_class, slo, body, vectors))
            self.after_uid = body["metadata"]["uid"]
            spacing = max(1.0 / slo.probes_per_second - (time.monotonic() - started), 0.0)
        return probes

    async def probe(self, store_class: StoreClass, slo: SearchSlo, body: Mapping[str, Any],
                    vectors: VectorStore) -> Probe:
        try:
            spec = TenantStoreSpec.from_body(body)
        except InvalidResource:
            return Probe(body, None)
        store = reconcile.store_as_provisioned(spec, store_class, body)
        placement = VectorPlacement.from_status(body["status"]["vectorStore"])
        if placement is None:
            return Probe(body, None)
        try:
            return Probe(body, await vectors.probe_search(store, placement, unit_vector(store.dimension, self.rng),
                                                          slo.top_k))
        except ReconcileError as error:
            logger.warning("search probe of %s failed: %s", store.tenant_id, error)
            return Probe(body, None)
