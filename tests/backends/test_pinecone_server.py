"""The local Pinecone server answers the SDK the way the 2026-07 documents say (it is only as good as this)."""
from __future__ import annotations

from collections.abc import AsyncIterator

import asyncio
import time

import pytest
from pinecone import AsyncPinecone, ConflictError, ForbiddenError, NotFoundError, RateLimitError, RetryConfig
from pinecone_server import PineconeTestServer

SCHEMA = {"fields": {"_values": {"type": "dense_vector", "dimension": 2, "metric": "dotproduct"}}}


async def wait_gone(admin: AsyncPinecone, name: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while await admin.indexes.exists(name):
        assert time.monotonic() < deadline, f"index {name} still exists after {timeout}s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def admin(pinecone_server: PineconeTestServer) -> AsyncIterator[AsyncPinecone]:
    async with AsyncPinecone(api_key=pinecone_server.api_key, host=pinecone_server.host,
                             retry_config=RetryConfig(max_retries=0)) as client:
        yield client


async def test_namespace_api_pages_filters_and_refuses_like_pinecone(pinecone_server: PineconeTestServer,
                                                                    admin: AsyncPinecone) -> None:
    pinecone_server.ready_delay = 0
    model = await admin.indexes.create(name="spaces", schema=SCHEMA, timeout=-1)
    assert model.host.startswith("http://127.0.0.1:") and model.status.ready
    async with await admin.index(host=model.host) as index:
        for name in ("b-1", "a-1", "a-2", "a-3", "c-1"):
            await index.create_namespace(name=name)
        with pytest.raises(ConflictError):
            await index.create_namespace(name="a-1")
        first = await index.list_namespaces_paginated(prefix="a-", limit=2)
        assert [ns.name for ns in first.namespaces] == ["a-1", "a-2"] and first.total_count == 3
        rest = await index.list_namespaces_paginated(prefix="a-", limit=2, pagination_token=first.pagination.next)
        assert [ns.name for ns in rest.namespaces] == ["a-3"] and rest.pagination is None

        await index.upsert(vectors=[("x", [1.0, 0.0]), ("y", [0.0, 2.0]), ("z", [3.0, 3.0])], namespace="a-1")
        assert (await index.describe_namespace(name="a-1")).record_count == 3
        stats = await index.describe_index_stats()
        assert stats.namespaces["a-1"].vector_count == 3 and stats.total_vector_count == 3
        matches = (await index.query(vector=[1.0, 0.0], top_k=3, namespace="a-1")).matches
        assert [(m.id, m.score) for m in matches] == [("z", 3.0), ("x", 1.0), ("y", 0.0)]  # dot product
        assert (await index.query(vector=[1.0, 0.0], top_k=3, namespace="b-1")).matches == []

        page = await index.list_paginated(namespace="a-1", limit=2)
        assert [v.id for v in page.vectors] == ["x", "y"]
        tail = await index.list_paginated(namespace="a-1", limit=2, pagination_token=page.pagination.next)
        assert [v.id for v in tail.vectors] == ["z"] and tail.pagination is None
        await index.delete(ids=["x"], namespace="a-1")
        assert sorted((await index.fetch(ids=["x", "y"], namespace="a-1")).vectors) == ["y"]

        await index.delete_namespace(name="a-1")
        with pytest.raises(NotFoundError):
            await index.delete_namespace(name="a-1")
        with pytest.raises(NotFoundError):
            await index.describe_namespace(name="a-1")


async def test_index_lifecycle_protection_tags_and_faults(pinecone_server: PineconeTestServer,
                                                         admin: AsyncPinecone) -> None:
    await admin.indexes.create(name="kept", schema=SCHEMA, deletion_protection="enabled", tags={"a": "1"}, timeout=-1)
    with pytest.raises(ConflictError):
        await admin.indexes.create(name="kept", schema=SCHEMA, timeout=-1)
    with pytest.raises(ForbiddenError, match="Deletion protection is enabled"):
        await admin.indexes.delete("kept", timeout=-1)
    model = await admin.indexes.configure("kept", deletion_protection="disabled", tags={"a": "", "b": "2"})
    assert model.deletion_protection == "disabled" and dict(model.tags) == {"b": "2"}

    pinecone_server.fail_next("delete_index", 429, retry_after=3)
    with pytest.raises(RateLimitError) as limited:
        await admin.indexes.delete("kept", timeout=-1)
    assert limited.value.retry_after == 3
    pinecone_server.terminate_delay = 0.2
    await admin.indexes.delete("kept", timeout=-1)
    assert (await admin.indexes.describe("kept")).status.state == "Terminating"
    await wait_gone(admin, "kept")
    assert [index.name async for index in admin.indexes.list()] == []

    pinecone_server.max_serverless_indexes = 0
    with pytest.raises(ForbiddenError) as refused:
        await admin.indexes.create(name="more", schema=SCHEMA, timeout=-1)
    assert refused.value.error_code == "QUOTA_EXCEEDED" and refused.value.status_code == 403
