"""A real, container-free Kubernetes control plane for tests and demos.

This is the same idea as controller-runtime's *envtest*: run the genuine
``etcd``, ``kube-apiserver`` and ``kube-controller-manager`` binaries as plain
local processes on loopback ports. There is no kubelet, scheduler or container
runtime, so pods never run -- but the API, admission, RBAC, CRDs and the
controllers that matter to an operator (namespace deletion, garbage collection,
service accounts, ...) behave exactly as in a real cluster.

Binaries
    :func:`ensure_binaries` returns a directory holding the three binaries.
    It uses ``$KUBEBUILDER_ASSETS`` if that directory has all three; otherwise
    it builds them from source once into
    ``${TENANTSTORE_CACHE:-~/.cache/tenantstore}/kubernetes-v<version>/bin``.
    The build is a generated Go module that requires ``k8s.io/kubernetes`` and
    wraps etcd's ``etcdmain`` (already in Kubernetes' module graph), so a single
    ``go build`` compiles all three with shared packages. A cold build takes
    roughly 15-25 minutes on two cores; later calls return immediately.

    :func:`ensure_helm` does the same for helm (the chart tests): ``$HELM`` if
    set, else ``helm.sh/helm/v3/cmd/helm`` v``HELM_VERSION`` built from a
    generated module into ``.../helm-v<version>/bin/helm`` (about 2-3 minutes cold).

    :func:`ensure_kstatus` likewise for ``kstatus``, a small command around
    ``sigs.k8s.io/cli-utils/pkg/kstatus/status`` (the library behind Flux's
    ``wait: true`` and kpt): ``$KSTATUS`` if set, else built from a generated
    module into ``.../kstatus-v<cli-utils version>/bin/kstatus``. It reads
    objects as JSON on stdin (one, or a ``List`` as ``kubectl get -o json``
    prints) and prints one JSON line per object: ``kind``, ``namespace``,
    ``name``, ``status`` (``status.Compute``'s verdict) and ``message``.

    :func:`ensure_seaweedfs` likewise for SeaweedFS's ``weed`` (a real
    S3-compatible server, for the export tests): ``$WEED`` if set, else built
    from its Go module at ``SEAWEEDFS_VERSION`` into ``.../seaweedfs-<version>/bin/weed``
    (about 9 minutes cold on two cores).

    :func:`ensure_jaeger` likewise for Jaeger (the trace tests' backend: an OTLP
    receiver and its query API): ``$JAEGER`` if set, else ``cmd/jaeger`` of
    ``github.com/jaegertracing/jaeger`` v``JAEGER_VERSION`` built into
    ``.../jaeger-v<version>/bin/jaeger``.

Start-up (:meth:`ControlPlane.start`)
    1. issue a CA, the apiserver serving cert, an admin client cert
       (``O=system:masters``) and a service-account key pair;
    2. start etcd and wait for ``/health``;
    3. start kube-apiserver and wait for ``/readyz``;
    4. write the admin kubeconfig, start kube-controller-manager and wait for
       its ``/healthz`` *and* for the ``default`` ServiceAccount in namespace
       ``default`` -- proof that controllers are actually reconciling.

Everything (certs, etcd data, logs, kubeconfig) lives under one work dir::

    with ControlPlane(Path("/tmp/cp")) as cp:
        subprocess.run(["kubectl", "--kubeconfig", cp.kubeconfig, "get", "ns"])

CLI::

    python -m tenantstore_dev.controlplane build          # build/locate binaries
    python -m tenantstore_dev.controlplane helm           # build/locate helm
    python -m tenantstore_dev.controlplane kstatus        # build/locate kstatus
    python -m tenantstore_dev.controlplane jaeger         # build/locate jaeger
    python -m tenantstore_dev.controlplane up WORKDIR     # run until SIGINT/SIGTERM
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fcntl
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Callable, Iterator, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ETCD_VERSION",
    "KUBERNETES_VERSION",
    "STAGING_VERSION",
    "ControlPlane",
    "ControlPlaneError",
    "CLI_UTILS_VERSION",
    "HELM_VERSION",
    "cache_dir",
    "ensure_binaries",
    "ensure_helm",
    "ensure_kstatus",
    "ensure_seaweedfs",
    "ensure_jaeger",
]

KUBERNETES_VERSION = "1.33.13"
# k8s.io/kubernetes pins its staging repos to v0.0.0 and relies on replace
# directives; a consumer module must repeat them with the matching v0.X.Y.
STAGING_VERSION = "0.33.13"
# Not pinned by us: this is the etcd server already in k8s 1.33.13's module graph.
ETCD_VERSION = "3.5.21"

STAGING_MODULES = (
    "api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime",
    "client-go", "cloud-provider", "cluster-bootstrap", "code-generator",
    "component-base", "component-helpers", "controller-manager", "cri-api",
    "cri-client", "csi-translation-lib", "dynamic-resource-allocation",
    "endpointslice", "externaljwt", "kms", "kube-aggregator",
    "kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl",
    "kubelet", "metrics", "mount-utils", "pod-security-admission",
    "sample-apiserver", "sample-cli-plugin", "sample-controller",
)

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")

# The chart tests' helm, built from its own Go module like the control plane.
HELM_VERSION = "3.22.0"

# The tests' kstatus: sigs.k8s.io/cli-utils' status library behind a small command. Its
# k8s.io dependencies (apimachinery, api) stay at the versions this release requires.
CLI_UTILS_VERSION = "0.37.2"

# The export tests' S3: SeaweedFS's `weed` (its releases are published as Go pseudo-versions).
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"

# The trace tests' backend: Jaeger (its v2 binary, an OpenTelemetry Collector with Jaeger's storage and query).
JAEGER_VERSION = "1.76.0"

# Controllers that need nodes, volumes or a cloud provider; without a kubelet
# they would only produce noise.
DISABLED_CONTROLLERS = (
    "node-ipam-controller",
    "node-lifecycle-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-attach-detach-controller",
    "persistentvolume-expander-controller",
    "cloud-node-lifecycle-controller",
    "ttl-controller",
)

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # first address of the range above

_BUILD_HEARTBEAT_SECONDS = 60
_LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """Building or starting the control plane failed."""


# --------------------------------------------------------------------------
# Building the binaries
# --------------------------------------------------------------------------

def _say(message: str) -> None:
    print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _has_binaries(directory: Path) -> bool:
    return all((directory / name).is_file() and os.access(directory / name, os.X_OK)
               for name in BINARIES)


def _cache_root() -> Path:
    return Path(os.environ.get("TENANTSTORE_CACHE", "~/.cache/tenantstore")).expanduser()


def cache_dir() -> Path:
    """Per-version cache directory holding ``bin/``, ``src/`` and the build log."""
    return _cache_root() / f"kubernetes-v{KUBERNETES_VERSION}"


def helm_cache_dir() -> Path:
    """Per-version cache directory of helm: ``bin/helm``, ``src/`` and the build log."""
    return _cache_root() / f"helm-v{HELM_VERSION}"


def kstatus_cache_dir() -> Path:
    """Per-version cache directory of kstatus: ``bin/kstatus``, ``src/`` and the build log."""
    return _cache_root() / f"kstatus-v{CLI_UTILS_VERSION}"


def seaweedfs_cache_dir() -> Path:
    """Per-version cache directory of SeaweedFS: ``bin/weed``, ``src/`` and the build log."""
    return _cache_root() / f"seaweedfs-{SEAWEEDFS_VERSION}"


def jaeger_cache_dir() -> Path:
    """Per-version cache directory of Jaeger: ``bin/jaeger``, ``src/`` and the build log."""
    return _cache_root() / f"jaeger-v{JAEGER_VERSION}"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _executable_from_env(variable: str) -> Path | None:
    """The executable ``$variable`` names (a path, or a name on $PATH); None when it is unset."""
    override = os.environ.get(variable)
    if not override:
        return None
    path = Path(shutil.which(override) or override).expanduser()
    if _is_executable(path):
        return path
    raise ControlPlaneError(f"{variable}={override} is not an executable file")


def ensure_binaries() -> Path:
    """Return a directory with etcd, kube-apiserver and kube-controller-manager.

    Builds them from source (once, under a file lock) if neither
    ``$KUBEBUILDER_ASSETS`` nor the cache already has them.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        if _has_binaries(Path(assets)):
            return Path(assets)
        # envtest's asset bundles usually lack kube-controller-manager.
        _say(f"KUBEBUILDER_ASSETS={assets} lacks one of {', '.join(BINARIES)}; using the cache")

    cache = cache_dir()
    _built_once(cache, lambda: _has_binaries(cache / "bin"), _build)
    return cache / "bin"


def ensure_helm() -> Path:
    """Return the path of a helm binary.

    ``$HELM`` (an existing executable) wins; otherwise helm v``HELM_VERSION`` is
    built once from its Go module into :func:`helm_cache_dir` (a few minutes cold),
    under the same kind of file lock as the control plane build.
    """
    return _cached_tool("HELM", helm_cache_dir(), "helm", _build_helm)


def ensure_kstatus() -> Path:
    """Return the path of a kstatus binary (see the module docstring for what it does).

    ``$KSTATUS`` (an existing executable) wins; otherwise it is built once against cli-utils
    v``CLI_UTILS_VERSION`` into :func:`kstatus_cache_dir` (about a minute cold), under a file lock.
    """
    return _cached_tool("KSTATUS", kstatus_cache_dir(), "kstatus", _build_kstatus)


def ensure_seaweedfs() -> Path:
    """Return the path of SeaweedFS's ``weed`` (``$WEED`` wins; else built once, under a file lock)."""
    return _cached_tool("WEED", seaweedfs_cache_dir(), "weed", _build_seaweedfs)


def ensure_jaeger() -> Path:
    """Return the path of Jaeger's ``jaeger`` (``$JAEGER`` wins; else built once, under a file lock)."""
    return _cached_tool("JAEGER", jaeger_cache_dir(), "jaeger", _build_jaeger)


def _cached_tool(variable: str, cache: Path, name: str, build: Callable[[Path], None]) -> Path:
    """$<variable> when it names an executable; else cache/bin/<name>, built once under a file lock."""
    override = _executable_from_env(variable)
    if override:
        return override
    binary = cache / "bin" / name
    _built_once(cache, lambda: _is_executable(binary), build)
    return binary


def _built_once(cache: Path, ready: Callable[[], bool], build: Callable[[Path], None]) -> None:
    """Build into `cache` unless `ready()`, under a file lock so parallel runs build it once."""
    if ready():
        return
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / ".lock"):
        if not ready():  # another process may have finished the build while we waited
            build(cache)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another process is building the binaries; waiting for {path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go_mod() -> str:
    replaces = "\n".join(f"\tk8s.io/{name} => k8s.io/{name} v{STAGING_VERSION}"
                         for name in STAGING_MODULES)
    return (
        "module tenantstore.local/controlplane\n\n"
        "go 1.24\n\n"
        f"require k8s.io/kubernetes v{KUBERNETES_VERSION}\n\n"
        f"replace (\n{replaces}\n)\n"
    )


# Keeps `go mod tidy` from dropping the two commands we build but never import.
_TOOLS_GO = """\
//go:build tools

package tools

import (
\t_ "k8s.io/kubernetes/cmd/kube-apiserver"
\t_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
"""

# etcd's own main package lives in a separate module (go.etcd.io/etcd/v3)
# that is not in Kubernetes' graph; etcdmain.Main is all it does anyway.
_ETCD_MAIN_GO = """\
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def _write_sources(src: Path) -> None:
    (src / "cmd" / "etcd").mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(_go_mod())  # tidy rewrites it; go.sum is kept as a head start
    (src / "tools.go").write_text(_TOOLS_GO)
    (src / "cmd" / "etcd" / "main.go").write_text(_ETCD_MAIN_GO)


def _version_ldflags() -> str:
    """Stamp the real version into the binaries.

    A plain `go build` reports "v0.0.0-master+$Format:%H$", which kubectl and
    other clients fail to parse. This is what Kubernetes' hack/lib/version.sh
    does; only the linker sees it, so compiled packages stay cached.
    """
    major, minor, _ = KUBERNETES_VERSION.split(".")
    values = {"gitVersion": f"v{KUBERNETES_VERSION}", "gitMajor": major, "gitMinor": minor,
              "gitTreeState": "clean"}
    return "-ldflags=" + " ".join(
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in values.items())


def _find_go() -> str:
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None)
    if go is None:
        raise ControlPlaneError(
            "Go toolchain not found: install Go >= 1.24 or set KUBEBUILDER_ASSETS "
            f"to a directory with {', '.join(BINARIES)}")
    return go


def _build(cache: Path) -> None:
    go = _find_go()
    src = cache / "src"
    log_path = cache / "build.log"
    _write_sources(src)
    env = {**os.environ, "CGO_ENABLED": "0"}
    started = time.monotonic()
    _say(f"building Kubernetes v{KUBERNETES_VERSION} + etcd v{ETCD_VERSION} from source "
         f"in {src} (cold: ~15-25 min on 2 cores); log: {log_path}")

    with open(log_path, "w") as log:
        _run_logged([go, "mod", "tidy"], src, env, log, log_path, "go mod tidy", started)
        tmp_bin = Path(tempfile.mkdtemp(prefix="bin.", dir=cache))
        try:
            _run_logged(
                [go, "build", "-v", "-trimpath", "-tags=selinux,notest", _version_ldflags(),
                 "-o", f"{tmp_bin}/",
                 "k8s.io/kubernetes/cmd/kube-apiserver",
                 "k8s.io/kubernetes/cmd/kube-controller-manager",
                 "./cmd/etcd"],
                src, env, log, log_path, "go build", started)
            if not _has_binaries(tmp_bin):
                raise ControlPlaneError(f"go build produced no binaries in {tmp_bin}; see {log_path}")
            # Publish all three at once: readers only ever see a complete bin/.
            tmp_bin.chmod(0o755)  # mkdtemp made it private
            bin_dir = cache / "bin"
            if bin_dir.exists():
                shutil.rmtree(bin_dir)
            os.rename(tmp_bin, bin_dir)
        finally:
            shutil.rmtree(tmp_bin, ignore_errors=True)
    _say(f"binaries ready in {cache / 'bin'} after {_minutes(started)}")


_HELM_TOOLS_GO = """\
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
"""


def _helm_ldflags(go: str, src: Path, env: dict[str, str]) -> str:
    """What helm's Makefile stamps: its version, and the Kubernetes version of its client-go.

    Without the latter, `helm template` and `helm lint` assume Kubernetes 1.20.
    """
    client_go = subprocess.run([go, "list", "-m", "-f", "{{.Version}}", "k8s.io/client-go"], cwd=src, env=env,
                               capture_output=True, text=True, check=True).stdout.strip()  # v0.MINOR.PATCH
    kube_minor = client_go.lstrip("v").split(".")[1]
    flags = [f"-X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}",
             "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]
    flags += [f"-X helm.sh/helm/v3/pkg/{package}.k8sVersion{part}={value}"
              for package in ("lint/rules", "chartutil") for part, value in (("Major", "1"), ("Minor", kube_minor))]
    return "-ldflags=-s -w " + " ".join(flags)


def _build_helm(cache: Path) -> None:
    _build_go_tool(cache, "helm", f"helm v{HELM_VERSION}", "a few minutes",
                   require=f"helm.sh/helm/v3 v{HELM_VERSION}", files={"tools.go": _HELM_TOOLS_GO},
                   build_args=lambda go, src, env: [_helm_ldflags(go, src, env), "helm.sh/helm/v3/cmd/helm"])


def _build_go_tool(cache: Path, name: str, what: str, cold: str, require: str, files: dict[str, str],
                   build_args: Callable[[str, Path, dict[str, str]], list[str]]) -> None:
    """`go build` a tool from its module into cache/bin/<name>, published atomically.

    `build_args(go, src, env)`: the build flags, then the package, worked out after `go mod tidy`.
    """
    go = _find_go()
    src = cache / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(f"module tenantstore.local/{name}\n\ngo 1.24\n\nrequire {require}\n")
    for file_name, text in files.items():
        (src / file_name).write_text(text)
    log_path = cache / "build.log"
    env = {**os.environ, "CGO_ENABLED": "0"}
    started = time.monotonic()
    _say(f"building {what} from source in {src} (cold: {cold}); log: {log_path}")
    with open(log_path, "w") as log:
        _run_logged([go, "mod", "tidy"], src, env, log, log_path, "go mod tidy", started)
        tmp_bin = Path(tempfile.mkdtemp(prefix="bin.", dir=cache))
        try:
            *flags, package = build_args(go, src, env)
            _run_logged([go, "build", "-trimpath", *flags, "-o", f"{tmp_bin}/{name}", package],
                        src, env, log, log_path, f"go build {name}", started)
            tmp_bin.chmod(0o755)
            bin_dir = cache / "bin"
            if bin_dir.exists():
                shutil.rmtree(bin_dir)
            os.rename(tmp_bin, bin_dir)  # publish atomically: readers see a complete binary or none
        finally:
            shutil.rmtree(tmp_bin, ignore_errors=True)
    _say(f"{name} ready in {cache / 'bin'} after {_minutes(started)}")


_KSTATUS_MAIN_GO = """\
// Command kstatus prints cli-utils' kstatus verdict for Kubernetes objects read as JSON on stdin:
// one object, or a List (as `kubectl get -o json` prints). One JSON line per object.
package main

import (
\t"encoding/json"
\t"fmt"
\t"io"
\t"os"

\t"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
\t"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
\tKind      string `json:"kind"`
\tNamespace string `json:"namespace"`
\tName      string `json:"name"`
\tStatus    string `json:"status"`
\tMessage   string `json:"message"`
}

func main() {
\tdata, err := io.ReadAll(os.Stdin)
\tif err != nil {
\t\tfail(err)
\t}
\t// The unstructured JSON scheme keeps integers as int64, which status.Compute requires
\t// (metadata.generation against status.observedGeneration).
\tdecoded, _, err := unstructured.UnstructuredJSONScheme.Decode(data, nil, nil)
\tif err != nil {
\t\tfail(fmt.Errorf("stdin: %w", err))
\t}
\tvar objects []unstructured.Unstructured
\tswitch object := decoded.(type) {
\tcase *unstructured.UnstructuredList:
\t\tobjects = object.Items
\tcase *unstructured.Unstructured:
\t\tobjects = []unstructured.Unstructured{*object}
\tdefault:
\t\tfail(fmt.Errorf("stdin: unexpected %T", decoded))
\t}
\tout := json.NewEncoder(os.Stdout)
\tcode := 0
\tfor i := range objects {
\t\tobject := &objects[i]
\t\tline := verdict{Kind: object.GetKind(), Namespace: object.GetNamespace(), Name: object.GetName()}
\t\tif result, err := status.Compute(object); err != nil {
\t\t\tline.Status, line.Message, code = status.UnknownStatus.String(), err.Error(), 1
\t\t} else {
\t\t\tline.Status, line.Message = result.Status.String(), result.Message
\t\t}
\t\tif err := out.Encode(line); err != nil {
\t\t\tfail(err)
\t\t}
\t}
\tos.Exit(code)
}

func fail(err error) {
\tfmt.Fprintln(os.Stderr, "kstatus:", err)
\tos.Exit(2)
}
"""


def _build_kstatus(cache: Path) -> None:
    # Only cli-utils is required: `go mod tidy` then takes k8s.io/apimachinery and the rest at the
    # versions cli-utils asks for, so the library runs against the dependencies it was released with.
    _build_go_tool(cache, "kstatus", f"kstatus (cli-utils v{CLI_UTILS_VERSION})", "about a minute",
                   require=f"sigs.k8s.io/cli-utils v{CLI_UTILS_VERSION}", files={"main.go": _KSTATUS_MAIN_GO},
                   build_args=lambda go, src, env: ["-ldflags=-s -w", "."])


def _build_program(cache: Path, name: str, what: str, cold: str, module: str, version: str, package: str) -> None:
    """A program of another project's Go module, built at that module's own dependency versions."""
    tools_go = f'//go:build tools\n\npackage tools\n\nimport _ "{package}"\n'
    _build_go_tool(cache, name, what, cold, require=f"{module} {version}", files={"tools.go": tools_go},
                   build_args=lambda go, src, env: ["-ldflags=-s -w", package])


def _build_seaweedfs(cache: Path) -> None:
    _build_program(cache, "weed", f"SeaweedFS {SEAWEEDFS_VERSION}", "about 9 minutes",
                   "github.com/seaweedfs/seaweedfs", SEAWEEDFS_VERSION, "github.com/seaweedfs/seaweedfs/weed")


def _build_jaeger(cache: Path) -> None:
    _build_program(cache, "jaeger", f"Jaeger v{JAEGER_VERSION}", "about 6 minutes",
                   "github.com/jaegertracing/jaeger", f"v{JAEGER_VERSION}", "github.com/jaegertracing/jaeger/cmd/jaeger")


def _run_logged(cmd: Sequence[str], cwd: Path, env: dict[str, str], log: IO[str],
                log_path: Path, label: str, started: float) -> None:
    """Run a build step into the log, printing a heartbeat so users know it is alive."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    while True:
        try:
            code = proc.wait(timeout=_BUILD_HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            lines = log_path.read_text(errors="replace").count("\n")
            _say(f"{label}: still running, {_minutes(started)} elapsed, {lines} log lines")
        except BaseException:
            # Ctrl-C: don't leave an orphaned compiler behind.
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        raise ControlPlaneError(
            f"{label} failed with exit code {code} (full log: {log_path}):\n{_tail(log_path)}")


def _minutes(started: float) -> str:
    return f"{(time.monotonic() - started) / 60:.1f} min"


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------

def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _issue(subject: x509.Name, key: ec.EllipticCurvePrivateKey,
           issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
           extensions: Sequence[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_extensions(usage: x509.ObjectIdentifier) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                       crl_sign=False, encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _write_pki(pki: Path) -> None:
    """Write ca, apiserver (serving), admin (client) certs and the SA key pair."""
    pki.mkdir(parents=True, exist_ok=True)

    ca_key = _new_ec_key()
    ca_name = _name("tenantstore-devcluster-ca")
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                       crl_sign=True, encipher_only=False, decipher_only=False), True),
    ])
    (pki / "ca.crt").write_bytes(_cert_pem(ca_cert))
    _write_private(pki / "ca.key", _key_pem(ca_key))

    # The in-cluster names are harmless here and keep the cert valid for
    # anything that talks to the `kubernetes` Service by name.
    sans: list[x509.GeneralName] = [
        x509.DNSName(dns) for dns in
        ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
         "kubernetes.default.svc.cluster.local")
    ] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", KUBERNETES_SERVICE_IP)]
    serving_key = _new_ec_key()
    serving = _issue(_name("kube-apiserver"), serving_key, ca_name, ca_key,
                     _leaf_extensions(ExtendedKeyUsageOID.SERVER_AUTH)
                     + [(x509.SubjectAlternativeName(sans), False)])
    (pki / "apiserver.crt").write_bytes(_cert_pem(serving) + _cert_pem(ca_cert))
    _write_private(pki / "apiserver.key", _key_pem(serving_key))

    admin_key = _new_ec_key()
    admin = _issue(_name("admin", "system:masters"), admin_key, ca_name, ca_key,
                   _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH))
    (pki / "admin.crt").write_bytes(_cert_pem(admin))
    _write_private(pki / "admin.key", _key_pem(admin_key))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(pki / "sa.key", _key_pem(sa_key))
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """Admin kubeconfig with embedded credentials, written as JSON (valid YAML)."""
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {
            "server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}],
        "contexts": [{"name": "devcluster", "context": {
            "cluster": "devcluster", "user": "admin", "namespace": "default"}}],
        "current-context": "devcluster",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:  # hold all open so the kernel can't hand one out twice
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _http_status(url: str, context: ssl.SSLContext | None = None) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, http.client.HTTPException):  # not listening yet, TLS not ready, ...
        return None


class _Process:
    """One started binary, its log, and how to stop it."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            # Own session: a Ctrl-C in the caller's terminal doesn't hit the
            # servers before stop() has a chance to shut them down in order.
            self.popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {code} during start-up "
                f"(log: {self.log_path}):\n{_tail(self.log_path)}")

    def stop(self, grace: float) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _wait_until(what: str, ready: Callable[[], bool], process: _Process, deadline: float) -> None:
    while True:
        process.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"timed out waiting for {what} (log: {process.log_path}):\n{_tail(process.log_path)}")
        time.sleep(0.25)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as local processes.

    All state lives under ``workdir``: ``pki/``, ``etcd/``, ``logs/<name>.log``
    and ``kubeconfig``. Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self._processes: list[_Process] = []
        self._server: str | None = None

    # -- public API -----------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (user ``admin``, group ``system:masters``)."""
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        """The apiserver URL, e.g. ``https://127.0.0.1:PORT``."""
        if self._server is None:
            raise ControlPlaneError("control plane not started")
        return self._server

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the processes this instance started, by binary name."""
        return {process.name: process.pid for process in self._processes}

    def start(self, timeout: float = 120) -> None:
        """Build/locate binaries, start all three processes and wait until healthy.

        ``timeout`` covers start-up only, not a cold build of the binaries.
        On failure, whatever was started is stopped again before raising.
        """
        if self._processes:
            raise ControlPlaneError("control plane already started")
        bin_dir = ensure_binaries()
        deadline = time.monotonic() + timeout
        for sub in ("logs", "pki", "etcd", "apiserver-certs", "controller-manager-certs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "etcd").chmod(0o700)  # etcd warns about anything wider
        _write_pki(self.pki)
        try:
            etcd_url = self._start_etcd(bin_dir, deadline)
            self._start_apiserver(bin_dir, etcd_url, deadline)
            _write_kubeconfig(self.kubeconfig, self.server, self.pki)
            self._start_controller_manager(bin_dir, deadline)
        except BaseException:
            self.stop()
            raise

    def check_alive(self) -> None:
        """Raise :class:`ControlPlaneError` (with its log tail) if a process has exited."""
        for process in self._processes:
            process.check_alive()

    def restart_apiserver(self, downtime: float = 0, timeout: float = 60) -> None:
        """Stop kube-apiserver (SIGTERM) and start it again on the same port, certificates and etcd.

        Clients see a real outage: connections are refused for at least ``downtime`` seconds, then the same
        server answers again. Returns once ``/readyz`` answers 200.
        """
        index = next(i for i, process in enumerate(self._processes) if process.name == "kube-apiserver")
        stopped = self._processes[index]
        stopped.stop(grace=10)
        try:
            time.sleep(downtime)
        finally:  # started again even when interrupted: the rest of the control plane relies on it
            restarted = self._processes[index] = _Process(stopped.name, stopped.argv, stopped.log_path)
        context = self._admin_context()
        _wait_until("kube-apiserver /readyz after a restart",
                    lambda: _http_status(f"{self.server}/readyz", context) == 200, restarted,
                    time.monotonic() + timeout)

    def stop(self, grace: float = 10) -> None:
        """Stop only the processes started here, newest first (SIGTERM, then SIGKILL)."""
        while self._processes:
            self._processes.pop().stop(grace)
        self._server = None

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- internals --------------------------------------------------------

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def _spawn(self, name: str, argv: Sequence[str]) -> _Process:
        process = _Process(name, argv, self.workdir / "logs" / f"{name}.log")
        self._processes.append(process)
        return process

    def _admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return context

    def _start_etcd(self, bin_dir: Path, deadline: float) -> str:
        client_port, peer_port = free_ports(2)
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        process = self._spawn("etcd", [
            str(bin_dir / "etcd"),
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # throwaway data: trade durability for speed
        ])
        _wait_until("etcd /health", lambda: _http_status(f"{client}/health") == 200,
                    process, deadline)
        return client

    def _start_apiserver(self, bin_dir: Path, etcd_url: str, deadline: float) -> None:
        (port,) = free_ports(1)
        server = f"https://127.0.0.1:{port}"
        process = self._spawn("kube-apiserver", [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}",
            f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=RBAC",
            # No token mounting into pods: nothing runs pods here (as in envtest).
            "--disable-admission-plugins=ServiceAccount",
            f"--service-account-issuer={server}/",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            "--allow-privileged=true",
            # The default reconciler rejects a loopback address for the
            # `kubernetes` Endpoints and logs that every 10 s; nothing here
            # needs those endpoints (the Service itself is still created).
            "--endpoint-reconciler-type=none",
        ])
        context = self._admin_context()
        _wait_until("kube-apiserver /readyz",
                    lambda: _http_status(f"{server}/readyz", context) == 200, process, deadline)
        self._server = server

    def _start_controller_manager(self, bin_dir: Path, deadline: float) -> None:
        (port,) = free_ports(1)
        kubeconfig = str(self.kubeconfig)
        process = self._spawn("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # The apiserver has no front-proxy (requestheader) CA; looking it up
            # only yields a stream of "missing content for CA bundle" errors.
            "--authentication-skip-lookup=true",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            # Lets the CSR signer work, so CertificateSigningRequests behave too.
            f"--cluster-signing-cert-file={self.pki / 'ca.crt'}",
            f"--cluster-signing-key-file={self.pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--controllers=*," + ",".join(f"-{name}" for name in DISABLED_CONTROLLERS),
            "--leader-elect=false",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",  # self-signed serving cert
        ])
        # Its serving cert is self-signed and /healthz needs no credentials,
        # so this loopback-only health probe skips verification.
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        _wait_until("kube-controller-manager /healthz",
                    lambda: _http_status(f"https://127.0.0.1:{port}/healthz", insecure) == 200,
                    process, deadline)
        # The serviceaccount controller creating `default` proves controllers run.
        context = self._admin_context()
        sa_url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        _wait_until("the default ServiceAccount (controllers running)",
                    lambda: _http_status(sa_url, context) == 200, process, deadline)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_up(workdir: Path, timeout: float) -> int:
    control_plane = ControlPlane(workdir)
    started = time.monotonic()
    # SIGTERM takes the same clean shutdown path as Ctrl-C; SIGINT is set
    # explicitly because shells start background jobs with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_keyboard_interrupt)
    try:
        control_plane.start(timeout=timeout)
        _say(f"control plane up in {time.monotonic() - started:.1f}s at {control_plane.server}; "
             "Ctrl-C to stop")
        print(control_plane.kubeconfig, flush=True)
        while True:
            control_plane.check_alive()  # surface a crash instead of idling silently
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        control_plane.stop()
        _say("control plane stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantstore_dev.controlplane",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or locate the binaries and print their directory")
    commands.add_parser("helm", help="build or locate helm and print its path")
    commands.add_parser("kstatus", help="build or locate kstatus (cli-utils' status library) and print its path")
    commands.add_parser("seaweedfs", help="build or locate SeaweedFS's weed (the tests' S3) and print its path")
    commands.add_parser("jaeger", help="build or locate Jaeger (the trace tests' backend) and print its path")
    up = commands.add_parser("up", help="start a control plane and run until SIGINT/SIGTERM")
    up.add_argument("workdir", type=Path)
    up.add_argument("--timeout", type=float, default=120, help="start-up timeout in seconds")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_binaries())
            return 0
        if args.command == "helm":
            print(ensure_helm())
            return 0
        if args.command == "kstatus":
            print(ensure_kstatus())
            return 0
        if args.command == "seaweedfs":
            print(ensure_seaweedfs())
            return 0
        if args.command == "jaeger":
            print(ensure_jaeger())
            return 0
        return _cmd_up(args.workdir, args.timeout)
    except ControlPlaneError as error:
        _say(str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
