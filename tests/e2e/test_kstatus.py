"""cli-utils' kstatus (what Flux's `wait: true` and kpt use) on TenantStores the running operator wrote."""
from __future__ import annotations

import json

from e2e_kit import kstatus, store_class, tenant_store, wait_for_condition, wait_until_gone

from tenantstore_dev.environment import OPERATOR_NAMESPACE, Kubectl, OperatorProcess, wait_for

HOLD = "test.tenancy.dev/hold"


def test_a_ready_tenantstore_is_current(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("ready", namespace, "kstatus-ready"))
    wait_for_condition(kubectl, namespace, "ready", "Ready", "True")
    assert kstatus(kubectl, "tenantstore", "ready", namespace) == "Current"
    kubectl("delete", "tenantstore", "ready", "-n", namespace, "--timeout=60s")
    assert kstatus(kubectl, "tenantstore", "ready", namespace) == "NotFound"


def test_a_missing_store_class_is_in_progress(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    # Transient: the tenant is provisioned by itself once the class appears, so a waiting Flux keeps waiting.
    kubectl.apply(tenant_store("waiting", namespace, "kstatus-waiting", storeClassName="kstatus-no-such-class"))
    wait_for_condition(kubectl, namespace, "waiting", "Ready", "False", reason="StoreClassNotFound")
    assert kstatus(kubectl, "tenantstore", "waiting", namespace) == "InProgress"
    kubectl("delete", "tenantstore", "waiting", "-n", namespace, "--timeout=60s")


def test_a_backend_outage_is_in_progress(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    # Postgres that does not answer is transient too: Ready=False BackendUnavailable, not Stalled.
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "kstatus-closed-port", "namespace": OPERATOR_NAMESPACE},
                   "stringData": {"uri": "postgresql://nobody:nothing@127.0.0.1:1/tenants"}})
    spec = store_class("kstatus-unreachable")["spec"]
    spec["postgres"]["adminSecretRef"]["name"] = "kstatus-closed-port"
    kubectl.apply(store_class("kstatus-unreachable", **spec))
    kubectl.apply(tenant_store("down", namespace, "kstatus-down", storeClassName="kstatus-unreachable"))
    wait_for_condition(kubectl, namespace, "down", "Ready", "False", reason="BackendUnavailable")
    assert kstatus(kubectl, "tenantstore", "down", namespace) == "InProgress"
    kubectl("delete", "tenantstore", "down", "-n", namespace, "--timeout=60s")
    # Deleting a class whose Postgres never answers took up to about a minute in this suite.
    kubectl("delete", "storeclass", "kstatus-unreachable", "--timeout=120s")


def test_a_deleting_tenantstore_is_terminating(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("leaving", namespace, "kstatus-leaving"))
    wait_for_condition(kubectl, namespace, "leaving", "Ready", "True")
    # A finalizer of the test's own holds the object after the operator's teardown has released its finalizer.
    kubectl("patch", "tenantstore", "leaving", "-n", namespace, "--type=json",
            "-p", json.dumps([{"op": "add", "path": "/metadata/finalizers/-", "value": HOLD}]))
    try:
        kubectl("delete", "tenantstore", "leaving", "-n", namespace, "--wait=false")
        assert kstatus(kubectl, "tenantstore", "leaving", namespace) == "Terminating"
        wait_for("the operator's finalizer released",
                 lambda: kubectl.get("tenantstore", "leaving", namespace)["metadata"].get("finalizers") == [HOLD])
        assert kstatus(kubectl, "tenantstore", "leaving", namespace) == "Terminating"
    finally:
        body = kubectl.get("tenantstore", "leaving", namespace)
        if body is not None and HOLD in (body["metadata"].get("finalizers") or ()):
            kubectl("patch", "tenantstore", "leaving", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"metadata": {"finalizers": [f for f in body["metadata"]["finalizers"] if f != HOLD],
                                             "resourceVersion": body["metadata"]["resourceVersion"]}}))
    wait_until_gone(kubectl, "tenantstore", "leaving", namespace)
    assert kstatus(kubectl, "tenantstore", "leaving", namespace) == "NotFound"


def test_a_tenant_id_conflict_is_failed(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    # Terminal until someone acts (the first claimant is deleted): kstatus must say Failed, or a
    # `wait: true` Flux Kustomization waits out its whole timeout instead of failing fast.
    other = f"{namespace}-b"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    kubectl.apply(tenant_store("first", namespace, "kstatus-contested"))
    try:
        wait_for_condition(kubectl, namespace, "first", "Ready", "True")
        kubectl.apply(tenant_store("second", other, "kstatus-contested"))
        body = wait_for_condition(kubectl, other, "second", "Ready", "False", reason="TenantIdConflict")
        verdict = kstatus(kubectl, "tenantstore", "second", other)
        assert verdict == "Failed", f"kstatus says {verdict}; status.conditions: {body['status'].get('conditions')}"
    finally:
        for name, ns in (("second", other), ("first", namespace)):
            kubectl("delete", "tenantstore", name, "-n", ns, "--ignore-not-found", "--wait=false")
        for name, ns in (("second", other), ("first", namespace)):
            wait_until_gone(kubectl, "tenantstore", name, ns)
