"""Runs last (by name) so it sees everything the session wrote: no password in a log, an event or a status."""
from __future__ import annotations

import base64
import json

from e2e_kit import SEEN_PASSWORDS

from tenantstore.devenv import Kubectl, LocalEnvironment, OperatorProcess


def test_no_password_appears_in_logs_events_or_status(env: LocalEnvironment, kubectl: Kubectl,
                                                      operator: OperatorProcess) -> None:
    secrets = json.loads(kubectl("get", "secrets", "-A", "-l", "app.kubernetes.io/managed-by=tenantstore-operator",
                                 "-o", "json"))["items"]
    passwords = SEEN_PASSWORDS | {base64.b64decode(s["data"]["password"]).decode() for s in secrets}
    admin_password = env.admin_uri.split(":")[2].split("@")[0]
    assert len(passwords) >= 10, "the session should have provisioned tenants by now"

    written = {
        "operator logs": "".join(path.read_text(errors="replace") for path in env.workdir.glob("*.log")),
        "events": kubectl("get", "events", "-A", "-o", "json"),
        "TenantStore status": kubectl("get", "tenantstores", "-A", "-o", "json"),
        "StoreClass status": kubectl("get", "storeclasses", "-o", "json"),
    }
    for place, text in written.items():
        leaked = [p for p in passwords | {admin_password} if p in text]
        assert not leaked, f"{len(leaked)} password(s) found in {place}"
