"""Chaos: tenants of every tier converge, and are later torn down to nothing, while the operator is SIGKILLed at
seeded random moments, Postgres goes away for a few seconds and the kube-apiserver restarts.

The moments are drawn from `random.Random(seed)`: each disruption strikes once a drawn fraction of the phase's
tenants is done (Ready while provisioning, gone while deleting), plus a drawn delay, so it lands amid the work
whatever the machine's speed. One background thread runs the disruptions one after another; the operator (a
process of its own, watching only this test's namespace) is started again after each kill.

Size and seed come from the environment: CHAOS_N tenants (default 6, two per tier), CHAOS_KILLS kills (default
max(3, N // 4)), CHAOS_SEED (default: a fresh one; it is printed, and a run repeats with it). `make test` runs
the default size; `make chaos N=50` the full one. The summary line is printed either way.
"""
from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import psycopg
import pytest
from e2e_kit import ISOLATED_PREFIX, condition, superuser, tenant_secret, tenant_store

from tenantstore_dev.environment import Kubectl, KubectlError, LocalEnvironment, OperatorProcess, wait_for

NAMESPACE = f"{ISOLATED_PREFIX}chaos"
TIERS = ("free", "pro", "enterprise")
SHARED_VECTOR_SCHEMA = "tenantstore_vectors"
# A phase's budget: this, plus 3 s a tenant and 30 s a disruption. The wait for the phase to finish lasts at least
# SETTLE_SECONDS after the last disruption (the operator retries a refused step within 30 s).
PHASE_SECONDS = 120
SETTLE_SECONDS = 90
# The longest one disruption takes: a restart's own deadlines (the operator's liveness, the apiserver's readiness).
STRIKE_SECONDS = 90

Phase = Literal["provisioning", "deleting"]
Kind = Literal["kill", "postgres", "apiserver"]
PHASES: tuple[Phase, ...] = ("provisioning", "deleting")
OUTAGES: tuple[Kind, ...] = ("postgres", "apiserver")  # once each, in a phase the seed picks


@dataclasses.dataclass(frozen=True)
class Size:
    tenants: int
    kills: int
    seed: int

    @classmethod
    def from_environment(cls) -> Size:
        tenants = int(os.environ.get("CHAOS_N") or 6)
        kills = int(os.environ.get("CHAOS_KILLS") or max(3, tenants // 4))
        seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
        return cls(tenants, kills, seed)


@dataclasses.dataclass(frozen=True)
class Tenant:
    name: str  # also its tenantId
    tier: str
    explicit_delete: bool  # spec.deletionPolicy: Delete written out, else left to the default (Delete)

    @property
    def role(self) -> str:
        return "tenant_" + self.name.replace("-", "_")

    @property
    def holding_role(self) -> str:
        return "tenantstore_hold_" + self.name.replace("-", "_")

    @property
    def secret(self) -> str:
        return f"{self.name}-store"

    def manifest(self) -> dict[str, Any]:
        extra = {"deletionPolicy": "Delete"} if self.explicit_delete else {}
        return tenant_store(self.name, NAMESPACE, self.name, tier=self.tier, **extra)


@dataclasses.dataclass(frozen=True)
class Disruption:
    kind: Kind
    at_progress: float  # strikes once this fraction of the phase's tenants is done...
    delay: float  # ...and this many seconds more have passed
    duration: float  # how long the operator stays dead, Postgres stays down, the apiserver stays stopped


@dataclasses.dataclass
class Tally:
    kills: int = 0
    postgres_outages: int = 0
    apiserver_restarts: int = 0
    converged: int = 0
    residue: int | None = None  # None until checked


def tenants_of(size: Size, rng: random.Random) -> list[Tenant]:
    return [Tenant(f"chaos-{TIERS[i % 3]}-{i:03d}", TIERS[i % 3], explicit_delete=rng.random() < 0.5)
            for i in range(size.tenants)]


def plan(size: Size, rng: random.Random) -> dict[Phase, list[Disruption]]:
    """Which disruptions strike in which phase, when, and for how long; at least one kill amid the deletions."""
    deletion_kills = max(1, size.kills // 3) if size.kills else 0
    kills: dict[Phase, int] = {"provisioning": size.kills - deletion_kills, "deleting": deletion_kills}
    phases: dict[Phase, list[Disruption]] = {
        phase: [Disruption("kill", rng.uniform(0, 0.8), rng.uniform(0, 2), rng.uniform(0, 2))
                for _ in range(kills[phase])]
        for phase in PHASES}
    for kind in OUTAGES:
        phases[rng.choice(PHASES)].append(Disruption(kind, rng.uniform(0, 0.6), rng.uniform(0, 2), rng.uniform(2, 5)))
    return {phase: sorted(disruptions, key=lambda d: d.at_progress) for phase, disruptions in phases.items()}


def batches(tenants: list[Tenant], rng: random.Random) -> list[tuple[list[Tenant], float]]:
    """The tenants in a seeded order, in batches of seeded sizes, each with a seeded pause before the next."""
    order = rng.sample(tenants, len(tenants))
    largest = max(1, len(order) // 3)
    result: list[tuple[list[Tenant], float]] = []
    while order:
        count = rng.randint(1, largest)
        result.append((order[:count], rng.uniform(0, 1.5)))
        order = order[count:]
    return result


def listed(kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    """The TenantStores in the chaos namespace, by name."""
    items = (kubectl.get("tenantstores", namespace=NAMESPACE) or {}).get("items", [])
    return {item["metadata"]["name"]: item for item in items}


def converged(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    ready = condition(body, "Ready")
    return (ready.get("status") == "True" and ready.get("reason") == "Provisioned" and status.get("phase") == "Ready"
            and status.get("observedGeneration") == body["metadata"].get("generation"))


def describe(body: dict[str, Any] | None) -> str:
    if body is None:
        return "absent"
    ready = condition(body, "Ready")
    status = body.get("status") or {}
    deleting = " deleting" if body["metadata"].get("deletionTimestamp") else ""
    return (f"phase={status.get('phase')} Ready={ready.get('status')}/{ready.get('reason')} "
            f"generation={body['metadata'].get('generation')} observed={status.get('observedGeneration')}"
            f"{deleting} finalizers={body['metadata'].get('finalizers')} message={ready.get('message')!r}")


def log_excerpt(env: LocalEnvironment, operator: OperatorProcess, names: list[str], lines_per_tenant: int = 6) -> str:
    """The operator's last log lines about each tenant (over all its runs), Postgres' last complaints, and the
    operator log's tail: the logs themselves may be gone by the time someone reads the failure."""
    log = operator.log_path.read_text(errors="replace").splitlines() if operator.log_path.exists() else []
    parts = []
    for name in names[:5]:
        mine = [line for line in log if f"{NAMESPACE}/{name}]" in line]
        parts.append(f"--- operator, {name}:\n" + "\n".join(mine[-lines_per_tenant:]))
    postgres_log = env.postgres.workdir / "postgres.log"
    complaints = [line for line in postgres_log.read_text(errors="replace").splitlines()
                  if any(level in line for level in ("ERROR:", "FATAL:", "PANIC:", "STATEMENT:", "shutdown", "ready"))
                  ] if postgres_log.exists() else []
    parts.append(f"--- Postgres ({postgres_log}):\n" + "\n".join(complaints[-12:]))
    return "\n".join(parts) + f"\n--- operator log tail ({operator.log_path}):\n{operator.log_tail(2000)}"


Remnant = tuple[str, str]  # (what, which): ("role", "tenant_acme"), ("Secret", "ns/acme-store"), ...


def remnants(env: LocalEnvironment, kubectl: Kubectl, tenants: list[Tenant]) -> dict[str, list[Remnant]]:
    """What exists of each tenant, in Postgres (seen by the superuser) and in the API."""
    found: dict[str, list[Remnant]] = {tenant.name: [] for tenant in tenants}
    by_role = {tenant.role: tenant.name for tenant in tenants}
    by_role.update({tenant.holding_role: tenant.name for tenant in tenants})
    tenant_roles = [tenant.role for tenant in tenants]
    queries = {
        "role": ("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", list(by_role)),
        "schema": ("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", tenant_roles),
        "database": ("SELECT datname FROM pg_database WHERE datname = ANY(%s)", tenant_roles),
        "partition": ("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      f"WHERE n.nspname = '{SHARED_VECTOR_SCHEMA}' AND c.relname = ANY(%s)", tenant_roles),
        "policy": ("SELECT policyname FROM pg_policies WHERE policyname = ANY(%s)", tenant_roles),
        "claim": ("SELECT role FROM tenantstore.claims WHERE role = ANY(%s)", tenant_roles),
        "query baseline": ("SELECT role FROM tenantstore.daily_query_baseline WHERE role = ANY(%s)", tenant_roles),
    }
    with superuser(env) as conn:
        for what, (query, names) in queries.items():
            for (name,) in conn.execute(query, (names,)).fetchall():
                found[by_role[name]].append((what, name))
    secrets = {item["metadata"]["name"] for item in (kubectl.get("secrets", namespace=NAMESPACE) or {})["items"]}
    stores = listed(kubectl)
    for tenant in tenants:
        if tenant.secret in secrets:
            found[tenant.name].append(("Secret", f"{NAMESPACE}/{tenant.secret}"))
        if tenant.name in stores:
            found[tenant.name].append(("TenantStore", f"{NAMESPACE}/{tenant.name} ({describe(stores[tenant.name])})"))
    return found


def retrying(what: str, action: Callable[[], object], timeout: float = 60) -> None:
    """Run a kubectl write until the API server takes it (it may be restarting)."""
    def attempt() -> bool:
        action()
        return True
    wait_for(what, attempt, timeout=timeout, interval=0.5)


class Chaos(threading.Thread):
    """Runs one phase's disruptions one after another, each once its progress mark is reached; then ends."""

    def __init__(self, phase: Phase, disruptions: list[Disruption], progress: Callable[[], float],
                 strike: Callable[[Phase, Disruption], None], deadline: float) -> None:
        super().__init__(name=f"chaos-{phase}", daemon=True)
        self.phase = phase
        self.disruptions = disruptions
        self.progress = progress
        self.strike = strike
        self.deadline = deadline  # monotonic; past it, a disruption strikes without waiting for its mark
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for disruption in self.disruptions:
                while (not self.stopping.is_set() and time.monotonic() < self.deadline
                       and self.fraction_done() < disruption.at_progress):
                    self.stopping.wait(0.5)
                if self.stopping.wait(disruption.delay):
                    return
                self.strike(self.phase, disruption)
        except BaseException as error:  # noqa: BLE001 (reported by the test's thread)
            self.error = error

    def fraction_done(self) -> float:
        try:
            return self.progress()
        except KubectlError:  # the API server may be restarting
            return 0.0

    def finish(self, timeout: float) -> None:
        """Wait for the remaining disruptions to run; raise what went wrong in one."""
        self.join(timeout)
        assert not self.is_alive(), f"the {self.phase} disruptions did not finish within {timeout:.0f} s"
        if self.error is not None:
            raise self.error


@pytest.fixture
def chaos_operator(env: LocalEnvironment, kubectl: Kubectl, default_class: str) -> Iterator[OperatorProcess]:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    # Usage measured every few seconds, so the tenants get query baselines that the teardown must remove.
    process = env.operator("chaos-operator.log", ["--namespace", NAMESPACE, "--usage-interval", "5"])
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_tenants_converge_and_vanish_amid_kills_and_outages(env: LocalEnvironment, kubectl: Kubectl,
                                                            chaos_operator: OperatorProcess) -> None:
    size = Size.from_environment()
    rng = random.Random(size.seed)
    tenants = tenants_of(size, rng)
    schedule = plan(size, rng)
    creations, deletions = batches(tenants, rng), batches(tenants, rng)
    tally = Tally()
    started = time.monotonic()
    context = f"seed={size.seed} (CHAOS_SEED={size.seed} repeats this run)"

    def say(message: str) -> None:
        print(f"chaos: +{time.monotonic() - started:.1f}s {message}", flush=True)

    def strike(phase: Phase, disruption: Disruption) -> None:
        if disruption.kind == "kill":
            tally.kills += 1
            say(f"{phase}: SIGKILL the operator (kill {tally.kills}), dead for {disruption.duration:.1f} s")
            chaos_operator.kill()
            time.sleep(disruption.duration)  # objects change while nobody watches
            chaos_operator.start()
        elif disruption.kind == "postgres":
            tally.postgres_outages += 1
            say(f"{phase}: Postgres down for {disruption.duration:.1f} s")
            env.postgres.stop("immediate")
            try:
                time.sleep(disruption.duration)
            finally:
                env.postgres.start()
        else:
            tally.apiserver_restarts += 1
            say(f"{phase}: kube-apiserver stopped for {disruption.duration:.1f} s")
            env.control_plane.restart_apiserver(downtime=disruption.duration)
        say(f"{phase}: {disruption.kind} done")

    def run_phase(phase: Phase, work: list[tuple[list[Tenant], float]], act: Callable[[list[Tenant]], object],
                  progress: Callable[[], float], finished: Callable[[], bool]) -> bool:
        """Act on the batches amid the phase's disruptions; then wait, within the phase's budget and at least
        SETTLE_SECONDS after the last disruption, until `finished`. False when it never was."""
        deadline = time.monotonic() + PHASE_SECONDS + 3 * size.tenants + 30 * len(schedule[phase])
        chaos = Chaos(phase, schedule[phase], progress, strike, deadline)
        chaos.start()
        try:
            for batch, pause in work:
                retrying(f"{phase}: {len(batch)} TenantStores", lambda: act(batch))
                time.sleep(pause)
            chaos.finish(timeout=max(0, deadline - time.monotonic()) + STRIKE_SECONDS * len(schedule[phase]))
        finally:
            chaos.stopping.set()
            chaos.join(timeout=STRIKE_SECONDS)  # a disruption under way ends by itself, restoring what it stopped
        try:
            wait_for(f"{phase} to finish", finished, timeout=max(deadline - time.monotonic(), SETTLE_SECONDS),
                     interval=1)
        except TimeoutError:
            return False
        say(f"{phase}: done")
        return True

    def create(batch: list[Tenant]) -> object:
        return kubectl.apply({"apiVersion": "v1", "kind": "List", "items": [tenant.manifest() for tenant in batch]})

    def delete(batch: list[Tenant]) -> object:
        return kubectl("delete", "tenantstores", *(tenant.name for tenant in batch), "-n", NAMESPACE,
                       "--wait=false", "--ignore-not-found")

    def ready_fraction() -> float:
        return sum(converged(body) for body in listed(kubectl).values()) / len(tenants)

    def all_converged() -> bool:
        tally.converged = sum(converged(body) for body in listed(kubectl).values())
        return tally.converged == len(tenants)

    def gone_fraction() -> float:
        return 1 - len(listed(kubectl)) / len(tenants)

    say(f"seed={size.seed} tenants={size.tenants} kills={size.kills} plan="
        + "; ".join(f"{phase}: " + ", ".join(f"{d.kind}@{d.at_progress:.2f}" for d in disruptions)
                    for phase, disruptions in schedule.items()))
    try:
        if not run_phase("provisioning", creations, create, ready_fraction, all_converged):
            stores = listed(kubectl)
            waiting = [tenant.name for tenant in tenants if not converged(stores.get(tenant.name) or {"metadata": {}})]
            pytest.fail(f"{len(waiting)} of {len(tenants)} tenants did not converge, {context}:\n"
                        + "\n".join(f"  {name}: {describe(stores.get(name))}" for name in waiting)
                        + f"\n{log_excerpt(env, chaos_operator, waiting)}")

        # Converged means usable: every tenant logs in with its Secret, and what the teardown must remove exists.
        for tenant in tenants:
            secret = tenant_secret(kubectl, NAMESPACE, tenant.secret)
            with psycopg.connect(secret["uri"], autocommit=True, connect_timeout=10) as conn:
                assert conn.execute("SELECT current_user").fetchone()[0] == tenant.role, context
        expected = {"free": {"role", "schema", "partition", "policy", "claim"},
                    "pro": {"role", "schema", "partition", "policy", "claim"},
                    "enterprise": {"role", "database", "claim"}}
        for name, things in remnants(env, kubectl, tenants).items():
            tier = next(tenant.tier for tenant in tenants if tenant.name == name)
            kinds = {what for what, _ in things}
            assert expected[tier] <= kinds, f"{name} ({tier}) lacks {expected[tier] - kinds}, {context}"

        if not run_phase("deleting", deletions, delete, gone_fraction, lambda: not listed(kubectl)):
            stores = listed(kubectl)
            pytest.fail(f"{len(stores)} TenantStores were not deleted, {context}:\n"
                        + "\n".join(f"  {name}: {describe(body)}" for name, body in stores.items())
                        + f"\n{log_excerpt(env, chaos_operator, list(stores))}")

        left = {name: things for name, things in remnants(env, kubectl, tenants).items() if things}
        tally.residue = sum(len(things) for things in left.values())
        assert not left, (f"residue of {len(left)} deleted tenants, {context}:\n"
                          + "\n".join(f"  {name}: " + ", ".join(f"{what} {which}" for what, which in things)
                                      for name, things in left.items())
                          + f"\n{log_excerpt(env, chaos_operator, list(left))}")
    finally:
        env.postgres.start()  # no-op when it runs
        print(f"chaos: seed={size.seed} tenants={size.tenants} kills={tally.kills} "
              f"postgres_outages={tally.postgres_outages} apiserver_restarts={tally.apiserver_restarts} "
              f"converged={tally.converged} residue={'-' if tally.residue is None else tally.residue} "
              f"in {time.monotonic() - started:.0f} s", flush=True)
        env.control_plane.check_alive()  # later tests share the control plane
