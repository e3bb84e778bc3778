"""Scoped credentials through the reconcile core: made once, a second run touches nothing, a rotation moves the
Secret to the other login and keeps the previous one open until its overlap ends."""
from __future__ import annotations

import datetime

from tenantstore import credentials

from .world import World, annotated, reasons, tenant_body

CREDENTIALS = [{"name": "app", "rotation": {"overlap": "1h"}}, {"name": "viewer", "access": "readOnly"}]


async def test_credentials_are_made_once_and_a_second_run_writes_nothing(world: World) -> None:
    body = await world.provision(tenant_body(credentials=CREDENTIALS))
    assert [entry["user"] for entry in body["status"]["credentials"]] == ["tscred_acme_app_a", "tscred_acme_viewer_a"]
    assert world.secrets.get("customers", "acme-viewer").data["access"] == "readOnly"
    writes = world.secrets.writes

    again = await world.reconcile(body)

    assert again.events == [] and again.status_patch(body["status"]) == {}
    assert world.secrets.writes == writes


async def test_a_rotation_asked_for_moves_the_secret_to_the_other_login(world: World) -> None:
    body = await world.provision(tenant_body(credentials=CREDENTIALS))
    before = world.secrets.get("customers", "acme-app").data

    outcome, rotated = await world.converge(annotated(body, "rotate.tenancy.dev/app", "now"))

    assert reasons(outcome) == ["CredentialRotated", "CredentialSecretWritten"]
    after = world.secrets.get("customers", "acme-app").data
    assert after["user"] == "tscred_acme_app_b" and after["password"] != before["password"]
    turn = rotated["status"]["credentials"][0]
    assert (turn["generation"], turn["previousUser"], turn["rotationRequest"]) == (2, "tscred_acme_app_a", "now")
    assert world.relational.logins["tscred_acme_app_a"][3] and world.relational.logins["tscred_acme_app_b"][3]
    # The same annotation again asks for nothing; the end of the overlap is due an hour later.
    assert reasons(await world.reconcile(rotated)) == []
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1, minutes=1)
    assert credentials.rotation_due(rotated, later) and not credentials.rotation_due(rotated, later
                                                                                     - datetime.timedelta(hours=1))
