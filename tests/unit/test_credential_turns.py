"""Scoped credentials' rules: names, shares of the connection limit, and when a rotation is due."""
from __future__ import annotations

import datetime

import pytest

from tenantstore.credentials import rotation_due
from tenantstore.models import Credential, InvalidResource, connection_shares, credential_logins

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


def test_the_connection_limit_is_split_so_that_the_logins_stay_within_it() -> None:
    assert connection_shares(20, 3) == [7, 7, 6] and sum(connection_shares(20, 3)) == 20
    assert connection_shares(0, 2) == [-1, -1]  # unlimited stays unlimited


def test_credential_names_and_secrets_must_be_distinct() -> None:
    with pytest.raises(InvalidResource, match="its own name"):
        Credential.list_from([{"name": "app"}, {"name": "app", "access": "readOnly"}], "acme", "acme-store")
    with pytest.raises(InvalidResource, match="its own Secret"):
        Credential.list_from([{"name": "app", "secretName": "acme-store"}], "acme", "acme-store")
    with pytest.raises(InvalidResource, match="must match"):
        Credential.list_from([{"name": "App_1"}], "acme", "acme-store")


def test_the_two_logins_of_a_credential_never_collide_with_another_tenants() -> None:
    assert credential_logins("a-b", "c") == ("tscred_a_b_c_a", "tscred_a_b_c_b")
    assert credential_logins("a", "bc") != credential_logins("a-b", "c")
    longest = credential_logins("a" * 40, "b" * 13)
    assert max(len(login) for login in longest) == 63  # Postgres's limit


def body(every: str | None, turn: dict[str, str]) -> dict:
    rotation = {"rotation": {"every": every}} if every else {}
    return {"spec": {"credentials": [{"name": "app", **rotation}]},
            "status": {"credentials": [{"name": "app", "user": "tscred_t_app_a", **turn}]}}


@pytest.mark.parametrize("every, turn, due", [
    (None, {"lastRotation": "2026-01-01T00:00:00Z"}, False),                       # only when asked
    ("30d", {"lastRotation": "2026-11-15T12:00:00Z"}, False),                      # 15 days ago
    ("30d", {"lastRotation": "2026-10-30T12:00:00Z"}, True),                       # 31 days ago
    (None, {"previousUser": "tscred_t_app_b", "previousUntil": "2026-11-30T12:30:00Z"}, False),  # overlap
    (None, {"previousUser": "tscred_t_app_b", "previousUntil": "2026-11-30T11:59:00Z"}, True),   # overlap over
])
def test_when_a_rotation_or_the_end_of_an_overlap_is_due(every: str | None, turn: dict[str, str], due: bool) -> None:
    assert rotation_due(body(every, turn), NOW) is due
