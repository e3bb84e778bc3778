"""verify: the periodic pass over a class's provisioned tenants (drift, Secrets, the isolation canary), what
its findings become in status, and the DataLost hold a repair leaves until a person acknowledges it."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from tenantstore import verify
from tenantstore.api import DATA_LOSS_ACKNOWLEDGED_ANNOTATION
from tenantstore.backends import Drift
from tenantstore.errors import BackendUnavailable, SessionEnded, StoreClassInvalid
from tenantstore.reconcile import DATA_LOSS

from .world import (World, annotated, condition, deleting, merge_patch, ready, reasons, stalled, store_class,
                    tenant_body)

STANDARD = store_class()


def drift_kinds(found: verify.ClassPass) -> dict[str, list[str]]:
    return {checked.body["metadata"]["name"]: [drift.kind for drift in checked.drifts] for checked in found.checked}


def with_usage(body: Mapping[str, Any], documents: int, storage_bytes: int = 0,
               relational_bytes: int | None = None) -> dict[str, Any]:
    measured = {} if relational_bytes is None else {"relationalStorageBytes": relational_bytes}
    return {**body, "status": {**body["status"], "usage": {**measured, "documents": documents,
                                                           "storageBytes": storage_bytes,
                                                           "connections": 0, "measuredAt": "then"}}}


# --- what a pass finds ---

async def test_tenants_as_made_have_nothing_wrong_and_the_pass_writes_nothing(world: World) -> None:
    tenants = [await world.provision(tenant_body("acme")), await world.provision(tenant_body("globex",
                                                                                             tier="enterprise"))]

    found = await world.verify(STANDARD, tenants)

    assert found.outage is None
    assert drift_kinds(found) == {"acme": [], "globex": []}
    assert world.relational.called("verify") == 1 and world.vector.called("verify") == 1  # batched per class
    assert world.relational.called("credentials_work") == 2  # each Secret's password logs in


@pytest.mark.parametrize("state", ["deleting", "migrating", "pending", "never provisioned"])
async def test_tenants_that_are_busy_or_not_made_are_not_checked(world: World, state: str) -> None:
    body = await world.provision(tenant_body())
    if state == "deleting":
        body = deleting(body)
    elif state == "migrating":
        body["status"]["migration"] = {"state": "Copying"}
    elif state == "pending":
        body["status"]["phase"] = "Provisioning"
    else:
        body = tenant_body(status={"phase": "Ready"})
    world.registry.forbid()

    found = await world.verify(STANDARD, [body])

    assert found.checked == [] and found.outage is None


async def test_a_dropped_schema_is_drift_and_lost_data_when_the_tenant_had_any(world: World) -> None:
    body = await world.provision(tenant_body())
    world.relational.drop_schema("tenant_acme")

    [checked] = (await world.verify(STANDARD, [with_usage(body, documents=0, storage_bytes=0)])).checked
    assert [drift.kind for drift in checked.drifts] == ["SchemaMissing"] and checked.data_lost == []

    # Its vectors live in the shared index's partition, not in the schema: documents alone lost nothing here.
    [checked] = (await world.verify(STANDARD, [with_usage(body, documents=5, relational_bytes=0)])).checked
    assert checked.data_lost == []

    [checked] = (await world.verify(STANDARD, [with_usage(body, documents=0, relational_bytes=8192)])).checked
    assert [drift.kind for drift in checked.data_lost] == ["SchemaMissing"]


async def test_a_dropped_database_always_counts_as_lost_data(world: World) -> None:
    body = await world.provision(tenant_body(tier="enterprise"))
    world.relational.drop_database("tenant_acme")

    [checked] = (await world.verify(STANDARD, [body])).checked

    assert [drift.kind for drift in checked.data_lost] == ["DatabaseMissing"]


async def test_a_dropped_namespace_and_a_missing_role_are_found(world: World) -> None:
    tenants = [await world.provision(tenant_body("acme")), await world.provision(tenant_body("globex"))]
    world.vector.drop_namespace("acme")
    world.relational.drop_role("tenant_globex")

    found = await world.verify(STANDARD, tenants)

    assert drift_kinds(found) == {"acme": ["NamespaceMissing"], "globex": ["RoleMissing"]}


async def test_a_role_password_changed_by_hand_puts_credentials_out_of_sync(world: World) -> None:
    body = await world.provision(tenant_body())
    world.relational.change_password("tenant_acme", "changed-by-hand")

    [checked] = (await world.verify(STANDARD, [body])).checked

    assert checked.drifts == (Drift("CredentialsOutOfSync", "the password in Secret acme-store does not log in as "
                                                            "tenant_acme"),)


async def test_a_deleted_secret_is_missing(world: World) -> None:
    body = await world.provision(tenant_body())
    world.secrets.remove("customers", "acme-store")

    [checked] = (await world.verify(STANDARD, [body])).checked

    assert checked.drifts == (Drift("SecretMissing", "Secret acme-store does not exist"),)


async def test_logins_are_not_tried_for_suspended_tenants_or_roles_that_are_adrift(world: World) -> None:
    tenants = [await world.provision(tenant_body("acme", suspended=True)), await world.provision(tenant_body("globex"))]
    world.relational.roles["tenant_globex"].connection_limit = 1
    world.relational.calls.clear()

    found = await world.verify(STANDARD, tenants)

    assert drift_kinds(found) == {"acme": [], "globex": ["ConnectionLimitChanged"]}
    assert world.relational.called("credentials_work") == 0


async def test_a_login_that_cannot_be_tried_is_not_drift(world: World) -> None:
    body = await world.provision(tenant_body())
    world.relational.roles["tenant_acme"].can_login = False  # the fake cannot tell then

    [checked] = (await world.verify(STANDARD, [body])).checked

    assert [drift.kind for drift in checked.drifts] == ["LoginChanged"]


@pytest.mark.parametrize("store, method", [("relational", "verify"), ("vector", "verify"),
                                           ("relational", "credentials_work")])
async def test_an_outage_is_reported_for_the_class_not_raised(world: World, store: str, method: str) -> None:
    body = await world.provision(tenant_body())
    {"relational": world.relational, "vector": world.vector}[store].fail(method, BackendUnavailable("no route"))

    found = await world.verify(STANDARD, [body])

    assert found.checked == []
    assert found.outage is not None and found.outage.reason == "BackendUnavailable"


async def test_a_refused_admin_login_is_tried_again_with_the_secret_read_again(world: World) -> None:
    """A rotation done in Postgres first: the pass that meets the old password tries once more (the registry
    reads the class's Secret again after a refusal) before it reports anything."""
    body = await world.provision(tenant_body())
    world.registry.server = dataclasses.replace(world.registry.server, login_refused=True)
    world.relational.fail("verify", StoreClassInvalid("the admin login is refused"), times=1)
    world.registry.calls.clear()

    found = await world.verify(STANDARD, [body])

    assert found.outage is None and [c.body["metadata"]["name"] for c in found.checked] == ["acme"]
    assert world.registry.called("for_class") == 2


async def test_a_refusal_that_lasts_is_the_class_s_alone(world: World) -> None:
    body = await world.provision(tenant_body())
    world.registry.server = dataclasses.replace(world.registry.server, login_refused=True)
    world.relational.fail("verify", StoreClassInvalid("the admin login is refused"))

    found = await world.verify(STANDARD, [body])

    assert found.outage is not None and found.admin_login_refused and found.checked == []


async def test_a_session_the_server_ended_is_tried_again_before_anything_is_reported(world: World) -> None:
    """pg_terminate_backend or a failover mid-pass: the server answered, so the pass tries once more on fresh
    connections instead of telling every tenant of an outage."""
    body = await world.provision(tenant_body())
    world.registry.calls.clear()
    world.relational.fail("verify", SessionEnded("Postgres ended the operator's session"), times=1)

    found = await world.verify(STANDARD, [body])

    assert found.outage is None and [c.body["metadata"]["name"] for c in found.checked] == ["acme"]
    assert world.registry.called("for_class") == 2


async def test_an_outage_is_not_tried_again_within_the_pass(world: World) -> None:
    body = await world.provision(tenant_body())
    world.registry.calls.clear()
    world.relational.fail("verify", BackendUnavailable("no route"), times=1)

    found = await world.verify(STANDARD, [body])

    assert found.outage is not None and not found.admin_login_refused
    assert world.registry.called("for_class") == 1


# --- the isolation canary ---

async def test_the_canary_looks_through_a_different_tenant_of_each_shared_index_each_pass(world: World) -> None:
    tenants = [await world.provision(tenant_body(name)) for name in ("globex", "acme", "initech")]
    world.vector.isolation_problems["globex"] = "tenant_globex sees 2 rows of other namespaces"
    world.vector.calls.clear()

    seen = [{c.body["metadata"]["name"]: c.isolation for c in (await world.verify(STANDARD, tenants, turn)).checked
             if c.isolation} for turn in (0, 1, 2, 3)]

    # Members in tenantId order (acme, globex, initech); the turn picks one.
    assert seen == [{}, {"globex": "tenant_globex sees 2 rows of other namespaces"}, {}, {}]
    assert world.vector.called("probe_isolation") == 4  # one per shared index per pass


async def test_no_canary_turn_no_probe(world: World) -> None:
    body = await world.provision(tenant_body())
    world.vector.calls.clear()

    await world.verify(STANDARD, [body], canary_turn=None)

    assert world.vector.called("probe_isolation") == 0


async def test_a_key_the_class_hands_every_tenant_is_the_classs_finding_not_a_tenants(world: World) -> None:
    tenants = [await world.provision(tenant_body(name)) for name in ("globex", "acme")]
    world.vector.handed_to_every_tenant = "tenant Secrets carry the project-wide key"

    found = await world.verify(STANDARD, tenants, canary_turn=0)

    assert found.shared_credential == "tenant Secrets carry the project-wide key"
    assert [checked.isolation for checked in found.checked] == [None, None]
    world.vector.handed_to_every_tenant = None
    assert (await world.verify(STANDARD, tenants, canary_turn=0)).shared_credential is None


async def test_a_canary_that_cannot_run_says_nothing_but_an_outage_is_an_outage(world: World) -> None:
    body = await world.provision(tenant_body())
    world.vector.fail("probe_isolation", RuntimeError("permission denied for schema tenantstore_vectors"), times=1)

    found = await world.verify(STANDARD, [body], canary_turn=0)
    assert found.outage is None and found.checked[0].isolation is None

    world.vector.fail("probe_isolation", BackendUnavailable("connection reset"))
    found = await world.verify(STANDARD, [body], canary_turn=0)
    assert found.outage is not None and found.checked == []


# --- what findings become in status ---

async def test_drift_under_report_is_ready_false_with_the_first_drifts_reason_and_the_phase_kept(
        world: World) -> None:
    body = await world.provision(tenant_body())
    drifts = [Drift("SchemaMissing", "schema tenant_acme does not exist", holds_data=True),
              Drift("RoleMissing", "Postgres role tenant_acme does not exist")]

    changes = verify.drift_status(body, drifts)

    assert list(changes) == ["conditions"]
    assert ready(changes) == ("False", "SchemaMissing")
    assert condition(changes, "Ready")["message"] == ("schema tenant_acme does not exist; Postgres role tenant_acme "
                                                      "does not exist (driftPolicy Report: repair it, or set Repair)")


async def test_broken_isolation_is_ready_false_and_stalled(world: World) -> None:
    body = await world.provision(tenant_body())

    changes = verify.isolation_status(body, "tenant_acme sees 2 rows of other namespaces")

    assert list(changes) == ["conditions"]
    assert ready(changes) == ("False", "IsolationBroken") and stalled(changes) == ("True", "IsolationBroken")


@pytest.mark.parametrize("reason, recovers", [("SchemaMissing", True), ("CredentialsOutOfSync", True),
                                              ("BackendUnavailable", True), ("IsolationBroken", True),
                                              ("Provisioned", False), ("DataLost", False)])
async def test_a_tenant_found_fine_again_is_reconciled_back_only_when_its_status_says_otherwise(
        world: World, reason: str, recovers: bool) -> None:
    body = await world.provision(tenant_body())
    ready_condition = condition(body["status"], "Ready")
    ready_condition.update(status="True" if reason == "Provisioned" else "False", reason=reason)
    body["status"]["conditions"] = [ready_condition]

    assert verify.needs_recovery(verify.Checked(body=body)) is recovers


# --- a repair that re-made a store with data in it: DataLost until acknowledged ---

async def lose_the_schema(world: World) -> dict[str, Any]:
    """Provisioned with data, schema dropped by hand, found by a pass and repaired: the body afterwards."""
    body = with_usage(await world.provision(tenant_body()), documents=5, storage_bytes=4096)
    world.relational.drop_schema("tenant_acme")
    [checked] = (await world.verify(STANDARD, [body])).checked
    changes = verify.data_loss_status(body, checked.data_lost)
    body = {**body, "status": merge_patch(body["status"], changes)}
    outcome, repaired = await world.converge(body)
    assert reasons(outcome) == ["SchemaCreated"]
    return repaired


async def test_a_store_re_made_empty_holds_ready_false_until_the_loss_is_acknowledged(world: World) -> None:
    body = await lose_the_schema(world)

    assert body["status"]["phase"] == "Ready"
    assert ready(body["status"]) == ("False", "DataLost")
    lost = condition(body["status"], "DataLost")
    assert (lost["status"], lost["reason"]) == ("True", "SchemaMissing")
    assert lost["message"].startswith("schema tenant_acme does not exist: the data went with it (last measured 5 "
                                      "documents, 4096 bytes) and what is re-made is empty")
    assert lost["message"].endswith(f"kubectl annotate tenantstore acme {DATA_LOSS_ACKNOWLEDGED_ANNOTATION}="
                                    f"{lost['lastTransitionTime']} --overwrite")
    assert condition(body["status"], "Ready")["message"] == lost["message"]
    assert world.relational.schemas == {"tenant_acme": "tenant_acme"}

    again = await world.reconcile(body)
    assert ready(again.status) == ("False", "DataLost") and again.events == []


async def test_an_acknowledgement_of_another_time_does_not_release_the_hold(world: World) -> None:
    body = annotated(await lose_the_schema(world), DATA_LOSS_ACKNOWLEDGED_ANNOTATION, "2020-01-01T00:00:00Z")

    assert not DATA_LOSS.acknowledged(body)
    assert not verify.needs_recovery(verify.Checked(body=body))
    outcome = await world.reconcile(body)

    assert ready(outcome.status) == ("False", "DataLost")


async def test_acknowledging_the_loss_makes_the_tenant_ready_and_closes_the_condition(world: World) -> None:
    body = await lose_the_schema(world)
    lost_at = condition(body["status"], "DataLost")["lastTransitionTime"]
    body = annotated(body, DATA_LOSS_ACKNOWLEDGED_ANNOTATION, lost_at)

    assert verify.needs_recovery(verify.Checked(body=body))  # the next pass reconciles it
    outcome, body = await world.converge(body)

    assert ready(outcome.status) == ("True", "Provisioned") and outcome.status["phase"] == "Ready"
    closed = condition(outcome.status, "DataLost")
    assert (closed["status"], closed["reason"]) == ("False", "Acknowledged")
    assert not verify.needs_recovery(verify.Checked(body=body))
    assert (await world.reconcile(body)).status_patch(body["status"]) == {}


async def test_a_store_dropped_while_it_was_empty_is_repaired_without_a_hold(world: World) -> None:
    body = await world.provision(tenant_body())
    world.relational.drop_schema("tenant_acme")
    [checked] = (await world.verify(STANDARD, [body])).checked
    assert checked.data_lost == []

    outcome = await world.reconcile(body)

    assert reasons(outcome) == ["SchemaCreated"] and ready(outcome.status) == ("True", "Provisioned")
