"""Rotating a StoreClass's admin password: tenants stay Ready, new ones are made, the old pool is closed."""
from __future__ import annotations

import base64
import secrets

import psycopg
from e2e_kit import condition, store_class, superuser, tenant_store, wait_for_condition

from tenantstore_dev.environment import OPERATOR_NAMESPACE, Kubectl, LocalEnvironment, OperatorProcess, wait_for

ROLE, DATABASE, SECRET = "rotating_admin", "rotating", "rotating-admin"


def put_admin_uri(kubectl: Kubectl, uri: str) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": SECRET, "namespace": OPERATOR_NAMESPACE},
                   "data": {"uri": base64.b64encode(uri.encode()).decode()}})


def test_a_rotated_admin_password_keeps_tenants_ready(env: LocalEnvironment, kubectl: Kubectl,
                                                       operator: OperatorProcess, namespace: str) -> None:
    first_password = secrets.token_urlsafe(16)
    uri = env.postgres.prepare_for_tenantstore(admin_password=first_password, admin_role=ROLE,
                                               shared_database=DATABASE)
    put_admin_uri(kubectl, uri)
    spec = store_class("rotating")["spec"]
    spec["postgres"] = {"adminSecretRef": {"name": SECRET, "namespace": OPERATOR_NAMESPACE, "key": "uri"},
                        "database": DATABASE}
    kubectl.apply(store_class("rotating", **spec))
    for name, tier in (("rot-free", "free"), ("rot-enterprise", "enterprise")):
        kubectl.apply(tenant_store(name, namespace, name, tier=tier, storeClassName="rotating"))
    ready = {name: condition(wait_for_condition(kubectl, namespace, name, "Ready", "True"), "Ready")
             for name in ("rot-free", "rot-enterprise")}

    second_password = secrets.token_urlsafe(16)
    with superuser(env, "postgres") as conn:
        conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            psycopg.sql.Identifier(ROLE), psycopg.sql.Literal(second_password)))
        # Halfway (the password changed, the Secret not yet) the operator's sessions end (a failover, say): a
        # verification pass is refused new ones. The class says so; its tenants' stores still serve.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (ROLE,))
    wait_for("a verification pass refused halfway", lambda: any(
        "verified StoreClass rotating:" in line and "admin login refused" in line
        for line in operator.log_since_start().splitlines()), timeout=30)
    wait_for("the class to say so", lambda: condition(kubectl.get("storeclass", "rotating"), "Ready")
             .get("status") == "False", timeout=10)
    put_admin_uri(kubectl, uri.replace(first_password, second_password))

    # A new database tenant needs new admin connections (its own database): it is made with the new password.
    kubectl.apply(tenant_store("rot-after", namespace, "rot-after", tier="enterprise", storeClassName="rotating"))
    wait_for_condition(kubectl, namespace, "rot-after", "Ready", "True", timeout=60)
    for name, before in ready.items():  # never flipped meanwhile
        assert condition(kubectl.get("tenantstore", name, namespace), "Ready")["lastTransitionTime"] \
            == before["lastTransitionTime"]
    wait_for("the class to be Ready again", lambda: condition(kubectl.get("storeclass", "rotating"), "Ready")
             .get("status") == "True", timeout=30)
    # The old pool is closed, not left behind (one pool per rotation would leak connections for good).
    wait_for("the old admin pool to be closed", lambda: "closing the connection pool of a rotated admin credential "
             "(rotating)" in operator.log_since_start(), timeout=30)

    for name in ("rot-free", "rot-enterprise", "rot-after"):
        kubectl("delete", "tenantstore", name, "-n", namespace, "--timeout=90s")
    kubectl("delete", "storeclass", "rotating", "--timeout=30s")
