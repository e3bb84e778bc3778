"""Scoped credentials against a real PostgreSQL 18: a readWrite login acts as the tenant, a readOnly login reads and
can change nothing, each within the tenant's share of connections; removed and torn down without a trace."""
from __future__ import annotations

import dataclasses
import uuid

import psycopg
import pytest

from tenantstore.backends import LoginPlan
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import Access, Credential, DesiredStore, Metric, Quotas, RelationalIsolation, VectorIsolation

APP, VIEWER = Credential("app", Access.READ_WRITE, "s-app"), Credential("viewer", Access.READ_ONLY, "s-viewer")


def tenant(tenant_id: str, relational: RelationalIsolation = RelationalIsolation.SCHEMA,
           vector: VectorIsolation = VectorIsolation.NAMESPACE,
           credentials: tuple[Credential, ...] = (APP, VIEWER), connections: int = 6) -> DesiredStore:
    return DesiredStore(tenant_id=tenant_id, uid=str(uuid.uuid4()), tenant_store=f"test/{tenant_id}", dimension=3,
                        metric=Metric.COSINE, relational=relational, vector=vector,
                        quotas=Quotas(0, 0, connections, 0), suspended=False, shared_database="tenants",
                        shared_index_capacity=100, credentials=credentials)


async def provision(server: PostgresServer, store: DesiredStore, new: bool = True):
    relational = PostgresRelationalStore(server)
    placement, steps = await relational.ensure(store, "owner-pw", password_is_new=new)
    steps += await relational.ensure_credentials(store, plans(store, new))
    vector, vector_steps = await PgvectorStore(server).ensure(store)
    return placement, vector, steps + vector_steps


def plans(store: DesiredStore, new: bool = False) -> dict[str, LoginPlan]:
    """Every credential on its first login, with the password "<name>-pw"."""
    return {c.name: LoginPlan(c.logins[0], f"{c.name}-pw", new) for c in store.credential_roles}


def login(server: PostgresServer, store: DesiredStore, credential: str, database: str | None = None,
          turn: int = 0) -> psycopg.Connection:
    role = next(c.logins[turn] for c in store.credential_roles if c.name == credential)
    return psycopg.connect(f"postgresql://{role}:{credential}-pw@{server.host}:{server.port}/"
                           f"{database or store.database}", autocommit=True)


async def teardown(server: PostgresServer, store: DesiredStore) -> None:
    await PgvectorStore(server).teardown(store)
    await PostgresRelationalStore(server).teardown(store)
    assert await PgvectorStore(server).residue(store) == []
    assert await PostgresRelationalStore(server).residue(store) == []


@pytest.mark.parametrize("relational, vector", [(RelationalIsolation.SCHEMA, VectorIsolation.NAMESPACE),
                                                (RelationalIsolation.DATABASE, VectorIsolation.DEDICATED)],
                         ids=["schema+namespace", "database+dedicated"])
async def test_read_write_acts_as_the_tenant_and_read_only_only_reads(
        server: PostgresServer, relational: RelationalIsolation, vector: VectorIsolation) -> None:
    store = tenant(f"cred-{relational.value[:2]}", relational, vector)
    placement, vectors, steps = await provision(server, store)
    assert {"CredentialCreated", "ReaderRoleCreated"} <= {step.reason for step in steps}
    table = f"{store.schema}.notes"
    with login(server, store, "app") as app:
        assert app.execute("SELECT current_user").fetchone() == (store.role,)  # acts as the tenant
        app.execute(f"CREATE TABLE {table} (body text)")
        app.execute(f"INSERT INTO {table} VALUES ('hello')")
        app.execute(f"INSERT INTO {vectors.table} (id, embedding{', namespace' if vectors.namespace else ''}) "
                    f"VALUES ('v1', '[1,0,0]'{', %s' if vectors.namespace else ''})",
                    (store.tenant_id,) if vectors.namespace else None)
        owner = app.execute("SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = 'notes'",
                            (store.schema,)).fetchone()
        assert owner == (store.role,)  # what it makes is the tenant's, like the owner's
    with login(server, store, "viewer") as viewer:
        assert viewer.execute(f"SELECT body FROM {table}").fetchall() == [("hello",)]  # made after the grant
        assert [row[0] for row in viewer.execute(f"SELECT id FROM {vectors.table}")] == ["v1"]
        for statement in (f"INSERT INTO {table} VALUES ('x')", f"UPDATE {table} SET body = 'x'",
                          f"DELETE FROM {table}", f"TRUNCATE {table}", f"CREATE TABLE {store.schema}.mine (id int)",
                          f"DELETE FROM {vectors.table}", "CREATE TEMPORARY TABLE scratch (id int)",
                          f"SET ROLE {store.role}", "SET ROLE NONE; INSERT INTO " + table + " VALUES ('x')"):
            with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
                viewer.execute(statement)
    # Nothing changed: nothing to do.
    assert await PostgresRelationalStore(server).ensure_credentials(store, plans(store)) == []
    await teardown(server, store)


async def test_the_tenants_connection_limit_is_shared_by_its_logins(server: PostgresServer) -> None:
    store = tenant("cred-limits", connections=5)
    await provision(server, store)
    assert [c.connection_limit for c in store.credential_roles] == [2, 1] and store.connection_limit == 2
    with login(server, store, "viewer"):
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            login(server, store, "viewer").close()
    await teardown(server, store)


async def test_a_removed_credential_loses_its_login_and_sessions(server: PostgresServer) -> None:
    store = tenant("cred-removed")
    await provision(server, store)
    session = login(server, store, "viewer")
    fewer = dataclasses.replace(store, credentials=(APP,))
    steps = await PostgresRelationalStore(server).ensure_credentials(fewer, plans(fewer))
    # The app logins' share of the connections grows to what the viewer's was.
    assert [step.reason for step in steps] == ["CredentialChanged", "CredentialChanged", "CredentialRemoved",
                                               "CredentialRemoved", "ReaderRoleDropped"]
    assert "connection limit 3" in steps[0].message
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed|does not exist"):
        login(server, store, "viewer").close()
    with login(server, store, "app") as app:
        assert app.execute("SELECT 1").fetchone() == (1,)
    await teardown(server, store)


async def test_suspension_locks_out_every_login(server: PostgresServer) -> None:
    store = tenant("cred-suspended")
    await provision(server, store)
    session = login(server, store, "app")
    suspended = dataclasses.replace(store, suspended=True)
    await PostgresRelationalStore(server).ensure(suspended, "owner-pw", password_is_new=False)
    await PostgresRelationalStore(server).ensure_credentials(suspended, plans(suspended))
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    for name in ("app", "viewer"):
        with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
            login(server, store, name).close()
    await teardown(server, store)


async def test_another_tenants_logins_are_not_taken_for_ours(server: PostgresServer) -> None:
    """tscred_a_ begins tenant a-b's logins too: tenant a's reconcile must not drop them."""
    short, longer = tenant("cred"), tenant("cred-x", credentials=(VIEWER,))
    await provision(server, longer)
    await provision(server, dataclasses.replace(short, credentials=()))
    with login(server, longer, "viewer") as viewer:
        assert viewer.execute("SELECT 1").fetchone() == (1,)
    await teardown(server, dataclasses.replace(short, credentials=()))
    await teardown(server, longer)


async def test_a_rotation_opens_the_other_login_and_closes_the_previous_after_the_overlap(
        server: PostgresServer) -> None:
    store = tenant("cred-rotated", credentials=(APP,))
    await provision(server, store)
    first, second = store.credential_roles[0].logins
    old_session = login(server, store, "app")
    relational = PostgresRelationalStore(server)

    overlap = await relational.ensure_credentials(store, {"app": LoginPlan(second, "app-pw-2", True, kept=first)})
    assert overlap == []  # a rotation's Event is the reconcile's; opening a login in turn is no news
    with psycopg.connect(f"postgresql://{second}:app-pw-2@{server.host}:{server.port}/{store.database}") as new:
        assert new.execute("SELECT current_user").fetchone() == (store.role,)
    with login(server, store, "app"):  # the previous password still works during the overlap
        pass

    closed = await relational.ensure_credentials(store, {"app": LoginPlan(second, "app-pw-2", False)})
    assert [step.reason for step in closed] == ["CredentialRetired"] and "1 session(s) ended" in closed[0].message
    with pytest.raises(psycopg.OperationalError):
        old_session.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        login(server, store, "app").close()
    await teardown(server, store)
