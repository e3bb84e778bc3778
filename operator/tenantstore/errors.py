"""Typed errors; each carries the reason that ends up in the TenantStore's Ready condition."""
from __future__ import annotations

from tenantstore.api import Reason


class ReconcileError(Exception):
    """A reason the tenant cannot converge now. `retry_after` None means: wait for a spec change."""

    reason = "ReconcileFailed"
    retry_after: float | None = 30.0

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class StoreClassNotFound(ReconcileError):
    reason = Reason.STORE_CLASS_NOT_FOUND
    retry_after = 5.0


class StoreClassInvalid(ReconcileError):
    reason = Reason.STORE_CLASS_INVALID
    retry_after = 15.0


class GlobalStoreNotReady(ReconcileError):
    """The class's global index for the tenant's shape is not made yet: the Secret would lack its coordinates."""

    reason = Reason.GLOBAL_STORE_NOT_READY
    retry_after = 5.0


class StoreClassNotReady(ReconcileError):
    """The class's Postgres or vector service misses a prerequisite (its Ready condition names it); nothing is
    made for a new tenant until it is fixed."""

    reason = Reason.STORE_CLASS_NOT_READY
    retry_after = 30.0


class StoreClassNotAllowed(ReconcileError):
    """The class's spec.allowedNamespaces does not admit the TenantStore's namespace; nothing is made for it.

    Retried on a schedule so that labelling the namespace (or changing the class) takes effect by itself.
    """

    reason = Reason.STORE_CLASS_NOT_ALLOWED
    retry_after = 30.0


class TenantIdConflict(ReconcileError):
    reason = Reason.TENANT_ID_CONFLICT
    retry_after = 30.0


class SecretConflict(ReconcileError):
    reason = Reason.SECRET_CONFLICT
    retry_after = 30.0


class BackendUnavailable(ReconcileError):
    reason = Reason.BACKEND_UNAVAILABLE
    retry_after = 5.0


class SessionEnded(BackendUnavailable):
    """The server ended an operator session (pg_terminate_backend, a failover): it answered, so it may well
    take the next one."""


class AuditTrailUnavailable(ReconcileError):
    """The class's audit trail cannot be written (its rows stay queued); a teardown waits for its receipt."""

    reason = Reason.AUDIT_TRAIL_UNAVAILABLE
    retry_after = 10.0


class VectorQuotaExceeded(ReconcileError):
    """The vector service refused to create an index or a namespace: a plan limit is reached."""

    reason = Reason.VECTOR_QUOTA_EXCEEDED
    retry_after = 30.0


class IsolationBroken(ReconcileError):
    """The tenant could see rows of another namespace: never report such a tenant Ready."""

    reason = Reason.ISOLATION_BROKEN
    retry_after = 60.0


class RelationalMigrationUnsupported(ReconcileError):
    """A tier change the operator cannot carry out; the tenant stays as it is until the spec changes."""

    reason = Reason.RELATIONAL_MIGRATION_UNSUPPORTED
    retry_after = None


class StoreClassMoveUnsupported(ReconcileError):
    """A change of spec.storeClassName the operator cannot carry out (the tenant stays where it is)."""

    reason = Reason.STORE_CLASS_MOVE_UNSUPPORTED
    retry_after = None


class MoveFreezeExceeded(ReconcileError):
    """A move stopped because it would have refused the tenant's writes longer than its class allows."""

    reason = Reason.MOVE_FREEZE_EXCEEDED
    retry_after = None


class ObjectReplaced(ReconcileError):
    """Something the operator made was replaced by an object it did not make; the operator will not touch it."""

    reason = Reason.OBJECT_REPLACED
    retry_after = 60.0


class ExportFailed(ReconcileError):
    reason = Reason.EXPORT_FAILED
    retry_after = 30.0


class RestoreFailed(ReconcileError):
    reason = Reason.RESTORE_FAILED
    retry_after = 60.0


class RestoreImpossible(RestoreFailed):
    """Retrying cannot help (the export does not fit the tenant): a spec change must."""

    retry_after = None


class DestinationRefused(ReconcileError):
    """An export destination answered and said no (credentials, bucket, permissions): a person must fix it."""

    reason = Reason.DESTINATION_REFUSED
    retry_after = 60.0


class ClientToolFailed(ReconcileError):
    """pg_dump or psql is missing or exited non-zero."""

    reason = Reason.CLIENT_TOOL_FAILED
    retry_after = 30.0
