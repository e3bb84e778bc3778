"""A StoreClass with spec.globalStore on the running operator: the class makes its global index and writer Secret,
the platform writes product docs with that Secret, and tenants (one in the shared database, one with a database of
its own) search them with the client library from their own Secrets, while their own stores stay their own."""
from __future__ import annotations

import base64
from typing import Any

import psycopg
import pytest
import tenantstore_client as ts
from e2e_kit import (SEEN_PASSWORDS, condition, pinecone_vector, store_class, superuser, tenant_secret, tenant_store,
                     wait_for_condition)
from pinecone_server import PineconeTestServer

from tenantstore_dev.environment import OPERATOR_NAMESPACE, Kubectl, LocalEnvironment, OperatorProcess, wait_for

CLASS = "global-docs"
WRITER_SECRET = f"{CLASS}-global-3-cosine"
DOCS = [ts.Vector(f"guide-{i}", [1.0, 0.1 * i, 0.2], {"topic": "setup" if i < 3 else "billing"}) for i in range(5)]
PROBE = [1.0, 0.1, 0.2]


def class_condition(kubectl: Kubectl, type_: str, status: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = condition(kubectl.get("storeclass", CLASS), type_)
        return found if found.get("status") == status else None
    return wait_for(f"StoreClass {CLASS} {type_}={status}", probe, timeout=90)


def writer_secret(kubectl: Kubectl) -> dict[str, str]:
    body = wait_for(f"Secret {WRITER_SECRET}", lambda: kubectl.get("secret", WRITER_SECRET, OPERATOR_NAMESPACE),
                    timeout=30)
    data = {key: base64.b64decode(value).decode() for key, value in body["data"].items()}
    SEEN_PASSWORDS.add(data["password"])  # no log line, Event or status may carry it either
    assert body["metadata"]["ownerReferences"][0]["kind"] == "StoreClass"
    return data


def reader_members(env: LocalEnvironment, reader_role: str) -> list[str]:
    with superuser(env) as conn:
        return [row[0] for row in conn.execute(
            "SELECT m.member::regrole::text FROM pg_auth_members m WHERE m.roleid = to_regrole(%s) "
            "AND NOT m.admin_option ORDER BY 1",  # the admin's own grant (it made the role) aside
            (reader_role,)).fetchall()]


def test_tenants_search_the_class_global_index_and_only_the_platform_writes_it(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(store_class(CLASS, globalStore={"indexes": [{"dimension": 3, "metric": "cosine"}]}))
    try:
        ready = class_condition(kubectl, "GlobalStoreReady", "True")
        assert ready["reason"] == "GlobalIndexesReady"
        [recorded] = kubectl.get("storeclass", CLASS)["status"]["globalStore"]["indexes"]
        assert recorded["name"] == WRITER_SECRET and recorded["writerSecret"] == f"{OPERATOR_NAMESPACE}/{WRITER_SECRET}"
        with ts.connect(writer_secret(kubectl)) as writer:
            assert writer.upsert(DOCS) == 5

        kubectl.apply(tenant_store("gla", namespace, "gla", storeClassName=CLASS))
        kubectl.apply(tenant_store("gle", namespace, "gle", tier="enterprise", storeClassName=CLASS))
        kubectl.apply(tenant_store("glx", namespace, "glx", dimension=4, storeClassName=CLASS))  # no global of 4
        for name in ("gla", "gle", "glx"):
            wait_for_condition(kubectl, namespace, name, "Ready", "True", timeout=120)
        acme, globex = tenant_secret(kubectl, namespace, "gla-store"), tenant_secret(kubectl, namespace, "gle-store")
        assert acme["globalTable"] == globex["globalTable"] == recorded["table"]
        assert globex["database"] != "tenants" and globex["globalUri"].endswith("/tenants")
        assert "globalStore" not in tenant_secret(kubectl, namespace, "glx-store")

        with ts.connect(acme) as mine, ts.connect(globex) as theirs:
            mine.upsert([ts.Vector("acme-1", [1.0, 0.0, 0.3])])
            assert [m.id for m in mine.query(PROBE, top_k=10)] == ["acme-1"]
            assert theirs.query(PROBE, top_k=10) == []
            assert sorted(m.id for m in mine.query_global(PROBE, top_k=10)) == [d.id for d in DOCS]
            assert sorted(m.id for m in theirs.query_global(PROBE, top_k=10, filter={"topic": "billing"})) == [
                "guide-3", "guide-4"]
            with pytest.raises(ts.ReadOnlyCredential):
                theirs._global.upsert([ts.Vector("sneaky", PROBE)])
        for secret in (acme, globex):  # and past the library, Postgres refuses it
            schema, table = secret["globalTable"].split(".")
            with psycopg.connect(secret["globalUri"], autocommit=True) as conn, \
                    pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(psycopg.sql.SQL("DELETE FROM {}").format(psycopg.sql.Identifier(schema, table)))

        reader_role = f"tsglobal_{recorded['table'].rsplit('_', 1)[1]}_r"
        assert reader_members(env, reader_role) == ["tenant_gla", "tenant_gle"]
        with superuser(env) as conn:  # read access taken away by hand: verification finds it, repair gives it back
            conn.execute(psycopg.sql.SQL("REVOKE {} FROM tenant_gla").format(psycopg.sql.Identifier(reader_role)))
        wait_for("tenant_gla's read access to be given back", lambda: reader_members(env, reader_role) == [
            "tenant_gla", "tenant_gle"], timeout=60)
        wait_for_condition(kubectl, namespace, "gla", "Ready", "True")
        for name in ("gla", "gle", "glx"):
            kubectl("delete", "tenantstore", name, "-n", namespace, "--wait=true", "--timeout=120s")
        assert reader_members(env, reader_role) == []  # deleted tenants' roles took their membership along
        with ts.connect(writer_secret(kubectl)) as writer:
            assert writer.count() == 5  # the global index outlives its readers
    finally:
        kubectl("delete", "storeclass", CLASS, "--ignore-not-found", "--wait=true")
    # The writer Secret goes with its class (garbage collection of owner-referenced objects).
    wait_for("the writer Secret to be collected", lambda: kubectl.get("secret", WRITER_SECRET, OPERATOR_NAMESPACE)
             is None, timeout=60)


def test_a_pinecone_class_keeps_its_global_docs_in_a_reserved_namespace(kubectl: Kubectl, operator: OperatorProcess,
                                                                        namespace: str) -> None:
    server = PineconeTestServer().start()
    cone = "global-cone"
    try:
        kubectl.apply(store_class(cone, globalStore={"indexes": [{"dimension": 4, "metric": "cosine"}]},
                                  vector=pinecone_vector(kubectl, server, "pinecone-global", exposeApiKey=True)))
        wait_for(f"StoreClass {cone} GlobalStoreReady", lambda: condition(
            kubectl.get("storeclass", cone), "GlobalStoreReady").get("status") == "True", timeout=90)
        [recorded] = kubectl.get("storeclass", cone)["status"]["globalStore"]["indexes"]
        assert recorded["namespace"] == "_global" and recorded["index"] == "shared-4-cosine-0"
        body = wait_for("the writer Secret", lambda: kubectl.get("secret", f"{cone}-global-4-cosine",
                                                                   OPERATOR_NAMESPACE), timeout=30)
        writer = {key: base64.b64decode(value).decode() for key, value in body["data"].items()}
        with ts.connect(writer) as platform:
            platform.upsert([ts.Vector(f"guide-{i}", [1.0, 0.1 * i, 0.2, 0.3]) for i in range(3)])

        kubectl.apply(tenant_store("glpc", namespace, "glpc", storeClassName=cone, dimension=4))
        wait_for_condition(kubectl, namespace, "glpc", "Ready", "True")
        secret = tenant_secret(kubectl, namespace, "glpc-store")
        assert (secret["globalHost"], secret["globalNamespace"]) == (recorded["host"], "_global")
        with ts.connect(secret) as store:
            store.upsert([ts.Vector("mine", [1.0, 0.0, 0.0, 0.1])], scope=ts.scopes.project("q4"))
            assert [m.id for m in store.query([1.0, 0.0, 0.2, 0.3], top_k=10)] == ["mine"]
            assert sorted(m.id for m in store.query_global([1.0, 0.0, 0.2, 0.3], top_k=10)) == [
                "guide-0", "guide-1", "guide-2"]
            with pytest.raises(ts.ReadOnlyCredential):
                store._global.delete(ids=["guide-0"])
        # Counted by the next measurement (every second here): glpc alone, for _global is no tenant.
        assert wait_for(f"StoreClass {cone} counting glpc",
                        lambda: kubectl.get("storeclass", cone)["status"].get("tenants"), timeout=30) == 1
        kubectl("delete", "tenantstore", "glpc", "-n", namespace, "--wait=true", "--timeout=120s")
    finally:
        kubectl("delete", "storeclass", cone, "--ignore-not-found", "--wait=true", "--timeout=60s")
        server.stop()
    server.check()
