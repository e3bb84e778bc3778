"""Kubernetes Events from the steps a reconcile or teardown took.

Routine steps are folded into one Event per reconcile: provisioning a tenant takes about seven steps, and an
Event each was half of the operator's API writes (bench/README.md). Steps a user acts on (quotas, tier
moves, adoption, a reset password, a shared index created or dropped) keep an Event of their own.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from tenantstore.api import Reason
from tenantstore.backends import NAMESPACE_CREATED, Step
from tenantstore.redaction import redact

PROVISIONED = Reason.PROVISIONED
TEARDOWN_VERIFIED = "TeardownVerified"
# What creating or tearing down a tenant does every time; folded into a Provisioned or TeardownVerified Event.
ROUTINE_PROVISIONING = frozenset({
    "RoleCreated", "SchemaCreated", "DatabaseCreated", NAMESPACE_CREATED, "NamespaceIsolated",
    "VectorAccessGranted", "DedicatedIndexCreated", "DeletionProtectionEnabled", "IsolationVerified",
    "SecretWritten"})
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


def post(body: Mapping[str, Any], steps: Sequence[Step], warning: bool = False) -> None:
    """Post through Kopf's background poster (it never blocks the handler)."""
    for step in summarize(steps):
        (warn if warning and step.reason in QUOTA_WARNINGS else info)(body, reason=step.reason, message=step.message)


# Every Event the operator posts goes through these two: messages often quote a backend's error.
def info(body: Mapping[str, Any], reason: str, message: str) -> None:
    kopf.info(body, reason=reason, message=redact(message))


def warn(body: Mapping[str, Any], reason: str, message: str) -> None:
    kopf.warn(body, reason=reason, message=redact(message))
