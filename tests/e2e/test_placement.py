"""Placement over a pool of shared indexes: never over capacity, even when tenants arrive all at once."""
from __future__ import annotations

from collections import Counter

from e2e_kit import condition, store_class, superuser

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for


def test_parallel_tenants_fill_the_pool_without_exceeding_capacity(env: LocalEnvironment, kubectl: Kubectl,
                                                                   operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(store_class("small-pool", vector={"backend": "pgvector",
                                                    "sharedIndex": {"capacity": 3, "alertThreshold": 0.6}}))
    manifests = [{"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStore",
                  "metadata": {"name": f"crowd-{i}", "namespace": namespace},
                  "spec": {"tenantId": f"crowd-{i}", "storeClassName": "small-pool",
                           "vector": {"dimension": 7, "metric": "euclidean"}}} for i in range(8)]
    # One apply with every object: the operator sees them all at once and reconciles them concurrently.
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": manifests})
    kubectl("wait", "--for=condition=Ready", "tenantstores", "--all", "-n", namespace, "--timeout=120s")

    stores = kubectl.get("tenantstores", namespace=namespace)["items"]
    placed = Counter(store["status"]["vectorStore"]["index"] for store in stores)
    assert placed == {"shared-7-euclidean-1": 3, "shared-7-euclidean-2": 3, "shared-7-euclidean-3": 2}
    with superuser(env) as conn:  # the truth in Postgres agrees with status
        partitions = dict(conn.execute("""
            SELECT p.relname, count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relkind = 'p' AND p.relname LIKE 'shared\\_7\\_euclidean\\_%' GROUP BY p.relname""").fetchall())
    assert partitions == {"shared_7_euclidean_1": 3, "shared_7_euclidean_2": 3, "shared_7_euclidean_3": 2}

    # Shared indexes belong to the class's database: other classes' tenants there show up too; dimension 7 is ours.
    def ours(body: dict) -> list[dict]:
        return [row for row in (body.get("status") or {}).get("sharedIndexes") or [] if row["dimension"] == 7]

    def pool_reported() -> dict | None:
        body = kubectl.get("storeclass", "small-pool")
        return body if sum(row["tenants"] for row in ours(body)) == 8 else None
    body = wait_for("StoreClass.status.sharedIndexes", pool_reported, timeout=30)
    assert ours(body) == [
        {"name": "shared-7-euclidean-1", "dimension": 7, "metric": "euclidean", "tenants": 3, "capacity": 3},
        {"name": "shared-7-euclidean-2", "dimension": 7, "metric": "euclidean", "tenants": 3, "capacity": 3},
        {"name": "shared-7-euclidean-3", "dimension": 7, "metric": "euclidean", "tenants": 2, "capacity": 3}]
    crowded = condition(body, "SharedIndexesNearCapacity")
    assert crowded["status"] == "True" and "shared-7-euclidean-1 (3/3)" in crowded["message"]
    assert "shared-7-euclidean-3 (2/3)" in crowded["message"]  # 2/3 is past the 60 % threshold
    events = kubectl("get", "events", "-A", "--field-selector", "reason=AboveAlertThreshold", "-o", "name")
    assert events.strip()

    kubectl("delete", "tenantstores", "--all", "-n", namespace, "--timeout=120s")
    kubectl("delete", "storeclass", "small-pool")
