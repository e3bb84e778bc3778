"""Per-tenant query insights from pg_stat_statements, on a real PostgreSQL 18: the tenant's own statements as
normalized shapes (never a literal, never a verbatim utility statement), none of another tenant's, none of the
operator's own probes."""
from __future__ import annotations

import psycopg
from test_postgres_backends import provision, tenant, tenant_uri
from test_verify import teardown

from tenantstore import insights
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer


async def test_insights_show_the_tenants_own_statement_shapes_and_nothing_else(server: PostgresServer) -> None:
    acme, globex = tenant("qacme", dimension=4), tenant("qglobex", dimension=4)
    acme_relational, acme_vectors, _ = await provision(server, acme, "qacme-pw")
    globex_relational, globex_vectors, _ = await provision(server, globex, "qglobex-pw")
    with psycopg.connect(tenant_uri(server, acme_relational, "qacme-pw"), autocommit=True) as conn:
        for index in range(3):
            conn.execute(f"INSERT INTO {acme_vectors.table} (namespace, id, embedding) "
                         f"VALUES ('qacme', 'secret-literal-{index}', '[1,0,0,0]')")
        for _ in range(4):
            conn.execute(f"SELECT count(*) FROM {acme_vectors.table} WHERE id = 'secret-literal-1'")
        conn.execute("SET application_name = 'verbatim-utility-text'")  # kept verbatim by pg_stat_statements
    with psycopg.connect(tenant_uri(server, globex_relational, "qglobex-pw"), autocommit=True) as conn:
        conn.execute(f"SELECT id FROM {globex_vectors.table} WHERE id = 'globex-only'")
    vectors = PgvectorStore(server)
    relational = PostgresRelationalStore(server)

    measured = await relational.measure([acme, globex])
    found = measured[acme.tenant_id].queries
    assert found is not None and found.calls >= 8 and found.rows >= 7  # 3 inserts, 4 counts, the SET
    shapes = {shape.statement: shape for shape in found.slowest}
    count_shape = f"SELECT count(*) FROM {acme_vectors.table} WHERE id = $1"
    assert count_shape in shapes and shapes[count_shape].calls == 4
    text = repr(found.to_status())
    assert "secret-literal" not in text and "verbatim-utility-text" not in text and "globex" not in text
    assert 0 < found.mean_seconds <= found.p95_seconds
    others = measured[globex.tenant_id].queries
    assert others is not None and not any("qacme" in shape.statement for shape in others.slowest)

    # The operator's own statements as the tenant (the canary, the search probe) are not the tenant's.
    assert await vectors.probe_isolation(acme, acme_vectors) is None
    await vectors.probe_search(acme, acme_vectors, [1.0, 0.0, 0.0, 0.0], 3)
    again = (await relational.measure([acme]))[acme.tenant_id].queries
    assert insights.same(again, found.to_status())
    for store in (acme, globex):
        await teardown(server, store)
