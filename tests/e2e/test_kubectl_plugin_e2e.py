"""`kubectl tenantstore` against the real API server, found by kubectl on PATH as the installed
`kubectl-tenantstore`: status as a tree and as a table, credentials without (and with) the password, psql as the
tenant and as a scoped credential, the audit trail, and an export to the operator's volume."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2e_kit import insert_vector, tenant_secret, tenant_store, wait_for_condition

from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for


def plugin(kubectl: Kubectl, *args: str) -> str:
    """`kubectl tenantstore ARGS`, as a user with this cluster's kubeconfig and the package installed runs it."""
    env = {**os.environ, "KUBECONFIG": str(kubectl.kubeconfig),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["kubectl", "tenantstore", *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl tenantstore {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_kubectl_tenantstore_shows_connects_and_exports(kubectl: Kubectl, operator: OperatorProcess,
                                                        namespace: str) -> None:
    kubectl.apply(tenant_store("plug", namespace, "plug", tier="pro", credentials=[{"name": "viewer",
                                                                                   "access": "readOnly"}]))
    wait_for_condition(kubectl, namespace, "plug", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "plug-store")
    insert_vector(secret, "doc-1")
    wait_for("1 document in status", lambda: kubectl.get("tenantstore", "plug", namespace)["status"]
             .get("usage", {}).get("documents") == 1, timeout=30)

    tree = plugin(kubectl, "status", "plug", "-n", namespace).splitlines()
    assert tree[0] == f"TenantStore {namespace}/plug  tenant plug, tier pro"
    assert any(line.startswith("├─ Postgres   role tenant_plug, schema tenant_plug in database tenants")
               for line in tree)
    assert any(line.startswith("├─ Vectors    pgvector index shared-3-cosine-") and "namespace plug" in line
               for line in tree)
    assert any(line.startswith("│   documents      [") and line.endswith("1 / 1,000,000") for line in tree)
    assert any(line.split()[:3] == ["│", "Ready", "True"] for line in tree)
    assert any("Provisioned" in line for line in tree[tree.index("└─ Last events"):])
    assert secret["password"] not in "\n".join(tree)
    table = plugin(kubectl, "status", "-n", namespace).splitlines()
    assert table[1].split()[:5] == ["plug", "plug", "pro", "Ready", "True"]

    hidden = plugin(kubectl, "credentials", "plug", "-n", namespace)
    assert "PGUSER=tenant_plug" in hidden.splitlines() and secret["password"] not in hidden
    shown = plugin(kubectl, "credentials", "plug", "-n", namespace, "--show-password")
    assert f"PGPASSWORD={secret['password']}" in shown.splitlines()

    assert plugin(kubectl, "psql", "plug", "-n", namespace, "--", "-tAc", "SELECT current_user").strip() == \
        "tenant_plug"
    viewer = plugin(kubectl, "psql", "plug", "--credential", "viewer", "-n", namespace, "--", "-tAc",
                    "SELECT session_user, current_user, current_setting('default_transaction_read_only')")
    assert viewer.strip() == "tscred_plug_viewer_a|tsread_plug|on"  # the viewer's login, acting as the reader

    # Query insights: the tenant's statement shapes (normalized: its vector id is no literal there).
    shape = f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) VALUES ($1, $2, $3)"
    wait_for("the insert among the tenant's query insights", lambda: shape in [
        entry["statement"] for entry in (kubectl.get("tenantstore", "plug", namespace)["status"]
                                         .get("queries") or {}).get("slowest", ())], timeout=30)
    insights = plugin(kubectl, "queries", "plug", "-n", namespace)
    assert insights.splitlines()[0].startswith("plug: ") and shape in insights and "doc-1" not in insights
    cli = subprocess.run([str(Path(sys.executable).parent / "tenantstore"), "queries", "--tenant", "plug"],
                         env={**os.environ, "KUBECONFIG": str(kubectl.kubeconfig)}, capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode == 0 and cli.stdout.startswith(f"{namespace}/plug: ") and shape in cli.stdout, cli.stderr

    # The trail is written behind the operator's work (queued, then batched): it shows up within seconds.
    wait_for("the provisioning in the audit trail", lambda: "Provisioned" in plugin(kubectl, "audit", "plug"),
             timeout=30)
    exported = plugin(kubectl, "export", "plug", "-n", namespace, "--path", "plug-dump", "--wait", "180")
    assert exported.startswith(f"TenantStoreExport {namespace}/plug-") and exported.strip().endswith(": Completed")
