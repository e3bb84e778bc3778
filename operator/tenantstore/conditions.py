"""metav1.Condition lists, kept the way kstatus, `kubectl wait`, Argo CD and Flux read them."""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from tenantstore.redaction import redact


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def merge_conditions(current: Iterable[Mapping[str, Any]] | None, updates: Iterable[Condition],
                     generation: int) -> list[dict[str, Any]]:
    """The new condition list: updated entries replace old ones of the same type.

    lastTransitionTime moves only when the status flips, so a condition tells since when it holds.
    Conditions not named in `updates` are kept as they are. Messages are redacted: they often quote a
    backend's error, and status is readable by anyone who may read the resource.
    """
    merged = {c["type"]: dict(c) for c in current or () if "type" in c}
    for update in updates:
        status = "True" if update.status else "False"
        previous = merged.get(update.type)
        changed = previous is None or previous.get("status") != status
        merged[update.type] = {
            "type": update.type,
            "status": status,
            "reason": update.reason,
            "message": redact(update.message),
            "observedGeneration": generation,
            "lastTransitionTime": now_rfc3339() if changed else previous.get("lastTransitionTime", now_rfc3339()),
        }
    return list(merged.values())


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


def status_changes(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """Only the top-level status fields whose value differs, so an unchanged status costs no API write."""
    current = current or {}
    return {key: value for key, value in desired.items() if current.get(key) != value}
