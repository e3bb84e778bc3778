"""The audit trail end to end: a tenant's whole life, in order, read with `tenantstore audit` after it is gone."""
from __future__ import annotations

import json

from e2e_kit import (audit_cli, export_resource, insert_vector, tenant_secret, tenant_store, wait_for_condition,
                     wait_for_export)

from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for


def test_a_tenants_life_is_in_its_audit_trail_after_it_is_gone(kubectl: Kubectl, operator: OperatorProcess,
                                                                namespace: str) -> None:
    kubectl.apply(tenant_store("audited", namespace, "audited", quotas={"maxDocuments": 1}))
    uid = wait_for_condition(kubectl, namespace, "audited", "Ready", "True")["metadata"]["uid"]
    secret = tenant_secret(kubectl, namespace, "audited-store")
    insert_vector(secret, "first")
    wait_for_condition(kubectl, namespace, "audited", "QuotaExceeded", "True", reason="WritesBlocked")
    kubectl.apply(export_resource("audited-backup", namespace, "audited", "audited-backup"))
    wait_for_export(kubectl, namespace, "audited-backup")
    for suspended, wanted in (("true", ("False", "Suspended")), ("false", ("True", None))):
        kubectl("patch", "tenantstore", "audited", "-n", namespace, "--type=merge", "-p",
                f'{{"spec": {{"suspended": {suspended}}}}}')
        wait_for_condition(kubectl, namespace, "audited", "Ready", wanted[0], reason=wanted[1])
    kubectl("delete", "tenantstore", "audited", "-n", namespace, "--timeout=60s")

    # The receipt was written before the finalizer went: the trail is complete as soon as the object is gone.
    trail = json.loads(audit_cli(kubectl, "audited", "-o", "json"))
    actions = [entry["action"] for entry in trail]
    assert actions[0] == "Provisioned" and actions[-1] == "TeardownVerified", actions
    # The life in order (a quota transition is both the backend's step and the verdict's Event: two rows).
    life = ["Provisioned", "WritesBlocked", "ExportCompleted", "LoginChanged", "TeardownVerified"]
    assert list(dict.fromkeys(action for action in actions if action in life)) == life, actions
    assert actions.count("LoginChanged") == 2
    blocked = next(entry for entry in trail if entry["action"] == "WritesBlocked")
    assert blocked["actor"] == "tenantstore-operator"  # the usage pass acted, not a person
    assert actions.index("LoginChanged") < len(actions) - 1 - actions[::-1].index("LoginChanged")
    suspension, resumption = [entry for entry in trail if entry["action"] == "LoginChanged"]
    assert "no longer" in suspension["message"] and "again" in resumption["message"]
    receipt = trail[-1]
    assert "role tenant_audited" in receipt["message"] and "Secret" in receipt["message"]
    assert all(entry["tenant_store_uid"] == uid and entry["namespace"] == namespace for entry in trail)
    # Who changed the spec, as the API server recorded it; the trace of the reconcile that acted on it.
    assert trail[0]["actor"].startswith("kubectl") and suspension["actor"].startswith("kubectl")
    assert all(len(entry["trace_id"]) == 32 for entry in trail if entry["action"] in ("Provisioned", "LoginChanged"))
    assert receipt["actor"] == ""

    table = audit_cli(kubectl, "audited")
    assert table.splitlines()[0].split() == ["TIME", "ACTION", "ACTOR", "TENANTSTORE", "MESSAGE"]
    assert "TeardownVerified" in table.splitlines()[-1]


def test_a_restart_neither_repeats_nor_drops_audit_rows(kubectl: Kubectl, operator: OperatorProcess,
                                                        namespace: str) -> None:
    kubectl.apply(tenant_store("restarted", namespace, "audited-restart"))
    wait_for_condition(kubectl, namespace, "restarted", "Ready", "True")
    wait_for("the Provisioned row", lambda: "Provisioned" in audit_cli(kubectl, "audited-restart"), timeout=30)
    operator.stop()
    operator.start()
    kubectl("patch", "tenantstore", "restarted", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspended": true}}')
    wait_for_condition(kubectl, namespace, "restarted", "Ready", "False", reason="Suspended")

    def actions() -> list[str] | None:
        found = [entry["action"] for entry in json.loads(audit_cli(kubectl, "audited-restart", "-o", "json"))]
        return found if "LoginChanged" in found else None

    assert wait_for("the suspension row", actions, timeout=30).count("Provisioned") == 1
