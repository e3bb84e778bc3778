"""Traps a hostile tenant sets for the operator's admin connections, and the check that none of them went off.

Each trap calls hx_trap(), which records who ran it (current_user, session_user) in a log table the tenant owns
and, whoever runs it, tries to become the login role again, to grant a victim's role to the tenant and to an
accomplice, to give both more attributes and to take the dedicated table and its schema. SECURITY INVOKER throughout: harmless when the tenant runs it, a
takeover when an admin connection does.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from hostile_kit import (
    Superuser,
    Tenant,
    first_line,
    memberships,
    operator_made,
    operator_teardown,
    owned_objects,
    records,
    revoke_everything,
    role_attributes,
)
from psycopg import sql

from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.errors import ReconcileError

LOG_TABLE = "hx_trap_log"


def trap_function(schema: str, attacker: Tenant, accomplice: Tenant, victims: Sequence[Tenant]) -> list[str]:
    """The log table and hx_trap(via) in `schema`."""
    # RESET ROLE first: an admin connection that SET ROLE to the tenant would be the admin again.
    grabs = ["RESET ROLE"]
    grabs += [f"GRANT {victim.role} TO {role}" for victim in victims for role in (attacker.role, accomplice.role)]
    grabs += [f"ALTER ROLE {attacker.role} CREATEDB CREATEROLE CONNECTION LIMIT -1", f"ALTER ROLE {accomplice.role} CREATEDB",
              f"ALTER TABLE {attacker.schema}.vectors OWNER TO {attacker.role}",
              f"ALTER SCHEMA {attacker.schema} OWNER TO {attacker.role}"]
    attempts = "\n".join(f"  BEGIN EXECUTE {sql.quote(grab)}; EXCEPTION WHEN OTHERS THEN NULL; END;" for grab in grabs)
    return [
        f"CREATE TABLE {schema}.{LOG_TABLE} (who name, sess name, via text)",
        f"GRANT ALL ON {schema}.{LOG_TABLE} TO PUBLIC",
        f"""CREATE FUNCTION {schema}.hx_trap(via text) RETURNS void LANGUAGE plpgsql AS $trap$
BEGIN
  INSERT INTO {schema}.{LOG_TABLE} (who, sess, via) VALUES (current_user, session_user, via);
{attempts}
END $trap$""",
        f"""CREATE FUNCTION {schema}.hx_trap_true(via text) RETURNS boolean LANGUAGE plpgsql AS $trap$
BEGIN PERFORM {schema}.hx_trap(via); RETURN true; END $trap$""",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO PUBLIC",
    ]


def wrapper(schema: str, name: str, arguments: str, returns: str, call: str) -> str:
    """A function that springs the trap, then returns what the real one (spelled out in `call`) would."""
    body = f"RETURN QUERY {call};" if returns.startswith("SETOF") else f"RETURN {call};"
    return (f"CREATE FUNCTION {schema}.{name}({arguments}) RETURNS {returns} LANGUAGE plpgsql AS $trap$ "
            f"BEGIN PERFORM {schema}.hx_trap('{name}({arguments})'); {body} END $trap$")


def overloads(schema: str) -> list[str]:
    """Argument types closer to the operator's calls than pg_catalog's: chosen even with pg_catalog searched first."""
    return [
        wrapper(schema, "format", "a text, b text, c text", "text", "pg_catalog.format(a, b, c)"),
        wrapper(schema, "format", "a text, b text", "text", "pg_catalog.format(a, b)"),
        wrapper(schema, "unnest", "a text[]", "SETOF text", "SELECT * FROM pg_catalog.unnest(a)"),
        wrapper(schema, "has_table_privilege", "a text, b text, c text", "boolean",
                "pg_catalog.has_table_privilege(a::name, b, c)"),
        wrapper(schema, "has_schema_privilege", "a text, b text, c text", "boolean",
                "pg_catalog.has_schema_privilege(a::name, b, c)"),
        wrapper(schema, "pg_terminate_backend", "a integer, b integer", "boolean", "pg_catalog.pg_terminate_backend(a, b)"),
    ]


def shadows(schema: str) -> list[str]:
    """The same signatures as pg_catalog's: chosen only where `schema` is searched before pg_catalog."""
    return [
        wrapper(schema, "to_regclass", "a text", "regclass", "pg_catalog.to_regclass(a)"),
        wrapper(schema, "quote_ident", "a text", "text", "pg_catalog.quote_ident(a)"),
        wrapper(schema, "pg_get_userbyid", "a oid", "name", "pg_catalog.pg_get_userbyid(a)"),
        wrapper(schema, "starts_with", "a text, b text", "boolean", "pg_catalog.starts_with(a, b)"),
        wrapper(schema, "current_database", "", "name", "pg_catalog.current_database()"),
        wrapper(schema, "pg_total_relation_size", "a regclass", "bigint", "pg_catalog.pg_total_relation_size(a)"),
        wrapper(schema, "hx_count_final", "n bigint", "bigint", "n"),
        f"CREATE AGGREGATE {schema}.count(*) (SFUNC = pg_catalog.int8inc, STYPE = bigint, INITCOND = '0', "
        f"FINALFUNC = {schema}.hx_count_final)",
        wrapper(schema, "hx_texteq", "a text, b text", "boolean", "pg_catalog.texteq(a, b)"),
        f"CREATE OPERATOR {schema}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {schema}.hx_texteq)",
        wrapper(schema, "hx_nameeqtext", "a name, b text", "boolean", "pg_catalog.nameeqtext(a, b)"),
        f"CREATE OPERATOR {schema}.= (LEFTARG = name, RIGHTARG = text, FUNCTION = {schema}.hx_nameeqtext)",
    ]


def admin_schema_squat(admin_role: str, trap_schema: str) -> list[str]:
    """A schema named like the admin role comes first in a default search_path ("$user", public): a domain
    called vector there replaces the type in the operator's `::vector` casts, and its CHECK runs as the caster."""
    return [
        f"CREATE SCHEMA {admin_role}",
        f"CREATE DOMAIN {admin_role}.vector AS public.vector CHECK ({trap_schema}.hx_trap_true('vector domain'))",
        f"GRANT USAGE ON SCHEMA {admin_role} TO PUBLIC",
    ]


@dataclasses.dataclass
class TrapWatch:
    """What the traps could change, compared after each operator step; reset after each, so a step is judged alone."""

    superuser: Superuser
    attacker: Tenant
    accomplice: Tenant
    admin_role: str
    log_schema: str
    scope: Sequence[str] | None = None  # schemas whose ownership is watched (None: the whole tenant database)
    admin_owned: set[str] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        self.admin_owned = self._admin_owned()

    def _admin_owned(self) -> set[str]:
        owned = owned_objects(self.superuser, self.attacker.database, self.admin_role, self.scope)
        return owned - operator_made(owned, self.attacker)

    def problems(self) -> list[str]:
        found = []
        for tenant in (self.attacker, self.accomplice):
            found += [f"{tenant.role} became a member of {granted}" for granted in memberships(self.superuser, tenant.role)]
            attributes = role_attributes(self.superuser, tenant.role)
            if attributes and (attributes["createdb"] or attributes["createrole"]
                               or attributes["connection_limit"] != tenant.store.connection_limit):
                found.append(f"{tenant.role} attributes changed: {attributes}")
        if self.superuser.database_exists(self.attacker.database) and self._log_exists():
            for who, login, via in self.superuser.rows(self.attacker.database, sql.SQL(
                    "SELECT DISTINCT who::text, sess::text, via FROM {} WHERE who <> %s OR sess <> %s").format(
                    sql.Identifier(self.log_schema, LOG_TABLE)), (self.attacker.role, self.attacker.role)):
                found.append(f"the tenant's {via} ran as {who} (logged in as {login})")
        gained = self._admin_owned() - self.admin_owned
        if gained:
            found.append(f"now owned by the admin: {sorted(gained)}")
        return found

    def _log_exists(self) -> bool:
        return bool(self.superuser.value(self.attacker.database, "SELECT to_regclass(%s) IS NOT NULL",
                                         (f"{self.log_schema}.{LOG_TABLE}",)))

    def reset(self) -> None:
        for tenant in (self.attacker, self.accomplice):
            if role_attributes(self.superuser, tenant.role) is None:
                continue
            role = sql.Identifier(tenant.role)
            revoke_everything(self.superuser, tenant.role)
            self.superuser.rows("postgres", sql.SQL("ALTER ROLE {} NOCREATEDB NOCREATEROLE CONNECTION LIMIT {}").format(
                role, sql.Literal(tenant.store.connection_limit)))
        if self.superuser.database_exists(self.attacker.database) and self._log_exists():
            self.superuser.rows(self.attacker.database, sql.SQL("TRUNCATE {}").format(
                sql.Identifier(self.log_schema, LOG_TABLE)))
        self.admin_owned = self._admin_owned() | self.admin_owned


async def run_operator_step(step: Callable[[], Awaitable[Any]]) -> str:
    """Run one operator code path; refusing to act on a trapped tenant (an error) is a fine outcome."""
    try:
        await step()
    except (ReconcileError, psycopg.Error) as error:
        return f"the operator stopped: {type(error).__name__}: {first_line(error)}"
    return "the operator went through"


async def judge_operator_steps(attempts: Any, watch: TrapWatch, prefix: str,
                               steps: dict[str, Callable[[], Awaitable[Any]]]) -> None:
    """Run each step, judge it by what the traps left behind, record it; fail at the end if any went off."""
    failures = []
    for name, step in steps.items():
        outcome = await run_operator_step(step)
        problems = watch.problems()
        try:
            attempts.record(f"{prefix}: {name}", not problems, "; ".join(problems) + f" ({outcome})" if problems else outcome)
        except AssertionError as failure:
            failures.append(str(failure))
        watch.reset()
    assert not failures, "\n".join(failures)


OperatorSteps = dict[str, Callable[[], Awaitable[Any]]]


def operator_steps(server: PostgresServer, tenant: Tenant) -> OperatorSteps:
    """Every code path the operator runs against one tenant, in the order a tenant's life runs them."""
    relational, vectors = PostgresRelationalStore(server), PgvectorStore(server)
    store, placement = tenant.store, tenant.vectors
    blocked = dataclasses.replace(store, writes_allowed=False)

    async def reconcile() -> None:
        await relational.ensure(store, tenant.password, password_is_new=False)
        await vectors.ensure(store)

    async def measure() -> None:
        await relational.measure([store])
        await vectors.measure([(store, placement)])

    async def block() -> None:
        await relational.ensure_write_access(blocked)
        await vectors.ensure_write_access(blocked, placement)

    async def unblock() -> None:
        await relational.ensure_write_access(store)
        await vectors.ensure_write_access(store, placement)

    async def suspend_and_resume() -> None:
        await relational.ensure(dataclasses.replace(store, suspended=True), tenant.password, password_is_new=False)
        await relational.ensure(store, tenant.password, password_is_new=False)

    async def migration_reads() -> None:
        await vectors.count(store, placement)
        await vectors.read_batch(store, placement, None, 10)

    async def migration_writes() -> None:
        await vectors.write_batch(store, placement, records(2, "hx-copied"))

    return {"routine reconcile": reconcile, "usage measurement": measure, "quota block": block,
            "quota unblock": unblock, "suspension and resumption": suspend_and_resume,
            "migration reads": migration_reads, "migration writes": migration_writes,
            "isolation probe": lambda: vectors.probe_isolation(store, placement),
            "teardown": lambda: operator_teardown(server, store)}


def plant(tenant: Tenant, statements: list[str], database: str | None = None) -> None:
    with tenant.connect(database) as conn:
        for statement in statements:
            conn.execute(statement)
