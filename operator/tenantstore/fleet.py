"""Work done for all tenants of a StoreClass at once, on a schedule: measure usage and enforce quotas.

One periodic job per StoreClass (not a timer per tenant) keeps this cheap with thousands of tenants: the
backends measure every tenant of the class in a few grouped queries, and only tenants whose figures or
verdict changed cost an API write.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from tenantstore import conditions, cost, credentials, insights
from tenantstore.backends import Step, VectorPlacement
from tenantstore.errors import BackendUnavailable, StoreClassNotAllowed
from tenantstore.api import WRITES_BLOCKED_ANNOTATION, ConditionType, Reason
from tenantstore.kube import NamespaceLabels, Secrets, TenantStatuses, replacing
from tenantstore.models import (DesiredStore, InvalidResource, RelationalIsolation, StoreClass, TenantStoreSpec,
                                VectorIsolation, effective_quotas)
from tenantstore.quota import Usage, Verdict, judge
from tenantstore.reconcile import store_as_provisioned
from tenantstore.registry import BackendRegistry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One tenant after a measurement: what to tell the user."""

    body: Mapping[str, Any]
    usage: Usage
    verdict: Verdict
    events: list[Step]
    warning: bool  # the quota verdict turned to exceeded, or the budget crossed a threshold
    holding: cost.Holding | None = None
    cost: Mapping[str, Any] | None = None  # status.cost as it now is


def provisioned_tenants(tenants: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    # A tenant whose vectors are being moved is measured once the move is done.
    return [body for body in tenants
            if not body["metadata"].get("deletionTimestamp") and (body.get("status") or {}).get("relational")
            and not (body.get("status") or {}).get("migration")
            and VectorPlacement.from_status((body.get("status") or {}).get("vectorStore"))]


def needs_reconcile(store_class: StoreClass, body: Mapping[str, Any]) -> bool:
    """A provisioned tenant whose class changed since it was reconciled (its quotas or isolation may follow),
    or one of whose credentials is due to rotate, or to close its previous login."""
    status = body.get("status") or {}
    return bool(status.get("relational")) and (
        status.get("observedStoreClassGeneration") != store_class.generation
        or credentials.rotation_due(body, datetime.datetime.now(datetime.UTC)))


async def namespace_labels(store_class: StoreClass, tenants: Sequence[Mapping[str, Any]],
                           namespaces: NamespaceLabels) -> dict[str, Mapping[str, str]]:
    """The labels of the namespaces of a class's provisioned tenants, read once each, when the class restricts
    namespaces (spec.allowedNamespaces); empty otherwise. A namespace that cannot be read is left out."""
    if not store_class.allowed_namespaces.restricted:
        return {}
    wanted = sorted({body["metadata"]["namespace"] for body in tenants if (body.get("status") or {}).get("relational")})
    found: dict[str, Mapping[str, str]] = {}
    for name in wanted:
        try:
            found[name] = await namespaces.labels(name)
        except BackendUnavailable as error:
            logger.warning("StoreClass %s: %s; its tenants there are judged at the next run", store_class.name, error)
    return found


def admission_changed(store_class: StoreClass, body: Mapping[str, Any],
                      labels_by_namespace: Mapping[str, Mapping[str, str]]) -> bool:
    """A provisioned tenant whose Ready condition disagrees with whether its namespace is allowed now: the
    namespace's labels changed, and no spec or class change would otherwise make the operator look again."""
    labels = labels_by_namespace.get(body["metadata"].get("namespace", ""))
    if labels is None:
        return False
    ready = conditions.find((body.get("status") or {}).get("conditions"), ConditionType.READY) or {}
    return store_class.allowed_namespaces.allows(labels) == (ready.get("reason") == StoreClassNotAllowed.reason)


async def mark_writes_blocked(secrets: Secrets, body: Mapping[str, Any], spec: TenantStoreSpec,
                              blocked: bool) -> list[Step]:
    """The owner's Secret and every scoped credential's say whether writes are blocked."""
    namespace = body["metadata"]["namespace"]
    names = [spec.secret_name]
    if spec.credentials:
        names += sorted(await secrets.credential_secrets(namespace, body))
    marked = [name for name in names if await secrets.mark_writes_blocked(namespace, name, body, blocked)]
    return [Step("SecretAnnotated", f"Secret {name}: {WRITES_BLOCKED_ANNOTATION}="
                                    f"{'true' if blocked else '(removed)'}") for name in marked]


class Sample(NamedTuple):
    """One tenant as this pass measured it."""

    body: Mapping[str, Any]
    spec: TenantStoreSpec
    store: DesiredStore
    placement: VectorPlacement
    usage: Usage
    holding: cost.Holding
    queries: insights.QueryInsights | None


async def measure_class(store_class: StoreClass, tenants: Sequence[Mapping[str, Any]], registry: BackendRegistry,
                        statuses: TenantStatuses, secrets: Secrets, now: str,
                        cost_interval: float = 900.0, elsewhere: cost.Elsewhere | None = None) -> list[Measured]:
    """`elsewhere`: the class's tenants measured by other replicas (sharding), with whom shared costs are split."""
    parsed = []
    for body in provisioned_tenants(tenants):
        try:
            spec = TenantStoreSpec.from_body(body)
        except InvalidResource:
            continue
        parsed.append((body, spec, store_as_provisioned(spec, store_class, body),
                       VectorPlacement.from_status(body["status"]["vectorStore"])))
    if not parsed:
        return []
    backends = await registry.for_class(store_class)
    relational = await backends.relational.measure([store for _, _, store, _ in parsed])
    vector = await backends.vector.measure([(store, placement) for _, _, store, placement in parsed])

    measured: list[Sample] = []
    for body, spec, store, placement in parsed:
        rel, vec = relational.get(store.tenant_id), vector.get(store.tenant_id)
        if rel is None or vec is None:
            continue  # it vanished while measured (a teardown racing the job): nothing true to report
        usage = Usage(documents=vec.documents, storage_bytes=rel.storage_bytes + vec.storage_bytes,
                      connections=rel.connections, daily_queries=rel.daily_queries,
                      relational_storage_bytes=rel.storage_bytes)
        measured.append(Sample(body, spec, store, placement, usage, holding(store, placement, usage), rel.queries))
    pricing = store_class.pricing
    shares = cost.allocate(pricing, [sample.holding for sample in measured], elsewhere) if pricing else {}
    moment = cost.parse_time(now) or datetime.datetime.now(datetime.timezone.utc)

    results = []
    for body, spec, store, placement, usage, held, queries in measured:
        verdict = judge(usage, effective_quotas(spec, store_class)[0], spec.quota_action)
        status = body.get("status") or {}
        previous = conditions.find(status.get("conditions"), ConditionType.QUOTA_EXCEEDED) or {}
        priced = cost.price(pricing, spec.budget(store_class), shares.get(store.tenant_id, {}), status, usage,
                            moment, cost_interval) if pricing else cost.unpriced(status)
        events: list[Step] = list(priced.events)
        was_blocked = previous.get("reason") == Reason.WRITES_BLOCKED or cost.budget_blocks_writes(status)
        blocked = verdict.blocks_writes or priced.blocks_writes
        if was_blocked != blocked:
            store = dataclasses.replace(store, writes_allowed=not blocked)
            events += await backends.relational.ensure_write_access(store)
            events += await backends.vector.ensure_write_access(store, placement)
            events += await mark_writes_blocked(secrets, body, spec, blocked)
        quota_condition = verdict.condition()
        changes: dict[str, Any] = {}
        if not usage.same_figures(status.get("usage")):
            changes["usage"] = usage.to_status(now)
        if not insights.same(queries, status.get("queries")):
            changes["queries"] = replacing(status.get("queries"), queries.to_status() if queries else None)
        if priced.status != status.get("cost"):
            # None removes figures a class without pricing no longer keeps; a removed budget goes too.
            changes["cost"] = replacing(status.get("cost"), priced.status)
        merged = conditions.merge_conditions(status.get("conditions"),
                                             [quota_condition, *([priced.condition] if priced.condition else [])],
                                             body["metadata"].get("generation", 0))
        if merged != status.get("conditions"):
            changes["conditions"] = merged
        if changes and not await statuses.patch_unless_changed(body, changes):
            continue  # changed (or gone) since it was read: the next pass judges it again, events and all
        transition = previous.get("status") != ("True" if quota_condition.status else "False") \
            or previous.get("reason") != quota_condition.reason
        if transition and (previous or verdict.exceeded):
            events.append(Step(quota_condition.reason if verdict.exceeded else "QuotaWithinLimits",
                               quota_condition.message))
        results.append(Measured(body=body, usage=usage, verdict=verdict, events=events,
                                warning=(transition and verdict.exceeded) or priced.warning,
                                holding=held, cost=priced.status))
    return results


def holding(store: DesiredStore, placement: VectorPlacement, usage: Usage) -> cost.Holding:
    return cost.Holding(tenant_id=store.tenant_id, storage_bytes=usage.storage_bytes,
                        shared_index=placement.index if store.vector is VectorIsolation.NAMESPACE else None,
                        dedicated_index=store.vector is VectorIsolation.DEDICATED,
                        dedicated_database=store.relational is RelationalIsolation.DATABASE)
