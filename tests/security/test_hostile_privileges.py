"""Ownership and grant tricks, identity changes and the server's own powers, tried with a tenant's credentials.

The prize is always the same: another tenant's role, the admin's, the superuser's, or one of the predefined
roles that read or write everything. None of it may be reachable: not by GRANT, ALTER ... OWNER, REASSIGN
OWNED, default privileges, SET ROLE, SET SESSION AUTHORIZATION or set_config.
"""
from __future__ import annotations

import psycopg
import pytest
from hostile_kit import Attempts, Fleet, SqlAttack, run_sql_attack, superuser_finds_false

# Roles of every server that read, write, signal or administer beyond one tenant.
PREDEFINED_ROLES = ("pg_read_all_data", "pg_write_all_data", "pg_read_all_stats", "pg_read_all_settings", "pg_monitor",
                    "pg_stat_scan_tables", "pg_signal_backend", "pg_read_server_files", "pg_write_server_files",
                    "pg_execute_server_program", "pg_checkpoint", "pg_maintain", "pg_create_subscription",
                    "pg_use_reserved_connections", "pg_signal_autovacuum_worker")


def free(name: str, *steps: str, **options: object) -> SqlAttack:
    return SqlAttack(f"free tenant {name}", "free", tuple(steps), **options)  # type: ignore[arg-type]


def enterprise(name: str, *steps: str, **options: object) -> SqlAttack:
    return SqlAttack(f"enterprise tenant {name}", "enterprise", tuple(steps), **options)  # type: ignore[arg-type]


OWNERSHIP_AND_GRANTS = [
    free("takes ownership of the shared parent", "ALTER TABLE {shared} OWNER TO {my_role}"),
    free("takes ownership of its own partition", "ALTER TABLE {my_partition} OWNER TO {my_role}"),
    free("takes ownership of a victim's partition", "ALTER TABLE {victim_partition} OWNER TO {my_role}"),
    free("takes ownership of the shared vector schema", "ALTER SCHEMA tenantstore_vectors OWNER TO {my_role}"),
    free("takes ownership of a victim's schema", "ALTER SCHEMA {victim_schema} OWNER TO {my_role}"),
    free("takes ownership of the shared database", "ALTER DATABASE tenants OWNER TO {my_role}"),
    free("hands its schema to a victim", "ALTER SCHEMA {my_schema} OWNER TO {victim_role}"),
    free("hands its schema to the admin", "ALTER SCHEMA {my_schema} OWNER TO {admin}"),
    free("hands its schema to its holding role", "ALTER SCHEMA {my_schema} OWNER TO {holding}", expect=psycopg.Error),
    free("hands a table to the admin", "CREATE TABLE {my_schema}.hx_gift (id int)", "ALTER TABLE {my_schema}.hx_gift OWNER TO {admin}"),
    free("hands a view over the shared parent to the admin",
         "CREATE VIEW {my_schema}.hx_gift_view AS SELECT * FROM {shared}",
         "ALTER VIEW {my_schema}.hx_gift_view OWNER TO {admin}"),
    free("hands a SECURITY DEFINER function to the admin",
         "CREATE FUNCTION {my_schema}.hx_gift_fn() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'SELECT'",
         "ALTER FUNCTION {my_schema}.hx_gift_fn() OWNER TO {admin}"),
    free("grants itself a victim's role", "GRANT {victim_role} TO {my_role}"),
    free("grants itself an enterprise tenant's role", "GRANT {enterprise_victim_role} TO {my_role}"),
    free("grants itself the admin role", "GRANT {admin} TO {my_role}"),
    free("grants itself the superuser", "GRANT postgres TO {my_role}"),
    free("grants itself its holding role", "GRANT {holding} TO {my_role}", expect=psycopg.Error),
    free("grants its role to a victim", "GRANT {my_role} TO {victim_role}"),
    free("grants itself pg_database_owner", "GRANT pg_database_owner TO {my_role}", expect=psycopg.Error),
    *[free(f"grants itself {role}", f"GRANT {role} TO {{my_role}}") for role in PREDEFINED_ROLES],
    free("grants itself TRUNCATE on the shared parent", "GRANT TRUNCATE ON {shared} TO {my_role}",
         judge=superuser_finds_false("SELECT has_table_privilege('{my_role}', '{shared}', 'TRUNCATE')")),
    free("grants itself TRIGGER on its own partition", "GRANT TRIGGER ON {my_partition} TO {my_role}",
         judge=superuser_finds_false("SELECT has_table_privilege('{my_role}', '{my_partition}', 'TRIGGER')")),
    free("grants PUBLIC everything on a victim's partition", "GRANT ALL ON {victim_partition} TO PUBLIC"),
    free("grants itself USAGE on a victim's schema", "GRANT USAGE ON SCHEMA {victim_schema} TO {my_role}"),
    free("grants itself CREATE on the shared vector schema", "GRANT CREATE ON SCHEMA tenantstore_vectors TO {my_role}",
         judge=superuser_finds_false("SELECT has_schema_privilege('{my_role}', 'tenantstore_vectors', 'CREATE')")),
    free("grants itself CREATE on the shared database", "GRANT CREATE ON DATABASE tenants TO {my_role}",
         judge=superuser_finds_false("SELECT has_database_privilege('{my_role}', 'tenants', 'CREATE')")),
    free("grants itself a victim's table with GRANT OPTION", "GRANT SELECT ON {victim_schema}.ledger TO {my_role} WITH GRANT OPTION"),
    free("reassigns a victim's objects to itself", "REASSIGN OWNED BY {victim_role} TO {my_role}"),
    free("reassigns the admin's objects to itself", "REASSIGN OWNED BY {admin} TO {my_role}"),
    free("reassigns its objects to the admin", "REASSIGN OWNED BY {my_role} TO {admin}"),
    free("drops a victim's objects", "DROP OWNED BY {victim_role}"),
    free("creates a schema owned by a victim", "CREATE SCHEMA hx_for_victim AUTHORIZATION {victim_role}"),
    free("creates a schema owned by the admin", "CREATE SCHEMA hx_for_admin AUTHORIZATION {admin}"),
    free("sets default privileges for a victim", "ALTER DEFAULT PRIVILEGES FOR ROLE {victim_role} GRANT SELECT ON TABLES TO {my_role}"),
    free("sets default privileges for the admin", "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} GRANT ALL ON TABLES TO {my_role}"),
    free("sets default privileges for the admin in the shared vector schema",
         "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA tenantstore_vectors GRANT SELECT ON TABLES TO {my_role}"),
    free("sets default privileges for the superuser", "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TABLES TO {my_role}"),
    free("changes a victim's password", "ALTER ROLE {victim_role} PASSWORD 'hx-stolen'"),
    free("changes the admin's password", "ALTER ROLE {admin} PASSWORD 'hx-stolen'"),
    free("lifts its own connection limit", "ALTER ROLE {my_role} CONNECTION LIMIT -1"),
    free("makes itself a superuser", "ALTER ROLE {my_role} SUPERUSER"),
    free("gives itself CREATEROLE", "ALTER ROLE {my_role} CREATEROLE"),
    free("gives itself CREATEDB", "ALTER ROLE {my_role} CREATEDB"),
    free("gives itself BYPASSRLS", "ALTER ROLE {my_role} BYPASSRLS"),
    free("gives itself REPLICATION", "ALTER ROLE {my_role} REPLICATION"),
    free("renames itself", "ALTER ROLE {my_role} RENAME TO hx_renamed", expect=psycopg.Error),
    free("takes a victim's login away", "ALTER ROLE {victim_role} NOLOGIN"),
    free("drops a victim's role", "DROP ROLE {victim_role}"),
    free("rewrites its own role comment as a released claim",
         "COMMENT ON ROLE {my_role} IS '{{\"managedBy\": \"tenantstore\", \"owner\": null}}'"),
    free("rewrites a victim's role comment", "COMMENT ON ROLE {victim_role} IS 'hx'"),
    free("updates the vector extension", "ALTER EXTENSION vector UPDATE"),
    free("drops the vector extension", "DROP EXTENSION vector CASCADE"),
]

IDENTITY = [
    free("sets its role to a victim's", "SET ROLE {victim_role}"),
    free("sets its role to the admin", "SET ROLE {admin}"),
    free("sets its role to the superuser", "SET ROLE postgres"),
    free("sets its role to its holding role", "SET ROLE {holding}", expect=psycopg.Error),
    free("sets its role to pg_read_all_data", "SET ROLE pg_read_all_data"),
    free("sets a local role to the admin", "SET LOCAL ROLE {admin}", transaction=True),
    free("sets session authorization to a victim", "SET SESSION AUTHORIZATION {victim_role}"),
    free("sets session authorization to the superuser", "SET SESSION AUTHORIZATION postgres"),
    free("sets the role through set_config", "SELECT set_config('role', '{victim_role}', false)"),
    free("sets session authorization through set_config", "SELECT set_config('session_authorization', 'postgres', false)",
         expect=psycopg.Error),
    free("sets the admin role in a function's SET clause",
         "CREATE FUNCTION {my_schema}.hx_as_admin() RETURNS name LANGUAGE sql SET role = '{admin}' AS 'SELECT current_user'",
         "SELECT {my_schema}.hx_as_admin()"),
    enterprise("grants itself a victim's role", "GRANT {enterprise_victim_role} TO {my_role}"),
    enterprise("grants itself the admin role", "GRANT {admin} TO {my_role}"),
    enterprise("grants itself pg_read_all_data", "GRANT pg_read_all_data TO {my_role}"),
    enterprise("sets its role to a victim's", "SET ROLE {enterprise_victim_role}"),
    enterprise("sets its role to the admin", "SET ROLE {admin}"),
    enterprise("sets session authorization to the admin", "SET SESSION AUTHORIZATION {admin}"),
]

ENTERPRISE_OWNERSHIP = [
    enterprise("hands its database to a victim", "ALTER DATABASE {my_database} OWNER TO {enterprise_victim_role}"),
    enterprise("hands its database to the admin", "ALTER DATABASE {my_database} OWNER TO {admin}"),
    enterprise("takes ownership of its dedicated table", "ALTER TABLE {my_vectors} OWNER TO {my_role}"),
    enterprise("adds a trigger to its dedicated table",
               "CREATE FUNCTION public.hx_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
               "CREATE TRIGGER hx_on_vectors BEFORE INSERT ON {my_vectors} FOR EACH ROW EXECUTE FUNCTION public.hx_trigger()"),
    enterprise("adds a policy to its dedicated table", "CREATE POLICY hx_policy ON {my_vectors} USING (true)"),
    enterprise("enables row level security on its dedicated table", "ALTER TABLE {my_vectors} ENABLE ROW LEVEL SECURITY"),
    enterprise("adds a rule to its dedicated table", "CREATE RULE hx_rule AS ON INSERT TO {my_vectors} DO ALSO NOTIFY hx"),
    enterprise("creates a schema owned by the admin", "CREATE SCHEMA hx_admins AUTHORIZATION {admin}"),
    enterprise("creates a schema owned by a victim", "CREATE SCHEMA hx_victims AUTHORIZATION {enterprise_victim_role}"),
    enterprise("sets default privileges for the admin", "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} GRANT ALL ON TABLES TO {my_role}"),
    enterprise("sets default privileges for the admin in public",
               "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public GRANT ALL ON TABLES TO {my_role}"),
    enterprise("reassigns the admin's objects to itself", "REASSIGN OWNED BY {admin} TO {my_role}"),
    enterprise("renames its database", "ALTER DATABASE {my_database} RENAME TO hx_moved", expect=psycopg.Error),
    enterprise("creates a database", "CREATE DATABASE hx_extra"),
    enterprise("creates a role", "CREATE ROLE hx_extra"),
    enterprise("drops the vector extension of its database", "DROP EXTENSION vector CASCADE"),
    enterprise("lifts its own connection limit", "ALTER ROLE {my_role} CONNECTION LIMIT -1"),
    enterprise("rewrites its own role comment", "COMMENT ON ROLE {my_role} IS 'hx'"),
]

SERVER_POWERS = [
    free("creates an event trigger",
         "CREATE FUNCTION {my_schema}.hx_event() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$",
         "CREATE EVENT TRIGGER hx_event ON ddl_command_start EXECUTE FUNCTION {my_schema}.hx_event()"),
    free("publishes the shared parent", "CREATE PUBLICATION hx_publication FOR TABLE {shared}"),
    free("subscribes to a publication",
         "CREATE SUBSCRIPTION hx_subscription CONNECTION 'host=127.0.0.1' PUBLICATION hx WITH (connect = false)"),
    free("creates a foreign data wrapper", "CREATE FOREIGN DATA WRAPPER hx_wrapper"),
    free("installs dblink", "CREATE EXTENSION dblink"),
    free("installs postgres_fdw", "CREATE EXTENSION postgres_fdw"),
    free("installs file_fdw", "CREATE EXTENSION file_fdw"),
    free("reads a server file", "SELECT pg_read_file('PG_VERSION')"),
    free("reads a server file as bytes", "SELECT pg_read_binary_file('PG_VERSION')"),
    free("lists the data directory", "SELECT pg_ls_dir('.')"),
    free("copies from a server file", "COPY {my_schema}.ledger FROM '/etc/hostname'"),
    free("copies to a server file", "COPY {my_schema}.ledger TO '/tmp/hx-out'"),
    free("copies from a program", "COPY {my_schema}.ledger FROM PROGRAM 'id'"),
    free("imports a server file as a large object", "SELECT lo_import('/etc/hostname')"),
    free("exports a large object to a server file", "SELECT lo_export(0, '/tmp/hx-lo')"),
    free("loads a server library", "LOAD 'auto_explain'"),
    free("changes the server's configuration", "ALTER SYSTEM SET log_statement = 'all'"),
    free("reloads the server's configuration", "SELECT pg_reload_conf()"),
    free("rotates the server log", "SELECT pg_rotate_logfile()"),
    free("forces a checkpoint", "CHECKPOINT"),
    free("switches off triggers and foreign keys for its connection", "SET session_replication_role = replica"),
    free("reads the data directory's location", "SELECT current_setting('data_directory')"),
    enterprise("creates an event trigger in its database",
               "CREATE FUNCTION public.hx_event() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$",
               "CREATE EVENT TRIGGER hx_event ON ddl_command_start EXECUTE FUNCTION public.hx_event()"),
    enterprise("installs dblink in its database", "CREATE EXTENSION dblink"),
    enterprise("installs postgres_fdw in its database", "CREATE EXTENSION postgres_fdw"),
]


@pytest.mark.parametrize("attack", OWNERSHIP_AND_GRANTS + ENTERPRISE_OWNERSHIP, ids=str)
def test_ownership_and_grant_tricks_are_refused(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


@pytest.mark.parametrize("attack", IDENTITY, ids=str)
def test_identity_changes_are_refused(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)


@pytest.mark.parametrize("attack", SERVER_POWERS, ids=str)
def test_server_powers_are_refused(attack: SqlAttack, fleet: Fleet, attempts: Attempts) -> None:
    run_sql_attack(attempts, fleet, attack)
