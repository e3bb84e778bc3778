"""The move benchmark: a tenant moved to a StoreClass on another Postgres server and back, on the real control
plane, with a client writing all along.

`make bench-move N=10000` starts the local environment (control plane, embedded PostgreSQL 18, the operator as its
own process) and a second embedded PostgreSQL with a class of its own, makes a pro tenant with N 384-dimensional
vectors and a table of N rows written with its own credentials, then moves it there and back while a client
inserts a row every 20 ms with whatever its Secret says. For each move it reports the time from the patch to Ready
in the new class, the freeze the operator recorded (status.lastClassMove.frozenSeconds), and the freeze the client
saw (from its first to its last refused write), and that every write the client was told succeeded is in the
tenant's table at the end. Results go to bench/results/move-<N>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.export import DIMENSION, fill, tenant_secret
from tenantstore_dev.environment import ADMIN_SECRET, OPERATOR_NAMESPACE, Kubectl, LocalEnvironment, wait_for
from tenantstore_dev.postgres import EmbeddedPostgres

RESULTS = Path(__file__).parent / "results"


def store_class(name: str, admin_secret: str, default: bool = False) -> dict[str, Any]:
    return {"apiVersion": "tenancy.dev/v1alpha1", "kind": "StoreClass",
            "metadata": {"name": name,
                         "annotations": {"storeclass.tenancy.dev/is-default-class": "true"} if default else {}},
            "spec": {"postgres": {"adminSecretRef": {"name": admin_secret, "namespace": OPERATOR_NAMESPACE,
                                                     "key": "uri"}, "database": "tenants"},
                     "vector": {"backend": "pgvector"}, "moves": {"maxFreezeSeconds": 3600}}}


class Client(threading.Thread):
    """Inserts one row at a time with what the Secret says; records when writes were refused."""

    def __init__(self, env: LocalEnvironment):
        super().__init__(daemon=True)
        self.env = env
        self.done = threading.Event()
        self.acknowledged: list[int] = []
        self.refused_at: list[float] = []
        self.other_errors: list[str] = []

    def run(self) -> None:
        n = 10**9  # above the ids the fill used
        while not self.done.is_set():
            n += 1
            secret = tenant_secret(self.env, "bench", "mover-store")
            try:
                with psycopg.connect(secret["uri"], autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"INSERT INTO {secret['schema']}.events (id, kind) VALUES (%s, 'client')", (n,))
                self.acknowledged.append(n)
            except psycopg.errors.InsufficientPrivilege:
                self.refused_at.append(time.monotonic())
            except psycopg.OperationalError as error:  # the old role is gone: it re-reads the Secret
                self.other_errors.append(str(error).strip().splitlines()[0])
            time.sleep(0.02)

    def freeze_seen(self, since: float) -> float:
        refused = [at for at in self.refused_at if at >= since]
        return round(refused[-1] - refused[0], 2) if refused else 0.0


def move(kubectl: Kubectl, client: Client, class_name: str) -> dict[str, Any]:
    started = time.monotonic()
    kubectl("patch", "tenantstore", "mover", "-n", "bench", "--type=merge", "-p",
            json.dumps({"spec": {"storeClassName": class_name, "storeClassChange": "Move"}}))

    def moved() -> dict[str, Any] | None:
        body = kubectl.get("tenantstore", "mover", "bench") or {}
        status = body.get("status") or {}
        return status if status.get("storeClassName") == class_name and status.get("phase") == "Ready" \
            and not status.get("migration") else None
    status = wait_for(f"the move to {class_name}", moved, timeout=3600, interval=0.2)
    return {"to": class_name, "seconds": round(time.monotonic() - started, 2),
            "frozen_seconds_recorded": status["lastClassMove"]["frozenSeconds"],
            "frozen_seconds_seen_by_client": client.freeze_seen(started)}


def run(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tenantstore-bench-move-") as workdir:
        env = LocalEnvironment(Path(workdir) / "env")
        second = EmbeddedPostgres(Path(workdir) / "second-postgres")
        env.start()
        second.start()
        operator = env.operator(extra_args=["--verify-interval", "600", "--usage-interval", "600"])
        client = Client(env)
        try:
            kubectl = env.kubectl
            assert kubectl is not None
            kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                           "metadata": {"name": "pg-admin-second", "namespace": OPERATOR_NAMESPACE},
                           "stringData": {"uri": second.prepare_for_tenantstore(secrets.token_urlsafe(18))}})
            kubectl.apply(store_class("standard", ADMIN_SECRET, default=True))
            kubectl.apply(store_class("dedicated", "pg-admin-second"))
            operator.start()
            kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
            kubectl.apply({"apiVersion": "tenancy.dev/v1alpha1", "kind": "TenantStore",
                           "metadata": {"name": "mover", "namespace": "bench"},
                           "spec": {"tenantId": "mover", "tier": "pro", "storeClassName": "standard",
                                    "vector": {"dimension": DIMENSION, "metric": "cosine"}}})
            kubectl("wait", "--for=condition=Ready", "tenantstore/mover", "-n", "bench", "--timeout=180s")
            fill(tenant_secret(env, "bench", "mover-store"), count)
            client.start()
            wait_for("the client's first write", lambda: client.acknowledged or None, timeout=60)
            moves = [move(kubectl, client, "dedicated"), move(kubectl, client, "standard")]
            client.done.set()
            client.join(timeout=30)
            secret = tenant_secret(env, "bench", "mover-store")
            with psycopg.connect(secret["uri"], autocommit=True) as conn:
                kept = {row[0] for row in conn.execute(f"SELECT id FROM {secret['schema']}.events WHERE "
                                                       f"kind = 'client'")}
        finally:
            client.done.set()
            operator.stop()
            second.stop("immediate")
            env.stop()
    return {
        "vectors": count, "rows": count, "dimension": DIMENSION, "moves": moves,
        "client_writes_acknowledged": len(client.acknowledged),
        "client_writes_lost": len(set(client.acknowledged) - kept),
        "client_writes_refused": len(client.refused_at), "client_login_errors": len(client.other_errors),
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.class_move", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="vectors (and table rows) of the tenant")
    args = parser.parse_args(argv)
    result = run(args.n)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"move-{args.n}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for moved in result["moves"]:
        print(f"move: {args.n} vectors and rows to {moved['to']} in {moved['seconds']} s; writes refused "
              f"{moved['frozen_seconds_recorded']} s (recorded), {moved['frozen_seconds_seen_by_client']} s "
              f"(seen by the client)")
    print(f"move: client writes acknowledged {result['client_writes_acknowledged']}, lost "
          f"{result['client_writes_lost']}; {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
