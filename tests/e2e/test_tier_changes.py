"""Tier changes that move a tenant's vectors, with nothing lost or duplicated, even across a crash."""
from __future__ import annotations

from e2e_kit import (condition, contents, fill, fill_tables, store_class, superuser, tables, tenant_secret,
                     tenant_store, wait_for_condition)

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for

VECTORS = 5000
# The enterprise tier here keeps relational data in a schema, so only the vectors move (see the README).
MOVERS_TIERS = {"enterprise": {"relational": "schema", "vector": "dedicated"}}


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


def wait_for_relational(kubectl: Kubectl, namespace: str, name: str, relational: str) -> dict:
    def moved() -> dict | None:
        body = kubectl.get("tenantstore", name, namespace)
        status = body.get("status") or {}
        done = (status.get("isolation", {}).get("relational") == relational and status.get("phase") == "Ready"
                and not status.get("migration") and not status.get("relationalMigration")
                and condition(body, "Ready").get("status") == "True"
                and status.get("observedGeneration") == body["metadata"]["generation"])
        return body if done else None
    return wait_for(f"{name} to keep its tables in a {relational} and be Ready", moved, timeout=180)


def test_schema_to_database_and_back_keeps_tables_sequences_views_and_vectors(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("rooted", namespace, "rooted"))  # default class: enterprise means a database
    wait_for_condition(kubectl, namespace, "rooted", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "rooted-store")
    fill(secret, VECTORS)
    fill_tables(secret, 1_000)
    before_tables, before_vectors = tables(secret), contents(secret)

    set_tier(kubectl, namespace, "rooted", "enterprise")
    body = wait_for_relational(kubectl, namespace, "rooted", "database")
    assert body["status"]["relational"]["database"] == "tenant_rooted"
    moved = tenant_secret(kubectl, namespace, "rooted-store")
    assert (moved["database"], moved["schema"]) == ("tenant_rooted", "public")
    assert tables(moved) == before_tables and contents(moved) == before_vectors
    with superuser(env) as conn:  # the source schema is gone
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_rooted'").fetchone() is None
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=RelationalDataCopied",
                     "-o", "jsonpath={.items[*].message}")
    assert "1 tables (1000 rows)" in events

    set_tier(kubectl, namespace, "rooted", "free")
    wait_for_relational(kubectl, namespace, "rooted", "schema")
    back = tenant_secret(kubectl, namespace, "rooted-store")
    assert (back["database"], back["schema"]) == ("tenants", "tenant_rooted")
    assert tables(back) == before_tables and contents(back) == before_vectors
    with superuser(env) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'tenant_rooted'").fetchone() is None
    kubectl("delete", "tenantstore", "rooted", "-n", namespace, "--timeout=60s")


def test_a_relational_move_interrupted_by_a_crash_finishes_after_restart(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("uprooted", namespace, "uprooted"))
    wait_for_condition(kubectl, namespace, "uprooted", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "uprooted-store")
    fill(secret, VECTORS)
    fill_tables(secret, 300_000)  # a copy that takes long enough to be interrupted
    before_tables, before_vectors = tables(secret), contents(secret)

    set_tier(kubectl, namespace, "uprooted", "enterprise")
    wait_for("the relational copy to start", lambda: ((kubectl.get("tenantstore", "uprooted", namespace)["status"]
                                                       .get("relationalMigration") or {}).get("state") == "Copying")
             or None, timeout=60, interval=0.05)
    operator.kill()
    stalled = kubectl.get("tenantstore", "uprooted", namespace)["status"]
    assert stalled["phase"] == "Migrating" and stalled["isolation"]["relational"] == "schema"

    operator.start()
    wait_for_relational(kubectl, namespace, "uprooted", "database")
    moved = tenant_secret(kubectl, namespace, "uprooted-store")
    assert tables(moved) == before_tables and contents(moved) == before_vectors
    with superuser(env) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_uprooted'").fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenantstore_io_uprooted'").fetchone() is None
    assert not any((env.export_dir / ".moves").glob("*")) if (env.export_dir / ".moves").exists() else True
    kubectl("delete", "tenantstore", "uprooted", "-n", namespace, "--timeout=60s")
