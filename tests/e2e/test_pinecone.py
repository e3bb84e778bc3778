"""The operator on a Pinecone StoreClass: real SDK, local server that follows Pinecone's published API."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_kit import (condition, pinecone_vector, store_class, tenant_secret, tenant_store, wait_for_condition,
                     wait_until_gone)
from pinecone_server import PineconeTestServer

from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for


def tenant_namespaces(server: PineconeTestServer, index: str) -> set[str]:
    return set(server.namespaces(index)) - {"__default__"}  # every serverless index has the default namespace


@pytest.fixture(scope="module")
def pinecone(kubectl: Kubectl) -> Iterator[PineconeTestServer]:
    server = PineconeTestServer().start()
    kubectl.apply(store_class("cone", vector={**pinecone_vector(kubectl, server, "pinecone"),
                                              "sharedIndex": {"capacity": 2}}))
    yield server
    kubectl("delete", "storeclass", "cone")
    server.stop()
    server.check()  # no request outside the spec subset the server implements


def test_pinecone_tenants_are_placed_provisioned_and_removed(kubectl: Kubectl, operator: OperatorProcess,
                                                             pinecone: PineconeTestServer, namespace: str) -> None:
    for name, tier in (("pine-a", "free"), ("pine-b", "pro"), ("pine-c", "free"), ("pine-ent", "enterprise")):
        kubectl.apply(tenant_store(name, namespace, name, tier=tier, storeClassName="cone", dimension=8))
    kubectl("wait", "--for=condition=Ready", "tenantstores", "--all", "-n", namespace, "--timeout=120s")

    assert tenant_namespaces(pinecone, "shared-8-cosine-1") == {"pine-a", "pine-b"}  # capacity 2: the third
    assert tenant_namespaces(pinecone, "shared-8-cosine-2") == {"pine-c"}            # rolls over
    dedicated = pinecone.index("ts-pine-ent")
    assert dedicated is not None and dedicated["deletion_protection"] == "enabled"
    assert dedicated["tags"].get("tenant") == "pine-ent"

    secret = tenant_secret(kubectl, namespace, "pine-a-store")
    assert secret["vectorBackend"] == "pinecone" and secret["vectorNamespace"] == "pine-a"
    assert secret["vectorHost"] == pinecone.index(secret["vectorIndex"])["host"]
    assert "pineconeApiKey" not in secret  # the class does not expose the platform's key
    assert pinecone.api_key not in str(secret)
    status = kubectl.get("tenantstore", "pine-ent", namespace)["status"]
    assert status["vectorStore"]["backend"] == "pinecone" and status["vectorStore"]["index"] == "ts-pine-ent"

    expected = [("shared-8-cosine-1", 2, 2), ("shared-8-cosine-2", 1, 2)]

    def pool_listed() -> list | None:  # the usage job lists the pool; a pass may predate the last placement
        rows = (kubectl.get("storeclass", "cone").get("status") or {}).get("sharedIndexes") or []
        pool = [(row["name"], row["tenants"], row["capacity"]) for row in rows]
        return pool if pool == expected else None
    wait_for(f"the Pinecone pool in StoreClass status to be {expected}", pool_listed, timeout=30)

    kubectl("delete", "tenantstores", "--all", "-n", namespace, "--wait=false")
    for name in ("pine-a", "pine-b", "pine-c", "pine-ent"):
        wait_until_gone(kubectl, "tenantstore", name, namespace, timeout=120)
    assert pinecone.index("ts-pine-ent") is None  # protection turned off, index deleted, deletion awaited
    assert tenant_namespaces(pinecone, "shared-8-cosine-1") == tenant_namespaces(pinecone, "shared-8-cosine-2") == set()


def test_a_plan_limit_is_a_condition_not_a_crash_loop(kubectl: Kubectl, operator: OperatorProcess,
                                                      pinecone: PineconeTestServer, namespace: str) -> None:
    pinecone.max_serverless_indexes = len(pinecone.index_names())  # the plan is full
    try:
        kubectl.apply(tenant_store("pine-big", namespace, "pine-big", tier="enterprise", storeClassName="cone",
                                   dimension=8))
        body = wait_for_condition(kubectl, namespace, "pine-big", "Ready", "False", reason="VectorQuotaExceeded")
        assert body["status"]["phase"] == "Pending"

        def class_reports() -> dict | None:
            found = condition(kubectl.get("storeclass", "cone"), "VectorQuotaExceeded")
            return found if found.get("status") == "True" else None
        found = wait_for("the StoreClass's VectorQuotaExceeded condition", class_reports, timeout=30)
        assert f"{namespace}/pine-big" in found["message"]
    finally:
        pinecone.max_serverless_indexes = None
    wait_for_condition(kubectl, namespace, "pine-big", "Ready", "True", timeout=120)
    kubectl("delete", "tenantstore", "pine-big", "-n", namespace, "--timeout=120s")


def test_a_pinecone_tenant_is_exported_and_restored_identically(kubectl: Kubectl, operator: OperatorProcess,
                                                                 pinecone: PineconeTestServer, namespace: str) -> None:
    from pinecone import Pinecone  # the tenant's own client, with the Secret's coordinates

    kubectl.apply(tenant_store("cone-src", namespace, "cone-src", storeClassName="cone", dimension=8))
    wait_for_condition(kubectl, namespace, "cone-src", "Ready", "True")
    source = tenant_secret(kubectl, namespace, "cone-src-store")
    client = Pinecone(api_key=pinecone.api_key, host=pinecone.host)
    written = [{"id": f"m-{i:04}", "values": [float(i + 1)] + [0.25] * 7, "metadata": {"n": i, "kind": "episodic"}}
               for i in range(1_200)]
    for start in range(0, len(written), 500):  # Pinecone takes at most 1,000 records per upsert
        client.Index(host=source["vectorHost"]).upsert(vectors=written[start:start + 500],
                                                       namespace=source["vectorNamespace"])
    kubectl.apply({"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStoreExport",
                   "metadata": {"name": "cone-export", "namespace": namespace},
                   "spec": {"tenantStoreName": "cone-src", "destination": {"volume": {"path": "cone/src"}}}})
    wait_for("the Pinecone export to complete", lambda: ((kubectl.get("tenantstoreexport", "cone-export", namespace)
                                                          or {}).get("status") or {}).get("phase") == "Completed"
             or None, timeout=120)
    kubectl.apply(tenant_store("cone-dst", namespace, "cone-dst", storeClassName="cone", dimension=8,
                               restoreFrom={"volume": {"path": "cone/src"}}))
    restored = wait_for_condition(kubectl, namespace, "cone-dst", "Ready", "True", timeout=120)
    assert restored["status"]["restore"]["vectors"] == 1_200
    target = tenant_secret(kubectl, namespace, "cone-dst-store")
    fetched = client.Index(host=target["vectorHost"]).fetch(ids=[v["id"] for v in written[:100]],
                                                            namespace=target["vectorNamespace"])
    assert {key: (list(vector.values), dict(vector.metadata)) for key, vector in fetched.vectors.items()} == {
        v["id"]: (v["values"], v["metadata"]) for v in written[:100]}
    kubectl("delete", "tenantstores", "--all", "-n", namespace, "--timeout=120s")
