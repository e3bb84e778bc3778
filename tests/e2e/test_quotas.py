"""Quotas that hold on the data store itself: Postgres refuses what a tenant over its limit may not do."""
from __future__ import annotations

import re

import psycopg
import pytest
from e2e_kit import condition, insert_vector, store_class, tenant_secret, tenant_store, vector_ids, wait_for_condition

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[str]:
    out = kubectl("get", "events", "-n", namespace, "--field-selector", f"reason={reason}",
                  "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}")
    return [line for line in out.splitlines() if line]


def test_document_quota_blocks_writes_keeps_reads_and_recovers(kubectl: Kubectl, operator: OperatorProcess,
                                                               namespace: str) -> None:
    kubectl.apply(tenant_store("capped", namespace, "capped", quotas={"maxDocuments": 3}))
    wait_for_condition(kubectl, namespace, "capped", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "capped-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE tenant_capped.notes (body text)")
    for index in range(3):
        insert_vector(secret, f"doc-{index}")

    body = wait_for_condition(kubectl, namespace, "capped", "QuotaExceeded", "True", reason="WritesBlocked")
    assert "documents 3 of 3" in condition(body, "QuotaExceeded")["message"]
    assert body["status"]["usage"]["documents"] == 3
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_vector(secret, "doc-3")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:  # its own tables refuse writes and DDL too
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO tenant_capped.notes VALUES ('over quota')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE tenant_capped.more (body text)")
        assert conn.execute("SELECT count(*) FROM tenant_capped.notes").fetchone()[0] == 0  # reads still work
    assert vector_ids(secret) == ["doc-0", "doc-1", "doc-2"]
    assert any("documents 3 of 3" in message for message in events(kubectl, namespace, "WritesBlocked"))
    annotations = kubectl.get("secret", "capped-store", namespace)["metadata"].get("annotations") or {}
    assert annotations.get("tenancy.dev/writes-blocked") == "true"  # for clients of backends that cannot refuse

    # The tenant deletes a document: writes come back without restarting anything.
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"DELETE FROM {secret['vectorTable']} WHERE id = 'doc-0'")
    wait_for_condition(kubectl, namespace, "capped", "QuotaExceeded", "False", reason="WithinLimits")
    assert "tenancy.dev/writes-blocked" not in (kubectl.get("secret", "capped-store", namespace)["metadata"]
                                               .get("annotations") or {})
    insert_vector(secret, "doc-3")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("INSERT INTO tenant_capped.notes VALUES ('welcome back')")
        conn.execute("CREATE TABLE tenant_capped.more (body text)")
    assert events(kubectl, namespace, "QuotaWithinLimits")

    # Full again, then the quota is raised: writes come back too.
    wait_for_condition(kubectl, namespace, "capped", "QuotaExceeded", "True", reason="WritesBlocked")
    kubectl("patch", "tenantstore", "capped", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"quotas": {"maxDocuments": 10}}}')
    wait_for_condition(kubectl, namespace, "capped", "QuotaExceeded", "False")
    insert_vector(secret, "doc-4")


def test_storage_quota_blocks_writes_until_the_tenant_cleans_up(kubectl: Kubectl, operator: OperatorProcess,
                                                                namespace: str) -> None:
    kubectl.apply(tenant_store("hoarder", namespace, "hoarder", quotas={"maxStorageBytes": "512Ki"}))
    wait_for_condition(kubectl, namespace, "hoarder", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "hoarder-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE tenant_hoarder.blobs (body text)")
        conn.execute("INSERT INTO tenant_hoarder.blobs SELECT md5(i::text) FROM generate_series(1, 20000) i")

    body = wait_for_condition(kubectl, namespace, "hoarder", "QuotaExceeded", "True", reason="WritesBlocked")
    assert re.search(r"storageBytes \d+ of 524288", condition(body, "QuotaExceeded")["message"])
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO tenant_hoarder.blobs VALUES ('more')")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("TRUNCATE tenant_hoarder.blobs")  # cleaning up is always allowed
    wait_for_condition(kubectl, namespace, "hoarder", "QuotaExceeded", "False")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("INSERT INTO tenant_hoarder.blobs VALUES ('fits again')")


def test_connection_limit_is_enforced_by_postgres(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("chatty", namespace, "chatty", quotas={"maxConnections": 2}))
    wait_for_condition(kubectl, namespace, "chatty", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "chatty-store")
    with psycopg.connect(secret["uri"]), psycopg.connect(secret["uri"]):
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            psycopg.connect(secret["uri"])
        wait_for("2 connections in status.usage", lambda: kubectl.get("tenantstore", "chatty", namespace)
                 ["status"].get("usage", {}).get("connections") == 2, timeout=30)

    kubectl("patch", "tenantstore", "chatty", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"quotas": {"maxConnections": 3}}}')
    wait_for("status.quotas.maxConnections 3", lambda: kubectl.get("tenantstore", "chatty", namespace)
             ["status"]["quotas"]["maxConnections"] == 3, timeout=30)
    with psycopg.connect(secret["uri"]), psycopg.connect(secret["uri"]), psycopg.connect(secret["uri"]):
        pass


def test_alert_mode_reports_but_never_blocks(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("lenient", namespace, "lenient", quotas={"maxDocuments": 2}, quotaAction="Alert"))
    wait_for_condition(kubectl, namespace, "lenient", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "lenient-store")
    for index in range(3):
        insert_vector(secret, f"doc-{index}")
    # A measurement may fall between the inserts (2 of 2 is already the limit): wait for the one after the third.
    wait_for("QuotaExceeded LimitReached at 3 documents", lambda: "documents 3 of 2" in condition(
        kubectl.get("tenantstore", "lenient", namespace), "QuotaExceeded").get("message", "") and condition(
        kubectl.get("tenantstore", "lenient", namespace), "QuotaExceeded")["reason"] == "LimitReached", timeout=90)
    insert_vector(secret, "doc-3")  # still writable
    assert len(vector_ids(secret)) == 4
    assert events(kubectl, namespace, "LimitReached")


def test_suspend_refuses_login_and_resume_restores_it(kubectl: Kubectl, operator: OperatorProcess,
                                                      namespace: str) -> None:
    kubectl.apply(tenant_store("sleeper", namespace, "sleeper"))
    wait_for_condition(kubectl, namespace, "sleeper", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "sleeper-store")
    insert_vector(secret, "keep")
    open_session = psycopg.connect(secret["uri"], autocommit=True)

    kubectl("patch", "tenantstore", "sleeper", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspended": true}}')
    body = wait_for_condition(kubectl, namespace, "sleeper", "Ready", "False", reason="Suspended")
    assert body["status"]["phase"] == "Suspended"
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(secret["uri"])
    with pytest.raises(psycopg.OperationalError):  # its open session was ended
        open_session.execute("SELECT 1")
    assert tenant_secret(kubectl, namespace, "sleeper-store") == secret

    kubectl("patch", "tenantstore", "sleeper", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspended": false}}')
    wait_for_condition(kubectl, namespace, "sleeper", "Ready", "True")
    assert vector_ids(secret) == ["keep"]


def test_an_override_above_the_tier_ceiling_is_capped(kubectl: Kubectl, operator: OperatorProcess,
                                                      namespace: str) -> None:
    kubectl.apply(store_class("ceilings", tiers={"free": {"maxQuotas": {"maxDocuments": 100}}}))
    kubectl.apply(tenant_store("greedy", namespace, "greedy", storeClassName="ceilings",
                               quotas={"maxDocuments": 1000, "maxConnections": 3}))
    body = wait_for_condition(kubectl, namespace, "greedy", "Ready", "True")
    assert body["status"]["quotas"]["maxDocuments"] == 100
    assert body["status"]["quotas"]["maxConnections"] == 3
    capped = condition(body, "QuotasCapped")
    assert capped["status"] == "True" and "spec.quotas.maxDocuments" in capped["message"]


def test_an_unchanged_measurement_writes_nothing(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                                 namespace: str) -> None:
    # Suspended, so that nothing logs in as it: the verification pass's own login, caught by a measurement, is
    # a connection of the tenant's role (counted, and so written) like any other.
    kubectl.apply(tenant_store("quiet", namespace, "quiet", suspended=True))
    wait_for_condition(kubectl, namespace, "quiet", "Ready", "False", reason="Suspended")
    wait_for("a first measurement", lambda: kubectl.get("tenantstore", "quiet", namespace)["status"].get("usage"))
    version = kubectl.get("tenantstore", "quiet", namespace)["metadata"]["resourceVersion"]
    measured = operator.log_since_start().count("Timer 'measure_tenants' succeeded")
    wait_for("three more measurements", lambda: operator.log_since_start().count(
        "Timer 'measure_tenants' succeeded") >= measured + 3, timeout=30)
    assert kubectl.get("tenantstore", "quiet", namespace)["metadata"]["resourceVersion"] == version


def test_a_class_change_re_derives_the_tenants_quotas(kubectl: Kubectl, operator: OperatorProcess,
                                                      namespace: str) -> None:
    kubectl.apply(store_class("evolving", tiers={"pro": {"quotas": {"maxDocuments": 500}}}))
    kubectl.apply(tenant_store("follower", namespace, "follower", tier="pro", storeClassName="evolving"))
    body = wait_for_condition(kubectl, namespace, "follower", "Ready", "True")
    assert body["status"]["quotas"]["maxDocuments"] == 500
    kubectl.apply(store_class("evolving", tiers={"pro": {"quotas": {"maxDocuments": 700}}}))
    wait_for("status.quotas.maxDocuments 700", lambda: kubectl.get("tenantstore", "follower", namespace)
             ["status"]["quotas"]["maxDocuments"] == 700, timeout=30)
