"""The local environment the demo and the end-to-end tests share.

It composes the real pieces: the control plane (devcluster), the embedded Postgres (devpostgres), the
CRDs from `crds/`, the admin Secret a StoreClass names, and the operator as a separate OS process
(`python -m tenantstore run`), exactly as a user would run it against a cluster.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tenantstore_dev.controlplane import ControlPlane, free_ports
from tenantstore_dev.postgres import EmbeddedPostgres, bin_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"
OPERATOR_NAMESPACE = "tenantstore-system"
ADMIN_SECRET = "pg-admin"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.25) -> T:
    """Poll until `probe` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 (the probe's error is reported if time runs out)
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" +
                       (f" (last error: {last_error})" if last_error else ""))


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], stderr: str):
        super().__init__(f"kubectl {' '.join(args)} failed: {stderr.strip()}")
        self.stderr = stderr


class Kubectl:
    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise KubectlError(list(args), result.stderr)
        return result.stdout

    def apply(self, manifest: str | dict[str, Any] | Path, *extra: str) -> str:
        if isinstance(manifest, Path):
            return self("apply", "-f", str(manifest), *extra)
        text = json.dumps(manifest) if isinstance(manifest, dict) else manifest
        return self("apply", "-f", "-", *extra, stdin=text)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, *([name] if name else []), "-o", "json", *(["-n", namespace] if namespace else [])]
        try:
            return json.loads(self(*args))
        except KubectlError as error:
            if "NotFound" in error.stderr:
                return None
            raise


def free_port() -> int:
    return free_ports(1)[0]


def terminate(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM a process this harness started, and SIGKILL it when it has not exited after `grace` seconds."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


class OperatorProcess:
    """The operator as its own process, so tests can kill it (SIGKILL) like a crashed pod."""

    def __init__(self, kubeconfig: Path, log_path: Path, extra_args: Sequence[str] = (),
                 extra_env: Mapping[str, str] | None = None):
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = list(extra_args)  # e.g. --namespace, --leader-elect
        self.extra_env = dict(extra_env or {})  # e.g. OTEL_EXPORTER_OTLP_ENDPOINT
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_url = ""
        self.log_offset = 0

    def start(self, timeout: float = 60) -> None:
        self.port = free_port()
        args = list(self.extra_args)
        if "--metrics-port" not in args:  # several operators on one machine each need a port of their own
            args += ["--metrics-port", str(free_port())]
        self.metrics_url = f"http://127.0.0.1:{args[args.index('--metrics-port') + 1]}/metrics"
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, **self.extra_env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tenantstore", "run", "--liveness", f"http://127.0.0.1:{self.port}/healthz",
             *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for("the operator's liveness endpoint", self._alive, timeout)

    def _alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the operator exited; see {self.log_path}:\n{self.log_tail()}")
        return self.health() is not None

    def health(self) -> Any:
        """The liveness endpoint's JSON answer, or None while it does not answer 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                return json.loads(response.read() or b"{}") if response.status == 200 else None
        except (OSError, ValueError):
            return None

    def log_since_start(self) -> str:
        """What this run of the operator has logged so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, as when a node dies."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self, grace: float = 20) -> None:
        terminate(self.process, grace)


class LocalEnvironment:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_plane = ControlPlane(self.workdir / "cluster")
        self.postgres = EmbeddedPostgres(self.workdir / "postgres")
        self.admin_uri = ""
        self.kubectl: Kubectl | None = None

    def start(self) -> None:
        self.control_plane.start()
        self.postgres.start()
        self.admin_uri = self.postgres.prepare_for_tenantstore(admin_password=secrets.token_urlsafe(18))
        self.kubectl = Kubectl(self.control_plane.kubeconfig)
        self.install_crds()
        self.kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
        self.kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                            "metadata": {"name": ADMIN_SECRET, "namespace": OPERATOR_NAMESPACE},
                            "stringData": {"uri": self.admin_uri}})

    def install_crds(self) -> None:
        assert self.kubectl is not None
        self.kubectl.apply(CRD_DIR)
        names = ("tenantstores.tenancy.dev", "storeclasses.tenancy.dev", "tenantstoreexports.tenancy.dev")

        # Not `kubectl wait`: it fails outright on a CRD the API server has not given conditions yet.
        def established() -> bool:
            return all(any(c.get("type") == "Established" and c.get("status") == "True"
                           for c in ((self.kubectl.get("crd", name) or {}).get("status") or {}).get("conditions") or ())
                       for name in names)
        wait_for("the CRDs to be established", established, timeout=60)

    @property
    def export_dir(self) -> Path:
        return self.workdir / "exports"

    def operator(self, log_name: str = "operator.log", extra_args: Sequence[str] = (),
                 kubeconfig: Path | None = None, extra_env: Mapping[str, str] | None = None) -> OperatorProcess:
        # The export volume is a directory here; pg_dump and psql are the embedded PostgreSQL's own.
        local = ["--export-dir", str(self.export_dir), "--pg-bin-dir", str(bin_dir())]
        return OperatorProcess(kubeconfig or self.control_plane.kubeconfig, self.workdir / log_name,
                               [*local, *extra_args], extra_env)

    def stop(self) -> None:
        try:
            self.postgres.stop("immediate")
        finally:
            self.control_plane.stop()
