"""A StoreClass's status is written over the version it was computed from, and computed again on a conflict."""
from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from tenantstore.kube import StoreClassStatuses


class StoreClassApi:
    """The two calls StoreClassStatuses makes, on one StoreClass that another writer changes once meanwhile."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"metadata": {"name": "standard", "resourceVersion": "1"},
                                     "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        self.writes: list[dict[str, Any]] = []
        self.interleave = True

    async def list_cluster_custom_object(self, *args: Any, field_selector: str, **_: Any) -> dict[str, Any]:
        assert field_selector == "metadata.name=standard"
        return {"items": [self.body]}

    async def patch_cluster_custom_object_status(self, group: str, version: str, plural: str, name: str,
                                                 patch: dict[str, Any], **_: Any) -> None:
        if self.interleave:  # another writer's condition lands between this writer's read and its write
            self.interleave = False
            self.body = {"metadata": {"name": name, "resourceVersion": "2"}, "status": {"conditions": [
                *self.body["status"]["conditions"], {"type": "IsolationBroken", "status": "False"}]}}
        if patch["metadata"]["resourceVersion"] != self.body["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.writes.append(patch["status"])
        self.body = {"metadata": {"name": name, "resourceVersion": "3"}, "status": {**self.body["status"],
                                                                                    **patch["status"]}}


def test_a_write_computed_from_an_old_version_is_computed_again_and_keeps_the_other_writers_condition() -> None:
    statuses = StoreClassStatuses.__new__(StoreClassStatuses)
    statuses.custom = api = StoreClassApi()

    def add_near_capacity(status: dict[str, Any]) -> dict[str, Any]:
        return {"conditions": [*status.get("conditions", []), {"type": "SharedIndexesNearCapacity", "status": "True"}]}

    assert asyncio.run(statuses.update("standard", add_near_capacity))
    assert [c["type"] for c in api.body["status"]["conditions"]] == ["Ready", "IsolationBroken",
                                                                     "SharedIndexesNearCapacity"]
    assert len(api.writes) == 1  # the write from the old version was refused, not applied
    assert asyncio.run(statuses.update("standard", lambda status: {}))  # nothing to change: no write
    assert len(api.writes) == 1

    def fail_on_read(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("read although the status seen needs no change")
    api.list_cluster_custom_object = fail_on_read  # type: ignore[method-assign]
    seen = api.body["status"]
    assert asyncio.run(statuses.update("standard", lambda status: {} if status is seen else {"x": 1}, seen=seen))
