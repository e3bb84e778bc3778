"""Replicas with --shards split the TenantStores: one dies mid-provisioning, another joins, nothing is done twice.

Three replicas share six shards, 300 TenantStores are created at once, and one replica is killed (SIGKILL) while
they are being provisioned: its shards must be taken over within the lease duration and every tenant become
Ready. A fourth replica then joins and takes its share. From the replicas' own logs (each reconcile's start and
end, with the shard and the replica) no tenant is ever worked on by two replicas at once, nor by a replica
that did not hold its shard; from Postgres, every tenant has exactly its objects, and after the deletion none.
"""
from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e_kit import ISOLATED_PREFIX, superuser, tenant_store

from tenantstore.sharding import shard_of
from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for

NAMESPACE = f"{ISOLATED_PREFIX}shards"
LEASES = "tenantstore-e2e-shards"
SHARDS = 6
TENANTS = 300
LEASE_DURATION = 6.0
ROLE_PREFIX = "tenant_iso_sh_"

# "[2026-12-01 10:30:00,123] tenantstore.handle [INFO    ] shard 3: reconcile of ns/t-0001 began on replica_x"
WORK = re.compile(r"^\[(?P<at>[\d-]+ [\d:,]+)\] .*shard (?P<shard>\d+): (?P<work>reconcile|teardown) of "
                  rf"{NAMESPACE}/(?P<tenant>\S+) (?P<edge>began|ended) on (?P<replica>\S+)(?: \[tenant=.*\])?$")
RUNS = re.compile(r"^\[(?P<at>[\d-]+ [\d:,]+)\] .* (?P<replica>\S+) runs shards \[(?P<shards>[\d, ]*)\] of \d+$")


def replica_args(shards: int) -> list[str]:
    # Short timings keep the test quick; the ordering (duration > deadline > retry) is what production uses too.
    return ["--shards", str(shards), "--leader-elect-namespace", NAMESPACE, "--leader-elect-lease", LEASES,
            "--lease-duration", str(LEASE_DURATION), "--renew-deadline", "4", "--retry-period", "0.5",
            "--namespace", NAMESPACE, "--verify-interval", "5", "--usage-interval", "5"]


def tenant_id(name: str) -> str:
    return f"iso-sh-{name.removeprefix('t-')}"


@dataclass
class Span:
    tenant: str
    shard: int
    replica: str
    began: float
    ended: float | None


def parse_time(raw: str) -> float:
    return datetime.datetime.strptime(raw, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def work_spans(log: str) -> list[Span]:
    spans, open_spans = [], {}
    for line in log.splitlines():
        found = WORK.match(line)
        if not found:
            continue
        key = (found["tenant"], found["replica"], found["work"])
        if found["edge"] == "began":
            open_spans[key] = Span(found["tenant"], int(found["shard"]), found["replica"], parse_time(found["at"]),
                                   None)
        elif key in open_spans:
            span = open_spans.pop(key)
            span.ended = parse_time(found["at"])
            spans.append(span)
    return spans + list(open_spans.values())  # still running, or cut short by a kill


def runs(log: str) -> list[tuple[float, str, frozenset[int]]]:
    return [(parse_time(m["at"]), m["replica"], frozenset(int(s) for s in m["shards"].split(",") if s.strip()))
            for m in map(RUNS.match, log.splitlines()) if m]


def leases(kubectl: Kubectl) -> dict[str, str]:
    """Shard Lease name -> holder ("" when released)."""
    listed = kubectl.get("leases", namespace=NAMESPACE) or {"items": []}
    return {item["metadata"]["name"]: (item.get("spec") or {}).get("holderIdentity") or ""
            for item in listed["items"] if item["metadata"]["name"].startswith(f"{LEASES}-shard-")}


def members(kubectl: Kubectl) -> list[str]:
    listed = kubectl.get("leases", namespace=NAMESPACE) or {"items": []}
    return [item["metadata"]["name"] for item in listed["items"]
            if item["metadata"]["name"].startswith(f"{LEASES}-member-")]


def tenant_stores(kubectl: Kubectl) -> dict[str, dict]:
    listed = kubectl.get("tenantstores", namespace=NAMESPACE) or {"items": []}
    return {item["metadata"]["name"]: item for item in listed["items"]}


def ready(body: dict) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def postgres_objects(env: LocalEnvironment) -> dict[str, set[str]]:
    like = ROLE_PREFIX.replace("_", r"\_") + "%"
    queries = {
        "role": "SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
        "schema": "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
        "partition": "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = 'tenantstore_vectors' AND c.relkind IN ('r', 'p') AND c.relname LIKE %s",
        "policy": "SELECT policyname FROM pg_policies WHERE policyname LIKE %s",
        "claim": "SELECT role FROM tenantstore.claims WHERE role LIKE %s",
    }
    with superuser(env) as conn:
        return {what: {name for (name,) in conn.execute(query, (like,)).fetchall()} for what, query in queries.items()}


@pytest.fixture
def replicas(env: LocalEnvironment, kubectl: Kubectl, default_class: str) -> Iterator[dict[str, OperatorProcess]]:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    started: dict[str, OperatorProcess] = {}
    try:
        yield started
    finally:
        for process in started.values():
            process.stop()


def start(env: LocalEnvironment, started: dict[str, OperatorProcess], name: str,
          shards: int = SHARDS) -> OperatorProcess:
    process = env.operator(f"shards-{name}.log", replica_args(shards))
    process.start()  # returns once the liveness endpoint answers (the replica itself, before it holds a shard)
    started[name] = process
    return process


def identity_of(process: OperatorProcess) -> str:
    health = process.health() or {}
    if health.get("identity"):
        return health["identity"]
    return next(replica for _, replica, _ in runs(process.log_since_start()))


def test_replicas_split_the_tenants_survive_a_death_and_rebalance(env: LocalEnvironment, kubectl: Kubectl,
                                                                   replicas: dict[str, OperatorProcess]) -> None:
    for name in "abc":
        start(env, replicas, name)
    identities = {name: identity_of(process) for name, process in replicas.items()}
    held = wait_for("every shard held, by all three replicas",
                    lambda: (found := leases(kubectl)) and len(found) == SHARDS
                    and set(found.values()) == set(identities.values()) and found, timeout=60)

    names = [f"t-{n:04d}" for n in range(TENANTS)]
    # A dimension no other test uses: these 300 fill shared indexes of their own in the default class.
    manifest = {"apiVersion": "v1", "kind": "List",
                "items": [tenant_store(name, NAMESPACE, tenant_id(name), dimension=11) for name in names]}
    created_at = time.time()
    kubectl("create", "-f", "-", stdin=json.dumps(manifest))

    # Kill a replica mid-provisioning: one whose shards still have tenants to provision.
    wait_for("30 TenantStores Ready", lambda: sum(map(ready, tenant_stores(kubectl).values())) >= 30, timeout=120)
    pending = [name for name, body in tenant_stores(kubectl).items() if not ready(body)]
    shard_holders = {int(lease.rsplit("-", 1)[1]): holder for lease, holder in held.items()}
    busiest = max(identities, key=lambda replica: sum(
        1 for name in pending if shard_holders[shard_of(tenant_id(name), SHARDS)] == identities[replica]))
    victim = replicas[busiest]
    victim.kill()
    killed_at = time.time()
    survivors = {identities[name] for name in identities if name != busiest}
    wait_for("the dead replica's shards taken over",
             lambda: set(leases(kubectl).values()) == survivors, timeout=LEASE_DURATION * 3 + 10)
    taken_over = time.time() - killed_at
    # The survivors must wait for the leases to lapse (the last renewal came up to a retry period before the
    # kill), never less; then they take them at once, unless a Kopf run of theirs is stopping (a second or two,
    # more on a machine busy with the whole suite: 12.5 s once), plus the test's polling of the Leases.
    assert LEASE_DURATION - 1 <= taken_over <= 3 * LEASE_DURATION, taken_over
    wait_for(f"all {TENANTS} TenantStores Ready",
             lambda: sum(map(ready, tenant_stores(kubectl).values())) == TENANTS, timeout=300)
    all_ready = time.time() - created_at

    # A fourth replica joins and gets its share; a change to every tenant is worked on by its shard's new holder.
    joined = start(env, replicas, "d")
    identities["d"] = identity_of(joined)
    wait_for("the new replica holding shards", lambda: identities["d"] in leases(kubectl).values(), timeout=60)
    live = [name for name in identities if name != busiest]

    def rebalanced() -> dict[int, str] | None:
        """Shard -> holder once every live replica holds its share and runs Kopf for exactly it (a shard still
        on its way from one replica to another would be worked on by both, one after the other)."""
        holders = {int(lease.rsplit("-", 1)[1]): holder for lease, holder in leases(kubectl).items()}
        for name in live:
            held = {shard for shard, holder in holders.items() if holder == identities[name]}
            started = runs(replicas[name].log_since_start())
            if len(held) != SHARDS // len(live) or not started or started[-1][2] != held:
                return None
        return holders if len(holders) == SHARDS else None
    holders = wait_for("every live replica holding its share of the shards and running it", rebalanced, timeout=60)
    touched_at = time.time()
    kubectl("annotate", "tenantstores", "--all", "-n", NAMESPACE, "tenancy.dev/touched=1")
    assert leases(kubectl) == {f"{LEASES}-shard-{shard}": holder for shard, holder in holders.items()}, \
        "a shard moved while the change was being made"

    def spans() -> list[Span]:
        return [span for name in identities for span in work_spans(replicas[name].log_since_start())]

    def touched() -> list[Span] | None:
        found = spans()
        redone = {span.tenant for span in found if span.began >= touched_at - 1 and span.ended is not None}
        return found if redone >= set(names) else None

    found = wait_for("every tenant reconciled after the change", touched, timeout=180)
    after = [span for span in found if span.began >= touched_at - 1]
    wrong = [span for span in after if span.replica != holders[shard_of(tenant_id(span.tenant), SHARDS)]]
    assert not wrong, f"reconciled by a replica not holding the shard now: {wrong[:5]}"
    assert {span.replica for span in after} == {identities[n] for n in live} and identities["d"] in holders.values()

    # Never two replicas at once on one tenant; a killed replica's unfinished work ends when it died.
    by_tenant: dict[str, list[Span]] = {}
    for span in found:
        assert span.shard == shard_of(tenant_id(span.tenant), SHARDS), span
        by_tenant.setdefault(span.tenant, []).append(span)
    for tenant, tenant_spans in by_tenant.items():
        ordered = sorted(tenant_spans, key=lambda span: span.began)
        for first, second in zip(ordered, ordered[1:]):
            end = first.ended if first.ended is not None else (killed_at if first.replica == identities[busiest]
                                                               else float("inf"))
            if first.replica != second.replica:
                assert second.began >= end - 0.01, f"{tenant}: {first} overlaps {second}"
    moved = [t for t, s in by_tenant.items() if identities[busiest] in {x.replica for x in s} and len(
        {x.replica for x in s}) > 1]
    assert moved, "no tenant of the dead replica was taken over by another"

    objects = postgres_objects(env)
    expected = {"tenant_" + tenant_id(name).replace("-", "_") for name in names}
    assert objects["role"] == expected and objects["schema"] == expected and objects["claim"] == expected
    assert objects["partition"] == expected and objects["policy"] == expected

    kubectl("delete", "tenantstores", "--all", "-n", NAMESPACE, "--wait=false")
    wait_for("every TenantStore deleted", lambda: not tenant_stores(kubectl), timeout=240)
    assert postgres_objects(env) == {what: set() for what in objects}
    secrets = (kubectl.get("secrets", namespace=NAMESPACE) or {"items": []})["items"]
    assert not [s for s in secrets if (s["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by")]

    # A graceful stop hands every shard back and leaves the membership at once; the killed replica's member
    # Lease was removed by the others once it had not been renewed for three lease durations.
    for name in live:
        replicas[name].stop()
        assert replicas[name].process is not None and replicas[name].process.returncode == 0, \
            replicas[name].log_tail()
    assert set(leases(kubectl).values()) == {""} and not members(kubectl)
    print(f"all {TENANTS} Ready {all_ready:.1f} s after the create; shards taken over {taken_over:.1f} s after the "
          f"kill (lease duration {LEASE_DURATION} s)")


def test_a_replica_with_another_shard_count_takes_nothing(env: LocalEnvironment, kubectl: Kubectl,
                                                          replicas: dict[str, OperatorProcess]) -> None:
    """A shard of one count is not a shard of another: during a rollout that changes --shards, the new replicas
    wait for the old ones to go instead of working on tenants an old replica also owns."""
    old = start(env, replicas, "old")
    old_identity = identity_of(old)
    wait_for("every shard held by the running replica",
             lambda: (found := leases(kubectl)) and set(found.values()) == {old_identity}
             and len(found) == SHARDS, timeout=60)
    new = start(env, replicas, "new", shards=4)
    new_identity = identity_of(new)
    wait_for("the new replica to say it waits", lambda: "waits: live replicas use other shard counts"
             in new.log_since_start(), timeout=30)
    assert new_identity not in leases(kubectl).values() and not runs(new.log_since_start())

    old.stop()  # the old count is gone: the new replica takes every shard of its own count
    wait_for("the new replica holding its 4 shards", lambda: sorted(
        holder for name, holder in leases(kubectl).items() if int(name.rsplit("-", 1)[1]) < 4) == [new_identity] * 4,
        timeout=60)
    new.stop()
    assert new.process is not None and new.process.returncode == 0, new.log_tail()
