"""A StoreClass's status when its tenants are split over shards (`tenantstore run --shards N`).

Each replica measures and verifies only its own tenants, so none alone knows a class's tenant-wide figures.
The holder of each shard writes that shard's part under the class's status.shards.<n> (a merge patch of its
own key: replicas never overwrite one another's parts), and the coordinator (the holder of shard 0) folds
every shard's part into the class's conditions and cost, as one replica would compute them from all tenants.
A part is as fresh as its holder's last pass; a shard that changes hands is reported by its new holder's
next pass.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from tenantstore import cost
from tenantstore.sharding import ShardView
from tenantstore.storeclass import blocked_by_vector_quota

Priced = Sequence[tuple[Mapping[str, Any], cost.Holding, Mapping[str, Any] | None]]  # (tenant, holding, status.cost)
EXAMPLES = 5  # tenants named per part and per condition; the counts are whole


class ClassUsage(NamedTuple):
    """What a usage pass tells of its class: the status.shards changes to write, the tenants a vector plan limit
    blocks (count, some names) and the parts of the class's cost, tenant-wide once folded."""

    shards_patch: dict[str, Any]
    quota_blocked: tuple[int, list[str]]
    cost_parts: list[Mapping[str, Any]]


def class_usage(view: ShardView, status: Mapping[str, Any] | None, waiting: Sequence[Mapping[str, Any]],
                priced: Priced | None, now: datetime.datetime) -> ClassUsage:
    """`waiting`: this replica's tenants of the class; `priced`: their costs (None for a class without pricing)."""
    if not view.sharded:
        blocked = blocked_by_vector_quota(waiting)
        return ClassUsage({}, (len(blocked), blocked), [cost.allocation([(h, c) for _, h, c in priced or ()], now)])
    parts = usage_parts(view, waiting, priced, now)
    folded = current(view, status, parts)
    return ClassUsage(status_changes(view, status, parts), quota_blocked(folded), cost_parts(folded))


def class_isolation(view: ShardView, status: Mapping[str, Any] | None,
                    broken: Sequence[tuple[Mapping[str, Any], str]]) -> tuple[dict[str, Any], list[str]]:
    """The status.shards changes to write, and what the class's isolation canaries found broken, tenant-wide."""
    if not view.sharded:
        return {}, [message for _, message in broken]
    parts = isolation_parts(view, broken)
    return status_changes(view, status, parts), isolation_broken(current(view, status, parts))


def by_shard(view: ShardView, bodies: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    groups: dict[int, list[Mapping[str, Any]]] = {shard: [] for shard in view.owned}
    for body in bodies:
        groups.setdefault(view.shard_of_tenant(body), []).append(body)
    return groups


def usage_parts(view: ShardView, waiting: Sequence[Mapping[str, Any]], costs: Priced | None,
                now: datetime.datetime) -> dict[int, dict[str, Any]]:
    """Per held shard: its tenants, those a vector plan limit blocks, and (priced classes) its part of the cost."""
    parts = {}
    cost_groups: dict[int, list[tuple[cost.Holding, Mapping[str, Any] | None]]] = {shard: [] for shard in view.owned}
    for body, holding, figures in costs or ():
        cost_groups.setdefault(view.shard_of_tenant(body), []).append((holding, figures))
    for shard, tenants in by_shard(view, waiting).items():
        if shard not in view.owned:
            continue
        blocked = blocked_by_vector_quota(tenants)
        parts[shard] = {"holder": view.identity, "tenants": len(tenants),
                        "vectorQuotaBlocked": len(blocked), "vectorQuotaBlockedExamples": blocked[:EXAMPLES]}
        group = cost_groups.get(shard, [])
        # None (a class without pricing) removes what a priced one reported.
        parts[shard]["cost"] = cost.allocation(group, now) if costs is not None else None
        parts[shard]["storage"] = cost.weights([holding for holding, _ in group]) if costs is not None else None
    return parts


def elsewhere(view: ShardView, status: Mapping[str, Any] | None) -> cost.Elsewhere | None:
    """The other shards' tenants, as last reported: with whom this replica's tenants share the class's costs
    (None without sharding: there are no others)."""
    if not view.sharded:
        return None
    parts = current(view, status, {})
    return cost.elsewhere_of([part["storage"] for shard, part in parts.items()
                              if shard not in view.owned and isinstance(part.get("storage"), Mapping)])


def isolation_parts(view: ShardView, broken: Sequence[tuple[Mapping[str, Any], str]]) -> dict[int, dict[str, Any]]:
    """Per held shard: what its tenants' isolation canaries found broken (empty: nothing)."""
    found: dict[int, list[str]] = {shard: [] for shard in view.owned}
    for body, message in broken:
        found.setdefault(view.shard_of_tenant(body), []).append(message)
    return {shard: {"holder": view.identity, "isolationBroken": messages[:EXAMPLES]}
            for shard, messages in found.items() if shard in view.owned}


def current(view: ShardView, status: Mapping[str, Any] | None,
            fresh: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Every shard's part as the coordinator folds it: as reported, with this replica's fresh parts over its own."""
    reported = ((status or {}).get("shards") or {})
    parts = {int(key): dict(part) for key, part in reported.items()
             if key.isdigit() and int(key) < view.shards and isinstance(part, Mapping)}
    for shard, part in fresh.items():
        parts[shard] = {**parts.get(shard, {}), **part}
    return parts


def status_changes(view: ShardView, status: Mapping[str, Any] | None,
                   fresh: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The merge patch of status.shards: the held shards' parts that changed, and (coordinator) the parts of
    shards that no longer exist (fewer shards than before)."""
    reported = ((status or {}).get("shards") or {})
    changes: dict[str, Any] = {}
    for shard, part in fresh.items():
        before = reported.get(str(shard)) or {}
        if any(before.get(key) != value for key, value in part.items()):
            changes[str(shard)] = dict(part)
    if view.coordinator:
        changes.update({key: None for key in reported if not key.isdigit() or int(key) >= view.shards})
    return {"shards": changes} if changes else {}


def quota_blocked(parts: Mapping[int, Mapping[str, Any]]) -> tuple[int, list[str]]:
    count = sum(int(part.get("vectorQuotaBlocked") or 0) for part in parts.values())
    examples = sorted(name for part in parts.values() for name in part.get("vectorQuotaBlockedExamples") or ())
    return count, examples[:EXAMPLES]


def isolation_broken(parts: Mapping[int, Mapping[str, Any]]) -> list[str]:
    return [message for _, part in sorted(parts.items()) for message in part.get("isolationBroken") or ()]


def cost_parts(parts: Mapping[int, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [part["cost"] for _, part in sorted(parts.items()) if isinstance(part.get("cost"), Mapping)]
