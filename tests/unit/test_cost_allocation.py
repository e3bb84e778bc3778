"""Cost: the meter over a month (restarts, day and month boundaries), the allocation rule and that it adds up to
the class's costs, the projection, and budgets (thresholds once each, Block, a budget removed)."""
from __future__ import annotations

import datetime

import pytest

from tenantstore import cost
from tenantstore.api import ConditionType, Reason
from tenantstore.models import Budget, BudgetAction, Pricing
from tenantstore.quota import Usage

UTC = datetime.timezone.utc
PRICING = Pricing(currency="EUR", shared_index=100, dedicated_index=200, dedicated_database=100,
                  shared_infrastructure=500, per_gb_month=10, per_1k_queries=2, per_1k_vectors_written=1)
GIB = 10**9


def at(day: int, hour: int = 0, month: int = 12) -> datetime.datetime:
    return datetime.datetime(2026, month, day, hour, tzinfo=UTC)


def test_the_meter_integrates_storage_and_counts_growth_across_days_and_restarts() -> None:
    meter = cost.Meter.started(documents=100, daily_queries=40, now=at(1))
    meter = meter.advanced(documents=150, storage_bytes=2 * GIB, daily_queries=90, now=at(1, 12))
    assert (meter.gb_hours, meter.queries, meter.vectors_written) == (24.0, 50, 50)
    # A restart: the meter comes back from status and goes on where it was.
    meter = cost.Meter.from_status("2026-12", meter.to_status())
    meter = meter.advanced(documents=120, storage_bytes=1 * GIB, daily_queries=10, now=at(2, 6))  # a new day
    assert (meter.gb_hours, meter.queries, meter.vectors_written) == (42.0, 60, 50)  # deletes write nothing
    assert meter.since == at(1)


def test_a_new_month_starts_the_meter_at_zero_from_the_month_boundary() -> None:
    meter = cost.Meter.started(documents=10, daily_queries=0, now=at(31, 20)).advanced(
        documents=20, storage_bytes=GIB, daily_queries=5, now=at(31, 22))
    assert meter.gb_hours == 2.0
    january = meter.advanced(documents=25, storage_bytes=GIB, daily_queries=3, now=datetime.datetime(2027, 1, 1, 3,
                                                                                                        tzinfo=UTC))
    assert january.month == "2027-01" and january.since == datetime.datetime(2027, 1, 1, tzinfo=UTC)
    assert (january.gb_hours, january.queries, january.vectors_written) == (3.0, 3, 5)  # only hours of January


HOLDINGS = [cost.Holding("a", 3 * GIB, "shared-384-cosine-1", False, False),
            cost.Holding("b", 1 * GIB, "shared-384-cosine-1", False, False),
            cost.Holding("c", 4 * GIB, None, True, True)]


def test_fixed_costs_are_split_by_the_documented_rule() -> None:
    shares = cost.allocate(PRICING, HOLDINGS)
    assert shares["a"] == {"sharedIndex": 75.0, "dedicatedIndex": 0.0, "dedicatedDatabase": 0.0,
                           "sharedInfrastructure": 187.5}
    assert shares["b"]["sharedIndex"] == 25.0 and shares["b"]["sharedInfrastructure"] == 62.5
    assert shares["c"] == {"sharedIndex": 0.0, "dedicatedIndex": 200.0, "dedicatedDatabase": 100.0,
                           "sharedInfrastructure": 250.0}
    empty = cost.allocate(PRICING, [cost.Holding("x", 0, "i", False, False), cost.Holding("y", 0, "i", False, False)])
    assert empty["x"]["sharedIndex"] == empty["y"]["sharedIndex"] == 50.0  # all empty: equal shares


def test_the_tenants_figures_and_the_unallocated_part_add_up_to_the_class() -> None:
    shares = cost.allocate(PRICING, HOLDINGS)
    start, now = at(1), at(16)  # half of December gone
    figures = []
    for held, documents in zip(HOLDINGS, (1000, 200, 5000)):
        meter = cost.Meter.started(0, 0, start)
        status = {"cost": cost.TenantCost.of(PRICING, shares[held.tenant_id], meter, start).to_status(meter, None)}
        priced = cost.price(PRICING, Budget(), shares[held.tenant_id], status,
                            Usage(documents=documents, storage_bytes=held.storage_bytes, daily_queries=500), now, 0)
        figures.append(priced.status)
    # Two shared indexes in the class's pool, one of them empty: its 100 a month is nobody's.
    summary = cost.summarize(PRICING, [cost.allocation(list(zip(HOLDINGS, figures)), now)], shared_indexes=2, now=now)
    assert summary["fixedMonthly"] == 2 * 100 + 500 + 200 + 100
    assert summary["unallocatedMonthly"] == 100
    fraction = cost.month_fraction(now)
    variable = sum(f["components"]["storage"] + f["components"]["queries"] + f["components"]["writes"]
                   for f in figures)
    assert summary["monthToDate"] == pytest.approx(1000 * fraction + variable, abs=1e-3)
    assert summary["monthToDate"] == pytest.approx(sum(f["monthToDate"] for f in figures) + 100 * fraction, abs=1e-3)
    a = figures[0]
    # a: 3 GB for 15 days of 31 at 10/GB-month, 500 queries at 2/1k, 1,000 vectors at 1/1k.
    assert a["components"]["storage"] == pytest.approx(3 * 10 * 15 / 31, abs=1e-3)
    assert (a["components"]["queries"], a["components"]["writes"]) == (1.0, 1.0)
    assert a["projected"] == pytest.approx(262.5 + (3 * 10 * 15 / 31 + 2) * 31 / 15, abs=1e-3)


def budget_run(budget: Budget, documents_by_day: list[int]) -> list[cost.Priced]:
    """A tenant whose only charge is its vectors (1 per 1,000), measured daily through December."""
    pricing = Pricing(per_1k_vectors_written=1)
    status: dict = {"conditions": []}
    meter = cost.Meter.started(0, None, at(1))
    status["cost"] = cost.TenantCost.of(pricing, {}, meter, at(1)).to_status(meter, None)
    results = []
    for day, documents in enumerate(documents_by_day, start=2):
        priced = cost.price(pricing, budget, {}, status, Usage(documents=documents), at(day), 0)
        results.append(priced)
        status["cost"] = priced.status
        if priced.condition:
            status["conditions"] = [{"type": priced.condition.type, "status": str(priced.condition.status),
                                     "reason": priced.condition.reason}]
    return results


def test_each_threshold_is_announced_once_and_a_block_budget_blocks_writes() -> None:
    runs = budget_run(Budget(monthly_limit=10, action=BudgetAction.BLOCK), [5000, 8500, 8600, 9600, 10000, 10000])
    reasons = [[step.reason for step in run.events] for run in runs]
    assert reasons == [[], ["BudgetThresholdCrossed"], [], ["BudgetThresholdCrossed", "BudgetThresholdCrossed"],
                       [Reason.BUDGET_BLOCKED], []]
    assert [run.blocks_writes for run in runs] == [False, False, False, False, True, True]
    assert "80% of the monthly budget used: USD 8.50 of 10.00 (85%)" == runs[1].events[0].message
    assert runs[4].condition is not None and runs[4].condition.type == ConditionType.OVER_BUDGET
    assert runs[4].status["budget"] == {"monthlyLimit": 10.0, "action": "Block", "usedRatio": 1.0,
                                        "thresholdsCrossed": [0.8, 0.9, 0.95]}


def test_an_alert_budget_reports_without_blocking() -> None:
    runs = budget_run(Budget(monthly_limit=1, thresholds=(0.5,)), [2000])
    assert runs[0].condition.reason == Reason.BUDGET_REACHED and not runs[0].blocks_writes
    assert [step.reason for step in runs[0].events] == ["BudgetThresholdCrossed", Reason.BUDGET_REACHED]


def test_a_tier_budget_is_overridden_field_by_field() -> None:
    tier = Budget(monthly_limit=50, action=BudgetAction.BLOCK)
    assert tier.overridden_by({"monthlyLimit": 80}) == Budget(80.0, (0.8, 0.9, 0.95), BudgetAction.BLOCK)
    assert tier.overridden_by({"thresholds": [0.95, 0.5]}).thresholds == (0.5, 0.95)
    assert tier.overridden_by({"action": "Alert"}).action is BudgetAction.ALERT


def test_cost_is_brought_up_to_date_on_its_interval_and_in_a_new_month() -> None:
    previous = {"month": "2026-12", "meter": {"measuredAt": "2026-12-05T10:00:00Z"}}
    assert not cost.due(previous, datetime.datetime(2026, 12, 5, 10, 10, tzinfo=UTC), 900)
    assert cost.due(previous, datetime.datetime(2026, 12, 5, 10, 15, tzinfo=UTC), 900)
    assert cost.due(previous, datetime.datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC), 900)
    assert cost.due(None, at(5), 900)


def test_a_class_without_pricing_leaves_no_budget_verdict_standing() -> None:
    blocked = {"conditions": [{"type": ConditionType.OVER_BUDGET, "status": "True", "reason": Reason.BUDGET_BLOCKED}],
               "cost": {"monthToDate": 12.0}}
    cleared = cost.unpriced(blocked)
    assert cleared.status is None and not cleared.blocks_writes
    assert cleared.condition is not None and cleared.condition.reason == Reason.WITHIN_BUDGET
    assert cost.unpriced({"conditions": []}) == cost.Priced(None)


def test_status_cost_is_replaced_not_merged() -> None:
    from tenantstore.kube import replacing
    old = {"monthToDate": 3.0, "budget": {"monthlyLimit": 10}, "meter": {"gbHours": 1.0, "dailyQueries": 4}}
    new = {"monthToDate": 4.0, "meter": {"gbHours": 2.0}}
    assert replacing(old, new) == {"monthToDate": 4.0, "budget": None, "meter": {"gbHours": 2.0, "dailyQueries": None}}
    assert replacing(old, None) is None
