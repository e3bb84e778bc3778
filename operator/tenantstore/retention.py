"""Retention: a tenant's vectors older than its `retention.vectors.maxAge` are deleted by a periodic job.

Per StoreClass, per tenant with a retention (the tier's in the class, or the TenantStore's own), in bounded
batches: a pass deletes at most MAX_BATCHES × BATCH vectors of a tenant and the next pass goes on, so a
tenant with millions of expired vectors never holds the job (or its table) for long. Relational data is
the tenant's to expire: the operator does not know its tables.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tenantstore import reconcile, verify
from tenantstore.backends import VectorPlacement, VectorStore
from tenantstore.errors import ReconcileError
from tenantstore.models import InvalidResource, StoreClass, TenantStoreSpec

logger = logging.getLogger(__name__)

BATCH = 1_000
MAX_BATCHES = 20


@dataclasses.dataclass(frozen=True)
class Expired:
    body: Mapping[str, Any]
    count: int
    max_age: datetime.timedelta

    def status_changes(self, now: str) -> dict[str, Any]:
        before = ((self.body.get("status") or {}).get("retention") or {}).get("vectorsExpired", 0)
        return {"retention": {"vectorsExpired": before + self.count, "lastExpiredAt": now}}

    @property
    def message(self) -> str:
        return f"{self.count} vectors older than {self.max_age} deleted (retention.vectors.maxAge)"


async def expire_class(store_class: StoreClass, tenants: Sequence[Mapping[str, Any]], vectors: VectorStore,
                       now: datetime.datetime) -> list[Expired]:
    """One pass over the class's provisioned tenants; a tenant whose backend fails is left for the next pass
    (the verification pass reports outages)."""
    expired: list[Expired] = []
    for body in verify.verifiable(tenants):
        try:
            store = reconcile.store_as_provisioned(TenantStoreSpec.from_body(body), store_class, body)
        except InvalidResource:
            continue
        max_age = store.retention.vectors_max_age
        placement = VectorPlacement.from_status((body.get("status") or {}).get("vectorStore"))
        if max_age is None or placement is None:
            continue
        count = 0
        try:
            for _ in range(MAX_BATCHES):
                deleted = await vectors.expire(store, placement, now - max_age, BATCH)
                count += deleted
                if deleted < BATCH:
                    break
        except ReconcileError as error:
            logger.warning("retention of tenant %s not applied this pass: %s", store.tenant_id, error)
        if count:
            expired.append(Expired(body, count, max_age))
    return expired
