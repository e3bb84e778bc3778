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
