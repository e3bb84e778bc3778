"""A StoreClass's health: can tenants be made with it? (Ready condition, kstatus style.)"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from tenantstore import conditions, globalstore
from tenantstore.api import ConditionType, Reason
from tenantstore.conditions import Condition
from tenantstore.errors import ReconcileError, VectorQuotaExceeded
from tenantstore.globalstore import GlobalOutcome
from tenantstore.kube import Secrets
from tenantstore.models import InvalidResource, StoreClass
from tenantstore.registry import BackendRegistry


async def readiness(body: Mapping[str, Any], registry: BackendRegistry) -> Condition:
    """Ready when the class's Postgres is reachable and meets the prerequisites (the README lists them)."""
    try:
        store_class = StoreClass.from_body(body)
        backends = await registry.for_class(store_class)
        problems = await registry.preflight(store_class, backends, max_age=0)  # fresh: this is the class's check
    except ReconcileError as error:
        return Condition(ConditionType.READY, False, error.reason, str(error))
    except InvalidResource as error:
        return Condition(ConditionType.READY, False, Reason.INVALID_SPEC, str(error))
    if problems:
        return Condition(ConditionType.READY, False, problems[0].reason, "; ".join(p.message for p in problems))
    return Condition(ConditionType.READY, True, Reason.BACKENDS_REACHABLE,
                     f"Postgres {backends.server.host}:{backends.server.port} and the "
                     f"{store_class.vector_backend} backend meet the prerequisites")


def readiness_status(body: Mapping[str, Any], status: Mapping[str, Any], ready: Condition,
                     global_store: GlobalOutcome | None = None) -> dict[str, Any]:
    generation = body.get("metadata", {}).get("generation", 0)
    updates = [ready, *([global_store.condition] if global_store else [])]
    wanted: dict[str, Any] = {"observedGeneration": generation,
                              "conditions": conditions.merge_conditions(status.get("conditions"), updates, generation)}
    if global_store is not None:
        wanted["globalStore"] = {"indexes": global_store.indexes} if global_store.indexes else None
    return wanted


async def global_store(body: Mapping[str, Any], ready: Condition, registry: BackendRegistry,
                       secrets: Secrets) -> GlobalOutcome | None:
    """The class's global indexes made and kept as made (once the class is Ready); None for a class that has
    never declared any. Indexes a spec edit removes are kept, data and all: the condition says so."""
    store_class = StoreClass.from_body(body)
    recorded = (body.get("status") or {}).get("globalStore")
    if not store_class.global_indexes:
        if not recorded:
            return None
        return GlobalOutcome(Condition(ConditionType.GLOBAL_STORE_READY, False, "NoGlobalIndexes",
                                       "spec.globalStore lists no index: tenants' Secrets no longer name one; the "
                                       "global indexes made before are kept, with their data and writer logins"),
                             [], [])
    if not ready.status:
        return GlobalOutcome(Condition(ConditionType.GLOBAL_STORE_READY, False, ready.reason,
                                       f"waiting for the class to be Ready: {ready.message}"),
                             list((recorded or {}).get("indexes") or []), [])
    backends = await registry.for_class(store_class)
    return await globalstore.converge(store_class, body, backends.vector, secrets)


@dataclasses.dataclass(frozen=True)
class PoolFigures:
    """The class's shared indexes as Postgres or Pinecone has them, and the conditions they make."""

    shared_indexes: list[dict[str, Any]]
    updates: list[Condition]  # near capacity, vector quota

    def status(self, store_class: StoreClass, status: Mapping[str, Any]) -> tuple[dict[str, Any], list[Condition]]:
        """status.sharedIndexes, tenants and conditions merged into `status`; the conditions that flipped."""
        current = status.get("conditions")
        flipped = [update for update in self.updates if flips(current, update)]
        merged = conditions.merge_conditions(current, self.updates, store_class.generation)
        return ({"sharedIndexes": self.shared_indexes, "conditions": merged,
                 "tenants": sum(index["tenants"] for index in self.shared_indexes)}, flipped)


async def pool_figures(store_class: StoreClass, registry: BackendRegistry,
                       quota_blocked: tuple[int, Sequence[str]]) -> PoolFigures:
    """`quota_blocked`: how many tenants a vector plan limit blocks, and some of their names."""
    backends = await registry.for_class(store_class)
    pool = await backends.vector.shared_pool()
    capacity = store_class.shared_index_capacity
    crowded = [index for index in pool if index.tenants >= store_class.shared_index_alert_threshold * capacity]
    if crowded:
        names = ", ".join(f"{index.name} ({index.tenants}/{capacity})" for index in crowded)
        condition = Condition(ConditionType.SHARED_INDEXES_NEAR_CAPACITY, True, "AboveAlertThreshold",
                              f"{names} past {store_class.shared_index_alert_threshold:.0%} of capacity; new "
                              f"tenants go to the next index with room, or a new one")
    else:
        condition = Condition(ConditionType.SHARED_INDEXES_NEAR_CAPACITY, False, "BelowAlertThreshold",
                              f"every shared index is under {store_class.shared_index_alert_threshold:.0%} of capacity")
    return PoolFigures([index.to_status(capacity) for index in pool],
                       [condition, vector_quota_condition(*quota_blocked)])


def blocked_by_vector_quota(tenants: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tenants (namespace/name) that the vector service's plan limits keep from being provisioned."""
    def reason(tenant: Mapping[str, Any]) -> str | None:
        ready = conditions.find((tenant.get("status") or {}).get("conditions"), ConditionType.READY) or {}
        return ready.get("reason")
    return sorted(f"{t['metadata'].get('namespace')}/{t['metadata']['name']}" for t in tenants
                  if reason(t) == VectorQuotaExceeded.reason)


def vector_quota_condition(blocked: int, examples: Sequence[str]) -> Condition:
    """True while the vector service's plan limits keep some of the class's tenants from being provisioned."""
    if not blocked:
        return Condition(ConditionType.VECTOR_QUOTA_EXCEEDED, False, "WithinPlanLimits",
                         "no tenant is waiting for a plan limit")
    return Condition(ConditionType.VECTOR_QUOTA_EXCEEDED, True, VectorQuotaExceeded.reason,
                     f"the vector service refuses new indexes or namespaces (plan limit) for {blocked} "
                     f"tenant(s): {', '.join(sorted(examples)[:5])}")


def flips(current: Sequence[Mapping[str, Any]] | None, update: Condition) -> bool:
    previous = conditions.find(current, update.type)
    if previous is None:
        return update.status
    return previous.get("status") != ("True" if update.status else "False")
