"""A StoreClass's global knowledge (spec.globalStore): each global index made and kept as made by its backend,
and the platform's writer Secret written (in writerSecretNamespace); what the class's status and tenants' Secrets say.

The writer Secret is the only credential that can change a global index. Its password is the Secret's: a
missing Secret gets a new one (and the login is given it), an existing one is kept across passes.
"""
from __future__ import annotations

import dataclasses
import secrets as token
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from tenantstore import leader
from tenantstore.api import API_VERSION, ConditionType
from tenantstore.backends import GlobalPlacement, RelationalPlacement, Step, VectorStore
from tenantstore.conditions import Condition
from tenantstore.errors import ReconcileError
from tenantstore.kube import Secrets
from tenantstore.models import DriftPolicy, StoreClass

STORECLASS_LABEL = "tenancy.dev/storeclass"
GLOBAL_INDEX_LABEL = "tenancy.dev/global-index"


@dataclasses.dataclass(frozen=True)
class GlobalOutcome:
    condition: Condition
    indexes: list[dict[str, Any]]  # status.globalStore.indexes
    steps: list[Step]


def writer_namespace(store_class: StoreClass) -> str:
    return store_class.global_writer_namespace or leader.default_namespace()


def class_owner(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": API_VERSION, "kind": "StoreClass", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": False}


async def converge(store_class: StoreClass, body: Mapping[str, Any], vector: VectorStore,
                   secrets: Secrets) -> GlobalOutcome:
    """Every global index of the class as made, with its writer Secret; the class's GlobalStoreReady condition."""
    namespace, owner = writer_namespace(store_class), class_owner(body)
    indexes: list[dict[str, Any]] = []
    steps: list[Step] = []
    try:
        for index in store_class.global_indexes:
            existing = await secrets.data(namespace, index.writer_secret)
            password = (existing or {}).get("password") or ""
            placement, writer, made = await vector.ensure_global(
                index, password or token.token_urlsafe(24), password_is_new=not password,
                repair=store_class.drift_policy is DriftPolicy.REPAIR)
            if await secrets.apply_owned_secret(namespace, index.writer_secret, owner,
                                                {STORECLASS_LABEL: store_class.name, GLOBAL_INDEX_LABEL: index.key},
                                                writer):
                made.append(Step("GlobalWriterSecretWritten", f"Secret {namespace}/{index.writer_secret} can write "
                                                              f"the global index {index.store_name}"))
            steps += made
            indexes.append({"name": index.store_name, "dimension": index.dimension, "metric": index.metric.value,
                            **placement.to_status(), "writerSecret": f"{namespace}/{index.writer_secret}"})
    except ReconcileError as error:
        return GlobalOutcome(Condition(ConditionType.GLOBAL_STORE_READY, False, error.reason, str(error)),
                             indexes, steps)
    except ApiException as error:  # e.g. no RBAC for Secrets in writerSecretNamespace
        return GlobalOutcome(Condition(ConditionType.GLOBAL_STORE_READY, False, "WriterSecretNotWritten",
                                       f"cannot write the writer Secrets in namespace {namespace}: {error.status} "
                                       f"{error.reason}"), indexes, steps)
    names = ", ".join(entry["name"] for entry in indexes)
    return GlobalOutcome(Condition(ConditionType.GLOBAL_STORE_READY, True, "GlobalIndexesReady",
                                   f"{names}: readable by every tenant of the class, written only through "
                                   f"their writer Secrets in {namespace}"), indexes, steps)


def reader_keys(placement: GlobalPlacement | None, relational: RelationalPlacement, password: str,
                owner: bool) -> dict[str, str]:
    """What a tenant Secret carries to search the class's global index (read-only) with the login it names.

    On pgvector the index is in the shared database: a tenant with a database of its own reaches it with its
    owner login (its role may connect there through the reader role); its scoped logins may connect only to
    the tenant's database, so their Secrets carry no global keys."""
    if placement is None:
        return {}
    if placement.table:
        if relational.database != placement.database and not owner:
            return {}
        uri = (f"postgresql://{relational.role}:{password}@{relational.host}:{relational.port}/"
               f"{placement.database}")
        return {"globalStore": placement.name, "globalTable": placement.table, "globalUri": uri}
    return {"globalStore": placement.name, "globalHost": placement.host, "globalNamespace": placement.namespace}
