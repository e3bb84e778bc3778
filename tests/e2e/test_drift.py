"""Drift: what is changed behind the operator's back is found by the periodic verification pass and repaired
(StoreClass driftPolicy Repair) or reported (Report); tenant Secrets are watched; an outage and a broken
isolation canary show as conditions and clear by themselves.

Every change here is made by hand, as the Postgres superuser, with kubectl or on the local Pinecone server,
to a tenant that is Ready. The operator fixture verifies every 2 s (--verify-interval 2).
"""
from __future__ import annotations

import base64
import json
import secrets as token_source
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from e2e_kit import (DEFAULT_CLASS, SEEN_PASSWORDS, condition, insert_vector, pinecone_vector, store_class, superuser,
                     tenant_secret, tenant_store, wait_for_condition, wait_until_gone)
from pinecone_server import PineconeTestServer
from prometheus_client.parser import text_string_to_metric_families

from tenantstore_dev.environment import OPERATOR_NAMESPACE, Kubectl, LocalEnvironment, OperatorProcess, wait_for

REPORT_CLASS = "drift-report"
PINECONE_CLASS = "drift-cone"
PINECONE_REPORT_CLASS = "drift-cone-report"
VECTORS = "tenantstore_vectors"  # the schema of the shared pgvector tables and their partitions
# A pass starts at most one interval (2 s, plus 10 % jitter) after a change, and a repair is one reconcile after
# it; the deadline leaves room for a few passes on a loaded two-core machine.
PASSES = 20.0
SECRET_WATCH = 20.0  # a tenant Secret deleted or edited by hand is acted on at once, not at the next pass
PROVISIONING = 60.0
DELETION = 60.0


# --- helpers --------------------------------------------------------------------------------------------------

def explain(kubectl: Kubectl, namespace: str, name: str) -> str:
    """What a failing wait shows: the tenant's phase, conditions and usage, and the Events about it."""
    body = kubectl.get("tenantstore", name, namespace) or {}
    status = body.get("status") or {}
    conditions = {entry["type"]: f"{entry['status']} {entry.get('reason')}: {entry.get('message', '')}"
                  for entry in status.get("conditions") or ()}
    selector = f"involvedObject.kind=TenantStore,involvedObject.name={name}"
    told = [f"{event['type']} {event['reason']}: {event.get('message', '')}" for event in json.loads(
        kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json"))["items"]]
    return json.dumps({"phase": status.get("phase"), "conditions": conditions, "usage": status.get("usage"),
                       "annotations": (body.get("metadata") or {}).get("annotations"), "events": told}, indent=1)


def wait_for_tenant(kubectl: Kubectl, namespace: str, name: str, type_: str, status: str,
                    reason: str | None = None, timeout: float = PASSES) -> dict[str, Any]:
    try:
        return wait_for_condition(kubectl, namespace, name, type_, status, reason=reason, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{explain(kubectl, namespace, name)}") from None


def wait_for_tenant_state(kubectl: Kubectl, namespace: str, name: str, what: str, probe: Callable[[], Any],
                          timeout: float = PASSES) -> Any:
    try:
        return wait_for(f"{what} (TenantStore {namespace}/{name})", probe, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{explain(kubectl, namespace, name)}") from None


def provision(kubectl: Kubectl, namespace: str, name: str, tenant_id: str, **spec: Any) -> dict[str, Any]:
    kubectl.apply(tenant_store(name, namespace, tenant_id, **spec))
    return wait_for_tenant(kubectl, namespace, name, "Ready", "True", timeout=PROVISIONING)


def delete_tenants(kubectl: Kubectl, namespace: str, *names: str) -> None:
    """Deletion must finish whatever was broken by hand: the finalizer's teardown copes with what is gone."""
    for name in names:
        kubectl("delete", "tenantstore", name, "-n", namespace, "--wait=false")
    for name in names:
        try:
            wait_until_gone(kubectl, "tenantstore", name, namespace, timeout=DELETION)
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{explain(kubectl, namespace, name)}") from None


def tenant(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    body = kubectl.get("tenantstore", name, namespace)
    assert body is not None, f"TenantStore {namespace}/{name} is missing"
    return body


def run_as_superuser(env: LocalEnvironment, *statements: str) -> None:
    with superuser(env) as conn:
        for statement in statements:
            conn.execute(statement)


def superuser_sees(env: LocalEnvironment, query: str, *params: Any) -> bool:
    """Whether the query's first column of its first row is true (a row with NULL or no row: false)."""
    with superuser(env) as conn:
        row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def schema_exists(env: LocalEnvironment, schema: str) -> bool:
    return superuser_sees(env, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", schema)


def role_exists(env: LocalEnvironment, role: str) -> bool:
    return superuser_sees(env, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", role)


def database_exists(env: LocalEnvironment, database: str) -> bool:
    return superuser_sees(env, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s)", database)


def partition_exists(env: LocalEnvironment, partition: str) -> bool:
    """The tenant's partition exists and is attached to a shared table again."""
    return superuser_sees(env, """SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                                   JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE n.nspname = %s AND c.relname = %s)""", VECTORS, partition)


def policy_exists(env: LocalEnvironment, partition: str) -> bool:
    return superuser_sees(env, """SELECT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = %s
                                   AND tablename = %s AND policyname = %s)""", VECTORS, partition, partition)


def can_select(env: LocalEnvironment, role: str, table: str) -> bool:
    return superuser_sees(env, "SELECT has_table_privilege(%s, %s, 'SELECT')", role, table)


def logs_in(secret: dict[str, str], password: str) -> bool:
    """Whether `password` logs in as the Secret's user (a refused password is False; any other failure raises)."""
    try:
        with psycopg.connect(host=secret["host"], port=int(secret["port"]), user=secret["user"], password=password,
                             dbname=secret["database"], connect_timeout=5, autocommit=True) as conn:
            return conn.execute("SELECT current_user").fetchone()[0] == secret["user"]
    except psycopg.OperationalError as error:
        if "password authentication failed" in str(error):
            return False
        raise


def uri_logs_in(secret: dict[str, str]) -> bool:
    with psycopg.connect(secret["uri"], connect_timeout=5, autocommit=True) as conn:
        return conn.execute("SELECT current_user").fetchone()[0] == secret["user"]


def events(kubectl: Kubectl, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind=TenantStore,involvedObject.name={name},reason={reason}"
    return json.loads(kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json"))["items"]


def wait_for_warning(kubectl: Kubectl, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    """Events are posted in the background, so one may land just after the status that goes with it."""
    found = wait_for_tenant_state(kubectl, namespace, name, f"a {reason} Event",
                                  lambda: events(kubectl, namespace, name, reason), timeout=10)
    assert all(event["type"] == "Warning" for event in found), found
    return found


def counter(operator: OperatorProcess, name: str, **labels: str) -> float:
    """A counter's value on the operator's metrics endpoint, summed over series matching `labels` (0 if none)."""
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()))


def verify_passes(operator: OperatorProcess, store_class_name: str) -> float:
    return counter(operator, "tenantstore_verify_duration_seconds_count", storeclass=store_class_name)


def wait_for_passes(operator: OperatorProcess, store_class_name: str, passes: int = 2) -> None:
    """Until the class's tenants have been verified `passes` more times (what a Report must survive unchanged)."""
    start = verify_passes(operator, store_class_name)
    wait_for(f"{passes} more verification passes of StoreClass {store_class_name}",
             lambda: verify_passes(operator, store_class_name) >= start + passes, timeout=PASSES)


def store_class_condition(kubectl: Kubectl, name: str, type_: str, status: str, reason: str | None = None,
                          timeout: float = PASSES) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = condition(kubectl.get("storeclass", name), type_)
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return found
        return None
    try:
        return wait_for(f"StoreClass {name} {type_}={status} {reason or ''}", probe, timeout)
    except TimeoutError as error:
        found = (kubectl.get("storeclass", name) or {}).get("status", {}).get("conditions")
        raise AssertionError(f"{error}\nconditions now: {json.dumps(found, indent=1)}") from None


def wait_for_report(kubectl: Kubectl, operator: OperatorProcess, namespace: str, name: str, store_class_name: str,
                    reasons: set[str], still_broken: Callable[[], bool]) -> dict[str, Any]:
    """Report: Ready=False naming the drift, a DriftDetected Warning, the phase as it was (still serving), and
    nothing changed, then or after later passes."""
    def reported() -> dict[str, Any] | None:
        body = kubectl.get("tenantstore", name, namespace)
        ready = condition(body, "Ready")
        return body if ready.get("status") == "False" and ready.get("reason") in reasons else None
    body = wait_for_tenant_state(kubectl, namespace, name, f"Ready=False with reason {' or '.join(sorted(reasons))}",
                                 reported)
    assert body["status"]["phase"] == "Ready", body["status"]
    assert condition(body, "DataLost").get("status") != "True"  # nothing was re-made, so nothing was re-made empty
    wait_for_warning(kubectl, namespace, name, "DriftDetected")
    assert still_broken(), "driftPolicy Report repaired the drift"
    wait_for_passes(operator, store_class_name)
    assert still_broken(), "driftPolicy Report repaired the drift at a later pass"
    later = tenant(kubectl, namespace, name)
    assert condition(later, "Ready")["reason"] == condition(body, "Ready")["reason"], explain(kubectl, namespace, name)
    assert later["status"]["phase"] == "Ready"
    return body


def wait_for_repair(kubectl: Kubectl, namespace: str, name: str, what: str, repaired: Callable[[], bool]) -> None:
    """Repair without data loss: what was missing is back, a DriftRepaired Event, Ready=True, no DataLost."""
    wait_for_tenant_state(kubectl, namespace, name, f"{what} and a DriftRepaired Event",
                          lambda: repaired() and events(kubectl, namespace, name, "DriftRepaired"))
    body = wait_for_tenant(kubectl, namespace, name, "Ready", "True", timeout=PASSES)
    assert condition(body, "DataLost").get("status") != "True", condition(body, "DataLost")
    assert body["status"]["phase"] == "Ready"
    wait_for_warning(kubectl, namespace, name, "DriftDetected")


def wait_for_data_loss_then_acknowledge(kubectl: Kubectl, namespace: str, name: str, kind: str, what: str,
                                        repaired: Callable[[], bool]) -> None:
    """Repair of a store that held data: re-made (empty), DataLost=True and Ready=False until acknowledged."""
    lost = condition(wait_for_tenant(kubectl, namespace, name, "DataLost", "True", reason=kind, timeout=PASSES),
                     "DataLost")
    wait_for_tenant_state(kubectl, namespace, name, f"{what} and a DriftRepaired Event",
                          lambda: repaired() and events(kubectl, namespace, name, "DriftRepaired"))
    body = wait_for_tenant(kubectl, namespace, name, "Ready", "False", reason="DataLost", timeout=PASSES)
    # Repaired, yet held until someone says they know.
    assert condition(body, "DataLost")["status"] == "True"
    assert condition(body, "DataLost")["lastTransitionTime"] == lost["lastTransitionTime"]
    assert body["status"]["phase"] == "Ready"
    wait_for_warning(kubectl, namespace, name, "DataLost")

    kubectl("annotate", "tenantstore", name, "-n", namespace,
            f"tenancy.dev/data-loss-acknowledged={lost['lastTransitionTime']}", "--overwrite")
    wait_for_tenant(kubectl, namespace, name, "DataLost", "False", reason="Acknowledged", timeout=PASSES)
    wait_for_tenant(kubectl, namespace, name, "Ready", "True", timeout=PASSES)


def measured(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    """The TenantStore once its usage has been measured (every second in tests), so its figures are settled."""
    def probe() -> dict[str, Any] | None:
        body = tenant(kubectl, namespace, name)
        return body if (body["status"].get("usage") or {}).get("measuredAt") else None
    return wait_for_tenant_state(kubectl, namespace, name, "a usage measurement", probe, timeout=30)


def wait_for_documents(kubectl: Kubectl, namespace: str, name: str) -> None:
    wait_for_tenant_state(kubectl, namespace, name, "usage to show the tenant's documents", lambda: (
        tenant(kubectl, namespace, name)["status"].get("usage") or {}).get("documents", 0) > 0, timeout=30)


def held_data(body: dict[str, Any], kind: str = "SchemaMissing") -> bool:
    """What the operator counts as data of what was dropped: a schema's tables' bytes, a namespace's documents."""
    usage = body["status"].get("usage") or {}
    if kind == "SchemaMissing":
        return bool(usage.get("relationalStorageBytes"))
    return bool(usage.get("documents"))


# --- fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report_class(kubectl: Kubectl) -> Iterator[str]:
    kubectl.apply(store_class(REPORT_CLASS, driftPolicy="Report"))
    yield REPORT_CLASS
    kubectl("delete", "storeclass", REPORT_CLASS)


@pytest.fixture(scope="module")
def pinecone(kubectl: Kubectl) -> Iterator[PineconeTestServer]:
    """A Pinecone project of its own, with a Repair and a Report class on it."""
    server = PineconeTestServer().start()
    vector = pinecone_vector(kubectl, server, "drift-pinecone")
    kubectl.apply(store_class(PINECONE_CLASS, vector=vector))
    kubectl.apply(store_class(PINECONE_REPORT_CLASS, vector=vector, driftPolicy="Report"))
    yield server
    kubectl("delete", "storeclass", PINECONE_CLASS, PINECONE_REPORT_CLASS)
    kubectl("delete", "secret", "drift-pinecone", "-n", OPERATOR_NAMESPACE)
    server.stop()
    server.check()  # no request outside the spec subset the server implements


# --- schema ---------------------------------------------------------------------------------------------------

def test_a_dropped_empty_schema_is_made_again(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                              namespace: str) -> None:
    provision(kubectl, namespace, "schema", "dr-schema-rep")
    # A tenant that has been measured and holds nothing: no document, no table of its own.
    assert measured(kubectl, namespace, "schema")["status"]["usage"]["documents"] == 0
    run_as_superuser(env, "DROP SCHEMA tenant_dr_schema_rep CASCADE")

    wait_for_repair(kubectl, namespace, "schema", "schema tenant_dr_schema_rep made again",
                    lambda: schema_exists(env, "tenant_dr_schema_rep"))
    secret = tenant_secret(kubectl, namespace, "schema-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:  # the tenant owns its schema again
        conn.execute("CREATE TABLE tenant_dr_schema_rep.notes (body text)")
    delete_tenants(kubectl, namespace, "schema")


def test_a_dropped_schema_that_held_data_is_made_again_as_data_lost(env: LocalEnvironment, kubectl: Kubectl,
                                                                    operator: OperatorProcess,
                                                                    namespace: str) -> None:
    provision(kubectl, namespace, "schema", "dr-schema-data")
    secret = tenant_secret(kubectl, namespace, "schema-store")
    insert_vector(secret, "doc-1")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE tenant_dr_schema_data.notes (body text)")
        conn.execute("INSERT INTO tenant_dr_schema_data.notes VALUES ('kept until dropped')")
    # What the operator knows held data is what it last measured: the table too, not only the vector.
    wait_for_tenant_state(kubectl, namespace, "schema", "usage to show the table", lambda: (
        tenant(kubectl, namespace, "schema")["status"].get("usage") or {}).get("relationalStorageBytes", 0) > 0,
        timeout=30)
    run_as_superuser(env, "DROP SCHEMA tenant_dr_schema_data CASCADE")

    wait_for_data_loss_then_acknowledge(kubectl, namespace, "schema", "SchemaMissing",
                                        "schema tenant_dr_schema_data made again",
                                        lambda: schema_exists(env, "tenant_dr_schema_data"))
    assert not superuser_sees(env, "SELECT to_regclass('tenant_dr_schema_data.notes') IS NOT NULL")  # re-made empty
    delete_tenants(kubectl, namespace, "schema")


def test_a_dropped_schema_is_reported_and_counted(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                                  report_class: str, namespace: str) -> None:
    provision(kubectl, namespace, "schema", "dr-schema-rpt", storeClassName=report_class)
    before = counter(operator, "tenantstore_drift_detected_total", kind="SchemaMissing")
    run_as_superuser(env, "DROP SCHEMA tenant_dr_schema_rpt CASCADE")

    body = wait_for_report(kubectl, operator, namespace, "schema", report_class, {"SchemaMissing"},
                           lambda: not schema_exists(env, "tenant_dr_schema_rpt"))
    assert "tenant_dr_schema_rpt" in condition(body, "Ready")["message"]
    wait_for("tenantstore_drift_detected_total{kind=SchemaMissing} to count the drift",
             lambda: counter(operator, "tenantstore_drift_detected_total", kind="SchemaMissing") >= before + 1,
             timeout=10)
    delete_tenants(kubectl, namespace, "schema")


# --- database (enterprise) ------------------------------------------------------------------------------------

def test_a_dropped_database_is_made_again_as_data_lost(env: LocalEnvironment, kubectl: Kubectl,
                                                       operator: OperatorProcess, namespace: str) -> None:
    provision(kubectl, namespace, "ent", "dr-db-rep", tier="enterprise")
    run_as_superuser(env, "DROP DATABASE tenant_dr_db_rep WITH (FORCE)")

    # A whole database counts as data, whatever usage said.
    wait_for_data_loss_then_acknowledge(kubectl, namespace, "ent", "DatabaseMissing",
                                        "database tenant_dr_db_rep made again",
                                        lambda: database_exists(env, "tenant_dr_db_rep"))
    secret = tenant_secret(kubectl, namespace, "ent-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:  # its dedicated vector table is back, empty
        assert conn.execute(f"SELECT count(*) FROM {secret['vectorTable']}").fetchone()[0] == 0
    delete_tenants(kubectl, namespace, "ent")


def test_a_dropped_database_is_reported(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                        report_class: str, namespace: str) -> None:
    provision(kubectl, namespace, "ent", "dr-db-rpt", tier="enterprise", storeClassName=report_class)
    run_as_superuser(env, "DROP DATABASE tenant_dr_db_rpt WITH (FORCE)")

    wait_for_report(kubectl, operator, namespace, "ent", report_class, {"DatabaseMissing"},
                    lambda: not database_exists(env, "tenant_dr_db_rpt"))
    delete_tenants(kubectl, namespace, "ent")


# --- role -----------------------------------------------------------------------------------------------------

def test_a_dropped_role_is_made_again_with_the_secrets_password(env: LocalEnvironment, kubectl: Kubectl,
                                                                operator: OperatorProcess, namespace: str) -> None:
    provision(kubectl, namespace, "role", "dr-role-rep")
    secret = tenant_secret(kubectl, namespace, "role-store")
    had_data = held_data(measured(kubectl, namespace, "role"))
    # DROP OWNED takes the role's schema with it, and its privileges on its partition.
    run_as_superuser(env, "DROP OWNED BY tenant_dr_role_rep", "DROP ROLE tenant_dr_role_rep")

    def role_and_schema_back() -> bool:
        return role_exists(env, "tenant_dr_role_rep") and schema_exists(env, "tenant_dr_role_rep") \
            and logs_in(secret, secret["password"])  # made again with the Secret's password
    what = "role and schema tenant_dr_role_rep made again, the Secret's password logging in"
    if had_data:
        wait_for_data_loss_then_acknowledge(kubectl, namespace, "role", "SchemaMissing", what, role_and_schema_back)
    else:
        wait_for_repair(kubectl, namespace, "role", what, role_and_schema_back)
    assert tenant_secret(kubectl, namespace, "role-store")["password"] == secret["password"]
    insert_vector(secret, "after-repair")  # its partition's policy and grants are back too
    delete_tenants(kubectl, namespace, "role")


def test_a_dropped_role_is_reported(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                    report_class: str, namespace: str) -> None:
    provision(kubectl, namespace, "role", "dr-role-rpt", storeClassName=report_class)
    run_as_superuser(env, "DROP OWNED BY tenant_dr_role_rpt", "DROP ROLE tenant_dr_role_rpt")

    wait_for_report(kubectl, operator, namespace, "role", report_class, {"RoleMissing", "SchemaMissing"},
                    lambda: not role_exists(env, "tenant_dr_role_rpt"))
    delete_tenants(kubectl, namespace, "role")


# --- Secret ---------------------------------------------------------------------------------------------------

def test_a_deleted_secret_is_made_again_with_a_new_password(env: LocalEnvironment, kubectl: Kubectl,
                                                            operator: OperatorProcess, namespace: str) -> None:
    provision(kubectl, namespace, "sec", "dr-secret-rep")
    old = tenant_secret(kubectl, namespace, "sec-store")
    old_uid = kubectl.get("secret", "sec-store", namespace)["metadata"]["uid"]
    kubectl("delete", "secret", "sec-store", "-n", namespace)

    def made_again() -> dict[str, str] | None:
        body = kubectl.get("secret", "sec-store", namespace)
        if body is None or body["metadata"]["uid"] == old_uid:
            return None
        secret = tenant_secret(kubectl, namespace, "sec-store")
        return secret if logs_in(secret, secret["password"]) else None
    secret = wait_for_tenant_state(kubectl, namespace, "sec", "the tenant Secret made again, its password logging in",
                                   made_again, timeout=SECRET_WATCH)
    assert secret["password"] != old["password"]
    assert uri_logs_in(secret)
    assert not logs_in(secret, old["password"])  # the role was reset: the lost password no longer works
    wait_for_tenant(kubectl, namespace, "sec", "Ready", "True", timeout=PASSES)
    delete_tenants(kubectl, namespace, "sec")


def test_a_deleted_secret_is_reported(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                      report_class: str, namespace: str) -> None:
    provision(kubectl, namespace, "sec", "dr-secret-rpt", storeClassName=report_class)
    kubectl("delete", "secret", "sec-store", "-n", namespace)

    wait_for_report(kubectl, operator, namespace, "sec", report_class, {"SecretMissing"},
                    lambda: kubectl.get("secret", "sec-store", namespace) is None)
    delete_tenants(kubectl, namespace, "sec")


def test_a_password_changed_in_postgres_is_set_back_to_the_secrets(env: LocalEnvironment, kubectl: Kubectl,
                                                                   operator: OperatorProcess, namespace: str) -> None:
    provision(kubectl, namespace, "pw", "dr-password-rep")
    secret = tenant_secret(kubectl, namespace, "pw-store")
    run_as_superuser(env, "ALTER ROLE tenant_dr_password_rep PASSWORD 'changed-by-hand'")
    assert not logs_in(secret, secret["password"])

    wait_for_repair(kubectl, namespace, "pw", "the Secret's password to log in again",
                    lambda: logs_in(secret, secret["password"]))
    assert not logs_in(secret, "changed-by-hand")
    assert tenant_secret(kubectl, namespace, "pw-store")["password"] == secret["password"]  # the Secret stays
    delete_tenants(kubectl, namespace, "pw")


def test_a_password_changed_in_postgres_is_reported(env: LocalEnvironment, kubectl: Kubectl,
                                                    operator: OperatorProcess, report_class: str,
                                                    namespace: str) -> None:
    provision(kubectl, namespace, "pw", "dr-password-rpt", storeClassName=report_class)
    secret = tenant_secret(kubectl, namespace, "pw-store")
    run_as_superuser(env, "ALTER ROLE tenant_dr_password_rpt PASSWORD 'changed-by-hand'")

    # The role keeps the password it was given by hand.
    wait_for_report(kubectl, operator, namespace, "pw", report_class, {"CredentialsOutOfSync"},
                    lambda: logs_in(secret, "changed-by-hand") and not logs_in(secret, secret["password"]))
    delete_tenants(kubectl, namespace, "pw")


def test_a_password_edited_in_the_secret_is_given_to_the_role(env: LocalEnvironment, kubectl: Kubectl,
                                                              operator: OperatorProcess, namespace: str) -> None:
    provision(kubectl, namespace, "edit", "dr-secret-edit")
    old = tenant_secret(kubectl, namespace, "edit-store")
    edited = token_source.token_urlsafe(18)
    SEEN_PASSWORDS.add(edited)  # checked for leaks at the end like every tenant password
    patch = {"data": {"password": base64.b64encode(edited.encode()).decode()}}
    kubectl("patch", "secret", "edit-store", "-n", namespace, "--type=merge", "-p", json.dumps(patch))

    wait_for_tenant_state(kubectl, namespace, "edit", "the edited password to log in as the role",
                          lambda: logs_in(old, edited), timeout=SECRET_WATCH)
    assert not logs_in(old, old["password"])
    # The person's choice stands, and the Secret's connection URI carries it too.
    def uri_in_sync() -> dict[str, str] | None:
        secret = tenant_secret(kubectl, namespace, "edit-store")
        return secret if uri_logs_in(secret) else None
    secret = wait_for_tenant_state(kubectl, namespace, "edit", "the Secret's URI to log in with the edited password",
                                   uri_in_sync, timeout=SECRET_WATCH)
    assert secret["password"] == edited
    wait_for_tenant(kubectl, namespace, "edit", "Ready", "True", timeout=PASSES)
    delete_tenants(kubectl, namespace, "edit")


# --- vector partition, policy and grant -----------------------------------------------------------------------

def test_a_dropped_partition_that_held_documents_is_made_again_as_data_lost(env: LocalEnvironment,
                                                                            kubectl: Kubectl,
                                                                            operator: OperatorProcess,
                                                                            namespace: str) -> None:
    provision(kubectl, namespace, "part", "dr-partition-rep")
    secret = tenant_secret(kubectl, namespace, "part-store")
    insert_vector(secret, "doc-1")
    wait_for_documents(kubectl, namespace, "part")
    run_as_superuser(env, f"DROP TABLE {VECTORS}.tenant_dr_partition_rep")

    wait_for_data_loss_then_acknowledge(kubectl, namespace, "part", "NamespaceMissing",
                                        "partition tenant_dr_partition_rep made again",
                                        lambda: partition_exists(env, "tenant_dr_partition_rep"))
    assert policy_exists(env, "tenant_dr_partition_rep")
    insert_vector(secret, "after-repair")  # the tenant works in its partition again
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        assert [row[0] for row in conn.execute(f"SELECT id FROM {secret['vectorTable']}")] == ["after-repair"]
    delete_tenants(kubectl, namespace, "part")


def test_a_dropped_partition_is_reported(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                         report_class: str, namespace: str) -> None:
    provision(kubectl, namespace, "part", "dr-partition-rpt", storeClassName=report_class)
    run_as_superuser(env, f"DROP TABLE {VECTORS}.tenant_dr_partition_rpt")

    wait_for_report(kubectl, operator, namespace, "part", report_class, {"NamespaceMissing"},
                    lambda: not partition_exists(env, "tenant_dr_partition_rpt"))
    delete_tenants(kubectl, namespace, "part")


def test_a_dropped_policy_is_made_again(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                        namespace: str) -> None:
    provision(kubectl, namespace, "pol", "dr-policy-rep")
    run_as_superuser(env, f"DROP POLICY tenant_dr_policy_rep ON {VECTORS}.tenant_dr_policy_rep")

    wait_for_repair(kubectl, namespace, "pol", "the row-level security policy made again",
                    lambda: policy_exists(env, "tenant_dr_policy_rep"))
    insert_vector(tenant_secret(kubectl, namespace, "pol-store"), "after-repair")
    delete_tenants(kubectl, namespace, "pol")


def test_a_dropped_policy_is_reported(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                      report_class: str, namespace: str) -> None:
    provision(kubectl, namespace, "pol", "dr-policy-rpt", storeClassName=report_class)
    run_as_superuser(env, f"DROP POLICY tenant_dr_policy_rpt ON {VECTORS}.tenant_dr_policy_rpt")

    wait_for_report(kubectl, operator, namespace, "pol", report_class, {"PolicyMissing"},
                    lambda: not policy_exists(env, "tenant_dr_policy_rpt"))
    delete_tenants(kubectl, namespace, "pol")


def test_a_revoked_grant_is_given_back(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                       namespace: str) -> None:
    provision(kubectl, namespace, "grant", "dr-grant-rep")
    table = f"{VECTORS}.tenant_dr_grant_rep"
    run_as_superuser(env, f"REVOKE SELECT ON {table} FROM tenant_dr_grant_rep")
    assert not can_select(env, "tenant_dr_grant_rep", table)

    wait_for_repair(kubectl, namespace, "grant", "SELECT granted again",
                    lambda: can_select(env, "tenant_dr_grant_rep", table))
    secret = tenant_secret(kubectl, namespace, "grant-store")
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"SELECT count(*) FROM {secret['vectorTable']}")
    delete_tenants(kubectl, namespace, "grant")


def test_a_revoked_grant_is_reported(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                     report_class: str, namespace: str) -> None:
    provision(kubectl, namespace, "grant", "dr-grant-rpt", storeClassName=report_class)
    table = f"{VECTORS}.tenant_dr_grant_rpt"
    run_as_superuser(env, f"REVOKE SELECT ON {table} FROM tenant_dr_grant_rpt")

    wait_for_report(kubectl, operator, namespace, "grant", report_class, {"GrantMissing"},
                    lambda: not can_select(env, "tenant_dr_grant_rpt", table))
    delete_tenants(kubectl, namespace, "grant")


# --- Pinecone -------------------------------------------------------------------------------------------------

def test_a_pinecone_namespace_deleted_behind_the_operators_back_is_made_again(
        kubectl: Kubectl, operator: OperatorProcess, pinecone: PineconeTestServer, namespace: str) -> None:
    body = provision(kubectl, namespace, "cone", "dr-cone-rep", storeClassName=PINECONE_CLASS, dimension=8)
    index = body["status"]["vectorStore"]["index"]
    assert "dr-cone-rep" in pinecone.namespaces(index)
    pinecone.drop_namespace(index, "dr-cone-rep")

    def namespace_back() -> bool:
        placed = tenant(kubectl, namespace, "cone")["status"]["vectorStore"]
        return placed.get("namespace") == "dr-cone-rep" and "dr-cone-rep" in pinecone.namespaces(placed["index"])
    wait_for_repair(kubectl, namespace, "cone", "Pinecone namespace dr-cone-rep made again", namespace_back)
    delete_tenants(kubectl, namespace, "cone")


def test_a_pinecone_namespace_deleted_behind_the_operators_back_is_reported(
        kubectl: Kubectl, operator: OperatorProcess, pinecone: PineconeTestServer, namespace: str) -> None:
    body = provision(kubectl, namespace, "cone", "dr-cone-rpt", storeClassName=PINECONE_REPORT_CLASS, dimension=8)
    index = body["status"]["vectorStore"]["index"]
    pinecone.drop_namespace(index, "dr-cone-rpt")

    wait_for_report(kubectl, operator, namespace, "cone", PINECONE_REPORT_CLASS, {"NamespaceMissing"},
                    lambda: "dr-cone-rpt" not in pinecone.namespaces(index))
    delete_tenants(kubectl, namespace, "cone")


# --- outage ---------------------------------------------------------------------------------------------------

def test_a_postgres_outage_is_reported_and_clears_by_itself(env: LocalEnvironment, kubectl: Kubectl,
                                                            operator: OperatorProcess, namespace: str) -> None:
    provision(kubectl, namespace, "out", "dr-outage")
    env.postgres.stop("immediate")
    try:
        store_class_condition(kubectl, DEFAULT_CLASS, "Ready", "False", reason="BackendUnavailable", timeout=15)
        body = wait_for_tenant(kubectl, namespace, "out", "Ready", "False", reason="BackendUnavailable", timeout=15)
        assert body["status"]["phase"] == "Ready"  # it was serving, and will again: the phase stays
    finally:
        env.postgres.start()
    store_class_condition(kubectl, DEFAULT_CLASS, "Ready", "True", timeout=60)
    wait_for_tenant(kubectl, namespace, "out", "Ready", "True", timeout=60)
    delete_tenants(kubectl, namespace, "out")


# --- isolation canary -----------------------------------------------------------------------------------------

def test_a_privilege_on_the_shared_table_breaks_the_canary_until_revoked(env: LocalEnvironment, kubectl: Kubectl,
                                                                         operator: OperatorProcess,
                                                                         namespace: str) -> None:
    # Dimension 13 is used by no other test: the shared index holds only this tenant, so every pass probes it.
    body = provision(kubectl, namespace, "canary", "dr-canary", dimension=13)
    index = body["status"]["vectorStore"]["index"]
    shared_table = f"{VECTORS}.{index.replace('-', '_')}"
    failures = counter(operator, "tenantstore_isolation_probe_failures_total", storeclass=DEFAULT_CLASS, index=index)

    run_as_superuser(env, f"GRANT SELECT ON {shared_table} TO tenant_dr_canary")
    try:
        body = wait_for_tenant(kubectl, namespace, "canary", "Ready", "False", reason="IsolationBroken")
        assert condition(body, "Stalled")["status"] == "True"
        assert "tenant_dr_canary" in condition(body, "Ready")["message"]
        wait_for_warning(kubectl, namespace, "canary", "IsolationBroken")
        found = store_class_condition(kubectl, DEFAULT_CLASS, "IsolationBroken", "True")
        assert "tenant_dr_canary" in found["message"]
        assert counter(operator, "tenantstore_isolation_probe_failures_total", storeclass=DEFAULT_CLASS,
                       index=index) >= failures + 1
        assert can_select(env, "tenant_dr_canary", shared_table)  # reported, not repaired
    finally:
        run_as_superuser(env, f"REVOKE SELECT ON {shared_table} FROM tenant_dr_canary")

    wait_for_tenant(kubectl, namespace, "canary", "Ready", "True", timeout=PASSES)
    store_class_condition(kubectl, DEFAULT_CLASS, "IsolationBroken", "False")
    delete_tenants(kubectl, namespace, "canary")
