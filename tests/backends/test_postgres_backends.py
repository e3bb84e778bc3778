"""The Postgres and pgvector backends against a real PostgreSQL 18: what a tenant's credentials can and cannot do."""
from __future__ import annotations

import dataclasses
import uuid

import psycopg
import pytest

from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import TenantIdConflict
from tenantstore.models import DesiredStore, Metric, Quotas, RelationalIsolation, VectorIsolation


def tenant(tenant_id: str, relational=RelationalIsolation.SCHEMA, vector=VectorIsolation.NAMESPACE,
           uid: str | None = None, dimension: int = 3, capacity: int = 100) -> DesiredStore:
    return DesiredStore(tenant_id=tenant_id, uid=uid or str(uuid.uuid4()), tenant_store=f"test/{tenant_id}", dimension=dimension, metric=Metric.COSINE,
                        relational=relational, vector=vector, quotas=Quotas(0, 0, 5, 0), suspended=False,
                        shared_database="tenants", shared_index_capacity=capacity)


def tenant_uri(server: PostgresServer, placement, password: str) -> str:
    return f"postgresql://{placement.role}:{password}@{server.host}:{server.port}/{placement.database}"


async def provision(server: PostgresServer, store: DesiredStore, password: str):
    relational, steps = await PostgresRelationalStore(server).ensure(store, password, password_is_new=True)
    vector, vector_steps = await PgvectorStore(server).ensure(store)
    return relational, vector, steps + vector_steps


async def test_schema_tenant_is_isolated_and_teardown_leaves_nothing(server: PostgresServer) -> None:
    alpha, beta = tenant("alpha"), tenant("beta")
    alpha_rel, alpha_vec, steps = await provision(server, alpha, "alpha-pw-1")
    beta_rel, beta_vec, _ = await provision(server, beta, "beta-pw-1")
    assert {s.reason for s in steps} >= {"RoleCreated", "SchemaCreated", "NamespaceCreated"}
    assert alpha_vec.index == beta_vec.index == "shared-3-cosine-1"

    with psycopg.connect(tenant_uri(server, alpha_rel, "alpha-pw-1"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("tenant_alpha",)
        conn.execute("CREATE TABLE tenant_alpha.notes (body text)")
        conn.execute("INSERT INTO tenant_alpha.notes VALUES ('hello')")
        conn.execute(f"INSERT INTO {alpha_vec.table} (namespace, id, embedding) VALUES ('alpha', 'a1', '[1,0,0]')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # RLS: not its namespace
            conn.execute(f"INSERT INTO {alpha_vec.table} (namespace, id, embedding) VALUES ('beta', 'x', '[1,0,0]')")
    with psycopg.connect(tenant_uri(server, beta_rel, "beta-pw-1"), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {beta_vec.table} (namespace, id, embedding) VALUES ('beta', 'b1', '[0,1,0]')")
        # No filter: row-level security still shows beta only its own rows.
        assert conn.execute(f"SELECT namespace, id FROM {beta_vec.table}").fetchall() == [("beta", "b1")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM tenant_alpha.notes")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # partitions are not reachable directly
            conn.execute("SELECT * FROM tenantstore_vectors.tenant_alpha")

    # A second ensure with nothing changed changes nothing.
    _, again = await PostgresRelationalStore(server).ensure(alpha, "alpha-pw-1", password_is_new=False)
    _, vector_again = await PgvectorStore(server).ensure(alpha)
    assert again == vector_again == []

    for store in (alpha, beta):
        await PgvectorStore(server).teardown(store)
        await PostgresRelationalStore(server).teardown(store)
        assert await PgvectorStore(server).residue(store) == []
        assert await PostgresRelationalStore(server).residue(store) == []


async def test_database_tenant_gets_its_own_database_and_table(server: PostgresServer) -> None:
    gamma, other = tenant("gamma", RelationalIsolation.DATABASE, VectorIsolation.DEDICATED), tenant("other")
    rel, vec, steps = await provision(server, gamma, "gamma-pw")
    other_rel, _, _ = await provision(server, other, "other-pw")
    assert {s.reason for s in steps} >= {"DatabaseCreated", "DedicatedIndexCreated"}
    with psycopg.connect(tenant_uri(server, rel, "gamma-pw"), autocommit=True) as conn:
        conn.execute("CREATE TABLE things (id int)")
        conn.execute(f"INSERT INTO {vec.table} (id, embedding) VALUES ('g1', '[1,2,3]')")
        assert conn.execute(f"SELECT id FROM {vec.table} ORDER BY embedding <=> '[1,2,3]' LIMIT 1").fetchone() == ("g1",)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(f"postgresql://tenant_other:other-pw@{server.host}:{server.port}/tenant_gamma")

    await PgvectorStore(server).teardown(gamma)
    await PostgresRelationalStore(server).teardown(gamma)
    assert await PostgresRelationalStore(server).residue(gamma) == []
    await PgvectorStore(server).teardown(other)
    await PostgresRelationalStore(server).teardown(other)


async def test_a_claimed_tenant_id_is_refused_to_another_owner(server: PostgresServer) -> None:
    first, second = tenant("delta"), tenant("delta")
    await provision(server, first, "pw")
    with pytest.raises(TenantIdConflict):
        await PostgresRelationalStore(server).ensure(second, "other", password_is_new=True)
    assert await PostgresRelationalStore(server).claimed_by(second) == first.uid
    await PgvectorStore(server).teardown(first)
    await PostgresRelationalStore(server).teardown(first)


async def test_full_shared_index_rolls_over_to_the_next(server: PostgresServer) -> None:
    stores = [tenant(f"pool{i}", dimension=5, capacity=2) for i in range(3)]
    indexes = [(await provision(server, store, "pw"))[1].index for store in stores]
    assert indexes == ["shared-5-cosine-1", "shared-5-cosine-1", "shared-5-cosine-2"]
    for store in stores:
        await PgvectorStore(server).teardown(store)
        await PostgresRelationalStore(server).teardown(store)


async def test_records_page_out_and_upsert_back_without_duplicates(server: PostgresServer) -> None:
    from tenantstore.backends import VectorRecord

    source, vectors = tenant("mover"), PgvectorStore(server)
    await PostgresRelationalStore(server).ensure(source, "pw", password_is_new=True)
    namespace_placement, _ = await vectors.ensure(source)
    target = tenant("mover", vector=VectorIsolation.DEDICATED, uid=source.uid)
    dedicated_placement, _ = await vectors.ensure(target)
    records = [VectorRecord(f"id-{i:03}", [float(i), 1.0, 0.5], {"n": i}) for i in range(25)]
    await vectors.write_batch(source, namespace_placement, records)

    copied, after = [], None
    while batch := await vectors.read_batch(source, namespace_placement, after, limit=10):
        await vectors.write_batch(target, dedicated_placement, batch)
        await vectors.write_batch(target, dedicated_placement, batch)  # a resumed copy rewrites a batch
        copied += batch
        after = batch[-1].id
    assert copied == records
    assert await vectors.count(target, dedicated_placement) == await vectors.count(source, namespace_placement) == 25
    assert await vectors.read_batch(target, dedicated_placement, "id-023", 10) == records[24:]

    await vectors.teardown(source)
    await PostgresRelationalStore(server).teardown(source)


async def test_a_leftover_policy_of_the_role_does_not_stop_its_placement(server: PostgresServer) -> None:
    await provision(server, tenant("warm"), "warm-pw-1")  # the shared index exists
    stale = tenant("stale")
    relational, _ = await PostgresRelationalStore(server).ensure(stale, "stale-pw-1", password_is_new=True)
    async with server.connect() as conn:  # as if a placement had been torn down halfway by hand
        await conn.execute("CREATE POLICY tenant_stale ON tenantstore_vectors.shared_3_cosine_1 FOR ALL "
                           "TO tenant_stale USING (namespace = 'stale') WITH CHECK (namespace = 'stale')")
    vector, steps = await PgvectorStore(server).ensure(stale)
    assert "NamespaceCreated" in {step.reason for step in steps}
    with psycopg.connect(tenant_uri(server, relational, "stale-pw-1"), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {vector.table} (namespace, id, embedding) VALUES ('stale', 's1', '[1,0,0]')")
        assert conn.execute(f"SELECT id FROM {vector.table}").fetchall() == [("s1",)]
    for store in (stale, tenant("warm")):
        await PgvectorStore(server).teardown(store)
        await PostgresRelationalStore(server).teardown(store)


async def test_teardown_forgets_the_tenant_in_the_operators_records_and_statistics(
        server: PostgresServer, postgres) -> None:
    store = tenant("forgotten")
    relational, vector, _ = await provision(server, store, "forgotten-pw")
    with psycopg.connect(tenant_uri(server, relational, "forgotten-pw"), autocommit=True) as conn:
        conn.execute(f"SELECT count(*) FROM {vector.table} WHERE id = 'a-query-text-to-forget'")
    await PostgresRelationalStore(server).measure([store])  # writes its daily-query baseline
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        oid = conn.execute("SELECT oid FROM pg_roles WHERE rolname = 'tenant_forgotten'").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM pg_stat_statements WHERE userid = %s", (oid,)).fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM tenantstore.daily_query_baseline "
                            "WHERE role = 'tenant_forgotten'").fetchone()[0] == 1

    await PgvectorStore(server).teardown(store)
    await PostgresRelationalStore(server).teardown(store)
    assert await PostgresRelationalStore(server).residue(store) == []
    with psycopg.connect(postgres.superuser_uri("tenants"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_statements WHERE userid = %s", (oid,)).fetchone()[0] == 0
        for table in ("claims", "daily_query_baseline"):
            assert conn.execute(f"SELECT count(*) FROM tenantstore.{table} "
                                "WHERE role = 'tenant_forgotten'").fetchone()[0] == 0


async def test_a_database_tenant_whose_writes_are_refused_is_reconciled_again_without_a_conflict(
        server: PostgresServer) -> None:
    store = tenant("held-db", relational=RelationalIsolation.DATABASE, vector=VectorIsolation.DEDICATED)
    relational, _, _ = await provision(server, store, "held-pw-1")
    blocked = dataclasses.replace(store, writes_allowed=False)
    postgres = PostgresRelationalStore(server)
    # The holding role owns the database meanwhile: an ensure (any reconcile while blocked) is no conflict.
    _, steps = await postgres.ensure(blocked, "held-pw-1", password_is_new=False)
    assert [step.reason for step in steps] == ["WritesBlocked"]
    assert (await postgres.ensure(blocked, "held-pw-1", password_is_new=False))[1] == []
    with psycopg.connect(tenant_uri(server, relational, "held-pw-1"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE notes (body text)")
    _, steps = await postgres.ensure(store, "held-pw-1", password_is_new=False)
    assert [step.reason for step in steps] == ["WritesRestored"]
    with psycopg.connect(tenant_uri(server, relational, "held-pw-1"), autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (body text)")
    await postgres.teardown(store)
    await PgvectorStore(server).teardown(store)
