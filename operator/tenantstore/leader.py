"""Leader election on a coordination.k8s.io/v1 Lease: which of the active/standby replicas runs Kopf.

Why here: Kopf has peering (`KopfPeering`), which pauses operators of lower priority and pauses *all* of
equal priority, so it is not leader election; and the `kubernetes` clients' election helpers are
synchronous, written for the ConfigMap/Endpoints locks, and do not stop the leader before its lease can
lapse. This module is the election alone; `standby.py` runs the operator behind it.

The rules are client-go's leader election:
- a candidate takes the Lease when nobody holds it, or when the holder's record has not changed for
  leaseDurationSeconds as measured on the candidate's own monotonic clock (no clock comparison across nodes);
- the holder renews every retry period; if it cannot renew within the renew deadline (shorter than the lease
  duration) it stops leading, before any other candidate may take over;
- every write carries the Lease's resourceVersion, so two candidates never both win the same round;
- a graceful shutdown releases the Lease, so the standby takes over at once instead of after the lease expires.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException


logger = logging.getLogger("tenantstore.leader")

DEFAULT_LEASE_NAME = "tenantstore-operator"
FALLBACK_NAMESPACE = "tenantstore-system"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# The operator to run while leading; it must return soon after the event is set.
RunOperator = Callable[[asyncio.Event], Awaitable[Any]]


def default_identity() -> str:
    # The random suffix keeps a restarted container from mistaking its predecessor's record for its own.
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """The pod's namespace (downward API or service account), else tenantstore-system."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or FALLBACK_NAMESPACE
    return FALLBACK_NAMESPACE


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str = field(default_factory=default_namespace)
    name: str = DEFAULT_LEASE_NAME
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError("leader election needs lease duration > renew deadline > retry period > 0 "
                             f"(got {self.lease_duration}, {self.renew_deadline}, {self.retry_period})")


def micro_time(moment: datetime.datetime | None = None) -> str:
    """metav1.MicroTime as the API server writes it."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    """One candidate's view of the Lease: try to take or renew it, release it."""

    def __init__(self, api: client.ApiClient, config: ElectionConfig):
        self.leases = client.CoordinationV1Api(api)
        self.config = config
        self._observed_version: str | None = None
        self._observed_at = 0.0  # monotonic time at which the record last changed, as seen here
        self._acquire_time: str | None = None
        self._transitions = 0  # leaseTransitions as last written here
        self._timeout = config.renew_deadline / 2  # one slow request must not eat the whole deadline

    @property
    def holding(self) -> bool:
        return self._acquire_time is not None

    def observe(self, version: str | None) -> None:
        """The Lease's resourceVersion as read elsewhere (a listing): a record that stopped changing is then timed
        from when it was first seen, not from this candidate's first attempt."""
        if version is not None and version != self._observed_version:
            self._observed_version, self._observed_at = version, time.monotonic()

    async def try_acquire_or_renew(self) -> bool:
        try:
            return await self._try_acquire_or_renew()
        except (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            # A failed round is not fatal: the renew deadline decides when the leader gives up.
            logger.warning("lease %s/%s: %s", self.config.namespace, self.config.name,
                           getattr(error, "reason", None) or error)
            return False

    async def _try_acquire_or_renew(self) -> bool:
        if self.holding and await self._renew_as_last_written():
            return True
        config = self.config
        try:
            lease = await self.leases.read_namespaced_lease(config.name, config.namespace,
                                                            _request_timeout=self._timeout)
        except ApiException as error:
            if error.status != 404:
                raise
            return await self._create()
        spec = lease.spec or client.V1LeaseSpec()
        version = lease.metadata.resource_version
        now = time.monotonic()
        if version != self._observed_version:
            self._observed_version, self._observed_at = version, now
        holder = spec.holder_identity or ""
        if holder != config.identity:
            self._acquire_time = None
            duration = spec.lease_duration_seconds or math.ceil(config.lease_duration)
            if holder and now < self._observed_at + duration:
                return False  # a live leader holds it
        renew_time = micro_time()
        taking_over = self._acquire_time is None
        body = self._body(resource_version=version, renew_time=renew_time,
                          acquire_time=renew_time if taking_over else self._acquire_time,
                          transitions=(spec.lease_transitions or 0) + (1 if taking_over else 0))
        try:
            updated = await self.leases.replace_namespaced_lease(config.name, config.namespace, body,
                                                                 _request_timeout=self._timeout)
        except ApiException as error:
            if error.status == 409:
                return False  # another candidate wrote first this round
            raise
        self._remember(updated, acquire_time=body["spec"]["acquireTime"])
        if taking_over:
            logger.info("%s took the lease %s/%s (previous holder: %s)", config.identity, config.namespace,
                        config.name, holder or "none")
        return True

    async def _renew_as_last_written(self) -> bool:
        """A holder's renewal without reading the Lease first: written over the version it wrote last, so any
        change by someone else since makes it fail (409) and the full round decides. Half the requests of a
        renewal, which a replica holding many shard Leases makes for each of them every retry period."""
        assert self._acquire_time is not None
        body = self._body(resource_version=self._observed_version, renew_time=micro_time(),
                          acquire_time=self._acquire_time, transitions=self._transitions)
        try:
            updated = await self.leases.replace_namespaced_lease(self.config.name, self.config.namespace, body,
                                                                 _request_timeout=self._timeout)
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        self._remember(updated, acquire_time=self._acquire_time)
        return True

    async def _create(self) -> bool:
        now = micro_time()
        body = self._body(resource_version=None, renew_time=now, acquire_time=now, transitions=0)
        try:
            created = await self.leases.create_namespaced_lease(self.config.namespace, body,
                                                                _request_timeout=self._timeout)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        self._remember(created, acquire_time=now)
        logger.info("%s created the lease %s/%s", self.config.identity, self.config.namespace, self.config.name)
        return True

    async def release(self) -> None:
        """Hand the Lease back (graceful shutdown), so the standby need not wait for it to expire."""
        if not self.holding:
            return
        self._acquire_time = None
        try:
            lease = await self.leases.read_namespaced_lease(self.config.name, self.config.namespace,
                                                            _request_timeout=self._timeout)
            if (lease.spec.holder_identity or "") != self.config.identity:
                return
            now = micro_time()
            body = self._body(resource_version=lease.metadata.resource_version, renew_time=now,
                              acquire_time=now, transitions=lease.spec.lease_transitions or 0, holder=None)
            body["spec"]["leaseDurationSeconds"] = 1
            await self.leases.replace_namespaced_lease(self.config.name, self.config.namespace, body,
                                                       _request_timeout=self._timeout)
            logger.info("%s released the lease %s/%s", self.config.identity, self.config.namespace,
                        self.config.name)
        except (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            logger.warning("could not release the lease (the standby takes over when it expires): %s", error)

    def _body(self, *, resource_version: str | None, renew_time: str, acquire_time: str | None,
              transitions: int, holder: str | None = "") -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"holderIdentity": self.config.identity if holder == "" else holder,
                         "leaseDurationSeconds": math.ceil(self.config.lease_duration),
                         "acquireTime": acquire_time, "renewTime": renew_time, "leaseTransitions": transitions}}

    def _remember(self, lease: client.V1Lease, acquire_time: str) -> None:
        self._observed_version, self._observed_at = lease.metadata.resource_version, time.monotonic()
        self._acquire_time = acquire_time
        self._transitions = (lease.spec.lease_transitions if lease.spec else None) or 0


async def acquire(lock: LeaseLock, stop: asyncio.Event) -> bool:
    """Standby until this candidate holds the Lease (True) or the process is asked to stop (False)."""
    logger.info("%s is standing by for the lease %s/%s", lock.config.identity, lock.config.namespace,
                lock.config.name)
    while not stop.is_set():
        if await lock.try_acquire_or_renew():
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), lock.config.retry_period)
    return False


async def keep_renewing(lock: LeaseLock) -> None:
    """Returns only when leadership is lost: no successful renewal within the renew deadline."""
    config = lock.config
    last_renewed = time.monotonic()
    while True:
        await asyncio.sleep(config.retry_period)
        if await lock.try_acquire_or_renew():
            last_renewed = time.monotonic()
        elif not lock.holding or time.monotonic() - last_renewed >= config.renew_deadline:
            logger.error("%s lost the lease %s/%s", config.identity, config.namespace, config.name)
            return


async def lead(lock: LeaseLock, run_operator: RunOperator, stop: asyncio.Event) -> int:
    """Run the operator while holding the Lease; 0 after a requested stop, 1 when leadership was lost."""
    operator_stop = asyncio.Event()
    operator = asyncio.create_task(run_operator(operator_stop), name="operator")
    renewing = asyncio.create_task(keep_renewing(lock), name="lease-renewal")
    stopping = asyncio.create_task(stop.wait(), name="stop-requested")
    try:
        await asyncio.wait({operator, renewing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        renewing.cancel()
        stopping.cancel()
    lost = renewing.done() and not renewing.cancelled() and not operator.done()
    if not operator.done():
        operator_stop.set()
        # After a loss, stop before another replica can take over: lease duration minus renew deadline.
        grace = lock.config.lease_duration - lock.config.renew_deadline if lost else None
        done, _ = await asyncio.wait({operator}, timeout=grace)
        if not done:
            operator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await operator
    if lost:
        return 1  # the pod restarts and stands by again
    await lock.release()
    operator.result()  # an operator crash surfaces as the process's error
    return 0
