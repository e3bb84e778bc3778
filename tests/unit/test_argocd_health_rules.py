"""The Argo CD health scripts on the edge cases a running operator rarely shows (the e2e test feeds real objects)."""
from __future__ import annotations

from typing import Any

from argocd_health import health


def tenant_store(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStore",
            "metadata": {"name": "acme", "namespace": "customers", "generation": generation},
            "spec": {"tenantId": "acme", "tier": "free"}, **({"status": status} if status else {})}


def ready(status: str, reason: str, message: str = "") -> list[dict[str, str]]:
    return [{"type": "Ready", "status": status, "reason": reason, "message": message},
            {"type": "QuotaExceeded", "status": "False", "reason": "WithinLimits", "message": ""}]


def test_a_new_resource_without_status_is_progressing() -> None:
    assert health(tenant_store())["status"] == "Progressing"
    assert health(tenant_store(conditions=[]))["status"] == "Progressing"


def test_a_spec_change_not_yet_observed_is_progressing_even_if_ready_before() -> None:
    body = tenant_store(generation=3, observedGeneration=2, phase="Ready", conditions=ready("True", "Provisioned"))
    answer = health(body)
    assert answer["status"] == "Progressing" and "generation 3" in answer["message"]


def test_ready_suspended_failed_and_a_ready_tenant_that_lost_its_backend() -> None:
    assert health(tenant_store(observedGeneration=1, phase="Ready",
                               conditions=ready("True", "Provisioned", "role tenant_acme")))["status"] == "Healthy"
    assert health(tenant_store(observedGeneration=1, phase="Suspended",
                               conditions=ready("False", "Suspended")))["status"] == "Suspended"
    failed = health(tenant_store(observedGeneration=1, phase="Failed",
                                 conditions=ready("False", "TenantIdConflict", "claimed by other/acme")))
    assert failed == {"status": "Degraded", "message": "Failed (TenantIdConflict): claimed by other/acme"}
    lost = health(tenant_store(observedGeneration=1, phase="Ready",
                               conditions=ready("False", "BackendUnavailable", "Postgres unreachable")))
    assert lost["status"] == "Degraded" and "BackendUnavailable" in lost["message"]


def test_pending_provisioning_and_deleting_are_progressing() -> None:
    for phase, reason in (("Pending", "StoreClassNotFound"), ("Provisioning", "BackendUnavailable"),
                          ("Migrating", "Migrating")):
        answer = health(tenant_store(observedGeneration=1, phase=phase, conditions=ready("False", reason, "why")))
        assert answer["status"] == "Progressing" and reason in answer["message"], (phase, answer)
    deleting = tenant_store(observedGeneration=1, phase="Ready", conditions=ready("True", "Provisioned"))
    deleting["metadata"]["deletionTimestamp"] = "2026-11-22T10:00:00Z"
    assert health(deleting)["status"] == "Progressing"


def test_store_class_health() -> None:
    body: dict[str, Any] = {"apiVersion": "tenancy.dev/v1alpha1", "kind": "StoreClass",
                            "metadata": {"name": "standard", "generation": 2}, "spec": {}}
    assert health(body)["status"] == "Progressing"
    body["status"] = {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True",
                                                               "reason": "BackendsReachable", "message": "ok"}]}
    assert health(body)["status"] == "Healthy"
    body["status"]["conditions"][0].update(status="False", reason="AdminRoleIsSuperuser")
    assert health(body)["status"] == "Degraded"
    body["metadata"]["generation"] = 3
    assert health(body)["status"] == "Progressing"
