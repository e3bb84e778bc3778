"""Typed views of the TenantStore and StoreClass resources (API: tenancy.dev/v1alpha1).

The API server already validates what the CRD schema and CEL rules can express; this module turns a
validated body into models, fills the defaults the operator owns (tier policies, Secret name) and derives
what follows from them: isolation, effective quotas and the names of the tenant's backend objects.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from tenantstore.api import DEFAULT_CLASS_ANNOTATION

from tenantstore.labelselector import InvalidSelector, LabelSelector

TENANT_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


class InvalidResource(ValueError):
    """A resource the API server accepted but the operator cannot act on (reason goes to a condition)."""


class Tier(enum.StrEnum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class RelationalIsolation(enum.StrEnum):
    SCHEMA = "schema"
    DATABASE = "database"


class VectorIsolation(enum.StrEnum):
    NAMESPACE = "namespace"
    DEDICATED = "dedicated"


class Metric(enum.StrEnum):
    COSINE = "cosine"
    EUCLIDEAN = "euclidean"
    DOTPRODUCT = "dotproduct"


class DeletionPolicy(enum.StrEnum):
    DELETE = "Delete"
    RETAIN = "Retain"
    EXPORT = "Export"  # a final export (spec.finalExport) completes and is verified, then everything is deleted


class QuotaAction(enum.StrEnum):
    BLOCK = "Block"
    ALERT = "Alert"


class DriftPolicy(enum.StrEnum):
    REPAIR = "Repair"  # make again what is missing, put Secret and role back in sync
    REPORT = "Report"  # say what is wrong (Ready=False), change nothing




_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i|[kMGTPE])?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def parse_quantity(value: int | str) -> int:
    """A Kubernetes quantity of bytes ("20Gi", "500M", 1024) as an integer."""
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise InvalidResource(f"{value!r} is not a quantity of bytes (for example 1Gi, 500M or 1048576)")
    number, suffix = match.groups()
    multiplier = _BINARY.get(suffix or "", _DECIMAL.get(suffix or "", 1))
    amount = Decimal(number) * multiplier
    if amount != amount.to_integral_value():
        # Never round: "0.5" would become 0, which means unlimited.
        raise InvalidResource(f"{value!r} is not a whole number of bytes")
    return int(amount)


def format_quantity(value: int) -> int | str:
    """The shortest exact binary quantity ("20Gi") for a byte count, as users wrote it."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        if value and value % _BINARY[suffix] == 0:
            return f"{value // _BINARY[suffix]}{suffix}"
    return value


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: str) -> datetime.timedelta:
    """A duration as users write it: "90d", "36h", "1h30m" (days, hours, minutes, seconds; at least one)."""
    match = _DURATION.match(str(value).strip())
    if not value or not match or not any(match.groups()):
        raise InvalidResource(f"{value!r} is not a duration (for example 90d, 36h or 1h30m)")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


# Seven years (of 365 days and a leap day or two), what compliance regimes commonly ask for.
DEFAULT_AUDIT_RETENTION_TEXT = "2557d"
DEFAULT_AUDIT_RETENTION = parse_duration(DEFAULT_AUDIT_RETENTION_TEXT)


@dataclasses.dataclass(frozen=True)
class Retention:
    """How long a tenant's vectors are kept (None: for ever). Relational data is the tenant's to expire."""

    vectors_max_age: datetime.timedelta | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Retention:
        max_age = ((raw or {}).get("vectors") or {}).get("maxAge")
        return cls(parse_duration(max_age) if max_age else None)

    def overridden_by(self, other: Retention) -> Retention:
        return other if other.vectors_max_age is not None else self


@dataclasses.dataclass(frozen=True)
class S3Location:
    """An S3-compatible bucket: objects <prefix>/<file>; credentials from a Secret in the resource's namespace."""

    endpoint: str
    bucket: str
    prefix: str
    credentials_secret: str
    region: str = "us-east-1"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], field: str) -> S3Location:
        endpoint, bucket = str(raw.get("endpoint") or "").rstrip("/"), str(raw.get("bucket") or "")
        if not _ENDPOINT.match(endpoint):
            raise InvalidResource(f"{field}.endpoint {endpoint!r} must be http(s)://host[:port]")
        if not _BUCKET.match(bucket):
            raise InvalidResource(f"{field}.bucket {bucket!r} is not a bucket name")
        secret = (raw.get("credentialsSecret") or {}).get("name")
        if not secret:
            raise InvalidResource(f"{field}.credentialsSecret.name is required (keys accessKeyId, secretAccessKey)")
        return cls(endpoint=endpoint, bucket=bucket, prefix=checked_path(raw.get("prefix"), f"{field}.prefix"),
                   credentials_secret=secret, region=str(raw.get("region") or "us-east-1"))

    def describe(self) -> str:
        return f"s3:{self.bucket}/{self.prefix}"


@dataclasses.dataclass(frozen=True)
class ExportDestination:
    """Where an export is written (and a restore reads from): a directory on the operator's export volume,
    inside the part of it that belongs to the resource's namespace (so one namespace never reaches another's),
    or a prefix in an S3-compatible bucket."""

    path: str = ""
    s3: S3Location | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, field: str) -> ExportDestination:
        raw = raw or {}
        if raw.get("s3"):
            return cls(s3=S3Location.from_dict(raw["s3"], f"{field}.s3"))
        volume = raw.get("volume") or {}
        return cls(path=checked_path(volume.get("path"), f"{field}.volume.path"))

    def describe(self, namespace: str) -> str:
        return self.s3.describe() if self.s3 else f"volume:{namespace}/{self.path}"


def checked_path(value: Any, field: str) -> str:
    path = str(value or "").strip("/")
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or not all(_PATH_PART.match(p) for p in parts):
        raise InvalidResource(f"{field} {value!r} must be a relative path of letters, digits, '.', '_' and '-' "
                              f"(no '..')")
    return path


_PATH_PART = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")




@dataclasses.dataclass(frozen=True)
class Quotas:
    """Per-tenant limits; None means "not set here" (inherit), 0 means unlimited."""

    max_documents: int | None = None
    max_storage_bytes: int | None = None
    max_connections: int | None = None
    max_daily_queries: int | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Quotas:
        raw = raw or {}
        storage = raw.get("maxStorageBytes")
        return cls(
            max_documents=raw.get("maxDocuments"),
            max_storage_bytes=None if storage is None else parse_quantity(storage),
            max_connections=raw.get("maxConnections"),
            max_daily_queries=raw.get("maxDailyQueries"),
        )

    def overridden_by(self, overrides: Quotas) -> Quotas:
        """Field by field: an override that is set wins."""
        return Quotas(**{
            field.name: getattr(overrides, field.name) if getattr(overrides, field.name) is not None
            else getattr(self, field.name)
            for field in dataclasses.fields(self)
        })

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "maxDocuments": self.max_documents,
            "maxStorageBytes": None if self.max_storage_bytes is None else format_quantity(self.max_storage_bytes),
            "maxConnections": self.max_connections,
            "maxDailyQueries": self.max_daily_queries,
        }
        return {key: value for key, value in status.items() if value is not None}


    def capped_by(self, ceilings: Quotas) -> tuple[Quotas, list[str]]:
        """Each field at most its ceiling (0 = unlimited counts as above any ceiling); the names capped."""
        capped: dict[str, int | None] = {}
        over: list[str] = []
        for field in dataclasses.fields(self):
            value, ceiling = getattr(self, field.name), getattr(ceilings, field.name)
            if ceiling and value is not None and (value == 0 or value > ceiling):
                value = ceiling
                over.append(field.name)
            capped[field.name] = value
        return Quotas(**capped), over


QUOTA_FIELD_NAMES = {"max_documents": "maxDocuments", "max_storage_bytes": "maxStorageBytes",
                     "max_connections": "maxConnections", "max_daily_queries": "maxDailyQueries"}


class BudgetAction(enum.StrEnum):
    ALERT = "Alert"
    BLOCK = "Block"  # as a Block quota: writes refused, reads and deletes kept


DEFAULT_BUDGET_THRESHOLDS = (0.8, 0.9, 0.95)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A monthly cost limit in the class's currency (None: no budget), its alert thresholds and what reaching
    it does. A TenantStore's spec.budget overrides its tier's field by field."""

    monthly_limit: float | None = None
    thresholds: tuple[float, ...] = DEFAULT_BUDGET_THRESHOLDS
    action: BudgetAction = BudgetAction.ALERT

    def overridden_by(self, raw: Mapping[str, Any] | None) -> Budget:
        raw = raw or {}
        thresholds = raw.get("thresholds")
        return Budget(
            monthly_limit=float(raw["monthlyLimit"]) if raw.get("monthlyLimit") is not None else self.monthly_limit,
            thresholds=tuple(sorted(float(t) for t in thresholds)) if thresholds is not None else self.thresholds,
            action=BudgetAction(raw["action"]) if raw.get("action") else self.action)


@dataclasses.dataclass(frozen=True)
class Pricing:
    """StoreClass spec.pricing: the class's fixed monthly costs (allocated to tenants) and its prices per use."""

    currency: str = "USD"
    shared_index: float = 0.0          # per shared vector index, split by storage among its tenants
    dedicated_index: float = 0.0       # per dedicated vector index, carried by its tenant
    dedicated_database: float = 0.0    # per dedicated database, carried by its tenant
    shared_infrastructure: float = 0.0  # the Postgres and the rest, split by storage among the class's tenants
    per_gb_month: float = 0.0
    per_1k_queries: float = 0.0
    per_1k_vectors_written: float = 0.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Pricing | None:
        if not raw:
            return None
        fixed = raw.get("fixedMonthly") or {}
        return cls(currency=raw.get("currency") or "USD",
                   shared_index=float(fixed.get("sharedIndex", 0)), dedicated_index=float(fixed.get("dedicatedIndex", 0)),
                   dedicated_database=float(fixed.get("dedicatedDatabase", 0)),
                   shared_infrastructure=float(fixed.get("sharedInfrastructure", 0)),
                   per_gb_month=float(raw.get("perGBMonth", 0)), per_1k_queries=float(raw.get("per1kQueries", 0)),
                   per_1k_vectors_written=float(raw.get("per1kVectorsWritten", 0)))


LATENCY_PATTERN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s)$")


def parse_latency(text: str) -> float:
    """"50ms" or "0.2s" in seconds."""
    match = LATENCY_PATTERN.match(str(text))
    if not match:
        raise InvalidResource(f"{text!r} is not a latency (e.g. 50ms, 0.2s)")
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


@dataclasses.dataclass(frozen=True)
class SearchSlo:
    """StoreClass spec.slo: a p95 search-latency objective per tenant, measured by probes that query each
    non-empty tenant's own store as the tenant, at most `probes_per_second` for the class."""

    p95_seconds: float
    probes_per_second: float = 2.0
    top_k: int = 5

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> SearchSlo | None:
        latency = ((raw or {}).get("searchLatency") or {}).get("p95")
        if not latency:
            return None
        return cls(p95_seconds=parse_latency(latency), probes_per_second=float(raw.get("probesPerSecond", 2.0)),
                   top_k=int(raw.get("topK", 5)))


@dataclasses.dataclass(frozen=True)
class TierPolicy:
    relational: RelationalIsolation
    vector: VectorIsolation
    quotas: Quotas
    max_quotas: Quotas = Quotas()  # ceilings for a TenantStore's overrides; unset = no ceiling
    retention: Retention = Retention()
    budget: Budget = Budget()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], fallback: TierPolicy) -> TierPolicy:
        return cls(
            relational=RelationalIsolation(raw.get("relational", fallback.relational)),
            vector=VectorIsolation(raw.get("vector", fallback.vector)),
            quotas=fallback.quotas.overridden_by(Quotas.from_dict(raw.get("quotas"))),
            max_quotas=Quotas.from_dict(raw.get("maxQuotas")),
            retention=Retention.from_dict(raw.get("retention")),
            budget=Budget().overridden_by(raw.get("budget")),
        )


# The tiers a StoreClass gets when it does not spell them out (the values the CRD's descriptions document).
DEFAULT_TIERS: dict[Tier, TierPolicy] = {
    Tier.FREE: TierPolicy(RelationalIsolation.SCHEMA, VectorIsolation.NAMESPACE,
                          Quotas(10_000, 2**30, 5, 1_000)),
    Tier.PRO: TierPolicy(RelationalIsolation.SCHEMA, VectorIsolation.NAMESPACE,
                         Quotas(1_000_000, 20 * 2**30, 20, 100_000)),
    Tier.ENTERPRISE: TierPolicy(RelationalIsolation.DATABASE, VectorIsolation.DEDICATED,
                                Quotas(0, 0, 100, 0)),
}


@dataclasses.dataclass(frozen=True)
class SecretKeyRef:
    name: str
    namespace: str
    key: str

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, default_key: str) -> SecretKeyRef:
        if not raw or not raw.get("name") or not raw.get("namespace"):
            raise InvalidResource("a secret reference needs a name and a namespace")
        return cls(name=raw["name"], namespace=raw["namespace"], key=raw.get("key") or default_key)


class NamespacesFrom(enum.StrEnum):
    ALL = "All"
    SELECTOR = "Selector"


@dataclasses.dataclass(frozen=True)
class AllowedNamespaces:
    """spec.allowedNamespaces: which namespaces' TenantStores may use a class (Gateway API's allowedRoutes style)."""

    from_: NamespacesFrom = NamespacesFrom.ALL
    selector: LabelSelector | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> AllowedNamespaces:
        if not raw:
            return cls()
        try:
            from_ = NamespacesFrom(raw.get("from") or "All")
        except ValueError:
            raise InvalidResource(f"spec.allowedNamespaces.from {raw.get('from')!r} must be All or Selector") from None
        if from_ is NamespacesFrom.ALL:
            return cls()
        if raw.get("selector") is None:
            raise InvalidResource("spec.allowedNamespaces.selector is required when from is Selector")
        try:
            return cls(from_, LabelSelector.from_dict(raw["selector"]))
        except InvalidSelector as error:
            raise InvalidResource(f"spec.allowedNamespaces.selector: {error}") from None

    @property
    def restricted(self) -> bool:
        """Whether a namespace's labels matter at all (so reading them can be skipped when not)."""
        return self.from_ is NamespacesFrom.SELECTOR

    def allows(self, namespace_labels: Mapping[str, str]) -> bool:
        # A missing selector matches nothing, as a nil metav1.LabelSelector does.
        return not self.restricted or (self.selector is not None and self.selector.matches(namespace_labels))


@dataclasses.dataclass(frozen=True)
class GlobalIndex:
    """One entry of spec.globalStore.indexes: the class's read-only global knowledge for one (dimension, metric).
    Every tenant of the class with vectors of that shape may search it; only the platform's writer Secret writes."""

    class_name: str
    dimension: int
    metric: Metric

    @property
    def key(self) -> str:
        # Names must stay unique per class and fit Postgres's 63 bytes whatever the class is called.
        return hashlib.sha256(f"{self.class_name}/{self.dimension}/{self.metric.value}".encode()).hexdigest()[:12]

    @property
    def store_name(self) -> str:
        """What spans and the Secret call it."""
        return f"{self.class_name}-global-{self.dimension}-{self.metric.value}"

    @property
    def writer_secret(self) -> str:
        return self.store_name

    @property
    def writer_role(self) -> str:
        return f"tsglobal_{self.key}_w"

    @property
    def reader_role(self) -> str:
        return f"tsglobal_{self.key}_r"

    @classmethod
    def list_from(cls, class_name: str, raw: Mapping[str, Any] | None) -> tuple[GlobalIndex, ...]:
        entries = (raw or {}).get("indexes") or []
        indexes = tuple(cls(class_name, int(entry["dimension"]), Metric(entry.get("metric") or "cosine"))
                        for entry in entries)
        shapes = [(index.dimension, index.metric) for index in indexes]
        if len(set(shapes)) != len(shapes):
            raise InvalidResource("spec.globalStore.indexes: one global index per dimension and metric")
        return indexes


DEFAULT_MAX_MOVE_FREEZE_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class StoreClass:
    name: str
    generation: int
    is_default: bool
    admin_secret: SecretKeyRef
    shared_database: str
    vector_backend: str
    shared_index_capacity: int
    shared_index_alert_threshold: float
    shared_index_keep_empty: bool
    tiers: Mapping[Tier, TierPolicy]
    # spec.vector.<backend>: that backend's own settings, which it parses itself (backends.VectorBackend.build).
    vector_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    allowed_namespaces: AllowedNamespaces = AllowedNamespaces()
    drift_policy: DriftPolicy = DriftPolicy.REPAIR
    audit_retention: datetime.timedelta = DEFAULT_AUDIT_RETENTION
    pricing: Pricing | None = None  # None: costs are not computed for this class
    slo: SearchSlo | None = None  # None: no search-latency probes
    global_indexes: tuple[GlobalIndex, ...] = ()
    global_writer_namespace: str = ""  # where the writer Secrets go ("": the operator's own namespace)
    # spec.moves.maxFreezeSeconds: how long a move to another class may refuse a leaving tenant's writes.
    max_move_freeze_seconds: int = DEFAULT_MAX_MOVE_FREEZE_SECONDS

    def global_index_for(self, dimension: int, metric: Metric) -> GlobalIndex | None:
        return next((index for index in self.global_indexes
                     if index.dimension == dimension and index.metric is metric), None)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StoreClass:
        meta, spec = body.get("metadata", {}), body.get("spec", {})
        postgres, vector = spec.get("postgres", {}), spec.get("vector", {})
        shared_index = vector.get("sharedIndex", {})
        tiers_raw = spec.get("tiers", {})
        annotations = meta.get("annotations") or {}
        vector_backend = vector.get("backend") or "pgvector"
        return cls(
            name=meta["name"],
            generation=meta.get("generation", 0),
            is_default=annotations.get(DEFAULT_CLASS_ANNOTATION) == "true",
            admin_secret=SecretKeyRef.from_dict(postgres.get("adminSecretRef"), default_key="uri"),
            shared_database=postgres.get("database") or "tenants",
            vector_backend=vector_backend,
            shared_index_capacity=int(shared_index.get("capacity", 100)),
            shared_index_alert_threshold=float(shared_index.get("alertThreshold", 0.8)),
            shared_index_keep_empty=bool(shared_index.get("keepEmpty", True)),
            tiers={tier: TierPolicy.from_dict(tiers_raw.get(tier.value) or {}, DEFAULT_TIERS[tier])
                   for tier in Tier},
            vector_settings=dict(vector.get(vector_backend) or {}),
            allowed_namespaces=AllowedNamespaces.from_dict(spec.get("allowedNamespaces")),
            drift_policy=DriftPolicy(spec.get("driftPolicy") or DriftPolicy.REPAIR),
            audit_retention=parse_duration((spec.get("audit") or {}).get("retention") or DEFAULT_AUDIT_RETENTION_TEXT),
            pricing=Pricing.from_dict(spec.get("pricing")),
            slo=SearchSlo.from_dict(spec.get("slo")),
            global_indexes=GlobalIndex.list_from(meta["name"], spec.get("globalStore")),
            global_writer_namespace=(spec.get("globalStore") or {}).get("writerSecretNamespace") or "",
            max_move_freeze_seconds=int((spec.get("moves") or {}).get("maxFreezeSeconds")
                                        or DEFAULT_MAX_MOVE_FREEZE_SECONDS),
        )


def parse_store_class(body: Mapping[str, Any]) -> StoreClass | InvalidResource:
    """A StoreClass as the operator reads it, or why it cannot be used."""
    try:
        return StoreClass.from_body(body)
    except (InvalidResource, KeyError, ValueError) as error:
        return InvalidResource(str(error))


def default_class_name(classes: Mapping[str, StoreClass | InvalidResource]) -> str:
    """The class a TenantStore naming none is provisioned in: of the valid classes annotated as the default, the
    lowest-named ("" when there is none)."""
    return min((name for name, found in classes.items() if isinstance(found, StoreClass) and found.is_default),
               default="")


@dataclasses.dataclass(frozen=True)
class TenantStoreSpec:
    tenant_id: str
    display_name: str
    tier: Tier
    store_class_name: str
    dimension: int
    metric: Metric
    quota_overrides: Quotas
    quota_action: QuotaAction
    suspended: bool
    deletion_policy: DeletionPolicy
    secret_name: str
    final_export: ExportDestination | None = None  # deletionPolicy Export: where the final export goes
    restore_from: ExportDestination | None = None  # an export the new tenant starts from
    retention: Retention = Retention()
    credentials: tuple[Credential, ...] = ()  # scoped credentials besides the owner's (secret_name)
    budget_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # spec.budget, as written

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TenantStoreSpec:
        meta, spec = body.get("metadata", {}), body.get("spec", {})
        tenant_id = spec.get("tenantId", "")
        if not TENANT_ID_PATTERN.match(tenant_id):
            raise InvalidResource(f"spec.tenantId {tenant_id!r} must match {TENANT_ID_PATTERN.pattern}")
        vector = spec.get("vector") or {}
        if not vector.get("dimension"):
            raise InvalidResource("spec.vector.dimension is required")
        if spec.get("deletionPolicy") == DeletionPolicy.EXPORT and not (spec.get("finalExport") or {}).get("destination"):
            raise InvalidResource("spec.finalExport.destination is required when spec.deletionPolicy is Export")
        return cls(
            tenant_id=tenant_id,
            display_name=spec.get("displayName", ""),
            tier=Tier(spec.get("tier", "free")),
            store_class_name=spec.get("storeClassName", ""),
            dimension=int(vector["dimension"]),
            metric=Metric(vector.get("metric", "cosine")),
            quota_overrides=Quotas.from_dict(spec.get("quotas")),
            quota_action=QuotaAction(spec.get("quotaAction", "Block")),
            suspended=bool(spec.get("suspended", False)),
            deletion_policy=DeletionPolicy(spec.get("deletionPolicy", "Delete")),
            secret_name=spec.get("secretName") or f"{meta['name']}-store",
            final_export=ExportDestination.from_dict(spec["finalExport"].get("destination"),
                                                     "spec.finalExport.destination")
            if spec.get("finalExport") else None,
            restore_from=ExportDestination.from_dict(spec["restoreFrom"], "spec.restoreFrom")
            if spec.get("restoreFrom") else None,
            retention=Retention.from_dict(spec.get("retention")),
            credentials=Credential.list_from(spec.get("credentials"), meta["name"],
                                             spec.get("secretName") or f"{meta['name']}-store"),
            budget_overrides=dict(spec.get("budget") or {}),
        )

    def budget(self, store_class: StoreClass) -> Budget:
        """The tier's budget in the class, overridden field by field by spec.budget."""
        return store_class.tiers[self.tier].budget.overridden_by(self.budget_overrides)


class Access(str, enum.Enum):
    READ_WRITE = "readWrite"
    READ_ONLY = "readOnly"


CREDENTIAL_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,12}$")
DEFAULT_ROTATION_OVERLAP = datetime.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class Rotation:
    """spec.credentials[].rotation: a new password every so often (None: only when asked), the previous one
    still working for `overlap`."""

    every: datetime.timedelta | None = None
    overlap: datetime.timedelta = DEFAULT_ROTATION_OVERLAP

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Rotation:
        raw = raw or {}
        return cls(parse_duration(raw["every"]) if raw.get("every") else None,
                   parse_duration(raw["overlap"]) if raw.get("overlap") else DEFAULT_ROTATION_OVERLAP)


@dataclasses.dataclass(frozen=True)
class Credential:
    """One of spec.credentials: a login of its own, with the tenant's rights (readWrite) or read rights only."""

    name: str
    access: Access
    secret_name: str
    rotation: Rotation = Rotation()

    @classmethod
    def list_from(cls, raw: Sequence[Mapping[str, Any]] | None, store_name: str,
                  owner_secret: str) -> tuple[Credential, ...]:
        credentials = []
        for item in raw or ():
            name = str(item.get("name") or "")
            if not CREDENTIAL_NAME_PATTERN.match(name):
                raise InvalidResource(f"spec.credentials[].name {name!r} must match {CREDENTIAL_NAME_PATTERN.pattern}")
            try:
                access = Access(item.get("access") or Access.READ_WRITE)
            except ValueError:
                raise InvalidResource(f"spec.credentials[{name}].access must be readWrite or readOnly") from None
            credentials.append(cls(name, access, item.get("secretName") or f"{store_name}-{name}",
                                   Rotation.from_dict(item.get("rotation"))))
        names = [credential.name for credential in credentials]
        secrets = [owner_secret, *(credential.secret_name for credential in credentials)]
        if len(set(names)) != len(names) or len(set(secrets)) != len(secrets):
            raise InvalidResource("spec.credentials: every credential needs its own name and its own Secret "
                                  "(not the owner's, spec.secretName)")
        return tuple(credentials)


@dataclasses.dataclass(frozen=True)
class CredentialRole:
    """A credential as Postgres sees it: two login roles that act as the tenant's role or its reader role. They
    take turns: a rotation gives the one not in use a new password and moves the Secret to it."""

    name: str
    access: Access
    logins: tuple[str, str]
    secret_name: str
    connection_limit: int  # Postgres's spelling: -1 unlimited
    rotation: Rotation = Rotation()

    def other(self, login: str) -> str:
        return self.logins[1] if login == self.logins[0] else self.logins[0]


def credential_logins(tenant_id: str, name: str) -> tuple[str, str]:
    """tscred_<id>_<name>_a and _b: the name has no '_', so the id, name and turn are unambiguous (at most
    63 characters, Postgres's limit)."""
    base = f"tscred_{tenant_id.replace('-', '_')}_{name}"
    return f"{base}_a", f"{base}_b"


def connection_shares(limit: int, logins: int) -> list[int]:
    """A tenant's connection limit split over its logins (the owner's first), so that together they stay
    within it: Postgres counts connections per role. 0 (unlimited) stays unlimited for each (-1)."""
    if limit <= 0:
        return [-1] * logins
    share, rest = divmod(limit, logins)
    return [share + (1 if index < rest else 0) for index in range(logins)]


def backend_name(tenant_id: str) -> str:
    """The tenant's Postgres role, schema and database name: tenant_<id> (hyphens are not identifiers' friends)."""
    return "tenant_" + tenant_id.replace("-", "_")


def shared_index_name(dimension: int, metric: Metric, number: int) -> str:
    return f"shared-{dimension}-{metric.value}-{number}"


def dedicated_index_name(tenant_id: str) -> str:
    # "ts-" + 40 characters stays inside Pinecone's 45-character index names.
    return f"ts-{tenant_id}"


@dataclasses.dataclass(frozen=True)
class DesiredStore:
    """Everything the backends must make true for one tenant, derived from its spec and its class."""

    tenant_id: str
    uid: str
    tenant_store: str  # "<namespace>/<name>" of the TenantStore
    dimension: int
    metric: Metric
    relational: RelationalIsolation
    vector: VectorIsolation
    quotas: Quotas
    suspended: bool
    shared_database: str
    shared_index_capacity: int
    shared_index_keep_empty: bool = True
    writes_allowed: bool = True  # False while a Block quota is exceeded
    quotas_capped: tuple[str, ...] = ()  # spec.quotas fields the class's ceilings lowered
    retention: Retention = Retention()
    credentials: tuple[Credential, ...] = ()

    @property
    def role(self) -> str:
        return backend_name(self.tenant_id)

    @property
    def tenant_store_namespace(self) -> str:
        return self.tenant_store.partition("/")[0]

    @property
    def tenant_store_name(self) -> str:
        return self.tenant_store.partition("/")[2]

    @property
    def holding_role(self) -> str:
        """The NOLOGIN role that owns the tenant's objects while a quota blocks its writes (never the admin)."""
        return "tenantstore_hold_" + self.tenant_id.replace("-", "_")

    @property
    def database(self) -> str:
        return self.shared_database if self.relational is RelationalIsolation.SCHEMA else backend_name(self.tenant_id)

    @property
    def schema(self) -> str:
        return backend_name(self.tenant_id) if self.relational is RelationalIsolation.SCHEMA else "public"

    @property
    def io_role(self) -> str:
        """A short-lived login role that is only a member of the tenant's role: exports and restores run as it,
        so the tenant's objects never run in a session that could become the admin (SET ROLE is no boundary)."""
        return "tenantstore_io_" + self.tenant_id.replace("-", "_")

    @property
    def reader_role(self) -> str:
        """The NOLOGIN role readOnly credentials act as: SELECT on the tenant's tables and vectors, nothing else."""
        return "tsread_" + self.tenant_id.replace("-", "_")

    @property
    def connection_limit(self) -> int:
        """The owner's share of the tenant's connection limit (all of it without scoped credentials)."""
        return connection_shares(self.quotas.max_connections, 1 + len(self.credentials))[0]

    @property
    def credential_roles(self) -> tuple[CredentialRole, ...]:
        shares = connection_shares(self.quotas.max_connections, 1 + len(self.credentials))[1:]
        return tuple(CredentialRole(credential.name, credential.access,
                                    credential_logins(self.tenant_id, credential.name), credential.secret_name, share,
                                    credential.rotation)
                     for credential, share in zip(self.credentials, shares))

    def check_connection_shares(self) -> None:
        """Every login needs a connection: a spec that leaves one without is refused (before anything changes)."""
        logins = 1 + len(self.credentials)
        if 0 < self.quotas.max_connections < logins:
            raise InvalidResource(f"spec.credentials: {logins} logins (the owner's and {len(self.credentials)} "
                                  f"scoped) share the tenant's connection limit of {self.quotas.max_connections}, "
                                  f"which gives some of them none: raise spec.quotas.maxConnections or drop a "
                                  f"credential")

    @property
    def has_readers(self) -> bool:
        return any(credential.access is Access.READ_ONLY for credential in self.credentials)


def effective_quotas(spec: TenantStoreSpec, store_class: StoreClass) -> tuple[Quotas, list[str]]:
    """The tier's quotas overridden field by field by spec.quotas, overrides capped at the tier's ceilings."""
    policy = store_class.tiers[spec.tier]
    overrides, capped = spec.quota_overrides.capped_by(policy.max_quotas)
    return policy.quotas.overridden_by(overrides), [QUOTA_FIELD_NAMES[name] for name in capped]


def desired_store(spec: TenantStoreSpec, store_class: StoreClass, uid: str, tenant_store: str = "",
                  writes_allowed: bool = True) -> DesiredStore:
    policy = store_class.tiers[spec.tier]
    quotas, capped = effective_quotas(spec, store_class)
    return DesiredStore(
        tenant_id=spec.tenant_id,
        uid=uid,
        tenant_store=tenant_store,
        dimension=spec.dimension,
        metric=spec.metric,
        relational=policy.relational,
        vector=policy.vector,
        quotas=quotas,
        suspended=spec.suspended,
        shared_database=store_class.shared_database,
        shared_index_capacity=store_class.shared_index_capacity,
        shared_index_keep_empty=store_class.shared_index_keep_empty,
        writes_allowed=writes_allowed,
        quotas_capped=tuple(capped),
        retention=policy.retention.overridden_by(spec.retention),
        credentials=spec.credentials,
    )
