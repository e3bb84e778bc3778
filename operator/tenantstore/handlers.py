"""Kopf registrations only: each handler turns an event into one reconcile and writes what it returns."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import datetime
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import kopf

from tenantstore import (audit, conditions, cost, events, exports, fleet, kopf_fixes, kube, metrics, reconcile, redaction,
                         retention, settings, shard_reports, sharding, slo, tracing, verify)
from tenantstore.errors import IsolationBroken, ReconcileError
from tenantstore.api import (CREDENTIAL_LABEL, DATA_LOSS_ACKNOWLEDGED_ANNOTATION, FINALIZER, GROUP, MANAGED_BY,
                             MANAGED_BY_LABEL, VERSION, ConditionType, ExportPhase, Phase, Reason)
from tenantstore.models import DriftPolicy, InvalidResource, StoreClass, parse_store_class
from tenantstore.reconcile import ClaimRef, Outcome
from tenantstore.registry import BackendRegistry
from tenantstore.storeclass import global_store, pool_figures, readiness, readiness_status

logger = logging.getLogger(__name__)

STORECLASSES = (GROUP, VERSION, "storeclasses")
TENANTSTORES = (GROUP, VERSION, "tenantstores")
EXPORTS = (GROUP, VERSION, "tenantstoreexports")
# Timer intervals are taken when the handlers register: the settings the CLI made before importing this module.
SETTINGS = settings.current()
# The operator's own tenant Secrets: watched (an index and events) by this label only.
TENANT_SECRETS = {"labels": {MANAGED_BY_LABEL: MANAGED_BY}}


Params = ParamSpec("Params")
Result = TypeVar("Result")


class RedactedError(Exception):
    """An unexpected error from a handler, with its message redacted before Kopf sees it."""


def redacted_errors(handler: Callable[Params, Awaitable[Result]]) -> Callable[Params, Awaitable[Result]]:
    """Kopf logs a failing handler's exception, posts it as an Event and keeps its message in the object's
    progress annotation, where no log filter reaches: an error that escapes carries only a redacted message
    (the original stays chained, for the log's traceback, which the log filter redacts)."""
    @functools.wraps(handler)  # the handler's name is its id in Kopf's progress annotations
    async def run(*args: Params.args, **kwargs: Params.kwargs) -> Result:
        try:
            return await handler(*args, **kwargs)
        except (kopf.TemporaryError, kopf.PermanentError):
            raise  # their messages are ours, already redacted
        except Exception as error:
            raise RedactedError(redaction.redact(f"{type(error).__name__}: {error}")) from error
    return run


def ends_with_its_timer(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A timer's pass is cancelled when Kopf stops the timer (the operator stopping, the class deleted), instead
    of going on orphaned: with --shards a Kopf run ends whenever its shards change, and nothing of it may go on
    working on tenants given back, nor read the backends closed by the run's cleanup as an outage."""
    @functools.wraps(handler)
    async def run(*args: Any, stopped: kopf.DaemonStopped | None = None, **kwargs: Any) -> None:
        if stopped is None:  # called as a plain handler (create, update, resume), not as a timer
            return await handler(*args, **kwargs)
        work = asyncio.ensure_future(handler(*args, stopped=stopped, **kwargs))
        stopping = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if not work.cancelled():
            work.result()
    return run


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.tenancy.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.tenancy.dev", key="last-handled-configuration")
    settings.watching.server_timeout = 300
    # A deleted StoreClass waits for its running timers to finish; Kopf checks on them every minute by default.
    settings.background.cancellation_polling = 1.0
    # How long a stopping operator waits for a timer's pass to end (they end at once: `ends_with_its_timer`).
    settings.background.instant_exit_timeout = 10.0
    redaction.install_log_filter()  # again here, for operators not started by `tenantstore run`
    memo.api = await kube.api_client()
    memo.secrets = kube.Secrets(memo.api)
    memo.namespaces = kube.Namespaces(memo.api)
    memo.statuses = kube.TenantStatuses(memo.api)
    memo.exports = kube.TenantStatuses(memo.api, "tenantstoreexports")
    memo.class_statuses = kube.StoreClassStatuses(memo.api)
    memo.backends = BackendRegistry(memo.secrets)
    memo.audit = audit.AuditTrail(memo.backends)
    events.audit_to(memo.audit)
    kopf_fixes.wake_waiters_only_on_change()  # before the watchers start listing objects
    memo.settings = SETTINGS
    memo.reconciles = asyncio.Semaphore(SETTINGS.max_concurrent_reconciles)
    memo.canary_turns = collections.Counter()
    memo.probe_passes = {}  # StoreClass name -> slo.ProbePass (where its search probes go on from)
    memo.tenant_locks = collections.defaultdict(asyncio.Lock)  # one reconcile at a time per tenant (by uid)
    # The shards this run holds (all of them without --shards): Kopf only shows it their objects.
    memo.shards = sharding.current_view()
    metrics.SERIES.forget_tenants()  # a previous run in this process may have held other shards


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.audit.close()
    events.audit_to(None)
    await memo.backends.close()
    await memo.api.close()


# Index and event handlers are coroutines (they never block): Kopf runs sync handlers in its thread pool,
# a thread hop per handler per watch event, which cost ~15 % of the operator's CPU at 1,000 tenants.
@kopf.index(*STORECLASSES)
async def store_class_index(body: kopf.Body, name: str, memo: kopf.Memo,
                            **_: Any) -> dict[str, StoreClass | InvalidResource]:
    store_class = parse_store_class(body)
    if isinstance(store_class, StoreClass):
        memo.audit.know(store_class)  # where each class's audit rows go, also after the class is deleted
    return {name: store_class}


@kopf.index(*TENANTSTORES)
async def tenant_id_index(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[str, ClaimRef]:
    return {spec.get("tenantId", ""): reconcile.claim_ref(body)}


@kopf.index(*TENANTSTORES)
async def tenants_by_class(body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                           **_: Any) -> dict[str, dict[str, Any]]:
    """Tenants per StoreClass (the one they were provisioned with, else the one they name; "" for the default)."""
    store_class = status.get("storeClassName") or spec.get("storeClassName") or ""
    return {store_class: tenant_snapshot(body)}


# What the usage job and its reconciles read of a tenant. Not the whole body: managedFields alone were over
# half of it, and the index holds every TenantStore (~45 KB each as Python objects before this).
SNAPSHOT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                     "deletionTimestamp")


def tenant_snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    # Of the annotations only the one the verification pass reads: a person's acknowledgement of a data loss.
    acknowledged = {key: value for key, value in (metadata.get("annotations") or {}).items()
                    if key == DATA_LOSS_ACKNOWLEDGED_ANNOTATION}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {**{key: metadata[key] for key in SNAPSHOT_METADATA if key in metadata},
                         **({"annotations": acknowledged} if acknowledged else {})},
            "spec": copy.deepcopy(body.get("spec")), "status": copy.deepcopy(body.get("status"))}


def latest_classes(index: kopf.Index[str, Any]) -> dict[str, StoreClass | InvalidResource]:
    return {name: next(iter(store), None) for name, store in index.items() if store}


@kopf.index("", "v1", "secrets", **TENANT_SECRETS)
async def tenant_secrets(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], str | None]:
    """The password in each tenant Secret, so verification checks Secrets without reading them."""
    return {(namespace, name): kube.password_in_data(body.get("data"))}


@kopf.on.resume(*TENANTSTORES)
@kopf.on.create(*TENANTSTORES)
@kopf.on.update(*TENANTSTORES, field="spec")
@kopf.on.update(*TENANTSTORES, field="metadata.annotations")  # e.g. rotate.tenancy.dev/<credential>
async def reconcile_tenantstore(body: kopf.Body, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch,
                                memo: kopf.Memo, reason: kopf.Reason, store_class_index: kopf.Index[str, Any],
                                tenant_id_index: kopf.Index[str, ClaimRef], **_: Any) -> None:
    if reason == kopf.Reason.RESUME and is_converged(meta, status):
        return  # a restart must not touch the backends of tenants that need nothing
    operation = tracing.CREATE if reason == kopf.Reason.CREATE else tracing.UPDATE
    write(body, patch, await reconcile_through(memo, body, latest_classes(store_class_index), tenant_id_index,
                                               operation))


async def reconcile_through(memo: kopf.Memo, body: Mapping[str, Any], classes: Mapping[str, Any],
                            tenant_id_index: kopf.Index[str, ClaimRef], operation: str = tracing.UPDATE,
                            check_credentials: bool = False, held: bool = False) -> Outcome:
    """The one reconcile path: the handlers, the usage job, verification and repair all come through here,
    one at a time per tenant, under the same concurrency limit, with the same span and duration metric.

    `held`: the caller already holds the tenant's lock (see `current_tenant`).
    """
    uid = body["metadata"]["uid"]
    async with contextlib.nullcontext() if held else memo.tenant_locks[uid]:
        return await _reconcile(memo, body, classes, tenant_id_index, operation, check_credentials)


async def _reconcile(memo: kopf.Memo, body: Mapping[str, Any], classes: Mapping[str, Any],
                     tenant_id_index: kopf.Index[str, ClaimRef], operation: str, check_credentials: bool) -> Outcome:
    uid = body["metadata"]["uid"]
    others = [ref for ref in tenant_id_index.get((body.get("spec") or {}).get("tenantId", ""), ()) if ref.uid != uid]
    async with memo.reconciles, shard_logged(memo, body, "reconcile"):  # the wait is not part of the reconcile
        with tracing.lifecycle(operation, body) as span:
            outcome = await reconcile.reconcile_tenant(body, classes, others, memo.backends, memo.secrets,
                                                       report=status_reporter(memo, body), namespaces=memo.namespaces,
                                                       check_credentials=check_credentials,
                                                       migration_batch=memo.settings.migration_batch)
            if outcome.warning is not None:
                span.set_status(tracing.Status(tracing.StatusCode.ERROR, outcome.warning.reason))
            outcome.trace_id = audit.current_trace_id()
    return outcome


@contextlib.asynccontextmanager
async def shard_logged(memo: kopf.Memo, body: Mapping[str, Any], work: str) -> AsyncIterator[None]:
    """With --shards: which replica worked on which tenant, and when (the record that no two did at once)."""
    view: sharding.ShardView = memo.shards
    if not view.sharded:
        yield
        return
    what = f"{work} of {body['metadata'].get('namespace')}/{body['metadata']['name']}"
    shard = view.shard_of_tenant(body)
    if view.until_current is not None:
        await view.until_current(shard)  # nothing begins on a shard whose lease this replica may be losing
    logger.info("shard %d: %s began on %s", shard, what, view.identity)
    try:
        yield
    finally:
        logger.info("shard %d: %s ended on %s", shard, what, view.identity)


@contextlib.asynccontextmanager
async def current_tenant(memo: kopf.Memo, seen: Mapping[str, Any]) -> AsyncIterator[dict[str, Any] | None]:
    """The tenant as it is now, held against every other reconcile of it, when it is still as `seen` (a
    snapshot a periodic job judged): same spec, settled, made the same way. None when it is busy or has moved
    on since; the next run looks again. A job never acts on a stale view of a tenant that is changing."""
    lock = memo.tenant_locks[seen["metadata"]["uid"]]
    if lock.locked():
        yield None
        return
    async with lock:
        fresh = await memo.statuses.read(seen["metadata"]["namespace"], seen["metadata"]["name"])
        yield fresh if fresh is not None and unchanged_since(seen, fresh) else None


def unchanged_since(seen: Mapping[str, Any], fresh: Mapping[str, Any]) -> bool:
    status, before = fresh.get("status") or {}, seen.get("status") or {}
    return (fresh["metadata"].get("uid") == seen["metadata"].get("uid")
            and not fresh["metadata"].get("deletionTimestamp")
            and fresh["metadata"].get("generation") == seen["metadata"].get("generation")
            == status.get("observedGeneration")
            and not status.get("migration") and not status.get("relationalMigration")
            and all(status.get(key) == before.get(key) for key in ("phase", "relational", "vectorStore", "isolation")))


async def record(memo: kopf.Memo, body: Mapping[str, Any], outcome: Outcome, unless_changed: bool = False) -> None:
    """What `write` does for a Kopf handler, for reconciles started elsewhere (timers, Secret events).

    `unless_changed`: nothing is recorded if the object changed since `body` was read (a job not holding the
    tenant's lock; the next pass looks again)."""
    changes = outcome.status_patch(body.get("status"))
    if changes and unless_changed and not await memo.statuses.patch_unless_changed(body, changes):
        return
    events.post(outcome.about(body), outcome.events, actor=audit.OPERATOR_ACTOR, trace_id=outcome.trace_id)
    if outcome.warning is not None:
        metrics.RECONCILE_ERRORS.labels(outcome.warning.reason).inc()
        warn_on_transition(body, outcome)
    if changes and not unless_changed:
        await memo.statuses.patch(body, changes)


@kopf.on.delete(*TENANTSTORES)
@redacted_errors
async def delete_tenantstore(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo,
                             store_class_index: kopf.Index[str, Any], **_: Any) -> None:
    if await final_export_pending(body, patch, memo):
        return
    try:
        async with memo.tenant_locks[body["metadata"]["uid"]], memo.reconciles, shard_logged(memo, body, "teardown"):
            with tracing.lifecycle(tracing.DELETE, body):
                outcome = await reconcile.teardown_tenant(body, latest_classes(store_class_index), memo.backends,
                                                          memo.secrets)
                # Kubernetes does not record who deleted an object: the receipt names no actor.
                events.post(body, outcome.events, actor="")
        # The deletion receipt of a store that was made is written before the finalizer goes (else the next
        # attempt writes it).
        if made_in := (body.get("status") or {}).get("storeClassName"):
            await memo.audit.flush([made_in])
    except ReconcileError as error:
        metrics.RECONCILE_ERRORS.labels(error.reason).inc()
        patch.status["phase"] = Phase.DELETING.value
        events.warn(body, reason=error.reason, message=f"teardown will be retried: {error}")
        # A temporary error keeps the finalizer; a permanent one would release it and leak the tenant's data.
        raise kopf.TemporaryError(redaction.redact(str(error)), delay=error.retry_after or 30) from error
    memo.tenant_locks.pop(body["metadata"]["uid"], None)


async def final_export_pending(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> bool:
    """deletionPolicy Export: nothing is deleted before the final export is written and verified. Raises
    Kopf's TemporaryError (the finalizer stays, the handler runs again) while it is not."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if spec.get("deletionPolicy") != "Export" or not status.get("relational"):
        return False
    namespace, name = body["metadata"]["namespace"], exports.final_export_name(body)
    wanted = exports.final_export(body, (spec.get("finalExport") or {}).get("destination") or {})
    found = await memo.exports.read(namespace, name)
    if found is not None and found.get("spec") != wanted["spec"]:
        # Made by someone else under the name the operator uses: it is not this tenant's export.
        message = (f"TenantStoreExport {name} exists but does not export this TenantStore to "
                   f"spec.finalExport.destination; nothing is deleted until it is removed")
    elif exports.is_verified(found):
        return False
    elif found is None:
        await memo.exports.create(wanted)
        events.info(body, reason=Reason.FINAL_EXPORT_PENDING, message=f"final export {name} started; the tenant "
                                                                      f"is deleted once it is written and verified")
        message = f"final export {name} started"
    else:
        ready = conditions.find((found.get("status") or {}).get("conditions"), ConditionType.READY) or {}
        phase = (found.get("status") or {}).get("phase") or ExportPhase.PENDING
        message = f"final export {name} is {phase} ({ready.get('reason') or 'starting'}): {ready.get('message')}"
        if phase == ExportPhase.FAILED:
            message += ("; the data is kept. Delete the TenantStoreExport to export again, or change "
                        "spec.deletionPolicy")
    patch.status["phase"] = Phase.DELETING.value
    patch.status["conditions"] = conditions.merge_conditions(
        status.get("conditions"), [conditions.Condition(ConditionType.READY, False, Reason.FINAL_EXPORT_PENDING,
                                                        message)], body["metadata"].get("generation", 0))
    raise kopf.TemporaryError(redaction.redact(message), delay=5)


@kopf.on.resume(*EXPORTS)
@kopf.on.create(*EXPORTS)
@redacted_errors
async def export_tenantstore(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo,
                             store_class_index: kopf.Index[str, Any], **_: Any) -> None:
    """Write the export, resuming from status.progress; status says Completed only once it is verified."""
    if status.get("phase") in (ExportPhase.COMPLETED, ExportPhase.FAILED):
        return
    tenant = await memo.statuses.read(body["metadata"]["namespace"], (body.get("spec") or {}).get("tenantStoreName", ""))

    async def report(changes: dict[str, Any]) -> None:
        await memo.exports.patch(body, changes)

    ending = await exports.run(body, tenant, latest_classes(store_class_index), memo.backends, SETTINGS.export_dir,
                               memo.secrets.data, report)
    patch.status.update(ending.status)
    phase = ending.status["phase"]
    if phase in (ExportPhase.COMPLETED, ExportPhase.FAILED):
        reason = Reason.EXPORT_COMPLETED if phase == ExportPhase.COMPLETED else Reason.EXPORT_FAILED
        (events.info if phase == ExportPhase.COMPLETED else events.warn)(body, reason=reason, message=ending.message)
        if tenant is not None:  # the tenant's trail has its exports (the Event is on the TenantStoreExport)
            memo.audit.record(tenant, reason, f"TenantStoreExport {body['metadata']['name']}: {ending.message}",
                              actor=audit.spec_author(body))
    if ending.retry_after is not None:
        raise kopf.TemporaryError(redaction.redact(ending.message), delay=ending.retry_after)


@kopf.on.resume(*STORECLASSES)
@kopf.on.create(*STORECLASSES)
@kopf.on.update(*STORECLASSES)
@kopf.timer(*STORECLASSES, interval=SETTINGS.storeclass_check_interval, initial_delay=SETTINGS.storeclass_check_interval)
@ends_with_its_timer
@redacted_errors
async def check_storeclass(body: kopf.Body, name: str, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """Ready when the class's Postgres is reachable and meets the prerequisites (the README lists them)."""
    if not memo.shards.coordinator:
        return  # the class's own conditions have one writer: the holder of shard 0
    ready = await readiness(body, memo.backends)
    try:
        made = await global_store(body, ready, memo.backends, memo.secrets)
    except InvalidResource:
        made = None  # the Ready condition already says what is wrong with the spec
    await memo.class_statuses.update(
        name, lambda current: conditions.status_changes(current, readiness_status(body, current, ready, made)),
        seen=status)
    for step in made.steps if made else ():
        events.info(body, reason=step.reason, message=step.message)


@kopf.timer(*STORECLASSES, interval=SETTINGS.usage_interval, initial_delay=1.0, backoff=SETTINGS.usage_interval)
@ends_with_its_timer
@redacted_errors
async def measure_tenants(body: kopf.Body, name: str, status: kopf.Status, memo: kopf.Memo,
                          stopped: kopf.DaemonStopped, store_class_index: kopf.Index[str, Any],
                          tenant_id_index: kopf.Index[str, ClaimRef],
                          tenants_by_class: kopf.Index[str, dict[str, Any]], **_: Any) -> None:
    """Per StoreClass: re-reconcile tenants the class (or their namespace's labels, for a class with
    spec.allowedNamespaces) changed under, then measure usage and enforce quotas."""
    # Jitter, so that classes don't all fire at once; a deleted class does not wait for it.
    if await stopped.wait(random.uniform(0, SETTINGS.usage_interval / 10)):
        return
    classes = latest_classes(store_class_index)
    store_class = classes.get(name)
    if not isinstance(store_class, StoreClass):
        return
    started = time.monotonic()
    tenants = list(tenants_by_class.get(name, ()))
    waiting = tenants + (list(tenants_by_class.get("", ())) if store_class.is_default else [])
    namespace_labels = await fleet.namespace_labels(store_class, tenants, memo.namespaces)
    for tenant in tenants:
        if tenant["metadata"].get("deletionTimestamp"):
            continue
        if fleet.needs_reconcile(store_class, tenant) or fleet.admission_changed(store_class, tenant,
                                                                                 namespace_labels):
            async with current_tenant(memo, tenant) as fresh:
                if fresh is not None:
                    await record(memo, fresh, await reconcile_through(memo, fresh, classes, tenant_id_index, held=True))
    view: sharding.ShardView = memo.shards
    try:
        now = conditions.now_rfc3339()
        moment = cost.parse_time(now)
        measured = await fleet.measure_class(store_class, tenants, memo.backends, memo.statuses, memo.secrets, now,
                                             SETTINGS.cost_interval,
                                             shard_reports.elsewhere(view, status))
        priced = [(m.body, m.holding, m.cost) for m in measured if m.holding] if store_class.pricing else None
        usage = shard_reports.class_usage(view, status, waiting, priced, moment)
        # The class's own figures have one writer, the coordinator; shard parts are each their holder's.
        figures = await pool_figures(store_class, memo.backends, usage.quota_blocked) if view.coordinator else None
        flipped: list[conditions.Condition] = []

        def class_status(current: Mapping[str, Any]) -> dict[str, Any]:
            if figures is None:
                return usage.shards_patch
            pool, flipped[:] = figures.status(store_class, current)
            if store_class.pricing is not None:
                pool["cost"] = cost.summarize(store_class.pricing, usage.cost_parts, len(figures.shared_indexes),
                                              moment)
            elif current.get("cost"):
                pool["cost"] = None  # the class no longer has pricing: no figures left standing
            return {**usage.shards_patch, **conditions.status_changes(current, pool)}
        if not await memo.class_statuses.update(name, class_status, seen=status):
            flipped.clear()  # not written: nothing to announce
    except ReconcileError as error:
        events.warn(body, reason=error.reason, message=f"usage not measured: {error}")
        return
    for condition in flipped:
        (events.warn if condition.status else events.info)(body, reason=condition.reason, message=condition.message)
    for result in measured:
        events.post(result.body, result.events, warning=result.warning, actor=audit.OPERATOR_ACTOR)
    seconds = time.monotonic() - started
    metrics.USAGE_DURATION.labels(name).observe(seconds)
    logger.info("measured StoreClass %s: %d tenants, in %.2f s", name, len(measured), seconds)


@kopf.timer(*STORECLASSES, interval=SETTINGS.verify_interval, initial_delay=SETTINGS.verify_interval / 2,
            backoff=SETTINGS.verify_interval)
@ends_with_its_timer
async def verify_tenants(body: kopf.Body, name: str, status: kopf.Status, memo: kopf.Memo,
                         stopped: kopf.DaemonStopped, store_class_index: kopf.Index[str, Any],
                         tenant_id_index: kopf.Index[str, ClaimRef],
                         tenants_by_class: kopf.Index[str, dict[str, Any]],
                         tenant_secrets: kopf.Index[tuple[str, str], str | None], **_: Any) -> None:
    """Per StoreClass: are its provisioned tenants still as made? Report or repair what is not (driftPolicy)."""
    if await stopped.wait(random.uniform(0, SETTINGS.verify_interval / 10)):  # jitter, as above
        return
    classes = latest_classes(store_class_index)
    store_class = classes.get(name)
    if not isinstance(store_class, StoreClass):
        return
    memo.canary_turns[name] += 1
    started = time.monotonic()
    passwords = {key: next(iter(values), None) for key, values in tenant_secrets.items() if values}
    checked = await verify.check_class(store_class, list(tenants_by_class.get(name, ())), memo.backends, passwords,
                                       memo.canary_turns[name])
    seconds = time.monotonic() - started
    metrics.VERIFY_DURATION.labels(name).observe(seconds)
    logger.info("verified StoreClass %s: %d tenants, %d adrift, %s, in %.2f s", name, len(checked.checked),
                sum(1 for tenant in checked.checked if tenant.drifts or tenant.isolation),
                "admin login refused" if checked.admin_login_refused else
                f"backends unavailable ({checked.outage.reason})" if checked.outage else "backends answered", seconds)
    if checked.outage is not None:
        # A refused admin password is the class's own problem: its tenants' stores still serve their logins.
        tenants = [] if checked.admin_login_refused else list(tenants_by_class.get(name, ()))
        await report_outage(memo, body, store_class, tenants, checked.outage)
        return
    broken = []
    for tenant in checked.checked:
        if tenant.isolation:
            broken.append(tenant)
            await report_broken_isolation(memo, store_class, tenant)
        elif tenant.drifts:
            await act_on_drift(memo, store_class, tenant, classes, tenant_id_index)
        elif verify.needs_recovery(tenant):
            async with current_tenant(memo, tenant.body) as fresh:
                if fresh is not None:
                    await record(memo, fresh, await reconcile_through(memo, fresh, classes, tenant_id_index,
                                                                      held=True))
    shards_patch, found = shard_reports.class_isolation(memo.shards, status,
                                                        [(tenant.body, str(tenant.isolation)) for tenant in broken])
    if checked.shared_credential:  # the class's own configuration: true of every tenant, whatever a probe saw
        found = [checked.shared_credential, *found]
    isolation = conditions.Condition(
        ConditionType.ISOLATION_BROKEN, bool(found),
        Reason.API_KEY_EXPOSED if checked.shared_credential else Reason.ISOLATION_BROKEN if found else Reason.ISOLATED,
        "; ".join(found) or "the isolation canary saw only the probing tenant's rows in every shared index")

    def class_status(current: Mapping[str, Any]) -> dict[str, Any]:
        if not memo.shards.coordinator:
            return shards_patch  # the class's own conditions have one writer: the holder of shard 0
        updates = [isolation]
        ready = conditions.find(current.get("conditions"), ConditionType.READY) or {}
        if ready.get("reason") in (Reason.BACKEND_UNAVAILABLE, Reason.STORE_CLASS_INVALID) \
                and checked.reached_backends:  # back: say so now
            updates.append(conditions.Condition(ConditionType.READY, True, Reason.BACKENDS_REACHABLE,
                                                "the class's backends answered the verification pass"))
        return {**shards_patch, **conditions.status_changes(current, {"conditions": conditions.merge_conditions(
            current.get("conditions"), updates, body.get("metadata", {}).get("generation", 0))})}
    await memo.class_statuses.update(name, class_status, seen=status)


async def act_on_drift(memo: kopf.Memo, store_class: StoreClass, tenant: verify.Checked, classes: Mapping[str, Any],
                       tenant_id_index: kopf.Index[str, ClaimRef]) -> None:
    async with current_tenant(memo, tenant.body) as body:
        if body is None:
            return  # it changed while checked (or is being changed): what was seen may be that change
        drifts = tenant.drifts
        ready = conditions.find((body.get("status") or {}).get("conditions"), ConditionType.READY) or {}
        if ready.get("reason") not in {drift.kind for drift in drifts}:  # newly found, not still there
            for drift in drifts:
                metrics.DRIFT_DETECTED.labels(drift.kind).inc()
            events.warn(body, reason=Reason.DRIFT_DETECTED, message="; ".join(drift.message for drift in drifts),
                        actor=audit.OPERATOR_ACTOR)
        if store_class.drift_policy is DriftPolicy.REPORT:
            changes = conditions.status_changes(body.get("status"), verify.drift_status(body, drifts))
            if changes:
                await memo.statuses.patch(body, changes)
            return
        if lost := dataclasses.replace(tenant, body=body).data_lost:
            changes = verify.data_loss_status(body, lost)
            await memo.statuses.patch(body, changes)
            events.warn(body, reason=Reason.DATA_LOST, actor=audit.OPERATOR_ACTOR,
                        message=str((conditions.find(changes["conditions"], reconcile.DATA_LOSS.condition) or {})
                                    .get("message")))
            body = {**body, "status": {**(body.get("status") or {}), **changes}}
        outcome = await reconcile_through(memo, body, classes, tenant_id_index, held=True, check_credentials=any(
            drift.kind == Reason.CREDENTIALS_OUT_OF_SYNC for drift in drifts))
        await record(memo, body, outcome)
        if outcome.warning is None:
            events.info(body, reason=Reason.DRIFT_REPAIRED, message="repaired: " + "; ".join(d.message for d in drifts),
                        actor=audit.OPERATOR_ACTOR)


async def report_broken_isolation(memo: kopf.Memo, store_class: StoreClass, tenant: verify.Checked) -> None:
    body = tenant.body
    index = ((body.get("status") or {}).get("vectorStore") or {}).get("index", "")
    metrics.ISOLATION_PROBE_FAILURES.labels(store_class.name, index).inc()
    ready = conditions.find((body.get("status") or {}).get("conditions"), ConditionType.READY) or {}
    if ready.get("reason") != IsolationBroken.reason:
        events.warn(body, reason=IsolationBroken.reason, message=str(tenant.isolation), actor=audit.OPERATOR_ACTOR)
    for _ in range(3):  # what the pass saw may be old: written on the object as it is now, whatever changed
        fresh = await read_again(memo, body)
        if fresh is None:
            return
        changes = conditions.status_changes(fresh.get("status"),
                                            verify.isolation_status(fresh, str(tenant.isolation)))
        if not changes or await memo.statuses.patch_unless_changed(fresh, changes):
            return


async def report_outage(memo: kopf.Memo, body: Mapping[str, Any], store_class: StoreClass,
                        tenants: list[Mapping[str, Any]], outage: ReconcileError) -> None:
    """The class's backends do not answer: the class and its Ready tenants say so (tenants keep their phase)."""
    generation = body.get("metadata", {}).get("generation", 0)
    down = conditions.Condition(ConditionType.READY, False, outage.reason, str(outage))
    if memo.shards.coordinator:  # the class's own conditions have one writer
        await memo.class_statuses.update(store_class.name, lambda current: conditions.status_changes(current, {
            "conditions": conditions.merge_conditions(current.get("conditions"), [down], generation)}),
            seen=body.get("status") or {})
    for seen in verify.verifiable(tenants):
        tenant = await read_again(memo, seen)  # as it is now: a reconcile may have changed it since the pass began
        ready = conditions.find(((tenant or {}).get("status") or {}).get("conditions"), ConditionType.READY) or {}
        if tenant is None or ready.get("status") != "True":
            continue
        outcome = reconcile.failed_outcome(tenant.get("status") or {}, tenant["metadata"].get("generation", 0),
                                           outage.reason, str(outage), Phase.PROVISIONING, outage.retry_after)
        outcome.warning = outage
        await record(memo, tenant, outcome, unless_changed=True)


async def read_again(memo: kopf.Memo, seen: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object a job saw, read again (None once it is gone, or replaced by another of its name)."""
    fresh = await memo.statuses.read(seen["metadata"]["namespace"], seen["metadata"]["name"])
    return fresh if fresh is not None and fresh["metadata"].get("uid") == seen["metadata"].get("uid") else None


@kopf.timer(*STORECLASSES, interval=SETTINGS.retention_interval, initial_delay=SETTINGS.retention_interval / 2,
            backoff=SETTINGS.retention_interval)
@ends_with_its_timer
@redacted_errors
async def expire_vectors(name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                         store_class_index: kopf.Index[str, Any], tenants_by_class: kopf.Index[str, dict[str, Any]],
                         **_: Any) -> None:
    """Per StoreClass: delete the vectors its tenants keep past their retention (bounded per pass), and the
    audit rows past the class's audit retention."""
    if await stopped.wait(random.uniform(0, SETTINGS.retention_interval / 10)):  # jitter, as above
        return
    store_class = latest_classes(store_class_index).get(name)
    if not isinstance(store_class, StoreClass):
        return
    if expired_rows := await memo.audit.expire(store_class):
        logger.info("StoreClass %s: %d audit rows older than %s deleted", name, expired_rows,
                    store_class.audit_retention)
    if not store_class_has_retention(store_class, tenants_by_class):
        return
    backends = await memo.backends.for_class(store_class)
    for expired in await retention.expire_class(store_class, list(tenants_by_class.get(name, ())), backends.vector,
                                                datetime.datetime.now(datetime.UTC)):
        metrics.VECTORS_EXPIRED.labels(*metrics.TenantSnapshot.from_body(expired.body).labels).inc(expired.count)
        await memo.statuses.patch(expired.body, expired.status_changes(conditions.now_rfc3339()))
        events.info(expired.body, reason=Reason.VECTORS_EXPIRED, message=expired.message, actor=audit.OPERATOR_ACTOR)


def store_class_has_retention(store_class: StoreClass, tenants_by_class: kopf.Index[str, dict[str, Any]]) -> bool:
    """Whether any tenant of the class can have a retention (so a class without one touches no backend)."""
    return any(policy.retention.vectors_max_age for policy in store_class.tiers.values()) or any(
        ((tenant.get("spec") or {}).get("retention") or {}).get("vectors") for tenant in
        tenants_by_class.get(store_class.name, ()))


@kopf.timer(*STORECLASSES, interval=SETTINGS.probe_interval, initial_delay=SETTINGS.probe_interval / 2,
            backoff=SETTINGS.probe_interval)
@ends_with_its_timer
@redacted_errors
async def probe_search_latency(name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                               store_class_index: kopf.Index[str, Any],
                               tenants_by_class: kopf.Index[str, dict[str, Any]], **_: Any) -> None:
    """Per StoreClass with spec.slo: search probes on its non-empty tenants, at most slo.probesPerSecond."""
    store_class = latest_classes(store_class_index).get(name)
    if not isinstance(store_class, StoreClass) or store_class.slo is None:
        return
    backends = await memo.backends.for_class(store_class)
    passes = memo.probe_passes.setdefault(name, slo.ProbePass())
    for probe in await passes.run(store_class, store_class.slo, list(tenants_by_class.get(name, ())),
                                  backends.vector, SETTINGS.probe_interval, stopped.wait):
        if probe.seconds is None:
            metrics.SEARCH_PROBES.labels(name, "failed").inc()
            continue
        metrics.SEARCH_LATENCY.labels(*metrics.TenantSnapshot.from_body(probe.body).labels).observe(probe.seconds)
        metrics.SEARCH_PROBES.labels(name, "ok").inc()


@kopf.on.event("", "v1", "secrets", **TENANT_SECRETS)
async def tenant_secret_changed(body: kopf.Body, type: str | None, memo: kopf.Memo,  # noqa: A002 (Kopf's name)
                                store_class_index: kopf.Index[str, Any], tenant_id_index: kopf.Index[str, ClaimRef],
                                **_: Any) -> None:
    """A tenant Secret deleted or edited by hand is repaired now, not at the next verification pass."""
    if type not in ("DELETED", "MODIFIED") or (type == "MODIFIED" and not kube.edited_by_hand(body)):
        return
    owner = next((ref for ref in body.get("metadata", {}).get("ownerReferences") or ()
                  if ref.get("kind") == "TenantStore"), None)
    if owner is None:
        return
    tenant = await memo.statuses.read(body["metadata"]["namespace"], owner["name"])
    if tenant is None or tenant["metadata"].get("uid") != owner.get("uid") or not verify.verifiable([tenant]):
        return
    classes = latest_classes(store_class_index)
    if CREDENTIAL_LABEL in (body["metadata"].get("labels") or {}):
        # A scoped credential's Secret: the reconcile writes it again, or gives its login the edited password.
        async with current_tenant(memo, tenant) as fresh:
            if fresh is not None:
                await record(memo, fresh, await reconcile_through(memo, fresh, classes, tenant_id_index, held=True))
        return
    store_class = classes.get(tenant["status"].get("storeClassName", ""))
    if not isinstance(store_class, StoreClass):
        return
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    passwords = {} if type == "DELETED" else {key: kube.password_in_data(body.get("data"))}
    checked = await verify.check_class(store_class, [tenant], memo.backends, passwords, canary_turn=None)
    for found in checked.checked:  # an outage is the verification pass's to report
        if found.drifts:
            await act_on_drift(memo, store_class, found, classes, tenant_id_index)


def status_reporter(memo: kopf.Memo, body: Mapping[str, Any]) -> Any:
    async def report(changes: dict[str, Any]) -> None:
        await memo.statuses.patch(body, changes)
    return report


def is_converged(meta: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    return status.get("observedGeneration") == meta.get("generation") and \
        status.get("phase") in (Phase.READY, Phase.SUSPENDED)


@kopf.on.event(*TENANTSTORES)
async def observe_tenantstore(body: kopf.Body, type: str | None, **_: Any) -> None:  # noqa: A002 (Kopf's name)
    metrics.SERIES.observe_tenant(body, deleted=type == "DELETED")


@kopf.on.event(*STORECLASSES)
async def observe_storeclass(body: kopf.Body, type: str | None, **_: Any) -> None:  # noqa: A002
    metrics.SERIES.observe_store_class(body, deleted=type == "DELETED")


def write(body: kopf.Body, patch: kopf.Patch, outcome: Outcome) -> None:
    events.post(outcome.about(body), outcome.events, trace_id=outcome.trace_id)
    patch.status.update(outcome.status_patch(body.get("status")))
    if outcome.warning is not None:
        metrics.RECONCILE_ERRORS.labels(outcome.warning.reason).inc()
        warn_on_transition(body, outcome)
    if outcome.retry_after is not None:
        # Kopf logs this message (and posts the log line as an Event): redacted like everything else.
        raise kopf.TemporaryError(redaction.redact(str(outcome.warning or "retrying")), delay=outcome.retry_after)


def warn_on_transition(body: Mapping[str, Any], outcome: Outcome) -> None:
    """A Warning Event when the Ready reason turns to the outcome's warning: one per transition, not per retry."""
    if outcome.warning is None:
        return
    previous = conditions.find((body.get("status") or {}).get("conditions"), ConditionType.READY) or {}
    if previous.get("reason") != outcome.warning.reason:
        events.warn(body, reason=outcome.warning.reason, message=str(outcome.warning))
