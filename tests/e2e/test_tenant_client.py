"""The client library on Secrets the running operator wrote: the demo's proof, a readOnly credential refused by the
library and by Postgres, and a quota Block that reaches a mounted Secret (data key, not only the annotation) so the
library refuses writes, on pgvector and on Pinecone (which cannot refuse them itself)."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import tenantstore_client as ts
from e2e_kit import condition, pinecone_vector, store_class, tenant_secret, tenant_store, wait_for_condition
from pinecone_server import PineconeTestServer

from tenantstore import kube
from tenantstore_dev.demo import proof
from tenantstore_dev.environment import Kubectl, OperatorProcess, wait_for

VIEWER = {"name": "viewer", "access": "readOnly"}


class MountedSecret:
    """A Secret as a pod sees it mounted: files the kubelet rewrites from the API (here, on `sync()`)."""

    def __init__(self, kubectl: Kubectl, namespace: str, name: str, directory: Path):
        self.kubectl, self.namespace, self.name, self.directory = kubectl, namespace, name, directory
        directory.mkdir()
        self.sync()

    def sync(self) -> dict[str, str]:
        data = tenant_secret(self.kubectl, self.namespace, self.name)
        for stale in self.directory.iterdir():
            if stale.name not in data:
                stale.unlink()
        for key, value in data.items():
            (self.directory / key).write_text(value)
        return data

    def wait_for_writes_blocked(self, blocked: bool) -> None:
        """Until the API's copy says so, in its data and its annotation, and still reads as the operator's own."""
        def says_so() -> bool:
            body = self.kubectl.get("secret", self.name, self.namespace) or {}
            data = body.get("data") or {}
            annotations = body["metadata"].get("annotations") or {}
            in_data = base64.b64decode(data.get("writesBlocked", "")).decode() == "true"
            annotated = annotations.get("tenancy.dev/writes-blocked") == "true"
            return in_data == annotated == blocked and not kube.edited_by_hand(body)
        wait_for(f"Secret {self.name} to say writesBlocked={blocked}", says_so, timeout=60)
        self.sync()


def vector(dimension: int, axis: int = 0) -> list[float]:
    return [1.0 if i == axis else 0.1 for i in range(dimension)]


def check_block_cycle(kubectl: Kubectl, namespace: str, name: str, owner: MountedSecret, viewer: MountedSecret,
                      store: ts.TenantStore, dimension: int, over_limit: Callable[[], None]) -> None:
    """Fill to the document limit, see the library refuse writes from the mounted Secret, delete, write again."""
    over_limit()
    wait_for_condition(kubectl, namespace, name, "QuotaExceeded", "True", reason="WritesBlocked")
    owner.wait_for_writes_blocked(True)
    viewer.wait_for_writes_blocked(True)  # scoped credentials' Secrets say it too
    with pytest.raises(ts.WritesBlocked, match="quota"):
        store.upsert([ts.Vector("one-too-many", vector(dimension, 2))])
    assert store.count() == 3  # reads keep working
    store.delete(ids=["doc-0"])  # and deleting is how a tenant gets back under
    wait_for_condition(kubectl, namespace, name, "QuotaExceeded", "False", reason="WithinLimits")
    owner.wait_for_writes_blocked(False)
    viewer.wait_for_writes_blocked(False)
    store.upsert([ts.Vector("welcome-back", vector(dimension, 1))])


def test_the_library_on_a_pgvector_tenant(kubectl: Kubectl, operator: OperatorProcess, namespace: str,
                                         tmp_path: Path) -> None:
    kubectl.apply(tenant_store("libpg", namespace, "libpg", credentials=[VIEWER], quotaAction="Block",
                               quotas={"maxDocuments": 3}))
    wait_for_condition(kubectl, namespace, "libpg", "Ready", "True")
    owner = MountedSecret(kubectl, namespace, "libpg-store", tmp_path / "owner")
    viewer = MountedSecret(kubectl, namespace, "libpg-viewer", tmp_path / "viewer")

    shown = proof(owner.sync(), 3)  # the demo's proof, as `make demo` prints it
    assert "nearest to the probe vector: demo-1; with filter kind=other: ['demo-2']; vectors visible to it: 2" \
        in shown

    with ts.connect(viewer.directory, refresh_seconds=0) as reading:
        assert [match.id for match in reading.query(vector(3), top_k=2)] == ["demo-1", "demo-2"]
        with pytest.raises(ts.ReadOnlyCredential, match="readOnly"):
            reading.upsert([ts.Vector("sneaky", vector(3))])
    # A Secret forged to claim readWrite changes nothing: the login itself is read-only in Postgres.
    forged = {**viewer.sync(), "access": "readWrite", "vectorAccess": "readWrite"}
    with ts.connect(forged) as forging:
        with pytest.raises(ts.ReadOnlyCredential, match="Postgres refused"):
            forging.upsert([ts.Vector("sneaky", vector(3))])
        with pytest.raises(ts.ReadOnlyCredential, match="Postgres refused"):
            forging.delete(ids=["demo-1"])

    with ts.connect(owner.directory, refresh_seconds=0) as store:
        store.delete(ids=["demo-1", "demo-2"])
        check_block_cycle(kubectl, namespace, "libpg", owner, viewer, store, 3, lambda: store.upsert(
            [ts.Vector(f"doc-{i}", vector(3, i)) for i in range(3)]))


def test_the_library_on_a_pinecone_tenant(kubectl: Kubectl, operator: OperatorProcess, namespace: str,
                                         tmp_path: Path) -> None:
    server = PineconeTestServer().start()
    try:
        kubectl.apply(store_class("cone-lib", vector=pinecone_vector(kubectl, server, "pinecone-lib",
                                                                     exposeApiKey=True)))
        kubectl.apply(tenant_store("libpc", namespace, "libpc", storeClassName="cone-lib", dimension=4,
                                   credentials=[VIEWER], quotaAction="Block", quotas={"maxDocuments": 3}))
        wait_for_condition(kubectl, namespace, "libpc", "Ready", "True")
        # The exposed key is the class's choice, said once on the class; its tenants are not failed for it.
        found = wait_for("StoreClass cone-lib IsolationBroken=True ApiKeyExposed", lambda: condition(
            kubectl.get("storeclass", "cone-lib"), "IsolationBroken").get("reason") == "ApiKeyExposed")
        assert found
        assert condition(kubectl.get("tenantstore", "libpc", namespace), "Ready")["status"] == "True"
        assert json.loads(kubectl("get", "events", "-n", namespace, "-o", "json", "--field-selector",
                                  "involvedObject.name=libpc,reason=IsolationBroken"))["items"] == []
        owner = MountedSecret(kubectl, namespace, "libpc-store", tmp_path / "owner")
        viewer = MountedSecret(kubectl, namespace, "libpc-viewer", tmp_path / "viewer")
        assert viewer.sync()["vectorAccess"] == "readOnly"

        with ts.connect(viewer.directory, refresh_seconds=0) as reading:
            with pytest.raises(ts.ReadOnlyCredential, match="readOnly"):
                reading.upsert([ts.Vector("sneaky", vector(4))])
            with pytest.raises(ts.ReadOnlyCredential):
                reading.delete(filter={"any": {"$exists": False}})
        with ts.connect(owner.directory, refresh_seconds=0) as store:
            check_block_cycle(kubectl, namespace, "libpc", owner, viewer, store, 4, lambda: store.upsert(
                [ts.Vector(f"doc-{i}", vector(4, i)) for i in range(3)]))
            assert sorted(store.fetch(["doc-1", "doc-2", "welcome-back", "sneaky", "one-too-many"])) == \
                ["doc-1", "doc-2", "welcome-back"]
        kubectl("delete", "tenantstore", "libpc", "-n", namespace, "--wait=true", "--timeout=120s")
    finally:
        kubectl("delete", "storeclass", "cone-lib", "--ignore-not-found")
        server.stop()
    server.check()
