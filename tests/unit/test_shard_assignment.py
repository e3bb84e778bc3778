"""Which replica owns which tenant, and the StoreClass figures folded from every shard's part."""
from __future__ import annotations

import asyncio
import collections
import datetime
import time
import types
from typing import Any

import pytest

from tenantstore import cost, handlers, shard_reports, sharding
from tenantstore.api import TENANT_ID_LABEL
from tenantstore.sharding import ShardView, assign, shard_of

TENANT_IDS = [f"tenant-{n:04d}" for n in range(3000)]


def tenant(tenant_id: str, namespace: str = "ns", reason: str = "Provisioned") -> dict[str, Any]:
    return {"metadata": {"name": tenant_id, "namespace": namespace, "uid": f"uid-{tenant_id}"},
            "spec": {"tenantId": tenant_id},
            "status": {"conditions": [{"type": "Ready", "status": "False" if reason != "Provisioned" else "True",
                                       "reason": reason}]}}


def test_a_tenant_keeps_its_shard_across_processes_and_tenants_spread_evenly() -> None:
    # Fixed values: a salted hash (Python's hash()) would move tenants between replicas on every restart, and
    # a changed function would move them on an upgrade.
    assert [shard_of(tenant_id, 8) for tenant_id in ("acme", "techco", "startup")] == [0, 7, 5]
    counts = collections.Counter(shard_of(tenant_id, 8) for tenant_id in TENANT_IDS)
    assert set(counts) == set(range(8))
    assert max(counts.values()) < 1.25 * len(TENANT_IDS) / 8


def test_every_replica_computes_the_same_balanced_assignment_and_few_shards_move() -> None:
    members = ["replica-a", "replica-b", "replica-c"]
    before = assign(32, members)
    assert before == assign(32, reversed(members))  # order of discovery does not matter
    assert sorted(collections.Counter(before.values()).values()) == [10, 11, 11]
    after = assign(32, [*members, "replica-d"])
    assert sorted(collections.Counter(after.values()).values()) == [8, 8, 8, 8]  # the new one takes its share
    moved = sum(1 for shard in before if before[shard] != after[shard])
    assert 8 <= moved <= 12  # its share, and a few more: not a reshuffle
    left = assign(32, ["replica-a", "replica-c"])
    assert sorted(collections.Counter(left.values()).values()) == [16, 16]
    assert sum(1 for shard in before if before[shard] != left[shard]) <= 12  # replica-b's 10, and a few more
    # Few shards per replica: still none without (plain rendezvous hashing can leave a replica idle).
    for count in range(2, 7):
        assert len(set(assign(6, [f"replica-{n}" for n in range(count)]).values())) == min(count, 6)
    assert assign(4, []) == {}


def test_a_view_owns_its_tenants_their_secrets_and_every_store_class() -> None:
    view = ShardView(shards=4, owned=frozenset({1, 2}), identity="replica-a")
    mine = next(tenant_id for tenant_id in TENANT_IDS if shard_of(tenant_id, 4) == 1)
    theirs = next(tenant_id for tenant_id in TENANT_IDS if shard_of(tenant_id, 4) == 3)
    assert view.owns("tenantstores", tenant(mine)) and not view.owns("tenantstores", tenant(theirs))
    secret = {"metadata": {"labels": {TENANT_ID_LABEL: theirs}}}
    assert not view.owns("secrets", secret)
    assert view.owns("secrets", {"metadata": {"labels": {TENANT_ID_LABEL: mine}}})
    assert view.owns("storeclasses", {"metadata": {"name": "standard"}})
    assert not view.coordinator and ShardView(shards=4, owned=frozenset({0})).coordinator
    assert sharding.WHOLE.owns("tenantstores", tenant(theirs)) and not sharding.WHOLE.sharded


def test_kopf_never_sees_an_object_of_a_shard_the_run_does_not_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    from kopf._core.reactor import processing

    seen = []

    async def kopf_processor(**kwargs: Any) -> None:
        seen.append(kwargs["raw_event"]["object"]["spec"]["tenantId"])

    class Resource:
        plural = "tenantstores"

    class Toggles:
        dropped = 0

        async def drop_toggle(self, toggle: object) -> None:
            self.dropped += 1

    monkeypatch.setattr(processing, "process_resource_event", kopf_processor)
    monkeypatch.setattr(sharding, "_view", ShardView(shards=2, owned=frozenset({0}), identity="a"))
    assert sharding.install_event_filter()
    assert sharding.install_event_filter()  # once is enough; a second call does not wrap twice
    toggles = Toggles()
    ids = TENANT_IDS[:40]

    async def feed() -> None:
        for tenant_id in ids:
            await processing.process_resource_event(resource=Resource(), raw_event={"object": tenant(tenant_id)},
                                                    resource_indexed=object(), operator_indexed=toggles)
    asyncio.run(feed())
    assert seen == [tenant_id for tenant_id in ids if shard_of(tenant_id, 2) == 0]
    # What is skipped still counts as indexed, or the run would wait for it forever.
    assert toggles.dropped == len(ids) - len(seen)


NOW = datetime.datetime(2026, 12, 16, tzinfo=datetime.timezone.utc)
PRICING = cost.Pricing(shared_index=100, shared_infrastructure=500, dedicated_index=200, dedicated_database=100)


def holdings() -> list[cost.Holding]:
    return [cost.Holding(tenant_id=tenant_id, storage_bytes=(n % 7) * 10**9, shared_index=f"idx-{n % 3}",
                         dedicated_index=False, dedicated_database=n % 10 == 0)
            for n, tenant_id in enumerate(TENANT_IDS[:60])]


def test_shared_costs_split_by_shards_add_up_to_the_split_of_one_replica() -> None:
    held = holdings()
    whole = cost.allocate(PRICING, held)
    shards = 3
    for shard in range(shards):
        mine = [h for h in held if shard_of(h.tenant_id, shards) == shard]
        others = [cost.weights([h for h in held if shard_of(h.tenant_id, shards) == other])
                  for other in range(shards) if other != shard]
        split = cost.allocate(PRICING, mine, cost.elsewhere_of(others))
        for tenant_id, shares in split.items():
            assert shares == pytest.approx(whole[tenant_id])


def test_the_class_figures_folded_from_shard_parts_are_those_of_one_replica() -> None:
    held = holdings()
    shares = cost.allocate(PRICING, held)
    figures = {h.tenant_id: {"month": "2026-12", "fixedMonthly": sum(shares[h.tenant_id].values()),
                             "monthToDate": 3.5, "projected": 7.0, "meter": {"measuredAt": "2026-12-16T00:00:00Z"}}
               for h in held}
    bodies = {tenant_id: tenant(tenant_id, reason="VectorQuotaExceeded" if n % 25 == 0 else "Provisioned")
              for n, tenant_id in enumerate(TENANT_IDS[:60])}
    one = cost.summarize(PRICING, [cost.allocation([(h, figures[h.tenant_id]) for h in held], NOW)], 3, NOW)
    status: dict[str, Any] = {"shards": {"7": {"tenants": 1}}}  # left over from when there were more shards
    replicas = [ShardView(shards=4, owned=frozenset({0, 2}), identity="a"),
                ShardView(shards=4, owned=frozenset({1, 3}), identity="b")]
    for view in replicas:
        priced = [(bodies[h.tenant_id], h, figures[h.tenant_id]) for h in held
                  if view.shard_of_tenant(bodies[h.tenant_id]) in view.owned]
        waiting = [body for body in bodies.values() if view.shard_of_tenant(body) in view.owned]
        parts = shard_reports.usage_parts(view, waiting, priced, NOW)
        changes = shard_reports.status_changes(view, status, parts)["shards"]
        assert ("7" in changes) is view.coordinator  # only the coordinator clears what no shard holds now
        status["shards"] = {key: value for key, value in {**status["shards"], **changes}.items() if value is not None}
        assert not shard_reports.status_changes(view, status, parts)  # unchanged: nothing to write
    folded = shard_reports.current(replicas[0], status, {})
    assert sorted(folded) == [0, 1, 2, 3] and sum(part["tenants"] for part in folded.values()) == 60
    assert cost.summarize(PRICING, shard_reports.cost_parts(folded), 3, NOW) == one
    blocked, examples = shard_reports.quota_blocked(folded)
    assert blocked == 3 and examples == ["ns/tenant-0000", "ns/tenant-0025", "ns/tenant-0050"]


def test_isolation_found_broken_in_any_shard_is_the_class_s() -> None:
    view_a = ShardView(shards=2, owned=frozenset({0}), identity="a")
    view_b = ShardView(shards=2, owned=frozenset({1}), identity="b")
    broken = next(tenant_id for tenant_id in TENANT_IDS if shard_of(tenant_id, 2) == 1)
    status: dict[str, Any] = {}
    status["shards"] = shard_reports.status_changes(view_b, status, shard_reports.isolation_parts(
        view_b, [(tenant(broken), f"{broken} read another tenant's row")]))["shards"]
    _, found = shard_reports.class_isolation(view_a, status, [])  # the coordinator, with nothing broken itself
    assert found == [f"{broken} read another tenant's row"]


@pytest.mark.parametrize("args", [["--leader-elect", "--shards", "3"], ["--shards", "-1"]])
def test_run_refuses_sharding_with_leader_election_or_a_negative_count(args: list[str],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tenantstore import cli

    assert cli.main(["run", "--liveness", "", "--metrics-port", "0", *args]) == 2
    assert "--leader-elect and --shards exclude each other" in capsys.readouterr().err


class RoundLease:
    """A held Lease whose renewal answers only once every Lease of the round has sent its own request."""

    holding = True

    def __init__(self, sent: list[int], leases: int, answered: bool = True):
        self.sent, self.leases, self.answered = sent, leases, answered

    async def try_acquire_or_renew(self) -> bool:
        self.sent.append(1)
        while len(self.sent) < self.leases:
            await asyncio.sleep(0)
        return self.answered


SHARDS_3 = sharding.ShardingConfig(shards=3, election=sharding.ElectionConfig(
    namespace="ns", name="shards", identity="replica-a", lease_duration=6, renew_deadline=4, retry_period=0.5))


def replica_with(member: Any, locks: dict[int, Any]) -> sharding.Replica:
    """A Replica over the given Lease stand-ins (no API client)."""
    replica = sharding.Replica.__new__(sharding.Replica)
    replica.config, replica.lost, replica._renewed, replica._lease_calls = SHARDS_3, asyncio.Event(), {}, asyncio.Lock()
    replica._round_ended = asyncio.Event()
    replica.member, replica.locks = member, locks
    return replica


def test_a_replica_renews_its_leases_together_so_a_slow_request_delays_no_other_lease() -> None:
    config = SHARDS_3
    sent: list[int] = []
    replica = replica_with(RoundLease(sent, 4), {0: RoundLease(sent, 4), 1: RoundLease(sent, 4),
                                                 2: RoundLease(sent, 4, answered=False)})
    replica._renewed[2] = -config.election.renew_deadline  # its last renewal is past the deadline

    async def round_() -> None:
        await asyncio.wait_for(replica.renew(), timeout=10)  # one Lease after another never ends here

    asyncio.run(round_())
    assert sorted(replica._renewed) == [0, 1, 2] and replica._renewed[2] < 0  # 0 and 1 renewed now, 2 not
    assert replica.lost.is_set()


class AnsweringLease:
    """A held Lease whose renewals succeed while `answers` says so."""

    holding = True

    def __init__(self, answers: bool = True):
        self.answers = answers

    async def try_acquire_or_renew(self) -> bool:
        return self.answers


def test_no_work_begins_on_a_shard_whose_lease_is_overdue_or_lost() -> None:
    deadline = SHARDS_3.election.renew_deadline
    overdue = AnsweringLease()
    replica = replica_with(AnsweringLease(), {0: AnsweringLease(), 1: overdue, 2: AnsweringLease()})
    replica._renewed.update({0: time.monotonic(), 1: time.monotonic() - deadline, 2: time.monotonic()})

    async def scenario() -> None:
        await asyncio.wait_for(replica.until_current(0), timeout=5)  # renewed just now: at once
        waiting = asyncio.create_task(replica.until_current(1))
        await asyncio.sleep(0)
        assert not waiting.done()  # its last renewal is as old as the deadline
        await replica.renew()  # the next round renews it
        await asyncio.wait_for(waiting, timeout=5)

        overdue.answers = False
        replica._renewed[1] = time.monotonic() - deadline
        await replica.renew()  # the round declares it lost: no shard of this replica may begin work
        assert replica.lost.is_set()
        gated = [asyncio.create_task(replica.until_current(shard)) for shard in (0, 1, 2)]
        await replica.renew()
        await asyncio.sleep(0)
        assert not any(task.done() for task in gated)
        for task in gated:
            task.cancel()

    asyncio.run(scenario())


def test_a_reconcile_on_a_shard_logs_its_beginning_only_once_the_lease_is_current(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        current = asyncio.Event()

        async def until_current(shard: int) -> None:
            await current.wait()

        memo = types.SimpleNamespace(shards=ShardView(shards=3, owned=frozenset({0, 1, 2}), identity="replica-a",
                                                      until_current=until_current))
        began = asyncio.Event()

        async def work() -> None:
            async with handlers.shard_logged(memo, tenant("tenant-0001"), "reconcile"):
                began.set()

        task = asyncio.create_task(work())
        await asyncio.sleep(0)
        assert not began.is_set() and "began" not in caplog.text
        current.set()
        await asyncio.wait_for(task, timeout=5)
        assert began.is_set() and "reconcile of ns/tenant-0001 began on replica-a" in caplog.text

    with caplog.at_level("INFO", logger="tenantstore.handlers"):
        asyncio.run(scenario())
