"""Helpers for the end-to-end tests: manifests, Postgres access and waiting on conditions with deadlines."""
from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from tenantstore_dev.controlplane import ensure_kstatus
from tenantstore_dev.environment import ADMIN_SECRET, OPERATOR_NAMESPACE, Kubectl, KubectlError, LocalEnvironment, wait_for

DEFAULT_CLASS = "standard"
# Namespaces the shared `operator` fixture leaves alone, for tests that run operators of their own.
ISOLATED_PREFIX = "isolated-"

def store_class(name: str, default: bool = False, **spec_overrides: Any) -> dict[str, Any]:
    annotations = {"storeclass.tenancy.dev/is-default-class": "true"} if default else {}
    spec: dict[str, Any] = {
        "postgres": {"adminSecretRef": {"name": ADMIN_SECRET, "namespace": OPERATOR_NAMESPACE, "key": "uri"},
                     "database": "tenants"},
        "vector": {"backend": "pgvector"},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "tenancy.dev/v1alpha1", "kind": "StoreClass",
            "metadata": {"name": name, "annotations": annotations}, "spec": spec}


def pinecone_vector(kubectl: Kubectl, server: Any, secret_name: str, **settings: Any) -> dict[str, Any]:
    """A StoreClass's spec.vector on a local Pinecone server, its API key put in a Secret of that name first."""
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": secret_name, "namespace": OPERATOR_NAMESPACE},
                   "stringData": {"apiKey": server.api_key}})
    return {"backend": "pinecone", "pinecone": {
        "apiKeySecretRef": {"name": secret_name, "namespace": OPERATOR_NAMESPACE}, "host": server.host, **settings}}


def tenant_store(name: str, namespace: str, tenant_id: str, tier: str = "free", dimension: int = 3,
                 **spec_overrides: Any) -> dict[str, Any]:
    spec = {"tenantId": tenant_id, "tier": tier, "vector": {"dimension": dimension, "metric": "cosine"}}
    spec.update(spec_overrides)
    return {"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStore",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def superuser(env: LocalEnvironment, database: str = "tenants") -> psycopg.Connection[Any]:
    return psycopg.connect(env.postgres.superuser_uri(database), autocommit=True)


# Every tenant password a test has seen, for the final check that none leaked into logs, events or status.
SEEN_PASSWORDS: set[str] = set()


def tenant_secret(kubectl: Kubectl, namespace: str, name: str) -> dict[str, str]:
    body = kubectl.get("secret", name, namespace)
    assert body is not None, f"Secret {namespace}/{name} is missing"
    secret = {key: base64.b64decode(value).decode() for key, value in body["data"].items()}
    SEEN_PASSWORDS.add(secret["password"])
    return secret


def condition(body: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for entry in ((body or {}).get("status") or {}).get("conditions") or ():
        if entry["type"] == type_:
            return entry
    return {}


def wait_for_condition(kubectl: Kubectl, namespace: str, name: str, type_: str, status: str,
                       reason: str | None = None, timeout: float = 90) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = kubectl.get("tenantstore", name, namespace)
        found = condition(body, type_)
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return body
        return None
    return wait_for(f"TenantStore {namespace}/{name} {type_}={status} {reason or ''}", probe, timeout)


def wait_until_gone(kubectl: Kubectl, kind: str, name: str, namespace: str | None = None,
                    timeout: float = 90) -> None:
    wait_for(f"{kind} {namespace}/{name} to be deleted", lambda: kubectl.get(kind, name, namespace) is None, timeout)


@functools.cache
def kstatus_binary() -> Path:
    return ensure_kstatus()  # $KSTATUS, or built once from cli-utils and cached like helm


def kstatus(kubectl: Kubectl, kind: str, name: str, namespace: str) -> str:
    """cli-utils' kstatus verdict on the object as the API server has it now (Current, InProgress, Failed, ...).

    An object that does not exist is NotFound, as kstatus's own pollers report it.
    """
    try:
        body = kubectl("get", kind, name, "-n", namespace, "-o", "json")
    except KubectlError as error:
        if "NotFound" in error.stderr:
            return "NotFound"
        raise
    result = subprocess.run([str(kstatus_binary())], input=body, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"kstatus failed on {kind} {namespace}/{name}: {result.stderr or result.stdout}"
    (line,) = result.stdout.splitlines()
    return json.loads(line)["status"]


def insert_vector(secret: dict[str, str], vector_id: str) -> None:
    """One vector written with a tenant Secret's credentials, into its namespace of a shared index."""
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"INSERT INTO {secret['vectorTable']} (namespace, id, embedding) VALUES (%s, %s, '[1,0,0]')",
                     (secret["vectorNamespace"], vector_id))


def vector_ids(secret: dict[str, str]) -> list[str]:
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        return [row[0] for row in conn.execute(f"SELECT id FROM {secret['vectorTable']} ORDER BY id")]


def audit_cli(kubectl: Kubectl, tenant_id: str, *options: str) -> str:
    """What `tenantstore audit --tenant ID` prints, read through the test cluster's kubeconfig."""
    result = subprocess.run([sys.executable, "-m", "tenantstore", "audit", "--tenant", tenant_id, *options],
                            env={**os.environ, "KUBECONFIG": str(kubectl.kubeconfig)}, capture_output=True,
                            text=True, timeout=60, check=True)
    return result.stdout


def export_resource(name: str, namespace: str, tenant: str, path: str) -> dict[str, Any]:
    return {"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStoreExport",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"tenantStoreName": tenant, "destination": {"volume": {"path": path}}}}


def wait_for_export(kubectl: Kubectl, namespace: str, name: str, phase: str = "Completed",
                    timeout: float = 180) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = kubectl.get("tenantstoreexport", name, namespace)
        return body if ((body or {}).get("status") or {}).get("phase") == phase else None
    return wait_for(f"TenantStoreExport {namespace}/{name} {phase}", probe, timeout)


def get_json(url: str, **params: str) -> Any:
    """GET a JSON answer from a server the test started on loopback (Prometheus's or Jaeger's HTTP API)."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{query}", timeout=5) as response:
        return json.loads(response.read())


# A tenant's data as its own credentials see it: vectors, tables, a sequence, a view and a function.

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


def fill_tables(secret: dict[str, str], rows: int) -> None:
    schema = secret["schema"]
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.orders (id serial PRIMARY KEY, customer text, total numeric)")
        conn.execute(f"INSERT INTO {schema}.orders (customer, total) SELECT 'c' || g, g / 3.0 "
                     f"FROM generate_series(1, {rows}) g")
        conn.execute(f"CREATE SEQUENCE {schema}.invoices START 900")
        conn.execute(f"SELECT nextval('{schema}.invoices') FROM generate_series(1, 17)")
        conn.execute(f"CREATE VIEW {schema}.large_orders AS SELECT id, total FROM {schema}.orders WHERE total > 10")
        conn.execute(f"CREATE FUNCTION {schema}.order_count() RETURNS bigint LANGUAGE sql "
                     f"AS 'SELECT count(*) FROM {schema}.orders'")


def tables(secret: dict[str, str]) -> dict[str, object]:
    schema = secret["schema"]
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        return {"orders": conn.execute(f"SELECT md5(string_agg(o::text, ',' ORDER BY id)), count(*) "
                                       f"FROM {schema}.orders o").fetchone(),
                "invoices": conn.execute(f"SELECT last_value FROM {schema}.invoices").fetchone(),
                "view": conn.execute(f"SELECT count(*) FROM {schema}.large_orders").fetchone(),
                "function": conn.execute(f"SELECT {schema}.order_count()").fetchone()}
