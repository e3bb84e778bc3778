"""The Kubernetes reads and writes the operator makes beyond Kopf's own handler patches: tenant Secrets, the
Secrets a StoreClass names, Namespace labels, and TenantStore reads and status patches from periodic jobs.

Tenant Secrets are owner-referenced by their TenantStore and labelled with the tenant id; the operator
never modifies or deletes a Secret that another object owns.
"""
from __future__ import annotations

import base64
import enum
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from tenantstore import redaction
from tenantstore.errors import BackendUnavailable, SecretConflict, StoreClassInvalid
from tenantstore.api import (API_VERSION, CREDENTIAL_LABEL, DATA_DIGEST_ANNOTATION, GROUP, MANAGED_BY, MANAGED_BY_LABEL,
                             TENANT_ID_LABEL, VERSION, WRITES_BLOCKED_ANNOTATION, WRITES_BLOCKED_KEY)
from tenantstore.models import SecretKeyRef

logger = logging.getLogger(__name__)

# A StoreClass's Secrets (admin URI, Pinecone key) are read at most this often: every reconcile used to read
# the admin Secret, a third of the operator's Secret reads. A rotated value is picked up within this time.
CLASS_SECRET_CACHE_SECONDS = 5.0
NOT_READ = object()  # apply_tenant_secret reads the Secret itself


async def api_client() -> client.ApiClient:
    """In a pod: the service account; elsewhere: the current kubeconfig (KUBECONFIG honoured)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return await config.new_client_from_config()


def decode(data: Mapping[str, str] | None) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}


def password_in_data(data: Mapping[str, str] | None) -> str | None:
    """The password in a Secret's data as the API holds it (base64 values)."""
    return decode(data).get("password") or None


def password_in(secret: client.V1Secret | None) -> str | None:
    """The password a tenant's Secret keeps, None without a Secret."""
    return decode(secret.data).get("password") if secret is not None else None


class SecretDeletion(enum.Enum):
    ABSENT = "absent"  # there was no Secret of ours
    DELETED = "deleted"
    PENDING = "pending"  # deleted, but another controller's finalizer still holds it


class Secrets:
    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)
        self._class_values: dict[SecretKeyRef, tuple[str, float]] = {}

    async def read(self, namespace: str, name: str) -> client.V1Secret | None:
        try:
            return await self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data (an export destination's credentials); None when it does not exist."""
        secret = await self.read(namespace, name)
        return None if secret is None else decode(secret.data)

    async def value(self, ref: SecretKeyRef, fresh: bool = False) -> str:
        """One key of a Secret a StoreClass names (the admin URI, an API key), cached for a short while."""
        cached = self._class_values.get(ref)
        if not fresh and cached is not None and time.monotonic() - cached[1] < CLASS_SECRET_CACHE_SECONDS:
            return cached[0]
        try:
            secret = await self.read(ref.namespace, ref.name)
        except ApiException as error:
            raise BackendUnavailable(f"cannot read Secret {ref.namespace}/{ref.name}: {error.reason}") from error
        if secret is None:
            raise StoreClassInvalid(f"Secret {ref.namespace}/{ref.name} named by the StoreClass does not exist")
        value = decode(secret.data).get(ref.key)
        if not value:
            raise StoreClassInvalid(f"Secret {ref.namespace}/{ref.name} has no key {ref.key!r}")
        # Drivers echo pieces of a malformed admin URI in their errors: every log line, Event and span is
        # scrubbed of this value, and of the password inside it, from now on.
        redaction.remember(value)
        self._class_values[ref] = (value, time.monotonic())
        return value

    async def read_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any]) -> client.V1Secret | None:
        """The tenant's Secret, or None if there is none yet; SecretConflict if the name is someone else's."""
        secret = await self.read(namespace, name)
        if secret is not None:
            self._check_ours(secret, owner)
        return secret

    async def apply_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any],
                                  data: Mapping[str, str], writes_blocked: bool = False,
                                  current: client.V1Secret | None | object = NOT_READ, credential: str = "") -> bool:
        """Create or correct the tenant's Secret (or, `credential`, a scoped credential's); False when it already
        said exactly this.

        `current` is the Secret as the caller just read it (saves a GET); a stale one costs a re-read.
        """
        try:
            return await self._apply_tenant_secret(namespace, name, owner, data, writes_blocked, current, credential)
        except ApiException as error:
            if error.status != 409 or current is NOT_READ:
                raise
            return await self._apply_tenant_secret(namespace, name, owner, data, writes_blocked, NOT_READ,
                                                   credential)

    async def _apply_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any],
                                   data: Mapping[str, str], writes_blocked: bool, current: Any,
                                   credential: str) -> bool:
        encoded = with_writes_blocked_key(
            {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}, writes_blocked)
        wanted_meta = {"labels": {TENANT_ID_LABEL: owner["spec"]["tenantId"], MANAGED_BY_LABEL: MANAGED_BY,
                                  **({CREDENTIAL_LABEL: credential} if credential else {})},
                       "ownerReferences": [owner_reference(owner)]}
        secret = await self.read(namespace, name) if current is NOT_READ else current
        if secret is None:
            annotations = {WRITES_BLOCKED_ANNOTATION: "true"} if writes_blocked else {}
            annotations[DATA_DIGEST_ANNOTATION] = data_digest(encoded)
            body = {"metadata": {"name": name, "annotations": annotations, **wanted_meta}, "type": "Opaque",
                    "data": encoded}
            await self.core.create_namespaced_secret(namespace, body)
            return True
        self._check_ours(secret, owner)
        owned = any(ref.uid == owner["metadata"]["uid"] for ref in secret.metadata.owner_references or ())
        labels = secret.metadata.labels or {}
        annotations = {**with_writes_blocked(secret.metadata.annotations, writes_blocked),
                       DATA_DIGEST_ANNOTATION: data_digest(encoded)}
        if secret.data == encoded and owned and all(labels.get(k) == v for k, v in wanted_meta["labels"].items()) \
                and annotations == (secret.metadata.annotations or {}):
            return False
        # Replace rather than merge, so keys we no longer write do not linger; resourceVersion guards races.
        body = {"metadata": {"name": name, "resourceVersion": secret.metadata.resource_version,
                             "labels": {**labels, **wanted_meta["labels"]}, "annotations": annotations,
                             "ownerReferences": wanted_meta["ownerReferences"]},
                "type": secret.type or "Opaque", "data": encoded}
        await self.core.replace_namespaced_secret(name, namespace, body)
        return True

    async def credential_secrets(self, namespace: str, owner: Mapping[str, Any]) -> dict[str, str]:
        """The scoped credentials' Secrets this TenantStore owns: Secret name -> credential name."""
        listed = await self.core.list_namespaced_secret(
            namespace, label_selector=f"{TENANT_ID_LABEL}={owner['spec']['tenantId']},{CREDENTIAL_LABEL}")
        return {secret.metadata.name: (secret.metadata.labels or {}).get(CREDENTIAL_LABEL, "")
                for secret in listed.items
                if any(ref.uid == owner["metadata"]["uid"] for ref in secret.metadata.owner_references or ())}

    async def mark_writes_blocked(self, namespace: str, name: str, owner: Mapping[str, Any], blocked: bool) -> bool:
        """Set or clear the annotation and data key clients honour where the backend cannot refuse writes itself
        (Pinecone); a Secret edited by hand stays recognisably so."""
        secret = await self.read(namespace, name)
        if secret is None or not self._is_ours(secret, owner):
            return False
        data = with_writes_blocked_key(secret.data, blocked)
        annotations = with_writes_blocked(secret.metadata.annotations, blocked)
        if data == (secret.data or {}) and annotations == (secret.metadata.annotations or {}):
            return False
        if not edited_by_hand({"metadata": {"annotations": secret.metadata.annotations}, "data": secret.data}):
            annotations[DATA_DIGEST_ANNOTATION] = data_digest(data)
        # A merge patch: null removes a key; resourceVersion makes a racing write retry rather than be undone.
        patch = {"metadata": {"resourceVersion": secret.metadata.resource_version,
                              "annotations": {WRITES_BLOCKED_ANNOTATION: "true" if blocked else None,
                                              DATA_DIGEST_ANNOTATION: annotations.get(DATA_DIGEST_ANNOTATION)}},
                 "data": {WRITES_BLOCKED_KEY: data.get(WRITES_BLOCKED_KEY)}}
        await self.core.patch_namespaced_secret(name, namespace, patch)
        return True

    async def delete_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any]) -> SecretDeletion:
        secret = await self.read(namespace, name)
        if secret is None or not self._is_ours(secret, owner):
            return SecretDeletion.ABSENT
        try:
            response = await self.core.delete_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            return SecretDeletion.DELETED
        # The API answers with a Status when the object is gone, with the object while finalizers hold it.
        return SecretDeletion.DELETED if getattr(response, "kind", None) == "Status" else SecretDeletion.PENDING

    async def release_tenant_secret(self, namespace: str, name: str, owner: Mapping[str, Any]) -> bool:
        """Retain: drop the owner reference so the garbage collector keeps the credentials with the data."""
        secret = await self.read(namespace, name)
        if secret is None or not self._is_ours(secret, owner):
            return False
        remaining = [ref for ref in secret.metadata.owner_references or () if ref.uid != owner["metadata"]["uid"]]
        patch = [{"op": "replace", "path": "/metadata/ownerReferences",
                  "value": [api_dict(ref) for ref in remaining]}]
        await self.core.patch_namespaced_secret(name, namespace, patch)
        return True

    @staticmethod
    def _is_ours(secret: client.V1Secret, owner: Mapping[str, Any]) -> bool:
        refs = secret.metadata.owner_references or ()
        labels = secret.metadata.labels or {}
        if any(ref.uid == owner["metadata"]["uid"] for ref in refs):
            return True
        # An orphan we made for the same tenant (left by deletionPolicy Retain) may be adopted.
        return not refs and labels.get(MANAGED_BY_LABEL) == MANAGED_BY \
            and labels.get(TENANT_ID_LABEL) == owner["spec"]["tenantId"]

    def _check_ours(self, secret: client.V1Secret, owner: Mapping[str, Any]) -> None:
        if not self._is_ours(secret, owner):
            raise SecretConflict(f"Secret {secret.metadata.namespace}/{secret.metadata.name} exists and is not "
                                 f"managed for this TenantStore; set spec.secretName to another name")


    async def apply_owned_secret(self, namespace: str, name: str, owner: Mapping[str, Any],
                                 labels: Mapping[str, str], data: Mapping[str, str]) -> bool:
        """Create or correct a Secret that `owner` (any kind) controls; False when it already says this.
        SecretConflict when the name holds a Secret the operator did not make for that owner."""
        try:
            return await self._apply_owned_secret(namespace, name, owner, labels, data)
        except ApiException as error:
            if error.status != 409:
                raise
            return await self._apply_owned_secret(namespace, name, owner, labels, data)  # changed meanwhile

    async def _apply_owned_secret(self, namespace: str, name: str, owner: Mapping[str, Any],
                                  labels: Mapping[str, str], data: Mapping[str, str]) -> bool:
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        secret = await self.read(namespace, name)
        if secret is None:
            await self.core.create_namespaced_secret(namespace, {
                "metadata": {"name": name, "labels": {**labels, MANAGED_BY_LABEL: MANAGED_BY},
                             "ownerReferences": [owner]}, "type": "Opaque", "data": encoded})
            return True
        if not any(ref.uid == owner["uid"] for ref in secret.metadata.owner_references or ()):
            raise SecretConflict(f"Secret {namespace}/{name} exists and was not made by the operator for "
                                 f"{owner['kind']} {owner['name']}; remove or rename it")
        current_labels = secret.metadata.labels or {}
        if secret.data == encoded and all(current_labels.get(key) == value for key, value in labels.items()):
            return False
        await self.core.replace_namespaced_secret(name, namespace, {
            "metadata": {"name": name, "resourceVersion": secret.metadata.resource_version,
                         "labels": {**current_labels, **labels, MANAGED_BY_LABEL: MANAGED_BY},
                         "annotations": secret.metadata.annotations or {}, "ownerReferences": [owner]},
            "type": secret.type or "Opaque", "data": encoded})
        return True


class NamespaceLabels(Protocol):
    async def labels(self, name: str) -> Mapping[str, str]:
        """The labels of a Namespace; BackendUnavailable when they cannot be read."""


class Namespaces:
    """Namespace labels, read only for StoreClasses that admit some namespaces (spec.allowedNamespaces).

    Read when needed rather than watched: classes without the field cost nothing, and a Namespace watch
    would need list/watch of every namespace in the cluster.
    """

    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)

    async def labels(self, name: str) -> dict[str, str]:
        try:
            namespace = await self.core.read_namespace(name)
        except ApiException as error:
            raise BackendUnavailable(f"cannot read the labels of Namespace {name}: {error.reason}") from error
        return dict(namespace.metadata.labels or {})


class StoreClassStatuses:
    """A StoreClass's status, written over the version it was computed from and computed again on a conflict.

    Its handler and timers (the class check, the usage and the verification passes) each write some of one
    conditions list, and a merge patch replaces a list whole: written from a snapshot, one would drop a condition
    another has just written (and the next pass would announce it again)."""

    ATTEMPTS = 5

    def __init__(self, api: client.ApiClient):
        self.custom = client.CustomObjectsApi(api)

    async def read(self, name: str) -> dict[str, Any] | None:
        # A listing by name: the operator may list and watch StoreClasses, not get them one by one.
        listed = await self.custom.list_cluster_custom_object(GROUP, VERSION, "storeclasses",
                                                              field_selector=f"metadata.name={name}")
        return next(iter(listed.get("items") or ()), None)

    async def update(self, name: str, changes: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                     seen: Mapping[str, Any] | None = None) -> bool:
        """Write `changes(status as it is now)`; False if the class is gone or kept changing under the write.

        `seen`: the status as the caller last saw it; when that needs no change, nothing is read or written (a
        pass that changes nothing costs no request)."""
        if seen is not None and not changes(seen):
            return True
        for _ in range(self.ATTEMPTS):
            body = await self.read(name)
            if body is None:
                return False
            found = changes(body.get("status") or {})
            if not found:
                return True
            try:
                await self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, "storeclasses", name,
                    {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": dict(found)},
                    _content_type="application/merge-patch+json")
                return True
            except ApiException as error:
                if error.status == 404:
                    return False
                if error.status != 409:
                    raise
        logger.warning("StoreClass %s changed under %d status writes in a row: the next pass writes it",
                       name, self.ATTEMPTS)
        return False


class TenantStatuses:
    """Status writes made outside a Kopf handler's own patch (the per-class measurement job, exports)."""

    def __init__(self, api: client.ApiClient, plural: str = "tenantstores"):
        self.custom = client.CustomObjectsApi(api)
        self.plural = plural

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, self.plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def with_tenant_id(self, tenant_id: str) -> list[dict[str, Any]]:
        """The TenantStores, in any namespace, whose spec.tenantId is `tenant_id` (one, unless in conflict)."""
        listed = await self.custom.list_cluster_custom_object(GROUP, VERSION, self.plural)
        return [item for item in listed.get("items") or () if (item.get("spec") or {}).get("tenantId") == tenant_id]

    async def create(self, body: Mapping[str, Any]) -> None:
        """Create the object unless one of its name exists (the caller reads it back either way)."""
        try:
            await self.custom.create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"],
                                                              self.plural, dict(body))
        except ApiException as error:
            if error.status != 409:
                raise

    async def patch(self, body: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
        await self._patch(body, {"status": dict(changes)})

    async def patch_unless_changed(self, body: Mapping[str, Any], changes: Mapping[str, Any]) -> bool:
        """Patch only the version of the object `body` is (False if it changed since, and nothing is written).

        For a job that judged a snapshot: conditions are one list in a merge patch, so a write computed from an
        old snapshot would put back what a reconcile has changed since (a Ready it has just turned False)."""
        version = body["metadata"]["resourceVersion"]
        try:
            return await self._patch(body, {"metadata": {"resourceVersion": version}, "status": dict(changes)})
        except ApiException as error:
            if error.status == 409:
                return False
            raise

    async def _patch(self, body: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
        meta = body["metadata"]
        try:
            await self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], self.plural, meta["name"], dict(patch),
                _content_type="application/merge-patch+json")
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing left to report on
                raise
            return False
        return True


def replacing(old: Any, new: Any) -> Any:
    """A JSON merge patch that turns `old` into `new` (a merge patch keeps keys it does not name: removed ones
    are named with null)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch = {key: replacing(old.get(key), value) for key, value in new.items()}
    patch.update({key: None for key in old if key not in new})
    return patch


def data_digest(encoded: Mapping[str, str] | None) -> str:
    """A digest of a Secret's data as the API holds it (base64 values), independent of key order."""
    return hashlib.sha256(json.dumps(dict(encoded or {}), sort_keys=True).encode()).hexdigest()[:32]


def edited_by_hand(secret: Mapping[str, Any]) -> bool:
    """A tenant Secret whose data is not what the operator last wrote there."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return annotations.get(DATA_DIGEST_ANNOTATION) != data_digest(secret.get("data"))


def with_writes_blocked_key(encoded: Mapping[str, str] | None, blocked: bool) -> dict[str, str]:
    """A Secret's data (base64 values) with the writes-blocked key set or removed."""
    result = {key: value for key, value in (encoded or {}).items() if key != WRITES_BLOCKED_KEY}
    if blocked:
        result[WRITES_BLOCKED_KEY] = base64.b64encode(b"true").decode()
    return result


def with_writes_blocked(annotations: Mapping[str, str] | None, blocked: bool) -> dict[str, str]:
    result = {key: value for key, value in (annotations or {}).items() if key != WRITES_BLOCKED_ANNOTATION}
    if blocked:
        result[WRITES_BLOCKED_ANNOTATION] = "true"
    return result


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "TenantStore", "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def api_dict(ref: client.V1OwnerReference) -> dict[str, Any]:
    return {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name, "uid": ref.uid,
            "controller": ref.controller, "blockOwnerDeletion": ref.block_owner_deletion}
