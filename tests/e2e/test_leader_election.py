"""Two replicas with --leader-elect: one leads, the other stands by and takes over when the leader dies."""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from e2e_kit import ISOLATED_PREFIX, tenant_store, wait_for_condition, wait_until_gone
from kubernetes_asyncio import config as kube_config

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess, wait_for
from tenantstore.leader import ElectionConfig, LeaseLock

NAMESPACE = f"{ISOLATED_PREFIX}leader"
LEASE = "tenantstore-e2e"
# Short timings keep the test quick; the ordering (duration > deadline > retry) is what production uses too.
ELECTION = ["--leader-elect", "--leader-elect-namespace", NAMESPACE, "--leader-elect-lease", LEASE,
            "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5"]


def lease(kubectl: Kubectl, name: str = LEASE) -> dict:
    return (kubectl.get("lease", name, NAMESPACE) or {}).get("spec") or {}


@pytest.fixture(scope="module")
def replicas(env: LocalEnvironment, kubectl: Kubectl, default_class: str) -> Iterator[list[OperatorProcess]]:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    processes = [env.operator(f"leader-{n}.log", [*ELECTION, "--namespace", NAMESPACE]) for n in "ab"]
    try:
        for process in processes:
            process.start()  # returns once the liveness endpoint answers: standby or leader
        yield processes
    finally:
        for process in processes:
            process.stop()


def test_one_replica_leads_and_the_standby_takes_over(kubectl: Kubectl, replicas: list[OperatorProcess]) -> None:
    holder = wait_for("a lease holder", lambda: lease(kubectl).get("holderIdentity"), timeout=30)
    # The standby answers its liveness probe itself, and says it is not leading.
    states = {index: process.health() for index, process in enumerate(replicas)}
    standbys = [index for index, state in states.items() if state.get("leader") is False]
    assert len(standbys) == 1, states
    standby, leader = replicas[standbys[0]], replicas[1 - standbys[0]]
    assert states[standbys[0]]["identity"] != holder

    kubectl.apply(tenant_store("first", NAMESPACE, "iso-le-first"))
    wait_for_condition(kubectl, NAMESPACE, "first", "Ready", "True")
    assert f"[{NAMESPACE}/first]" in leader.log_since_start()
    assert f"[{NAMESPACE}/first]" not in standby.log_since_start()  # only the leader reconciles

    transitions = lease(kubectl).get("leaseTransitions", 0)
    leader.kill()  # SIGKILL: no release, the standby must wait for the lease to expire
    new_holder = wait_for("the standby to take the lease",
                          lambda: (h := lease(kubectl).get("holderIdentity")) not in (None, holder) and h, timeout=30)
    assert new_holder == states[standbys[0]]["identity"]
    assert lease(kubectl)["leaseTransitions"] == transitions + 1

    kubectl.apply(tenant_store("second", NAMESPACE, "iso-le-second"))
    wait_for_condition(kubectl, NAMESPACE, "second", "Ready", "True")
    assert f"[{NAMESPACE}/second]" in standby.log_since_start()
    assert standby.health() is not None and standby.health().get("leader") is not False  # Kopf's endpoint now

    for name in ("first", "second"):
        kubectl("delete", "tenantstore", name, "-n", NAMESPACE, "--wait=false")
    for name in ("first", "second"):
        wait_until_gone(kubectl, "tenantstore", name, NAMESPACE)

    # A graceful stop hands the lease back, so a successor need not wait for it to expire.
    standby.stop()
    assert standby.process is not None and standby.process.returncode == 0, standby.log_tail()
    assert not lease(kubectl).get("holderIdentity")


async def test_lease_lock_rules_on_the_real_api_server(env: LocalEnvironment, kubectl: Kubectl) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    api = await kube_config.new_client_from_config(config_file=os.fspath(env.control_plane.kubeconfig))
    try:
        timings = {"namespace": NAMESPACE, "name": "lock-rules", "lease_duration": 2.0, "renew_deadline": 1.5,
                   "retry_period": 0.2}
        first = LeaseLock(api, ElectionConfig(identity="first", **timings))
        second = LeaseLock(api, ElectionConfig(identity="second", **timings))
        assert await first.try_acquire_or_renew()  # creates the Lease
        assert not await second.try_acquire_or_renew()  # held, and just renewed
        assert await first.try_acquire_or_renew()  # renewal
        assert not await second.try_acquire_or_renew()
        spec = lease(kubectl, "lock-rules")
        assert spec["holderIdentity"] == "first" and spec["leaseDurationSeconds"] == 2

        # `first` stops renewing: `second` must wait a full lease duration from the last change it saw.
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not await second.try_acquire_or_renew():
            await asyncio.sleep(0.1)
        assert loop.time() - started >= 1.5
        assert lease(kubectl, "lock-rules")["holderIdentity"] == "second"
        assert not await first.try_acquire_or_renew() and not first.holding  # `first` sees it lost

        await second.release()  # a released lease is free at once
        assert not lease(kubectl, "lock-rules").get("holderIdentity")
        assert await first.try_acquire_or_renew()
        assert lease(kubectl, "lock-rules")["leaseTransitions"] == 2
    finally:
        await api.close()
        kubectl("delete", "lease", "lock-rules", "-n", NAMESPACE, "--ignore-not-found")
