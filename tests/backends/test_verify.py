"""What the verification pass sees of tenants broken behind the operator's back, on a real PostgreSQL 18."""
from __future__ import annotations

import dataclasses

import psycopg
import pytest
from test_postgres_backends import provision, tenant, tenant_uri

from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import BackendUnavailable, SessionEnded
from tenantstore_dev.postgres import EmbeddedPostgres
from tenantstore.models import RelationalIsolation, VectorIsolation


async def drifts_of(server: PostgresServer, store, placement) -> set[str]:
    relational = await PostgresRelationalStore(server).verify([store])
    vector = await PgvectorStore(server).verify([(store, placement)])
    return {drift.kind for drift in relational.get(store.tenant_id, []) + vector.get(store.tenant_id, [])}


async def teardown(server: PostgresServer, store) -> None:
    await PgvectorStore(server).teardown(store)
    await PostgresRelationalStore(server).teardown(store)
    assert await PostgresRelationalStore(server).residue(store) == []


@pytest.mark.parametrize("breakage, expected", [
    ("DROP SCHEMA tenant_vshared CASCADE", {"SchemaMissing"}),
    ("DROP TABLE tenantstore_vectors.tenant_vshared", {"NamespaceMissing"}),
    ("DROP POLICY tenant_vshared ON tenantstore_vectors.tenant_vshared", {"PolicyMissing"}),
    ("REVOKE SELECT ON tenantstore_vectors.tenant_vshared FROM tenant_vshared", {"GrantMissing"}),
    ("ALTER ROLE tenant_vshared NOLOGIN", {"LoginChanged"}),
    ("ALTER ROLE tenant_vshared CONNECTION LIMIT 1", {"ConnectionLimitChanged"}),
    ("REVOKE CONNECT ON DATABASE tenants FROM tenant_vshared", {"GrantMissing"}),
])
async def test_a_broken_shared_tenant_is_seen_and_a_reconcile_repairs_it(
        server: PostgresServer, postgres, breakage: str, expected: set[str]) -> None:
    store = tenant("vshared")
    relational, placement, _ = await provision(server, store, "vshared-pw")
    assert await drifts_of(server, store, placement) == set()
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        conn.execute(breakage)
    assert await drifts_of(server, store, placement) == expected

    await provision(server, store, "vshared-pw")  # what Repair runs: the same ensure as provisioning
    assert await drifts_of(server, store, placement) == set()
    assert await PostgresRelationalStore(server).credentials_work(store, "vshared-pw") is True
    await teardown(server, store)


async def test_a_dropped_role_and_a_changed_password_are_seen(server: PostgresServer, postgres) -> None:
    store = tenant("vrole")
    _, placement, _ = await provision(server, store, "vrole-pw")
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        conn.execute("ALTER ROLE tenant_vrole PASSWORD 'changed-by-hand'")
    assert await PostgresRelationalStore(server).credentials_work(store, "vrole-pw") is False
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        conn.execute("DROP OWNED BY tenant_vrole")
        conn.execute("DROP ROLE tenant_vrole")
    assert await drifts_of(server, store, placement) >= {"RoleMissing", "SchemaMissing"}
    await provision(server, store, "vrole-pw")
    assert await drifts_of(server, store, placement) == set()
    await teardown(server, store)


async def test_a_dropped_database_or_dedicated_table_is_seen(server: PostgresServer, postgres) -> None:
    store = tenant("vdedicated", RelationalIsolation.DATABASE, VectorIsolation.DEDICATED)
    relational, placement, _ = await provision(server, store, "vdedicated-pw")
    with psycopg.connect(tenant_uri(server, relational, "vdedicated-pw"), autocommit=True) as conn:
        conn.execute("DROP TABLE public.vectors")
    assert await drifts_of(server, store, placement) == {"IndexMissing"}
    with psycopg.connect(tenant_uri(server, relational, "vdedicated-pw"), autocommit=True) as conn:
        conn.execute("CREATE VIEW public.vectors AS SELECT 'x'::text AS id")
    assert await drifts_of(server, store, placement) == {"ObjectReplaced"}
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        conn.execute("DROP DATABASE tenant_vdedicated WITH (FORCE)")
    found = await PostgresRelationalStore(server).verify([store])
    assert [(d.kind, d.holds_data) for d in found["vdedicated"]] == [("DatabaseMissing", True)]
    await teardown(server, store)


async def test_the_canary_sees_a_privilege_beyond_the_tenants_partition(server: PostgresServer, postgres) -> None:
    store = tenant("vcanary", dimension=11)
    _, placement, _ = await provision(server, store, "vcanary-pw")
    vectors = PgvectorStore(server)
    assert await vectors.probe_isolation(store, placement) is None
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        conn.execute("GRANT SELECT ON tenantstore_vectors.shared_11_cosine_1 TO tenant_vcanary")
    problem = await vectors.probe_isolation(store, placement)
    assert problem is not None and "shared_11_cosine_1" in problem
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        conn.execute("REVOKE SELECT ON tenantstore_vectors.shared_11_cosine_1 FROM tenant_vcanary")
    assert await vectors.probe_isolation(dataclasses.replace(store), placement) is None
    await teardown(server, store)


async def test_the_password_check_never_takes_a_busy_tenants_last_connection(server: PostgresServer) -> None:
    store = tenant("vbusy")  # a connection limit of 5
    relational, _, _ = await provision(server, store, "vbusy-pw")
    uri = tenant_uri(server, relational, "vbusy-pw")
    sessions = [psycopg.connect(uri) for _ in range(3)]
    try:
        assert await PostgresRelationalStore(server).credentials_work(store, "vbusy-pw") is True
        sessions.append(psycopg.connect(uri))
        assert await PostgresRelationalStore(server).credentials_work(store, "vbusy-pw") is None  # not now
        sessions.append(psycopg.connect(uri))  # the tenant's fifth is still there for it
    finally:
        for session in sessions:
            session.close()
    await teardown(server, store)


async def test_a_rotated_admin_uri_gets_a_new_pool_and_the_old_one_is_closed_under_work_in_flight(admin_uri: str, postgres) -> None:
    from tenantstore.models import SecretKeyRef, StoreClass
    from tenantstore.registry import BackendRegistry

    class RotatingSecrets:
        uri = admin_uri

        async def value(self, ref: SecretKeyRef, fresh: bool = False) -> str:
            return self.uri

    secrets = RotatingSecrets()
    store_class = StoreClass.from_body({"metadata": {"name": "rotating"}, "spec": {
        "postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "ops"}}}})
    registry = BackendRegistry(secrets)  # type: ignore[arg-type]
    try:
        before = await registry.for_class(store_class)
        assert await before.relational.preflight() == []
        with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
            conn.execute("ALTER ROLE tenantstore_admin PASSWORD 'rotated-password'")
        secrets.uri = admin_uri.replace(admin_uri.split(":")[2].split("@")[0], "rotated-password")
        after = await registry.for_class(store_class)
        assert after.server is not before.server
        assert before.server._pool.closed  # no pool left behind per rotation
        assert await after.relational.preflight() == []
        # Work that took the class's backends before the rotation goes on through the new pool.
        assert await before.relational.preflight() == []
    finally:
        with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("ALTER ROLE tenantstore_admin PASSWORD {}").format(
                psycopg.sql.Literal(admin_uri.split(":")[2].split("@")[0])))
        await registry.close()


async def test_the_canary_does_not_count_as_the_tenants_daily_query(server: PostgresServer) -> None:
    store = tenant("vcounted", dimension=12)
    _, placement, _ = await provision(server, store, "vcounted-pw")
    relational, vectors = PostgresRelationalStore(server), PgvectorStore(server)
    before = (await relational.measure([store]))[store.tenant_id].daily_queries
    assert before is not None  # pg_stat_statements is there: a count that could move
    for _ in range(3):
        assert await vectors.probe_isolation(store, placement) is None
    assert (await relational.measure([store]))[store.tenant_id].daily_queries == before
    await teardown(server, store)


@pytest.mark.parametrize("isolation", [(RelationalIsolation.SCHEMA, VectorIsolation.NAMESPACE),
                                       (RelationalIsolation.DATABASE, VectorIsolation.DEDICATED)],
                         ids=["shared-index", "dedicated"])
async def test_the_search_probe_times_the_tenants_own_query_and_is_not_its_daily_query(
        server: PostgresServer, isolation: tuple[RelationalIsolation, VectorIsolation]) -> None:
    store = tenant(f"vprobe{isolation[0].value[:2]}", relational=isolation[0], vector=isolation[1], dimension=12)
    relational_placement, placement, _ = await provision(server, store, "vprobe-pw")
    with psycopg.connect(tenant_uri(server, relational_placement, "vprobe-pw"), autocommit=True) as conn:
        table = placement.table
        columns, values = ("namespace, id, embedding", "%s, %s, %s") if placement.namespace else \
            ("id, embedding", "%s, %s")
        for i in range(20):
            row = (placement.namespace, f"v{i}", str([1.0 + i] + [0.5] * 11)) if placement.namespace else \
                (f"v{i}", str([1.0 + i] + [0.5] * 11))
            conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", row)
        # The tenant plants a distance operator of its own wherever it may create one (its schema: in its own
        # database that is where the extension lives, so only other argument types are free there).
        spy_schema = relational_placement.schema
        conn.execute(f"CREATE TABLE {spy_schema}.calls (who text)")
        conn.execute(f"""CREATE FUNCTION {spy_schema}.spy(a public.vector, b text) RETURNS float8 LANGUAGE sql AS
                         $$ INSERT INTO {spy_schema}.calls VALUES (session_user) RETURNING 0.0 $$""")
        conn.execute(f"CREATE OPERATOR {spy_schema}.<=> (FUNCTION = {spy_schema}.spy, LEFTARG = public.vector, "
                     f"RIGHTARG = text)")
    relational, vectors = PostgresRelationalStore(server), PgvectorStore(server)
    before = (await relational.measure([store]))[store.tenant_id].daily_queries
    assert before is not None
    latencies = [await vectors.probe_search(store, placement, [1.0] * 12, 5) for _ in range(3)]
    assert all(0 < seconds < 5 for seconds in latencies)
    assert (await relational.measure([store]))[store.tenant_id].daily_queries == before
    with psycopg.connect(tenant_uri(server, relational_placement, "vprobe-pw"), autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {relational_placement.schema}.calls").fetchone()[0] == 0
    await teardown(server, store)


async def test_a_refused_admin_password_is_told_apart_from_an_outage(admin_uri: str) -> None:
    wrong = PostgresServer(admin_uri.replace(admin_uri.split(":")[2].split("@")[0], "not-the-password"), "tenants")
    try:
        with pytest.raises(BackendUnavailable, match="refused the admin login to database template1") as refused:
            async with wrong.connect("template1"):
                pass
        assert "not-the-password" not in str(refused.value) and wrong.login_refused
    finally:
        await wrong.close()



async def test_a_session_the_server_ends_is_told_apart_from_an_outage(server: PostgresServer,
                                                                      postgres: EmbeddedPostgres) -> None:
    """pg_terminate_backend (or a failover) ends a session: the server answered, so a pass may try again."""
    with pytest.raises(SessionEnded, match="ended the operator's session"):
        async with server.connect() as conn:
            pid = (await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"]
            with psycopg.connect(postgres.superuser_uri(), autocommit=True) as superuser:
                superuser.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await conn.execute("SELECT 1")
    assert not server.login_refused
    async with server.connect() as conn:  # and a fresh session works
        assert (await (await conn.execute("SELECT 1 AS one")).fetchone())["one"] == 1
