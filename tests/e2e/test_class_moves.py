"""Moving a tenant to another StoreClass: to a second Postgres server and back, and between pgvector and
Pinecone, with its tables, sequence, view, function and vectors, a client writing all along, and a crash."""
from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from e2e_kit import (DEFAULT_CLASS, audit_cli, condition, contents, fill, fill_tables, pinecone_vector, store_class,
                     superuser, tables, tenant_secret, tenant_store, wait_for_condition, wait_until_gone)
from pinecone_server import PineconeTestServer

from tenantstore_dev.environment import (OPERATOR_NAMESPACE, Kubectl, KubectlError, LocalEnvironment,
                                         OperatorProcess, wait_for)
from tenantstore_dev.postgres import EmbeddedPostgres

VECTORS = 10_000
ELSEWHERE = "elsewhere"  # a class on a second Postgres server


@pytest.fixture(scope="module")
def second_postgres(env: LocalEnvironment, kubectl: Kubectl,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("second-postgres")))
    server.start()
    admin_uri = server.prepare_for_tenantstore(admin_password=secrets.token_urlsafe(18))
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "pg-admin-second", "namespace": OPERATOR_NAMESPACE},
                   "stringData": {"uri": admin_uri}})
    kubectl.apply(store_class(ELSEWHERE, postgres={
        "adminSecretRef": {"name": "pg-admin-second", "namespace": OPERATOR_NAMESPACE, "key": "uri"},
        "database": "tenants"}))
    yield server
    kubectl("delete", "storeclass", ELSEWHERE)
    server.stop("immediate")


def move_to(kubectl: Kubectl, namespace: str, name: str, class_name: str) -> None:
    kubectl("patch", "tenantstore", name, "-n", namespace, "--type=merge", "-p",
            f'{{"spec": {{"storeClassName": "{class_name}", "storeClassChange": "Move"}}}}')


def wait_for_class(kubectl: Kubectl, namespace: str, name: str, class_name: str, timeout: float = 240) -> dict:
    last: dict = {}

    def moved() -> dict | None:
        body = last["body"] = kubectl.get("tenantstore", name, namespace)
        status = body.get("status") or {}
        done = (status.get("storeClassName") == class_name and status.get("phase") == "Ready"
                and not status.get("migration") and condition(body, "Ready").get("status") == "True"
                and status.get("observedGeneration") == body["metadata"]["generation"])
        return body if done else None
    try:
        return wait_for(f"{name} to live in StoreClass {class_name} and be Ready", moved, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}; last status: {last.get('body', {}).get('status')}") from None


def tenant_with_data(kubectl: Kubectl, namespace: str, name: str, vectors: int, rows: int,
                     **spec: object) -> tuple[dict[str, str], dict[str, object], list[tuple]]:
    """A Ready tenant of the first server's class holding `vectors` vectors and a table of `rows` rows (with a
    sequence, a view and a function), written with its own Secret: the Secret, its tables and its vectors."""
    kubectl.apply(tenant_store(name, namespace, name, storeClassName=DEFAULT_CLASS, **spec))
    wait_for_condition(kubectl, namespace, name, "Ready", "True")
    secret = tenant_secret(kubectl, namespace, f"{name}-store")
    fill(secret, vectors)
    fill_tables(secret, rows)
    return secret, tables(secret), contents(secret)


def crash_while_copying(kubectl: Kubectl, operator: OperatorProcess, namespace: str, name: str) -> None:
    """Start a move to the second server and kill the operator once some vectors are copied."""
    move_to(kubectl, namespace, name, ELSEWHERE)
    wait_for("the vector copy to start", lambda: (kubectl.get("tenantstore", name, namespace)["status"]
                                                  .get("migration") or {}).get("copied", 0) > 0,
             timeout=120, interval=0.05)
    operator.kill()


def roles(uri: str, tenant_id: str) -> list[str]:
    with psycopg.connect(uri, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s ORDER BY 1",
                                               (f"%{tenant_id.replace('-', '_')}%",))]


class Writer(threading.Thread):
    """A client that inserts one row at a time with what the tenant's Secret says, the way an application that
    follows its credentials behaves: it re-reads the Secret every half second and after a refused write.
    Stops by itself after `limit` seconds."""

    def __init__(self, kubectl: Kubectl, namespace: str, secret_name: str, limit: float = 600):
        super().__init__(daemon=True)
        self.kubectl, self.namespace, self.secret_name = kubectl, namespace, secret_name
        self.deadline = time.monotonic() + limit
        self.done = threading.Event()
        self.acknowledged: list[int] = []
        self.moving_to = ""  # the port of the server the tenant is moving to (set by the test)
        # (port written to, port moved to at the time, what Postgres said) of each refused write.
        self.refusals: list[tuple[str, str, str]] = []

    def secret(self) -> dict[str, str]:
        body = self.kubectl.get("secret", self.secret_name, self.namespace) or {}
        return {key: base64.b64decode(value).decode() for key, value in (body.get("data") or {}).items()}

    def run(self) -> None:
        n, secret, read_at = 0, {}, 0.0
        while not self.done.is_set() and time.monotonic() < self.deadline:
            n += 1
            if "uri" not in secret or time.monotonic() - read_at > 0.5:
                try:
                    secret, read_at = self.secret(), time.monotonic()
                except KubectlError:
                    continue
                if "uri" not in secret:
                    self.refusals.append(("", self.moving_to, f"the Secret has no uri: {sorted(secret)}"))
                    continue
            try:
                with psycopg.connect(secret["uri"], autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"INSERT INTO {secret['schema']}.writes (n) VALUES (%s)", (n,))
                self.acknowledged.append(n)
            except psycopg.Error as error:
                kind = "frozen" if isinstance(error, psycopg.errors.InsufficientPrivilege) else \
                    "login" if isinstance(error, psycopg.OperationalError) else str(error).strip().splitlines()[0]
                self.refusals.append((secret["port"], self.moving_to, kind))
                secret = {}
            except Exception as error:  # noqa: BLE001 (a test thread reports, it does not die silently)
                self.refusals.append((secret["port"], self.moving_to, repr(error)))
                secret = {}
            time.sleep(0.01)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)


def written(secret: dict[str, str]) -> set[int]:
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        return {row[0] for row in conn.execute(f"SELECT n FROM {secret['schema']}.writes")}


def test_a_tenant_moves_to_another_postgres_and_back_while_a_client_writes(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, second_postgres: EmbeddedPostgres,
        namespace: str) -> None:
    home, before_tables, before_vectors = tenant_with_data(kubectl, namespace, "voyager", VECTORS, 1_000, tier="pro",
                                                           credentials=[{"name": "viewer", "access": "readOnly"}])
    with psycopg.connect(home["uri"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {home['schema']}.writes (n int PRIMARY KEY)")
    writer = Writer(kubectl, namespace, "voyager-store")
    writer.moving_to = str(second_postgres.port)
    writer.start()
    wait_for("the client's first writes", lambda: len(writer.acknowledged) >= 3 or writer.refusals[-3:] or None,
             timeout=30)
    assert len(writer.acknowledged) >= 3, writer.refusals

    move_to(kubectl, namespace, "voyager", ELSEWHERE)
    body = wait_for_class(kubectl, namespace, "voyager", ELSEWHERE)
    away = tenant_secret(kubectl, namespace, "voyager-store")
    assert away["port"] == str(second_postgres.port) and away["password"] == home["password"]
    assert tables(away) == before_tables and contents(away) == before_vectors
    last = body["status"]["lastClassMove"]
    assert (last["fromClass"], last["toClass"]) == (DEFAULT_CLASS, ELSEWHERE) and 0 < last["frozenSeconds"] < 300
    assert condition(body, "Migrating")["status"] == "False"
    assert roles(env.admin_uri, "voyager") == []  # the source server holds nothing of the tenant any more
    # The scoped credential followed: its Secret names the new server, and it reads there (and only reads).
    viewer = wait_for("the viewer's Secret to name the new server", lambda: (
        found if (found := tenant_secret(kubectl, namespace, "voyager-viewer"))["port"] == away["port"] else None),
        timeout=60)
    with psycopg.connect(viewer["uri"], autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {viewer['schema']}.orders").fetchone() == (1_000,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(f"INSERT INTO {viewer['schema']}.writes (n) VALUES (-1)")
    # The audit trail followed: the new class's Postgres has the tenant's life before the move, once.
    def moved_trail() -> list | None:
        found = json.loads(audit_cli(kubectl, "voyager", "--store-class", ELSEWHERE, "-o", "json"))
        return found if "StoreClassMoved" in [entry["action"] for entry in found] else None
    trail = wait_for("the move's own entries in the new class's trail", moved_trail, timeout=30)
    assert [entry["action"] for entry in trail][:1] == ["Provisioned"]
    assert "in StoreClass standard]" in trail[0]["message"]
    merged = json.loads(audit_cli(kubectl, "voyager", "-o", "json"))  # every class: each entry once
    assert not any("in StoreClass standard]" in entry["message"] for entry in merged)
    assert len(merged) == len({(entry["action"], entry["message"], entry["at"]) for entry in merged})
    with superuser(env) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_voyager'").fetchone() is None
        assert conn.execute("SELECT to_regclass('tenantstore_vectors.tenant_voyager')").fetchone()[0] is None
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=voyager",
                     "-o", "jsonpath={.items[*].message}")
    assert f"and {VECTORS} vectors copied from StoreClass {DEFAULT_CLASS} to {ELSEWHERE}" in events
    wait_for("writes to the new server", lambda: written(away) & set(writer.acknowledged[-3:]) or None, timeout=30)

    writer.moving_to = home["port"]
    move_to(kubectl, namespace, "voyager", DEFAULT_CLASS)
    body = wait_for_class(kubectl, namespace, "voyager", DEFAULT_CLASS)
    back = tenant_secret(kubectl, namespace, "voyager-store")
    wait_for("writes to the first server again", lambda: written(back) & set(writer.acknowledged[-3:]) or None,
             timeout=30)
    writer.stop()
    assert back["port"] == home["port"]
    assert tables(back) == before_tables and contents(back) == before_vectors
    assert roles(second_postgres.superuser_uri("tenants"), "voyager") == []
    # Every write the client was told succeeded is there, wherever it was made. The server a move left refused
    # writes while the data was copied ("permission denied"), and logins once the role there was gone; the
    # server a move went to never refused one.
    assert set(writer.acknowledged) <= written(back)
    assert {kind for _, _, kind in writer.refusals} <= {"frozen", "login"}, writer.refusals
    assert [refusal for refusal in writer.refusals if refusal[0] == refusal[1]] == []
    assert sum(kind == "frozen" for _, _, kind in writer.refusals) > 0, "the client never met the freeze"
    kubectl("delete", "tenantstore", "voyager", "-n", namespace, "--timeout=60s")


def test_a_move_interrupted_by_a_crash_finishes_after_restart(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, second_postgres: EmbeddedPostgres,
        namespace: str) -> None:
    _, before_tables, before_vectors = tenant_with_data(kubectl, namespace, "drifter", VECTORS, 10_000,
                                                        tier="enterprise")

    crash_while_copying(kubectl, operator, namespace, "drifter")
    stalled = kubectl.get("tenantstore", "drifter", namespace)["status"]
    assert stalled["phase"] == "Migrating" and stalled["migration"]["state"] == "PreCopying", stalled["migration"]
    assert stalled["storeClassName"] == DEFAULT_CLASS

    operator.start()
    body = wait_for_class(kubectl, namespace, "drifter", ELSEWHERE)
    moved = tenant_secret(kubectl, namespace, "drifter-store")
    assert (moved["port"], moved["database"]) == (str(second_postgres.port), "tenant_drifter")
    assert tables(moved) == before_tables and contents(moved) == before_vectors  # nothing lost, nothing twice
    assert body["status"]["lastClassMove"]["frozenSeconds"] >= 0
    with superuser(env, "postgres") as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'tenant_drifter'").fetchone() is None
    assert roles(env.admin_uri, "drifter") == []
    kubectl("delete", "tenantstore", "drifter", "-n", namespace, "--timeout=60s")
    assert roles(second_postgres.superuser_uri("tenants"), "drifter") == []


def test_naming_the_old_class_again_before_the_cut_over_undoes_the_move(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, second_postgres: EmbeddedPostgres,
        namespace: str) -> None:
    kubectl.apply(tenant_store("homebody", namespace, "homebody", tier="pro", storeClassName=DEFAULT_CLASS))
    wait_for_condition(kubectl, namespace, "homebody", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "homebody-store")
    fill(secret, VECTORS)
    before = contents(secret)

    crash_while_copying(kubectl, operator, namespace, "homebody")  # the change below lands before the cut-over
    assert roles(second_postgres.superuser_uri("tenants"), "homebody") != []  # a partial copy is there
    move_to(kubectl, namespace, "homebody", DEFAULT_CLASS)
    operator.start()
    body = wait_for_class(kubectl, namespace, "homebody", DEFAULT_CLASS)
    assert "lastClassMove" not in body["status"]
    assert roles(second_postgres.superuser_uri("tenants"), "homebody") == []  # the new class's copy is gone
    assert tenant_secret(kubectl, namespace, "homebody-store") == secret
    assert contents(secret) == before
    with psycopg.connect(secret["uri"], autocommit=True) as conn:  # the tenant writes again
        conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) VALUES (%s, 'z', '[1,0,0]')",
                     (secret["vectorNamespace"],))
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=StoreClassMoveReverted",
                     "-o", "jsonpath={.items[*].message}")
    assert f"the move to StoreClass {ELSEWHERE} was given up" in events
    kubectl("delete", "tenantstore", "homebody", "-n", namespace, "--timeout=60s")


def test_a_tenant_deleted_in_the_middle_of_a_move_leaves_nothing_on_either_server(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, second_postgres: EmbeddedPostgres,
        namespace: str) -> None:
    kubectl.apply(tenant_store("quitter", namespace, "quitter", tier="pro", storeClassName=DEFAULT_CLASS))
    wait_for_condition(kubectl, namespace, "quitter", "Ready", "True")
    fill(tenant_secret(kubectl, namespace, "quitter-store"), VECTORS)

    uid = kubectl.get("tenantstore", "quitter", namespace)["metadata"]["uid"]
    crash_while_copying(kubectl, operator, namespace, "quitter")
    kubectl("delete", "tenantstore", "quitter", "-n", namespace, "--wait=false")
    operator.start()
    wait_until_gone(kubectl, "tenantstore", "quitter", namespace, timeout=120)
    for uri in (env.admin_uri, second_postgres.superuser_uri("tenants")):
        assert roles(uri, "quitter") == []
        with psycopg.connect(uri, autocommit=True) as conn:
            assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_quitter'").fetchone() is None
            assert conn.execute("SELECT to_regclass('tenantstore_vectors.tenant_quitter')").fetchone()[0] is None
    assert kubectl.get("secret", "quitter-store", namespace) is None
    assert not (env.export_dir / ".moves" / uid).exists()


def test_a_freeze_past_the_class_bound_stops_the_move_and_the_tenant_goes_on_writing(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, second_postgres: EmbeddedPostgres,
        namespace: str) -> None:
    kubectl.apply(store_class("hasty", moves={"maxFreezeSeconds": 1}))
    kubectl.apply(tenant_store("rusher", namespace, "rusher", tier="pro", storeClassName="hasty"))
    wait_for_condition(kubectl, namespace, "rusher", "Ready", "True")
    secret = tenant_secret(kubectl, namespace, "rusher-store")
    fill(secret, 1_000)
    fill_tables(secret, 300_000)  # a dump and load of the tables, with writes refused, takes more than a second
    before = contents(secret)

    move_to(kubectl, namespace, "rusher", ELSEWHERE)
    body = wait_for_condition(kubectl, namespace, "rusher", "Ready", "False", reason="MoveFreezeExceeded",
                              timeout=120)
    status = body["status"]
    assert status["phase"] == "Ready" and status["storeClassName"] == "hasty" and not status.get("migration")
    assert status["lastClassMove"]["outcome"] == "Stopped" and status["lastClassMove"]["limitSeconds"] == 1
    assert "spec.moves.maxFreezeSeconds" in condition(body, "Ready")["message"]
    assert condition(body, "Stalled")["status"] == "True"
    assert roles(second_postgres.superuser_uri("tenants"), "rusher") == []  # the partial copy is gone
    assert not (env.export_dir / ".moves" / body["metadata"]["uid"]).exists()  # and the staged dump
    assert tenant_secret(kubectl, namespace, "rusher-store")["port"] == secret["port"]
    with psycopg.connect(secret["uri"], autocommit=True) as conn:  # writes are on again in the source
        conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) VALUES (%s, 'z', '[1,0,0]')",
                     (secret["vectorNamespace"],))
    assert len(contents(secret)) == len(before) + 1

    kubectl("patch", "tenantstore", "rusher", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"storeClassName": "hasty"}}')  # back where it is: the stopped move is forgotten
    body = wait_for_class(kubectl, namespace, "rusher", "hasty")
    assert condition(body, "Stalled").get("status") != "True"
    kubectl("delete", "tenantstore", "rusher", "-n", namespace, "--timeout=60s")
    kubectl("delete", "storeclass", "hasty")


def test_store_class_name_changes_only_with_a_move(kubectl: Kubectl, operator: OperatorProcess,
                                                  second_postgres: EmbeddedPostgres, namespace: str) -> None:
    kubectl.apply(tenant_store("settler", namespace, "settler", storeClassName=DEFAULT_CLASS))
    with pytest.raises(KubectlError, match="storeClassName is immutable unless storeClassChange is Move"):
        kubectl("patch", "tenantstore", "settler", "-n", namespace, "--type=merge", "-p",
                f'{{"spec": {{"storeClassName": "{ELSEWHERE}"}}}}')
    kubectl("delete", "tenantstore", "settler", "-n", namespace, "--timeout=60s")


@pytest.fixture(scope="module")
def pinecone_class(kubectl: Kubectl, second_postgres: EmbeddedPostgres) -> Iterator[PineconeTestServer]:
    """A Pinecone project with two classes on it: one on the first Postgres, one on the second."""
    server = PineconeTestServer().start()
    vector = pinecone_vector(kubectl, server, "pinecone-movers")
    kubectl.apply(store_class("cone-movers", vector=vector))
    kubectl.apply(store_class("cone-elsewhere", vector=vector, postgres={
        "adminSecretRef": {"name": "pg-admin-second", "namespace": OPERATOR_NAMESPACE, "key": "uri"},
        "database": "tenants"}))
    yield server
    kubectl("delete", "storeclass", "cone-movers", "cone-elsewhere")
    server.stop()
    server.check()  # no request outside the spec subset the server implements


def test_vectors_move_from_pgvector_to_pinecone_and_back(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, pinecone_class: PineconeTestServer,
        namespace: str) -> None:
    _, before_tables, before_vectors = tenant_with_data(kubectl, namespace, "coneflower", 1_000, 100,
                                                        tier="enterprise")

    # Same Postgres in both classes: the tables stay where they are, the vectors go to a Pinecone index.
    move_to(kubectl, namespace, "coneflower", "cone-movers")
    wait_for_class(kubectl, namespace, "coneflower", "cone-movers")
    in_pinecone = tenant_secret(kubectl, namespace, "coneflower-store")
    assert in_pinecone["vectorBackend"] == "pinecone" and in_pinecone["vectorIndex"] == "ts-coneflower"
    records = pinecone_class.records("ts-coneflower", "")
    assert len(records) == 1_000 and records["v00007"].metadata == {"n": 7}
    assert tables(in_pinecone) == before_tables
    with superuser(env, "tenant_coneflower") as conn:  # the dedicated pgvector table went with the move
        assert conn.execute("SELECT to_regclass('public.vectors')").fetchone()[0] is None

    move_to(kubectl, namespace, "coneflower", DEFAULT_CLASS)
    wait_for_class(kubectl, namespace, "coneflower", DEFAULT_CLASS)
    back = tenant_secret(kubectl, namespace, "coneflower-store")
    assert back["vectorBackend"] == "pgvector"
    assert tables(back) == before_tables and contents(back) == before_vectors
    assert pinecone_class.index("ts-coneflower") is None
    kubectl("delete", "tenantstore", "coneflower", "-n", namespace, "--timeout=60s")


def test_a_tenant_moves_to_pinecone_on_another_postgres_and_back(
        env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess, pinecone_class: PineconeTestServer,
        second_postgres: EmbeddedPostgres, namespace: str) -> None:
    _, before_tables, before_vectors = tenant_with_data(kubectl, namespace, "wanderer", 1_000, 100, tier="pro")

    # Both at once: the tables to the second server, the vectors from pgvector to a Pinecone namespace.
    move_to(kubectl, namespace, "wanderer", "cone-elsewhere")
    wait_for_class(kubectl, namespace, "wanderer", "cone-elsewhere")
    away = tenant_secret(kubectl, namespace, "wanderer-store")
    assert away["port"] == str(second_postgres.port) and away["vectorBackend"] == "pinecone"
    assert tables(away) == before_tables
    assert len(pinecone_class.records(away["vectorIndex"], away["vectorNamespace"])) == 1_000
    assert roles(env.admin_uri, "wanderer") == []

    move_to(kubectl, namespace, "wanderer", DEFAULT_CLASS)
    wait_for_class(kubectl, namespace, "wanderer", DEFAULT_CLASS)
    back = tenant_secret(kubectl, namespace, "wanderer-store")
    assert tables(back) == before_tables and contents(back) == before_vectors
    assert pinecone_class.records(away["vectorIndex"], away["vectorNamespace"]) == {}
    assert roles(second_postgres.superuser_uri("tenants"), "wanderer") == []
    kubectl("delete", "tenantstore", "wanderer", "-n", namespace, "--timeout=60s")
