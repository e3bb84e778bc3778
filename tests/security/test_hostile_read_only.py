"""A readOnly credential, attacked with nothing but its own login: it reads its tenant's tables and vectors and
can write, create or delete nothing, through any path (its tenant's role, its own identity, a read-only default
switched off, temporary objects, sequences, locks, grants), and reaches no other tenant. Its tenant's rows are
compared after every attack."""
from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from hostile_kit import (DATABASE, DEDICATED, NAMESPACE, SCHEMA, SHARED_DATABASE, TENANT_CONNECTION_OPTIONS, Attempts,
                         Fleet, Superuser, Tenant, desired, provision, remove)

from tenantstore.backends import LoginPlan
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.models import Access, Credential

VIEWER = Credential("viewer", Access.READ_ONLY, "viewer-secret")
PASSWORD = "viewer-password-1"


@dataclasses.dataclass
class Reader:
    """The readOnly credential of `tenant`, as its Secret gives it."""

    tenant: Tenant
    login: str

    def connect(self, database: str | None = None) -> psycopg.Connection[Any]:
        relational = self.tenant.relational
        return psycopg.connect(f"postgresql://{self.login}:{PASSWORD}@{relational.host}:{relational.port}/"
                               f"{database or self.tenant.database}", autocommit=True, connect_timeout=5,
                               options=TENANT_CONNECTION_OPTIONS, application_name="hx-reader")


@pytest.fixture(scope="module")
async def readers(operator_server: PostgresServer, superuser: Superuser) -> AsyncIterator[dict[str, Reader]]:
    made: dict[str, Reader] = {}
    try:
        for key, tenant_id, relational, vector in (("schema", "hxro", SCHEMA, NAMESPACE),
                                                    ("database", "hxero", DATABASE, DEDICATED)):
            store = dataclasses.replace(desired(tenant_id, relational, vector, connection_limit=10),
                                        credentials=(VIEWER,))
            await PostgresRelationalStore(operator_server).ensure(store, "owner-password", password_is_new=True)
            await PostgresRelationalStore(operator_server).ensure_credentials(
                store, {"viewer": LoginPlan(store.credential_roles[0].logins[0], PASSWORD, True)})
            tenant = await provision(operator_server, store, password="owner-password")  # vectors, seeded rows
            superuser.keep(tenant.database)
            made[key] = Reader(tenant, store.credential_roles[0].logins[0])
        yield made
    finally:
        for reader in made.values():
            await remove(operator_server, superuser, reader.tenant.store)


def snapshot(superuser: Superuser, tenant: Tenant) -> list[list[tuple[Any, ...]]]:
    return [superuser.rows(database, f"SELECT * FROM {table} ORDER BY 1, 2") for database, table in tenant.data_tables()]


def statements(tenant: Tenant, victim: Tenant) -> list[tuple[str, str]]:
    own, vectors = f"{tenant.schema}.ledger", tenant.vectors.table
    namespace = "namespace, " if tenant.vectors.namespace else ""
    value = f"'{tenant.id}', " if tenant.vectors.namespace else ""
    return [
        ("inserts into its tenant's table", f"INSERT INTO {own} VALUES (99, 'x')"),
        ("updates its tenant's table", f"UPDATE {own} SET secret = 'x'"),
        ("deletes from its tenant's table", f"DELETE FROM {own}"),
        ("truncates its tenant's table", f"TRUNCATE {own}"),
        ("alters its tenant's table", f"ALTER TABLE {own} ADD COLUMN x int"),
        ("drops its tenant's table", f"DROP TABLE {own}"),
        ("copies rows into its tenant's table", f"COPY {own} FROM PROGRAM 'true'"),
        ("creates a table in its tenant's schema", f"CREATE TABLE {tenant.schema}.mine (id int)"),
        ("creates a view in its tenant's schema", f"CREATE VIEW {tenant.schema}.mine AS SELECT 1"),
        ("creates a function in its tenant's schema",
         f"CREATE FUNCTION {tenant.schema}.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
        ("creates a schema", "CREATE SCHEMA hx_reader"),
        ("creates a temporary table", "CREATE TEMPORARY TABLE hx_scratch (id int)"),
        ("advances its tenant's sequence", f"SELECT nextval('{tenant.schema}.ledger_ids')"),
        ("sets its tenant's sequence", f"SELECT setval('{tenant.schema}.ledger_ids', 1000)"),
        ("inserts vectors", f"INSERT INTO {vectors} ({namespace}id, embedding) VALUES ({value}'hx', '[1,1,1]')"),
        ("updates vectors", f"UPDATE {vectors} SET metadata = '{{}}'"),
        ("deletes vectors", f"DELETE FROM {vectors}"),
        ("truncates vectors", f"TRUNCATE {vectors}"),
        ("becomes its tenant's role", f"SET ROLE {tenant.role}"),
        ("becomes its tenant's role by session authorization", f"SET SESSION AUTHORIZATION {tenant.role}"),
        ("drops to its own identity and writes", f"SET ROLE NONE; INSERT INTO {own} VALUES (98, 'x')"),
        ("resets its role and writes", f"RESET ROLE; INSERT INTO {own} VALUES (97, 'x')"),
        ("switches the read-only default off and writes",
         f"SET default_transaction_read_only = off; INSERT INTO {own} VALUES (96, 'x')"),
        ("locks its tenant's table exclusively", f"BEGIN; LOCK TABLE {own} IN ACCESS EXCLUSIVE MODE"),
        ("grants its read access to everyone", f"GRANT SELECT ON {own} TO PUBLIC"),
        ("grants itself its tenant's role", f"GRANT {tenant.role} TO CURRENT_USER"),
        ("ends its tenant's sessions", f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       f"WHERE usename = '{tenant.role}'"),
        ("reads another tenant's table", f"SELECT * FROM {victim.schema}.ledger"),
        ("reads another tenant's vectors", f"SELECT * FROM {victim.partition}"),
    ]


THE_TENANTS = ("schema", "database")


def attack_list() -> list[tuple[str, int]]:
    return [(key, index) for key in THE_TENANTS for index in range(29)]


@pytest.mark.parametrize("key, index", attack_list(), ids=lambda value: str(value))
def test_a_read_only_credential_changes_nothing(key: str, index: int, readers: dict[str, Reader], fleet: Fleet,
                                                attempts: Attempts, superuser: Superuser) -> None:
    reader = readers[key]
    name, statement = statements(reader.tenant, fleet["victim"])[index]
    before = snapshot(superuser, reader.tenant)

    def attack() -> list[tuple[Any, ...]]:
        with reader.connect() as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    # Ending nobody's session is harmless; everything else must be refused outright.
    harmless: Callable[[Any], bool] | None = (lambda rows: all(row == (None,) for row in rows)) \
        if "sessions" in name else None
    attempts.refused(f"{key} readOnly credential {name}", attack,
                     expect=(psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction,
                             psycopg.errors.UndefinedTable), harmless=harmless)
    assert snapshot(superuser, reader.tenant) == before


def test_a_read_only_credential_reads_its_tenants_rows_and_vectors(readers: dict[str, Reader]) -> None:
    for reader in readers.values():
        with reader.connect() as conn:
            assert len(conn.execute(f"SELECT * FROM {reader.tenant.schema}.ledger").fetchall()) == 3
            ids = [row[0] for row in conn.execute(f"SELECT id FROM {reader.tenant.vectors.table} ORDER BY id")]
            assert ids == [f"{reader.tenant.marker}-v{n}" for n in (1, 2, 3)]


def test_the_shared_database_is_closed_to_a_reader_of_an_enterprise_tenant(readers: dict[str, Reader],
                                                                         attempts: Attempts) -> None:
    attempts.refused("database readOnly credential connects to the shared database",
                     lambda: readers["database"].connect(SHARED_DATABASE).close(),
                     expect=psycopg.OperationalError, message="permission denied for database")
