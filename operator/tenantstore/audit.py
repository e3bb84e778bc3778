"""The audit trail's writer: every Event the operator posts on a TenantStore is also an audit row.

Rows go to the tenant's StoreClass's Postgres (backends/audit_table.py) from an in-memory queue, so a
reconcile never waits on them; a failed write keeps them queued and retries. A teardown waits until its rows,
the deletion receipt among them, are written before the finalizer goes.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from kubernetes_asyncio import client
from opentelemetry import trace

from tenantstore import metrics
from tenantstore.api import GROUP, VERSION
from tenantstore.backends import audit_table
from tenantstore.backends.audit_table import Entry
from tenantstore.backends.postgres import PostgresServer
from tenantstore.errors import AuditTrailUnavailable, ReconcileError
from tenantstore.kube import Secrets
from tenantstore.models import StoreClass, default_class_name
from tenantstore.redaction import redact
from tenantstore.registry import BackendRegistry

logger = logging.getLogger(__name__)

OPERATOR_ACTOR = "tenantstore-operator"
RETRY_SECONDS = (1, 2, 5, 10, 30, 60)
EXPIRE_EVERY_SECONDS = 3600.0
# Rows wait in memory while their Postgres is away; beyond this many per class the oldest go (and are counted).
MAX_QUEUED_PER_CLASS = 10_000


def spec_author(body: Mapping[str, Any]) -> str:
    """Who last changed the spec, as Kubernetes records it: the field manager (kubectl, argocd-controller,
    helm, ...). The API server's own audit log is the place for the user behind it."""
    entries = [entry for entry in (body.get("metadata") or {}).get("managedFields") or ()
               if "f:spec" in (entry.get("fieldsV1") or {})]
    latest = max(entries, key=lambda entry: entry.get("time") or "", default=None)
    return str(latest.get("manager") or "") if latest else ""


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


class AuditTrail:
    def __init__(self, backends: BackendRegistry):
        self.backends = backends
        self.classes: dict[str, StoreClass] = {}
        self._pending: dict[str, list[Entry]] = collections.defaultdict(list)
        # Rows ever queued per class. The queue is first in, first out (an overflow drops its oldest), so the
        # first `queued - len(pending)` of them are written or dropped: done, for anyone waiting on them.
        self._queued: collections.Counter[str] = collections.Counter()
        self._ensured: set[tuple[str, str]] = set()
        self._expired_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def know(self, store_class: StoreClass) -> None:
        """The latest of each StoreClass, as the operator's index sees it (kept after a class is deleted)."""
        self.classes[store_class.name] = store_class

    def record(self, body: Mapping[str, Any], action: str, message: str, actor: str | None = None,
               trace_id: str | None = None) -> None:
        """Queue one row about the TenantStore `body`; written in the background."""
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        class_name = self.class_of(body)
        if class_name not in self.classes or not spec.get("tenantId"):
            return  # an unknown class (so nothing was made in it): there is no trail to write to
        queue = self._pending[class_name]
        if len(queue) >= MAX_QUEUED_PER_CLASS:
            del queue[0]
            metrics.AUDIT_DROPPED.inc()
            logger.error("StoreClass %s: %d audit rows queued and its Postgres does not answer; the oldest is "
                         "dropped", class_name, len(queue))
        self._queued[class_name] += 1
        queue.append(Entry(
            tenant_id=spec["tenantId"], tenant_store_uid=meta.get("uid", ""), namespace=meta.get("namespace", ""),
            name=meta.get("name", ""), action=action, message=redact(message),
            actor=spec_author(body) if actor is None else actor,
            trace_id=current_trace_id() if trace_id is None else trace_id))
        metrics.AUDIT_PENDING.set(self.pending())
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write_in_background(), name="audit trail writer")

    def pending(self) -> int:
        return sum(len(entries) for entries in self._pending.values())

    def class_of(self, body: Mapping[str, Any]) -> str:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        return status.get("storeClassName") or spec.get("storeClassName") or default_class_name(self.classes)

    async def flush(self, class_names: Sequence[str] | None = None) -> None:
        """Write the queued rows (of these classes) now; raises the first error (those rows stay queued).

        With class names, returns once the rows queued before the call are written: a caller whose rows another
        caller's batch took writes nothing itself, so neither it nor the callers after it wait for a pool
        connection on its behalf (thousands of teardowns ending together would otherwise end one write apart)."""
        waited_for = {name: self._queued[name] for name in class_names} if class_names is not None else None
        async with self._writing:
            failure: ReconcileError | None = None
            for class_name in list(self._pending) if waited_for is None else waited_for:
                if waited_for is not None and self._done(class_name) >= waited_for[class_name]:
                    continue
                try:
                    await self._write_class(class_name)
                except ReconcileError as error:
                    failure = failure or error
            metrics.AUDIT_PENDING.set(self.pending())
            if failure is not None:
                raise failure

    def _done(self, class_name: str) -> int:
        return self._queued[class_name] - len(self._pending.get(class_name, ()))

    async def _write_class(self, class_name: str) -> None:
        entries = self._pending.get(class_name)
        if not entries:
            self._pending.pop(class_name, None)
            return
        store_class = self.classes.get(class_name)
        if store_class is None:
            raise ReconcileError(f"the audit rows of StoreClass {class_name} wait for the class to be known")
        batch = list(entries)
        try:
            async with self._trail_of(store_class) as conn, conn.transaction():
                await audit_table.append(conn, batch)
        except psycopg.Error as error:
            raise AuditTrailUnavailable(f"the audit trail of StoreClass {class_name} cannot be written "
                                        f"({len(entries)} rows wait): {redact(str(error))}") from error
        del entries[:len(batch)]  # rows queued while these were written stay
        metrics.AUDIT_WRITTEN.inc(len(batch))

    @contextlib.asynccontextmanager
    async def _trail_of(self, store_class: StoreClass) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection to the class's shared database, its audit table made (checked once per server)."""
        server = (await self.backends.for_class(store_class)).server
        async with server.connect() as conn:
            if (server.admin_uri, server.shared_database) not in self._ensured:
                await audit_table.ensure(conn)
                self._ensured.add((server.admin_uri, server.shared_database))
            yield conn

    async def _write_in_background(self) -> None:
        failures = 0
        while self.pending():
            self._wake.clear()
            try:
                await self.flush()
                failures = 0
            except Exception as error:  # noqa: BLE001 (kept queued; the next attempt may succeed)
                logger.warning("audit rows not written yet (%d queued), retrying: %s", self.pending(),
                               redact(str(error)))
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def expire(self, store_class: StoreClass, now: float | None = None) -> int:
        """Delete the class's rows past its audit retention, at most hourly."""
        now = time.monotonic() if now is None else now
        if now - self._expired_at.get(store_class.name, -EXPIRE_EVERY_SECONDS) < EXPIRE_EVERY_SECONDS:
            return 0
        async with self._trail_of(store_class) as conn:
            gone = await audit_table.expire(conn, store_class.audit_retention)
        self._expired_at[store_class.name] = now
        return gone

    async def close(self, timeout: float = 10.0) -> None:
        """A last attempt to write what is queued (an operator stopping)."""
        if self._task is not None:
            self._task.cancel()
        if self.pending():
            try:
                await asyncio.wait_for(self.flush(), timeout=timeout)
            except Exception as error:  # noqa: BLE001
                logger.error("%d audit rows could not be written before the operator stopped: %s",
                             self.pending(), redact(str(error)))


def format_table(entries: Sequence[Entry]) -> str:
    """The trail as a table for people: time, action, actor, object, message."""
    rows = [(entry.at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if entry.at else "",
             entry.action, entry.actor or "-", f"{entry.namespace}/{entry.name}", entry.message)
            for entry in entries]
    header = ("TIME", "ACTION", "ACTOR", "TENANTSTORE", "MESSAGE")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row[:4], widths)), row[4]])
                     for row in [header, *rows])


async def read_trail(tenant_id: str, admin_uris: Sequence[tuple[str, str]]) -> list[Entry]:
    """A tenant's entries from every (admin URI, shared database) given, oldest first."""
    found: list[Entry] = []
    for admin_uri, database in dict.fromkeys(admin_uris):  # classes sharing a database: read it once
        server = PostgresServer(admin_uri, database)
        try:
            async with server.connect() as conn:
                found += await audit_table.trail(conn, tenant_id)
        finally:
            await server.close()
    return sorted(audit_table.without_copies(found),
                  key=lambda entry: entry.at or datetime.datetime.min.replace(tzinfo=datetime.UTC))


async def class_databases(api: Any, store_class: str | None) -> list[tuple[str, str]]:
    """(admin URI, shared database) of each StoreClass in the cluster (or only `store_class`)."""
    listed = await client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, "storeclasses")
    secrets = Secrets(api)
    databases = []
    for body in listed.get("items", ()):
        if store_class and body["metadata"]["name"] != store_class:
            continue
        parsed = StoreClass.from_body(body)
        databases.append((await secrets.value(parsed.admin_secret), parsed.shared_database))
    return databases
