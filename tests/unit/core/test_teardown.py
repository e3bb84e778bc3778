"""teardown_tenant, the finalizer's work: Delete removes and verifies, Retain releases, and a TenantStore
that never reached a backend (or lost its tenantId) touches nothing."""
from __future__ import annotations

import pytest

from tenantstore.errors import BackendUnavailable, StoreClassInvalid, StoreClassNotFound, VectorQuotaExceeded
from tenantstore.models import InvalidResource

from .fakes import Claim, FakeSecret
from .world import CUSTOMERS_ONLY, World, condition, ready, reasons, spec_changed, store_class, tenant_body


def nothing_of_acme_remains(world: World) -> None:
    assert "tenant_acme" not in world.relational.roles and "tenantstore_hold_acme" not in world.relational.roles
    assert world.relational.schemas == {} and world.relational.databases == {}
    assert world.vector.index_of("acme") is None and world.vector.dedicated == {} and world.vector.records == {}
    assert world.secrets.get("customers", "acme-store") is None


# --- deletionPolicy Delete ---

async def test_delete_removes_everything_in_reverse_order_and_verifies_it(world: World) -> None:
    body = await world.provision(tenant_body())

    outcome = await world.teardown(body)

    assert reasons(outcome) == ["NamespaceDropped", "SessionsTerminated", "SchemaDropped", "RoleDropped",
                                "SecretDeleted", "TeardownVerified"]
    assert outcome.events[-1].message == "nothing of tenant acme remains: role, schema, vectors and Secret are gone"
    assert outcome.status == {}
    nothing_of_acme_remains(world)
    assert world.relational.called("residue") == 1 and world.vector.called("residue") == 1


async def test_delete_of_an_enterprise_tenant_drops_its_database_and_its_index(world: World) -> None:
    body = await world.provision(tenant_body(tier="enterprise"))

    outcome = await world.teardown(body)

    assert reasons(outcome) == ["DedicatedIndexDropped", "SessionsTerminated", "DatabaseDropped", "RoleDropped",
                                "SecretDeleted", "TeardownVerified"]
    nothing_of_acme_remains(world)


async def test_delete_removes_the_holding_role_of_a_blocked_tenant(world: World) -> None:
    body = await world.provision(tenant_body(quotas={"maxDocuments": 1}))
    body["status"]["usage"] = {"documents": 1, "storageBytes": 0, "connections": 0, "measuredAt": "then"}
    _, body = await world.converge(body)
    assert "tenantstore_hold_acme" in world.relational.roles

    await world.teardown(body)

    nothing_of_acme_remains(world)


@pytest.mark.parametrize("keep_empty, kept", [(True, True), (False, False)])
async def test_the_last_tenant_leaving_a_shared_index_drops_it_only_if_the_class_says_so(
        world: World, keep_empty: bool, kept: bool) -> None:
    world.classes["standard"] = store_class(vector={"backend": "pgvector", "sharedIndex": {"keepEmpty": keep_empty}})
    body = await world.provision(tenant_body())

    outcome = await world.teardown(body)

    assert ("SharedIndexDropped" in reasons(outcome)) is not kept
    assert ("shared-384-cosine-1" in world.vector.indexes) is kept


async def test_a_second_teardown_finds_nothing_to_remove_and_verifies_again(world: World) -> None:
    body = await world.provision(tenant_body())
    await world.teardown(body)

    outcome = await world.teardown(body)

    assert reasons(outcome) == ["TeardownVerified"]


async def test_what_is_left_behind_keeps_the_finalizer_and_is_named(world: World) -> None:
    body = await world.provision(tenant_body())
    world.relational.stuck.add("tenant_acme")  # the schema, say, locked by the tenant

    with pytest.raises(BackendUnavailable, match="teardown incomplete, still present: role tenant_acme, "
                                                 "schema tenant_acme"):
        await world.teardown(body)

    world.relational.stuck.clear()
    outcome = await world.teardown(body)

    assert reasons(outcome)[-1] == "TeardownVerified"
    nothing_of_acme_remains(world)


async def test_a_secret_another_finalizer_holds_is_residue(world: World) -> None:
    body = await world.provision(tenant_body())
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None
    secret.held = True

    with pytest.raises(BackendUnavailable, match="still present: Secret acme-store"):
        await world.teardown(body)


async def test_an_outage_during_teardown_keeps_the_finalizer(world: World) -> None:
    body = await world.provision(tenant_body())
    world.relational.fail("teardown", BackendUnavailable("cannot reach Postgres at db.test:5432"))

    with pytest.raises(BackendUnavailable, match="cannot reach Postgres"):
        await world.teardown(body)

    assert "tenant_acme" in world.relational.roles


async def test_a_provisioned_tenant_whose_class_is_gone_waits_for_it(world: World) -> None:
    body = await world.provision(tenant_body())
    del world.classes["standard"]

    with pytest.raises(StoreClassNotFound):
        await world.teardown(body)

    assert "tenant_acme" in world.relational.roles


async def test_a_tenant_whose_vectors_were_refused_still_has_its_role_removed(world: World) -> None:
    world.vector.fail("ensure", VectorQuotaExceeded("plan limit"))
    _, body = await world.converge(tenant_body())
    assert "relational" not in body["status"] and body["status"]["storeClassName"] == "standard"

    outcome = await world.teardown(body)

    assert reasons(outcome) == ["SessionsTerminated", "SchemaDropped", "RoleDropped", "TeardownVerified"]
    nothing_of_acme_remains(world)


async def test_a_tenant_deleted_in_the_middle_of_a_tier_change_leaves_neither_side_behind(world: World) -> None:
    """Cut over to its own index, the source namespace not yet deleted (the operator was stopped there)."""
    world.classes["standard"] = store_class(tiers={"enterprise": {"relational": "schema", "vector": "dedicated"}})
    body = await world.provision(tenant_body())
    source = dict(body["status"]["vectorStore"])
    world.vector.fail("teardown", BackendUnavailable("stopped before the source was deleted"), times=1)
    _, body = await world.converge(spec_changed(body, tier="enterprise"))
    assert body["status"]["migration"]["state"] == "SourcePendingDeletion"
    assert body["status"]["vectorStore"]["index"] == "ts-acme" and world.vector.index_of("acme") is not None

    await world.teardown(body)

    assert world.vector.index_of("acme") is None, f"the source namespace {source} was left behind"
    assert world.vector.dedicated == {}


# --- deletionPolicy Retain ---

async def test_retain_releases_the_claim_and_keeps_data_role_and_secret(world: World) -> None:
    body = await world.provision(tenant_body(deletionPolicy="Retain"))
    password = world.relational.roles["tenant_acme"].password
    writes = world.secrets.writes

    outcome = await world.teardown(body)

    assert reasons(outcome) == ["Retained", "SecretRetained"]
    role = world.relational.roles["tenant_acme"]
    assert role.claim == Claim(None, "customers", "acme") and role.password == password
    assert world.relational.schemas == {"tenant_acme": "tenant_acme"}
    assert world.vector.index_of("acme") == "shared-384-cosine-1"
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.owners == {} and secret.data["password"] == password
    assert world.secrets.writes == writes + 1  # the owner reference removed, nothing else
    assert world.vector.called("teardown") == 0 and world.relational.called("teardown") == 0


async def test_a_retained_tenant_is_adopted_by_a_new_tenantstore_in_its_namespace(world: World) -> None:
    retained = await world.provision(tenant_body(deletionPolicy="Retain"))
    await world.teardown(retained)
    password = world.relational.roles["tenant_acme"].password

    outcome = await world.reconcile(tenant_body(uid="uid-customers-acme-again"))

    assert reasons(outcome) == ["RoleAdopted", "SecretWritten"]
    assert ready(outcome.status) == ("True", "Provisioned")
    role = world.relational.roles["tenant_acme"]
    assert role.claim == Claim("uid-customers-acme-again", "customers", "acme") and role.password == password
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.owners == {"uid-customers-acme-again": "acme"}


async def test_a_retained_tenant_is_not_adopted_from_another_namespace_and_its_deletion_touches_nothing(
        world: World) -> None:
    retained = await world.provision(tenant_body(deletionPolicy="Retain"))
    await world.teardown(retained)
    password = world.relational.roles["tenant_acme"].password
    kept_secret = world.secrets.get("customers", "acme-store")
    assert kept_secret is not None
    kept = FakeSecret(dict(kept_secret.data), dict(kept_secret.labels), dict(kept_secret.annotations))

    outcome, stranger = await world.converge(tenant_body(namespace="partners"))

    assert ready(outcome.status) == ("False", "TenantIdConflict")
    assert "retained by another namespace" in condition(outcome.status, "Ready")["message"]
    assert world.relational.roles["tenant_acme"].password == password

    outcome = await world.teardown(stranger)

    assert outcome.events == []
    assert world.relational.roles["tenant_acme"].claim == Claim(None, "customers", "acme")
    assert world.relational.schemas == {"tenant_acme": "tenant_acme"}
    assert world.vector.index_of("acme") == "shared-384-cosine-1"
    assert world.secrets.get("customers", "acme-store") == kept


# --- nothing of ours to remove ---

async def test_a_tenant_no_reconcile_brought_to_a_backend_is_deleted_at_once(world: World) -> None:
    world.classes["standard"] = store_class(allowedNamespaces=CUSTOMERS_ONLY)
    _, body = await world.converge(tenant_body(namespace="sandbox"))
    assert ready(body["status"]) == ("False", "StoreClassNotAllowed")
    world.registry.forbid()
    world.classes.clear()  # whatever state the class is in now

    outcome = await world.teardown(body)

    assert outcome.events == [] and outcome.status == {}


async def test_a_tenant_with_an_invalid_spec_is_deleted_at_once(world: World) -> None:
    world.registry.forbid()

    outcome = await world.teardown(tenant_body(tenantId="Not_Valid", status={"storeClassName": "standard"}))

    assert outcome.events == []


async def test_a_tenant_that_lost_its_tenant_id_in_postgres_removes_only_what_is_its_own(world: World) -> None:
    winner = await world.provision(tenant_body(namespace="partners"))
    winners_password = world.relational.roles["tenant_acme"].password
    # Created a moment later; the tenant-id index had not seen the winner yet, so Postgres decided.
    outcome, loser = await world.converge(tenant_body(name="acme-copy", tenant_id="acme",
                                                      created="2026-01-05T10:00:01Z"))
    assert ready(outcome.status) == ("False", "TenantIdConflict") and loser["status"]["storeClassName"] == "standard"
    world.relational.calls.clear()
    world.vector.calls.clear()

    outcome = await world.teardown(loser)

    assert outcome.events == []
    assert world.relational.calls == ["claimed_by"] and world.vector.calls == []
    assert world.relational.roles["tenant_acme"].password == winners_password
    assert world.relational.roles["tenant_acme"].claim == Claim("uid-partners-acme", "partners", "acme")
    assert world.relational.schemas == {"tenant_acme": "tenant_acme"}
    assert world.vector.index_of("acme") == "shared-384-cosine-1"
    assert world.secrets.get("partners", "acme-store") is not None
    assert ready(winner["status"]) == ("True", "Provisioned")


async def test_a_loser_deletes_its_own_secret_and_nothing_else(world: World) -> None:
    await world.provision(tenant_body(namespace="partners"))
    loser = tenant_body(namespace="partners", name="acme-copy", tenant_id="acme",
                        status={"storeClassName": "standard"})
    await world.secrets.apply_tenant_secret("partners", "acme-copy-store", loser, {"password": "its-own"})

    outcome = await world.teardown(loser)

    assert reasons(outcome) == ["SecretDeleted"]
    assert world.secrets.get("partners", "acme-copy-store") is None
    assert world.secrets.get("partners", "acme-store") is not None
    assert "tenant_acme" in world.relational.roles


async def test_an_unmanaged_role_with_the_tenants_name_is_never_dropped(world: World) -> None:
    world.relational.add_role("tenant_acme", password="theirs", claim=None)
    _, body = await world.converge(tenant_body())
    assert ready(body["status"]) == ("False", "TenantIdConflict")

    await world.teardown(body)

    assert world.relational.roles["tenant_acme"].password == "theirs"


async def test_teardown_of_a_provisioned_tenant_whose_class_became_invalid_waits(world: World) -> None:
    body = await world.provision(tenant_body())
    world.classes["standard"] = InvalidResource("a secret reference needs a name and a namespace")

    with pytest.raises(StoreClassInvalid):
        await world.teardown(body)

    assert "tenant_acme" in world.relational.roles


async def test_a_tenant_whose_spec_left_a_login_without_connections_is_still_torn_down(world: World) -> None:
    body = await world.provision(tenant_body(credentials=[{"name": "app"}, {"name": "viewer", "access": "readOnly"}],
                                             quotas={"maxConnections": 6}))
    assert world.secrets.get("customers", "acme-viewer") is not None
    cramped = spec_changed(body, quotas={"maxConnections": 2})
    refused = await world.reconcile(cramped)
    assert condition(refused.status, "Ready")["reason"] == "InvalidSpec"

    outcome = await world.teardown(cramped)

    assert reasons(outcome)[-1] == "TeardownVerified"
    assert world.secrets.get("customers", "acme-app") is None and world.secrets.get("customers", "acme-viewer") is None


async def test_a_tenant_that_never_had_a_scoped_credential_lists_no_secrets_at_its_deletion(world: World) -> None:
    body = await world.provision(tenant_body())

    await world.teardown(body)

    assert world.secrets.called("credential_secrets") == 0
    nothing_of_acme_remains(world)


async def test_credentials_removed_from_the_spec_before_the_deletion_still_have_their_secrets_deleted(
        world: World) -> None:
    body = await world.provision(tenant_body(credentials=[{"name": "app"}]))
    assert world.secrets.get("customers", "acme-app") is not None
    dropped = spec_changed(body, credentials=[])  # deleted before any reconcile of the change: status still has it

    outcome = await world.teardown(dropped)

    assert reasons(outcome)[-1] == "TeardownVerified"
    assert world.secrets.get("customers", "acme-app") is None
