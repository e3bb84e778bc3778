"""What only the operator can judge becomes a condition with a reason, and recovers without a restart."""
from __future__ import annotations

import os

import psycopg
import pytest
from e2e_kit import (condition, store_class, superuser, tenant_secret, tenant_store, wait_for_condition,
                     wait_until_gone)

from kubernetes_asyncio import config as kube_config

from tenantstore.kube import TenantStatuses
from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for


def test_unknown_store_class_waits_then_recovers(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("late", namespace, "late-class", storeClassName="arrives-later"))
    body = wait_for_condition(kubectl, namespace, "late", "Ready", "False", reason="StoreClassNotFound")
    assert body["status"]["phase"] == "Pending"
    assert "arrives-later" in condition(body, "Ready")["message"]

    kubectl.apply(store_class("arrives-later"))
    body = wait_for_condition(kubectl, namespace, "late", "Ready", "True", timeout=120)
    assert body["status"]["storeClassName"] == "arrives-later"
    kubectl("delete", "tenantstore", "late", "-n", namespace, "--timeout=60s")
    kubectl("delete", "storeclass", "arrives-later")


def test_tenant_id_conflict_leaves_the_first_tenant_untouched(env: LocalEnvironment, kubectl: Kubectl,
                                                              operator: OperatorProcess, namespace: str) -> None:
    other_namespace = f"{namespace}-b"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other_namespace}})
    kubectl.apply(tenant_store("first", namespace, "contested"))
    wait_for_condition(kubectl, namespace, "first", "Ready", "True")
    first_secret = tenant_secret(kubectl, namespace, "first-store")

    kubectl.apply(tenant_store("second", other_namespace, "contested"))
    body = wait_for_condition(kubectl, other_namespace, "second", "Ready", "False", reason="TenantIdConflict")
    assert f"{namespace}/first" in condition(body, "Ready")["message"]
    assert body["status"]["phase"] == "Failed"
    assert kubectl.get("secret", "second-store", other_namespace) is None

    # Deleting the loser touches nothing of the winner's.
    kubectl("delete", "tenantstore", "second", "-n", other_namespace, "--timeout=60s")
    with psycopg.connect(first_secret["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_contested"
    assert condition(kubectl.get("tenantstore", "first", namespace), "Ready")["status"] == "True"
    kubectl("delete", "tenantstore", "first", "-n", namespace, "--timeout=60s")


def test_postgres_down_is_reported_and_recovers(env: LocalEnvironment, kubectl: Kubectl,
                                                operator: OperatorProcess, namespace: str) -> None:
    env.postgres.stop("immediate")
    try:
        kubectl.apply(tenant_store("patient", namespace, "patient"))
        body = wait_for_condition(kubectl, namespace, "patient", "Ready", "False", reason="BackendUnavailable")
        assert "unreachable" in condition(body, "Ready")["message"]
        assert body["status"]["phase"] == "Provisioning"
    finally:
        env.postgres.start()
    wait_for_condition(kubectl, namespace, "patient", "Ready", "True", timeout=120)
    secret = tenant_secret(kubectl, namespace, "patient-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_patient"
    kubectl("delete", "tenantstore", "patient", "-n", namespace, "--timeout=60s")


def test_storeclass_reports_its_backends(kubectl: Kubectl, operator: OperatorProcess, default_class: str) -> None:
    def ready() -> dict | None:
        body = kubectl.get("storeclass", default_class)
        return body if condition(body, "Ready").get("status") == "True" else None
    body = wait_for("StoreClass Ready", ready, timeout=60)
    assert condition(body, "Ready")["reason"] == "BackendsReachable"

    kubectl.apply(store_class("broken", postgres={"adminSecretRef": {"name": "no-such-secret",
                                                                     "namespace": "tenantstore-system"}}))
    def broken() -> dict | None:
        body = kubectl.get("storeclass", "broken")
        return body if condition(body, "Ready").get("reason") == "StoreClassInvalid" else None
    body = wait_for("StoreClass broken reported", broken, timeout=60)
    assert "no-such-secret" in condition(body, "Ready")["message"]
    kubectl("delete", "storeclass", "broken")


def test_a_killed_operator_converges_after_restart(env: LocalEnvironment, kubectl: Kubectl,
                                                   operator: OperatorProcess, namespace: str) -> None:
    # Make sure the shared index exists, then hold a lock on it so provisioning stops halfway:
    # the role and schema exist, the vector partition does not.
    kubectl.apply(tenant_store("warmup", namespace, "warmup"))
    wait_for_condition(kubectl, namespace, "warmup", "Ready", "True")
    with superuser(env) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE tenantstore_vectors.shared_3_cosine_1 IN ACCESS EXCLUSIVE MODE")
        kubectl.apply(tenant_store("interrupted", namespace, "interrupted"))
        with superuser(env) as probe:
            wait_for("the role of the half-provisioned tenant", lambda: probe.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = 'tenant_interrupted'").fetchone(), timeout=60)
        operator.kill()
        blocker.execute("ROLLBACK")
    operator.start()
    wait_for_condition(kubectl, namespace, "interrupted", "Ready", "True", timeout=120)

    with superuser(env) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'tenant_interrupted'").fetchone()[0] == 1
        partitions = conn.execute("""SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                                      WHERE c.relname = 'tenant_interrupted'""").fetchone()[0]
        assert partitions == 1
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE policyname = 'tenant_interrupted'").fetchone()[0] == 1
    secret = tenant_secret(kubectl, namespace, "interrupted-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) "
                     "VALUES ('interrupted', 'after-restart', '[1,1,1]')")
    for name in ("warmup", "interrupted"):
        kubectl("delete", "tenantstore", name, "-n", namespace, "--wait=false")
    for name in ("warmup", "interrupted"):
        wait_until_gone(kubectl, "tenantstore", name, namespace)


def test_nothing_changed_means_no_ddl(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                      namespace: str) -> None:
    kubectl.apply(tenant_store("steady", namespace, "steady"))
    wait_for_condition(kubectl, namespace, "steady", "Ready", "True")
    with superuser(env) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.ddl_log (tag text, at timestamptz DEFAULT now())")
        conn.execute("""CREATE OR REPLACE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
                        $$ BEGIN INSERT INTO public.ddl_log (tag) VALUES (tg_tag); END $$""")
        conn.execute("DROP EVENT TRIGGER IF EXISTS log_ddl")
        conn.execute("CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION public.log_ddl()")
        try:
            # A spec change that needs no backend change reconciles (status follows the generation)...
            kubectl("patch", "tenantstore", "steady", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"displayName": "Steady Inc"}}')
            wait_for("observedGeneration 2", lambda: kubectl.get("tenantstore", "steady", namespace)
                     ["status"].get("observedGeneration") == 2, timeout=60)
            # ...and a restart resumes every tenant; neither issues DDL.
            operator.stop()
            operator.start()
            wait_for("the restarted operator to resume the tenant", lambda: f"[{namespace}/steady] Resuming is processed"
                     in operator.log_since_start(), timeout=60)
            assert conn.execute("SELECT tag FROM public.ddl_log").fetchall() == []
        finally:
            conn.execute("DROP EVENT TRIGGER IF EXISTS log_ddl")
    kubectl("delete", "tenantstore", "steady", "-n", namespace, "--timeout=60s")


async def test_a_status_judged_from_an_old_read_is_not_written_over_a_newer_one(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    """The periodic jobs judge a snapshot; a reconcile that changed the tenant since must keep what it wrote."""
    kubectl.apply(tenant_store("judged", namespace, "judged"))
    wait_for_condition(kubectl, namespace, "judged", "Ready", "True")
    api = await kube_config.new_client_from_config(config_file=os.fspath(env.control_plane.kubeconfig))
    try:
        statuses = TenantStatuses(api)
        seen = await statuses.read(namespace, "judged")
        assert seen is not None
        kubectl("patch", "tenantstore", "judged", "-n", namespace, "--type=merge", "-p",
                '{"spec": {"suspended": true}}')
        wait_for_condition(kubectl, namespace, "judged", "Ready", "False", reason="Suspended")

        assert not await statuses.patch_unless_changed(seen, {"conditions": seen["status"]["conditions"]})
        assert condition(kubectl.get("tenantstore", "judged", namespace), "Ready")["reason"] == "Suspended"
        fresh = await statuses.read(namespace, "judged")
        assert fresh is not None
        assert await statuses.patch_unless_changed(fresh, {"usage": {"documents": 0}})
    finally:
        await api.close()
    kubectl("delete", "tenantstore", "judged", "-n", namespace, "--timeout=60s")
