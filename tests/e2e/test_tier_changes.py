"""Tier changes that move a tenant's vectors, with nothing lost or duplicated, even across a crash."""
from __future__ import annotations

import psycopg
from e2e_kit import condition, store_class, superuser, tenant_secret, tenant_store, wait_for_condition

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for

VECTORS = 5000
# The enterprise tier here keeps relational data in a schema, so only the vectors move (see the README).
MOVERS_TIERS = {"enterprise": {"relational": "schema", "vector": "dedicated"}}


def fill(secret: dict[str, str], count: int) -> None:
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        if secret["vectorNamespace"]:
            conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding, metadata) "
                         "SELECT %s, 'v' || lpad(i::text, 5, '0'), ARRAY[i, 1, 0]::real[]::vector, "
                         "jsonb_build_object('n', i) FROM generate_series(1, %s) i", (secret["vectorNamespace"], count))
        else:
            conn.execute(f"INSERT INTO {secret['vectorTable']} (id, embedding, metadata) "
                         "SELECT 'v' || lpad(i::text, 5, '0'), ARRAY[i, 1, 0]::real[]::vector, "
                         "jsonb_build_object('n', i) FROM generate_series(1, %s) i", (count,))


def contents(secret: dict[str, str]) -> list[tuple]:
    """Everything the tenant sees, with its own credentials."""
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        return conn.execute(f"SELECT id, embedding::text, metadata FROM {secret['vectorTable']} ORDER BY id").fetchall()


def set_tier(kubectl: Kubectl, namespace: str, name: str, tier: str) -> None:
    kubectl("patch", "tenantstore", name, "-n", namespace, "--type=merge", "-p", f'{{"spec": {{"tier": "{tier}"}}}}')


def wait_for_isolation(kubectl: Kubectl, namespace: str, name: str, vector: str) -> dict:
    last: dict = {}

    def moved() -> dict | None:
        body = last["body"] = kubectl.get("tenantstore", name, namespace)
        status = body.get("status") or {}
        done = (status.get("isolation", {}).get("vector") == vector and status.get("phase") == "Ready"
                and not status.get("migration") and condition(body, "Ready").get("status") == "True"
                and status.get("observedGeneration") == body["metadata"]["generation"])
        return body if done else None
    try:
        return wait_for(f"{name} to have {vector} vectors and be Ready", moved, timeout=120)
    except TimeoutError as error:
        raise AssertionError(f"{error}; last status: {last.get('body', {}).get('status')}") from None


def test_free_to_enterprise_and_back_keeps_every_vector(env: LocalEnvironment, kubectl: Kubectl,
                                                        operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(store_class("movers", tiers=MOVERS_TIERS))
    kubectl.apply(tenant_store("mover", namespace, "mover", storeClassName="movers"))
    wait_for_condition(kubectl, namespace, "mover", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "mover-store")
    fill(secret, VECTORS)
    before = contents(secret)
    assert len(before) == VECTORS

    set_tier(kubectl, namespace, "mover", "enterprise")
    body = wait_for_isolation(kubectl, namespace, "mover", "dedicated")
    assert body["status"]["vectorStore"]["index"] == "ts-mover"
    dedicated = tenant_secret(kubectl, namespace, "mover-store")
    assert dedicated["vectorTable"] == "tenant_mover.vectors" and dedicated["vectorNamespace"] == ""
    assert contents(dedicated) == before
    with superuser(env) as conn:  # the source partition is gone
        assert conn.execute("SELECT to_regclass('tenantstore_vectors.tenant_mover')").fetchone()[0] is None
    assert condition(body, "Migrating")["status"] == "False"
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=VectorsCopied",
                     "-o", "jsonpath={.items[*].message}")
    assert f"{VECTORS} vectors copied" in events

    set_tier(kubectl, namespace, "mover", "free")
    wait_for_isolation(kubectl, namespace, "mover", "namespace")
    shared = tenant_secret(kubectl, namespace, "mover-store")
    assert shared["vectorNamespace"] == "mover"
    assert contents(shared) == before
    with superuser(env) as conn:
        assert conn.execute("SELECT to_regclass('tenant_mover.vectors')").fetchone()[0] is None
    kubectl("delete", "tenantstore", "mover", "-n", namespace, "--timeout=60s")


def test_a_migration_interrupted_by_a_crash_finishes_after_restart(env: LocalEnvironment, kubectl: Kubectl,
                                                                   operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(store_class("movers", tiers=MOVERS_TIERS))
    kubectl.apply(tenant_store("crasher", namespace, "crasher", tier="enterprise", storeClassName="movers"))
    wait_for_condition(kubectl, namespace, "crasher", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "crasher-store")
    fill(secret, VECTORS)
    before = contents(secret)

    set_tier(kubectl, namespace, "crasher", "free")
    wait_for("the copy to start", lambda: (kubectl.get("tenantstore", "crasher", namespace)["status"]
                                           .get("migration") or {}).get("copied", 0) > 0, timeout=60)
    with superuser(env) as blocker:
        # Stall the copy where it is (inserts into the target partition wait for this lock), then crash.
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE tenantstore_vectors.tenant_crasher IN SHARE MODE")
        operator.kill()
        stalled = kubectl.get("tenantstore", "crasher", namespace)["status"]
        blocker.execute("ROLLBACK")
    assert stalled["phase"] == "Migrating"
    assert 0 < stalled["migration"]["copied"] < VECTORS, stalled["migration"]

    operator.start()
    wait_for_isolation(kubectl, namespace, "crasher", "namespace")
    after = contents(tenant_secret(kubectl, namespace, "crasher-store"))
    assert after == before  # same ids, values and metadata: nothing lost, nothing twice
    kubectl("delete", "tenantstore", "crasher", "-n", namespace, "--timeout=60s")


def test_a_relational_move_is_refused_and_the_tenant_keeps_working(kubectl: Kubectl, operator: OperatorProcess,
                                                                   namespace: str) -> None:
    kubectl.apply(tenant_store("rooted", namespace, "rooted"))  # default class: enterprise means a database
    wait_for_condition(kubectl, namespace, "rooted", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "rooted-store")
    fill(secret, 10)

    set_tier(kubectl, namespace, "rooted", "enterprise")
    body = wait_for_condition(kubectl, namespace, "rooted", "Ready", "False", reason="RelationalMigrationUnsupported")
    assert "schema" in condition(body, "Ready")["message"] and "database" in condition(body, "Ready")["message"]
    assert body["status"]["phase"] == "Ready"  # still serving, on its old isolation
    assert body["status"]["isolation"] == {"relational": "schema", "vector": "namespace"}
    assert len(contents(secret)) == 10

    set_tier(kubectl, namespace, "rooted", "free")
    wait_for_condition(kubectl, namespace, "rooted", "Ready", "True")
    kubectl("delete", "tenantstore", "rooted", "-n", namespace, "--timeout=60s")
