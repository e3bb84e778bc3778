"""Bad inputs, one table: each is refused by the API server or judged by the operator, and leaves no trace.

Two kinds of case:
- refused: `kubectl apply` fails with a message naming the field (TenantStore and StoreClass manifests, and
  updates of immutable fields);
- judged: the manifest is accepted, the TenantStore gets Ready=False with a reason, and deleting it finishes at
  once.

Every case compares a snapshot taken before and after it: the tenant's Postgres roles (holding roles
included), schemas, databases, vector partitions, tables and policies, bookkeeping rows, and the Secrets of the
case's namespace. Only names carrying the case's tenantId are compared (other tests share the Postgres and
the cluster). After the whole table the operator must still provision a valid tenant.
"""
from __future__ import annotations

import copy
import itertools
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from e2e_kit import condition, store_class, superuser, tenant_secret, tenant_store, wait_until_gone

from tenantstore_dev.environment import OPERATOR_NAMESPACE, Kubectl, KubectlError, LocalEnvironment, OperatorProcess, wait_for

REFUSED_NAMESPACE = "bad-inputs-refused"
ABSENT_CLASS = "bad-inputs-absent-class"
JUDGE_TIMEOUT = 60.0
DELETE_TIMEOUT = 60.0


# --- building manifests from the table ---

class _Remove:
    def __repr__(self) -> str:
        return "REMOVE"


REMOVE: Final = _Remove()  # in an override: drop the field


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied recursively; a REMOVE value drops the field."""
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if value is REMOVE:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


_NUMBERS = itertools.count(1)


def _next_number() -> int:
    return next(_NUMBERS)


def pg_token(tenant_id: str) -> str:
    """How a tenantId appears in Postgres names (tenant_<id>, tenantstore_hold_<id>)."""
    return tenant_id.lower().replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class RefusedStore:
    """A TenantStore manifest the API server must refuse; `names`: one of them must appear in the refusal."""

    id: str
    overrides: Mapping[str, Any]
    names: tuple[str, ...]
    number: int = field(default_factory=_next_number)

    @property
    def name(self) -> str:
        return f"bad-{self.number:02d}"

    def manifest(self, namespace: str) -> dict[str, Any]:
        return merged(tenant_store(self.name, namespace, self.name), self.overrides)

    def tokens(self) -> tuple[str, ...]:
        spec = self.overrides.get("spec")
        tenant_id = spec.get("tenantId") if isinstance(spec, Mapping) else None
        extra = (pg_token(tenant_id),) if isinstance(tenant_id, str) and tenant_id.strip("-") else ()
        return (pg_token(self.name), *extra)


@dataclass(frozen=True)
class RefusedUpdate:
    """A TenantStore accepted as `base`, then an update (`change`) the API server must refuse."""

    id: str
    base: Mapping[str, Any]
    change: Mapping[str, Any]
    names: tuple[str, ...]
    number: int = field(default_factory=_next_number)

    @property
    def name(self) -> str:
        return f"bad-{self.number:02d}"

    def manifest(self, namespace: str) -> dict[str, Any]:
        return merged(tenant_store(self.name, namespace, self.name), self.base)

    def tokens(self) -> tuple[str, ...]:
        return (pg_token(self.name),)


@dataclass(frozen=True)
class RefusedClass:
    """A StoreClass manifest the API server must refuse."""

    id: str
    overrides: Mapping[str, Any]
    names: tuple[str, ...]
    number: int = field(default_factory=_next_number)

    @property
    def name(self) -> str:
        return f"bad-inputs-class-{self.number:02d}"

    def manifest(self) -> dict[str, Any]:
        return merged(store_class(self.name), self.overrides)


def spec(**fields: Any) -> dict[str, Any]:
    return {"spec": fields}


def quotas(**fields: Any) -> dict[str, Any]:
    return {"spec": {"quotas": fields}}


def vector(**fields: Any) -> dict[str, Any]:
    return {"spec": {"vector": fields}}


REFUSED_STORES: list[RefusedStore] = [
    RefusedStore("tenantId-uppercase", spec(tenantId="Bad-Upper"), ("spec.tenantId",)),
    RefusedStore("tenantId-underscore", spec(tenantId="bad_under"), ("spec.tenantId",)),
    RefusedStore("tenantId-leading-dash", spec(tenantId="-bad-lead"), ("spec.tenantId",)),
    RefusedStore("tenantId-trailing-dash", spec(tenantId="bad-trail-"), ("spec.tenantId",)),
    RefusedStore("tenantId-only-a-dash", spec(tenantId="-"), ("spec.tenantId",)),
    RefusedStore("tenantId-41-chars", spec(tenantId="t" * 41), ("spec.tenantId",)),
    RefusedStore("tenantId-empty", spec(tenantId=""), ("spec.tenantId",)),
    RefusedStore("tenantId-missing", spec(tenantId=REMOVE), ("spec.tenantId",)),
    RefusedStore("tenantId-dot", spec(tenantId="bad.dot"), ("spec.tenantId",)),
    RefusedStore("tenantId-space", spec(tenantId="bad space"), ("spec.tenantId",)),
    RefusedStore("tenantId-non-ascii", spec(tenantId="bäd"), ("spec.tenantId",)),
    RefusedStore("tenantId-integer", spec(tenantId=42), ("spec.tenantId",)),
    RefusedStore("tier-unknown", spec(tier="platinum"), ("spec.tier",)),
    RefusedStore("tier-capitalised", spec(tier="Pro"), ("spec.tier",)),
    RefusedStore("tier-empty", spec(tier=""), ("spec.tier",)),
    RefusedStore("dimension-zero", vector(dimension=0), ("spec.vector.dimension",)),
    RefusedStore("dimension-negative", vector(dimension=-1), ("spec.vector.dimension",)),
    RefusedStore("dimension-missing", vector(dimension=REMOVE), ("spec.vector.dimension",)),
    RefusedStore("dimension-16001", vector(dimension=16001), ("spec.vector.dimension",)),
    RefusedStore("dimension-string", vector(dimension="384"), ("spec.vector.dimension",)),
    RefusedStore("dimension-fraction", vector(dimension=3.5), ("spec.vector.dimension",)),
    RefusedStore("vector-missing", spec(vector=REMOVE), ("spec.vector",)),
    RefusedStore("metric-unknown", vector(metric="hamming"), ("spec.vector.metric",)),
    RefusedStore("metric-capitalised", vector(metric="Cosine"), ("spec.vector.metric",)),
    RefusedStore("metric-empty", vector(metric=""), ("spec.vector.metric",)),
    RefusedStore("quotaAction-unknown", spec(quotaAction="Ignore"), ("spec.quotaAction",)),
    RefusedStore("quotaAction-lowercase", spec(quotaAction="block"), ("spec.quotaAction",)),
    RefusedStore("deletionPolicy-unknown", spec(deletionPolicy="Shred"), ("spec.deletionPolicy",)),
    RefusedStore("deletionPolicy-lowercase", spec(deletionPolicy="delete"), ("spec.deletionPolicy",)),
    RefusedStore("maxDocuments-negative", quotas(maxDocuments=-1), ("spec.quotas.maxDocuments",)),
    RefusedStore("maxDocuments-string", quotas(maxDocuments="many"), ("spec.quotas.maxDocuments",)),
    RefusedStore("maxConnections-negative", quotas(maxConnections=-1), ("spec.quotas.maxConnections",)),
    RefusedStore("maxConnections-10001", quotas(maxConnections=10001), ("spec.quotas.maxConnections",)),
    RefusedStore("maxDailyQueries-negative", quotas(maxDailyQueries=-5), ("spec.quotas.maxDailyQueries",)),
    RefusedStore("maxStorageBytes-half-a-byte", quotas(maxStorageBytes="0.5"), ("spec.quotas.maxStorageBytes",)),
    RefusedStore("maxStorageBytes-1.5-bytes", quotas(maxStorageBytes="1.5"), ("spec.quotas.maxStorageBytes",)),
    RefusedStore("maxStorageBytes-negative-string", quotas(maxStorageBytes="-1"), ("spec.quotas.maxStorageBytes",)),
    RefusedStore("maxStorageBytes-negative-integer", quotas(maxStorageBytes=-1), ("spec.quotas.maxStorageBytes",)),
    RefusedStore("maxStorageBytes-letters", quotas(maxStorageBytes="abc"), ("spec.quotas.maxStorageBytes",)),
    RefusedStore("maxStorageBytes-unknown-unit", quotas(maxStorageBytes="10XB"), ("spec.quotas.maxStorageBytes",)),
    RefusedStore("maxStorageBytes-empty", quotas(maxStorageBytes=""), ("spec.quotas.maxStorageBytes",)),
    RefusedStore("suspended-string", spec(suspended="yes"), ("spec.suspended",)),
    RefusedStore("displayName-257-chars", spec(displayName="d" * 257), ("spec.displayName",)),
    RefusedStore("storeClassName-underscore", spec(storeClassName="Bad_Class"), ("spec.storeClassName",)),
    RefusedStore("secretName-underscore", spec(secretName="Bad_Name"), ("spec.secretName",)),
    RefusedStore("secretName-leading-dash", spec(secretName="-x"), ("spec.secretName",)),
    RefusedStore("secretName-254-chars", spec(secretName="s" * 254), ("spec.secretName",)),
    # The derived Secret name "<name>-store" would be 256 characters, longer than a Secret name may be.
    RefusedStore("name-250-chars-without-secretName", {"metadata": {"name": "n" * 250}},
                 ("metadata.name", "spec.secretName")),
    RefusedStore("spec-missing", {"spec": REMOVE}, ("spec",)),
    RefusedStore("unknown-field", spec(replicas=3), ("spec.replicas",)),
    RefusedStore("budget-negative", spec(budget={"monthlyLimit": -5}), ("spec.budget.monthlyLimit",)),
    RefusedStore("budget-action-unknown", spec(budget={"action": "Panic"}), ("spec.budget.action",)),
    RefusedStore("budget-threshold-above-one", spec(budget={"thresholds": [0.8, 1.5]}),
                 ("spec.budget.thresholds",)),
]

REFUSED_UPDATES: list[RefusedUpdate] = [
    RefusedUpdate("tenantId-changed", spec(storeClassName=ABSENT_CLASS), spec(tenantId="bad-changed"),
                  ("spec.tenantId",)),
    RefusedUpdate("dimension-changed", spec(storeClassName=ABSENT_CLASS), vector(dimension=4),
                  ("spec.vector.dimension",)),
    RefusedUpdate("metric-changed", spec(storeClassName=ABSENT_CLASS), vector(metric="euclidean"),
                  ("spec.vector.metric",)),
    # Created without a class (so the default class provisions it): naming one afterwards is refused.
    RefusedUpdate("storeClassName-added", {}, spec(storeClassName="bad-inputs-other-class"),
                  ("spec.storeClassName",)),
    RefusedUpdate("storeClassName-removed", spec(storeClassName=ABSENT_CLASS), spec(storeClassName=REMOVE),
                  ("spec.storeClassName",)),
    RefusedUpdate("storeClassName-changed", spec(storeClassName=ABSENT_CLASS),
                  spec(storeClassName="bad-inputs-other-class"), ("spec.storeClassName",)),
]


def tier(name: str, **fields: Any) -> dict[str, Any]:
    return {"spec": {"tiers": {name: fields}}}


REFUSED_CLASSES: list[RefusedClass] = [
    RefusedClass("capacity-zero", {"spec": {"vector": {"sharedIndex": {"capacity": 0}}}},
                 ("spec.vector.sharedIndex.capacity",)),
    RefusedClass("capacity-negative", {"spec": {"vector": {"sharedIndex": {"capacity": -1}}}},
                 ("spec.vector.sharedIndex.capacity",)),
    RefusedClass("alertThreshold-1.5", {"spec": {"vector": {"sharedIndex": {"alertThreshold": 1.5}}}},
                 ("spec.vector.sharedIndex.alertThreshold",)),
    RefusedClass("alertThreshold-negative", {"spec": {"vector": {"sharedIndex": {"alertThreshold": -0.1}}}},
                 ("spec.vector.sharedIndex.alertThreshold",)),
    RefusedClass("backend-unknown", {"spec": {"vector": {"backend": "faiss"}}}, ("spec.vector.backend",)),
    RefusedClass("pinecone-without-its-block", {"spec": {"vector": {"backend": "pinecone"}}}, ("spec.vector",)),
    RefusedClass("relational-cluster", tier("free", relational="cluster"), ("spec.tiers.free.relational",)),
    RefusedClass("vector-isolation-unknown", tier("enterprise", vector="shared"), ("spec.tiers.enterprise.vector",)),
    RefusedClass("tier-maxDocuments-negative", tier("pro", quotas={"maxDocuments": -1}),
                 ("spec.tiers.pro.quotas.maxDocuments",)),
    RefusedClass("tier-maxConnections-negative", tier("free", quotas={"maxConnections": -1}),
                 ("spec.tiers.free.quotas.maxConnections",)),
    RefusedClass("tier-maxStorageBytes-negative", tier("free", quotas={"maxStorageBytes": "-1"}),
                 ("spec.tiers.free.quotas.maxStorageBytes",)),
    RefusedClass("ceiling-maxDailyQueries-negative", tier("pro", maxQuotas={"maxDailyQueries": -1}),
                 ("spec.tiers.pro.maxQuotas.maxDailyQueries",)),
    RefusedClass("adminSecretRef-without-name", {"spec": {"postgres": {"adminSecretRef": {"name": REMOVE}}}},
                 ("spec.postgres.adminSecretRef.name",)),
    RefusedClass("adminSecretRef-without-namespace",
                 {"spec": {"postgres": {"adminSecretRef": {"namespace": REMOVE}}}},
                 ("spec.postgres.adminSecretRef.namespace",)),
    RefusedClass("postgres-missing", {"spec": {"postgres": REMOVE}}, ("spec.postgres",)),
    RefusedClass("selector-missing", {"spec": {"allowedNamespaces": {"from": "Selector"}}},
                 ("spec.allowedNamespaces",)),
    RefusedClass("price-negative", {"spec": {"pricing": {"perGBMonth": -0.1}}}, ("spec.pricing.perGBMonth",)),
    RefusedClass("currency-not-a-code", {"spec": {"pricing": {"currency": "euro"}}}, ("spec.pricing.currency",)),
    RefusedClass("fixed-cost-text", {"spec": {"pricing": {"fixedMonthly": {"sharedIndex": "a lot"}}}},
                 ("spec.pricing.fixedMonthly.sharedIndex",)),
    RefusedClass("tier-budget-action-unknown", tier("pro", budget={"action": "Refuse"}),
                 ("spec.tiers.pro.budget.action",)),
]


# --- cases only the operator can judge ---

AdminData = Callable[[LocalEnvironment], dict[str, str]]


def real_uri(env: LocalEnvironment) -> str:
    return env.admin_uri


def wrong_password_uri(env: LocalEnvironment) -> str:
    parts = urlsplit(env.admin_uri)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:wrong@127.0.0.1:{env.postgres.port}"))


def stored(uri: Callable[[LocalEnvironment], str] | str, key: str = "uri") -> AdminData:
    """The admin Secret's data: `uri` stored under `key` (the class always names the key "uri")."""
    return lambda env: {key: uri(env) if callable(uri) else uri}


@dataclass(frozen=True)
class ClassSetup:
    """A StoreClass of the case's own, and its admin Secret in the operator's namespace."""

    admin: AdminData | None  # None: the Secret the class names does not exist
    admin_namespace: str = OPERATOR_NAMESPACE
    database: str = "tenants"
    allowed_namespaces: Mapping[str, Any] | None = None
    broken: bool = True  # the class itself must report Ready=False
    class_reason: str | None = None  # ... with this reason, when the contract fixes it
    class_message_names_secret: bool = False


@dataclass(frozen=True)
class JudgedCase:
    """Accepted by the API server; the operator must report Ready=False `reason` and make nothing."""

    id: str
    reason: str
    phase: str | None
    store_class: ClassSetup | None = None
    class_name: str | None = None  # a class the case names without creating it
    rival: str | None = None  # "same" or "other" namespace: a Ready TenantStore claims the tenantId first
    squatter: bool = False  # a plain Secret already holds the credential Secret's name
    secret_name: str | None = None  # spec.secretName
    message: tuple[str, ...] = ()  # in the Ready message; formatted with the names of `Prepared`
    number: int = field(default_factory=_next_number)

    @property
    def name(self) -> str:
        return f"bad-{self.number:02d}"

    @property
    def namespace(self) -> str:
        return f"bad-inputs-{self.id}"


NOT_ALLOWED_LABEL = "tenancy.dev/bad-inputs"

JUDGED: list[JudgedCase] = [
    JudgedCase("class-not-found", "StoreClassNotFound", "Pending", class_name=ABSENT_CLASS,
               message=("{class_name}",)),
    JudgedCase("admin-secret-missing", "StoreClassInvalid", "Failed",
               ClassSetup(admin=None, class_reason="StoreClassInvalid", class_message_names_secret=True)),
    JudgedCase("admin-secret-namespace-missing", "StoreClassInvalid", "Failed",
               ClassSetup(admin=None, admin_namespace="bad-inputs-no-such-namespace")),
    JudgedCase("admin-secret-key-missing", "StoreClassInvalid", "Failed", ClassSetup(admin=stored(real_uri, "url"))),
    JudgedCase("admin-uri-malformed", "StoreClassInvalid", "Failed",
               ClassSetup(admin=stored("postgresql://u:p%ZZ@127.0.0.1:1/tenants"))),
    JudgedCase("admin-uri-empty", "StoreClassInvalid", "Failed", ClassSetup(admin=stored(""))),
    JudgedCase("admin-uri-not-postgres", "StoreClassInvalid", "Failed",
               ClassSetup(admin=stored("mysql://tenantstore_admin:x@127.0.0.1:3306/tenants"))),
    JudgedCase("admin-password-wrong", "StoreClassInvalid", "Failed", ClassSetup(admin=stored(wrong_password_uri))),
    JudgedCase("admin-port-closed", "BackendUnavailable", "Provisioning",
               ClassSetup(admin=stored("postgresql://tenantstore_admin:Port1Secret@127.0.0.1:1/tenants"))),
    # The admin may not even connect there (the prerequisites revoke PUBLIC's CONNECT): its login is refused.
    JudgedCase("database-postgres", "StoreClassInvalid", "Failed",
               ClassSetup(admin=stored(real_uri), database="postgres"), message=("postgres",)),
    JudgedCase("tenant-id-claimed-in-another-namespace", "TenantIdConflict", "Failed", rival="other",
               message=("{rival}",)),
    JudgedCase("tenant-id-claimed-in-the-same-namespace", "TenantIdConflict", "Failed", rival="same",
               message=("{rival}",)),
    JudgedCase("secret-taken", "SecretConflict", "Failed", squatter=True, message=("{secret}",)),
    JudgedCase("custom-secret-taken", "SecretConflict", "Failed", squatter=True, secret_name="bad-inputs-taken",
               message=("{secret}",)),
    JudgedCase("namespace-not-allowed-by-label", "StoreClassNotAllowed", "Failed",
               ClassSetup(admin=stored(real_uri), broken=False, allowed_namespaces={
                   "from": "Selector", "selector": {"matchLabels": {NOT_ALLOWED_LABEL: "yes"}}}),
               message=("{class_name}", "{namespace}")),
    JudgedCase("namespace-not-allowed-by-name", "StoreClassNotAllowed", "Failed",
               ClassSetup(admin=stored(real_uri), broken=False, allowed_namespaces={
                   "from": "Selector", "selector": {"matchExpressions": [
                       {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["bad-inputs-elsewhere"]}]}}),
               message=("{class_name}", "{namespace}")),
]

# Not a bad input: blocked by a missing admin Secret, it must become Ready once the Secret appears.
RECOVERY = JudgedCase("admin-secret-arrives-later", "StoreClassInvalid", "Failed", ClassSetup(admin=None))

CASE_IDS: list[str] = [f"refused:{case.id}" for case in REFUSED_STORES] + \
    [f"refused-update:{case.id}" for case in REFUSED_UPDATES] + \
    [f"refused-class:{case.id}" for case in REFUSED_CLASSES] + [f"judged:{case.id}" for case in JUDGED]
VERIFIED: list[str] = []  # cases whose every assertion held


# --- snapshots ---

SERVER_WIDE: Final = {
    "role": "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant%'",
    "database": r"SELECT datname FROM pg_database WHERE datname LIKE 'tenant\_%'",
}
PER_DATABASE: Final = {
    "schema": r"SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\_%'",
    "relation": "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'tenantstore_vectors'",
    "policy": "SELECT policyname FROM pg_policies WHERE schemaname = 'tenantstore_vectors'",
}
# Bookkeeping tables appear with the first tenant: a missing table counts as empty.
BOOKKEEPING: Final = {"claim": "tenantstore.claims", "baseline": "tenantstore.daily_query_baseline"}
# The class's shared database, and the one a misconfigured class names.
DATABASES: Final = ("tenants", "postgres")


@dataclass(frozen=True)
class Snapshot:
    postgres: frozenset[str]  # "<kind>[@<database>]:<name>"
    secrets: Mapping[str, frozenset[str]]  # namespace -> "secret/<name>"

    def about(self, tokens: Sequence[str]) -> set[str]:
        """The Postgres objects whose names carry one of the tenantId tokens."""
        patterns = [re.compile(rf"(?<![a-z0-9]){re.escape(token)}(?![a-z0-9])", re.IGNORECASE)
                    for token in tokens if token]
        return {entry for entry in self.postgres
                if any(pattern.search(entry.split(":", 1)[1]) for pattern in patterns)}


def take_snapshot(env: LocalEnvironment, kubectl: Kubectl, namespaces: Sequence[str]) -> Snapshot:
    entries: set[str] = set()
    for database in DATABASES:
        with superuser(env, database) as conn:
            if database == DATABASES[0]:
                for kind, query in SERVER_WIDE.items():
                    entries.update(f"{kind}:{name}" for (name,) in conn.execute(query).fetchall())
            for kind, query in PER_DATABASE.items():
                entries.update(f"{kind}@{database}:{name}" for (name,) in conn.execute(query).fetchall())
            for kind, table in BOOKKEEPING.items():
                if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None:
                    rows = conn.execute(f"SELECT role FROM {table}").fetchall()
                    entries.update(f"{kind}@{database}:{role}" for (role,) in rows)
    secrets = {namespace: frozenset(kubectl("get", "secrets", "-n", namespace, "-o", "name").split())
               for namespace in namespaces}
    return Snapshot(frozenset(entries), secrets)


def assert_no_side_effects(before: Snapshot, after: Snapshot, tokens: Sequence[str],
                           namespaces: Sequence[str], when: str) -> None:
    made, removed = after.about(tokens) - before.about(tokens), before.about(tokens) - after.about(tokens)
    assert not made and not removed, f"{when}: Postgres objects made {sorted(made)}, removed {sorted(removed)}"
    for namespace in namespaces:
        assert after.secrets[namespace] == before.secrets[namespace], (
            f"{when}: Secrets of {namespace} were {sorted(before.secrets[namespace])}, "
            f"are {sorted(after.secrets[namespace])}")


# --- waiting with deadlines, reporting what was seen ---

def describe(body: Mapping[str, Any] | None) -> str:
    if body is None:
        return "the object does not exist"
    ready = condition(body, "Ready")
    status = body.get("status")
    if not status:
        return "status is null"
    phase = f" phase={status['phase']}" if status.get("phase") else ""
    return f"Ready={ready.get('status')} reason={ready.get('reason')} message={ready.get('message')!r}{phase}"


def await_ready(kubectl: Kubectl, kind: str, name: str, namespace: str | None, status: str,
                reason: str | None = None, timeout: float = JUDGE_TIMEOUT) -> dict[str, Any]:
    """Wait for Ready=`status` (and `reason`); a status once written must never go back to null."""
    lost: list[str] = []
    written = False

    def probe() -> dict[str, Any] | None:
        nonlocal written
        body = kubectl.get(kind, name, namespace)
        if body is None:
            return None
        if body.get("status"):
            written = True
        elif written:
            lost.append(f"{kind} {namespace}/{name} lost its status")
        ready = condition(body, "Ready")
        matched = ready.get("status") == status and (reason is None or ready.get("reason") == reason)
        return body if matched else None

    try:
        body = wait_for(f"{kind} {namespace}/{name} Ready={status} {reason or ''}", probe, timeout)
    except TimeoutError:
        pytest.fail(f"{kind} {namespace}/{name}: expected Ready={status} reason={reason} within {timeout:.0f}s; "
                    f"actual: {describe(kubectl.get(kind, name, namespace))}")
    assert not lost, lost[0]
    return body


def assert_class_stays_unready(kubectl: Kubectl, name: str, reason: str | None, window: float = 5.0) -> dict[str, Any]:
    """A broken class reports Ready=False and keeps reporting it: watched for `window` seconds (longer than the
    operator's verification interval in these tests), it never turns Ready=True."""
    body = await_ready(kubectl, "storeclass", name, None, "False", reason)
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        current = kubectl.get("storeclass", name)
        ready = condition(current, "Ready")
        assert ready.get("status") == "False" and (reason is None or ready.get("reason") == reason), (
            f"StoreClass {name} turned {describe(current)} after reporting {describe(body)}")
        time.sleep(0.25)
    return body


def delete_quickly(kubectl: Kubectl, kind: str, name: str, namespace: str | None = None) -> None:
    args = ["delete", kind, name, *(["-n", namespace] if namespace else []), f"--timeout={DELETE_TIMEOUT:.0f}s"]
    try:
        kubectl(*args)
    except KubectlError as error:
        body = kubectl.get(kind, name, namespace)
        finalizers = (body or {}).get("metadata", {}).get("finalizers")
        pytest.fail(f"deleting {kind} {namespace}/{name} did not finish within {DELETE_TIMEOUT:.0f}s: "
                    f"{error.stderr.strip()}; finalizers {finalizers}; {describe(body)}")
    wait_until_gone(kubectl, kind, name, namespace, timeout=DELETE_TIMEOUT)


def remove_quietly(kubectl: Kubectl, kind: str, name: str, namespace: str | None = None) -> None:
    """Best-effort removal of what an unexpectedly accepted manifest made."""
    try:
        kubectl("delete", kind, name, *(["-n", namespace] if namespace else []), "--ignore-not-found",
                f"--timeout={DELETE_TIMEOUT:.0f}s")
    except KubectlError:
        pass


def refusal(kubectl: Kubectl, manifest: Mapping[str, Any], undo: Callable[[], None]) -> str:
    """The API server's refusal of `manifest`; an accepted manifest is undone and fails the test."""
    try:
        kubectl.apply(dict(manifest))
    except KubectlError as error:
        return error.stderr
    undo()
    body = {key: manifest[key] for key in ("spec",) if key in manifest}
    pytest.fail(f"the API server accepted {manifest['kind']} {manifest['metadata']['name'][:60]}: {body}")


def assert_names_field(stderr: str, names: Sequence[str]) -> None:
    assert any(name in stderr for name in names), f"the refusal names none of {list(names)}: {stderr.strip()}"


def await_first_measurement(env: LocalEnvironment, tenant_id: str, timeout: float = 30) -> None:
    """A provisioned tenant gets a daily-query baseline row at its first usage measurement (every second here):
    wait for it, so a snapshot taken afterwards holds the tenant as it stays."""
    role = f"tenant_{pg_token(tenant_id)}"

    def recorded() -> bool:
        with superuser(env) as conn:
            if conn.execute("SELECT to_regclass(%s)", (BOOKKEEPING["baseline"],)).fetchone()[0] is None:
                return False
            return conn.execute(f"SELECT 1 FROM {BOOKKEEPING['baseline']} WHERE role = %s",
                                (role,)).fetchone() is not None
    wait_for(f"the first usage measurement of {role}", recorded, timeout)


def ensure_namespace(kubectl: Kubectl, name: str, labels: Mapping[str, str] | None = None) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})


# --- A: the API server refuses ---

@pytest.fixture(scope="module")
def refused_namespace(kubectl: Kubectl) -> Iterator[str]:
    ensure_namespace(kubectl, REFUSED_NAMESPACE)
    yield REFUSED_NAMESPACE
    kubectl("delete", "namespace", REFUSED_NAMESPACE, "--ignore-not-found", "--wait=false")


@pytest.mark.parametrize("case", REFUSED_STORES, ids=[case.id for case in REFUSED_STORES])
def test_the_api_server_refuses_a_bad_tenantstore(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                                  refused_namespace: str, case: RefusedStore) -> None:
    manifest = case.manifest(refused_namespace)
    name = manifest.get("metadata", {}).get("name", case.name)
    before = take_snapshot(env, kubectl, [refused_namespace])
    stderr = refusal(kubectl, manifest, lambda: remove_quietly(kubectl, "tenantstore", name, refused_namespace))
    assert_names_field(stderr, case.names)
    assert kubectl.get("tenantstore", name, refused_namespace) is None
    after = take_snapshot(env, kubectl, [refused_namespace])
    assert_no_side_effects(before, after, case.tokens(), [refused_namespace], "after the refusal")
    VERIFIED.append(f"refused:{case.id}")


@pytest.mark.parametrize("case", REFUSED_UPDATES, ids=[case.id for case in REFUSED_UPDATES])
def test_the_api_server_refuses_a_bad_update(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                             refused_namespace: str, case: RefusedUpdate) -> None:
    untouched = take_snapshot(env, kubectl, [refused_namespace])
    base = case.manifest(refused_namespace)
    kubectl.apply(base)
    try:
        # Let the operator act on the accepted object first: Ready with the default class, else the class is absent.
        if "storeClassName" in base["spec"]:
            settled = await_ready(kubectl, "tenantstore", case.name, refused_namespace, "False", "StoreClassNotFound")
        else:
            await_ready(kubectl, "tenantstore", case.name, refused_namespace, "True", timeout=90)
            await_first_measurement(env, case.name)
            settled = kubectl.get("tenantstore", case.name, refused_namespace) or {}
        before = take_snapshot(env, kubectl, [refused_namespace])
        stderr = refusal(kubectl, merged(base, case.change), lambda: None)
        assert_names_field(stderr, case.names)
        current = kubectl.get("tenantstore", case.name, refused_namespace)
        assert current is not None
        assert current["spec"] == settled["spec"]
        assert current["metadata"]["generation"] == settled["metadata"]["generation"]
        after = take_snapshot(env, kubectl, [refused_namespace])
        assert_no_side_effects(before, after, case.tokens(), [refused_namespace], "after the refused update")
    finally:
        remove_quietly(kubectl, "tenantstore", case.name, refused_namespace)
    wait_until_gone(kubectl, "tenantstore", case.name, refused_namespace, timeout=DELETE_TIMEOUT)
    gone = take_snapshot(env, kubectl, [refused_namespace])
    assert_no_side_effects(untouched, gone, case.tokens(), [refused_namespace], "after deleting the base")
    VERIFIED.append(f"refused-update:{case.id}")


@pytest.mark.parametrize("case", REFUSED_CLASSES, ids=[case.id for case in REFUSED_CLASSES])
def test_the_api_server_refuses_a_bad_storeclass(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess,
                                                 case: RefusedClass) -> None:
    tokens = (pg_token(case.name),)
    before = take_snapshot(env, kubectl, [])
    stderr = refusal(kubectl, case.manifest(), lambda: remove_quietly(kubectl, "storeclass", case.name))
    assert_names_field(stderr, case.names)
    assert kubectl.get("storeclass", case.name) is None
    after = take_snapshot(env, kubectl, [])
    assert_no_side_effects(before, after, tokens, [], "after the refusal")
    VERIFIED.append(f"refused-class:{case.id}")


def test_a_long_name_is_fine_with_a_secret_name(kubectl: Kubectl, refused_namespace: str) -> None:
    """The neighbour of name-250-chars-without-secretName: with spec.secretName the name may be long."""
    manifest = tenant_store("n" * 250, refused_namespace, "bad-long-name", secretName="bad-long-name-store")
    kubectl.apply(manifest, "--dry-run=server")


# --- B: the operator judges ---

@dataclass
class Prepared:
    case: JudgedCase
    class_name: str | None
    admin_secret: str | None
    secret: str  # the credential Secret's name
    rival_namespace: str | None
    before: Snapshot
    rival_secret: dict[str, str] | None = None
    squatter_version: str | None = None

    @property
    def namespaces(self) -> list[str]:
        return [self.case.namespace, *([self.rival_namespace] if self.rival_namespace else [])]

    @property
    def rival(self) -> str:
        return f"{self.rival_namespace}/rival"

    def expected_message(self) -> list[str]:
        names = {"class_name": self.class_name, "namespace": self.case.namespace, "secret": self.secret,
                 "rival": self.rival}
        return [text.format(**names) for text in self.case.message]


def class_manifest(case: JudgedCase, setup: ClassSetup) -> dict[str, Any]:
    postgres = {"adminSecretRef": {"name": case.namespace, "namespace": setup.admin_namespace, "key": "uri"},
                "database": setup.database}
    extra = {"allowedNamespaces": dict(setup.allowed_namespaces)} if setup.allowed_namespaces else {}
    return store_class(case.namespace, postgres=postgres, **extra)


@pytest.fixture(scope="module")
def judged(env: LocalEnvironment, kubectl: Kubectl, operator: OperatorProcess) -> Iterator[dict[str, Prepared]]:
    """Every judged case set up at once: namespaces, classes and Secrets, rivals Ready, then all TenantStores."""
    cases = [*JUDGED, RECOVERY]
    setups: list[dict[str, Any]] = []
    for case in cases:
        ensure_namespace(kubectl, case.namespace)
        if case.rival == "other":
            ensure_namespace(kubectl, f"{case.namespace}-rival")
        if case.store_class is not None:
            setup = case.store_class
            if setup.admin is not None:
                setups.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                               "metadata": {"name": case.namespace, "namespace": setup.admin_namespace},
                               "stringData": setup.admin(env)})
            setups.append(class_manifest(case, setup))
        if case.squatter:
            setups.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                           "metadata": {"name": case.secret_name or f"{case.name}-store", "namespace": case.namespace},
                           "stringData": {"note": "made by someone else"}})
        if case.rival:
            rival_namespace = f"{case.namespace}-rival" if case.rival == "other" else case.namespace
            setups.append(tenant_store("rival", rival_namespace, case.name))
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": setups})

    prepared: dict[str, Prepared] = {}
    for case in cases:
        rival_namespace = None if not case.rival else \
            f"{case.namespace}-rival" if case.rival == "other" else case.namespace
        secret = case.secret_name or f"{case.name}-store"
        entry = Prepared(case, class_name=case.namespace if case.store_class else case.class_name,
                         admin_secret=case.namespace if case.store_class else None, secret=secret,
                         rival_namespace=rival_namespace, before=Snapshot(frozenset(), {}))
        if rival_namespace:
            await_ready(kubectl, "tenantstore", "rival", rival_namespace, "True", timeout=90)
            await_first_measurement(env, case.name)
            entry.rival_secret = tenant_secret(kubectl, rival_namespace, "rival-store")
        if case.squatter:
            squatter = kubectl.get("secret", secret, case.namespace)
            assert squatter is not None
            entry.squatter_version = squatter["metadata"]["resourceVersion"]
        prepared[case.id] = entry

    before = take_snapshot(env, kubectl, sorted({ns for entry in prepared.values() for ns in entry.namespaces}))
    stores = []
    for entry in prepared.values():
        entry.before = before
        fields: dict[str, Any] = {}
        if entry.class_name:
            fields["storeClassName"] = entry.class_name
        if entry.case.secret_name:
            fields["secretName"] = entry.case.secret_name
        stores.append(tenant_store(entry.case.name, entry.case.namespace, entry.case.name, **fields))
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": stores})
    yield prepared

    # A safety net; each case removes what it made when it passes.
    for entry in prepared.values():
        remove_quietly(kubectl, "tenantstore", entry.case.name, entry.case.namespace)
        if entry.rival_namespace:
            remove_quietly(kubectl, "tenantstore", "rival", entry.rival_namespace)
        if entry.case.store_class:
            kubectl("delete", "storeclass", entry.case.namespace, "--ignore-not-found", "--wait=false")
            kubectl("delete", "secret", entry.case.namespace, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
        for namespace in entry.namespaces:
            kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")


def remove_class(kubectl: Kubectl, entry: Prepared) -> None:
    """Not waited for here: the last test checks that every class of the table is gone."""
    if entry.case.store_class is None:
        return
    kubectl("delete", "storeclass", entry.case.namespace, "--ignore-not-found", "--wait=false")
    kubectl("delete", "secret", entry.case.namespace, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")


def assert_rival_untouched(env: LocalEnvironment, kubectl: Kubectl, entry: Prepared) -> None:
    assert entry.rival_namespace and entry.rival_secret
    body = kubectl.get("tenantstore", "rival", entry.rival_namespace)
    assert condition(body, "Ready").get("status") == "True", f"the first claimant is {describe(body)}"
    assert tenant_secret(kubectl, entry.rival_namespace, "rival-store") == entry.rival_secret
    with psycopg.connect(entry.rival_secret["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == f"tenant_{pg_token(entry.case.name)}"


@pytest.mark.parametrize("case", JUDGED, ids=[case.id for case in JUDGED])
def test_the_operator_judges_a_bad_input_and_makes_nothing(env: LocalEnvironment, kubectl: Kubectl,
                                                           judged: dict[str, Prepared], case: JudgedCase) -> None:
    entry = judged[case.id]
    tokens = (pg_token(case.name),)
    body = await_ready(kubectl, "tenantstore", case.name, case.namespace, "False", case.reason)
    ready = condition(body, "Ready")
    if case.phase is not None:
        assert body["status"].get("phase") == case.phase, describe(body)
    for text in entry.expected_message():
        assert text in ready.get("message", ""), f"the Ready message does not name {text}: {ready.get('message')!r}"

    assert_no_side_effects(entry.before, take_snapshot(env, kubectl, entry.namespaces), tokens, entry.namespaces,
                           f"once judged {case.reason}")
    if case.squatter:
        squatter = kubectl.get("secret", entry.secret, case.namespace)
        assert squatter is not None and squatter["metadata"]["resourceVersion"] == entry.squatter_version, \
            "the Secret that is not the operator's was changed"

    # Deleting a TenantStore that never provisioned anything completes at once, whatever its class.
    delete_quickly(kubectl, "tenantstore", case.name, case.namespace)
    assert_no_side_effects(entry.before, take_snapshot(env, kubectl, entry.namespaces), tokens, entry.namespaces,
                           "after deleting it")
    if case.rival:
        assert_rival_untouched(env, kubectl, entry)
        assert entry.rival_namespace is not None
        delete_quickly(kubectl, "tenantstore", "rival", entry.rival_namespace)

    setup = case.store_class
    if setup is not None and setup.broken:
        found = assert_class_stays_unready(kubectl, case.namespace, setup.class_reason)
        if setup.class_message_names_secret:
            message = condition(found, "Ready").get("message", "")
            assert case.namespace in message, f"the StoreClass's message does not name its Secret: {message!r}"
    remove_class(kubectl, entry)
    for namespace in entry.namespaces:
        kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
    VERIFIED.append(f"judged:{case.id}")


def test_a_tenant_blocked_by_a_missing_admin_secret_recovers_by_itself(env: LocalEnvironment, kubectl: Kubectl,
                                                                       judged: dict[str, Prepared]) -> None:
    entry = judged[RECOVERY.id]
    case = entry.case
    await_ready(kubectl, "tenantstore", case.name, case.namespace, "False", case.reason)
    assert_no_side_effects(entry.before, take_snapshot(env, kubectl, entry.namespaces), (pg_token(case.name),),
                           entry.namespaces, "while blocked")

    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": case.namespace, "namespace": OPERATOR_NAMESPACE},
                   "stringData": {"uri": env.admin_uri}})
    # The operator rereads a class's Secrets at most every 30 s and retries StoreClassInvalid every 15 s.
    body = await_ready(kubectl, "tenantstore", case.name, case.namespace, "True", timeout=90)
    assert body["status"]["storeClassName"] == case.namespace
    secret = tenant_secret(kubectl, case.namespace, entry.secret)
    with psycopg.connect(secret["uri"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == f"tenant_{pg_token(case.name)}"

    delete_quickly(kubectl, "tenantstore", case.name, case.namespace)
    assert_no_side_effects(entry.before, take_snapshot(env, kubectl, entry.namespaces), (pg_token(case.name),),
                           entry.namespaces, "after deleting the recovered tenant")
    remove_class(kubectl, entry)
    kubectl("delete", "namespace", case.namespace, "--ignore-not-found", "--wait=false")


# --- after the whole table ---

def test_the_operator_still_provisions_after_every_bad_input(env: LocalEnvironment, kubectl: Kubectl,
                                                             operator: OperatorProcess,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    try:
        namespace, tenant_id = "bad-inputs-afterwards", "bad-afterwards"
        ensure_namespace(kubectl, namespace)
        before = take_snapshot(env, kubectl, [namespace])
        kubectl.apply(tenant_store("afterwards", namespace, tenant_id))
        await_ready(kubectl, "tenantstore", "afterwards", namespace, "True", timeout=90)
        secret = tenant_secret(kubectl, namespace, "afterwards-store")
        with psycopg.connect(secret["uri"], autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == f"tenant_{pg_token(tenant_id)}"
        delete_quickly(kubectl, "tenantstore", "afterwards", namespace)
        assert_no_side_effects(before, take_snapshot(env, kubectl, [namespace]), (pg_token(tenant_id),),
                               [namespace], "after deleting the valid tenant")
        kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")

        # The classes of the judged cases that passed were deleted as each ended: none may be stuck.
        deleted = {f"bad-inputs-{case.id}" for case in JUDGED if case.store_class and f"judged:{case.id}" in VERIFIED}

        def classes_left() -> set[str]:
            return deleted & set(kubectl("get", "storeclasses", "-o", "jsonpath={.items[*].metadata.name}").split())
        try:
            wait_for("the table's StoreClasses to be deleted", lambda: not classes_left(), timeout=90)
        except TimeoutError:
            pytest.fail(f"StoreClasses not deleted 90 s after their last case: {sorted(classes_left())}")
        assert len(CASE_IDS) >= 60
    finally:
        refused = sum(1 for case_id in CASE_IDS if case_id.startswith("refused"))
        unverified = [case_id for case_id in CASE_IDS if case_id not in VERIFIED]
        with capsys.disabled():
            print(f"\nbad inputs: {len(CASE_IDS)} cases ({refused} refused by the API server, "
                  f"{len(CASE_IDS) - refused} judged by the operator), {len(VERIFIED)} verified with zero side "
                  f"effects; not verified: {', '.join(unverified) or 'none'}")
