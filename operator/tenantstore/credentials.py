"""Scoped credentials: which of each credential's two logins its Secret names, when it rotates, and its Secret.

The Secret is the record of which login is current (its `user`), so a reconcile interrupted anywhere in a
rotation resumes from what clients can actually see. A rotation gives the other login a new password, opens it,
and moves the Secret to it; the previous login stays open until `rotation.overlap` has passed (status says
until when), then closes and its sessions end. It happens every `rotation.every`, and once whenever the
annotation `rotate.tenancy.dev/<credential>` takes a new value.
"""
from __future__ import annotations

import dataclasses
import datetime
import secrets as token_source
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tenantstore import kube, metrics, tracing
from tenantstore.backends import LoginPlan, RelationalPlacement, Step, VectorPlacement
from tenantstore.errors import BackendUnavailable
from tenantstore.kube import SecretDeletion, Secrets, password_in
from tenantstore.models import CredentialRole, DesiredStore, parse_duration

ROTATE_ANNOTATION_PREFIX = "rotate.tenancy.dev/"


@dataclasses.dataclass(frozen=True)
class Turn:
    """A credential's rotation state, as status.credentials[] keeps it."""

    user: str
    generation: int = 1
    last_rotation: str = ""
    previous_user: str = ""
    previous_until: str = ""
    rotation_request: str = ""

    @classmethod
    def from_status(cls, entry: Mapping[str, Any]) -> Turn:
        return cls(user=entry.get("user", ""), generation=int(entry.get("generation") or 1),
                   last_rotation=entry.get("lastRotation", ""), previous_user=entry.get("previousUser", ""),
                   previous_until=entry.get("previousUntil", ""), rotation_request=entry.get("rotationRequest", ""))

    def rotation_due(self, every: datetime.timedelta | None, now: datetime.datetime) -> bool:
        return every is not None and bool(self.last_rotation) and now >= parse_time(self.last_rotation) + every

    def overlapping(self, now: datetime.datetime) -> bool:
        """Whether the previous login is still open (its rotation's overlap has not ended)."""
        return bool(self.previous_user) and bool(self.previous_until) and now < parse_time(self.previous_until)

    def to_status(self, credential: CredentialRole) -> dict[str, Any]:
        return {"name": credential.name, "access": credential.access.value, "secretName": credential.secret_name,
                "user": self.user, "connectionLimit": credential.connection_limit, "generation": self.generation,
                "lastRotation": self.last_rotation,
                **({"previousUser": self.previous_user, "previousUntil": self.previous_until}
                   if self.previous_user else {}),
                **({"rotationRequest": self.rotation_request} if self.rotation_request else {})}


@dataclasses.dataclass
class Plans:
    logins: dict[str, LoginPlan]
    turns: dict[str, Turn]
    steps: list[Step]
    rotated: list[str] = dataclasses.field(default_factory=list)  # credential names

    def status(self, store: DesiredStore) -> list[dict[str, Any]] | None:
        return [self.turns[credential.name].to_status(credential) for credential in store.credential_roles] or None

    def count_rotations(self, owner: Mapping[str, Any]) -> None:
        """Once the reconcile that rotated has succeeded (a failed one rotates again next time)."""
        for name in self.rotated:
            metrics.CREDENTIAL_ROTATIONS.labels(*metrics.TenantSnapshot.from_body(owner).labels, name).inc()


def may_exist(credentials: Sequence[Any], status: Mapping[str, Any]) -> bool:
    """Whether the tenant can have a scoped credential: one is asked for, or status records one made. Neither:
    no reconcile made a login or a Secret for one, so there is nothing to read, correct or remove."""
    return bool(credentials or status.get("credentials"))


def turns_in(status: Mapping[str, Any]) -> dict[str, Turn]:
    return {entry["name"]: Turn.from_status(entry) for entry in status.get("credentials") or () if entry.get("name")}


def rotation_due(body: Mapping[str, Any], now: datetime.datetime) -> bool:
    """Whether a credential of this tenant is due to rotate by time, or its previous login's overlap is over
    (the periodic job reconciles such a tenant; an annotation asking for one is a change of its own)."""
    spec_credentials = {entry.get("name"): entry for entry in (body.get("spec") or {}).get("credentials") or ()}
    for name, turn in turns_in(body.get("status") or {}).items():
        if turn.previous_user and not turn.overlapping(now):
            return True
        every = ((spec_credentials.get(name) or {}).get("rotation") or {}).get("every")
        if turn.rotation_due(parse_duration(every) if every else None, now):
            return True
    return False


async def plan(store: DesiredStore, owner: Mapping[str, Any], secrets: Secrets,
               now: datetime.datetime) -> Plans:
    """Each credential's logins plan and rotation state, from its Secret, status and spec."""
    namespace = owner["metadata"]["namespace"]
    annotations = (owner.get("metadata") or {}).get("annotations") or {}
    turns = turns_in(owner.get("status") or {})
    result = Plans({}, {}, [])
    for credential in store.credential_roles:
        with tracing.backend_call("kubernetes", "read_secret"):
            secret = await secrets.read_tenant_secret(namespace, credential.secret_name, owner)
        held = password_in(secret)
        user = kube.decode(secret.data).get("user", "") if secret is not None else ""
        current = user if user in credential.logins else credential.logins[0]
        turn = turns.get(credential.name) or Turn(user=current, last_rotation=stamp(now))
        request = annotations.get(ROTATE_ANNOTATION_PREFIX + credential.name, "")
        asked = bool(request) and request != turn.rotation_request
        if held and (asked or turn.rotation_due(credential.rotation.every, now)):
            fresh = credential.other(current)
            until = stamp(now + credential.rotation.overlap)
            result.logins[credential.name] = LoginPlan(fresh, new_password(), True, kept=current)
            result.turns[credential.name] = Turn(fresh, turn.generation + 1, stamp(now), current, until,
                                                 request or turn.rotation_request)
            result.steps.append(Step("CredentialRotated", f"credential {credential.name}: Secret "
                                                          f"{credential.secret_name} holds login {fresh} now "
                                                          f"(generation {turn.generation + 1}); {current} keeps "
                                                          f"working until {until}"))
            result.rotated.append(credential.name)
            continue
        kept = turn.previous_user if turn.previous_user in credential.logins and turn.overlapping(now) else None
        # A Secret edited by hand: its login takes the password it now holds (as the owner's role does).
        edited = secret is not None and kube.edited_by_hand(
            {"metadata": {"annotations": secret.metadata.annotations}, "data": secret.data})
        result.logins[credential.name] = LoginPlan(current, held or new_password(), edited or not held, kept=kept)
        result.turns[credential.name] = dataclasses.replace(
            turn, user=current, previous_user=kept or "", previous_until=turn.previous_until if kept else "",
            rotation_request=request if not held else turn.rotation_request)
    return result


async def apply_secrets(store: DesiredStore, owner: Mapping[str, Any], plans: Plans,
                        secret_data: Callable[[RelationalPlacement, VectorPlacement, str], dict[str, str]],
                        relational: RelationalPlacement, vector: VectorPlacement, writes_blocked: bool,
                        secrets: Secrets) -> list[Step]:
    """Each credential's Secret (the owner's keys, its current login, and what it may do); the Secrets of
    credentials no longer in the spec deleted. `secret_data` builds the owner's keys for a login."""
    namespace, steps = owner["metadata"]["namespace"], []
    for credential in store.credential_roles:
        login = plans.logins[credential.name]
        access = credential.access.value
        data = {**secret_data(dataclasses.replace(relational, role=login.current), vector, login.password),
                "access": access, "vectorAccess": access}
        if await secrets.apply_tenant_secret(namespace, credential.secret_name, owner, data,
                                             writes_blocked=writes_blocked, credential=credential.name):
            steps.append(Step("CredentialSecretWritten", f"credential {credential.name} ({access}) written to "
                                                         f"Secret {credential.secret_name}"))
    wanted = {credential.secret_name for credential in store.credential_roles}
    pending = []
    for name, credential_name in sorted((await secrets.credential_secrets(namespace, owner)).items()):
        if name in wanted:
            continue
        deletion = await secrets.delete_tenant_secret(namespace, name, owner)
        if deletion is not SecretDeletion.ABSENT:
            steps.append(Step("CredentialSecretDeleted", f"Secret {name} of removed credential {credential_name} "
                                                         f"deleted"))
        if deletion is SecretDeletion.PENDING:
            pending.append(name)
    if pending:  # a finalizer holds it: the removal is not over until it is gone
        raise BackendUnavailable(f"Secrets of removed credentials still present: {', '.join(pending)}")
    return steps


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_password() -> str:
    # URL-safe, so it can sit in the Secret's URI without escaping.
    return token_source.token_urlsafe(24)
