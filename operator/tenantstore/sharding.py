"""Sharding across active replicas: `tenantstore run --shards N`.

Each TenantStore belongs to one of N shards, by a stable hash of its tenantId (immutable; and two TenantStores
claiming the same tenantId land in the same shard, so the claim check still sees both). Each shard is held
through a coordination.k8s.io Lease of its own, with leader election's rules (`leader.LeaseLock`), and every
replica announces itself with a member Lease it renews. Every replica computes the same assignment of shards
to the live members (`assign`: balanced, and a member joining or leaving moves about its share), gives back the
shards it should no longer hold and takes the ones it should, and runs Kopf for exactly the shards it holds.

Why Kopf is restarted when the held shards change: Kopf cannot stop handling some objects while it runs (a
handler filter would also make it drop the finalizer of the objects filtered out), so each Kopf run is given
a fixed set of shards and sees only their objects (`install_event_filter`); when the set changes, the run is
stopped (its handlers end) before a shard is given back, and a new run with the new set starts. A restart of
a converged fleet touches no backend (resumed tenants that need nothing are skipped), so a rebalance costs a
re-listing, not a re-provisioning.

A replica that cannot renew a held shard within the renew deadline stops Kopf before the lease can lapse and
exits, as a leader does; a graceful stop gives every shard and its member Lease back at once. Until Kopf has
stopped, no reconcile or teardown begins on a shard whose last renewal is older than the renew deadline
(`ShardView.until_current`): a busy event loop may take a while to stop Kopf, and that time is not the next
holder's margin to spend.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tenantstore import kube
from tenantstore.api import TENANT_ID_LABEL
from tenantstore.leader import ElectionConfig, LeaseLock
from tenantstore.standby import StandbyHealth

logger = logging.getLogger("tenantstore.sharding")


def shard_of(key: str, shards: int) -> int:
    """The shard of a tenantId: stable across processes and releases (not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % shards


def assign(shards: int, members: Iterable[str]) -> dict[int, str]:
    """Each shard to a member: every replica that sees the same members computes the same assignment; each
    member gets shards/members of them, rounded up or down; and a member joining or leaving moves few shards.

    Rendezvous hashing with a cap: shard by shard, the member ranking highest for it (a hash of the pair) that
    is not yet full. Plain rendezvous hashing moves the fewest shards but, with a few shards per replica, can
    leave a replica without any."""
    candidates = sorted(set(members))
    if not candidates:
        return {}
    base, extra = divmod(shards, len(candidates))
    # Which members may take one more than `base`: also decided by hash, so no member is always favoured.
    roomy = set(sorted(candidates, key=lambda member: hashlib.sha256(f"extra/{member}".encode()).digest())[:extra])
    capacity = {member: base + (member in roomy) for member in candidates}
    assigned: dict[int, str] = {}
    for shard in range(shards):
        ranked = sorted(candidates, key=lambda member: hashlib.sha256(f"{shard}/{member}".encode()).digest(),
                        reverse=True)
        member = next(member for member in ranked if capacity[member] > 0)
        capacity[member] -= 1
        assigned[shard] = member
    return assigned


@dataclasses.dataclass(frozen=True)
class ShardView:
    """What one Kopf run may touch: the shards it holds of how many, and whether it speaks for the classes.

    The holder of shard 0 is the coordinator: it alone writes a StoreClass's own conditions and pool figures,
    folding in what each shard's holder reports under the class's status.shards."""

    shards: int = 1
    owned: frozenset[int] = frozenset({0})
    identity: str = ""
    # Returns once this replica may begin work on the shard (its lease renewed within the renew deadline).
    until_current: Callable[[int], Awaitable[None]] | None = dataclasses.field(default=None, compare=False)

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    @property
    def coordinator(self) -> bool:
        return 0 in self.owned

    def shard_of_tenant(self, body: Mapping[str, Any]) -> int:
        spec, metadata = body.get("spec") or {}, body.get("metadata") or {}
        return shard_of(spec.get("tenantId") or metadata.get("uid", ""), self.shards)

    def owns(self, plural: str, body: Mapping[str, Any]) -> bool:
        """Whether this run handles the object: its TenantStores and their Secrets, a share of the exports
        (by uid), and every StoreClass (each replica measures and verifies its own tenants of each class)."""
        if not self.sharded:
            return True
        metadata = body.get("metadata") or {}
        if plural == "tenantstores":
            return self.shard_of_tenant(body) in self.owned
        if plural == "secrets":
            tenant_id = (metadata.get("labels") or {}).get(TENANT_ID_LABEL)
            return self.coordinator if tenant_id is None else shard_of(tenant_id, self.shards) in self.owned
        if plural == "tenantstoreexports":
            return shard_of(metadata.get("uid", ""), self.shards) in self.owned
        return True


WHOLE = ShardView()
_view: ShardView = WHOLE


def current_view() -> ShardView:
    return _view


def _set_view(view: ShardView) -> None:
    global _view  # noqa: PLW0603 (one Kopf run at a time per process; set before it starts)
    _view = view


def install_event_filter() -> bool:
    """Make Kopf skip, before indexing or handling, every watch event of an object the current view does not
    own. Kopf has no public hook for this; its per-object processor is wrapped (the attribute its orchestrator
    reads when a run starts). False, and nothing changed, for a Kopf without that processor."""
    try:
        from kopf._core.reactor import processing  # noqa: PLC0415
    except ImportError:
        return False
    original = getattr(processing, "process_resource_event", None)
    if original is None:
        return False
    if getattr(original, "_tenantstore_sharded", False):
        return True

    async def process_owned_only(**kwargs: Any) -> str | None:
        resource, raw_event = kwargs["resource"], kwargs["raw_event"]
        if not _view.owns(resource.plural, raw_event.get("object") or {}):
            # The object is not this run's: it must still count as indexed, or the run would wait for it.
            resource_indexed, operator_indexed = kwargs.get("resource_indexed"), kwargs.get("operator_indexed")
            if operator_indexed is not None and resource_indexed is not None:
                await operator_indexed.drop_toggle(resource_indexed)
            return None
        return await original(**kwargs)

    process_owned_only._tenantstore_sharded = True  # type: ignore[attr-defined]
    processing.process_resource_event = process_owned_only
    return True


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    shards: int
    election: ElectionConfig  # namespace, lease name prefix, identity and the lease timings

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"--shards must be at least 1 (got {self.shards})")

    @property
    def prefix(self) -> str:
        return self.election.name

    def shard_lease(self, shard: int) -> str:
        return f"{self.prefix}-shard-{shard}"

    @property
    def member_lease(self) -> str:
        # The shard count is in the name, so replicas see whether they agree on it. Lease names are DNS
        # subdomains; identities need not be.
        return (f"{self.prefix}-member-{self.shards}-"
                f"{hashlib.sha256(self.election.identity.encode()).hexdigest()[:16]}")

    @property
    def settle(self) -> float:
        """How long the live members must stay the same before shards move: replicas started together see
        each other before they act, instead of taking and giving back shards as each appears."""
        return 2 * self.election.retry_period


class Members:
    """The live replicas, from their member Leases: live while the record keeps changing (renewals), as seen on
    this replica's monotonic clock, as leader election judges a holder (no clock comparison across nodes)."""

    def __init__(self, api: client.ApiClient, config: ShardingConfig):
        self.leases = client.CoordinationV1Api(api)
        self.config = config
        self._seen: dict[str, tuple[str, float]] = {}  # lease name -> (resourceVersion, when it changed)
        self.versions: dict[str, str] = {}  # every Lease of the namespace, as last listed

    async def live(self) -> dict[str, int] | None:
        """The live members' identities and shard counts; None when the API server did not answer (nothing
        moves then)."""
        config = self.config
        try:
            listed = await self.leases.list_namespaced_lease(config.election.namespace,
                                                             _request_timeout=config.election.renew_deadline / 2)
        except (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            logger.warning("could not list the member leases: %s", getattr(error, "reason", None) or error)
            return None
        now, live, seen = time.monotonic(), {}, {}
        member_prefix = f"{config.prefix}-member-"
        self.versions = {lease.metadata.name: lease.metadata.resource_version for lease in listed.items}
        for lease in listed.items:
            name = lease.metadata.name
            holder = (lease.spec.holder_identity if lease.spec else None) or ""
            shards = name.removeprefix(member_prefix).split("-", 1)[0]
            if not name.startswith(member_prefix) or not holder or not shards.isdigit():
                continue
            version = lease.metadata.resource_version
            previous = self._seen.get(name)
            changed_at = previous[1] if previous and previous[0] == version else now
            seen[name] = (version, changed_at)
            duration = (lease.spec.lease_duration_seconds or math.ceil(config.election.lease_duration))
            if now < changed_at + duration:
                live[holder] = int(shards)
            elif now >= changed_at + DEAD_MEMBER_DURATIONS * duration:
                await self._forget(name, version)
        self._seen = seen
        return live

    async def _forget(self, name: str, version: str) -> None:
        """Delete the member Lease of a replica dead for long (killed: it never left), unless renewed meanwhile
        (a replica only cut off recreates its Lease at its next renewal anyway)."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=version))
        with contextlib.suppress(ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError):
            await self.leases.delete_namespaced_lease(name, self.config.election.namespace, body=options,
                                                      _request_timeout=self.config.election.renew_deadline / 2)
            logger.info("%s removed the member lease %s, not renewed for %d lease durations",
                        self.config.election.identity, name, DEAD_MEMBER_DURATIONS)

    async def leave(self) -> None:
        """Delete this replica's member Lease (graceful stop), so the others rebalance at once."""
        with contextlib.suppress(ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError):
            await self.leases.delete_namespaced_lease(self.config.member_lease, self.config.election.namespace,
                                                      _request_timeout=self.config.election.renew_deadline / 2)


# A member Lease not renewed for this many lease durations belongs to a dead replica: it is deleted.
DEAD_MEMBER_DURATIONS = 3

# The operator to run for a view; it must return soon after the event is set.
RunOperator = Callable[[ShardView, asyncio.Event], Awaitable[Any]]


class Replica:
    """One replica's shard Leases and its member Lease, renewed in the background."""

    def __init__(self, api: client.ApiClient, config: ShardingConfig):
        self.config = config
        election = config.election
        self.member = LeaseLock(api, dataclasses.replace(election, name=config.member_lease))
        self.locks = {shard: LeaseLock(api, dataclasses.replace(election, name=config.shard_lease(shard)))
                      for shard in range(config.shards)}
        self.members = Members(api, config)
        self.lost = asyncio.Event()  # a held shard could not be renewed within the renew deadline
        self._renewed: dict[int, float] = {}
        self._lease_calls = asyncio.Lock()  # one request per Lease at a time (renewal and take/give back)
        self._round_ended = asyncio.Event()  # set, then replaced, after each round of renewals or takes
        self._other_counts: list[int] = []  # shard counts of live replicas that differ from this one's

    def held(self) -> frozenset[int]:
        return frozenset(shard for shard, lock in self.locks.items() if lock.holding)

    async def renew(self) -> None:
        async with self._lease_calls:
            held = sorted(self.held())
            # All at once: a round takes one request's time, not one per Lease, so a slow API server delays each
            # shard's renewal by its own request only (one after another, a few slow ones used up the deadline).
            _, *renewed = await asyncio.gather(self.member.try_acquire_or_renew(),
                                               *(self.locks[shard].try_acquire_or_renew() for shard in held))
            for shard, done in zip(held, renewed):
                if done:
                    self._renewed[shard] = time.monotonic()
                elif not self.locks[shard].holding or \
                        time.monotonic() - self._renewed.get(shard, 0.0) >= self.config.election.renew_deadline:
                    logger.error("%s lost the lease of shard %d", self.config.election.identity, shard)
                    self.lost.set()
            self._end_round()

    async def keep_renewing(self) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(self.config.election.retry_period)
            await self.renew()

    async def take(self, shards: Iterable[int]) -> None:
        async with self._lease_calls:
            for shard in sorted(shards):
                if await self.locks[shard].try_acquire_or_renew():
                    self._renewed[shard] = time.monotonic()
            self._end_round()

    def current(self, shard: int) -> bool:
        """Whether work may begin on the shard: its lease is held and was renewed within the renew deadline."""
        renewed = self._renewed.get(shard)
        return not self.lost.is_set() and self.locks[shard].holding and renewed is not None and \
            time.monotonic() - renewed < self.config.election.renew_deadline

    async def until_current(self, shard: int) -> None:
        """Returns once the shard's lease is current; never once it is lost (stopping Kopf cancels the wait)."""
        while not self.current(shard):
            await self._round_ended.wait()

    def _end_round(self) -> None:
        ended, self._round_ended = self._round_ended, asyncio.Event()
        ended.set()

    async def give_back(self, shards: Iterable[int]) -> None:
        async with self._lease_calls:
            for shard in sorted(shards):
                await self.locks[shard].release()
                self._renewed.pop(shard, None)

    async def wanted(self) -> frozenset[str] | None:
        """The live members to share the shards with (those with this replica's shard count); None when that is
        not known, or when this replica must wait.

        A shard of one count is not a shard of another: while replicas with another count live (a rollout
        changing it), a replica that holds no shard takes none, and those that hold shards share them among the
        replicas of their own count. The new count starts once the old replicas have gone."""
        members = await self.members.live()
        if members is None:
            return None
        for lock in self.locks.values():  # a dead holder's shard is then free a lease duration after it died
            if not lock.holding:
                lock.observe(self.members.versions.get(lock.config.name))
        if self.member.holding:  # counted once its member Lease is written, even before a listing shows it
            members[self.config.election.identity] = self.config.shards
        others = sorted({shards for shards in members.values() if shards != self.config.shards})
        waiting = bool(others) and not self.held()
        if waiting and others != self._other_counts:
            logger.warning("%s waits: live replicas use other shard counts (%s); it takes shards once all use %d",
                           self.config.election.identity, others, self.config.shards)
        self._other_counts = others
        if waiting:
            return None
        return frozenset(member for member, shards in members.items() if shards == self.config.shards)


class Sharded:
    """The loop of `tenantstore run --shards N`: keep the right shards, and Kopf running for exactly them."""

    def __init__(self, replica: Replica, run_operator: RunOperator, stop: asyncio.Event, liveness: str | None):
        self.replica = replica
        self.config = replica.config
        self.run_operator = run_operator
        self.stop = stop
        self.view: ShardView | None = None
        self._operator: asyncio.Task[Any] | None = None
        self._operator_stop = asyncio.Event()
        # While Kopf does not run (no shard yet, or between runs) the replica answers its liveness probe itself.
        self._health = StandbyHealth(liveness, self.identity, {"leader": False, "shards": []}) if liveness else None

    @property
    def identity(self) -> str:
        return self.config.election.identity

    async def run(self) -> int:
        renewing = asyncio.create_task(self.replica.keep_renewing(), name="shard-lease-renewal")
        members: frozenset[str] | None = None
        members_since = short_since = time.monotonic()
        self._signals_stop_the_replica()
        await self._between_runs()
        try:
            await self.replica.renew()  # the member Lease first, so others see this replica soon
            while not self.stop.is_set() and not self.replica.lost.is_set():
                if self._operator is not None and self._operator.done():
                    return self._operator_ended()
                live = await self.replica.wanted()
                now = time.monotonic()
                if live != members:
                    # Replicas that joined are waited for (others may be starting with them); one that left
                    # is not: its shards are to be taken over now.
                    joined = live is None or members is None or not live <= members
                    members, members_since = live, (now if joined else now - self.config.settle)
                if members and now - members_since >= self.config.settle:
                    desired = frozenset(shard for shard, member in assign(self.config.shards, members).items()
                                        if member == self.identity)
                    if surplus := self.replica.held() - desired:
                        await self.stop_operator()  # its handlers end before another replica may start them
                        await self.replica.give_back(surplus)
                        logger.info("%s gave back shards %s", self.identity, sorted(surplus))
                    if missing := desired - self.replica.held():
                        await self.replica.take(missing)
                    held = self.replica.held()
                    if held == desired:
                        short_since = now
                    # A shard still held by the replica that gives it back is waited for up to a lease duration,
                    # so a rebalance restarts Kopf once, not once per shard.
                    await self.run_for(held, restart=held == desired
                                       or now - short_since >= self.config.election.lease_duration)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake(), self.config.election.retry_period)
            if self.replica.lost.is_set():
                # Stop before another replica can take over: lease duration minus renew deadline.
                election = self.config.election
                await self.stop_operator(timeout=election.lease_duration - election.renew_deadline)
                return 1  # the pod restarts and joins again
            await self.stop_operator()
            return 0
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            if not self.replica.lost.is_set():
                await self.replica.give_back(self.replica.held())
                await self.replica.members.leave()
            if self._health is not None:
                await self._health.stop()

    async def _wake(self) -> None:
        waits = [asyncio.create_task(self.stop.wait()), asyncio.create_task(self.replica.lost.wait())]
        if self._operator is not None:
            waits.append(asyncio.ensure_future(asyncio.shield(self._operator)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def run_for(self, held: frozenset[int], restart: bool) -> None:
        """Kopf for the held shards: started when it is not running, restarted for gained shards when `restart`."""
        running = self.view.owned if self.view is not None and self._operator is not None else frozenset()
        if held == running or (running and not restart) or self.stop.is_set():
            return
        await self.stop_operator()
        if not held or self.stop.is_set():  # the run may have ended on a signal meanwhile
            return
        self.view = ShardView(shards=self.config.shards, owned=held, identity=self.identity,
                              until_current=self.replica.until_current)
        _set_view(self.view)
        logger.info("%s runs shards %s of %d", self.identity, sorted(held), self.config.shards)
        if self._health is not None:
            await self._health.stop()  # Kopf serves the port while it runs
        self._operator_stop = asyncio.Event()
        self._operator = asyncio.create_task(self.run_operator(self.view, self._operator_stop), name="operator")

    async def stop_operator(self, timeout: float | None = None) -> None:
        operator, self._operator = self._operator, None
        if operator is None:
            return
        if operator.done():
            # Kopf ended on its own, on the signal it handled (or a crash): the process ends with it.
            self.stop.set()
        self._operator_stop.set()
        done, _ = await asyncio.wait({operator}, timeout=timeout)
        if not done:
            operator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await operator
        elif not operator.cancelled() and operator.exception() is not None:
            raise operator.exception()  # type: ignore[misc]
        await self._between_runs()

    def _signals_stop_the_replica(self) -> None:
        """SIGTERM and SIGINT stop the replica, not only the Kopf run that happens to handle them: each Kopf run
        installs its own signal handlers, so every handler installed on this loop also sets `stop` (else a signal
        that arrives while the replica stops Kopf for a rebalance would be taken for that stop)."""
        loop = asyncio.get_running_loop()
        install = type(loop).add_signal_handler

        def add_signal_handler(signum: int, callback: Callable[..., Any], *args: Any) -> None:
            def handle() -> None:
                self.stop.set()
                callback(*args)
            install(loop, signum, handle)

        loop.add_signal_handler = add_signal_handler  # type: ignore[method-assign]

    async def _between_runs(self) -> None:
        # Kopf's handlers of a finished run are left behind: the replica's own answer signals between runs.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop.set)
        if self._health is not None:
            self._health.state["shards"] = sorted(self.replica.held())
            await self._health.start()

    def _operator_ended(self) -> int:
        """Kopf stopped on its own (a signal it handled, or a crash): the process ends with it."""
        operator, self._operator = self._operator, None
        assert operator is not None
        operator.result()  # a crash surfaces as the process's error
        return 0


async def run_sharded(config: ShardingConfig, run_operator: RunOperator, liveness: str | None) -> int:
    """The body of `tenantstore run --shards N`."""
    if not install_event_filter():
        raise RuntimeError("this Kopf has no per-object event processor to filter: sharding cannot keep a replica "
                           "off the other shards' TenantStores, so it is refused")
    api = await kube.api_client()
    try:
        return await Sharded(Replica(api, config), run_operator, asyncio.Event(), liveness).run()
    finally:
        await api.close()
