"""Measured usage against effective quotas: what is exceeded, and whether writes must be refused."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tenantstore.api import ConditionType, Reason
from tenantstore.conditions import Condition
from tenantstore.models import QuotaAction, Quotas

# Resources whose Block the data store itself enforces by refusing writes; daily queries are reported only.
BLOCKING_RESOURCES = ("documents", "storageBytes")


@dataclasses.dataclass(frozen=True)
class Usage:
    documents: int = 0
    storage_bytes: int = 0
    connections: int = 0
    daily_queries: int | None = None  # None: the backend cannot tell
    relational_storage_bytes: int = 0  # the schema's or database's part of storage_bytes (vectors aside)

    def to_status(self, measured_at: str) -> dict[str, Any]:
        status: dict[str, Any] = {"documents": self.documents, "storageBytes": self.storage_bytes,
                                  "relationalStorageBytes": self.relational_storage_bytes,
                                  "connections": self.connections, "measuredAt": measured_at}
        if self.daily_queries is not None:
            status["dailyQueries"] = self.daily_queries
        return status

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> Usage | None:
        if not raw:
            return None
        return cls(documents=int(raw.get("documents", 0)), storage_bytes=int(raw.get("storageBytes", 0)),
                   connections=int(raw.get("connections", 0)), daily_queries=raw.get("dailyQueries"),
                   relational_storage_bytes=int(raw.get("relationalStorageBytes", 0)))

    def same_figures(self, raw: Mapping[str, Any] | None) -> bool:
        """Equal to what status says, measuredAt aside (so an unchanged measurement costs no API write)."""
        return Usage.from_status(raw) == self


@dataclasses.dataclass(frozen=True)
class Excess:
    resource: str
    used: int
    limit: int

    def describe(self) -> str:
        return f"{self.resource} {self.used} of {self.limit}"


@dataclasses.dataclass(frozen=True)
class Verdict:
    excesses: tuple[Excess, ...]
    action: QuotaAction

    @property
    def exceeded(self) -> bool:
        return bool(self.excesses)

    @property
    def blocks_writes(self) -> bool:
        return self.action is QuotaAction.BLOCK and any(e.resource in BLOCKING_RESOURCES for e in self.excesses)

    def condition(self) -> Condition:
        if not self.excesses:
            return Condition(ConditionType.QUOTA_EXCEEDED, False, Reason.WITHIN_LIMITS, "usage is within every quota")
        figures = ", ".join(e.describe() for e in self.excesses)
        if self.blocks_writes:
            return Condition(ConditionType.QUOTA_EXCEEDED, True, Reason.WRITES_BLOCKED,
                             f"{figures}: writes are refused until usage falls under the limit or the quota is raised")
        return Condition(ConditionType.QUOTA_EXCEEDED, True, Reason.LIMIT_REACHED, f"{figures} (quotaAction {self.action.value}: "
                                                                 "reported, not blocked)")


def judge(usage: Usage | None, quotas: Quotas, action: QuotaAction) -> Verdict:
    """A limit is reached when usage is at or above it; 0 or unset means unlimited."""
    if usage is None:
        return Verdict((), action)
    checks = (("documents", usage.documents, quotas.max_documents),
              ("storageBytes", usage.storage_bytes, quotas.max_storage_bytes),
              ("dailyQueries", usage.daily_queries, quotas.max_daily_queries))
    # Connections are not judged here: Postgres enforces the role's CONNECTION LIMIT itself.
    excesses = tuple(Excess(name, used, limit) for name, used, limit in checks
                     if limit and used is not None and used >= limit)
    return Verdict(excesses, action)
