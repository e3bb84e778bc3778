"""Prometheus metrics, served by the operator at /metrics.

Per-tenant and per-shared-index series are generated at scrape time from the TenantStores' and
StoreClasses' status as the operator last saw them (Kopf's watch events feed `TenantSeries`), so a scrape
never queries a backend, a deleted TenantStore's series disappear with it, and a restarted operator
rebuilds every series from status during its initial listing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tenantstore.api import ConditionType, Phase
from tenantstore.models import (InvalidResource, StoreClass, Tier, default_class_name, parse_latency, parse_quantity,
                                parse_store_class)

TENANT_LABELS = ("tenant", "namespace", "tier", "storeclass")
QUOTA_RESOURCES = {"documents": ("documents", "maxDocuments"), "storage_bytes": ("storageBytes", "maxStorageBytes"),
                   "connections": ("connections", "maxConnections"),
                   "daily_queries": ("dailyQueries", "maxDailyQueries")}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A pass over a class's tenants: ~10 ms per tenant, so minutes for a class of ten thousand.
PASS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REGISTRY = CollectorRegistry()
RECONCILE_DURATION = Histogram(
    "tenantstore_reconcile_duration_seconds", "Time to reconcile one TenantStore, by operation and result.",
    ("operation", "result"), buckets=LATENCY_BUCKETS, registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "tenantstore_reconcile_errors_total", "Reconciles that ended short of the desired state, by condition reason.",
    ("reason",), registry=REGISTRY)
DRIFT_DETECTED = Counter(
    "tenantstore_drift_detected_total", "Drift the verification pass found in provisioned tenants, by kind.",
    ("kind",), registry=REGISTRY)
ISOLATION_PROBE_FAILURES = Counter(
    "tenantstore_isolation_probe_failures_total", "Isolation canary probes that saw past a tenant's namespace.",
    ("storeclass", "index"), registry=REGISTRY)
VERIFY_DURATION = Histogram(
    "tenantstore_verify_duration_seconds", "Time of one verification pass over a StoreClass's tenants.",
    ("storeclass",), buckets=PASS_BUCKETS, registry=REGISTRY)
USAGE_DURATION = Histogram(
    "tenantstore_usage_duration_seconds", "Time of one usage measurement (and quota enforcement) of a StoreClass's "
    "tenants.", ("storeclass",), buckets=PASS_BUCKETS, registry=REGISTRY)
EXPORTS = Counter(
    "tenantstore_exports_total", "TenantStoreExports that ended, by result (completed, failed).",
    ("result",), registry=REGISTRY)
EXPORT_BYTES = Counter(
    "tenantstore_export_bytes_total", "Bytes written to export destinations.", registry=REGISTRY)
EXPORT_DURATION = Histogram(
    "tenantstore_export_duration_seconds", "Time of one export run, from start (or resume) to verified.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 10800), registry=REGISTRY)
VECTORS_EXPIRED = Counter(
    "tenantstore_tenant_vectors_expired_total", "Vectors deleted because they outlived the tenant's retention.",
    TENANT_LABELS, registry=REGISTRY)
CREDENTIAL_ROTATIONS = Counter(
    "tenantstore_credential_rotations_total", "Rotations of a tenant's scoped credentials (a new login in turn).",
    (*TENANT_LABELS, "credential"), registry=REGISTRY)
AUDIT_WRITTEN = Counter(
    "tenantstore_audit_entries_written_total", "Rows appended to the StoreClasses' audit trails.", registry=REGISTRY)
AUDIT_DROPPED = Counter(
    "tenantstore_audit_entries_dropped_total", "Audit rows dropped because too many waited for their Postgres.",
    registry=REGISTRY)
AUDIT_PENDING = Gauge(
    "tenantstore_audit_entries_pending", "Audit rows queued, not yet written (their Postgres did not answer).",
    registry=REGISTRY)
SEARCH_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5)
SEARCH_LATENCY = Histogram(
    "tenantstore_tenant_search_latency_seconds", "Nearest-neighbour queries the search probe ran on the tenant's "
    "own store, as the tenant (StoreClass spec.slo).", TENANT_LABELS, buckets=SEARCH_LATENCY_BUCKETS,
    registry=REGISTRY)
SEARCH_PROBES = Counter(
    "tenantstore_search_probes_total", "Search probes run, by StoreClass and result (ok, failed).",
    ("storeclass", "result"), registry=REGISTRY)
BACKEND_DURATION = Histogram(
    "tenantstore_backend_operation_duration_seconds", "Latency of backend operations, by backend and operation.",
    ("backend", "operation"), buckets=LATENCY_BUCKETS, registry=REGISTRY)


@dataclasses.dataclass(frozen=True)
class TenantSnapshot:
    labels: tuple[str, str, str, str]
    phase: str
    ready: bool
    quota_exceeded: bool
    usage: Mapping[str, Any]
    quotas: Mapping[str, Any]
    cost: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    over_budget: bool = False
    queries: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], default_class: str = "") -> TenantSnapshot:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
        return cls(
            labels=(spec.get("tenantId", ""), body["metadata"].get("namespace", ""), spec.get("tier", "free"),
                    status.get("storeClassName") or spec.get("storeClassName") or default_class),
            phase=status.get("phase") or Phase.PENDING.value,
            ready=conditions.get(ConditionType.READY) == "True",
            quota_exceeded=conditions.get(ConditionType.QUOTA_EXCEEDED) == "True",
            usage=dict(status.get("usage") or {}),
            quotas=dict(status.get("quotas") or {}),
            cost=dict(status.get("cost") or {}),
            over_budget=conditions.get(ConditionType.OVER_BUDGET) == "True",
            queries=dict(status.get("queries") or {}),
        )

    def used_and_limit(self, resource: str) -> tuple[float | None, float | None]:
        usage_key, quota_key = QUOTA_RESOURCES[resource]
        used, limit = self.usage.get(usage_key), self.quotas.get(quota_key)
        return (None if used is None else float(used),
                None if limit is None else float(parse_quantity(limit)))


@dataclasses.dataclass(frozen=True)
class SharedIndexSnapshot:
    storeclass: str
    index: str
    tenants: int
    capacity: int


class TenantSeries(Collector):
    """What the operator knows from status, turned into gauges on each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # watch events arrive on the event loop, scrapes on the server's thread
        self._tenants: dict[tuple[str, str], TenantSnapshot] = {}
        self._indexes: dict[str, list[SharedIndexSnapshot]] = {}
        self._thresholds: dict[str, float] = {}
        self._class_costs: dict[str, Mapping[str, Any]] = {}
        self._objectives: dict[str, float] = {}  # StoreClass -> its p95 search-latency objective, seconds
        self._classes: dict[str, StoreClass | InvalidResource] = {}

    def observe_tenant(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        key = (body["metadata"].get("namespace", ""), body["metadata"]["name"])
        with self._lock:
            if deleted:
                gone = self._tenants.pop(key, None)
                if gone is not None:  # its latency series go with it, as its gauges do
                    with contextlib.suppress(KeyError):
                        SEARCH_LATENCY.remove(*gone.labels)
            else:
                # Named as the reconcile will resolve it: a tenant naming no class has its class's series from its
                # creation, not an empty label until its first status (two series for one tenant).
                self._tenants[key] = TenantSnapshot.from_body(body, default_class_name(self._classes))

    def forget_tenants(self) -> None:
        """Drop every tenant's series (a new operator run observes its own tenants again)."""
        with self._lock:
            for gone in self._tenants.values():
                with contextlib.suppress(KeyError):
                    SEARCH_LATENCY.remove(*gone.labels)
            self._tenants.clear()

    def observe_store_class(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        pool = [SharedIndexSnapshot(name, row.get("name", ""), int(row.get("tenants", 0)), int(row.get("capacity", 0)))
                for row in (body.get("status") or {}).get("sharedIndexes") or ()]
        threshold = float(((body.get("spec") or {}).get("vector") or {}).get("sharedIndex", {}).get("alertThreshold", 0.8))
        class_cost = dict((body.get("status") or {}).get("cost") or {})
        latency = (((body.get("spec") or {}).get("slo") or {}).get("searchLatency") or {}).get("p95")
        parsed = parse_store_class(body)
        with self._lock:
            if deleted:
                self._classes.pop(name, None)
                self._indexes.pop(name, None)
                self._thresholds.pop(name, None)
                self._class_costs.pop(name, None)
                self._objectives.pop(name, None)
            else:
                if latency:
                    self._objectives[name] = parse_latency(latency)
                else:
                    self._objectives.pop(name, None)
                self._indexes[name] = pool
                self._thresholds[name] = threshold
                self._class_costs[name] = class_cost
                self._classes[name] = parsed

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # series come and go with tenants; nothing to pre-register

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            tenants = list(self._tenants.values())
            indexes = [row for pool in self._indexes.values() for row in pool]
            thresholds = dict(self._thresholds)
            class_costs = dict(self._class_costs)
            objectives = dict(self._objectives)
        yield from self._tenant_families(tenants)
        yield from self._cost_families(tenants, class_costs)
        yield from self._query_families(tenants)
        yield from self._index_families(indexes, thresholds)
        objective = GaugeMetricFamily("tenantstore_storeclass_search_latency_objective_seconds",
                                      "A StoreClass's p95 search-latency objective (spec.slo.searchLatency.p95).",
                                      labels=("storeclass",))
        for name, seconds in objectives.items():
            objective.add_metric((name,), seconds)
        yield objective

    @staticmethod
    def _tenant_families(tenants: list[TenantSnapshot]) -> Iterator[GaugeMetricFamily]:
        def family(name: str, documentation: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=(*TENANT_LABELS, *extra))

        ready = family("tenantstore_tenant_ready", "1 when the TenantStore's Ready condition is True.")
        phase = family("tenantstore_tenant_phase", "1 for the TenantStore's current phase, 0 for the others.", ("phase",))
        exceeded = family("tenantstore_tenant_quota_exceeded", "1 while a quota limit is reached.")
        usage = {
            "documents": family("tenantstore_tenant_documents", "Vectors stored by the tenant."),
            "storage_bytes": family("tenantstore_tenant_storage_bytes",
                                    "Bytes used by the tenant's schema or database and vector partition."),
            "connections": family("tenantstore_tenant_connections", "Open sessions of the tenant's role."),
            "daily_queries": family("tenantstore_tenant_daily_queries",
                                    "Statements run by the tenant's role since 00:00 UTC."),
        }
        limit = family("tenantstore_tenant_quota_limit", "Effective quota limit (0 = unlimited).", ("resource",))
        ratio = family("tenantstore_tenant_quota_usage_ratio", "Used / limit per quota resource (limited quotas only).",
                       ("resource",))
        by_phase: dict[tuple[str, str], int] = {}
        for tenant in tenants:
            ready.add_metric(tenant.labels, 1.0 if tenant.ready else 0.0)
            exceeded.add_metric(tenant.labels, 1.0 if tenant.quota_exceeded else 0.0)
            for candidate in Phase:
                phase.add_metric((*tenant.labels, candidate.value), 1.0 if tenant.phase == candidate.value else 0.0)
            for resource, gauge in usage.items():
                used, quota = tenant.used_and_limit(resource)
                if used is not None:
                    gauge.add_metric(tenant.labels, used)
                if quota is not None:
                    limit.add_metric((*tenant.labels, resource), quota)
                if used is not None and quota:
                    ratio.add_metric((*tenant.labels, resource), used / quota)
            by_phase[(tenant.phase, tenant.labels[2])] = by_phase.get((tenant.phase, tenant.labels[2]), 0) + 1
        totals = GaugeMetricFamily("tenantstore_tenants", "TenantStores by phase and tier.", labels=("phase", "tier"))
        for candidate in Phase:
            for tier in Tier:
                totals.add_metric((candidate.value, tier.value), float(by_phase.get((candidate.value, tier.value), 0)))
        yield from (ready, phase, exceeded, *usage.values(), limit, ratio, totals)

    @staticmethod
    def _query_families(tenants: list[TenantSnapshot]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        calls = CounterMetricFamily("tenantstore_tenant_queries", "Statements run by the tenant's roles (from "
                                    "pg_stat_statements, since its last reset).", labels=TENANT_LABELS)
        mean = GaugeMetricFamily("tenantstore_tenant_query_duration_seconds_mean", "Mean execution time of the "
                                 "tenant's statements.", labels=TENANT_LABELS)
        p95 = GaugeMetricFamily("tenantstore_tenant_query_duration_seconds_p95", "Execution time under which 95 % "
                                "of the tenant's statements fall (estimated from each shape's mean and spread).",
                                labels=TENANT_LABELS)
        for tenant in tenants:
            if tenant.queries:
                calls.add_metric(tenant.labels, float(tenant.queries.get("calls", 0)))
                mean.add_metric(tenant.labels, float(tenant.queries.get("meanSeconds", 0)))
                p95.add_metric(tenant.labels, float(tenant.queries.get("p95Seconds", 0)))
        yield from (calls, mean, p95)

    @staticmethod
    def _cost_families(tenants: list[TenantSnapshot], class_costs: Mapping[str, Mapping[str, Any]]
                       ) -> Iterator[GaugeMetricFamily]:
        cost = GaugeMetricFamily("tenantstore_tenant_cost", "The tenant's cost this month to date, by component "
                                 "(its share of fixed costs, storage, queries, writes; total).",
                                 labels=(*TENANT_LABELS, "component", "currency"))
        projected = GaugeMetricFamily("tenantstore_tenant_cost_projected", "The tenant's cost projected for the "
                                      "month.", labels=(*TENANT_LABELS, "currency"))
        limit = GaugeMetricFamily("tenantstore_tenant_budget_limit", "The tenant's monthly budget.",
                                  labels=(*TENANT_LABELS, "currency"))
        used = GaugeMetricFamily("tenantstore_tenant_budget_used_ratio", "Month-to-date cost / monthly budget.",
                                 labels=TENANT_LABELS)
        over = GaugeMetricFamily("tenantstore_tenant_over_budget", "1 while OverBudget=True.", labels=TENANT_LABELS)
        for tenant in tenants:
            if not tenant.cost:
                continue
            currency = str(tenant.cost.get("currency", ""))
            for component, amount in (tenant.cost.get("components") or {}).items():
                cost.add_metric((*tenant.labels, component, currency), float(amount))
            cost.add_metric((*tenant.labels, "total", currency), float(tenant.cost.get("monthToDate", 0)))
            projected.add_metric((*tenant.labels, currency), float(tenant.cost.get("projected", 0)))
            budget = tenant.cost.get("budget") or {}
            if budget:
                limit.add_metric((*tenant.labels, currency), float(budget.get("monthlyLimit", 0)))
                used.add_metric(tenant.labels, float(budget.get("usedRatio", 0)))
                over.add_metric(tenant.labels, 1.0 if tenant.over_budget else 0.0)
        storeclass = GaugeMetricFamily("tenantstore_storeclass_cost", "A StoreClass's costs this month: month to "
                                       "date, projected, fixed monthly, and unallocated (fixed, monthly).",
                                       labels=("storeclass", "figure", "currency"))
        for name, figures in class_costs.items():
            for figure in ("monthToDate", "projected", "fixedMonthly", "unallocatedMonthly"):
                if figure in figures:
                    storeclass.add_metric((name, figure, str(figures.get("currency", ""))), float(figures[figure]))
        yield from (cost, projected, limit, used, over, storeclass)

    @staticmethod
    def _index_families(indexes: list[SharedIndexSnapshot], thresholds: dict[str, float]
                        ) -> Iterator[GaugeMetricFamily]:
        tenants = GaugeMetricFamily("tenantstore_shared_index_tenants", "Tenants placed in a shared index.",
                                    labels=("storeclass", "index"))
        capacity = GaugeMetricFamily("tenantstore_shared_index_capacity", "Tenants a shared index may hold.",
                                     labels=("storeclass", "index"))
        for row in indexes:
            tenants.add_metric((row.storeclass, row.index), float(row.tenants))
            capacity.add_metric((row.storeclass, row.index), float(row.capacity))
        threshold = GaugeMetricFamily("tenantstore_shared_index_alert_threshold",
                                      "Fraction of capacity past which a StoreClass's shared index is near full.",
                                      labels=("storeclass",))
        for storeclass, value in thresholds.items():
            threshold.add_metric((storeclass,), value)
        yield from (tenants, capacity, threshold)


SERIES = TenantSeries()
REGISTRY.register(SERIES)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics from a thread of prometheus-client's own, off the event loop."""
    start_http_server(port, addr=address, registry=REGISTRY)
