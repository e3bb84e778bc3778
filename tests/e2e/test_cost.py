"""Cost and budgets end to end: a priced StoreClass, two tenants charged for what they write, the class's figures
equal to theirs plus what no tenant holds, a Block budget that stops writes (Postgres and the Secret) at the limit,
and a raised budget that gives them back."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import tenantstore_client as ts
from e2e_kit import condition, store_class, tenant_secret, tenant_store, wait_for_condition

from tenantstore import cost
from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for

# A vector costs 1 (1,000 per 1,000 written); the fixed costs are small enough that at most 0.93 of them is
# charged by the month's end, so the budget figures below hold on any day of the month.
PRICING = {"currency": "EUR", "fixedMonthly": {"sharedIndex": 0.31, "sharedInfrastructure": 0.62},
           "per1kVectorsWritten": 1000}
BUDGET = {"monthlyLimit": 10, "action": "Block"}


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[str]:
    out = kubectl("get", "events", "-n", namespace, "--field-selector", f"reason={reason}",
                  "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}")
    return [line for line in out.splitlines() if line]


def cost_of(kubectl: Kubectl, namespace: str, name: str) -> dict:
    return (kubectl.get("tenantstore", name, namespace)["status"] or {}).get("cost") or {}


def write(store: ts.TenantStore, prefix: str, count: int) -> None:
    store.upsert([ts.Vector(f"{prefix}-{i}", [1.0, float(i), 0.5]) for i in range(count)])


def wait_for_written(kubectl: Kubectl, namespace: str, name: str, vectors: int) -> dict:
    return wait_for(f"{name}'s meter to count {vectors} vectors written",
                    lambda: (c := cost_of(kubectl, namespace, name)) and c["meter"]["vectorsWritten"] == vectors and c,
                    timeout=60)


@pytest.fixture
def priced_class(kubectl: Kubectl) -> Iterator[str]:
    kubectl.apply(store_class("priced", pricing=PRICING, tiers={"free": {"budget": BUDGET}}))
    yield "priced"
    kubectl("delete", "storeclass", "priced", "--ignore-not-found")


def test_tenants_are_charged_for_what_they_write_and_a_block_budget_stops_writes(
        kubectl: Kubectl, operator: OperatorProcess, namespace: str, priced_class: str) -> None:
    for name in ("spender", "saver"):
        kubectl.apply(tenant_store(name, namespace, name, storeClassName=priced_class))
    for name in ("spender", "saver"):
        wait_for_condition(kubectl, namespace, name, "Ready", "True")
        # The meter starts at the first measurement: nothing is charged for what came before it.
        wait_for(f"{name}'s cost to be metered", lambda: cost_of(kubectl, namespace, name).get("meter"), timeout=60)
    spender = ts.connect(tenant_secret(kubectl, namespace, "spender-store"))
    saver = ts.connect(tenant_secret(kubectl, namespace, "saver-store"))

    write(spender, "a", 5)
    write(saver, "s", 2)
    figures = wait_for_written(kubectl, namespace, "spender", 5)
    assert figures["currency"] == "EUR" and figures["components"]["writes"] == 5.0
    assert 5.0 <= figures["monthToDate"] < 5.94 and figures["budget"]["thresholdsCrossed"] == []
    assert condition(kubectl.get("tenantstore", "spender", namespace), "OverBudget")["reason"] == "WithinBudget"
    wait_for_written(kubectl, namespace, "saver", 2)

    # The class's figures are the tenants' plus what no tenant holds, from the same measurement.
    def class_cost_settled() -> dict | None:
        summary = (kubectl.get("storeclass", priced_class).get("status") or {}).get("cost") or {}
        tenants = [cost_of(kubectl, namespace, name) for name in ("spender", "saver")]
        if not summary or any(t["meter"]["measuredAt"] != summary.get("asOf") for t in tenants):
            return None
        return {"class": summary, "tenants": tenants}
    settled = wait_for("the StoreClass cost to include both tenants' latest figures", class_cost_settled, timeout=60)
    summary, tenants = settled["class"], settled["tenants"]
    shared_indexes = len(kubectl.get("storeclass", priced_class)["status"]["sharedIndexes"])
    assert summary["fixedMonthly"] == pytest.approx(0.31 * shared_indexes + 0.62)
    assert sum(t["fixedMonthly"] for t in tenants) + summary["unallocatedMonthly"] == pytest.approx(
        summary["fixedMonthly"], abs=1e-3)
    fraction = cost.month_fraction(cost.parse_time(summary["asOf"]))
    assert summary["monthToDate"] == pytest.approx(
        sum(t["monthToDate"] for t in tenants) + summary["unallocatedMonthly"] * fraction, abs=2e-3)
    assert summary["tenants"] == 2

    write(spender, "b", 3)
    wait_for("a BudgetThresholdCrossed event at 80%",
             lambda: any(m.startswith("80% of the monthly budget used") for m in
                         events(kubectl, namespace, "BudgetThresholdCrossed")), timeout=60)
    write(spender, "c", 2)  # under the limit still: allowed, and it takes the month to the limit
    body = wait_for_condition(kubectl, namespace, "spender", "OverBudget", "True", reason="BudgetBlocked")
    assert "writes are refused" in condition(body, "OverBudget")["message"]
    assert tenant_secret(kubectl, namespace, "spender-store").get("writesBlocked") == "true"
    assert any("EUR 10." in m for m in events(kubectl, namespace, "BudgetBlocked"))
    with pytest.raises(ts.WritesBlocked, match="Postgres refused"):  # the Secret this client read said nothing
        write(spender, "d", 1)
    assert spender.count() == 10  # reads work
    write(saver, "t", 1)  # the neighbour's budget is its own

    kubectl("patch", "tenantstore", "spender", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"budget": {"monthlyLimit": 100}}}')
    wait_for_condition(kubectl, namespace, "spender", "OverBudget", "False", reason="WithinBudget")
    wait_for("the Secret to stop saying writesBlocked",
             lambda: "writesBlocked" not in tenant_secret(kubectl, namespace, "spender-store"), timeout=60)
    write(spender, "e", 1)
    assert cost_of(kubectl, namespace, "spender")["budget"]["monthlyLimit"] == 100
    spender.close()
    saver.close()
