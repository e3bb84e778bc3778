"""The Argo CD health scripts (manifests/argocd) on status objects the running operator wrote."""
from __future__ import annotations

from argocd_health import health
from e2e_kit import condition, store_class, tenant_store, wait_for_condition, wait_until_gone

from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for


def test_tenantstore_health_from_real_status(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("healthy", namespace, "lua-healthy"))
    ready = wait_for_condition(kubectl, namespace, "healthy", "Ready", "True")
    assert health(ready)["status"] == "Healthy"

    kubectl.apply(tenant_store("waiting", namespace, "lua-waiting", storeClassName="no-such-class"))
    pending = wait_for_condition(kubectl, namespace, "waiting", "Ready", "False", reason="StoreClassNotFound")
    answer = health(pending)
    assert answer["status"] == "Progressing" and "no-such-class" in answer["message"], answer

    other = f"{namespace}-b"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    kubectl.apply(tenant_store("twin", other, "lua-healthy"))  # the tenantId is taken
    conflict = wait_for_condition(kubectl, other, "twin", "Ready", "False", reason="TenantIdConflict")
    assert health(conflict)["status"] == "Degraded"

    kubectl("patch", "tenantstore", "healthy", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspended": true}}')
    suspended = wait_for_condition(kubectl, namespace, "healthy", "Ready", "False", reason="Suspended")
    assert suspended["status"]["phase"] == "Suspended" and health(suspended)["status"] == "Suspended"

    for name, ns in (("healthy", namespace), ("waiting", namespace), ("twin", other)):
        kubectl("delete", "tenantstore", name, "-n", ns, "--wait=false")
    for name, ns in (("healthy", namespace), ("waiting", namespace), ("twin", other)):
        wait_until_gone(kubectl, "tenantstore", name, ns)


def test_a_deleting_tenantstore_is_progressing(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    # Teardown needs the class the tenant was made with: without it the finalizer stays and the phase is Deleting.
    kubectl.apply(store_class("lua-class"))
    kubectl.apply(tenant_store("leaving", namespace, "lua-leaving", storeClassName="lua-class"))
    wait_for_condition(kubectl, namespace, "leaving", "Ready", "True")
    kubectl("delete", "storeclass", "lua-class")
    kubectl("delete", "tenantstore", "leaving", "-n", namespace, "--wait=false")
    try:
        body = wait_for("phase Deleting", lambda: (b := kubectl.get("tenantstore", "leaving", namespace)) and
                        b["status"].get("phase") == "Deleting" and b)
        answer = health(body)
        assert answer["status"] == "Progressing" and answer["message"].startswith("Deleting"), answer
    finally:
        kubectl.apply(store_class("lua-class"))  # the class is back: teardown completes
    wait_until_gone(kubectl, "tenantstore", "leaving", namespace)
    kubectl("delete", "storeclass", "lua-class")


def test_storeclass_health_from_real_status(kubectl: Kubectl, operator: OperatorProcess, default_class: str) -> None:
    def checked(name: str, status: str) -> dict | None:
        body = kubectl.get("storeclass", name)
        return body if condition(body, "Ready").get("status") == status else None

    assert health(wait_for("the default class Ready", lambda: checked(default_class, "True")))["status"] == "Healthy"
    kubectl.apply(store_class("lua-broken", postgres={"adminSecretRef": {"name": "no-such-secret",
                                                                         "namespace": "tenantstore-system"}}))
    try:
        answer = health(wait_for("the broken class reported", lambda: checked("lua-broken", "False")))
        assert answer["status"] == "Degraded" and "no-such-secret" in answer["message"], answer
    finally:
        kubectl("delete", "storeclass", "lua-broken")
