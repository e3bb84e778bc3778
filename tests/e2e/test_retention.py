"""Retention: vectors older than a tenant's retention are deleted by the periodic job, and only those."""
from __future__ import annotations

import json

import psycopg
from e2e_kit import superuser, tenant_secret, tenant_store, wait_for_condition
from test_observability import scrape, tenant_value

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for


def test_vectors_past_the_tenants_retention_are_deleted(env: LocalEnvironment, kubectl: Kubectl,
                                                         operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("ret-a", namespace, "ret-a", retention={"vectors": {"maxAge": "90d"}}))
    kubectl.apply(tenant_store("ret-b", namespace, "ret-b"))  # no retention: nothing of it goes
    secrets = {name: tenant_secret(kubectl, namespace, f"{name}-store")
               for name in ("ret-a", "ret-b") if wait_for_condition(kubectl, namespace, name, "Ready", "True")}
    for name, secret in secrets.items():
        with psycopg.connect(secret["uri"], autocommit=True) as conn, conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) VALUES (%s, %s, %s)",
                               [(secret["vectorNamespace"], f"{kind}-{i:03}", json.dumps([1.0, 0.0, 0.0]))
                                for kind in ("old", "new") for i in range(150)])
    with superuser(env) as conn:  # written long ago (the column's default is the time of the write)
        for secret in secrets.values():
            conn.execute(f"UPDATE {secret['vectorTable']} SET written_at = now() - interval '100 days' "
                         f"WHERE id LIKE 'old-%%'")

    done = wait_for("ret-a's expired vectors to be deleted", lambda: (
        (kubectl.get("tenantstore", "ret-a", namespace).get("status") or {}).get("retention") or {}).get(
        "vectorsExpired") == 150 or None, timeout=60)
    assert done
    for name, expected in (("ret-a", ["new"]), ("ret-b", ["new", "old"])):
        secret = secrets[name]
        with psycopg.connect(secret["uri"], autocommit=True) as conn:
            kinds = conn.execute(f"SELECT DISTINCT split_part(id, '-', 1) FROM {secret['vectorTable']} ORDER BY 1")
            assert [row[0] for row in kinds] == expected
    assert tenant_value(scrape(operator.metrics_url), "tenantstore_tenant_vectors_expired_total", "ret-a") == 150
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=VectorsExpired", "-o", "json")
    assert any("150 vectors older than 90 days" in item["message"] for item in json.loads(events)["items"])
    kubectl("delete", "tenantstores", "--all", "-n", namespace, "--timeout=90s")
