"""The floor: the operator's work done without the operator, as directly and concurrently as one script can.

For each tenant the floor makes the same Postgres objects with the operator's own backend classes
(`PostgresRelationalStore.ensure`, `PgvectorStore.ensure`, the same isolation probe when a tenant joins a
shared index) and makes the same API writes: it creates the TenantStore, creates its credential Secret
(same data, labels and owner reference) and writes the same status (phase Ready, the conditions,
observedGeneration and the coordinates) through the status subresource. Teardown mirrors it with
`PgvectorStore.teardown` and `PostgresRelationalStore.teardown`, deletes the Secret and the TenantStore.
What it leaves out is what only a controller needs: watching, finalizers, Kopf's bookkeeping annotations,
Events, reading before writing. All N TenantStores are created at once (at most `--concurrency` requests
in flight), and at most `--concurrency` tenants are provisioned at a time.

The same process also plays the user in the operator run (`create`, `delete`: only the TenantStores),
so both runs put the same client load on the machine. `python -m bench.provisioning` drives it over
stdin/stdout, one JSON command per line:

    {"cmd": "create" | "provision" | "delete" | "teardown", "tenants": [{"name", "tenantId", "tier"}, ...]}

and it answers one JSON line per command: {"ok": true, "seconds": ..., "requests": {"<resource> <VERB>": n}}.
By hand (the operator must not be running in that namespace):

    python -m bench.floor --kubeconfig KUBECONFIG --admin-uri URI --namespace NS --n 100 provision teardown
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg_pool
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from bench import kit
from tenantstore import kube, reconcile
from tenantstore.backends.pgvector import PgvectorStore
from tenantstore.backends.postgres import PostgresRelationalStore, PostgresServer
from tenantstore.api import GROUP, VERSION
from tenantstore.models import StoreClass, TenantStoreSpec, desired_store, effective_quotas
from tenantstore.quota import judge

RETRIES = 10  # a backend step that fails (e.g. Postgres's "tuple concurrently updated") is retried at once


async def retry(step: Callable[[], Awaitable[Any]], counter: collections.Counter[str]) -> Any:
    """The floor does what the operator's retries do, only without waiting: the backend steps are idempotent."""
    for attempt in range(RETRIES):
        try:
            return await step()
        except Exception:  # noqa: BLE001 (retried, then raised)
            if attempt == RETRIES - 1:
                raise
            counter["backend retries"] += 1
            await asyncio.sleep(0.05 * (attempt + 1))


class Driver:
    def __init__(self, kubeconfig: Path, admin_uri: str, namespace: str, store_class: str, concurrency: int,
                 pool_size: int | None):
        self.kubeconfig = kubeconfig
        self.admin_uri = admin_uri
        self.namespace = namespace
        self.store_class_name = store_class
        self.concurrency = concurrency
        self.pool_size = pool_size
        self.requests: collections.Counter[str] = collections.Counter()
        self.retries: collections.Counter[str] = collections.Counter()

    async def start(self) -> None:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = self.concurrency
        self.api = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        body = await self.custom.get_cluster_custom_object(GROUP, VERSION, "storeclasses", self.store_class_name)
        self.store_class = StoreClass.from_body(body)
        self.server = PostgresServer(self.admin_uri, self.store_class.shared_database)
        if self.pool_size:  # the operator's pool, only wider
            self.server._pool = psycopg_pool.AsyncConnectionPool(  # noqa: SLF001
                self.server.conninfo(self.store_class.shared_database), min_size=1, max_size=self.pool_size,
                open=False, timeout=20, kwargs=self.server._pool.kwargs)  # noqa: SLF001
        self.relational = PostgresRelationalStore(self.server)
        self.vector = PgvectorStore(self.server)

    async def close(self) -> None:
        await self.server.close()
        await self.api.close()

    async def _bounded(self, items: Iterable[Any], work: Callable[[Any], Awaitable[None]]) -> list[str]:
        gate = asyncio.Semaphore(self.concurrency)
        errors: list[str] = []

        async def one(item: Any) -> None:
            async with gate:
                try:
                    await work(item)
                except Exception as error:  # noqa: BLE001 (reported, the others go on)
                    errors.append(f"{item.get('name') if isinstance(item, dict) else item}: {error!r}")
        await asyncio.gather(*(one(item) for item in items))
        return errors

    # --- the user's part (both runs) ---

    async def create_one(self, tenant: Mapping[str, str]) -> dict[str, Any]:
        self.requests["tenantstores POST"] += 1
        return await self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, kit.PLURAL,
            kit.tenant_manifest(self.namespace, tenant, self.store_class_name))

    async def create(self, tenants: list[dict[str, str]]) -> list[str]:
        return await self._bounded(tenants, self.create_one)

    async def delete_one(self, name: str) -> None:
        self.requests["tenantstores DELETE"] += 1
        try:
            await self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, kit.PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise

    async def delete(self, tenants: list[dict[str, str]]) -> list[str]:
        return await self._bounded([tenant["name"] for tenant in tenants], self.delete_one)

    # --- the floor's part ---

    async def provision_one(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        spec = TenantStoreSpec.from_body(body)
        store_class = self.store_class
        verdict = judge(None, effective_quotas(spec, store_class)[0], spec.quota_action)
        store = desired_store(spec, store_class, meta["uid"], f"{meta['namespace']}/{meta['name']}",
                              writes_allowed=not verdict.blocks_writes)
        password = reconcile.new_password()
        relational, _ = await retry(lambda: self.relational.ensure(store, password, True), self.retries)
        vector, vector_steps = await retry(lambda: self.vector.ensure(store), self.retries)
        if any(step.reason == "NamespaceCreated" for step in vector_steps):
            await retry(lambda: reconcile.probe_isolation(self.vector, store, vector), self.retries)
        data = reconcile.secret_data(spec, relational, vector, password)
        self.requests["secrets POST"] += 1
        await self.core.create_namespaced_secret(self.namespace, {
            "metadata": {"name": spec.secret_name,
                         "labels": {"tenancy.dev/tenant-id": spec.tenant_id, kube.MANAGED_BY_LABEL: kube.MANAGED_BY},
                         "ownerReferences": [kube.owner_reference(body)]},
            "type": "Opaque",
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}})
        status = reconcile.converged_status(spec, store_class, store, relational, vector, verdict,
                                            meta.get("generation", 1))
        self.requests["tenantstores/status PATCH"] += 1
        await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, kit.PLURAL, meta["name"], {"status": status},
            _content_type="application/merge-patch+json")

    async def provision(self, tenants: list[dict[str, str]]) -> list[str]:
        """All N created at once (as the user does in the operator run), each provisioned as soon as it exists,
        at most `concurrency` at a time: so a tenant's time-to-Ready includes its wait, as with the operator."""
        created: asyncio.Queue[Mapping[str, Any] | None] = asyncio.Queue()

        async def create(tenant: Mapping[str, str]) -> None:
            await created.put(await self.create_one(tenant))

        async def worker() -> None:
            while (body := await created.get()) is not None:
                try:
                    await self.provision_one(body)
                except Exception as error:  # noqa: BLE001 (reported, the others go on)
                    errors.append(f"{body['metadata']['name']}: {error!r}")

        errors: list[str] = []
        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        errors += await self._bounded(tenants, create)
        for _ in workers:
            await created.put(None)
        await asyncio.gather(*workers)
        return errors

    async def teardown_one(self, body: Mapping[str, Any]) -> None:
        spec = TenantStoreSpec.from_body(body)
        store = reconcile.store_as_provisioned(spec, self.store_class, body)
        await retry(lambda: self.vector.teardown(store), self.retries)
        await retry(lambda: self.relational.teardown(store), self.retries)
        self.requests["secrets DELETE"] += 1
        try:
            await self.core.delete_namespaced_secret(spec.secret_name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
        await self.delete_one(body["metadata"]["name"])

    async def teardown(self, tenants: list[dict[str, str]]) -> list[str]:
        wanted = {tenant["name"] for tenant in tenants}
        self.requests["tenantstores LIST"] += 1
        listing = await self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, kit.PLURAL)
        bodies = [body for body in listing["items"] if body["metadata"]["name"] in wanted]
        return await self._bounded(bodies, self.teardown_one)

    async def run(self, command: str, tenants: list[dict[str, str]]) -> dict[str, Any]:
        before = collections.Counter(self.requests)
        retries_before = self.retries["backend retries"]
        started = time.monotonic()
        errors = await {"create": self.create, "delete": self.delete, "provision": self.provision,
                        "teardown": self.teardown}[command](tenants)
        requests = {key: count - before.get(key, 0) for key, count in self.requests.items()
                    if count - before.get(key, 0)}
        return {"ok": not errors, "cmd": command, "seconds": round(time.monotonic() - started, 3),
                "requests": requests, "errors": errors[:20], "error_count": len(errors),
                "backend_retries": self.retries["backend retries"] - retries_before}


async def serve(driver: Driver) -> None:
    """One JSON command per stdin line, one JSON answer per stdout line, until stdin closes."""
    await driver.start()
    print(json.dumps({"ok": True, "cmd": "ready"}), flush=True)
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            try:
                request = json.loads(line)
                answer = await driver.run(request["cmd"], request.get("tenants", []))
            except Exception as error:  # noqa: BLE001 (answered, not fatal)
                answer = {"ok": False, "errors": [repr(error), traceback.format_exc()[-2000:]], "error_count": 1}
            print(json.dumps(answer), flush=True)
    finally:
        await driver.close()


async def by_hand(driver: Driver, n: int, commands: list[str]) -> None:
    from bench.kit import run_tenants  # noqa: PLC0415

    tenants = run_tenants("floor", n)
    await driver.start()
    try:
        for command in commands:
            print(json.dumps(await driver.run(command, tenants)), flush=True)
    finally:
        await driver.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--admin-uri", required=True, help="the StoreClass's admin URI (the admin Secret's uri)")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--store-class", default="bench")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool-size", type=int, default=0,
                        help="connections in the shared database's pool (default: the operator's own pool)")
    parser.add_argument("--serve", action="store_true", help="take JSON commands on stdin (the benchmark's way)")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("commands", nargs="*", help="by hand: create, provision, delete and/or teardown")
    args = parser.parse_args(argv)
    unknown = set(args.commands) - {"create", "provision", "delete", "teardown"}
    if unknown or not (args.serve or args.commands):
        parser.error(f"unknown commands {sorted(unknown)}" if unknown else "give --serve or commands")
    driver = Driver(args.kubeconfig, args.admin_uri, args.namespace, args.store_class, args.concurrency,
                    args.pool_size or None)
    asyncio.run(serve(driver) if args.serve else by_hand(driver, args.n, args.commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
