"""Reading another tenant's data with nothing but one's own credentials: every way around row-level security.

A free tenant's vectors are its own partition of the shared table; it has no privilege on the parent and none
on other partitions, so every route to them (directly, through views, functions, CTEs, COPY, statistics,
plans, notices) ends in a refusal or in its own rows only.
"""
from __future__ import annotations

import re

import psycopg
import pytest
from hostile_kit import (
    SHARED_DATABASE,
    AttackContext,
    Attempts,
    CopyOut,
    Fleet,
    SqlAttack,
    SqlResult,
    foreign_markers,
    no_foreign_rows,
    run_sql_attack,
)

IP = psycopg.errors.InsufficientPrivilege


def free(name: str, *steps: str | CopyOut, **options: object) -> SqlAttack:
    return SqlAttack(f"free tenant {name}", "free", tuple(steps), **options)  # type: ignore[arg-type]


def no_rows_removed_by_a_policy(result: SqlResult, context: AttackContext) -> bool:
    # "Rows Removed by Filter" of a plan over rows the tenant may not see would count another tenant's rows.
    return not re.search(r"Rows Removed by Filter: [1-9]", result.text()) and no_foreign_rows(result, context)


READS = [
    free("selects the shared parent", "SELECT namespace, id, metadata FROM {shared}"),
    free("selects ONLY the shared parent", "SELECT * FROM ONLY {shared}"),
    free("reads the shared parent with TABLE", "TABLE {shared}"),
    free("selects a victim's partition", "SELECT * FROM {victim_partition}"),
    free("reads a victim's partition with TABLE", "TABLE {victim_partition}"),
    free("selects a pro victim's partition", "SELECT id, metadata FROM {pro_victim_partition}"),
    free("counts rows per namespace in the shared parent", "SELECT namespace, count(*) FROM {shared} GROUP BY namespace"),
    free("filters the shared parent on a victim's namespace", "SELECT * FROM {shared} WHERE namespace = '{victim}'"),
    free("reads the shared parent through a CTE", "WITH rows AS (SELECT * FROM {shared}) SELECT * FROM rows"),
    free("reads a victim's partition through a CTE",
         "WITH rows AS MATERIALIZED (SELECT * FROM {victim_partition}) SELECT * FROM rows"),
    free("reads the shared parent through a recursive CTE",
         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2) SELECT v.id FROM n, {shared} v"),
    free("reads the shared parent through a subquery", "SELECT * FROM (SELECT namespace, id FROM {shared}) AS sub"),
    free("reads a victim's partition through a scalar subquery", "SELECT (SELECT count(*) FROM {victim_partition})"),
    free("probes the shared parent with EXISTS", "SELECT EXISTS (SELECT 1 FROM {shared} WHERE namespace <> '{me}')"),
    free("reads the shared parent through LATERAL", "SELECT v.* FROM (VALUES (1)) one, LATERAL (SELECT * FROM {shared}) v"),
    free("searches the shared parent by nearest neighbour", "SELECT id FROM {shared} ORDER BY embedding <=> '[1,1,1]' LIMIT 50"),
    free("samples the shared parent", "SELECT * FROM {shared} TABLESAMPLE SYSTEM (100)"),
    free("aggregates the shared parent to JSON", "SELECT json_agg(v) FROM {shared} v"),
    free("reads partition oids of the shared parent's rows", "SELECT tableoid::regclass, id FROM {shared}"),
    free("reads the shared parent with row_security off", "SET row_security = off", "SELECT * FROM {shared}"),
    free("reads its own placement with row_security off", "SET row_security = off", "SELECT * FROM {my_vectors}"),
    free("filters its own placement for other namespaces", "SELECT namespace, id FROM {my_vectors} WHERE namespace <> '{me}'",
         expect=psycopg.Error, judge=no_foreign_rows),
    free("copies the shared parent out", CopyOut("COPY {shared} TO STDOUT"),
         expect=(IP, psycopg.errors.WrongObjectType)),
    free("copies a query over the shared parent out", CopyOut("COPY (SELECT * FROM {shared}) TO STDOUT")),
    free("copies a victim's partition out", CopyOut("COPY {victim_partition} TO STDOUT")),
    free("copies a query over a victim's partition out", CopyOut("COPY (SELECT id, metadata FROM {victim_partition}) TO STDOUT")),
    free("reads the shared parent through its own view",
         "CREATE VIEW {my_schema}.hx_view_shared AS SELECT namespace, id, metadata FROM {shared}",
         "SELECT * FROM {my_schema}.hx_view_shared"),
    free("reads a victim's partition through its own view",
         "CREATE VIEW {my_schema}.hx_view_victim AS SELECT * FROM {victim_partition}",
         "SELECT * FROM {my_schema}.hx_view_victim"),
    free("reads the shared parent through a security_barrier view",
         "CREATE VIEW {my_schema}.hx_view_barrier WITH (security_barrier) AS SELECT * FROM {shared} WHERE true",
         "SELECT * FROM {my_schema}.hx_view_barrier"),
    free("reads the shared parent through a security_invoker view",
         "CREATE VIEW {my_schema}.hx_view_invoker WITH (security_invoker) AS SELECT * FROM {shared}",
         "SELECT * FROM {my_schema}.hx_view_invoker"),
    free("materializes the shared parent", "CREATE MATERIALIZED VIEW {my_schema}.hx_mat_shared AS SELECT * FROM {shared}",
         "SELECT * FROM {my_schema}.hx_mat_shared"),
    free("copies the shared parent into a table of its own", "CREATE TABLE {my_schema}.hx_copy_shared AS SELECT * FROM {shared}",
         "SELECT * FROM {my_schema}.hx_copy_shared"),
    free("selects a victim's partition INTO a table of its own", "SELECT * INTO {my_schema}.hx_into_victim FROM {victim_partition}",
         "SELECT * FROM {my_schema}.hx_into_victim"),
    free("reads the shared parent in a SECURITY DEFINER function",
         "CREATE FUNCTION {my_schema}.hx_definer_read() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER "
         "AS $$ SELECT id FROM {shared} $$", "SELECT * FROM {my_schema}.hx_definer_read()"),
    free("reads a victim's partition in a plpgsql function",
         "CREATE FUNCTION {my_schema}.hx_plpgsql_read() RETURNS SETOF text LANGUAGE plpgsql "
         "AS $$ BEGIN RETURN QUERY SELECT id FROM {victim_partition}; END $$", "SELECT * FROM {my_schema}.hx_plpgsql_read()"),
    free("leaks the shared parent's rows through a cheap function in WHERE",
         "CREATE FUNCTION {my_schema}.hx_leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 "
         "AS $$ BEGIN RAISE NOTICE 'seen %', $1; RETURN true; END $$",
         "SELECT id FROM {shared} WHERE {my_schema}.hx_leak(namespace || id || metadata::text)"),
    free("leaks rows past its policy through a cheap function on its own placement",
         "CREATE FUNCTION {my_schema}.hx_leak_own(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 "
         "AS $$ BEGIN RAISE NOTICE 'seen %', $1; RETURN true; END $$",
         "SELECT id FROM {my_vectors} WHERE {my_schema}.hx_leak_own(namespace || id || metadata::text)",
         expect=psycopg.Error, judge=no_foreign_rows),
    free("leaks rows past its policy through a cheap operator on its own placement",
         "CREATE FUNCTION {my_schema}.hx_leak_op(text, text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 "
         "AS $$ BEGIN RAISE NOTICE 'seen % %', $1, $2; RETURN true; END $$",
         "CREATE OPERATOR {my_schema}.<<<< (LEFTARG = text, RIGHTARG = text, FUNCTION = {my_schema}.hx_leak_op)",
         "SELECT id FROM {my_vectors} WHERE id OPERATOR({my_schema}.<<<<) metadata::text",
         expect=psycopg.Error, judge=no_foreign_rows),
    free("explains analyze a scan of the shared parent", "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM {shared} WHERE id <> ''"),
    free("counts others' rows in an explain analyze of its own placement",
         "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM {my_vectors} WHERE id <> ''",
         expect=psycopg.Error, judge=no_rows_removed_by_a_policy),
    free("prepares a read of a victim's partition", "PREPARE hx_peek AS SELECT * FROM {victim_partition}", "EXECUTE hx_peek"),
    free("reads the shared parent through a cursor", "DECLARE hx_cursor CURSOR FOR SELECT * FROM {shared}",
         "FETCH ALL FROM hx_cursor", transaction=True),
    free("reads row values of shared tables from pg_stats",
         "SELECT tablename, attname, most_common_vals::text, histogram_bounds::text FROM pg_stats "
         "WHERE schemaname = 'tenantstore_vectors'", expect=psycopg.Error, judge=no_foreign_rows),
    free("reads pg_statistic directly", "SELECT stavalues1::text, stavalues2::text FROM pg_statistic"),
    free("reads extended statistics", "SELECT * FROM pg_stats_ext", expect=psycopg.Error, judge=no_foreign_rows),
    free("creates extended statistics on the shared parent", "CREATE STATISTICS {my_schema}.hx_stats ON namespace, id FROM {shared}"),
    free("selects a victim's own table", "SELECT * FROM {victim_schema}.ledger"),
    free("copies a victim's own table out", CopyOut("COPY {victim_schema}.ledger TO STDOUT")),
    free("reads a victim's own table through a view",
         "CREATE VIEW {my_schema}.hx_view_ledger AS SELECT * FROM {victim_schema}.ledger",
         "SELECT * FROM {my_schema}.hx_view_ledger"),
    free("selects the moving tenant's dedicated table", "SELECT * FROM {mover_dedicated}"),
    SqlAttack("enterprise tenant reads another tenant's database by a qualified name", "enterprise",
              ("SELECT * FROM {enterprise_victim_db}.public.ledger",), expect=psycopg.errors.FeatureNotSupported),
    SqlAttack("enterprise tenant reads another tenant's vectors by a qualified name", "enterprise",
              ("SELECT * FROM {enterprise_victim_db}.public.vectors",), expect=psycopg.errors.FeatureNotSupported),
]


@pytest.mark.parametrize("attack", READS, ids=str)
def test_reading_another_tenants_data_is_refused(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


def test_the_statistics_attack_has_something_to_find(fleet: Fleet) -> None:
    """The pg_stats attack above is only meaningful if the statistics hold other tenants' values."""
    rows = fleet.superuser.rows(SHARED_DATABASE, "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats "
                                                 "WHERE schemaname = 'tenantstore_vectors'")
    assert foreign_markers(repr(rows), fleet["free"].id), "ANALYZE left no row values in pg_stats"


def test_own_rows_stay_readable(fleet: Fleet) -> None:
    """The refusals above are not a tenant locked out of its own vectors."""
    for key in ("free", "victim", "pro_victim", "enterprise", "moving"):
        tenant = fleet[key]
        with tenant.connect() as conn:
            rows = conn.execute(f"SELECT id FROM {tenant.vectors.table} ORDER BY id").fetchall()
        assert [row[0] for row in rows] == [f"{tenant.marker}-v{n}" for n in (1, 2, 3)], key
