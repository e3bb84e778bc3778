"""Runs last (by name) so it sees everything the session wrote: no password in a log, an event or a status."""
from __future__ import annotations

import base64
import json
import secrets as token_source

from e2e_kit import SEEN_PASSWORDS, condition, store_class, tenant_store

from tenantstore_dev.environment import OPERATOR_NAMESPACE, Kubectl, KubectlError, LocalEnvironment, OperatorProcess, wait_for

# Admin passwords of StoreClasses whose admin URI is malformed: drivers quote such URIs in their errors.
MALFORMED_ADMIN_PASSWORDS: set[str] = set()


def written_by_the_session(env: LocalEnvironment, kubectl: Kubectl) -> dict[str, str]:
    return {
        "operator logs": "".join(path.read_text(errors="replace") for path in env.workdir.glob("*.log")),
        "events": kubectl("get", "events", "-A", "-o", "json"),
        "TenantStore status": kubectl("get", "tenantstores", "-A", "-o", "json"),
        "StoreClass status": kubectl("get", "storeclasses", "-o", "json"),
    }


def test_a_malformed_admin_uri_leaks_no_password(env: LocalEnvironment, kubectl: Kubectl,
                                                 operator: OperatorProcess) -> None:
    """libpq echoes the piece of a connection string it cannot parse, often the password itself."""
    namespace = "malformed-admin-uri"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    secret = token_source.token_hex(8)
    cases = {
        "percent": (f"Leak%ZZ{secret}a", "postgresql://tenantstore_admin:{}@127.0.0.1:1/tenants"),
        "space": (f"Leak {secret}b", "postgresql://tenantstore_admin:{}@127.0.0.1:1/tenants"),
        "keyvalue": (f"Leak{secret}c", "host=127.0.0.1 port=1 user=tenantstore_admin password={} dbname"),
    }
    for case, (password, template) in cases.items():
        MALFORMED_ADMIN_PASSWORDS.update({password, password.split()[-1]})
        kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": {"name": f"malformed-{case}", "namespace": OPERATOR_NAMESPACE},
                       "stringData": {"uri": template.format(password)}})
        kubectl.apply(store_class(f"malformed-{case}", postgres={
            "adminSecretRef": {"name": f"malformed-{case}", "namespace": OPERATOR_NAMESPACE, "key": "uri"}}))
        kubectl.apply(tenant_store(f"malformed-{case}", namespace, f"malformed-{case}",
                                   storeClassName=f"malformed-{case}"))

    def all_refused() -> bool:
        return all(condition(kubectl.get("tenantstore", f"malformed-{case}", namespace), "Ready").get("status")
                   == "False" for case in cases)
    try:
        wait_for("every malformed class's tenant to report Ready=False", all_refused, timeout=60)
    except TimeoutError:
        pass  # whatever the operator did by then (logged a traceback, posted an Event) is checked all the same
    for place, text in written_by_the_session(env, kubectl).items():
        leaked = [p for p in MALFORMED_ADMIN_PASSWORDS if p in text]
        assert not leaked, f"{len(leaked)} malformed-URI password(s) found in {place}"

    for case in cases:  # nothing was made for them, and their class cannot reach a backend to confirm it
        kubectl("delete", "tenantstore", f"malformed-{case}", "-n", namespace, "--wait=false")
        try:
            kubectl("patch", "tenantstore", f"malformed-{case}", "-n", namespace, "--type=merge",
                    "-p", '{"metadata": {"finalizers": null}}')
        except KubectlError as error:
            if "NotFound" not in error.stderr:
                raise
        kubectl("delete", "storeclass", f"malformed-{case}", "--ignore-not-found")
        kubectl("delete", "secret", f"malformed-{case}", "-n", OPERATOR_NAMESPACE, "--ignore-not-found")


def test_no_password_appears_in_logs_events_or_status(env: LocalEnvironment, kubectl: Kubectl,
                                                      operator: OperatorProcess) -> None:
    secrets = json.loads(kubectl("get", "secrets", "-A", "-l", "app.kubernetes.io/managed-by=tenantstore-operator",
                                 "-o", "json"))["items"]
    passwords = SEEN_PASSWORDS | {base64.b64decode(s["data"]["password"]).decode() for s in secrets}
    admin_password = env.admin_uri.split(":")[2].split("@")[0]
    assert len(passwords) >= 10, "the session should have provisioned tenants by now"

    for place, text in written_by_the_session(env, kubectl).items():
        leaked = [p for p in passwords | {admin_password} | MALFORMED_ADMIN_PASSWORDS if p in text]
        assert not leaked, f"{len(leaked)} password(s) found in {place}"
