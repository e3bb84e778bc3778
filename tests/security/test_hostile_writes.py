"""Writing into another tenant's namespace, table or database: INSERT, UPDATE, DELETE, COPY FROM, TRUNCATE,
MERGE and DDL against the shared parent, other partitions, other tenants' tables and databases, and squatting
the names future tenants will get."""
from __future__ import annotations

import psycopg
import pytest
from hostile_kit import (
    Attempts,
    CopyIn,
    Fleet,
    SqlAttack,
    no_rows_touched,
    run_sql_attack,
    skipped_with_warning,
    superuser_finds_false,
)

IP = psycopg.errors.InsufficientPrivilege
# A row of another namespace written into one's own partition meets the policy's WITH CHECK or the partition bound.
OUT_OF_BOUNDS = (IP, psycopg.errors.CheckViolation)
VECTOR_COLUMNS = "(namespace, id, embedding)"


def free(name: str, *steps: str | CopyIn, **options: object) -> SqlAttack:
    return SqlAttack(f"free tenant {name}", "free", tuple(steps), **options)  # type: ignore[arg-type]


def enterprise(name: str, *steps: str, **options: object) -> SqlAttack:
    return SqlAttack(f"enterprise tenant {name}", "enterprise", tuple(steps), **options)  # type: ignore[arg-type]


WRITES = [
    free("inserts a victim's namespace into the shared parent",
         f"INSERT INTO {{shared}} {VECTOR_COLUMNS} VALUES ('{{victim}}', 'hx-w1', '[1,0,0]')"),
    free("inserts into a victim's partition", f"INSERT INTO {{victim_partition}} {VECTOR_COLUMNS} VALUES ('{{victim}}', 'hx-w2', '[1,0,0]')"),
    free("inserts a victim's namespace into its own placement",
         f"INSERT INTO {{my_vectors}} {VECTOR_COLUMNS} VALUES ('{{victim}}', 'hx-w3', '[1,0,0]')", expect=OUT_OF_BOUNDS),
    free("upserts over a victim's row in the shared parent",
         f"INSERT INTO {{shared}} {VECTOR_COLUMNS} VALUES ('{{victim}}', 'hx' || 'secret-{{victim}}-v1', '[0,0,1]') "
         "ON CONFLICT (namespace, id) DO UPDATE SET metadata = '{{\"owned\": true}}'"),
    free("upserts a victim's namespace through its own placement",
         f"INSERT INTO {{my_vectors}} {VECTOR_COLUMNS} VALUES ('{{victim}}', 'hx-w4', '[0,0,1]') "
         "ON CONFLICT (namespace, id) DO UPDATE SET metadata = '{{}}'", expect=OUT_OF_BOUNDS),
    free("updates a victim's rows through the shared parent", "UPDATE {shared} SET metadata = '{{}}' WHERE namespace = '{victim}'"),
    free("moves its own rows into a victim's namespace through the shared parent",
         "UPDATE {shared} SET namespace = '{victim}' WHERE namespace = '{me}'"),
    free("moves its own rows into a victim's namespace in its own placement",
         "UPDATE {my_vectors} SET namespace = '{victim}'", expect=OUT_OF_BOUNDS),
    free("updates a victim's partition", "UPDATE {victim_partition} SET metadata = '{{}}'"),
    free("updates other namespaces through its own placement", "UPDATE {my_vectors} SET metadata = '{{}}' WHERE namespace <> '{me}'",
         expect=psycopg.Error, judge=no_rows_touched),
    free("deletes a victim's rows through the shared parent", "DELETE FROM {shared} WHERE namespace = '{victim}'"),
    free("deletes from a victim's partition", "DELETE FROM {victim_partition}"),
    free("deletes other namespaces through its own placement", "DELETE FROM {my_vectors} WHERE namespace <> '{me}'",
         expect=psycopg.Error, judge=no_rows_touched),
    free("truncates the shared parent", "TRUNCATE {shared}"),
    free("truncates ONLY the shared parent", "TRUNCATE ONLY {shared}"),
    free("truncates a victim's partition", "TRUNCATE {victim_partition}"),
    free("copies a victim's namespace into the shared parent",
         CopyIn(f"COPY {{shared}} {VECTOR_COLUMNS} FROM STDIN", (("{victim}", "hx-w5", "[1,0,0]"),))),
    free("copies rows into a victim's partition",
         CopyIn(f"COPY {{victim_partition}} {VECTOR_COLUMNS} FROM STDIN", (("{victim}", "hx-w6", "[1,0,0]"),))),
    free("copies a victim's namespace into its own placement",
         CopyIn(f"COPY {{my_vectors}} {VECTOR_COLUMNS} FROM STDIN", (("{victim}", "hx-w7", "[1,0,0]"),)),
         expect=(IP, psycopg.errors.CheckViolation, psycopg.errors.FeatureNotSupported)),
    free("merges into the shared parent",
         "MERGE INTO {shared} AS t USING (VALUES ('{victim}', 'hx-w8')) AS s(namespace, id) "
         "ON t.namespace = s.namespace WHEN MATCHED THEN DELETE "
         "WHEN NOT MATCHED THEN INSERT (namespace, id, embedding) VALUES (s.namespace, s.id, '[1,0,0]')"),
    free("merges into a victim's partition",
         "MERGE INTO {victim_partition} AS t USING (VALUES (1)) AS s(n) ON true WHEN MATCHED THEN UPDATE SET metadata = '{{}}'"),
    free("merges a victim's namespace into its own placement",
         "MERGE INTO {my_vectors} AS t USING (VALUES ('{victim}', 'hx-w9')) AS s(namespace, id) ON t.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (namespace, id, embedding) VALUES (s.namespace, s.id, '[1,0,0]')", expect=OUT_OF_BOUNDS),
    free("inserts into a victim's own table", "INSERT INTO {victim_schema}.ledger VALUES (99, 'hx')"),
    free("updates a victim's own table", "UPDATE {victim_schema}.ledger SET secret = ''"),
    free("deletes a victim's own table's rows", "DELETE FROM {victim_schema}.ledger"),
    free("truncates a victim's own table", "TRUNCATE {victim_schema}.ledger"),
    free("copies into a victim's own table", CopyIn("COPY {victim_schema}.ledger FROM STDIN", (("98", "hx"),))),
    free("merges into a victim's own table",
         "MERGE INTO {victim_schema}.ledger t USING (VALUES (1)) s(id) ON t.id = s.id WHEN MATCHED THEN DELETE"),
    free("draws from a victim's sequence", "SELECT nextval('{victim_schema}.ledger_ids')"),
    free("resets a victim's sequence", "SELECT setval('{victim_schema}.ledger_ids', 1000)"),
    free("drops a victim's own table", "DROP TABLE {victim_schema}.ledger"),
    free("drops a victim's schema", "DROP SCHEMA {victim_schema} CASCADE"),
    free("drops a victim's partition", "DROP TABLE {victim_partition}"),
    free("drops the shared parent", "DROP TABLE {shared} CASCADE"),
    free("detaches a victim's partition", "ALTER TABLE {shared} DETACH PARTITION {victim_partition}"),
    free("attaches a catch-all partition of its own to the shared parent",
         "CREATE TABLE {my_schema}.hx_catch_all (namespace text NOT NULL, id text NOT NULL, embedding vector(3) NOT NULL, "
         "metadata jsonb NOT NULL DEFAULT '{{}}')",
         "ALTER TABLE {shared} ATTACH PARTITION {my_schema}.hx_catch_all DEFAULT"),
    free("creates a default partition of the shared parent", "CREATE TABLE {my_schema}.hx_default PARTITION OF {shared} DEFAULT"),
    free("creates the partition a future tenant will get",
         "CREATE TABLE {my_schema}.hx_future PARTITION OF {shared} FOR VALUES IN ('hxfuture')"),
    free("squats a future tenant's partition name", "CREATE TABLE tenantstore_vectors.tenant_hxfuture (id int)"),
    free("squats a future tenant's schema", "CREATE SCHEMA tenant_hxfuture"),
    free("squats a future tenant's database", "CREATE DATABASE tenant_hxfuture"),
    free("squats a future tenant's role", "CREATE ROLE tenant_hxfuture"),
    free("creates a table in the shared database's public schema", "CREATE TABLE public.hx_public (id int)"),
    free("creates a function in the shared vector schema",
         "CREATE FUNCTION tenantstore_vectors.hx_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    free("adds a trigger to the shared parent",
         "CREATE FUNCTION {my_schema}.hx_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
         "CREATE TRIGGER hx_on_shared BEFORE INSERT ON {shared} FOR EACH ROW EXECUTE FUNCTION {my_schema}.hx_trigger()"),
    free("adds a trigger to a victim's partition",
         "CREATE TRIGGER hx_on_victim BEFORE INSERT ON {victim_partition} FOR EACH ROW EXECUTE FUNCTION {my_schema}.hx_trigger()"),
    free("adds a trigger to its own partition",
         "CREATE TRIGGER hx_on_own BEFORE INSERT ON {my_partition} FOR EACH ROW EXECUTE FUNCTION {my_schema}.hx_trigger()"),
    free("adds a rule to the shared parent", "CREATE RULE hx_rule AS ON INSERT TO {shared} DO INSTEAD NOTHING"),
    free("adds an index to the shared parent", "CREATE INDEX hx_index ON {shared} (id)"),
    free("adds a column to the shared parent", "ALTER TABLE {shared} ADD COLUMN hx text"),
    free("disables row level security on the shared parent", "ALTER TABLE {shared} DISABLE ROW LEVEL SECURITY"),
    free("lifts FORCE row level security on its own partition", "ALTER TABLE {my_partition} NO FORCE ROW LEVEL SECURITY"),
    free("creates an allow-all policy on the shared parent",
         "CREATE POLICY hx_all ON {shared} FOR ALL TO PUBLIC USING (true) WITH CHECK (true)"),
    free("creates an allow-all policy on its own partition", "CREATE POLICY hx_all ON {my_partition} USING (true)"),
    free("widens its policy on the shared parent", "ALTER POLICY {my_role} ON {shared} USING (true)"),
    free("widens its policy on its own partition", "ALTER POLICY {my_role} ON {my_partition} USING (true)"),
    free("drops its policy on its own partition", "DROP POLICY {my_role} ON {my_partition}"),
    free("comments on the shared parent", "COMMENT ON TABLE {shared} IS 'hx'"),
    free("reindexes the shared parent", "REINDEX TABLE {shared}"),
    free("vacuums a victim's partition in full", "VACUUM FULL {victim_partition}", expect=IP, judge=skipped_with_warning),
    free("writes into the moving tenant's dedicated table", "INSERT INTO {mover_dedicated} (id, embedding) VALUES ('hx-w10', '[1,0,0]')"),
    free("deletes the moving tenant's dedicated rows", "DELETE FROM {mover_dedicated}"),
    free("drops the moving tenant's dedicated table", "DROP TABLE {mover_dedicated}"),
    enterprise("drops another tenant's database", "DROP DATABASE {enterprise_victim_db}"),
    enterprise("renames another tenant's database", "ALTER DATABASE {enterprise_victim_db} RENAME TO hx_stolen"),
    enterprise("revokes another tenant's CONNECT", "REVOKE CONNECT ON DATABASE {enterprise_victim_db} FROM {enterprise_victim_role}",
               judge=superuser_finds_false("SELECT NOT has_database_privilege('{enterprise_victim_role}', "
                                           "'{enterprise_victim_db}', 'CONNECT')")),
    enterprise("sets defaults of another tenant's database", "ALTER DATABASE {enterprise_victim_db} SET search_path = hx"),
    enterprise("sets another tenant's database connection limit to zero", "ALTER DATABASE {enterprise_victim_db} CONNECTION LIMIT 0"),
    enterprise("closes another tenant's database to connections", "ALTER DATABASE {enterprise_victim_db} WITH ALLOW_CONNECTIONS false"),
    enterprise("sets another tenant's defaults in its database",
               "ALTER ROLE {enterprise_victim_role} IN DATABASE {enterprise_victim_db} SET search_path = hx"),
    enterprise("comments on another tenant's database", "COMMENT ON DATABASE {enterprise_victim_db} IS 'hx'"),
    enterprise("writes into another tenant's database by a qualified name",
               "INSERT INTO {enterprise_victim_db}.public.ledger VALUES (97, 'hx')", expect=psycopg.errors.FeatureNotSupported),
]


@pytest.mark.parametrize("attack", WRITES, ids=str)
def test_writing_another_tenants_data_is_refused(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


def test_own_writes_still_work(fleet: Fleet) -> None:
    """The refusals above are not a tenant locked out of writing its own vectors (rolled back: victims stay as they are)."""
    for key in ("victim", "enterprise_victim", "moving"):
        tenant = fleet[key]
        with tenant.connect() as conn, conn.transaction(force_rollback=True):
            if tenant.vectors.namespace:
                conn.execute(f"INSERT INTO {tenant.vectors.table} {VECTOR_COLUMNS} VALUES (%s, 'own-write', '[1,2,3]')",
                             (tenant.id,))
            else:
                conn.execute(f"INSERT INTO {tenant.vectors.table} (id, embedding) VALUES ('own-write', '[1,2,3]')")
            conn.execute(f"UPDATE {tenant.schema}.ledger SET secret = secret")
