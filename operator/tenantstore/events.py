"""Kubernetes Events from the steps a reconcile or teardown took, each also a row of the audit trail.

Routine steps are folded into one Event per reconcile: provisioning a tenant takes about seven steps, and an
Event each was half of the operator's API writes (bench/README.md). Steps a user acts on (quotas, tier
moves, adoption, a reset password, a shared index created or dropped) keep an Event of their own.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import kopf

from tenantstore.api import Reason
from tenantstore.backends import NAMESPACE_CREATED, Step
from tenantstore.redaction import redact

if TYPE_CHECKING:
    from tenantstore.audit import AuditTrail

PROVISIONED = Reason.PROVISIONED
TEARDOWN_VERIFIED = "TeardownVerified"
# What creating or tearing down a tenant does every time; folded into a Provisioned or TeardownVerified Event.
ROUTINE_PROVISIONING = frozenset({
    "RoleCreated", "SchemaCreated", "DatabaseCreated", NAMESPACE_CREATED, "NamespaceIsolated",
    "VectorAccessGranted", "DedicatedIndexCreated", "DeletionProtectionEnabled", "IsolationVerified",
    "SecretWritten", "CredentialSecretWritten", "ReaderRoleCreated", "ReadAccessGranted", "VectorReadAccessGranted"})
ROUTINE_TEARDOWN = frozenset({
    "SessionsTerminated", "NamespaceDropped", "NamespaceDeleted", "DedicatedIndexDropped", "DedicatedIndexDeleted",
    "DeletionProtectionDisabled", "SchemaDropped", "DatabaseDropped", "RoleDropped", "SecretDeleted"})
# Reasons posted as Warnings when they come from the usage measurement.
QUOTA_WARNINGS = frozenset({Reason.WRITES_BLOCKED, Reason.LIMIT_REACHED})


def summarize(steps: Sequence[Step]) -> list[Step]:
    """The Events for these steps, in order: routine steps folded into one, the others kept apart."""
    provisioning = [step for step in steps if step.reason in ROUTINE_PROVISIONING]
    verified = next((step for step in steps if step.reason == TEARDOWN_VERIFIED), None)
    teardown = [step for step in steps if step.reason in ROUTINE_TEARDOWN] if verified else []
    events: list[Step] = []
    if len(provisioning) > 1:
        events.append(Step(PROVISIONED, "; ".join(step.message for step in provisioning)))
    for step in steps:
        if (len(provisioning) > 1 and step in provisioning) or step in teardown:
            continue
        if step is verified and teardown:
            step = Step(TEARDOWN_VERIFIED, f"{'; '.join(s.message for s in teardown)}; {step.message}")
        events.append(step)
    return events


_trail: AuditTrail | None = None


def audit_to(trail: AuditTrail | None) -> None:
    """Where the Events on TenantStores are also recorded (the operator's trail; None in unit tests)."""
    global _trail  # noqa: PLW0603 (one per process, like Kopf's own event queue)
    _trail = trail


def post(body: Mapping[str, Any], steps: Sequence[Step], warning: bool = False, actor: str | None = None,
         trace_id: str | None = None) -> None:
    """Post through Kopf's background poster (it never blocks the handler).

    `actor` and `trace_id` for the audit trail: by default the spec's last field manager and the current span."""
    for step in summarize(steps):
        (warn if warning and step.reason in QUOTA_WARNINGS else info)(body, reason=step.reason, message=step.message,
                                                                      actor=actor, trace_id=trace_id)


# Every Event the operator posts goes through these two: messages often quote a backend's error.
def info(body: Mapping[str, Any], reason: str, message: str, actor: str | None = None,
         trace_id: str | None = None) -> None:
    kopf.info(body, reason=reason, message=redact(message))
    _audit(body, reason, message, actor, trace_id)


def warn(body: Mapping[str, Any], reason: str, message: str, actor: str | None = None,
         trace_id: str | None = None) -> None:
    kopf.warn(body, reason=reason, message=redact(message))
    _audit(body, reason, message, actor, trace_id)


def _audit(body: Mapping[str, Any], reason: str, message: str, actor: str | None, trace_id: str | None) -> None:
    if _trail is not None and body.get("kind") == "TenantStore":
        _trail.record(body, reason, message, actor=actor, trace_id=trace_id)
