"""StoreClass spec.allowedNamespaces on the real API server: a refused namespace gets nothing, labelling it
lets the tenant in by itself, and a provisioned tenant whose namespace stops matching keeps its data."""
from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from e2e_kit import condition, store_class, superuser, tenant_secret, tenant_store, wait_for_condition, wait_until_gone

from tenantstore_dev.environment import Kubectl, KubectlError, LocalEnvironment, OperatorProcess

LABEL = "tenancy.dev/allowed-ns-e2e"
CLASS = "allowed-ns-gold"


@pytest.fixture
def gold_class(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    kubectl.apply(store_class(CLASS, allowedNamespaces={"from": "Selector", "selector": {"matchLabels": {LABEL: "gold"}}}))
    yield CLASS
    kubectl("delete", "storeclass", CLASS, "--ignore-not-found")


def role_exists(env: LocalEnvironment, tenant_id: str) -> bool:
    with superuser(env) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            ("tenant_" + tenant_id.replace("-", "_"),)).fetchone() is not None


def test_a_refused_namespace_gets_nothing_until_it_is_labelled(env: LocalEnvironment, kubectl: Kubectl,
                                                               gold_class: str, namespace: str) -> None:
    kubectl.apply(tenant_store("outsider", namespace, "allowed-ns-outsider", storeClassName=gold_class))
    body = wait_for_condition(kubectl, namespace, "outsider", "Ready", "False", reason="StoreClassNotAllowed")
    message = condition(body, "Ready")["message"]
    assert gold_class in message and namespace in message and f"{LABEL}=gold" in message
    assert body["status"]["phase"] == "Failed"
    assert not role_exists(env, "allowed-ns-outsider")  # the check comes before any backend call
    assert kubectl.get("secret", "outsider-store", namespace) is None

    # Labelling the namespace is enough: the operator looks again on its own (every 30 s).
    kubectl("label", "namespace", namespace, f"{LABEL}=gold")
    wait_for_condition(kubectl, namespace, "outsider", "Ready", "True", timeout=90)
    assert role_exists(env, "allowed-ns-outsider")
    secret = tenant_secret(kubectl, namespace, "outsider-store")

    # Dropping the label later keeps the tenant serving: reported, nothing torn down.
    kubectl("label", "namespace", namespace, f"{LABEL}-")
    body = wait_for_condition(kubectl, namespace, "outsider", "Ready", "False", reason="StoreClassNotAllowed",
                              timeout=60)
    assert body["status"]["phase"] == "Ready" and "kept" in condition(body, "Ready")["message"]
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_allowed_ns_outsider"

    kubectl("label", "namespace", namespace, f"{LABEL}=gold")
    wait_for_condition(kubectl, namespace, "outsider", "Ready", "True", timeout=60)

    # Deleting it removes what was made, as for any tenant (deletionPolicy Delete).
    kubectl("label", "namespace", namespace, f"{LABEL}-")
    kubectl("delete", "tenantstore", "outsider", "-n", namespace, "--timeout=90s")
    assert not role_exists(env, "allowed-ns-outsider")


def test_deleting_a_refused_tenant_finishes_at_once(env: LocalEnvironment, kubectl: Kubectl, gold_class: str,
                                                    namespace: str) -> None:
    kubectl.apply(tenant_store("never", namespace, "allowed-ns-never", storeClassName=gold_class))
    wait_for_condition(kubectl, namespace, "never", "Ready", "False", reason="StoreClassNotAllowed")
    started = time.monotonic()
    kubectl("delete", "tenantstore", "never", "-n", namespace, "--wait=false")
    wait_until_gone(kubectl, "tenantstore", "never", namespace, timeout=20)
    assert time.monotonic() - started < 20
    assert not role_exists(env, "allowed-ns-never")


@pytest.mark.parametrize(("allowed", "refusal"), [
    ({"from": "Selector"}, "selector is required when allowedNamespaces.from is Selector"),
    ({"from": "Selector", "selector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
     "In and NotIn need at least one value"),
    ({"from": "Selector", "selector": {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}},
     "Exists and DoesNotExist take none"),
    ({"from": "Some"}, "Unsupported value"),
])
def test_the_api_server_refuses_a_bad_selector(kubectl: Kubectl, allowed: dict, refusal: str) -> None:
    with pytest.raises(KubectlError) as refused:
        kubectl.apply(store_class("allowed-ns-bad", allowedNamespaces=allowed), "--dry-run=server")
    assert refusal in refused.value.stderr


def test_explain_documents_the_field(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "storeclass.spec.allowedNamespaces.selector")
    assert "kubernetes.io/metadata.name" in explained and "matchExpressions" in explained
    assert "Selector" in kubectl("explain", "storeclass.spec.allowedNamespaces.from")
