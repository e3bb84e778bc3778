"""What each tenant costs: variable charges from measured usage, plus its share of the class's fixed costs.

The rule (README "Cost and budgets"):
- variable, month to date: storage integrated over time (GB-hours at the size each measurement saw, priced per
  GB-month), queries (the growth of the tenant's daily statement count) and vectors written (the growth of its
  document count; replacing an existing id is not seen) since the meter started this month;
- fixed, as a monthly amount split by the current shares: a shared index's cost over the tenants in it by storage
  (equally while all are empty), a dedicated index or database carried whole by its tenant, the shared
  infrastructure over all the class's tenants by storage; month to date is that amount times the part of the
  month gone. What no tenant holds (an empty shared index the class keeps) stays the class's, unallocated, so the
  tenants' figures plus the unallocated part add up to the class's.
The meter lives in status.cost, so a restart resumes it; a new month starts it at zero.
"""
from __future__ import annotations

import calendar
import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from tenantstore import conditions
from tenantstore.api import ConditionType, Reason
from tenantstore.backends import Step
from tenantstore.conditions import Condition
from tenantstore.models import Budget, BudgetAction, Pricing
from tenantstore.quota import Usage

GB = 1e9
FIXED_COMPONENTS = ("sharedIndex", "dedicatedIndex", "dedicatedDatabase", "sharedInfrastructure")
VARIABLE_COMPONENTS = ("storage", "queries", "writes")


def month_of(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m")


def month_bounds(now: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime]:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(now.year, now.month)[1]
    return start, start + datetime.timedelta(days=days)


def month_fraction(now: datetime.datetime) -> float:
    start, end = month_bounds(now)
    return (now - start) / (end - start)


def hours(delta: datetime.timedelta) -> float:
    return max(delta.total_seconds(), 0.0) / 3600


def parse_time(raw: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Meter:
    """The month's usage so far, and what the last measurement saw (to take differences from)."""

    month: str
    since: datetime.datetime  # when metering of this month began
    measured_at: datetime.datetime
    gb_hours: float = 0.0
    queries: int = 0
    vectors_written: int = 0
    documents: int = 0
    daily_queries: int | None = None

    def advanced(self, documents: int, storage_bytes: int, daily_queries: int | None,
                 now: datetime.datetime) -> Meter:
        month_start = month_bounds(now)[0]
        new_month = month_of(now) != self.month
        interval = hours(now - max(self.measured_at, month_start))
        if daily_queries is None:
            queries = 0
        elif self.daily_queries is None or daily_queries < self.daily_queries:
            queries = daily_queries  # a new day (the count starts again) or the first figure
        else:
            queries = daily_queries - self.daily_queries
        base = Meter(month_of(now), month_start, now) if new_month else self
        return dataclasses.replace(
            base, measured_at=now, gb_hours=base.gb_hours + storage_bytes / GB * interval,
            queries=base.queries + queries, vectors_written=base.vectors_written + max(documents - self.documents, 0),
            documents=documents, daily_queries=daily_queries)

    @classmethod
    def started(cls, documents: int, daily_queries: int | None, now: datetime.datetime) -> Meter:
        """The first measurement: what came before it is not charged."""
        return cls(month_of(now), now, now, documents=documents, daily_queries=daily_queries)

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"since": format_time(self.since), "measuredAt": format_time(self.measured_at),
                                  "gbHours": round(self.gb_hours, 6), "queries": self.queries,
                                  "vectorsWritten": self.vectors_written, "documents": self.documents}
        if self.daily_queries is not None:
            status["dailyQueries"] = self.daily_queries
        return status

    @classmethod
    def from_status(cls, month: str, raw: Mapping[str, Any] | None) -> Meter | None:
        since, measured_at = parse_time((raw or {}).get("since")), parse_time((raw or {}).get("measuredAt"))
        if not raw or since is None or measured_at is None:
            return None
        return cls(month=month, since=since, measured_at=measured_at, gb_hours=float(raw.get("gbHours", 0)),
                   queries=int(raw.get("queries", 0)), vectors_written=int(raw.get("vectorsWritten", 0)),
                   documents=int(raw.get("documents", 0)), daily_queries=raw.get("dailyQueries"))


@dataclasses.dataclass(frozen=True)
class Holding:
    """What allocation needs to know of one tenant."""

    tenant_id: str
    storage_bytes: int
    shared_index: str | None  # the shared vector index it has a namespace in
    dedicated_index: bool
    dedicated_database: bool


@dataclasses.dataclass(frozen=True)
class Elsewhere:
    """The storage bytes and tenant count of the class's tenants that an allocation does not hold (the other
    shards', when a class's tenants are split over replicas): per shared index, and in the whole class."""

    by_index: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    everyone: tuple[int, int] = (0, 0)


def split(amount: float, weights: Mapping[str, int], elsewhere: tuple[int, int] = (0, 0)) -> dict[str, float]:
    """The keys' part of `amount`, shared in proportion to their weights with `elsewhere` (its total weight and
    count); equally when every weight is 0."""
    if not weights:
        return {}
    total = sum(weights.values()) + elsewhere[0]
    if total <= 0:
        return {key: amount / (len(weights) + elsewhere[1]) for key in weights}
    return {key: amount * weight / total for key, weight in weights.items()}


def allocate(pricing: Pricing, holdings: Sequence[Holding],
             elsewhere: Elsewhere | None = None) -> dict[str, dict[str, float]]:
    """tenant id -> fixed component -> its monthly amount."""
    elsewhere = elsewhere or Elsewhere()
    shares: dict[str, dict[str, float]] = {h.tenant_id: dict.fromkeys(FIXED_COMPONENTS, 0.0) for h in holdings}
    by_index: dict[str, dict[str, int]] = {}
    for holding in holdings:
        if holding.shared_index:
            by_index.setdefault(holding.shared_index, {})[holding.tenant_id] = holding.storage_bytes
        if holding.dedicated_index:
            shares[holding.tenant_id]["dedicatedIndex"] = pricing.dedicated_index
        if holding.dedicated_database:
            shares[holding.tenant_id]["dedicatedDatabase"] = pricing.dedicated_database
    for index, tenants in by_index.items():
        for tenant_id, amount in split(pricing.shared_index, tenants, elsewhere.by_index.get(index, (0, 0))).items():
            shares[tenant_id]["sharedIndex"] = amount
    everyone = {h.tenant_id: h.storage_bytes for h in holdings}
    for tenant_id, amount in split(pricing.shared_infrastructure, everyone, elsewhere.everyone).items():
        shares[tenant_id]["sharedInfrastructure"] = amount
    return shares


def weights(holdings: Sequence[Holding]) -> dict[str, Any]:
    """What `Elsewhere` needs of these holdings, as a shard reports it: storage bytes and tenants, in all and
    per shared index."""
    by_index: dict[str, list[int]] = {}
    for held in holdings:
        if held.shared_index:
            entry = by_index.setdefault(held.shared_index, [0, 0])
            entry[0] += held.storage_bytes
            entry[1] += 1
    return {"storageBytes": sum(h.storage_bytes for h in holdings), "tenants": len(holdings), "byIndex": by_index}


def elsewhere_of(reported: Sequence[Mapping[str, Any]]) -> Elsewhere:
    """The sum of other shards' `weights`."""
    by_index: dict[str, tuple[int, int]] = {}
    total = count = 0
    for part in reported:
        total, count = total + int(part.get("storageBytes", 0)), count + int(part.get("tenants", 0))
        for index, (size, tenants) in (part.get("byIndex") or {}).items():
            before = by_index.get(index, (0, 0))
            by_index[index] = (before[0] + int(size), before[1] + int(tenants))
    return Elsewhere(by_index=by_index, everyone=(total, count))


@dataclasses.dataclass(frozen=True)
class TenantCost:
    """Month to date by component, and the month projected, in the class's currency."""

    currency: str
    month: str
    components: Mapping[str, float]
    projected: float
    fixed_monthly: float

    @property
    def month_to_date(self) -> float:
        return sum(self.components.values())

    @classmethod
    def of(cls, pricing: Pricing, fixed: Mapping[str, float], meter: Meter, now: datetime.datetime) -> TenantCost:
        fraction = month_fraction(now)
        start, end = month_bounds(now)
        month_hours = hours(end - start)
        components = {name: amount * fraction for name, amount in fixed.items()}
        components["storage"] = meter.gb_hours / month_hours * pricing.per_gb_month
        components["queries"] = meter.queries / 1000 * pricing.per_1k_queries
        components["writes"] = meter.vectors_written / 1000 * pricing.per_1k_vectors_written
        variable = sum(components[name] for name in VARIABLE_COMPONENTS)
        metered = hours(now - meter.since)
        projected = sum(fixed.values()) + (variable * month_hours / metered if metered > 0 else variable)
        return cls(pricing.currency, meter.month, components, projected, sum(fixed.values()))

    def to_status(self, meter: Meter, budget: BudgetVerdict | None) -> dict[str, Any]:
        status: dict[str, Any] = {
            "currency": self.currency, "month": self.month, "monthToDate": money(self.month_to_date),
            "projected": money(self.projected), "fixedMonthly": money(self.fixed_monthly),
            "components": {name: money(amount) for name, amount in self.components.items()},
            "meter": meter.to_status()}
        if budget is not None:
            status["budget"] = budget.to_status()
        return status


def money(amount: float) -> float:
    return round(amount, 4)


@dataclasses.dataclass(frozen=True)
class BudgetVerdict:
    budget: Budget
    used: float
    currency: str
    crossed: tuple[float, ...]  # thresholds reached this month

    @classmethod
    def judge(cls, budget: Budget, cost: TenantCost) -> BudgetVerdict | None:
        if not budget.monthly_limit:
            return None
        ratio = cost.month_to_date / budget.monthly_limit
        return cls(budget, cost.month_to_date, cost.currency, tuple(t for t in budget.thresholds if ratio >= t))

    @property
    def ratio(self) -> float:
        return self.used / self.budget.monthly_limit if self.budget.monthly_limit else 0.0

    @property
    def reached(self) -> bool:
        return self.ratio >= 1.0

    @property
    def blocks_writes(self) -> bool:
        return self.reached and self.budget.action is BudgetAction.BLOCK

    def figures(self) -> str:
        return f"{self.currency} {self.used:.2f} of {self.budget.monthly_limit:.2f} ({self.ratio:.0%})"

    def condition(self) -> Condition:
        if self.blocks_writes:
            return Condition(ConditionType.OVER_BUDGET, True, Reason.BUDGET_BLOCKED,
                             f"month to date {self.figures()}: writes are refused until the next month or a higher "
                             f"budget (reads and deletes keep working)")
        if self.reached:
            return Condition(ConditionType.OVER_BUDGET, True, Reason.BUDGET_REACHED,
                             f"month to date {self.figures()} (budget action Alert: reported, not blocked)")
        return Condition(ConditionType.OVER_BUDGET, False, Reason.WITHIN_BUDGET, f"month to date {self.figures()}")

    def to_status(self) -> dict[str, Any]:
        return {"monthlyLimit": self.budget.monthly_limit, "action": self.budget.action.value,
                "usedRatio": round(self.ratio, 4), "thresholdsCrossed": list(self.crossed)}


def budget_blocks_writes(status: Mapping[str, Any] | None) -> bool:
    """Whether the last cost measurement left writes blocked by the budget (the measurement job decides)."""
    found = conditions.find((status or {}).get("conditions"), ConditionType.OVER_BUDGET) or {}
    return found.get("reason") == Reason.BUDGET_BLOCKED


def newly_crossed(previous: Mapping[str, Any] | None, verdict: BudgetVerdict, month: str) -> list[float]:
    """Thresholds reached now that this month's status had not recorded yet (one Event each)."""
    before = set() if (previous or {}).get("month") != month else \
        set(((previous or {}).get("budget") or {}).get("thresholdsCrossed") or ())
    return [threshold for threshold in verdict.crossed if threshold not in before]


def due(previous: Mapping[str, Any] | None, now: datetime.datetime, interval: float) -> bool:
    """A tenant's cost is brought up to date every `interval` seconds, and at once in a new month."""
    if not previous or previous.get("month") != month_of(now):
        return True
    measured = parse_time(((previous.get("meter") or {}).get("measuredAt")))
    return measured is None or (now - measured).total_seconds() >= interval


@dataclasses.dataclass(frozen=True)
class Priced:
    """One tenant's cost after a measurement: status.cost (new when it was due, else as it was), the
    OverBudget condition and Events to post when there is news."""

    status: Mapping[str, Any] | None
    condition: Condition | None = None
    events: tuple[Step, ...] = ()
    blocks_writes: bool = False
    warning: bool = False


def price(pricing: Pricing, budget: Budget, fixed: Mapping[str, float], status: Mapping[str, Any], usage: Usage,
          now: datetime.datetime, interval: float) -> Priced:
    previous = status.get("cost")
    if not due(previous, now, interval):
        return Priced(previous, blocks_writes=budget_blocks_writes(status))
    meter = Meter.from_status(previous["month"], previous.get("meter")) if previous else None
    meter = meter.advanced(usage.documents, usage.storage_bytes, usage.daily_queries, now) if meter \
        else Meter.started(usage.documents, usage.daily_queries, now)
    figures = TenantCost.of(pricing, fixed, meter, now)
    verdict = BudgetVerdict.judge(budget, figures)
    before = conditions.find(status.get("conditions"), ConditionType.OVER_BUDGET)
    if verdict is None:  # no budget (any more): a condition left from one says so
        cleared = Condition(ConditionType.OVER_BUDGET, False, Reason.WITHIN_BUDGET, "no monthly budget is set")
        return Priced(figures.to_status(meter, None), cleared if before else None)
    condition = verdict.condition()
    events = [Step("BudgetThresholdCrossed", f"{threshold:.0%} of the monthly budget used: {verdict.figures()}")
              for threshold in newly_crossed(previous, verdict, figures.month)]
    flipped = (before or {}).get("reason") != condition.reason
    if flipped and (before or condition.status):
        events.append(Step(condition.reason, condition.message))
    return Priced(figures.to_status(meter, verdict), condition, tuple(events), verdict.blocks_writes,
                  warning=any(step.reason != Reason.WITHIN_BUDGET for step in events))


def unpriced(status: Mapping[str, Any]) -> Priced:
    """A class without spec.pricing (any more): no figures, and no budget verdict left standing."""
    if not conditions.find(status.get("conditions"), ConditionType.OVER_BUDGET):
        return Priced(None)
    return Priced(None, Condition(ConditionType.OVER_BUDGET, False, Reason.WITHIN_BUDGET,
                                  "the StoreClass has no spec.pricing: costs are not computed"))


def allocation(measured: Sequence[tuple[Holding, Mapping[str, Any] | None]], now: datetime.datetime) -> dict[str, Any]:
    """Some tenants' part of their class's cost (one shard's, when a class's tenants are split over replicas)."""
    month = month_of(now)
    current = [figures for _, figures in measured if figures and figures.get("month") == month]
    as_of = max((parse_time((f.get("meter") or {}).get("measuredAt")) or now for f in current), default=None)
    return {"month": month, "tenants": len(current),
            "dedicatedIndexes": sum(held.dedicated_index for held, _ in measured),
            "dedicatedDatabases": sum(held.dedicated_database for held, _ in measured),
            "allocatedFixedMonthly": sum(float(f.get("fixedMonthly", 0)) for f in current),
            "monthToDate": sum(float(f["monthToDate"]) for f in current),
            "projected": sum(float(f["projected"]) for f in current),
            "asOf": format_time(as_of) if as_of is not None else None}


def summarize(pricing: Pricing, parts: Sequence[Mapping[str, Any]], shared_indexes: int,
              now: datetime.datetime) -> dict[str, Any]:
    """The class's cost from its tenants' parts: what no tenant carries (empty shared indexes, the part of the
    shared infrastructure not allocated) is the class's unallocated cost."""
    month = month_of(now)
    fixed_monthly = (pricing.shared_index * shared_indexes + pricing.shared_infrastructure
                     + pricing.dedicated_index * sum(int(part["dedicatedIndexes"]) for part in parts)
                     + pricing.dedicated_database * sum(int(part["dedicatedDatabases"]) for part in parts))
    current = [part for part in parts if part.get("month") == month]
    unallocated = max(fixed_monthly - sum(float(part["allocatedFixedMonthly"]) for part in current), 0.0)
    # As of the tenants' last cost update, so the class's figures move only when theirs do.
    as_of = max((parse_time(part.get("asOf")) for part in current if part.get("asOf")), default=now) or now
    return {"currency": pricing.currency, "month": month, "asOf": format_time(as_of),
            "monthToDate": money(sum(float(part["monthToDate"]) for part in current)
                                 + unallocated * month_fraction(as_of)),
            "projected": money(sum(float(part["projected"]) for part in current) + unallocated),
            "fixedMonthly": money(fixed_monthly), "unallocatedMonthly": money(unallocated),
            "tenants": sum(int(part["tenants"]) for part in current)}
