"""A StoreClass's health: can tenants be made with it? (Ready condition, kstatus style.)"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantstore import conditions
from tenantstore.conditions import Condition
from tenantstore.errors import ReconcileError
from tenantstore.models import InvalidResource, StoreClass
from tenantstore.registry import BackendRegistry


async def check_store_class(body: Mapping[str, Any], status: Mapping[str, Any] | None,
                            registry: BackendRegistry) -> dict[str, Any]:
    generation = body.get("metadata", {}).get("generation", 0)
    try:
        store_class = StoreClass.from_body(body)
        backends = await registry.for_class(store_class)
        problems = await backends.relational.preflight() + await backends.vector.preflight()
    except ReconcileError as error:
        ready = Condition("Ready", False, error.reason, str(error))
    except InvalidResource as error:
        ready = Condition("Ready", False, "InvalidSpec", str(error))
    else:
        if problems:
            ready = Condition("Ready", False, problems[0].reason, "; ".join(p.message for p in problems))
        else:
            ready = Condition("Ready", True, "BackendsReachable",
                              f"Postgres {backends.server.host}:{backends.server.port} and the "
                              f"{store_class.vector_backend} backend meet the prerequisites")
    return {
        "observedGeneration": generation,
        "conditions": conditions.merge_conditions((status or {}).get("conditions"), [ready], generation),
    }


async def pool_status(store_class: StoreClass, status: Mapping[str, Any] | None, registry: BackendRegistry
                      ) -> tuple[dict[str, Any], Condition | None]:
    """status.sharedIndexes and the near-capacity condition; the condition is returned when it flips."""
    backends = await registry.for_class(store_class)
    pool = await backends.vector.shared_pool()
    capacity = store_class.shared_index_capacity
    crowded = [index for index in pool if index.tenants >= store_class.shared_index_alert_threshold * capacity]
    if crowded:
        names = ", ".join(f"{index.name} ({index.tenants}/{capacity})" for index in crowded)
        condition = Condition("SharedIndexesNearCapacity", True, "AboveAlertThreshold",
                              f"{names} past {store_class.shared_index_alert_threshold:.0%} of capacity; new "
                              f"tenants go to the next index with room, or a new one")
    else:
        condition = Condition("SharedIndexesNearCapacity", False, "BelowAlertThreshold",
                              f"every shared index is under {store_class.shared_index_alert_threshold:.0%} of capacity")
    current = (status or {}).get("conditions")
    merged = conditions.merge_conditions(current, [condition], store_class.generation)
    previous = conditions.find(current, condition.type)
    flipped = previous is not None and previous.get("status") != ("True" if condition.status else "False") \
        or previous is None and condition.status
    return ({"sharedIndexes": [index.to_status(capacity) for index in pool], "conditions": merged,
             "tenants": sum(index.tenants for index in pool)},
            condition if flipped else None)
