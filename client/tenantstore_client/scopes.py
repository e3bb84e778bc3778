"""Sub-namespaces inside one tenant's store: a user's (`user_alice`) or a project's (`project_q4`).

A scope is stored with each vector in the library's own metadata fields, next to the tenant's id, inside the
tenant's own partition, table or namespace (which the backend already confines it to). A scoped call adds both to
its filter: the scope keeps a tenant's users and projects apart, and the tenant id is the second fence should the
backend's boundary ever fail. An unscoped call works on the whole of the tenant's store, every scope included.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tenantstore_client.errors import InvalidRequest
from tenantstore_client.types import Filter

SCOPE_FIELD = "_scope"
TENANT_FIELD = "_tenant"
RESERVED = (SCOPE_FIELD, TENANT_FIELD)
SCOPE = re.compile(r"^(user|project)_[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")

Scopes = str | Sequence[str] | None


def user(name: str) -> str:
    """The scope of one end user of the tenant: `user_<name>`."""
    return checked(f"user_{name}")


def project(name: str) -> str:
    """The scope of one project of the tenant: `project_<name>`."""
    return checked(f"project_{name}")


def checked(scope: str) -> str:
    if not isinstance(scope, str) or not SCOPE.match(scope):
        raise InvalidRequest(f"a scope is user_<name> or project_<name> (name: letters, digits, '.', '_', '@', "
                             f"'-', up to 128), got {scope!r}")
    return scope


def listed(scopes: Scopes) -> list[str]:
    """The scopes a call names; empty for an unscoped call."""
    if scopes is None:
        return []
    if not isinstance(scopes, (str, list, tuple)):
        raise InvalidRequest(f"scope is a scope name or a list of them, got {scopes!r}")
    names = [scopes] if isinstance(scopes, str) else list(scopes)
    if not names:
        raise InvalidRequest("name at least one scope (or none, for the whole tenant store)")
    return [checked(name) for name in names]


def single(scope: Scopes) -> list[str]:
    """The scope a write goes to (as a list of at most one): a write has one place."""
    if scope is not None and not isinstance(scope, str):
        raise InvalidRequest(f"an upsert writes in one scope, got {scope!r}")
    return listed(scope)


def kind(scopes: Sequence[str]) -> str:
    """gen_ai.memory.scope: the tenant's whole store, a user's, a project's, or several."""
    if not scopes:
        return "tenant"
    kinds = {name.split("_", 1)[0] for name in scopes}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def stamped(metadata: Mapping[str, Any], scope: str | None, tenant_id: str) -> dict[str, Any]:
    return {**metadata, **({SCOPE_FIELD: scope} if scope else {}), **({TENANT_FIELD: tenant_id} if tenant_id else {})}


def confined(filter: Filter | None, scopes: Sequence[str], tenant_id: str) -> Filter | None:
    """`filter` within the scopes (and the tenant's own vectors); unchanged for an unscoped call."""
    if not scopes:
        return filter
    fences: list[Filter] = [{SCOPE_FIELD: {"$in": list(scopes)}}]
    if tenant_id:
        fences.append({TENANT_FIELD: tenant_id})
    return {"$and": [*fences, *([dict(filter)] if filter else [])]}


def scope_of(metadata: Mapping[str, Any] | None) -> str | None:
    value = (metadata or {}).get(SCOPE_FIELD)
    return value if isinstance(value, str) else None


def in_scopes(metadata: Mapping[str, Any] | None, scopes: Sequence[str], tenant_id: str) -> bool:
    metadata = metadata or {}
    return not scopes or (scope_of(metadata) in scopes and (not tenant_id or metadata.get(TENANT_FIELD) == tenant_id))


def visible(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The application's metadata, without the library's fields."""
    return {key: value for key, value in (metadata or {}).items() if key not in RESERVED}
