"""A tenant's life as users see it: apply, Ready, credentials that work and isolate, delete."""
from __future__ import annotations

import json

import psycopg
import pytest
from e2e_kit import (condition, superuser, tenant_secret, tenant_store, wait_for_condition, wait_until_gone)

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess

TIERS = {"free": "t-free", "pro": "t-pro", "enterprise": "t-ent"}


@pytest.fixture(scope="module")
def tiered(kubectl: Kubectl, operator: OperatorProcess) -> str:
    """One tenant per tier, in one namespace, all Ready."""
    namespace = "tiers"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for tier, tenant_id in TIERS.items():
        kubectl.apply(tenant_store(tenant_id, namespace, tenant_id, tier=tier))
    kubectl("wait", "--for=condition=Ready", "tenantstores", "--all", "-n", namespace, "--timeout=120s")
    return namespace


def test_every_tier_reaches_ready_with_its_isolation(kubectl: Kubectl, tiered: str) -> None:
    table = kubectl("get", "tenantstores", "-n", tiered)
    header, *rows = table.splitlines()
    assert header.split() == ["NAME", "TENANT", "TIER", "PHASE", "READY", "DOCUMENTS", "AGE"]
    assert sorted(row.split()[1:5] for row in rows) == [
        ["t-ent", "enterprise", "Ready", "True"], ["t-free", "free", "Ready", "True"], ["t-pro", "pro", "Ready", "True"]]

    free = kubectl.get("tenantstore", "t-free", tiered)["status"]
    assert free["isolation"] == {"relational": "schema", "vector": "namespace"}
    assert free["relational"]["schema"] == "tenant_t_free" and free["relational"]["database"] == "tenants"
    assert free["vectorStore"]["index"] == "shared-3-cosine-1" and free["vectorStore"]["namespace"] == "t-free"
    assert free["observedGeneration"] == 1 and free["secretName"] == "t-free-store"
    assert free["quotas"] == {"maxDocuments": 10000, "maxStorageBytes": "1Gi", "maxConnections": 5,
                              "maxDailyQueries": 1000}

    enterprise = kubectl.get("tenantstore", "t-ent", tiered)["status"]
    assert enterprise["isolation"] == {"relational": "database", "vector": "dedicated"}
    assert enterprise["relational"]["database"] == "tenant_t_ent"
    assert enterprise["vectorStore"]["index"] == "ts-t-ent"


def test_provisioning_is_told_in_one_event_per_tenant(kubectl: Kubectl, tiered: str) -> None:
    events = json.loads(kubectl("get", "events", "-n", tiered, "-o", "json"))["items"]
    for tenant_id in TIERS.values():
        reasons = [event["reason"] for event in events if event["involvedObject"]["name"] == tenant_id]
        # The first tenant of a shared index also reports creating the index.
        assert [reason for reason in reasons if reason != "SharedIndexCreated"] == ["Provisioned"], tenant_id
        message = next(event["message"] for event in events
                       if event["involvedObject"]["name"] == tenant_id and event["reason"] == "Provisioned")
        assert f"Postgres role tenant_{tenant_id.replace('-', '_')} created" in message
        assert f"credentials written to Secret {tenant_id}-store" in message


def test_secret_logs_in_as_the_tenant_and_sees_only_its_own_data(kubectl: Kubectl, tiered: str) -> None:
    secrets = {tier: tenant_secret(kubectl, tiered, f"{tenant_id}-store") for tier, tenant_id in TIERS.items()}
    assert set(secrets["free"]) >= {"uri", "host", "port", "database", "schema", "user", "password",
                                    "vectorBackend", "vectorIndex", "vectorNamespace"}

    for tier, secret in secrets.items():
        with psycopg.connect(secret["uri"], autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == secret["user"]
            conn.execute(f'CREATE TABLE "{secret["schema"]}".orders (id int)')
            conn.execute(f'INSERT INTO "{secret["schema"]}".orders VALUES (1)')
            if secret["vectorNamespace"]:
                conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) VALUES (%s, %s, '[1,2,3]')",
                             (secret["vectorNamespace"], f"{tier}-doc"))
            else:
                conn.execute(f"INSERT INTO {secret['vectorTable']} (id, embedding) VALUES (%s, '[1,2,3]')", (f"{tier}-doc",))
            nearest = conn.execute(f"SELECT id FROM {secret['vectorTable']} ORDER BY embedding <=> '[1,2,3]' LIMIT 1")
            assert nearest.fetchone()[0] == f"{tier}-doc"

    free, pro = secrets["free"], secrets["pro"]
    with psycopg.connect(free["uri"], autocommit=True) as conn:
        # Its partition of the shared index without a filter: only its own rows.
        rows = conn.execute(f"SELECT namespace, id FROM {free['vectorTable']}").fetchall()
        assert rows == [("t-free", "free-doc")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'SELECT * FROM "{pro["schema"]}".orders')
    with psycopg.connect(free["uri"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO {free['vectorTable']} (namespace, id, embedding) VALUES ('t-pro', 'x', '[1,1,1]')")
    with psycopg.connect(free["uri"], autocommit=True) as conn:
        # Moving rows out is refused too (the partition's bound stops it before row-level security does).
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation)):
            conn.execute(f"UPDATE {free['vectorTable']} SET namespace = 't-pro'")
    with psycopg.connect(free["uri"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the shared table itself grants it nothing
            conn.execute(f"SELECT count(*) FROM tenantstore_vectors.{free['vectorIndex'].replace('-', '_')}")
    enterprise_db = free["uri"].rsplit("/", 1)[0] + "/" + secrets["enterprise"]["database"]
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(enterprise_db)


def test_invalid_manifests_are_refused_by_the_api_server(kubectl: Kubectl, namespace: str) -> None:
    from tenantstore_dev.environment import KubectlError

    with pytest.raises(KubectlError, match="spec.tenantId"):
        kubectl.apply(tenant_store("bad-id", namespace, "Not_Valid"))
    with pytest.raises(KubectlError, match="spec.tier"):
        kubectl.apply(tenant_store("bad-tier", namespace, "bad-tier", tier="platinum"))
    with pytest.raises(KubectlError, match="spec.vector.metric"):
        kubectl.apply(tenant_store("bad-metric", namespace, "bad-metric", vector={"dimension": 3, "metric": "hamming"}))

    kubectl.apply(tenant_store("immutable", namespace, "immutable-1", storeClassName="nonexistent-class"))
    with pytest.raises(KubectlError, match="tenantId is immutable"):
        kubectl.apply(tenant_store("immutable", namespace, "immutable-2", storeClassName="nonexistent-class"))
    with pytest.raises(KubectlError, match="vector.dimension is immutable"):
        kubectl.apply(tenant_store("immutable", namespace, "immutable-1", dimension=4,
                                   storeClassName="nonexistent-class"))


def test_delete_removes_everything_and_nothing_else(env: LocalEnvironment, kubectl: Kubectl,
                                                   operator: OperatorProcess, namespace: str) -> None:
    for name, tier in (("doomed", "free"), ("doomed-ent", "enterprise"), ("bystander", "free")):
        kubectl.apply(tenant_store(name, namespace, name, tier=tier))
    kubectl("wait", "--for=condition=Ready", "tenantstores", "--all", "-n", namespace, "--timeout=120s")
    bystander = tenant_secret(kubectl, namespace, "bystander-store")
    with psycopg.connect(bystander["uri"], autocommit=True) as conn:
        conn.execute(f"INSERT INTO {bystander['vectorTable']} (namespace, id, embedding) "
                     "VALUES ('bystander', 'keep-me', '[1,0,0]')")

    kubectl("delete", "tenantstore", "doomed", "doomed-ent", "-n", namespace, "--wait=false")
    wait_until_gone(kubectl, "tenantstore", "doomed", namespace)
    wait_until_gone(kubectl, "tenantstore", "doomed-ent", namespace)

    with superuser(env) as conn:
        for role in ("tenant_doomed", "tenant_doomed_ent"):
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_doomed'").fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'tenant_doomed_ent'").fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_class WHERE relname = 'tenant_doomed'").fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_policies WHERE policyname LIKE 'tenant_doomed%'").fetchone() is None
    assert kubectl.get("secret", "doomed-store", namespace) is None
    assert kubectl.get("secret", "doomed-ent-store", namespace) is None
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=TeardownVerified", "-o", "name")
    assert len(events.split()) == 2

    with psycopg.connect(bystander["uri"], autocommit=True) as conn:
        assert conn.execute(f"SELECT id FROM {bystander['vectorTable']}").fetchall() == [("keep-me",)]


def test_retain_keeps_the_data_and_a_new_store_adopts_it(env: LocalEnvironment, kubectl: Kubectl,
                                                         operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("keeper", namespace, "keeper", deletionPolicy="Retain"))
    wait_for_condition(kubectl, namespace, "keeper", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "keeper-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE tenant_keeper.ledger (entry text)")
        conn.execute("INSERT INTO tenant_keeper.ledger VALUES ('precious')")

    kubectl("delete", "tenantstore", "keeper", "-n", namespace, "--timeout=60s")
    retained = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=Retained", "-o",
                       "jsonpath={.items[*].message}")
    assert "kept Postgres role tenant_keeper" in retained
    with psycopg.connect(secret["uri"], autocommit=True) as conn:  # role and data are still there
        assert conn.execute("SELECT entry FROM tenant_keeper.ledger").fetchall() == [("precious",)]
    assert tenant_secret(kubectl, namespace, "keeper-store")["password"] == secret["password"]

    kubectl.apply(tenant_store("keeper", namespace, "keeper"))
    wait_for_condition(kubectl, namespace, "keeper", "Ready", "True")
    assert tenant_secret(kubectl, namespace, "keeper-store")["password"] == secret["password"]
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT entry FROM tenant_keeper.ledger").fetchall() == [("precious",)]
    kubectl("delete", "tenantstore", "keeper", "-n", namespace, "--timeout=60s")
    with superuser(env) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenant_keeper'").fetchone() is None


def test_retained_data_is_adopted_only_in_its_own_namespace(env: LocalEnvironment, kubectl: Kubectl,
                                                            operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("vault", namespace, "vault", deletionPolicy="Retain"))
    wait_for_condition(kubectl, namespace, "vault", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "vault-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE tenant_vault.ledger (entry text)")
        conn.execute("INSERT INTO tenant_vault.ledger VALUES ('precious')")
    kubectl("delete", "tenantstore", "vault", "-n", namespace, "--timeout=60s")

    intruder = f"{namespace[:40]}-elsewhere"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": intruder}})
    kubectl.apply(tenant_store("vault", intruder, "vault", deletionPolicy="Delete"))
    refused = wait_for_condition(kubectl, intruder, "vault", "Ready", "False", reason="TenantIdConflict")
    assert namespace not in condition(refused, "Ready")["message"]  # another namespace's names are not told
    assert kubectl.get("secret", "vault-store", intruder) is None
    # Deleting the refused TenantStore touches nothing of the retained tenant.
    kubectl("delete", "tenantstore", "vault", "-n", intruder, "--timeout=60s")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:  # the kept password still logs in
        assert conn.execute("SELECT entry FROM tenant_vault.ledger").fetchall() == [("precious",)]

    kubectl.apply(tenant_store("vault", namespace, "vault"))  # its own namespace adopts it
    wait_for_condition(kubectl, namespace, "vault", "Ready", "True")
    assert tenant_secret(kubectl, namespace, "vault-store")["password"] == secret["password"]
    kubectl("delete", "tenantstore", "vault", "-n", namespace, "--timeout=60s")
    with superuser(env) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenant_vault'").fetchone() is None
        assert conn.execute("SELECT 1 FROM tenantstore.claims WHERE role = 'tenant_vault'").fetchone() is None
