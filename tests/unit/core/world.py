"""One test's surroundings: StoreClasses, the fakes, TenantStore bodies as the API returns them, and the
core's entry points called the way the Kopf handlers call them."""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, cast

from tenantstore import fleet, reconcile, verify
from tenantstore.api import API_VERSION, DEFAULT_CLASS_ANNOTATION, ConditionType
from tenantstore.kube import Secrets, TenantStatuses
from tenantstore.models import InvalidResource, StoreClass
from tenantstore.reconcile import ClaimRef, Outcome
from tenantstore.registry import BackendRegistry

from .fakes import FakeNamespaces, FakeRegistry, FakeRelationalStore, FakeSecrets, FakeStatuses, FakeVectorStore

CREATED = "2026-01-05T10:00:00Z"
NOW = "2026-01-06T12:00:00Z"
# Namespaces and their labels; the restricted class below admits only those labelled as customers.
NAMESPACES = {
    "customers": {"kubernetes.io/metadata.name": "customers", "tenancy.dev/customers": "true"},
    "partners": {"kubernetes.io/metadata.name": "partners", "tenancy.dev/customers": "true"},
    "sandbox": {"kubernetes.io/metadata.name": "sandbox"},
}
CUSTOMERS_ONLY = {"from": "Selector", "selector": {"matchLabels": {"tenancy.dev/customers": "true"}}}


def store_class_body(name: str = "standard", *, default: bool = True, generation: int = 1,
                     **spec: Any) -> dict[str, Any]:
    """A StoreClass as the API returns it; `spec` adds or replaces top-level spec fields."""
    return {"apiVersion": API_VERSION, "kind": "StoreClass",
            "metadata": {"name": name, "uid": f"uid-class-{name}", "generation": generation,
                         "annotations": {DEFAULT_CLASS_ANNOTATION: "true"} if default else {}},
            "spec": {"postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "tenantstore-system"},
                                  "database": "tenants"},
                     "vector": {"backend": "pgvector"}, **spec}}


def store_class(name: str = "standard", **kwargs: Any) -> StoreClass:
    return StoreClass.from_body(store_class_body(name, **kwargs))


def tenant_body(name: str = "acme", *, namespace: str = "customers", tenant_id: str | None = None,
                uid: str | None = None, generation: int = 1, created: str = CREATED,
                annotations: Mapping[str, str] | None = None, status: Mapping[str, Any] | None = None,
                **spec: Any) -> dict[str, Any]:
    """A TenantStore as the API returns it (free tier, 384 dimensions, cosine); `spec` adds or replaces fields."""
    return {"apiVersion": API_VERSION, "kind": "TenantStore",
            "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{namespace}-{name}",
                         "generation": generation, "creationTimestamp": created,
                         "annotations": dict(annotations or {})},
            "spec": {"tenantId": tenant_id or name, "tier": "free", "vector": {"dimension": 384, "metric": "cosine"},
                     **spec},
            "status": copy.deepcopy(dict(status or {}))}


def spec_changed(body: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """The body after a user edits its spec: the API server bumps the generation."""
    changed = copy.deepcopy(dict(body))
    changed["spec"].update(changes)
    changed["metadata"]["generation"] += 1
    return changed


def annotated(body: Mapping[str, Any], key: str, value: str) -> dict[str, Any]:
    changed = copy.deepcopy(dict(body))
    changed["metadata"].setdefault("annotations", {})[key] = value
    return changed


def deleting(body: Mapping[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(dict(body))
    changed["metadata"]["deletionTimestamp"] = NOW
    return changed


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    """The condition of this type in a status (fails the test when there is none)."""
    found = [c for c in status.get("conditions") or () if c.get("type") == type_]
    assert found, f"no {type_} condition in {status.get('conditions')}"
    return dict(found[0])


def has_condition(status: Mapping[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ for c in status.get("conditions") or ())


def ready(status: Mapping[str, Any]) -> tuple[str, str]:
    """Ready's (status, reason)."""
    found = condition(status, ConditionType.READY)
    return found["status"], found["reason"]


def stalled(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """Stalled's (status, reason), None when a tenant never stalled."""
    if not has_condition(status, ConditionType.STALLED):
        return None
    found = condition(status, ConditionType.STALLED)
    return found["status"], found["reason"]


def reasons(outcome: Outcome) -> list[str]:
    return [step.reason for step in outcome.events]


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a status patch: objects merge, null deletes, the rest replaces."""
    merged = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclasses.dataclass
class World:
    relational: FakeRelationalStore
    vector: FakeVectorStore
    registry: FakeRegistry
    secrets: FakeSecrets
    namespaces: FakeNamespaces
    statuses: FakeStatuses
    classes: dict[str, StoreClass | InvalidResource]
    migration_batch: int = 2
    reports: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # of the last reconcile

    @classmethod
    def make(cls) -> World:
        relational, vector = FakeRelationalStore(), FakeVectorStore()
        return cls(relational=relational, vector=vector, registry=FakeRegistry(relational, vector),
                   secrets=FakeSecrets(), namespaces=FakeNamespaces(NAMESPACES), statuses=FakeStatuses(),
                   classes={"standard": store_class()})

    # the entry points, called as the handlers call them

    async def reconcile(self, body: Mapping[str, Any], *, claims: Sequence[ClaimRef] = (),
                        check_credentials: bool = False) -> Outcome:
        """`claims`: the other TenantStores with the same tenantId, as the tenant-id index holds them."""
        self.reports = []

        async def report(changes: dict[str, Any]) -> None:
            self.reports.append(copy.deepcopy(changes))

        return await reconcile.reconcile_tenant(body, self.classes, list(claims), self._registry, self._secrets,
                                                report, namespaces=self.namespaces,
                                                check_credentials=check_credentials,
                                                migration_batch=self.migration_batch)

    async def teardown(self, body: Mapping[str, Any]) -> Outcome:
        return await reconcile.teardown_tenant(body, self.classes, self._registry, self._secrets)

    async def measure(self, store_class: StoreClass, tenants: Sequence[Mapping[str, Any]]) -> list[fleet.Measured]:
        return await fleet.measure_class(store_class, tenants, self._registry, cast(TenantStatuses, self.statuses),
                                         self._secrets, NOW)

    async def verify(self, store_class: StoreClass, tenants: Sequence[Mapping[str, Any]],
                     canary_turn: int | None = None) -> verify.ClassPass:
        return await verify.check_class(store_class, tenants, self._registry, self.passwords(), canary_turn)

    # what the API holds afterwards

    def written(self, body: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
        """The TenantStore as the API holds it after the last reconcile: the status it reported while it ran (a
        move's progress), then the handler's patch of what differs from the body it was given."""
        status = copy.deepcopy(dict(body.get("status") or {}))
        for changes in self.reports:
            status = merge_patch(status, changes)
        status = merge_patch(status, outcome.status_patch(body.get("status")))
        return {**copy.deepcopy(dict(body)), "status": status}

    async def converge(self, body: Mapping[str, Any], **kwargs: Any) -> tuple[Outcome, dict[str, Any]]:
        outcome = await self.reconcile(body, **kwargs)
        return outcome, self.written(body, outcome)

    async def provision(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Reconciled to Ready (or Suspended); the body as the API then holds it."""
        outcome, written = await self.converge(body)
        assert outcome.warning is None and outcome.retry_after is None, outcome.status
        return written

    def passwords(self) -> dict[tuple[str, str], str | None]:
        """The operator's index of tenant Secrets: the password each holds."""
        return {key: secret.data.get("password") for key, secret in self.secrets.secrets.items()}

    @property
    def _registry(self) -> BackendRegistry:
        return cast(BackendRegistry, self.registry)

    @property
    def _secrets(self) -> Secrets:
        return cast(Secrets, self.secrets)
