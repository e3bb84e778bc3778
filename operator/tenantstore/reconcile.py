"""Desired state → backends → status, for one TenantStore at a time.

`reconcile_tenant` and `teardown_tenant` are mirror images: what one makes, in order, the other removes
in reverse order. Both are level-based and idempotent: each backend step compares what exists with what
should, and changes only the difference; an operator killed anywhere converges on the next run.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from tenantstore import (classmoves, conditions, credentials, destinations, export, globalstore, migration,
                         relational_moves, settings, tracing)
from tenantstore.credentials import new_password
from tenantstore.api import DATA_LOSS_ACKNOWLEDGED_ANNOTATION, TERMINAL_REASONS, ConditionType, Phase, Reason
from tenantstore.backends import (NAMESPACE_CREATED, GlobalPlacement, RelationalPlacement, Step, VectorPlacement,
                                  VectorStore)
from tenantstore.conditions import Condition
from tenantstore.errors import (BackendUnavailable, GlobalStoreNotReady, IsolationBroken, MoveFreezeExceeded,
                                ReconcileError, RelationalMigrationUnsupported, RestoreFailed, SecretConflict,
                                StoreClassInvalid, StoreClassMoveUnsupported, StoreClassNotAllowed, StoreClassNotFound,
                                StoreClassNotReady, TenantIdConflict, VectorQuotaExceeded)
from tenantstore.kube import NOT_READ, NamespaceLabels, SecretDeletion, Secrets, password_in
from tenantstore.models import (DeletionPolicy, DesiredStore, InvalidResource, RelationalIsolation,
                                StoreClass, TenantStoreSpec, VectorIsolation, default_class_name, desired_store)
from tenantstore.quota import Verdict
from tenantstore.registry import BackendRegistry

logger = logging.getLogger(__name__)

PHASE_BY_REASON = {
    StoreClassNotFound.reason: Phase.PENDING,
    StoreClassNotReady.reason: Phase.PENDING,
    GlobalStoreNotReady.reason: Phase.PENDING,
    VectorQuotaExceeded.reason: Phase.PENDING,
    BackendUnavailable.reason: Phase.PROVISIONING,
    StoreClassInvalid.reason: Phase.FAILED,
    StoreClassNotAllowed.reason: Phase.FAILED,
    TenantIdConflict.reason: Phase.FAILED,
    SecretConflict.reason: Phase.FAILED,
    RestoreFailed.reason: Phase.PROVISIONING,
    migration.MigrationVerificationFailed.reason: Phase.MIGRATING,  # the copy is retried; the move goes on
}


# A tenant that was serving and meets these keeps its phase: it still serves; Ready=False tells the rest.
KEEPS_PHASE = (BackendUnavailable.reason, RelationalMigrationUnsupported.reason, StoreClassNotAllowed.reason,
               StoreClassNotReady.reason, IsolationBroken.reason, StoreClassMoveUnsupported.reason,
               MoveFreezeExceeded.reason)





@dataclasses.dataclass(frozen=True)
class DataLossNotice:
    """A store re-made empty after its data was dropped behind the operator's back stays flagged until a
    person says they know: an annotation whose value is the DataLost condition's lastTransitionTime."""

    condition: str = ConditionType.DATA_LOST
    annotation: str = DATA_LOSS_ACKNOWLEDGED_ANNOTATION

    def pending(self, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        lost = conditions.find((body.get("status") or {}).get("conditions"), self.condition)
        return lost if lost is not None and lost.get("status") == "True" else None

    def acknowledged(self, body: Mapping[str, Any]) -> bool:
        lost = self.pending(body)
        annotations = body.get("metadata", {}).get("annotations") or {}
        return lost is not None and annotations.get(self.annotation) == lost.get("lastTransitionTime")

    def hold(self, body: Mapping[str, Any], updates: list[Condition]) -> list[Condition]:
        """Ready stays False while a loss is unacknowledged; an acknowledged one is closed."""
        lost = self.pending(body)
        if lost is None:
            return updates
        if self.acknowledged(body):
            return [*updates, Condition(self.condition, False, Reason.ACKNOWLEDGED, "the data loss was acknowledged")]
        held = Condition(ConditionType.READY, False, Reason.DATA_LOST, str(lost.get("message", "")))
        return [held if update.type == ConditionType.READY and update.status else update for update in updates]


DATA_LOSS = DataLossNotice()


@dataclasses.dataclass(frozen=True)
class ClaimRef:
    """A TenantStore as the tenant-id index remembers it: enough to tell who claimed a tenantId first."""

    created: str
    uid: str
    namespace: str
    name: str
    provisioned: bool = False


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Step]
    retry_after: float | None = None
    warning: ReconcileError | None = None
    trace_id: str = ""  # the reconcile's span, for the audit trail

    def status_patch(self, current: Mapping[str, Any] | None) -> dict[str, Any]:
        return conditions.status_changes(current, self.status)

    def about(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The TenantStore its events are about, in the class it lives in now: a move's events go to the audit
        trail of the class it moved to."""
        moved_to = self.status.get("storeClassName")
        if not moved_to or moved_to == (body.get("status") or {}).get("storeClassName"):
            return body
        return {**body, "status": {**(body.get("status") or {}), "storeClassName": moved_to}}


def resolve_store_class(name: str, classes: Mapping[str, StoreClass | InvalidResource]) -> StoreClass:
    if name:
        found = classes.get(name)
        if found is None:
            raise StoreClassNotFound(f"StoreClass {name!r} does not exist")
    else:
        default = default_class_name(classes)
        if not default:
            raise StoreClassNotFound("spec.storeClassName is empty and no StoreClass is annotated "
                                     "storeclass.tenancy.dev/is-default-class: \"true\"")
        found = classes[default]
    if isinstance(found, InvalidResource):
        raise StoreClassInvalid(f"StoreClass {name!r} cannot be used: {found}")
    return found


async def admitted(store_class: StoreClass, namespace: str, namespaces: NamespaceLabels) -> bool:
    """Whether the class's spec.allowedNamespaces admits the namespace (read only when the class restricts)."""
    if not store_class.allowed_namespaces.restricted:
        return True
    with tracing.backend_call("kubernetes", "read_namespace"):
        labels = await namespaces.labels(namespace)
    return store_class.allowed_namespaces.allows(labels)


async def check_admitted(store_class: StoreClass, namespace: str, namespaces: NamespaceLabels,
                         provisioned: bool) -> None:
    """Before any backend call, so a namespace the class refuses never gets anything made for it."""
    if await admitted(store_class, namespace, namespaces):
        return
    kept = "; the tenant was provisioned before: its data and credentials are kept, nothing is torn down" \
        if provisioned else "; nothing is made for it"
    raise StoreClassNotAllowed(
        f"StoreClass {store_class.name} does not allow namespace {namespace}: the namespace's labels do not match "
        f"spec.allowedNamespaces.selector ({store_class.allowed_namespaces.selector}){kept}. Label the namespace "
        f"or use another StoreClass")


def check_claim(tenant_id: str, me: ClaimRef, claims: Sequence[ClaimRef]) -> None:
    """The first TenantStore to name a tenantId owns it; later ones wait.

    Provisioned stores come first (creation times tie within a second); the role's claim in Postgres
    is the final arbiter when two are created at once.
    """
    first = min([*claims, me], key=lambda ref: (not ref.provisioned, ref.created, ref.uid))
    if first.uid != me.uid:
        raise TenantIdConflict(f"tenantId {tenant_id} is already claimed by TenantStore "
                               f"{first.namespace}/{first.name}")


def secret_data(spec: TenantStoreSpec, relational: RelationalPlacement, vector: VectorPlacement,
                password: str, extras: Mapping[str, str] | None = None,
                global_placement: GlobalPlacement | None = None, owner: bool = True) -> dict[str, str]:
    """`owner`: the Secret of the tenant's own login (not a scoped credential's)."""
    uri = f"postgresql://{relational.role}:{password}@{relational.host}:{relational.port}/{relational.database}"
    data = {
        "tenantId": spec.tenant_id, "uri": uri, "host": relational.host, "port": str(relational.port),
        "database": relational.database, "schema": relational.schema, "user": relational.role, "password": password,
        "vectorBackend": vector.backend, "vectorIndex": vector.index, "vectorNamespace": vector.namespace,
        # What a client needs to query without asking the backend: the distance and the vectors' length.
        "vectorMetric": spec.metric.value, "vectorDimension": str(spec.dimension),
    }
    if vector.table:
        data["vectorTable"] = vector.table
    if vector.host:
        data["vectorHost"] = vector.host
    data.update(globalstore.reader_keys(global_placement, relational, password, owner))
    data.update(extras or {})
    return data




async def readable_global_index(vector: VectorStore, store: DesiredStore, store_class: StoreClass
                                ) -> tuple[GlobalPlacement | None, list[Step]]:
    """The class's global index of the tenant's shape, readable by the tenant (None when the class has none)."""
    index = store_class.global_index_for(store.dimension, store.metric)
    if index is None:
        return None, []
    with tracing.backend_call(vector.backend, "grant_global"):
        placement, steps = await vector.grant_global(store, index)
    if placement is None:
        raise GlobalStoreNotReady(f"StoreClass {store_class.name} has not made its global index {index.store_name} "
                                  f"yet (its GlobalStoreReady condition says why)")
    return placement, steps


async def no_report(changes: dict[str, Any]) -> None:
    del changes


async def reconcile_tenant(body: Mapping[str, Any], classes: Mapping[str, StoreClass | InvalidResource],
                           claims: Sequence[ClaimRef], registry: BackendRegistry, secrets: Secrets,
                           report: migration.Report = no_report, *, namespaces: NamespaceLabels,
                           check_credentials: bool = False, migration_batch: int = 500) -> Outcome:
    """`report` writes status while a long step (a migration) runs; the returned Outcome is the final word.

    `check_credentials`: log in with the Secret's password first, and give the role that password when it no
    longer works (someone edited the Secret, or the role's password, by hand).
    """
    meta = body["metadata"]
    generation = meta.get("generation", 0)
    current = body.get("status") or {}
    made_in: str | None = None  # the class whose backends this reconcile started to change
    move: migration.Move | None = None
    restored: export.Restored | None = None
    relational_moved = False
    class_moved: classmoves.Moved | None = None
    move_stopped: MoveFreezeExceeded | None = None  # a move to another class that waits for a person
    live = dict(current)  # status as the reports of a long step left it
    reported = False

    async def tracked(changes: dict[str, Any]) -> None:
        nonlocal reported
        await report(changes)
        live.update(changes)
        reported = True

    try:
        spec = TenantStoreSpec.from_body(body)
        try:
            class_moved = await classmoves.converge(
                body, spec, registry, secrets, tracked, resolve=lambda name: resolve_store_class(name, classes),
                admit=lambda store_class: check_admitted(store_class, meta["namespace"], namespaces,
                                                         provisioned=False),
                secret_for=lambda relational, vectors, password, extras: secret_data(spec, relational, vectors,
                                                                                     password, extras))
        except MoveFreezeExceeded as stopped:
            move_stopped = stopped  # the tenant goes on in its class, kept as its spec says there
        if class_moved is not None or reported:
            # The ordinary reconcile goes on from the status the move left, in the class the tenant lives in now.
            current = live = class_moved.status if class_moved is not None else live
            body = {**body, "status": current}
        # The class it was made in, once recorded: moving the default annotation never moves a tenant.
        store_class = resolve_store_class(current.get("storeClassName") or spec.store_class_name, classes)
        await check_admitted(store_class, meta["namespace"], namespaces, provisioned=bool(current.get("relational")))
        check_claim(spec.tenant_id, claim_ref(body), claims)
        verdict, writes_blocked = classmoves.write_verdict(spec, store_class, current)
        store = desired_store(spec, store_class, meta["uid"], f"{meta['namespace']}/{meta['name']}",
                              writes_allowed=not writes_blocked)
        store.check_connection_shares()
        backends = await registry.for_class(store_class)
        tracing.annotate({"gen_ai.provider.name": backends.vector.backend})
        if not current.get("storeClassName"):
            # Everything that can be checked is checked before anything is made.
            await registry.require_ready(store_class, backends)

        with tracing.backend_call("kubernetes", "read_secret"):
            current_secret = await secrets.read_tenant_secret(meta["namespace"], spec.secret_name, body)
        password = password_in(current_secret)
        password_is_new = password is None
        if check_credentials and password and not store.suspended:
            password_is_new = await backends.relational.credentials_work(store, password) is False
        made_in = store_class.name
        relational_move = relational_moves.pending(store, current)
        recorded_vectors = VectorPlacement.from_status(current.get("vectorStore"))
        if relational_move is not None and relational_move.state == relational_moves.COPYING:
            await relational_moves.check_movable(backends.relational, relational_move, recorded_vectors,
                                                 backends.vector.backend)
        with tracing.backend_call("postgres", "ensure"):
            relational, steps = await backends.relational.ensure(store, password or (password := new_password()),
                                                                  password_is_new)
        scoped = credentials.may_exist(store.credentials, current)
        if scoped:
            logins = await credentials.plan(store, body, secrets, datetime.datetime.now(datetime.UTC))
            with tracing.backend_call("postgres", "ensure_credentials"):
                steps += await backends.relational.ensure_credentials(store, logins.logins)
            steps += logins.steps
        if (given_up := relational_moves.abandoned(store, current)) is not None:
            steps += await backends.relational.drop_data(given_up)
            await report({"relationalMigration": None})
        if relational_move is not None and relational_move.state == relational_moves.COPYING:
            with tracing.backend_call("postgres", "migrate"):
                steps += await relational_moves.copy(backends.relational, relational_move, recorded_vectors,
                                                     backends.vector.backend, settings.current().export_dir, report)
                steps += await backends.relational.ensure_write_access(store)  # loaded as the tenant: a Block holds
        # The vectors' source sits where the relational data was made (a dedicated pgvector table lives there).
        move = migration.pending_move(store, current, relational_move.source.relational if relational_move
                                      and relational_move.state == relational_moves.COPYING else None)
        with tracing.backend_call(backends.vector.backend, "migrate" if move else "ensure"):
            if move is None:
                vector, vector_steps = await backends.vector.ensure(store)
            else:
                vector, vector_steps = await run_move(backends.vector, store, move, report, current, generation,
                                                      migration_batch,
                                                      lambda placement: secrets.apply_tenant_secret(
                                                          meta["namespace"], spec.secret_name, body,
                                                          secret_data(spec, relational, placement, password,
                                                                      backends.secret_extras),
                                                          writes_blocked=writes_blocked))
        tracing.annotate({"gen_ai.memory.namespace": vector.namespace or vector.index})
        steps += vector_steps
        global_placement, global_steps = await readable_global_index(backends.vector, store, store_class)
        steps += global_steps
        if move is not None and store.has_readers:  # the moved vectors' new home: readers may read it too
            steps += (await backends.vector.ensure(store))[1]
        if any(step.reason == NAMESPACE_CREATED for step in vector_steps):
            steps += await probe_isolation(backends.vector, store, vector)
        if spec.restore_from is not None and not current.get("restore"):
            # Before the Secret exists: the tenant's workloads never see a half-restored store.
            with tracing.backend_call(backends.vector.backend, "restore"):
                async with destinations.opened(spec.restore_from, meta["namespace"], settings.current().export_dir,
                                               secrets.data) as source:
                    restored = await export.restore_tenant(store, vector, backends.relational, backends.vector,
                                                           source)
            steps.append(Step(Reason.RESTORED, f"restored from {restored.source}: {restored.tables} tables "
                                               f"({restored.rows} rows) and {restored.vectors} vectors, verified"))
        with tracing.backend_call("kubernetes", "apply_secret"):
            written = await secrets.apply_tenant_secret(meta["namespace"], spec.secret_name, body,
                                                        secret_data(spec, relational, vector, password,
                                                                    backends.secret_extras, global_placement),
                                                        writes_blocked=writes_blocked,
                                                        current=current_secret if move is None else NOT_READ)
        if written:
            steps.append(Step("SecretWritten", f"credentials written to Secret {spec.secret_name}"))
        if scoped:
            with tracing.backend_call("kubernetes", "apply_credential_secrets"):
                steps += await credentials.apply_secrets(
                    store, body, logins, lambda login, placement, secret_password: secret_data(
                        spec, login, placement, secret_password, backends.secret_extras, global_placement,
                        owner=False),
                    relational, vector, writes_blocked, secrets)
        if relational_move is not None:
            # The Secret names the target: record the switch before the source goes.
            await report({"isolation": {**(current.get("isolation") or {}), "relational": store.relational.value},
                          "relational": relational.to_status(),
                          "relationalMigration": relational_move.record(relational_moves.SOURCE_PENDING_DELETION)})
            steps += await relational_moves.finish(backends.relational, relational_move, settings.current().export_dir)
            await report({"relationalMigration": None})
            relational_moved = True
    except InvalidResource as error:
        return failed_outcome(current, generation, Reason.INVALID_SPEC, str(error), Phase.FAILED, retry_after=None)
    except ReconcileError as error:
        outcome = failed_outcome(live, generation, error.reason, str(error),
                                 PHASE_BY_REASON.get(error.reason, Phase.FAILED), error.retry_after,
                                 moving=move is not None)
        if made_in and not current.get("storeClassName"):
            outcome.status["storeClassName"] = made_in  # something may exist there now: teardown must look
        outcome.warning = error
        return outcome

    migrated = [Condition(ConditionType.MIGRATING, False, Reason.DONE, f"vectors live in {vector.index}, "
                                                                      f"tables in {relational_moves.describe(store)}")] \
        if move or relational_moved or conditions.find(current.get("conditions"), ConditionType.MIGRATING) else []
    status = converged_status(spec, store_class, store, relational, vector, verdict, generation,
                              current.get("conditions"), migrated,
                              hold=lambda updates: held_by(move_stopped, DATA_LOSS.hold(body, updates)))
    if restored is not None:
        status["restore"] = restored.to_status()
    if scoped:
        status["credentials"] = logins.status(store)
        logins.count_rotations(body)
    if move is not None or relational_moved or reported:
        # Status was written while the move ran, so the body's copy is stale: state the end result in full.
        await report(status)
    return Outcome(status=status, events=[*(class_moved.steps if class_moved else []), *steps],
                   warning=move_stopped)


def held_by(stopped: ReconcileError | None, updates: list[Condition]) -> list[Condition]:
    """A store in place whose spec asks for what only a person can unblock: Ready=False and Stalled=True."""
    if stopped is None:
        return updates
    kept = [update for update in updates if update.type not in (ConditionType.READY, ConditionType.STALLED)]
    return [*kept, Condition(ConditionType.READY, False, stopped.reason, str(stopped)),
            Condition(ConditionType.STALLED, True, stopped.reason, str(stopped))]


def converged_status(spec: TenantStoreSpec, store_class: StoreClass, store: DesiredStore,
                     relational: RelationalPlacement, vector: VectorPlacement, verdict: Verdict, generation: int,
                     previous_conditions: Sequence[Mapping[str, Any]] | None = None,
                     extra_conditions: Sequence[Condition] = (),
                     hold: Callable[[list[Condition]], list[Condition]] = lambda updates: updates) -> dict[str, Any]:
    """The status of a tenant whose backends are in place (Ready, or Suspended).

    `hold` may keep Ready False for a reason only a person can clear (an unacknowledged data loss).
    """
    phase = Phase.SUSPENDED if spec.suspended else Phase.READY
    ready = Condition(ConditionType.READY, True, Reason.PROVISIONED, ready_message(store, relational, vector)) \
        if not spec.suspended else Condition(ConditionType.READY, False, Reason.SUSPENDED,
                                             "the tenant is suspended: its role cannot log in; data is kept")
    return {
        "phase": phase.value,
        "observedGeneration": generation,
        "conditions": conditions.merge_conditions(
            previous_conditions, hold([ready, verdict.condition(), capped_condition(spec, store),
                                       *stalled_condition(previous_conditions, None), *extra_conditions]),
            generation),
        "storeClassName": store_class.name,
        "observedStoreClassGeneration": store_class.generation,
        "isolation": {"relational": store.relational.value, "vector": store.vector.value},
        "relational": relational.to_status(),
        "vectorStore": vector.to_status(),
        "secretName": spec.secret_name,
        "quotas": store.quotas.to_status(),
    }


async def run_move(vectors: VectorStore, store: DesiredStore, move: migration.Move, report: migration.Report,
                   status: Mapping[str, Any], generation: int, batch_size: int,
                   write_secret: Callable[[VectorPlacement], Awaitable[bool]]) -> tuple[VectorPlacement, list[Step]]:
    """Move, cut over (credentials, then status), delete the source, then let the tenant write again."""
    steps: list[Step] = []
    if (status.get("migration") or {}).get("state") != migration.SOURCE_PENDING_DELETION:
        await report({"phase": Phase.MIGRATING.value, "conditions": conditions.merge_conditions(
            status.get("conditions"), [Condition(ConditionType.MIGRATING, True, Reason.COPYING,
                                                 f"moving vectors from {move.source.vector.value} to "
                                                 f"{move.target.vector.value} isolation")], generation)})
        target, steps = await migration.move_vectors(vectors, move, report, batch_size)
        await write_secret(target)
        old = status.get("vectorStore") or {}
        await report({"vectorStore": {**{key: None for key in old}, **target.to_status()},  # merge patch: drop old keys
                      "isolation": {**(status.get("isolation") or {}), "vector": store.vector.value},
                      "migration": move.record(migration.SOURCE_PENDING_DELETION)})
    steps += await migration.finish(vectors, move)
    await report({"migration": None})
    placement, ensure_steps = await vectors.ensure(store)  # writes back on, on the target
    return placement, steps + ensure_steps


async def probe_isolation(vectors: VectorStore, store: DesiredStore, placement: VectorPlacement) -> list[Step]:
    """Once, when a tenant joins a shared index: look through its eyes and make sure it sees only its own rows."""
    with tracing.child_span(tracing.span_name(tracing.SEARCH, store.tenant_store), {
            "gen_ai.operation.name": tracing.SEARCH, "gen_ai.provider.name": vectors.backend,
            "gen_ai.memory.store.id": store.tenant_id, "gen_ai.memory.store.name": store.tenant_store,
            "gen_ai.memory.namespace": placement.namespace, "gen_ai.memory.scope": "tenant",
            "gen_ai.memory.type": "long_term", "tenancy.tenant_id": store.tenant_id}, kind=tracing.SpanKind.CLIENT):
        problem = await vectors.probe_isolation(store, placement)
    if problem:
        raise IsolationBroken(problem)
    return [Step("IsolationVerified", f"as {store.role}, shared index {placement.index} shows only namespace "
                                      f"{placement.namespace}")]


def capped_condition(spec: TenantStoreSpec, store: DesiredStore) -> Condition:
    if not store.quotas_capped:
        return Condition(ConditionType.QUOTAS_CAPPED, False, Reason.WITHIN_CEILINGS,
                         "spec.quotas is within the tier's ceilings")
    fields = ", ".join(f"spec.quotas.{name}" for name in store.quotas_capped)
    return Condition(ConditionType.QUOTAS_CAPPED, True, Reason.ABOVE_TIER_CEILING,
                     f"{fields} asks for more than the {spec.tier.value} tier allows; the tier's ceiling applies "
                     f"(see status.quotas)")


def ready_message(store: DesiredStore, relational: RelationalPlacement, vector: VectorPlacement) -> str:
    where = f"schema {relational.schema} in database {relational.database}" \
        if store.relational is RelationalIsolation.SCHEMA else f"database {relational.database}"
    vectors = f"namespace {vector.namespace} of shared index {vector.index}" \
        if store.vector is VectorIsolation.NAMESPACE else f"dedicated index {vector.index}"
    return f"role {relational.role}, {where}, {vectors} ({vector.backend})"


def failed_outcome(current: Mapping[str, Any], generation: int, reason: str, message: str, phase: Phase,
                   retry_after: float | None, moving: bool = False) -> Outcome:
    """Ready=False for `reason`. `moving`: a vector move is under way and goes on at the retry (its own
    reports wrote status meanwhile, so the body's copy is stale: the move's phase and condition are restated)."""
    ready = Condition(ConditionType.READY, False, reason, message)
    updates = [ready, *stalled_condition(current.get("conditions"), reason, message)]
    if moving:
        phase = Phase.MIGRATING
        updates.append(Condition(ConditionType.MIGRATING, True, Reason.COPYING, f"the move is retried: {message}"))
    status = {
        "phase": current.get("phase") if not moving and reason in KEEPS_PHASE and current.get("phase") in
        (Phase.READY, Phase.SUSPENDED) else phase.value,
        "observedGeneration": generation,
        "conditions": conditions.merge_conditions(current.get("conditions"), updates, generation),
    }
    return Outcome(status=status, events=[], retry_after=retry_after)


def stalled_condition(previous: Sequence[Mapping[str, Any]] | None, reason: str | None,
                      message: str = "") -> list[Condition]:
    """Stalled=True on a terminal failure; False once it is over (absent on tenants that never stalled)."""
    if reason in TERMINAL_REASONS:
        return [Condition(ConditionType.STALLED, True, reason, message)]
    if conditions.find(previous, ConditionType.STALLED) is not None:
        return [Condition(ConditionType.STALLED, False, Reason.PROGRESSING if reason else Reason.CONVERGED,
                          "nothing waits for a person" if reason else "the tenant's store is as its spec says")]
    return []


def claim_ref(body: Mapping[str, Any]) -> ClaimRef:
    meta = body["metadata"]
    return ClaimRef(created=meta.get("creationTimestamp", ""), uid=meta["uid"], namespace=meta.get("namespace", ""),
                    name=meta["name"], provisioned=bool((body.get("status") or {}).get("relational")))


def vector_isolations(store: DesiredStore, status: Mapping[str, Any]) -> list[VectorIsolation]:
    """The vector isolations that may hold the tenant's vectors: its own, and both sides of a move under way."""
    moving = status.get("migration") or {}
    found = [store.vector, *(VectorIsolation(moving[side]) for side in ("from", "to") if moving.get(side))]
    return list(dict.fromkeys(found))


def store_as_provisioned(spec: TenantStoreSpec, store_class: StoreClass, body: Mapping[str, Any]) -> DesiredStore:
    """What teardown must remove: the isolation recorded in status (what was made), else what the spec asks."""
    meta = body["metadata"]
    store = desired_store(spec, store_class, meta["uid"], f"{meta.get('namespace')}/{meta['name']}")
    recorded = (body.get("status") or {}).get("isolation") or {}
    return dataclasses.replace(
        store,
        relational=RelationalIsolation(recorded.get("relational", store.relational)),
        vector=VectorIsolation(recorded.get("vector", store.vector)),
    )


async def teardown_tenant(body: Mapping[str, Any], classes: Mapping[str, StoreClass | InvalidResource],
                          registry: BackendRegistry, secrets: Secrets) -> Outcome:
    """The finalizer's work. Raises ReconcileError (the finalizer stays) until everything is verifiably gone."""
    meta, current = body["metadata"], body.get("status") or {}
    namespace = meta["namespace"]
    try:
        spec = TenantStoreSpec.from_body(body)
    except InvalidResource:
        return Outcome(status={}, events=[])  # nothing can have been made for a spec we never accepted
    if not (current.get("relational") or current.get("storeClassName")):
        # No reconcile ever reached a backend (each records the class first): there is nothing to remove,
        # whatever state the class, its Secrets or its namespace rules are in now.
        return Outcome(status={}, events=[])
    store_class = resolve_store_class(current.get("storeClassName") or spec.store_class_name, classes)
    store = store_as_provisioned(spec, store_class, body)
    backends = await registry.for_class(store_class)
    events: list[Step] = []

    # Deleted in the middle of a move between classes: the other class's side goes first.
    events += await classmoves.remove_other_side(body, spec, registry,
                                                 lambda name: resolve_store_class(name, classes))
    holder = await backends.relational.claimed_by(store)
    if holder is not None and holder != store.uid:
        # Someone else's tenant (we lost a tenantId conflict): touch nothing of theirs.
        if await secrets.delete_tenant_secret(namespace, spec.secret_name, body) is not SecretDeletion.ABSENT:
            events.append(Step("SecretDeleted", f"Secret {spec.secret_name} deleted"))
        return Outcome(status={}, events=events)

    if spec.deletion_policy is DeletionPolicy.RETAIN:
        events += await backends.relational.release(store)
        if await secrets.release_tenant_secret(namespace, spec.secret_name, body):
            events.append(Step("SecretRetained", f"Secret {spec.secret_name} kept (owner reference removed)"))
        return Outcome(status={}, events=events)

    # Deleted in the middle of a tier change: both sides of the move hold vectors of the tenant.
    vector_sides = [dataclasses.replace(store, vector=isolation) for isolation in vector_isolations(store, current)]
    with tracing.backend_call(backends.vector.backend, "teardown"):
        for side in vector_sides:
            events += await backends.vector.teardown(side)
    with tracing.backend_call("postgres", "teardown"):
        if (moving := relational_moves.other_side(store, current)) is not None:
            events += await backends.relational.drop_data(moving)  # deleted in the middle of a move
        events += await backends.relational.teardown(store)
    secret_deletion = await secrets.delete_tenant_secret(namespace, spec.secret_name, body)
    if secret_deletion is not SecretDeletion.ABSENT:
        events.append(Step("SecretDeleted", f"Secret {spec.secret_name} deleted"))
    pending_secrets = [spec.secret_name] if secret_deletion is SecretDeletion.PENDING else []
    # A LIST by label makes the API server go through every Secret of the namespace (thousands, in a busy one):
    # only a tenant that can have a credential Secret pays for it.
    scoped = credentials.may_exist(spec.credentials, current)
    for name in sorted(await secrets.credential_secrets(namespace, body) if scoped else ()):
        deletion = await secrets.delete_tenant_secret(namespace, name, body)
        if deletion is not SecretDeletion.ABSENT:
            events.append(Step("SecretDeleted", f"Secret {name} deleted"))
        if deletion is SecretDeletion.PENDING:
            pending_secrets.append(name)
    residue = [left for side in vector_sides for left in await backends.vector.residue(side)]
    residue += await backends.relational.residue(store)
    if moving is not None:
        residue += [left for left in await backends.relational.residue(moving) if not left.startswith("role ")]
    residue += [f"Secret {name}" for name in pending_secrets]
    if residue:
        raise BackendUnavailable(f"teardown incomplete, still present: {', '.join(residue)}")
    events.append(Step("TeardownVerified", f"nothing of tenant {store.tenant_id} remains: role, "
                                           f"{store.relational.value}, vectors and Secret are gone"))
    return Outcome(status={}, events=events)
