"""Helpers shared by the vector backend tests: tenants, records, and a fast retry policy for the local Pinecone."""
from __future__ import annotations

import itertools
import uuid

from tenantstore.backends import Step, VectorRecord
from tenantstore.backends.pinecone import PineconeSettings, RetryPolicy
from tenantstore.models import DesiredStore, Metric, Quotas, RelationalIsolation, SecretKeyRef, \
    VectorIsolation

# The local server answers in milliseconds: short backoff, short deadlines, so a bug fails fast.
FAST_RETRIES = RetryPolicy(attempts=6, first_delay=0.05, max_delay=1.0, deadline=20.0, index_timeout=10.0,
                           poll_first=0.02, poll_max=0.2)
SETTINGS = PineconeSettings(api_key_secret=SecretKeyRef("pinecone", "tenantstore-system", "apiKey"))
PASSWORD = "tenant-pw-1"

# pgvector's shared tables live as long as the session's Postgres: each test takes a dimension of its own,
# so the pool it sees is its own.
_dimensions = itertools.count(40)


def fresh_dimension() -> int:
    return next(_dimensions)


def tenant(prefix: str, dimension: int, vector: VectorIsolation = VectorIsolation.NAMESPACE, capacity: int = 100,
           metric: Metric = Metric.COSINE, uid: str | None = None) -> DesiredStore:
    tenant_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return DesiredStore(tenant_id=tenant_id, uid=uid or str(uuid.uuid4()), tenant_store=f"test/{tenant_id}",
                        dimension=dimension, metric=metric, relational=RelationalIsolation.SCHEMA, vector=vector,
                        quotas=Quotas(0, 0, 5, 0), suspended=False, shared_database="tenants",
                        shared_index_capacity=capacity)


def records(prefix: str, count: int, dimension: int) -> list[VectorRecord]:
    """Records with values a float32 holds exactly, so a round trip through Pinecone compares equal."""
    return [VectorRecord(f"{prefix}-{i:03}", [float(i + 1)] + [0.5] * (dimension - 1), {"n": i})
            for i in range(count)]


def unit(dimension: int, axis: int = 0) -> list[float]:
    return [1.0 if i == axis else 0.0 for i in range(dimension)]


def reasons(steps: list[Step]) -> list[str]:
    return [step.reason for step in steps]
