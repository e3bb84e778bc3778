"""StoreClass spec.allowedNamespaces: label selectors matched as Kubernetes matches them, and a refused
namespace stopping the reconcile before any backend is touched."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tenantstore import reconcile
from tenantstore.conditions import find
from tenantstore.fleet import admission_changed
from tenantstore.labelselector import InvalidSelector, LabelSelector, Operator, Requirement
from tenantstore.models import AllowedNamespaces, InvalidResource, NamespacesFrom, StoreClass

SELECTOR = {"matchLabels": {"tenancy.dev/customers": "true"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]},
                                 {"key": "quarantined", "operator": "DoesNotExist"}]}


@pytest.mark.parametrize(("labels", "expected"), [
    ({"tenancy.dev/customers": "true", "env": "prod"}, True),
    ({"tenancy.dev/customers": "true", "env": "staging", "other": "x"}, True),
    ({"tenancy.dev/customers": "true", "env": "dev"}, False),  # In: value not listed
    ({"tenancy.dev/customers": "true"}, False),  # In: label absent
    ({"tenancy.dev/customers": "false", "env": "prod"}, False),  # matchLabels: another value
    ({"env": "prod"}, False),  # matchLabels: label absent
    ({"tenancy.dev/customers": "true", "env": "prod", "quarantined": ""}, False),  # DoesNotExist: present, even empty
    ({}, False),
])
def test_every_requirement_must_hold(labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.from_dict(SELECTOR).matches(labels) is expected


@pytest.mark.parametrize(("operator", "values", "labels", "expected"), [
    ("In", ["a", "b"], {"k": "a"}, True),
    ("In", ["a", "b"], {"k": "c"}, False),
    ("In", ["a"], {}, False),
    ("NotIn", ["a", "b"], {"k": "c"}, True),
    ("NotIn", ["a", "b"], {"k": "a"}, False),
    ("NotIn", ["a"], {}, True),  # an absent label is not in any set, as in Kubernetes
    ("Exists", [], {"k": ""}, True),
    ("Exists", [], {"other": "x"}, False),
    ("DoesNotExist", [], {}, True),
    ("DoesNotExist", [], {"k": "x"}, False),
    ("In", [""], {"k": ""}, True),  # the empty value is a value
])
def test_operators_follow_kubernetes(operator: str, values: list[str], labels: dict[str, str], expected: bool) -> None:
    selector = LabelSelector.from_dict({"matchExpressions": [{"key": "k", "operator": operator, "values": values}]})
    assert selector.matches(labels) is expected


def test_an_empty_selector_matches_every_namespace() -> None:
    assert LabelSelector.from_dict({}).matches({}) and LabelSelector.from_dict({}).matches({"a": "b"})
    assert LabelSelector.from_dict({"matchLabels": {}, "matchExpressions": []}).matches({"x": "y"})


@pytest.mark.parametrize("raw", [
    {"matchExpressions": [{"key": "k", "operator": "In", "values": []}]},
    {"matchExpressions": [{"key": "k", "operator": "NotIn"}]},
    {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["x"]}]},
    {"matchExpressions": [{"key": "k", "operator": "DoesNotExist", "values": ["x"]}]},
    {"matchExpressions": [{"key": "k", "operator": "Equals", "values": ["x"]}]},
    {"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["1"]}]},
    {"matchLabels": {"-bad": "x"}},
    {"matchLabels": {"a/b/c": "x"}},
    {"matchLabels": {"/name": "x"}},
    {"matchLabels": {"Upper.Case/name": "x"}},  # the prefix is a DNS subdomain: lower case
    {"matchLabels": {"k": "not a value"}},
    {"matchLabels": {"k": "x" * 64}},
    {"matchLabels": {"x" * 64: "v"}},
    {"matchExpressions": [{"key": "", "operator": "Exists"}]},
])
def test_selectors_kubernetes_refuses_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidSelector):
        LabelSelector.from_dict(raw)


def test_valid_keys_and_values() -> None:
    selector = LabelSelector.from_dict({"matchLabels": {"kubernetes.io/metadata.name": "customers",
                                                        "a.b-c_d": "V-1.2_x", "k": ""}})
    assert selector.matches({"kubernetes.io/metadata.name": "customers", "a.b-c_d": "V-1.2_x", "k": ""})


def test_the_selector_reads_like_kubectl() -> None:
    assert str(LabelSelector.from_dict(SELECTOR)) == "tenancy.dev/customers=true,env in (prod,staging),!quarantined"
    assert str(Requirement("k", Operator.NOT_IN, frozenset({"b", "a"}))) == "k notin (a,b)"
    assert str(Requirement("k", Operator.EXISTS)) == "k"


def class_body(allowed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "ops"}}}
    if allowed is not None:
        spec["allowedNamespaces"] = allowed
    return {"metadata": {"name": "gold", "generation": 3}, "spec": spec}


def test_absent_or_all_allows_every_namespace() -> None:
    for allowed in (None, {}, {"from": "All"}, {"from": "All", "selector": {"matchLabels": {"x": "y"}}}):
        parsed = StoreClass.from_body(class_body(allowed)).allowed_namespaces
        assert not parsed.restricted and parsed.allows({})


def test_a_selector_class_allows_only_matching_namespaces() -> None:
    parsed = StoreClass.from_body(class_body({"from": "Selector", "selector": {"matchLabels": {"tier": "gold"}}}))
    assert parsed.allowed_namespaces.restricted
    assert parsed.allowed_namespaces.allows({"tier": "gold"}) and not parsed.allowed_namespaces.allows({})


def test_selector_without_a_selector_is_an_invalid_class() -> None:
    with pytest.raises(InvalidResource, match="selector is required"):
        StoreClass.from_body(class_body({"from": "Selector"}))
    with pytest.raises(InvalidResource, match="allowedNamespaces.selector"):
        StoreClass.from_body(class_body({"from": "Selector", "selector": {
            "matchExpressions": [{"key": "k", "operator": "In"}]}}))
    # A nil selector matches nothing, as in Kubernetes (only reachable when built by hand).
    assert not AllowedNamespaces(NamespacesFrom.SELECTOR, None).allows({})


# ---- the reconcile ----------------------------------------------------------------------------------------------

class NoBackends:
    """A registry and Secrets that fail the test when touched: a refused namespace must not reach them."""

    async def for_class(self, store_class: StoreClass) -> Any:
        raise AssertionError(f"backends of {store_class.name} touched for a refused namespace")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} called for a refused namespace")


class FixedNamespaces:
    def __init__(self, labels: Mapping[str, Mapping[str, str]]):
        self.by_name = labels
        self.reads: list[str] = []

    async def labels(self, name: str) -> Mapping[str, str]:
        self.reads.append(name)
        return self.by_name.get(name, {})


def tenant(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "acme", "namespace": "customers", "uid": "u-1", "generation": 2,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"tenantId": "acme", "storeClassName": "gold", "vector": {"dimension": 3}},
            "status": status or {}}


GOLD_ONLY = {"from": "Selector", "selector": {"matchLabels": {"tier": "gold"}}}


async def test_a_refused_namespace_fails_before_any_backend_call() -> None:
    classes = {"gold": StoreClass.from_body(class_body(GOLD_ONLY))}
    namespaces = FixedNamespaces({"customers": {"tier": "silver"}})
    outcome = await reconcile.reconcile_tenant(tenant(), classes, [], NoBackends(), NoBackends(),  # type: ignore[arg-type]
                                               namespaces=namespaces)
    ready = find(outcome.status["conditions"], "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "StoreClassNotAllowed"
    assert "gold" in ready["message"] and "customers" in ready["message"] and "tier=gold" in ready["message"]
    assert outcome.status["phase"] == "Failed" and outcome.retry_after == 30
    assert outcome.warning is not None and outcome.warning.reason == "StoreClassNotAllowed"
    assert namespaces.reads == ["customers"]


async def test_a_provisioned_tenant_outside_the_selector_keeps_serving() -> None:
    classes = {"gold": StoreClass.from_body(class_body(GOLD_ONLY))}
    provisioned = tenant({"phase": "Ready", "relational": {"role": "tenant_acme"},
                          "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned"}]})
    outcome = await reconcile.reconcile_tenant(provisioned, classes, [], NoBackends(), NoBackends(),  # type: ignore[arg-type]
                                               namespaces=FixedNamespaces({}))
    ready = find(outcome.status["conditions"], "Ready")
    assert ready is not None and ready["reason"] == "StoreClassNotAllowed" and "kept" in ready["message"]
    assert outcome.status["phase"] == "Ready"  # still serving: nothing was torn down


async def test_an_unrestricted_class_never_reads_the_namespace() -> None:
    namespaces = FixedNamespaces({})
    assert await reconcile.admitted(StoreClass.from_body(class_body()), "customers", namespaces)
    assert namespaces.reads == []


async def test_deleting_a_refused_never_provisioned_tenant_touches_no_backend() -> None:
    classes = {"gold": StoreClass.from_body(class_body(GOLD_ONLY))}
    outcome = await reconcile.teardown_tenant(tenant(), classes, NoBackends(), NoBackends())  # type: ignore[arg-type]
    assert outcome.events == [] and outcome.status == {}


async def test_deleting_a_provisioned_tenant_outside_the_selector_still_tears_it_down() -> None:
    classes = {"gold": StoreClass.from_body(class_body(GOLD_ONLY))}
    provisioned = tenant({"phase": "Ready", "relational": {"role": "tenant_acme"}, "storeClassName": "gold"})
    with pytest.raises(AssertionError, match="backends of gold touched"):
        await reconcile.teardown_tenant(provisioned, classes, NoBackends(), NoBackends())  # type: ignore[arg-type]


def test_the_periodic_job_reconciles_provisioned_tenants_whose_admission_changed() -> None:
    gold = StoreClass.from_body(class_body(GOLD_ONLY))
    ready = tenant({"relational": {"role": "tenant_acme"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned"}]})
    refused = tenant({"relational": {"role": "tenant_acme"},
                      "conditions": [{"type": "Ready", "status": "False", "reason": "StoreClassNotAllowed"}]})
    allowed, unlabelled = {"customers": {"tier": "gold"}}, {"customers": {}}
    assert admission_changed(gold, ready, unlabelled) and admission_changed(gold, refused, allowed)
    assert not admission_changed(gold, ready, allowed) and not admission_changed(gold, refused, unlabelled)
    assert not admission_changed(gold, ready, {})  # the namespace could not be read: judged next time
