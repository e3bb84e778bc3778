"""TenantStoreExport, restore into a new tenant, and deletionPolicy Export, on the real control plane.

The tenant's data is written through its own Secret (as its workloads would), exported by a
TenantStoreExport, restored into a tenant of another tier (schema → database), compared row by row and
vector by vector; then the source is deleted with deletionPolicy Export.
"""
from __future__ import annotations

import json
import shutil
from typing import Any

import psycopg
import pytest
from e2e_kit import (condition, export_resource, superuser, tenant_secret, tenant_store, wait_for_condition,
                     wait_for_export, wait_until_gone)

from tenantstore_dev.environment import Kubectl, KubectlError, LocalEnvironment, OperatorProcess, wait_for

VECTORS = 5_000


def refused(kubectl: Kubectl, manifest: dict[str, Any]) -> str:
    try:
        kubectl.apply(manifest)
    except KubectlError as error:
        return error.stderr
    pytest.fail(f"the API server accepted {manifest['kind']} {manifest['metadata']['name']}")


def fill(secret: dict[str, str]) -> None:
    schema, table = secret["schema"], secret.get("vectorTable")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.orders (id serial PRIMARY KEY, customer text, total numeric)")
        conn.execute(f"INSERT INTO {schema}.orders (customer, total) "
                     f"SELECT 'customer ' || g, g * 1.5 FROM generate_series(1, 300) g")
        conn.execute(f"CREATE SEQUENCE {schema}.invoice_numbers START 5000")
        conn.execute(f"SELECT nextval('{schema}.invoice_numbers') FROM generate_series(1, 42)")
        conn.execute(f"CREATE VIEW {schema}.big_orders AS SELECT * FROM {schema}.orders WHERE total > 300")
        assert table
        with conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} (namespace, id, embedding, metadata) VALUES (%s, %s, %s, %s)",
                               [(secret["vectorNamespace"], f"doc-{i:05}", json.dumps([1.0, i / VECTORS, 0.5]),
                                 json.dumps({"n": i})) for i in range(VECTORS)])


def relational_snapshot(secret: dict[str, str]) -> dict[str, Any]:
    schema = secret["schema"]
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        return {"orders": conn.execute(f"SELECT * FROM {schema}.orders ORDER BY id").fetchall(),
                "sequence": conn.execute(f"SELECT nextval('{schema}.invoice_numbers')").fetchone(),
                "view": conn.execute(f"SELECT count(*) FROM {schema}.big_orders").fetchone()}


def vectors_of(secret: dict[str, str]) -> list[tuple]:
    table = secret.get("vectorTable") or f"{secret['schema']}.vectors"
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        return conn.execute(f"SELECT id, embedding::text, metadata FROM {table} ORDER BY id").fetchall()


def test_export_restore_and_export_before_delete(env: LocalEnvironment, kubectl: Kubectl,
                                                 operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(tenant_store("exp-src", namespace, "exp-src", tier="free", quotas={"maxDocuments": 0}))
    wait_for_condition(kubectl, namespace, "exp-src", "Ready", "True")
    source = tenant_secret(kubectl, namespace, "exp-src-store")
    fill(source)

    kubectl.apply(export_resource("exp-1", namespace, "exp-src", "offboarding/exp-src"))
    done = wait_for_export(kubectl, namespace, "exp-1")["status"]
    assert (done["vectors"], done["tables"], done["rows"]) == (VECTORS, 1, 300)
    assert condition({"status": done}, "Ready")["status"] == "True"
    assert set(done["checksums"]) == {"relational.sql", "vectors-000001.jsonl"}
    directory = env.export_dir / namespace / "offboarding" / "exp-src"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["vectors"]["count"] == VECTORS and manifest["tenantId"] == "exp-src"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert "vectors-000001.jsonl" in json.dumps(kubectl.get("tenantstoreexport", "exp-1", namespace)["status"])

    # Restored into an enterprise tenant: its own database, its own vector table.
    kubectl.apply(tenant_store("exp-dst", namespace, "exp-dst", tier="enterprise",
                               restoreFrom={"volume": {"path": "offboarding/exp-src"}}))
    restored = wait_for_condition(kubectl, namespace, "exp-dst", "Ready", "True", timeout=180)
    assert restored["status"]["restore"]["vectors"] == VECTORS and restored["status"]["restore"]["rows"] == 300
    target = tenant_secret(kubectl, namespace, "exp-dst-store")
    assert relational_snapshot(target) == relational_snapshot(source)
    assert vectors_of(target) == vectors_of(source)
    # restoreFrom is for creation only.
    assert "restoreFrom is immutable" in refused(kubectl, tenant_store(
        "exp-dst", namespace, "exp-dst", tier="enterprise", restoreFrom={"volume": {"path": "elsewhere"}}))

    # deletionPolicy Export: the final export is written and verified, then everything goes.
    kubectl("patch", "tenantstore", "exp-src", "-n", namespace, "--type=merge", "-p", json.dumps(
        {"spec": {"deletionPolicy": "Export", "finalExport": {"destination": {"volume": {"path": "final/exp-src"}}}}}))
    uid = kubectl.get("tenantstore", "exp-src", namespace)["metadata"]["uid"]
    kubectl("delete", "tenantstore", "exp-src", "-n", namespace, "--wait=false")
    wait_until_gone(kubectl, "tenantstore", "exp-src", namespace, timeout=180)
    final = kubectl.get("tenantstoreexport", f"exp-src-final-{uid[:8]}", namespace)
    assert final["status"]["phase"] == "Completed" and final["status"]["vectors"] == VECTORS
    assert (env.export_dir / namespace / "final" / "exp-src" / "manifest.json").is_file()
    with superuser(env) as conn:
        assert conn.execute("SELECT rolname FROM pg_roles WHERE rolname IN "
                            "('tenant_exp_src', 'tenantstore_io_exp_src', 'tenantstore_hold_exp_src')").fetchall() == []
    kubectl("delete", "tenantstore", "exp-dst", "-n", namespace, "--timeout=120s")


def test_a_failed_final_export_keeps_the_data_and_says_why(env: LocalEnvironment, kubectl: Kubectl,
                                                          operator: OperatorProcess, namespace: str) -> None:
    blocked = env.export_dir / namespace / "blocked"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the export's directory should be")
    kubectl.apply(tenant_store("exp-keep", namespace, "exp-keep", deletionPolicy="Export",
                               finalExport={"destination": {"volume": {"path": "blocked/exp-keep"}}}))
    wait_for_condition(kubectl, namespace, "exp-keep", "Ready", "True")
    kubectl("delete", "tenantstore", "exp-keep", "-n", namespace, "--wait=false")
    pending = wait_for_condition(kubectl, namespace, "exp-keep", "Ready", "False", reason="FinalExportPending")
    wait_for("the final export's failure in the TenantStore's condition", lambda: "ExportFailed" in json.dumps(
        kubectl.get("tenantstore", "exp-keep", namespace)) or None, timeout=60)
    assert pending["status"]["phase"] == "Deleting"
    with superuser(env) as conn:  # nothing deleted
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenant_exp_keep'").fetchone() is not None
    assert kubectl.get("secret", "exp-keep-store", namespace) is not None

    blocked.unlink()  # the volume is fixed: the export goes on, then the deletion
    wait_until_gone(kubectl, "tenantstore", "exp-keep", namespace, timeout=180)
    with superuser(env) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenant_exp_keep'").fetchone() is None
    shutil.rmtree(env.export_dir / namespace, ignore_errors=True)


def test_an_export_of_a_missing_tenant_fails_clearly(kubectl: Kubectl, operator: OperatorProcess,
                                                     namespace: str) -> None:
    kubectl.apply(export_resource("nobody", namespace, "no-such-tenant", "x"))
    failed = wait_for_export(kubectl, namespace, "nobody", phase="Failed", timeout=60)["status"]
    assert condition({"status": failed}, "Stalled")["status"] == "True"
    assert "no-such-tenant does not exist" in condition({"status": failed}, "Ready")["message"]
    assert "spec.destination.volume.path" in refused(kubectl, export_resource("escape", namespace, "x",
                                                                              "../other-namespace"))


def test_an_export_to_s3_and_a_restore_from_it(kubectl: Kubectl, operator: OperatorProcess, s3_server,
                                               namespace: str) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "backup-bucket", "namespace": namespace},
                   "stringData": {"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key}})
    bucket = {"s3": {"endpoint": s3_server.endpoint, "bucket": s3_server.bucket, "prefix": f"{namespace}/s3-src",
                     "credentialsSecret": {"name": "backup-bucket"}}}
    kubectl.apply(tenant_store("s3-src", namespace, "s3-src", tier="pro"))
    wait_for_condition(kubectl, namespace, "s3-src", "Ready", "True")
    source = tenant_secret(kubectl, namespace, "s3-src-store")
    fill(source)
    kubectl.apply({**export_resource("to-s3", namespace, "s3-src", "unused"),
                   "spec": {"tenantStoreName": "s3-src", "destination": bucket}})
    done = wait_for_export(kubectl, namespace, "to-s3")["status"]
    assert done["location"] == f"s3:{s3_server.bucket}/{namespace}/s3-src" and done["vectors"] == VECTORS

    kubectl.apply(tenant_store("s3-dst", namespace, "s3-dst", tier="pro", restoreFrom=bucket))
    wait_for_condition(kubectl, namespace, "s3-dst", "Ready", "True", timeout=180)
    target = tenant_secret(kubectl, namespace, "s3-dst-store")
    assert relational_snapshot(target) == relational_snapshot(source)
    assert vectors_of(target) == vectors_of(source)
    assert "name exactly one of volume and s3" in refused(kubectl, {
        **export_resource("both", namespace, "s3-src", "x"),
        "spec": {"tenantStoreName": "s3-src", "destination": {**bucket, "volume": {"path": "x"}}}})
    kubectl("delete", "tenantstores", "--all", "-n", namespace, "--timeout=120s")


def test_a_final_export_made_by_someone_else_deletes_nothing(env: LocalEnvironment, kubectl: Kubectl,
                                                             operator: OperatorProcess, namespace: str) -> None:
    """The final export's name is predictable: one made in advance for another tenant (or elsewhere) is not it."""
    for name in ("exp-victim", "exp-decoy"):
        kubectl.apply(tenant_store(name, namespace, name, deletionPolicy="Export",
                                   finalExport={"destination": {"volume": {"path": f"final/{name}"}}}))
        wait_for_condition(kubectl, namespace, name, "Ready", "True")
    uid = kubectl.get("tenantstore", "exp-victim", namespace)["metadata"]["uid"]
    decoy = export_resource(f"exp-victim-final-{uid[:8]}", namespace, "exp-decoy", "final/exp-victim")
    kubectl.apply(decoy)
    wait_for_export(kubectl, namespace, decoy["metadata"]["name"])
    kubectl("delete", "tenantstore", "exp-victim", "-n", namespace, "--wait=false")
    wait_for("the victim to refuse the decoy export", lambda: "does not export this TenantStore" in json.dumps(
        kubectl.get("tenantstore", "exp-victim", namespace)) or None, timeout=60)
    with superuser(env) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenant_exp_victim'").fetchone() is not None

    kubectl("delete", "tenantstoreexport", decoy["metadata"]["name"], "-n", namespace)
    wait_until_gone(kubectl, "tenantstore", "exp-victim", namespace, timeout=180)
    manifest = json.loads((env.export_dir / namespace / "final" / "exp-victim" / "manifest.json").read_text())
    assert manifest["tenantId"] == "exp-victim"
    kubectl("delete", "tenantstores", "--all", "-n", namespace, "--wait=false")
    wait_until_gone(kubectl, "tenantstore", "exp-decoy", namespace, timeout=180)
