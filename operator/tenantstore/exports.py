"""The TenantStoreExport resource: one export of one TenantStore of its namespace, run to the end.

Status tells the truth at every step: Pending while the tenant is not provisioned yet, Running with the
files written so far (status.progress, which a restarted operator resumes from), Completed only once every
file has been read back and matched against the manifest, Failed (with Stalled) when no retry can help.
A TenantStore with `deletionPolicy: Export` makes its final export as a TenantStoreExport
(`<name>-final-<uid prefix>`), which outlives the tenant as the record of what was handed over.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tenantstore import conditions, export, metrics, reconcile, tracing
from tenantstore.api import API_VERSION, ConditionType, ExportPhase, Reason
from tenantstore.backends import VectorPlacement
from tenantstore import destinations
from tenantstore.errors import ReconcileError
from tenantstore.models import ExportDestination, InvalidResource, TenantStoreSpec
from tenantstore.registry import BackendRegistry

FINAL_EXPORT_LABEL = "tenancy.dev/final-export-of"

Report = Callable[[dict[str, Any]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    tenant_store_name: str
    destination: ExportDestination

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ExportSpec:
        spec = body.get("spec") or {}
        if not spec.get("tenantStoreName"):
            raise InvalidResource("spec.tenantStoreName is required")
        return cls(spec["tenantStoreName"], ExportDestination.from_dict(spec.get("destination"), "spec.destination"))


@dataclasses.dataclass
class Ending:
    """How a run ended: the status to write, and the retry delay when it is not over."""

    status: dict[str, Any]
    retry_after: float | None = None
    message: str = ""


def state(body: Mapping[str, Any], phase: ExportPhase, ready: bool, reason: str, message: str,
          **fields: Any) -> dict[str, Any]:
    previous = (body.get("status") or {}).get("conditions")
    generation = body.get("metadata", {}).get("generation", 0)
    updates = [conditions.Condition(ConditionType.READY, ready, reason, message),
               conditions.Condition(ConditionType.STALLED, phase is ExportPhase.FAILED, reason if phase is
                                    ExportPhase.FAILED else Reason.PROGRESSING, message if phase is
                                    ExportPhase.FAILED else "")]
    return {"phase": phase.value, "observedGeneration": generation,
            "conditions": conditions.merge_conditions(previous, updates, generation), **fields}


async def run(body: Mapping[str, Any], tenant: Mapping[str, Any] | None, classes: Mapping[str, Any],
              registry: BackendRegistry, export_dir: str, read_secret: destinations.SecretReader,
              report: Report) -> Ending:
    namespace = body["metadata"]["namespace"]
    try:
        spec = ExportSpec.from_body(body)
    except InvalidResource as error:
        return Ending(state(body, ExportPhase.FAILED, False, Reason.INVALID_SPEC, str(error)))
    if tenant is None:
        return Ending(state(body, ExportPhase.FAILED, False, Reason.TENANT_STORE_NOT_FOUND,
                            f"TenantStore {spec.tenant_store_name} does not exist in namespace {namespace}"))
    current = tenant.get("status") or {}
    placement = VectorPlacement.from_status(current.get("vectorStore"))
    if not current.get("relational") or placement is None or current.get("migration"):
        message = f"TenantStore {spec.tenant_store_name} is not provisioned (or is moving): waiting"
        return Ending(state(body, ExportPhase.PENDING, False, Reason.TENANT_STORE_NOT_READY, message),
                      retry_after=10.0, message=message)
    label = spec.destination.describe(namespace)
    started = time.monotonic()
    try:
        tenant_spec = TenantStoreSpec.from_body(tenant)
        store_class = reconcile.resolve_store_class(current.get("storeClassName") or tenant_spec.store_class_name,
                                                    classes)
        store = reconcile.store_as_provisioned(tenant_spec, store_class, tenant)
        backends = await registry.for_class(store_class)
        progress = export.ExportProgress.from_status((body.get("status") or {}).get("progress"))
        begun = (body.get("status") or {}).get("startedAt") or conditions.now_rfc3339()
        await report(state(body, ExportPhase.RUNNING, False, Reason.EXPORTING, f"writing to {label}",
                           startedAt=begun, location=label))

        async def write_progress(now: export.ExportProgress) -> None:
            await report({"progress": now.to_status()})

        with tracing.lifecycle(tracing.EXPORT, tenant) as span:
            span.set_attribute("tenancy.export.destination", label)
            async with destinations.opened(spec.destination, namespace, export_dir, read_secret) as target:
                manifest = await export.export_tenant(store, placement, backends.relational, backends.vector,
                                                      target, progress, write_progress)
    except InvalidResource as error:
        return Ending(state(body, ExportPhase.FAILED, False, Reason.INVALID_SPEC, str(error)))
    except ReconcileError as error:
        message = f"{label}: {error}" if not str(error).startswith(label) else str(error)
        if error.retry_after is None:
            metrics.EXPORTS.labels("failed").inc()
            return Ending(state(body, ExportPhase.FAILED, False, error.reason, message), message=message)
        return Ending(state(body, ExportPhase.RUNNING, False, error.reason, message + " (retrying)"),
                      retry_after=error.retry_after, message=message)
    finally:
        metrics.EXPORT_DURATION.observe(time.monotonic() - started)
    files = [manifest["relational"], *manifest["vectors"]["files"]]
    size = sum(entry["bytes"] for entry in files)
    metrics.EXPORTS.labels("completed").inc()
    metrics.EXPORT_BYTES.inc(size)
    tables = manifest["relational"]["tables"]
    message = (f"{len(tables)} tables ({sum(tables.values())} rows) and {manifest['vectors']['count']} vectors "
               f"written to {label} and verified ({size} bytes)")
    return Ending(state(body, ExportPhase.COMPLETED, True, Reason.EXPORT_COMPLETED, message,
                        completedAt=conditions.now_rfc3339(), sizeBytes=size, tables=len(tables),
                        rows=sum(tables.values()), vectors=manifest["vectors"]["count"],
                        checksums={entry["name"]: "sha256:" + entry["sha256"] for entry in files}),
                  message=message)


def final_export_name(tenant: Mapping[str, Any]) -> str:
    return f"{tenant['metadata']['name']}-final-{tenant['metadata']['uid'][:8]}"


def final_export(tenant: Mapping[str, Any], destination: Mapping[str, Any]) -> dict[str, Any]:
    """The TenantStoreExport a deletionPolicy Export tenant is exported with before it is deleted."""
    meta = tenant["metadata"]
    return {"apiVersion": API_VERSION, "kind": "TenantStoreExport",
            "metadata": {"name": final_export_name(tenant), "namespace": meta["namespace"],
                         "labels": {FINAL_EXPORT_LABEL: meta["name"]}},
            "spec": {"tenantStoreName": meta["name"], "destination": dict(destination)}}


def is_verified(export_body: Mapping[str, Any] | None) -> bool:
    status = (export_body or {}).get("status") or {}
    ready = conditions.find(status.get("conditions"), ConditionType.READY) or {}
    return status.get("phase") == ExportPhase.COMPLETED and ready.get("status") == "True"
