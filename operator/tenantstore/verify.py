"""The periodic check that provisioned tenants are still as the operator made them.

Once per `--verify-interval`, per StoreClass: every provisioned tenant is checked against its backends in
a few batched queries (role, login, schema or database, partition or table, policy, grants), its Secret
against the role (a login with the Secret's password), and each shared index through one of its tenants'
eyes (the isolation canary, a different tenant each pass). What it finds becomes a Ready=False reason of
its own; under `driftPolicy: Repair` the tenant then goes through the one reconcile path, which makes
what is missing again. Nothing found, nothing written.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from tenantstore import conditions, cost
from tenantstore.api import DRIFT_REASONS, ConditionType, Phase, Reason
from tenantstore.backends import Drift, VectorPlacement
from tenantstore.errors import BackendUnavailable, ReconcileError, SessionEnded
from tenantstore.models import DesiredStore, GlobalIndex, InvalidResource, StoreClass, TenantStoreSpec
from tenantstore.reconcile import DATA_LOSS, store_as_provisioned
from tenantstore.registry import Backends, BackendRegistry

logger = logging.getLogger(__name__)

# Logins that check tenants' Secrets at once: each costs the server a SCRAM exchange.
LOGIN_CONCURRENCY = 8


@dataclasses.dataclass(frozen=True)
class Checked:
    """One provisioned tenant after a pass: what is wrong with it (nothing, when all is as made)."""

    body: Mapping[str, Any]
    drifts: tuple[Drift, ...] = ()
    isolation: str | None = None  # what the canary saw through this tenant's eyes, when it was broken

    @property
    def data_lost(self) -> list[Drift]:
        """What went with the tenant's data: a store that held something when last measured, gone (re-made, it is
        empty). Each store by its own figure: a schema by its tables' bytes, a namespace or index by its
        documents; a whole database always counts."""
        usage = (self.body.get("status") or {}).get("usage") or {}
        relational = usage.get("relationalStorageBytes", usage.get("storageBytes", 0))

        def held(drift: Drift) -> bool:
            if drift.kind == Reason.DATABASE_MISSING:
                return True
            return bool(relational if drift.kind == Reason.SCHEMA_MISSING else usage.get("documents"))
        return [drift for drift in self.drifts if drift.holds_data and held(drift)]


@dataclasses.dataclass(frozen=True)
class ClassPass:
    checked: list[Checked]
    outage: ReconcileError | None = None
    # Postgres refused the class's admin password (a rotation half done: the password changed, the Secret not
    # yet): the operator's credential is wrong, which says nothing about the tenants' stores.
    admin_login_refused: bool = False
    shared_credential: str | None = None  # what the class hands every tenant beyond its own store (its choice)

    @property
    def reached_backends(self) -> bool:
        """Whether the pass talked to the class's backends at all (a class without tenants does not)."""
        return bool(self.checked) and self.outage is None


def verifiable(tenants: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Tenants the operator made and is not busy with: provisioned, not being deleted, not moving vectors."""
    found = []
    for body in tenants:
        status = body.get("status") or {}
        if body["metadata"].get("deletionTimestamp") or status.get("migration") or status.get("relationalMigration") \
                or not status.get("relational"):
            continue
        if status.get("phase") not in (Phase.READY, Phase.SUSPENDED):
            continue
        if VectorPlacement.from_status(status.get("vectorStore")) is not None:
            found.append(body)
    return found


def writes_allowed(body: Mapping[str, Any]) -> bool:
    quota = conditions.find((body.get("status") or {}).get("conditions"), ConditionType.QUOTA_EXCEEDED) or {}
    return quota.get("reason") != Reason.WRITES_BLOCKED and not cost.budget_blocks_writes(body.get("status"))


async def check_class(store_class: StoreClass, tenants: Sequence[Mapping[str, Any]], registry: BackendRegistry,
                      passwords: Mapping[tuple[str, str], str | None], canary_turn: int | None) -> ClassPass:
    """One pass over a class's provisioned tenants; an outage is reported, not raised.

    `canary_turn` picks which tenant of each shared index looks through it (None: no canary this time).
    """
    parsed: list[tuple[Mapping[str, Any], TenantStoreSpec, DesiredStore, VectorPlacement]] = []
    for body in verifiable(tenants):
        try:
            spec = TenantStoreSpec.from_body(body)
        except InvalidResource:
            continue
        store = dataclasses.replace(store_as_provisioned(spec, store_class, body), writes_allowed=writes_allowed(body))
        placement = VectorPlacement.from_status(body["status"]["vectorStore"])
        assert placement is not None
        parsed.append((body, spec, store, placement))
    if not parsed:
        return ClassPass(checked=[])
    for attempt in (1, 2):
        backends: Backends | None = None
        try:
            backends = await registry.for_class(store_class)
            relational = await backends.relational.verify([store for _, _, store, _ in parsed])
            vector = await backends.vector.verify([(store, placement) for _, _, store, placement in parsed])
            global_reads = await check_global_reads(backends, store_class, [store for _, _, store, _ in parsed])
            secrets = await check_secrets(backends, parsed, passwords, relational)
            canary = {} if canary_turn is None else await probe_shared_indexes(backends, parsed, canary_turn)
            break
        except ReconcileError as error:
            refused = backends is not None and backends.server.login_refused
            if attempt == 1 and (refused or isinstance(error, SessionEnded)):
                # Once more: the class's Secret may hold a rotated password by now (it is read again), or the
                # server ended the pass's sessions (a terminated backend, a failover) without being down. Neither
                # is an outage to tell the tenants of unless it happens again on fresh connections.
                continue
            return ClassPass(checked=[], outage=error, admin_login_refused=refused)
    checked = []
    for body, _, store, _ in parsed:
        drifts = (*relational.get(store.tenant_id, ()), *vector.get(store.tenant_id, ()),
                  *global_reads.get(store.tenant_id, ()), *secrets.get(store.tenant_id, ()))
        checked.append(Checked(body=body, drifts=drifts, isolation=canary.get(store.tenant_id)))
    return ClassPass(checked=checked, shared_credential=backends.vector.shared_credential())


async def check_global_reads(backends: Backends, store_class: StoreClass, stores: Sequence[DesiredStore]
                             ) -> dict[str, list[Drift]]:
    """Tenants of a class with a global index of their shape: still able to read it (one query per index)."""
    by_index: dict[GlobalIndex, list[DesiredStore]] = {}
    for store in stores:
        if (index := store_class.global_index_for(store.dimension, store.metric)) is not None:
            by_index.setdefault(index, []).append(store)
    found: dict[str, list[Drift]] = {}
    for index, members in by_index.items():
        for tenant_id, drifts in (await backends.vector.verify_global(index, members)).items():
            found.setdefault(tenant_id, []).extend(drifts)
    return found


async def check_secrets(backends: Backends, parsed: Sequence[tuple[Mapping[str, Any], TenantStoreSpec, DesiredStore,
                                                                   VectorPlacement]],
                        passwords: Mapping[tuple[str, str], str | None],
                        relational: Mapping[str, Sequence[Drift]]) -> dict[str, list[Drift]]:
    """Each tenant's Secret: present (the operator's index of its Secrets), and its password the role's."""
    found: dict[str, list[Drift]] = {}
    logins = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def check(body: Mapping[str, Any], spec: TenantStoreSpec, store: DesiredStore) -> None:
        key = (body["metadata"]["namespace"], spec.secret_name)
        missing = [name for name in (spec.secret_name, *(c.secret_name for c in spec.credentials))
                   if (body["metadata"]["namespace"], name) not in passwords]
        if missing:
            found[store.tenant_id] = [Drift(Reason.SECRET_MISSING, f"Secret {', '.join(missing)} does not exist")]
            return
        password = passwords[key]
        if store.suspended or store.tenant_id in relational:
            return  # a role that may not log in (or is itself adrift) cannot vouch for its Secret now
        async with logins:
            works = await backends.relational.credentials_work(store, password) if password else False
        if works is False:
            found[store.tenant_id] = [Drift(Reason.CREDENTIALS_OUT_OF_SYNC, f"the password in Secret {spec.secret_name} "
                                                                     f"does not log in as {store.role}")]

    await asyncio.gather(*(check(body, spec, store) for body, spec, store, _ in parsed))
    return found


async def probe_shared_indexes(backends: Backends, parsed: Sequence[tuple[Mapping[str, Any], TenantStoreSpec,
                                                                         DesiredStore, VectorPlacement]],
                               turn: int) -> dict[str, str]:
    """Each shared index, looked at through one of its tenants (a different one each pass)."""
    by_index: dict[str, list[tuple[DesiredStore, VectorPlacement]]] = {}
    for _, _, store, placement in parsed:
        if placement.namespace and not store.suspended:
            by_index.setdefault(placement.index, []).append((store, placement))
    problems: dict[str, str] = {}
    for index, members in sorted(by_index.items()):
        members.sort(key=lambda member: member[0].tenant_id)
        store, placement = members[turn % len(members)]
        try:
            problem = await backends.vector.probe_isolation(store, placement)
        except BackendUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 (a probe that cannot run says nothing about isolation)
            logger.warning("isolation canary of %s through %s could not run: %s", index, store.tenant_id, error)
            continue
        if problem:
            problems[store.tenant_id] = problem
    return problems


def drift_status(body: Mapping[str, Any], drifts: Sequence[Drift]) -> dict[str, Any]:
    """Report: Ready=False with the first drift's reason; the tenant keeps its phase (its data may be there)."""
    status = body.get("status") or {}
    message = "; ".join(drift.message for drift in drifts) + " (driftPolicy Report: repair it, or set Repair)"
    return {"conditions": conditions.merge_conditions(status.get("conditions"),
                                                      [conditions.Condition(ConditionType.READY, False, drifts[0].kind, message)],
                                                      body["metadata"].get("generation", 0))}


def isolation_status(body: Mapping[str, Any], problem: str) -> dict[str, Any]:
    status = body.get("status") or {}
    reason = Reason.ISOLATION_BROKEN
    return {"conditions": conditions.merge_conditions(
        status.get("conditions"), [conditions.Condition(ConditionType.READY, False, reason, problem),
                                   conditions.Condition(ConditionType.STALLED, True, reason, problem)],
        body["metadata"].get("generation", 0))}


def data_loss_status(body: Mapping[str, Any], lost: Sequence[Drift]) -> dict[str, Any]:
    """DataLost=True until someone acknowledges it by annotating the TenantStore with the loss's time."""
    status = body.get("status") or {}
    usage = status.get("usage") or {}
    message = (f"{'; '.join(drift.message for drift in lost)}: the data went with it (last measured "
               f"{usage.get('documents', 0)} documents, {usage.get('storageBytes', 0)} bytes) and what is re-made "
               f"is empty")
    merged = conditions.merge_conditions(
        status.get("conditions"), [conditions.Condition(DATA_LOSS.condition, True, lost[0].kind, message)],
        body["metadata"].get("generation", 0))
    for condition in merged:
        if condition["type"] == DATA_LOSS.condition:
            condition["message"] += (f". Acknowledge with: kubectl annotate tenantstore {body['metadata']['name']} "
                                     f"{DATA_LOSS.annotation}={condition['lastTransitionTime']} --overwrite")
    return {"conditions": merged}


def needs_recovery(checked: Checked) -> bool:
    """Nothing is wrong now, but the status still says something was: reconcile it back to the truth."""
    status = checked.body.get("status") or {}
    ready = conditions.find(status.get("conditions"), ConditionType.READY) or {}
    if ready.get("reason") in DRIFT_REASONS or ready.get("reason") in (Reason.BACKEND_UNAVAILABLE,
                                                                       Reason.ISOLATION_BROKEN):
        return True
    return DATA_LOSS.acknowledged(checked.body)


Reconcile = Callable[[Mapping[str, Any], bool], Awaitable[Any]]
