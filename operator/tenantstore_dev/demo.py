"""`python -m tenantstore_dev demo`: the whole system on this machine, then a report that proves each tenant's store works.

Control plane and Postgres start fresh under ~/.cache/tenantstore/demo (or $TENANTSTORE_DEMO_DIR).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import time
from pathlib import Path

import tenantstore_client

from tenantstore_dev import story
from tenantstore_dev.environment import REPO_ROOT, LocalEnvironment, OperatorProcess
from tenantstore_dev.span_sink import SpanSink

EXAMPLES = REPO_ROOT / "manifests" / "examples"


def demo_dir() -> Path:
    cache = Path(os.environ.get("TENANTSTORE_CACHE", Path.home() / ".cache" / "tenantstore"))
    return Path(os.environ.get("TENANTSTORE_DEMO_DIR", cache / "demo"))


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def proof(secret: dict[str, str], dimension: int) -> str:
    """With the client library and the tenant's Secret alone: write two vectors, find them again."""
    probe = [1.0] + [0.0] * (dimension - 1)
    with tenantstore_client.connect(secret) as store:
        store.upsert([tenantstore_client.Vector("demo-1", probe, {"kind": "proof"}),
                      tenantstore_client.Vector("demo-2", [0.5] * dimension, {"kind": "other"})])
        nearest = store.query(probe, top_k=1)[0].id
        filtered = [match.id for match in store.query(probe, top_k=2, filter={"kind": "other"})]
        visible = store.count()
    return (f"as {secret['user']}: nearest to the probe vector: {nearest}; with filter kind=other: {filtered}; "
            f"vectors visible to it: {visible}")


def report(env: LocalEnvironment) -> None:
    assert env.kubectl is not None
    print(env.kubectl("get", "tenantstores", "-A"), flush=True)
    stores = json.loads(env.kubectl("get", "tenantstores", "-n", "customers", "-o", "json"))["items"]
    for store in stores:
        status, name = store["status"], store["metadata"]["name"]
        secret_body = json.loads(env.kubectl("get", "secret", status["secretName"], "-n", "customers", "-o", "json"))
        secret = {k: base64.b64decode(v).decode() for k, v in secret_body["data"].items()}
        relational, vector = status["relational"], status["vectorStore"]
        where = f"schema {relational['schema']}" if status["isolation"]["relational"] == "schema" \
            else f"database {relational['database']}"
        print(f"{name} ({store['spec']['tier']}): role {relational['role']}, {where} in database "
              f"{relational['database']}; vectors: index {vector['index']}"
              f"{', namespace ' + vector['namespace'] if vector.get('namespace') else ''} (table {vector['table']})")
        print(f"    proof with Secret {status['secretName']}: {proof(secret, store['spec']['vector']['dimension'])}")


def run_demo(keep_running: bool = True) -> int:
    workdir = demo_dir()
    if workdir.exists():
        shutil.rmtree(workdir)  # a fresh cluster and database every time: the demo shows provisioning
    env = LocalEnvironment(workdir)
    operator: OperatorProcess | None = None
    sink = SpanSink().start()  # the operator's spans, for the story's printout
    try:
        say("starting the control plane (the first run builds it from source: about 10 minutes) and Postgres")
        env.start()
        assert env.kubectl is not None
        say(f"control plane at {env.control_plane.server}; Postgres at 127.0.0.1:{env.postgres.port}")
        operator = env.operator(extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                                           "OTEL_BSP_SCHEDULE_DELAY": "200"})
        operator.start()
        say(f"operator running (pid {operator.process.pid}, log {operator.log_path})")
        for example in ("storeclass-pgvector.yaml", "namespace-customers.yaml", "tenantstores.yaml"):
            env.kubectl.apply(EXAMPLES / example)
        say("waiting for the three example tenants to be Ready")
        started = time.monotonic()
        env.kubectl("wait", "--for=condition=Ready", "tenantstores", "--all", "-n", "customers", "--timeout=180s")
        say(f"all Ready in {time.monotonic() - started:.1f}s")
        report(env)
        say("the story of one AI-assistant SaaS, with the span of each step")
        story.tell(env.kubectl, "customers", "standard", sink, 384, ("acme", "globex"), "initech")
        print(f"\nPoint kubectl at the cluster:  export KUBECONFIG={env.control_plane.kubeconfig}\n"
              f"Operator log: {operator.log_path}\n", flush=True)
        if keep_running:
            print("Everything keeps running; press Ctrl-C to stop the operator, Postgres and the control plane.",
                  flush=True)
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            while operator.process.poll() is None:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping")
        if operator is not None:
            operator.stop()
        env.stop()
        sink.stop()
    return 0
