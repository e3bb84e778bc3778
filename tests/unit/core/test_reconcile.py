"""reconcile_tenant: what a TenantStore's status and Events say after one reconcile, and what it made."""
from __future__ import annotations

from typing import Any

import pytest

from tenantstore.api import WRITES_BLOCKED_ANNOTATION, ConditionType
from tenantstore.backends import Step, VectorPlacement
from tenantstore.errors import BackendUnavailable, StoreClassInvalid, VectorQuotaExceeded
from tenantstore.models import InvalidResource
from tenantstore.reconcile import ClaimRef

from .fakes import Claim, FakeRegistry
from .world import (CUSTOMERS_ONLY, World, condition, has_condition, ready, reasons, spec_changed, stalled,
                    store_class, tenant_body)

PROVISIONING_A_FREE_TENANT = ["RoleCreated", "SchemaCreated", "SharedIndexCreated", "NamespaceCreated",
                              "NamespaceIsolated", "VectorAccessGranted", "IsolationVerified", "SecretWritten"]


# --- a tenant provisioned ---

async def test_a_new_tenant_is_made_and_its_status_says_where_it_lives(world: World) -> None:
    outcome = await world.reconcile(tenant_body(generation=3))

    assert reasons(outcome) == PROVISIONING_A_FREE_TENANT
    assert outcome.warning is None and outcome.retry_after is None
    status = outcome.status
    assert status["phase"] == "Ready" and status["observedGeneration"] == 3
    assert ready(status) == ("True", "Provisioned")
    assert condition(status, "Ready")["observedGeneration"] == 3
    assert condition(status, "QuotaExceeded")["reason"] == "WithinLimits"
    assert condition(status, "QuotasCapped")["reason"] == "WithinCeilings"
    assert stalled(status) is None  # a tenant that never stalled has no Stalled condition
    assert status["storeClassName"] == "standard" and status["observedStoreClassGeneration"] == 1
    assert status["isolation"] == {"relational": "schema", "vector": "namespace"}
    assert status["relational"] == {"host": "db.test", "port": 5432, "database": "tenants", "schema": "tenant_acme",
                                    "role": "tenant_acme"}
    assert status["vectorStore"] == {"backend": "pgvector", "index": "shared-384-cosine-1", "namespace": "acme",
                                     "table": "tenantstore_vectors.tenant_acme"}
    assert status["secretName"] == "acme-store"
    assert status["quotas"] == {"maxDocuments": 10_000, "maxStorageBytes": "1Gi", "maxConnections": 5,
                                "maxDailyQueries": 1_000}
    assert world.relational.schemas == {"tenant_acme": "tenant_acme"}
    assert world.relational.roles["tenant_acme"].connection_limit == 5
    assert world.relational.roles["tenant_acme"].claim == Claim("uid-customers-acme", "customers", "acme")
    assert world.vector.index_of("acme") == "shared-384-cosine-1"


async def test_the_secret_holds_the_coordinates_and_the_password_the_role_logs_in_with(world: World) -> None:
    await world.reconcile(tenant_body())

    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None
    password = world.relational.roles["tenant_acme"].password
    assert len(password) >= 24
    assert secret.data == {
        "tenantId": "acme", "uri": f"postgresql://tenant_acme:{password}@db.test:5432/tenants", "host": "db.test",
        "port": "5432",
        "database": "tenants", "schema": "tenant_acme", "user": "tenant_acme", "password": password,
        "vectorBackend": "pgvector", "vectorIndex": "shared-384-cosine-1", "vectorNamespace": "acme",
        "vectorTable": "tenantstore_vectors.tenant_acme", "vectorMetric": "cosine", "vectorDimension": "384"}
    assert secret.owners == {"uid-customers-acme": "acme"}
    assert secret.labels == {"tenancy.dev/tenant-id": "acme", "app.kubernetes.io/managed-by": "tenantstore-operator"}
    assert WRITES_BLOCKED_ANNOTATION not in secret.annotations


async def test_what_the_class_adds_to_tenant_secrets_is_written_there(world: World) -> None:
    world.registry = FakeRegistry(world.relational, world.vector, secret_extras={"pineconeApiKey": "pk-project"})

    await world.reconcile(tenant_body())

    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.data["pineconeApiKey"] == "pk-project"


async def test_an_enterprise_tenant_gets_a_database_and_a_dedicated_index_and_no_isolation_probe(world: World) -> None:
    outcome = await world.reconcile(tenant_body(tier="enterprise"))

    assert reasons(outcome) == ["RoleCreated", "DatabaseCreated", "DedicatedIndexCreated", "VectorAccessGranted",
                                "SecretWritten"]
    assert outcome.status["isolation"] == {"relational": "database", "vector": "dedicated"}
    assert outcome.status["relational"]["database"] == "tenant_acme"
    assert outcome.status["relational"]["schema"] == "public"
    assert outcome.status["vectorStore"] == {"backend": "pgvector", "index": "ts-acme", "table": "public.vectors"}
    assert world.relational.databases == {"tenant_acme": "tenant_acme"} and world.relational.schemas == {}
    assert world.vector.called("probe_isolation") == 0
    assert ready(outcome.status) == ("True", "Provisioned")


async def test_a_second_reconcile_with_nothing_changed_writes_nothing(world: World) -> None:
    body = await world.provision(tenant_body())
    writes, roles = world.secrets.writes, dict(world.relational.roles)

    outcome = await world.reconcile(body)

    assert outcome.events == []
    assert outcome.status_patch(body["status"]) == {}
    assert world.secrets.writes == writes
    assert world.relational.roles == roles
    assert world.registry.called("require_ready") == 1  # a tenant made in a class is not held to its preflight again


async def test_a_spec_change_is_observed_at_its_generation(world: World) -> None:
    body = await world.provision(tenant_body())

    outcome = await world.reconcile(spec_changed(body, quotas={"maxConnections": 9}))

    assert reasons(outcome) == ["ConnectionLimitChanged"]
    assert outcome.status["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in outcome.status["conditions"]} == {2}
    assert world.relational.roles["tenant_acme"].connection_limit == 9


async def test_the_class_a_tenant_was_made_in_stays_its_class_when_the_default_moves(world: World) -> None:
    body = await world.provision(tenant_body())
    world.classes = {"standard": store_class("standard", default=False), "premium": store_class("premium")}

    outcome = await world.reconcile(body)

    assert outcome.status["storeClassName"] == "standard"
    assert world.registry.classes_built == ["standard", "standard"]


async def test_a_full_shared_index_sends_the_next_tenant_to_a_new_one(world: World) -> None:
    world.classes["standard"] = store_class(vector={"backend": "pgvector", "sharedIndex": {"capacity": 2}})
    for name in ("acme", "globex"):
        await world.provision(tenant_body(name))

    outcome = await world.reconcile(tenant_body("initech"))

    assert reasons(outcome)[2:4] == ["SharedIndexCreated", "NamespaceCreated"]
    assert outcome.status["vectorStore"]["index"] == "shared-384-cosine-2"
    assert world.vector.index_of("globex") == "shared-384-cosine-1"


async def test_quota_overrides_above_the_tiers_ceiling_are_capped_and_said_so(world: World) -> None:
    world.classes["standard"] = store_class(tiers={"free": {"maxQuotas": {"maxDocuments": 100}}})

    outcome = await world.reconcile(tenant_body(quotas={"maxDocuments": 5_000}))

    capped = condition(outcome.status, "QuotasCapped")
    assert (capped["status"], capped["reason"]) == ("True", "AboveTierCeiling")
    assert "spec.quotas.maxDocuments" in capped["message"]
    assert outcome.status["quotas"]["maxDocuments"] == 100
    assert ready(outcome.status) == ("True", "Provisioned")


# --- failures before anything is made ---

@pytest.mark.parametrize("spec, quoted", [
    ({"tenantId": "Acme_Corp"}, "'Acme_Corp'"),
    ({"vector": {"metric": "cosine"}}, "spec.vector.dimension is required"),
    ({"quotas": {"maxStorageBytes": "0.5"}}, "not a whole number of bytes"),
])
async def test_a_spec_the_api_server_could_not_check_is_invalid_and_stalls(world: World, spec: dict[str, Any],
                                                                          quoted: str) -> None:
    world.registry.forbid()

    outcome = await world.reconcile(tenant_body(**spec))

    assert outcome.status["phase"] == "Failed"
    assert ready(outcome.status) == ("False", "InvalidSpec")
    assert quoted in condition(outcome.status, "Ready")["message"]
    assert stalled(outcome.status) == ("True", "InvalidSpec")
    assert outcome.retry_after is None  # waits for the next spec change
    assert "storeClassName" not in outcome.status


async def test_a_class_that_does_not_exist_leaves_the_tenant_pending(world: World) -> None:
    world.registry.forbid()

    outcome = await world.reconcile(tenant_body(storeClassName="gold"))

    assert outcome.status["phase"] == "Pending"
    assert ready(outcome.status) == ("False", "StoreClassNotFound")
    assert condition(outcome.status, "Ready")["message"] == "StoreClass 'gold' does not exist"
    assert outcome.retry_after == 5.0
    assert outcome.warning is not None and outcome.warning.reason == "StoreClassNotFound"
    assert stalled(outcome.status) is None
    assert "storeClassName" not in outcome.status


async def test_without_a_default_class_a_tenant_naming_none_is_pending(world: World) -> None:
    world.classes = {"standard": store_class(default=False)}
    world.registry.forbid()

    outcome = await world.reconcile(tenant_body())

    assert ready(outcome.status) == ("False", "StoreClassNotFound")
    assert "no StoreClass is annotated" in condition(outcome.status, "Ready")["message"]


async def test_an_unusable_class_fails_the_tenant_and_stalls_it(world: World) -> None:
    world.classes["standard"] = InvalidResource("a secret reference needs a name and a namespace")
    world.registry.forbid()

    outcome = await world.reconcile(tenant_body(storeClassName="standard"))

    assert outcome.status["phase"] == "Failed"
    assert ready(outcome.status) == ("False", "StoreClassInvalid")
    assert "a secret reference needs a name" in condition(outcome.status, "Ready")["message"]
    assert stalled(outcome.status) == ("True", "StoreClassInvalid")
    assert outcome.retry_after == 15.0


async def test_a_class_whose_admin_secret_is_missing_fails_before_anything_is_recorded(world: World) -> None:
    world.registry.fail("for_class", StoreClassInvalid("Secret tenantstore-system/pg-admin named by the StoreClass "
                                                       "does not exist"))

    outcome = await world.reconcile(tenant_body())

    assert ready(outcome.status) == ("False", "StoreClassInvalid")
    assert "storeClassName" not in outcome.status  # no backend was reached: deleting it must not look for one


@pytest.mark.parametrize("where", ["registry", "relational", "vector"])
async def test_a_class_missing_a_prerequisite_gets_nothing_made_for_a_new_tenant(world: World, where: str) -> None:
    problem = Step("AdminRoleIsSuperuser", "admin role tenantstore_admin is a superuser")
    problems = {"registry": world.registry.preflight_problems, "relational": world.relational.preflight_problems,
                "vector": world.vector.preflight_problems}[where]
    problems.append(problem)

    outcome = await world.reconcile(tenant_body())

    assert outcome.status["phase"] == "Pending"
    assert ready(outcome.status) == ("False", "StoreClassNotReady")
    assert condition(outcome.status, "Ready")["message"] == (
        "StoreClass standard is not ready (AdminRoleIsSuperuser): admin role tenantstore_admin is a superuser")
    assert outcome.retry_after == 30.0 and stalled(outcome.status) is None
    assert "storeClassName" not in outcome.status
    assert world.relational.roles == {} and world.vector.indexes == {}
    assert world.secrets.calls == []


async def test_a_class_that_is_fixed_lets_the_waiting_tenant_in(world: World) -> None:
    world.registry.preflight_problems.append(Step("VectorExtensionMissing", "the vector extension is not installed"))
    body = tenant_body()
    _, body = await world.converge(body)
    world.registry.preflight_problems.clear()

    outcome = await world.reconcile(body)

    assert ready(outcome.status) == ("True", "Provisioned") and outcome.status["phase"] == "Ready"


async def test_a_namespace_the_class_does_not_allow_gets_nothing_and_stalls(world: World) -> None:
    world.classes["standard"] = store_class(allowedNamespaces=CUSTOMERS_ONLY)
    world.registry.forbid()

    outcome = await world.reconcile(tenant_body(namespace="sandbox"))

    assert outcome.status["phase"] == "Failed"
    assert ready(outcome.status) == ("False", "StoreClassNotAllowed")
    message = condition(outcome.status, "Ready")["message"]
    assert "StoreClass standard does not allow namespace sandbox" in message
    assert "tenancy.dev/customers" in message and message.endswith("nothing is made for it. Label the namespace or "
                                                                   "use another StoreClass")
    assert stalled(outcome.status) == ("True", "StoreClassNotAllowed")
    assert outcome.retry_after == 30.0  # labelling the namespace lets it in by itself
    assert world.namespaces.calls == ["labels"]


async def test_a_class_without_namespace_rules_never_reads_namespace_labels(world: World) -> None:
    await world.reconcile(tenant_body(namespace="sandbox"))

    assert world.namespaces.calls == []


async def test_a_provisioned_tenant_whose_namespace_stops_matching_keeps_serving(world: World) -> None:
    world.classes["standard"] = store_class(allowedNamespaces=CUSTOMERS_ONLY)
    body = await world.provision(tenant_body())
    del world.namespaces.namespaces["customers"]["tenancy.dev/customers"]
    writes = world.secrets.writes

    outcome, body = await world.converge(spec_changed(body, displayName="Acme"))

    assert outcome.status["phase"] == "Ready"
    assert ready(outcome.status) == ("False", "StoreClassNotAllowed")
    assert "its data and credentials are kept, nothing is torn down" in condition(outcome.status, "Ready")["message"]
    assert stalled(outcome.status) == ("True", "StoreClassNotAllowed")
    assert "tenant_acme" in world.relational.roles and world.secrets.writes == writes

    world.namespaces.namespaces["customers"]["tenancy.dev/customers"] = "true"
    outcome = await world.reconcile(body)

    assert ready(outcome.status) == ("True", "Provisioned")
    assert stalled(outcome.status) == ("False", "Converged")


# --- tenantId and Secret conflicts ---

async def test_a_tenant_id_claimed_first_by_another_tenantstore_is_a_conflict(world: World) -> None:
    first = ClaimRef(created="2026-01-01T00:00:00Z", uid="uid-partners-acme", namespace="partners", name="acme")
    world.registry.forbid()

    outcome = await world.reconcile(tenant_body(), claims=[first])

    assert outcome.status["phase"] == "Failed"
    assert ready(outcome.status) == ("False", "TenantIdConflict")
    assert condition(outcome.status, "Ready")["message"] == \
        "tenantId acme is already claimed by TenantStore partners/acme"
    assert stalled(outcome.status) == ("True", "TenantIdConflict")
    assert outcome.retry_after == 30.0


async def test_a_provisioned_claim_wins_over_an_older_unprovisioned_one(world: World) -> None:
    later_but_provisioned = ClaimRef(created="2026-02-01T00:00:00Z", uid="uid-b", namespace="partners", name="acme",
                                     provisioned=True)

    outcome = await world.reconcile(tenant_body(created="2026-01-01T00:00:00Z"), claims=[later_but_provisioned])

    assert ready(outcome.status) == ("False", "TenantIdConflict")


@pytest.mark.parametrize("other_uid, wins", [("uid-a", False), ("uid-z", True)])
async def test_claims_made_in_the_same_second_go_to_the_lower_uid(world: World, other_uid: str, wins: bool) -> None:
    other = ClaimRef(created="2026-01-05T10:00:00Z", uid=other_uid, namespace="partners", name="acme")

    outcome = await world.reconcile(tenant_body(uid="uid-m"), claims=[other])

    assert ready(outcome.status) == (("True", "Provisioned") if wins else ("False", "TenantIdConflict"))


async def test_a_role_another_tenantstore_claimed_in_postgres_is_a_conflict_and_stays_theirs(world: World) -> None:
    winner = world.relational.add_role("tenant_acme", password="winners-password",
                                       claim=Claim("uid-partners-acme", "partners", "acme"))

    outcome = await world.reconcile(tenant_body())

    assert ready(outcome.status) == ("False", "TenantIdConflict")
    assert condition(outcome.status, "Ready")["message"] == \
        "tenantId acme is already claimed by TenantStore partners/acme"
    assert outcome.status["storeClassName"] == "standard"  # the backend was reached: teardown must look there
    assert winner.password == "winners-password" and winner.claim == Claim("uid-partners-acme", "partners", "acme")
    assert world.relational.schemas == {} and world.vector.calls == ["preflight"]
    assert world.secrets.writes == 0


async def test_a_role_the_operator_did_not_make_is_never_adopted(world: World) -> None:
    world.relational.add_role("tenant_acme", claim=None)

    outcome = await world.reconcile(tenant_body())

    assert ready(outcome.status) == ("False", "TenantIdConflict")
    assert "was not made by tenantstore" in condition(outcome.status, "Ready")["message"]


async def test_a_secret_someone_else_owns_is_a_conflict_until_the_name_changes(world: World) -> None:
    world.secrets.put_foreign("customers", "acme-store")

    outcome, body = await world.converge(tenant_body())

    assert outcome.status["phase"] == "Failed"
    assert ready(outcome.status) == ("False", "SecretConflict")
    assert condition(outcome.status, "Ready")["message"].startswith("Secret customers/acme-store exists and is not "
                                                                    "managed for this TenantStore")
    assert stalled(outcome.status) == ("True", "SecretConflict")
    assert world.relational.roles == {} and "storeClassName" not in outcome.status
    foreign = world.secrets.get("customers", "acme-store")
    assert foreign is not None and foreign.data == {"password": "not-yours"}

    outcome = await world.reconcile(spec_changed(body, secretName="acme-credentials"))

    assert ready(outcome.status) == ("True", "Provisioned")
    assert stalled(outcome.status) == ("False", "Converged")
    assert world.secrets.get("customers", "acme-credentials") is not None


# --- failures once backends are reached ---

async def test_an_unreachable_postgres_leaves_a_new_tenant_provisioning_with_its_class_recorded(world: World) -> None:
    world.relational.fail("ensure", BackendUnavailable("cannot reach Postgres at db.test:5432"))

    outcome = await world.reconcile(tenant_body())

    assert outcome.status["phase"] == "Provisioning"
    assert ready(outcome.status) == ("False", "BackendUnavailable")
    assert outcome.retry_after == 5.0 and stalled(outcome.status) is None
    assert outcome.status["storeClassName"] == "standard"


@pytest.mark.parametrize("fake, method", [("registry", "for_class"), ("secrets", "read_tenant_secret")])
async def test_an_outage_before_any_backend_is_reached_records_no_class(world: World, fake: str, method: str) -> None:
    {"registry": world.registry, "secrets": world.secrets}[fake].fail(method, BackendUnavailable("timed out"))

    outcome = await world.reconcile(tenant_body())

    assert ready(outcome.status) == ("False", "BackendUnavailable")
    assert outcome.status["phase"] == "Provisioning"
    assert "storeClassName" not in outcome.status


@pytest.mark.parametrize("suspended, phase", [(False, "Ready"), (True, "Suspended")])
async def test_an_outage_keeps_a_serving_tenants_phase(world: World, suspended: bool, phase: str) -> None:
    body = await world.provision(tenant_body(suspended=suspended))
    world.relational.fail("ensure", BackendUnavailable("cannot reach Postgres at db.test:5432"))

    outcome, body = await world.converge(spec_changed(body, displayName="Acme"))

    assert outcome.status["phase"] == phase
    assert ready(outcome.status) == ("False", "BackendUnavailable")
    assert condition(outcome.status, "QuotaExceeded")["reason"] == "WithinLimits"  # other conditions are kept

    world.relational.recover()
    outcome = await world.reconcile(body)

    assert outcome.status["phase"] == phase and condition(outcome.status, "Ready")["reason"] != "BackendUnavailable"


async def test_a_vector_plan_limit_leaves_the_tenant_pending_and_the_next_try_finishes(world: World) -> None:
    world.vector.fail("ensure", VectorQuotaExceeded("the project's plan allows 5 serverless indexes"), times=1)

    outcome, body = await world.converge(tenant_body())

    assert outcome.status["phase"] == "Pending"
    assert ready(outcome.status) == ("False", "VectorQuotaExceeded")
    assert outcome.retry_after == 30.0 and stalled(outcome.status) is None
    assert outcome.status["storeClassName"] == "standard"
    assert "tenant_acme" in world.relational.roles and world.secrets.writes == 0

    outcome = await world.reconcile(body)

    assert ready(outcome.status) == ("True", "Provisioned")
    # The Secret was never written, so the role gets the password the Secret now holds.
    assert reasons(outcome)[0] == "PasswordReset"
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.data["password"] == world.relational.roles["tenant_acme"].password


async def test_a_replaced_dedicated_table_fails_the_tenant_and_stalls_it(world: World) -> None:
    body = await world.provision(tenant_body(tier="enterprise"))
    world.vector.replace_dedicated("acme")

    outcome = await world.reconcile(spec_changed(body, displayName="Acme"))

    assert outcome.status["phase"] == "Failed"
    assert ready(outcome.status) == ("False", "ObjectReplaced")
    assert stalled(outcome.status) == ("True", "ObjectReplaced")
    assert outcome.retry_after == 60.0


async def test_a_new_namespace_that_sees_other_rows_is_never_ready(world: World) -> None:
    world.vector.isolation_problems["acme"] = "tenant_acme sees 3 rows of other namespaces in its partition"

    outcome = await world.reconcile(tenant_body())

    assert outcome.status["phase"] == "Failed"
    assert ready(outcome.status) == ("False", "IsolationBroken")
    assert condition(outcome.status, "Ready")["message"] == \
        "tenant_acme sees 3 rows of other namespaces in its partition"
    assert stalled(outcome.status) == ("True", "IsolationBroken")
    assert world.secrets.writes == 0  # no credentials for a store that is not isolated


async def test_a_ready_tenant_whose_re_made_namespace_fails_the_probe_keeps_its_phase(world: World) -> None:
    """The README: IsolationBroken is Failed, "Ready tenants keep their phase" (they still serve)."""
    body = await world.provision(tenant_body())
    world.vector.drop_namespace("acme")
    world.vector.isolation_problems["acme"] = "tenant_acme sees 3 rows of other namespaces in its partition"

    outcome = await world.reconcile(body)

    assert ready(outcome.status) == ("False", "IsolationBroken")
    assert outcome.status["phase"] == "Ready"


# --- suspension, quotas, credentials ---

async def test_suspending_a_tenant_stops_its_logins_and_keeps_everything(world: World) -> None:
    body = await world.provision(tenant_body())
    writes = world.secrets.writes

    outcome, body = await world.converge(spec_changed(body, suspended=True))

    assert reasons(outcome) == ["LoginChanged"]
    assert outcome.status["phase"] == "Suspended"
    assert ready(outcome.status) == ("False", "Suspended")
    assert world.relational.roles["tenant_acme"].can_login is False
    assert world.secrets.writes == writes and world.vector.index_of("acme") == "shared-384-cosine-1"

    outcome = await world.reconcile(spec_changed(body, suspended=False))

    assert reasons(outcome) == ["LoginChanged"]
    assert outcome.status["phase"] == "Ready" and ready(outcome.status) == ("True", "Provisioned")
    assert world.relational.roles["tenant_acme"].can_login is True


async def test_a_tenant_created_suspended_gets_a_role_that_cannot_log_in(world: World) -> None:
    outcome = await world.reconcile(tenant_body(suspended=True))

    assert outcome.status["phase"] == "Suspended" and ready(outcome.status) == ("False", "Suspended")
    assert world.relational.roles["tenant_acme"].can_login is False


async def test_writes_stay_blocked_while_the_last_measured_usage_is_over_a_block_quota(world: World) -> None:
    body = await world.provision(tenant_body(quotas={"maxDocuments": 10}))
    body["status"]["usage"] = {"documents": 10, "storageBytes": 0, "connections": 0, "measuredAt": "then"}

    outcome = await world.reconcile(spec_changed(body, displayName="Acme"))

    assert reasons(outcome) == ["WritesBlocked", "VectorWritesBlocked", "SecretWritten"]
    quota = condition(outcome.status, "QuotaExceeded")
    assert (quota["status"], quota["reason"]) == ("True", "WritesBlocked")
    assert quota["message"].startswith("documents 10 of 10: writes are refused")
    assert ready(outcome.status) == ("True", "Provisioned")  # reads still work: the tenant is Ready
    placement = VectorPlacement.from_status(outcome.status["vectorStore"])
    assert placement is not None and world.vector.writes_blocked(placement)
    assert world.relational.schemas["tenant_acme"] == "tenantstore_hold_acme"
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.annotations[WRITES_BLOCKED_ANNOTATION] == "true"


async def test_an_alert_quota_reports_the_limit_and_blocks_nothing(world: World) -> None:
    body = await world.provision(tenant_body(quotas={"maxDocuments": 10}, quotaAction="Alert"))
    body["status"]["usage"] = {"documents": 12, "storageBytes": 0, "connections": 0, "measuredAt": "then"}

    outcome = await world.reconcile(spec_changed(body, displayName="Acme"))

    assert outcome.events == []
    quota = condition(outcome.status, "QuotaExceeded")
    assert (quota["status"], quota["reason"]) == ("True", "LimitReached")
    assert world.relational.schemas["tenant_acme"] == "tenant_acme"


async def test_a_role_password_changed_by_hand_is_reset_to_the_secrets_when_credentials_are_checked(
        world: World) -> None:
    body = await world.provision(tenant_body())
    in_secret = world.relational.roles["tenant_acme"].password
    world.relational.change_password("tenant_acme", "changed-by-hand")
    writes = world.secrets.writes

    unchecked = await world.reconcile(body)
    assert unchecked.events == [] and world.relational.roles["tenant_acme"].password == "changed-by-hand"

    outcome = await world.reconcile(body, check_credentials=True)

    assert reasons(outcome) == ["PasswordReset"]
    assert world.relational.roles["tenant_acme"].password == in_secret
    assert world.secrets.writes == writes  # the Secret was right; only the role changed
    assert ready(outcome.status) == ("True", "Provisioned")


async def test_a_suspended_tenants_credentials_are_not_checked(world: World) -> None:
    body = await world.provision(tenant_body(suspended=True))

    await world.reconcile(body, check_credentials=True)

    assert world.relational.called("credentials_work") == 0


async def test_a_deleted_secret_is_written_again_with_a_new_password_the_role_gets_too(world: World) -> None:
    body = await world.provision(tenant_body())
    old = world.relational.roles["tenant_acme"].password
    world.secrets.remove("customers", "acme-store")

    outcome = await world.reconcile(body)

    assert reasons(outcome) == ["PasswordReset", "SecretWritten"]
    secret = world.secrets.get("customers", "acme-store")
    assert secret is not None and secret.data["password"] != old
    assert world.relational.roles["tenant_acme"].password == secret.data["password"]


# --- Stalled over time ---

async def test_stalled_turns_false_with_progressing_when_a_terminal_failure_becomes_a_retryable_one(
        world: World) -> None:
    world.secrets.put_foreign("customers", "acme-store")
    _, body = await world.converge(tenant_body())
    world.secrets.remove("customers", "acme-store")
    world.relational.fail("ensure", BackendUnavailable("cannot reach Postgres"))

    outcome = await world.reconcile(body)

    assert ready(outcome.status) == ("False", "BackendUnavailable")
    assert stalled(outcome.status) == ("False", "Progressing")
    assert condition(outcome.status, ConditionType.STALLED)["message"] == "nothing waits for a person"
    assert not has_condition(outcome.status, ConditionType.DATA_LOST)


async def test_an_unexpected_backend_error_is_not_swallowed(world: World) -> None:
    world.relational.fail("ensure", RuntimeError("a bug in a backend"))

    with pytest.raises(RuntimeError, match="a bug in a backend"):
        await world.reconcile(tenant_body())
