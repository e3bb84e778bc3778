"""Moving a tenant to another StoreClass: another Postgres server, another vector backend.

A TenantStore whose spec.storeClassName names a class other than status.storeClassName (a change the API
allows only with spec.storeClassChange: Move) is moved, within one reconcile:

1. Provisioning: the tenant's role, schema or database and vector store are made in the target class (its
   tables are loaded there as the tenant, then its writes are refused there too). Nothing changes for the
   tenant yet.
2. PreCopying: the vectors are copied in id order while the tenant still writes (the bulk of a move).
3. Copying: the source is frozen (the tenant may read and delete, not write) and the time recorded; the
   relational data is dumped from the source server and loaded into the target as the tenant (one
   transaction); both vector stores are read side by side and only what differs is written or deleted; both
   are verified (the objects, each table's row count and a sample of its rows; the vector count and a
   sample of vectors).
4. CuttingOver: the target takes writes, the Secret names the target, status.storeClassName switches.
5. SourcePendingDeletion: everything of the tenant in the source class is torn down and its audit trail
   carried over. The ordinary reconcile in the new class follows (scoped credentials, the global index).

status.migration (kind StoreClass) records the step, so an operator killed anywhere resumes: a loaded target
is only checked, the vector pre-copy goes on after the last recorded id, a recorded cut-over is finished. Until
the cut-over the move can be reversed: naming the source class again (or a third) removes what the target
holds and lets the tenant write in the source again.

The freeze is bounded by the source class's spec.moves.maxFreezeSeconds. A copy still running at the bound
is stopped: the target's copy is removed, the tenant writes in the source again, status.lastClassMove says so,
and the move waits for a new generation of the TenantStore or a new bound (MoveFreezeExceeded) while the
ordinary reconcile keeps the tenant as it is. A failed verification ends the same way, and the move is tried
again after a while.
"""
from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tenantstore import conditions, cost, export, migration, relational_moves, settings
from tenantstore.api import ConditionType, Phase, Reason
from tenantstore.backends import RelationalPlacement, Step, VectorPlacement, audit_table
from tenantstore.conditions import Condition
from tenantstore.credentials import new_password
from tenantstore.errors import (BackendUnavailable, MoveFreezeExceeded, RestoreFailed, StoreClassMoveUnsupported,
                                TenantIdConflict)
from tenantstore.kube import Secrets, password_in
from tenantstore.models import (DesiredStore, RelationalIsolation, StoreClass, TenantStoreSpec, VectorIsolation,
                                desired_store, effective_quotas)
from tenantstore.quota import Usage, Verdict, judge
from tenantstore.registry import Backends, BackendRegistry

CLASS_MOVE = "StoreClass"
PROVISIONING, PRE_COPYING, COPYING, CUTTING_OVER, SOURCE_PENDING_DELETION = (
    "Provisioning", "PreCopying", "Copying", "CuttingOver", "SourcePendingDeletion")
REVERSIBLE = (PROVISIONING, PRE_COPYING, COPYING)  # the Secret still names the source
COMPLETED, STOPPED = "Completed", "Stopped"  # how status.lastClassMove ended
VERIFICATION_RETRY_SECONDS = 30.0

Report = Callable[[dict[str, Any]], Awaitable[None]]
Resolve = Callable[[str], StoreClass]
Admit = Callable[[StoreClass], Awaitable[None]]
# The tenant Secret's data for a placement, a password and the class's extras (the reconcile's layout).
SecretFor = Callable[[RelationalPlacement, VectorPlacement, str, Mapping[str, str]], dict[str, str]]


def recorded(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """The class move status.migration records, if that is what it records (tier moves use it too)."""
    record = status.get("migration")
    return dict(record) if record and record.get("kind") == CLASS_MOVE else None


def requested_class(spec: TenantStoreSpec, status: Mapping[str, Any]) -> str | None:
    """The class the spec moves a provisioned tenant to; None when it stays where it was made."""
    pinned = status.get("storeClassName")
    if not pinned or not status.get("relational") or not spec.store_class_name or spec.store_class_name == pinned:
        return None
    return spec.store_class_name


def write_verdict(spec: TenantStoreSpec, store_class: StoreClass, status: Mapping[str, Any]) -> tuple[Verdict, bool]:
    """The quota verdict in the class, and whether the tenant's writes stay blocked: the last measured usage is
    over a Block quota, or the month's cost over a Block budget (the measurement job decides)."""
    verdict = judge(Usage.from_status(status.get("usage")), effective_quotas(spec, store_class)[0], spec.quota_action)
    return verdict, verdict.blocks_writes or cost.budget_blocks_writes(status)


def store_in(spec: TenantStoreSpec, store_class: StoreClass, body: Mapping[str, Any],
             isolation: Mapping[str, str] | None = None) -> DesiredStore:
    """The tenant as `store_class` makes it (with `isolation`: as it was made there)."""
    meta, status = body["metadata"], body.get("status") or {}
    store = desired_store(spec, store_class, meta["uid"], f"{meta['namespace']}/{meta['name']}",
                          writes_allowed=not write_verdict(spec, store_class, status)[1])
    if isolation:
        store = dataclasses.replace(store, relational=RelationalIsolation(isolation["relational"]),
                                    vector=VectorIsolation(isolation["vector"]))
    return store


@dataclasses.dataclass(frozen=True)
class Side:
    store_class: StoreClass
    backends: Backends
    store: DesiredStore

    @property
    def frozen(self) -> DesiredStore:
        return dataclasses.replace(self.store, writes_allowed=False)


@dataclasses.dataclass(frozen=True)
class Moved:
    """What a reconcile did about classes: the status as it is now, and the events to post."""

    status: dict[str, Any]
    steps: list[Step]


class ClassMove:
    def __init__(self, body: Mapping[str, Any], spec: TenantStoreSpec, status: dict[str, Any],
                 record: dict[str, Any], source: Side, target: Side, secrets: Secrets, report: Report,
                 secret_for: SecretFor, same_postgres: bool = False):
        self.body, self.spec, self.status, self.record = body, spec, status, record
        # Both classes on one Postgres server and database: only the vectors move; the role, schema or
        # database are the tenant's in both classes and stay.
        self.same_postgres = same_postgres
        self.source, self.target = source, target
        self.secrets, self._report, self.secret_for = secrets, report, secret_for
        self.steps: list[Step] = []

    async def tell(self, changes: dict[str, Any]) -> None:
        """Write status now (a move is long), and keep the local view in step with what was written."""
        await self._report(changes)
        for key, value in changes.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value

    async def note(self, **changes: Any) -> None:
        self.record.update(changes)
        await self.tell({"migration": dict(self.record)})

    @property
    def serving_phase(self) -> str:
        return (Phase.SUSPENDED if self.spec.suspended else Phase.READY).value

    def migrating(self, status: bool, reason: str, message: str) -> dict[str, Any]:
        return {"conditions": conditions.merge_conditions(
            self.status.get("conditions"), [Condition(ConditionType.MIGRATING, status, reason, message)],
            self.body["metadata"].get("generation", 0))}

    # --- the steps ---

    async def run(self) -> None:
        """From wherever the record says the move is, to the end."""
        state = self.record.get("state")
        if state in (None, *REVERSIBLE):
            await self.copy()
            state = CUTTING_OVER
        if state == CUTTING_OVER:
            await self.cut_over()
        await self.remove_source()

    async def copy(self) -> None:
        """Provisioning, PreCopying and Copying: the target made, the vectors copied, then with writes refused
        the tables and what changed since; CuttingOver once both are verified."""
        source_side, target_side = await self.provision()
        if self.record["state"] == PRE_COPYING:
            await self.pre_copy(source_side, target_side)
        # The freeze: from here on the tenant may read and delete in the source, not write.
        await self.source.backends.relational.ensure_write_access(self.source.frozen)
        await self.source.backends.vector.ensure_write_access(self.source.frozen, source_side.placement)
        if self.record["state"] == PRE_COPYING:
            await self.note(state=COPYING, frozenAt=conditions.now_rfc3339(), frozenSince=time.time(),
                            limitSeconds=self.source.store_class.max_move_freeze_seconds)
        try:
            resynced = await self.copy_frozen(source_side, target_side)
        except (migration.FreezeLimitReached, TimeoutError) as stopped:
            await self.stop(str(stopped) or "the copy of the tables was still running")
        except (migration.MigrationVerificationFailed, RestoreFailed) as failed:
            await self.undo()
            raise migration.MigrationVerificationFailed(
                f"the move to StoreClass {self.target.store_class.name} is tried again in "
                f"{VERIFICATION_RETRY_SECONDS:.0f} s; the tenant serves and writes from "
                f"{self.source.store_class.name} meanwhile: {failed}", retry_after=VERIFICATION_RETRY_SECONDS) from None
        self.steps.append(Step("StoreClassMoveCopied", f"{self.record['tablesCopied']} tables "
                                                       f"({self.record['rowsCopied']} rows) and {resynced.total} "
                                                       f"vectors copied from StoreClass {self.source.store_class.name} "
                                                       f"to {self.target.store_class.name} and verified "
                                                       f"({resynced.written} vectors written and {resynced.deleted} "
                                                       f"deleted again after writes stopped)"))
        await self.note(state=CUTTING_OVER, frozenSeconds=self.frozen_seconds())

    async def provision(self) -> tuple[migration.VectorSide, migration.VectorSide]:
        source, target = self.source, self.target
        if self.record.get("state") is None:
            self.record = {"kind": CLASS_MOVE, "fromClass": source.store_class.name,
                           "toClass": target.store_class.name, "state": PROVISIONING,
                           "source": {"relational": source.store.relational.value,
                                      "vector": source.store.vector.value}}
            await self.tell({"phase": Phase.MIGRATING.value, "migration": dict(self.record),
                             **self.migrating(True, Reason.COPYING, f"moving to StoreClass {target.store_class.name}")})
        if not self.same_postgres:
            # The tables are loaded as the tenant, so its target may be written until they are; frozen afterwards.
            loading = "tablesCopied" not in self.record
            password, _ = await self.password()
            self.steps += (await target.backends.relational.ensure(target.store if loading else target.frozen,
                                                                   password, password_is_new=True))[1]
        target_vectors, vector_steps = await target.backends.vector.ensure(target.frozen)
        self.steps += vector_steps
        if self.record["state"] == PROVISIONING:
            await self.note(state=PRE_COPYING)
        return (migration.VectorSide(source.backends.vector, source.store, self.source_vectors()),
                migration.VectorSide(target.backends.vector, target.store, target_vectors))

    async def pre_copy(self, source: migration.VectorSide, target: migration.VectorSide) -> None:
        """The bulk of the vectors, while the tenant still writes: the freeze then waits only for what changed."""
        async def progress(copied: int, total: int, last_id: str | None) -> None:
            await self.note(copied=copied, total=total, lastId=last_id)

        await migration.copy_vectors(source, target, self.record.get("lastId"), progress,
                                     settings.current().migration_batch, verified=False)

    async def copy_frozen(self, source: migration.VectorSide, target: migration.VectorSide) -> migration.Resynced:
        """With the tenant's writes refused: the tables, then the vectors that changed, then both verified.
        FreezeLimitReached or TimeoutError once the class's bound has passed."""
        deadline = float(self.record["frozenSince"]) + self.source.store_class.max_move_freeze_seconds
        if self.same_postgres:
            await self.note(tablesCopied=0, rowsCopied=0)
        elif "tablesCopied" not in self.record:
            tables, rows = await asyncio.wait_for(self.copy_tables(source.placement),
                                                  timeout=max(deadline - time.time(), 0.001))
            await self.target.backends.relational.ensure_write_access(self.target.frozen)
            await self.note(tablesCopied=tables, rowsCopied=rows, frozenSeconds=self.frozen_seconds())
        resynced = await migration.resync(source, target, settings.current().migration_batch, deadline)
        await self.note(total=resynced.total, rewritten=resynced.written, deleted=resynced.deleted,
                        frozenSeconds=self.frozen_seconds())
        await migration.verify(source, target, resynced.total)
        if not self.same_postgres:
            await self.verify_tables(source.placement)
        if time.time() > deadline:
            raise migration.FreezeLimitReached("the copy was verified only after the bound")
        return resynced

    async def check_tables_movable(self) -> None:
        """Before anything is made: RelationalMigrationUnsupported for tables the target cannot hold."""
        if not self.same_postgres:
            await relational_moves.check_movable(
                self.source.backends.relational,
                relational_moves.RelationalMove(self.source.store, self.target.store, COPYING),
                self.source_vectors(), self.target.backends.vector.backend)

    async def verify_tables(self, source_vectors: VectorPlacement) -> None:
        source, target = self.source, self.target
        async with source.backends.relational.io_login(source.store) as source_login, \
                target.backends.relational.io_login(target.store) as target_login:
            await relational_moves.verify_between(
                source_login, source.store, export.operator_table(source.store, source_vectors),
                target_login, target.store,
                relational_moves.operator_table_of(target.store, target.backends.vector.backend))

    async def copy_tables(self, source_vectors: VectorPlacement) -> tuple[int, int]:
        target = self.target
        directory = relational_moves.staging(settings.current().export_dir, self.source.store)
        await directory.prepare()
        dumped = await export.dump_relational(self.source.store, source_vectors, self.source.backends.relational,
                                              directory)
        loaded = await export.load_relational(
            target.store, target.backends.relational, directory, dumped,
            excluded=relational_moves.operator_table_of(target.store, target.backends.vector.backend))
        return len(loaded), sum(loaded.values())

    async def cut_over(self) -> None:
        """The target takes writes first, then the Secret names it: a client that follows the Secret is never
        refused once it has."""
        target, (password, missing) = self.target, await self.password()
        relational, _ = await target.backends.relational.ensure(target.store, password, password_is_new=missing)
        vectors, _ = await target.backends.vector.ensure(target.store)
        frozen = self.frozen_seconds()
        await self.secrets.apply_tenant_secret(
            self.body["metadata"]["namespace"], self.spec.secret_name, self.body,
            self.secret_for(relational, vectors, password, target.backends.secret_extras),
            writes_blocked=not target.store.writes_allowed)
        old_vectors = self.status.get("vectorStore") or {}
        self.record.update(state=SOURCE_PENDING_DELETION, frozenSeconds=frozen)
        await self.tell({
            "storeClassName": target.store_class.name,
            "observedStoreClassGeneration": target.store_class.generation,
            "isolation": {"relational": target.store.relational.value, "vector": target.store.vector.value},
            "relational": relational.to_status(),
            "vectorStore": {**{key: None for key in old_vectors}, **vectors.to_status()},  # merge patch
            "migration": dict(self.record)})
        self.steps.append(Step("StoreClassMoved", f"the tenant now lives in StoreClass {target.store_class.name} "
                                                  f"(role {relational.role} on {relational.host}:{relational.port}, "
                                                  f"{describe_vectors(vectors)}); its writes were refused for "
                                                  f"{frozen:.1f} s"))

    async def remove_source(self) -> None:
        source = self.source
        if not self.same_postgres:
            await carry_audit_trail(source, self.target)
        if await owned(source, self.body):
            self.steps += await remove(source, vectors_only=self.same_postgres)
        forget_staging(source.store)
        done = {"fromClass": self.record["fromClass"], "toClass": self.record["toClass"], "outcome": COMPLETED,
                "frozenSeconds": self.record.get("frozenSeconds"), "completedAt": conditions.now_rfc3339(),
                "limitSeconds": None, "generation": None, "message": None}  # merge patch: a stop's keys go
        await self.tell({"migration": None, "lastClassMove": done})

    # --- when the move does not go ahead ---

    async def stop(self, why: str) -> None:
        """The freeze reached its bound: the tenant goes on in the source, the target's copy goes."""
        target, frozen = self.target, self.frozen_seconds()
        limit = self.source.store_class.max_move_freeze_seconds
        message = (f"the move to StoreClass {target.store_class.name} was stopped after {frozen:.0f} s of refused "
                   f"writes, the bound of StoreClass {self.source.store_class.name} (spec.moves.maxFreezeSeconds "
                   f"{limit}): {why}. The tenant serves and writes from {self.source.store_class.name} as before; "
                   f"raise the bound or change this TenantStore's spec to try again")
        await self.undo(outcome={
            "fromClass": self.record["fromClass"], "toClass": self.record["toClass"], "outcome": STOPPED,
            "frozenSeconds": frozen, "limitSeconds": limit, "generation": self.body["metadata"].get("generation", 0),
            "message": message, "completedAt": conditions.now_rfc3339()})
        await self.tell(self.migrating(False, Reason.MOVE_FREEZE_EXCEEDED, message))
        raise MoveFreezeExceeded(message)

    async def undo(self, outcome: dict[str, Any] | None = None) -> None:
        """Writes back on in the source and the target's copy removed: as before the move. The record goes
        last, so a crash before it undoes again; `outcome` becomes status.lastClassMove."""
        await self.source.backends.relational.ensure_write_access(self.source.store)
        await self.source.backends.vector.ensure_write_access(self.source.store, self.source_vectors())
        if await owned(self.target, self.body):
            self.steps += await remove(self.target, vectors_only=self.same_postgres)
        forget_staging(self.source.store)
        self.record = {}
        await self.tell({"phase": self.serving_phase, "migration": None,
                         **({"lastClassMove": outcome} if outcome else {})})

    # --- helpers ---

    def source_vectors(self) -> VectorPlacement:
        """Where the source's vectors are (status names the source until the cut-over)."""
        placement = VectorPlacement.from_status(self.status.get("vectorStore"))
        assert placement is not None, "a provisioned tenant without a vector placement"
        return placement

    def frozen_seconds(self) -> float:
        return round(time.time() - float(self.record.get("frozenSince") or time.time()), 3)

    async def password(self) -> tuple[str, bool]:
        """The Secret's password; without one (the Secret was deleted) a new one, and True: the role gets it."""
        secret = await self.secrets.read_tenant_secret(self.body["metadata"]["namespace"], self.spec.secret_name,
                                                       self.body)
        found = password_in(secret)
        return (found, False) if found else (new_password(), True)


async def owned(side: Side, body: Mapping[str, Any]) -> bool:
    """Whether what the side holds under the tenant's name is this TenantStore's to remove."""
    holder = await side.backends.relational.claimed_by(side.store)
    return holder is None or holder == body["metadata"]["uid"]


def forget_staging(store: DesiredStore) -> None:
    """The dump a move staged on the export volume (made again if the move is)."""
    shutil.rmtree(relational_moves.staging(settings.current().export_dir, store).path, ignore_errors=True)


async def remove(side: Side, vectors_only: bool) -> list[Step]:
    """Everything of the tenant in the side's class (only its vectors when the classes share its Postgres),
    checked gone."""
    steps = await side.backends.vector.teardown(side.store)
    left = await side.backends.vector.residue(side.store)
    if not vectors_only:
        steps += await side.backends.relational.teardown(side.store)
        left += await side.backends.relational.residue(side.store)
    if left:
        raise BackendUnavailable(f"StoreClass {side.store_class.name} still holds {', '.join(left)} of the tenant; "
                                 f"removing it again")
    return steps


async def shares_postgres(source: Side, target: Side) -> bool:
    """Whether the two classes keep the tenant's tables in the very same place (server, database, isolation)."""
    same_server = await source.backends.relational.server_identity() == \
        await target.backends.relational.server_identity()
    same_place = source.store_class.shared_database == target.store_class.shared_database \
        and source.store.relational is target.store.relational
    if same_server and not same_place:
        raise StoreClassMoveUnsupported(
            f"StoreClass {source.store_class.name} and {target.store_class.name} use the same Postgres server (where "
            f"the tenant's role is one and the same) but keep its tables in different places: a move changes the "
            f"server, or on one server and database only the vector backend. The tenant stays in "
            f"{source.store_class.name}; name it again in spec.storeClassName")
    if same_server and source.store_class.vector_backend == target.store_class.vector_backend:
        raise StoreClassMoveUnsupported(
            f"StoreClass {source.store_class.name} and {target.store_class.name} keep the tenant in the same Postgres "
            f"and the same vector backend: there is nothing to move. The tenant stays in {source.store_class.name}; "
            f"name it again in spec.storeClassName")
    return same_server


async def carry_audit_trail(source: Side, target: Side) -> None:
    """The tenant's entries in the source class's audit trail, appended to the target's (once each: they
    name where and when they were first written, which a rerun finds)."""
    async with source.backends.server.connect() as source_conn:
        entries = await audit_table.trail(source_conn, source.store.tenant_id)
    if not entries:
        return
    async with target.backends.server.connect() as target_conn:
        await audit_table.ensure(target_conn)
        present = {(entry.action, entry.message) for entry in await audit_table.trail(target_conn,
                                                                                    target.store.tenant_id)}
        carried = [audit_table.carried(entry, source.store_class.name) for entry in entries if entry.at is not None]
        await audit_table.append(target_conn, [entry for entry in carried
                                               if (entry.action, entry.message) not in present])


def describe_vectors(placement: VectorPlacement) -> str:
    return f"vectors in {migration.describe(placement)} ({placement.backend})"


async def check_movable(source: Side, target: Side) -> None:
    """What a move cannot do, refused before anything is made (the tenant stays where it is)."""
    if source.store_class.vector_backend == "pinecone" and target.store_class.vector_backend == "pinecone":
        raise StoreClassMoveUnsupported(
            f"StoreClass {source.store_class.name} and {target.store_class.name} both keep vectors in Pinecone: a "
            f"move copies between a Postgres and a Pinecone store, or two Postgres servers. The tenant stays in "
            f"{source.store_class.name}; name it again in spec.storeClassName")
    holder = await target.backends.relational.claimed_by(target.store)
    if holder not in (None, target.store.uid) and not await shares_postgres(source, target):
        raise TenantIdConflict(f"StoreClass {target.store_class.name}'s Postgres already has a role for tenant "
                               f"{target.store.tenant_id}; the tenant stays in {source.store_class.name}")


async def converge(body: Mapping[str, Any], spec: TenantStoreSpec, registry: BackendRegistry, secrets: Secrets,
                   report: Report, resolve: Resolve, admit: Admit, secret_for: SecretFor) -> Moved | None:
    """Make or finish the move between classes the spec asks for, or undo one it turned back from.

    None when there is nothing to do about classes (the ordinary reconcile goes on from the body's status);
    otherwise the status as it is afterwards. Raises ReconcileError when the move cannot go on now."""
    status = dict(body.get("status") or {})
    record, wanted = recorded(status), requested_class(spec, status)
    if record is None and (wanted is None or status.get("migration") or status.get("relationalMigration")):
        return None  # a tier change under way finishes in the class first
    record = record or {}
    state = record.get("state")
    source_class = resolve(record["fromClass"] if record else status["storeClassName"])
    isolation = record.get("source") if state == SOURCE_PENDING_DELETION else status.get("isolation")
    source = Side(source_class, await registry.for_class(source_class), store_in(spec, source_class, body, isolation))

    async def side(name: str) -> Side:
        store_class = resolve(name)
        # Scoped credentials are made in the new class by the ordinary reconcile after the cut-over.
        return Side(store_class, await registry.for_class(store_class),
                    dataclasses.replace(store_in(spec, store_class, body), credentials=()))

    if state in REVERSIBLE and record["toClass"] != wanted:
        target = await side(record["toClass"])
        move = ClassMove(body, spec, status, record, source, target, secrets, report, secret_for,
                         await shares_postgres(source, target))
        await move.undo()
        move.steps.append(Step("StoreClassMoveReverted", f"the move to StoreClass {record['toClass']} was given up: "
                                                         f"the tenant stays in {source_class.name}"))
        if wanted is None:
            return Moved(move.status, move.steps)
        status, record, state = move.status, {}, None
        body = {**body, "status": status}
    last = status.get("lastClassMove") or {}
    if state is None and last.get("outcome") == STOPPED and last.get("toClass") == wanted \
            and last.get("generation") == body["metadata"].get("generation") \
            and last.get("limitSeconds") == source_class.max_move_freeze_seconds:
        raise MoveFreezeExceeded(str(last.get("message", "")))  # tried at this generation and bound already
    target_name = record.get("toClass") or wanted
    assert target_name is not None
    target = await side(target_name)
    move = ClassMove(body, spec, status, record, source, target, secrets, report, secret_for,
                     await shares_postgres(source, target))
    if state is None:
        await admit(move.target.store_class)
        await registry.require_ready(move.target.store_class, move.target.backends)
        await check_movable(source, move.target)
        await move.check_tables_movable()
    await move.run()
    return Moved(move.status, move.steps)


async def remove_other_side(body: Mapping[str, Any], spec: TenantStoreSpec, registry: BackendRegistry,
                            resolve: Resolve) -> list[Step]:
    """A TenantStore deleted in the middle of a move: the side its status no longer names goes, whatever the
    deletion policy (before the cut-over that is the target's partial copy, after it the source)."""
    record = recorded(body.get("status") or {})
    if record is None:
        return []
    after_cut_over = record["state"] == SOURCE_PENDING_DELETION
    store_class = resolve(record["fromClass"] if after_cut_over else record["toClass"])
    side = Side(store_class, await registry.for_class(store_class),
                store_in(spec, store_class, body, record.get("source") if after_cut_over else None))
    if not await owned(side, body):
        return []
    staying = resolve(record["toClass"] if after_cut_over else record["fromClass"])
    shared = await side.backends.relational.server_identity() == \
        await (await registry.for_class(staying)).relational.server_identity()
    steps = await remove(side, vectors_only=shared)
    forget_staging(side.store)
    return steps
