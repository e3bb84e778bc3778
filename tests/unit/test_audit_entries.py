"""What goes into an audit row: who changed the spec, which Events are recorded, how the trail prints."""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import types
from collections.abc import AsyncIterator, Iterator
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


class SlowServer:
    """A class's Postgres whose n-th connection is handed out only once the test opens gate n."""

    admin_uri, shared_database = "postgresql://admin@db/tenants", "tenants"

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []
        self.asked = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        gate = asyncio.Event()
        async with self.asked:
            self.gates.append(gate)
            self.asked.notify_all()
        await gate.wait()
        yield types.SimpleNamespace(transaction=contextlib.nullcontext)

    async def until_asked(self, connections: int) -> None:
        async with self.asked:
            await asyncio.wait_for(self.asked.wait_for(lambda: len(self.gates) >= connections), timeout=5)


def test_a_flush_whose_rows_another_flush_wrote_returns_without_a_write_of_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Teardowns finishing one after another while the pool is busy: each waits for its own receipt only."""
    server, written = SlowServer(), []

    async def append(conn: Any, entries: list[Entry]) -> None:
        written.append([entry.name for entry in entries])

    async def nothing(conn: Any) -> None:
        return None

    monkeypatch.setattr(audit.audit_table, "append", append)
    monkeypatch.setattr(audit.audit_table, "ensure", nothing)

    def tenant(n: int) -> dict[str, Any]:
        return {"metadata": {"name": f"t{n}", "namespace": "customers", "uid": f"u{n}"},
                "spec": {"tenantId": f"t{n}"}, "status": {"storeClassName": "standard"}}

    async def scenario() -> None:
        registry = types.SimpleNamespace(for_class=lambda store_class: asyncio.sleep(0, types.SimpleNamespace(
            server=server)))
        trail = audit.AuditTrail(registry)  # type: ignore[arg-type]
        trail.know(StoreClass.from_body({"metadata": {"name": "standard"}, "spec": {
            "postgres": {"adminSecretRef": {"name": "a", "namespace": "b"}}}}))
        trail._task = asyncio.get_running_loop().create_future()  # no background writer: the flushes below only

        def teardown_ends(n: int) -> asyncio.Task[None]:
            trail.record(tenant(n), "Deleted", "gone")
            return asyncio.create_task(trail.flush(["standard"]))

        first = teardown_ends(1)
        await server.until_asked(1)  # the first flush holds the turn, waiting for a connection
        second, third = teardown_ends(2), teardown_ends(3)
        server.gates[0].set()
        await server.until_asked(2)  # the second writes rows 2 and 3 at once, waiting for a connection
        fourth = teardown_ends(4)
        server.gates[1].set()
        await server.until_asked(3)  # the next connection asked for is row 4's
        assert first.done() and second.done() and third.done()  # row 3 was written with row 2
        assert written == [["t1"], ["t2", "t3"]] and not fourth.done()
        server.gates[2].set()
        await asyncio.wait_for(fourth, timeout=5)
        assert written == [["t1"], ["t2", "t3"], ["t4"]]
        trail._task.cancel()

    asyncio.run(scenario())
