"""Scoped credentials end to end: Secrets a workload mounts, a readWrite login that acts as the tenant, a readOnly one
that only reads, a credential removed (sessions, login and Secret gone), a Secret deleted by hand written again,
and the tenant's deletion leaving none of them."""
from __future__ import annotations

import json
import threading

import psycopg
import pytest
from e2e_kit import audit_cli, insert_vector, tenant_secret, tenant_store, vector_ids, wait_for_condition, wait_until_gone

from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for

APP = {"name": "app"}
VIEWER = {"name": "viewer", "access": "readOnly"}


def scoped(namespace: str, *credentials: dict[str, str], **spec: object) -> dict[str, object]:
    return tenant_store("scoped", namespace, "scoped", credentials=list(credentials), **spec)


def test_scoped_credentials_from_creation_to_deletion(kubectl: Kubectl, operator: OperatorProcess,
                                                      namespace: str) -> None:
    kubectl.apply(scoped(namespace, APP, VIEWER, quotas={"maxConnections": 9}))
    body = wait_for_condition(kubectl, namespace, "scoped", "Ready", "True")
    shown = ("name", "access", "secretName", "user", "connectionLimit", "generation")
    assert [{key: entry[key] for key in shown} for entry in body["status"]["credentials"]] == [
        {"name": "app", "access": "readWrite", "secretName": "scoped-app", "user": "tscred_scoped_app_a",
         "connectionLimit": 3, "generation": 1},
        {"name": "viewer", "access": "readOnly", "secretName": "scoped-viewer", "user": "tscred_scoped_viewer_a",
         "connectionLimit": 3, "generation": 1}]
    owner, app, viewer = (tenant_secret(kubectl, namespace, name)
                          for name in ("scoped-store", "scoped-app", "scoped-viewer"))
    assert viewer["access"] == viewer["vectorAccess"] == "readOnly" and app["access"] == "readWrite"
    assert {key: app[key] for key in ("host", "database", "schema", "vectorTable")} == \
        {key: owner[key] for key in ("host", "database", "schema", "vectorTable")}

    insert_vector(app, "from-app")
    with psycopg.connect(app["uri"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {app['schema']}.notes (body text)")
        conn.execute(f"INSERT INTO {app['schema']}.notes VALUES ('hello')")
    assert vector_ids(viewer) == ["from-app"]
    with psycopg.connect(viewer["uri"], autocommit=True) as conn:
        assert conn.execute(f"SELECT body FROM {viewer['schema']}.notes").fetchall() == [("hello",)]
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
            conn.execute(f"DELETE FROM {viewer['vectorTable']}")
    viewer_session = psycopg.connect(viewer["uri"], autocommit=True)

    # A Secret deleted by hand is written again, with a password its login takes.
    kubectl("delete", "secret", "scoped-app", "-n", namespace)
    renewed = wait_for("the app Secret written again", lambda: kubectl.get("secret", "scoped-app", namespace))
    assert renewed is not None
    app = tenant_secret(kubectl, namespace, "scoped-app")
    wait_for("the app login to take the new password", lambda: psycopg.connect(app["uri"]).close() or True)

    kubectl.apply(scoped(namespace, APP, quotas={"maxConnections": 9}))
    wait_until_gone(kubectl, "secret", "scoped-viewer", namespace)
    body = wait_for("status without the viewer", lambda: (b := kubectl.get("tenantstore", "scoped", namespace))
                    and len(b["status"].get("credentials") or ()) == 1 and b)
    assert body["status"]["credentials"][0]["connectionLimit"] == 4  # the viewer's share went back to the others
    with pytest.raises(psycopg.OperationalError):
        viewer_session.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(viewer["uri"]).close()

    kubectl("delete", "tenantstore", "scoped", "-n", namespace, "--timeout=60s")
    assert kubectl.get("secret", "scoped-app", namespace) is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(app["uri"]).close()
    trail = json.loads(audit_cli(kubectl, "scoped", "-o", "json"))
    actions = [entry["action"] for entry in trail]
    assert actions.count("CredentialCreated") == 2 and "CredentialRemoved" in actions


def test_more_logins_than_connections_is_a_spec_error(kubectl: Kubectl, operator: OperatorProcess,
                                                      namespace: str) -> None:
    kubectl.apply(tenant_store("cramped", namespace, "cramped", credentials=[APP, VIEWER],
                               quotas={"maxConnections": 2}))
    ready = wait_for_condition(kubectl, namespace, "cramped", "Ready", "False", reason="InvalidSpec")
    assert "3 logins" in next(c for c in ready["status"]["conditions"] if c["type"] == "Ready")["message"]



def test_a_client_that_follows_its_secret_never_fails_through_three_rotations(kubectl: Kubectl,
                                                                              operator: OperatorProcess,
                                                                              namespace: str) -> None:
    kubectl.apply(tenant_store("rotating", namespace, "rotating",
                               credentials=[{"name": "app", "rotation": {"overlap": "8s"}}]))
    wait_for_condition(kubectl, namespace, "rotating", "Ready", "True")
    first = tenant_secret(kubectl, namespace, "rotating-app")
    failures: list[str] = []
    logins = 0
    stop = threading.Event()

    def client() -> None:
        """Reconnects in a loop with whatever the Secret says, as a pod with the Secret mounted would."""
        nonlocal logins
        while not stop.is_set():
            secret = tenant_secret(kubectl, namespace, "rotating-app")
            try:
                with psycopg.connect(secret["uri"], connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                logins += 1
            except psycopg.OperationalError as error:
                failures.append(str(error))

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    users = [first["user"]]
    try:
        for turn in (1, 2, 3):
            kubectl("annotate", "tenantstore", "rotating", "-n", namespace, f"rotate.tenancy.dev/app=turn-{turn}",
                    "--overwrite")
            rotated = wait_for(f"rotation {turn}", lambda turn=turn: (b := kubectl.get("tenantstore", "rotating", namespace))
                               and b["status"]["credentials"][0]["generation"] == turn + 1 and b)
            users.append(rotated["status"]["credentials"][0]["user"])
            assert rotated["status"]["credentials"][0]["previousUser"] == users[-2]
            wait_for(f"the end of overlap {turn}", lambda: "previousUser" not in
                     kubectl.get("tenantstore", "rotating", namespace)["status"]["credentials"][0], timeout=60)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert failures == [] and logins > 10, (failures[:3], logins)
    assert users == ["tscred_rotating_app_a", "tscred_rotating_app_b"] * 2
    last = tenant_secret(kubectl, namespace, "rotating-app")
    with psycopg.connect(last["uri"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # The overlap is over: the passwords of earlier turns no longer open anything.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed|not permitted to log in"):
        psycopg.connect(first["uri"]).close()
    trail = [entry["action"] for entry in json.loads(audit_cli(kubectl, "rotating", "-o", "json"))]
    assert trail.count("CredentialRotated") == 3 and trail.count("CredentialRetired") == 3
