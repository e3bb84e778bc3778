"""What goes into an audit row: who changed the spec, which Events are recorded, how the trail prints."""
from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest

from tenantstore import audit, events
from tenantstore.backends import Step
from tenantstore.backends.audit_table import Entry
from tenantstore.models import DEFAULT_AUDIT_RETENTION, InvalidResource, StoreClass


def managed(manager: str, time: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"manager": manager, "operation": "Update", "time": time, "fieldsType": "FieldsV1", "fieldsV1": fields}


def test_the_actor_is_the_manager_of_the_latest_spec_change() -> None:
    body = {"metadata": {"managedFields": [
        managed("kubectl-client-side-apply", "2026-11-30T10:00:00Z", {"f:spec": {"f:tier": {}}}),
        managed("argocd-controller", "2026-11-30T11:00:00Z", {"f:spec": {"f:suspended": {}}}),
        managed("kopf", "2026-11-30T12:00:00Z", {"f:status": {"f:phase": {}}}),  # status writes are not the spec's
    ]}}
    assert audit.spec_author(body) == "argocd-controller"
    assert audit.spec_author({"metadata": {}}) == ""


class RecordingTrail:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str | None]] = []

    def record(self, body: Any, action: str, message: str, actor: str | None = None,
               trace_id: str | None = None) -> None:
        self.rows.append((body["kind"], action, actor))


@pytest.fixture
def trail(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingTrail]:
    recording = RecordingTrail()
    monkeypatch.setattr(events.kopf, "info", lambda *args, **kwargs: None)
    monkeypatch.setattr(events.kopf, "warn", lambda *args, **kwargs: None)
    events.audit_to(recording)  # type: ignore[arg-type]
    yield recording
    events.audit_to(None)


def test_events_on_tenantstores_are_audited_and_others_are_not(trail: RecordingTrail) -> None:
    tenant = {"kind": "TenantStore", "metadata": {}, "spec": {"tenantId": "acme"}}
    events.post(tenant, [Step("RoleCreated", "a"), Step("SchemaCreated", "b"), Step("LoginChanged", "c")])
    events.warn(tenant, reason="DriftDetected", message="d", actor=audit.OPERATOR_ACTOR)
    events.info({"kind": "StoreClass", "metadata": {}}, reason="SharedIndexCreated", message="e")
    # Routine steps fold into one Provisioned row, as into one Event.
    assert trail.rows == [("TenantStore", "Provisioned", None), ("TenantStore", "LoginChanged", None),
                          ("TenantStore", "DriftDetected", audit.OPERATOR_ACTOR)]


def test_the_trail_prints_as_a_table() -> None:
    at = datetime.datetime(2026, 11, 30, 10, 0, 2, tzinfo=datetime.UTC)
    table = audit.format_table([Entry("acme", "u", "customers", "acme", "Provisioned", "made", "kubectl", "", at),
                                Entry("acme", "u", "customers", "acme", "TeardownVerified", "gone", "", "", at)])
    header, first, last = table.splitlines()
    assert header.split() == ["TIME", "ACTION", "ACTOR", "TENANTSTORE", "MESSAGE"]
    assert first.split() == ["2026-11-30T10:00:02Z", "Provisioned", "kubectl", "customers/acme", "made"]
    assert last.split()[2] == "-"


def test_the_audit_retention_defaults_to_seven_years_and_is_validated() -> None:
    body = {"metadata": {"name": "c"}, "spec": {"postgres": {"adminSecretRef": {"name": "a", "namespace": "b"}}}}
    assert StoreClass.from_body(body).audit_retention == DEFAULT_AUDIT_RETENTION == datetime.timedelta(days=2557)
    assert StoreClass.from_body({**body, "spec": {**body["spec"], "audit": {"retention": "90d"}}}).audit_retention \
        == datetime.timedelta(days=90)
    with pytest.raises(InvalidResource):
        StoreClass.from_body({**body, "spec": {**body["spec"], "audit": {"retention": "seven years"}}})
