"""The API's vocabulary (tenancy.dev/v1alpha1): every name users see and tools read, in one place.

Kinds, finalizer, labels and annotations; condition types; the reasons conditions, Events and metrics carry;
phases. Everything else imports these instead of spelling them out, so a name is changed (and documented)
once. StrEnum members equal their strings, so a status read back from the API compares with them directly.
"""
from __future__ import annotations

import enum

GROUP = "tenancy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = "tenancy.dev/cleanup"

# Labels and annotations.
DEFAULT_CLASS_ANNOTATION = "storeclass.tenancy.dev/is-default-class"
TENANT_ID_LABEL = "tenancy.dev/tenant-id"
# On the Secret of a scoped credential: the credential's name (spec.credentials[].name).
CREDENTIAL_LABEL = "tenancy.dev/credential"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "tenantstore-operator"
# On a tenant Secret: clients of a backend that cannot refuse writes (Pinecone) honour it while a quota blocks.
WRITES_BLOCKED_ANNOTATION = "tenancy.dev/writes-blocked"
# The same in the Secret's data ("true" while blocked, absent otherwise): a mounted Secret shows no annotations.
WRITES_BLOCKED_KEY = "writesBlocked"
# On a tenant Secret: the digest of the data the operator last wrote; other data means a hand edit.
DATA_DIGEST_ANNOTATION = "tenancy.dev/data-digest"
# On a TenantStore: set to the DataLost condition's lastTransitionTime to acknowledge a data loss.
DATA_LOSS_ACKNOWLEDGED_ANNOTATION = "tenancy.dev/data-loss-acknowledged"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    SUSPENDED = "Suspended"
    MIGRATING = "Migrating"
    DELETING = "Deleting"
    FAILED = "Failed"


class ExportPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"


class ConditionType(enum.StrEnum):
    READY = "Ready"
    STALLED = "Stalled"  # kstatus: a failure no retry can end
    QUOTA_EXCEEDED = "QuotaExceeded"
    OVER_BUDGET = "OverBudget"
    QUOTAS_CAPPED = "QuotasCapped"
    MIGRATING = "Migrating"
    DATA_LOST = "DataLost"
    ISOLATION_BROKEN = "IsolationBroken"  # TenantStore (via Ready's reason) and StoreClass
    SHARED_INDEXES_NEAR_CAPACITY = "SharedIndexesNearCapacity"  # StoreClass
    VECTOR_QUOTA_EXCEEDED = "VectorQuotaExceeded"  # StoreClass
    GLOBAL_STORE_READY = "GlobalStoreReady"  # StoreClass with spec.globalStore


class Reason(enum.StrEnum):
    """Condition reasons (the Ready reasons are also Events' reasons and the metrics' `reason` label)."""

    # Ready=True
    PROVISIONED = "Provisioned"
    BACKENDS_REACHABLE = "BackendsReachable"  # StoreClass
    # Ready=False, before anything is made or when it cannot be
    INVALID_SPEC = "InvalidSpec"
    STORE_CLASS_NOT_FOUND = "StoreClassNotFound"
    STORE_CLASS_INVALID = "StoreClassInvalid"
    STORE_CLASS_NOT_READY = "StoreClassNotReady"
    GLOBAL_STORE_NOT_READY = "GlobalStoreNotReady"  # the class's global index is not made yet
    STORE_CLASS_NOT_ALLOWED = "StoreClassNotAllowed"
    TENANT_ID_CONFLICT = "TenantIdConflict"
    SECRET_CONFLICT = "SecretConflict"
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    AUDIT_TRAIL_UNAVAILABLE = "AuditTrailUnavailable"
    VECTOR_QUOTA_EXCEEDED = "VectorQuotaExceeded"
    SUSPENDED = "Suspended"
    RELATIONAL_MIGRATION_UNSUPPORTED = "RelationalMigrationUnsupported"
    MIGRATION_VERIFICATION_FAILED = "MigrationVerificationFailed"
    STORE_CLASS_MOVE_UNSUPPORTED = "StoreClassMoveUnsupported"
    MOVE_FREEZE_EXCEEDED = "MoveFreezeExceeded"
    ISOLATION_BROKEN = "IsolationBroken"
    OBJECT_REPLACED = "ObjectReplaced"
    DATA_LOST = "DataLost"
    RESTORE_FAILED = "RestoreFailed"
    # Ready=False, found by the verification pass (drift)
    ROLE_MISSING = "RoleMissing"
    CREDENTIAL_MISSING = "CredentialMissing"
    CREDENTIAL_CHANGED = "CredentialChanged"
    LOGIN_CHANGED = "LoginChanged"
    CONNECTION_LIMIT_CHANGED = "ConnectionLimitChanged"
    SCHEMA_MISSING = "SchemaMissing"
    DATABASE_MISSING = "DatabaseMissing"
    DATABASE_SETTINGS_CHANGED = "DatabaseSettingsChanged"
    OWNER_CHANGED = "OwnerChanged"
    GRANT_MISSING = "GrantMissing"
    NAMESPACE_MISSING = "NamespaceMissing"
    POLICY_MISSING = "PolicyMissing"
    INDEX_MISSING = "IndexMissing"
    SECRET_MISSING = "SecretMissing"
    CREDENTIALS_OUT_OF_SYNC = "CredentialsOutOfSync"
    # Other conditions
    WITHIN_LIMITS = "WithinLimits"
    WRITES_BLOCKED = "WritesBlocked"
    # OverBudget
    BUDGET_BLOCKED = "BudgetBlocked"
    BUDGET_REACHED = "BudgetReached"
    WITHIN_BUDGET = "WithinBudget"
    LIMIT_REACHED = "LimitReached"
    WITHIN_CEILINGS = "WithinCeilings"
    ABOVE_TIER_CEILING = "AboveTierCeiling"
    COPYING = "Copying"
    DONE = "Done"
    ACKNOWLEDGED = "Acknowledged"
    ISOLATED = "Isolated"
    API_KEY_EXPOSED = "ApiKeyExposed"
    PROGRESSING = "Progressing"
    CONVERGED = "Converged"
    # Events of their own
    DRIFT_DETECTED = "DriftDetected"
    DRIFT_REPAIRED = "DriftRepaired"
    RESTORED = "Restored"
    VECTORS_EXPIRED = "VectorsExpired"
    FINAL_EXPORT_PENDING = "FinalExportPending"  # a deletionPolicy Export tenant waits for its final export
    # TenantStoreExport (Ready=True when written and verified)
    EXPORT_COMPLETED = "ExportCompleted"
    EXPORTING = "Exporting"
    EXPORT_FAILED = "ExportFailed"
    DESTINATION_REFUSED = "DestinationRefused"
    CLIENT_TOOL_FAILED = "ClientToolFailed"
    TENANT_STORE_NOT_FOUND = "TenantStoreNotFound"
    TENANT_STORE_NOT_READY = "TenantStoreNotReady"


# What the verification pass may find; each is the Ready reason while it lasts.
DRIFT_REASONS = frozenset({
    Reason.ROLE_MISSING, Reason.LOGIN_CHANGED, Reason.CONNECTION_LIMIT_CHANGED, Reason.SCHEMA_MISSING,
    Reason.DATABASE_MISSING, Reason.DATABASE_SETTINGS_CHANGED, Reason.OWNER_CHANGED, Reason.GRANT_MISSING,
    Reason.NAMESPACE_MISSING, Reason.POLICY_MISSING, Reason.INDEX_MISSING, Reason.SECRET_MISSING,
    Reason.CREDENTIALS_OUT_OF_SYNC, Reason.OBJECT_REPLACED, Reason.CREDENTIAL_MISSING, Reason.CREDENTIAL_CHANGED})

# Failures no retry can end: they wait for a person (a spec, a Secret, a class or a namespace to change).
# kstatus (Flux's `wait`, kpt) reads Stalled=True as Failed; every other failure stays InProgress.
TERMINAL_REASONS = frozenset({
    Reason.INVALID_SPEC, Reason.STORE_CLASS_INVALID, Reason.STORE_CLASS_NOT_ALLOWED, Reason.TENANT_ID_CONFLICT,
    Reason.SECRET_CONFLICT, Reason.RELATIONAL_MIGRATION_UNSUPPORTED, Reason.OBJECT_REPLACED,
    Reason.STORE_CLASS_MOVE_UNSUPPORTED, Reason.MOVE_FREEZE_EXCEEDED,
    Reason.ISOLATION_BROKEN, Reason.TENANT_STORE_NOT_FOUND})
