"""The Helm chart: lint, template, install/upgrade/uninstall on the real API server, and its RBAC proven twice:
by `kubectl auth can-i` as the chart's ServiceAccount, and by running the operator with that identity.

The operator runs here as its own process with a ServiceAccount token (no kubelet runs the chart's pods). It
only watches namespaces under ISOLATED_PREFIX, which the shared `operator` fixture leaves alone.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kit import ISOLATED_PREFIX, tenant_store, wait_for_condition, wait_until_gone

from tenantstore_dev.controlplane import ensure_helm
from tenantstore_dev.environment import REPO_ROOT, Kubectl, LocalEnvironment, OperatorProcess, wait_for

CHART = REPO_ROOT / "charts" / "tenantstore-operator"
RELEASE = "tenantstore-operator"
RELEASE_NAMESPACE = f"{ISOLATED_PREFIX}chart"
TENANT_NAMESPACE = f"{ISOLATED_PREFIX}rbac"
SERVICE_ACCOUNT = RELEASE  # the full name: the release name already contains the chart name
ALL_OPTIONS = ["networkPolicy.enabled=true", "metrics.serviceMonitor.enabled=true",
               "metrics.prometheusRule.enabled=true", "grafanaDashboard.enabled=true", "storeClass.create=true",
               "storeClass.name=chart-rendered", "storeClass.default=false", "postgres.enabled=true"]
DEFAULT_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"}
# Exactly what the operator calls (Kopf and tenantstore.kube), cluster-wide mode.
CLUSTER_RULES = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
    {"apiGroups": ["tenancy.dev"], "resources": ["storeclasses"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["tenancy.dev"], "resources": ["storeclasses/status"], "verbs": ["patch"]},
    {"apiGroups": ["tenancy.dev"], "resources": ["tenantstores"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["tenancy.dev"], "resources": ["tenantstores/status"], "verbs": ["patch"]},
    {"apiGroups": ["tenancy.dev"], "resources": ["tenantstoreexports"],
     "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": ["tenancy.dev"], "resources": ["tenantstoreexports/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
PERMISSION_PROBLEMS = ("Forbidden", "forbidden", "APIForbiddenError", "Not enough permissions")


@dataclass
class Helm:
    binary: Path
    home: Path
    kubeconfig: Path | None = None

    def __call__(self, *args: str) -> str:
        env = {**os.environ, "HELM_CACHE_HOME": str(self.home / "cache"), "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data")}
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        result = subprocess.run([str(self.binary), *args], env=env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise HelmError(args, result.stdout + result.stderr)
        return result.stdout + result.stderr

    def template(self, *values: str, namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
        sets = [arg for value in values for arg in ("--set", value)]
        return [doc for doc in yaml.safe_load_all(self("template", RELEASE, str(CHART), "-n", namespace, *sets))
                if doc]


class HelmError(RuntimeError):
    def __init__(self, args: tuple[str, ...], output: str):
        super().__init__(f"helm {' '.join(args)} failed:\n{output}")
        self.output = output


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(ensure_helm(), tmp_path_factory.mktemp("helm"))  # built once from its Go module, then cached


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# ---- lint and template (no cluster needed) -------------------------------------------------------------------

def test_lint_is_clean(helm: Helm) -> None:
    for values in ([], ALL_OPTIONS, ["watchNamespaces={a,b}", "rbac.secretNamespaces={c}"]):
        output = helm("lint", str(CHART), "--strict", *[arg for value in values for arg in ("--set", value)])
        assert "1 chart(s) linted, 0 chart(s) failed" in output
        assert "[WARNING]" not in output and "[ERROR]" not in output and "[INFO]" not in output, output


def test_template_renders_hardened_objects(helm: Helm) -> None:
    docs = helm.template()
    assert {doc["kind"] for doc in docs} == DEFAULT_KINDS
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == RELEASE_NAMESPACE, doc["metadata"]

    deployment = only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(docs)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert "--leader-elect" in container["args"] and "--metrics-port=9090" in container["args"]
    assert only(docs, "Service")["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics",
                                                      "protocol": "TCP"}]
    assert only(docs, "ClusterRole")["rules"] == CLUSTER_RULES
    lease_rules = only(docs, "Role")["rules"]
    assert lease_rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["tenantstore-operator"],
         "verbs": ["get", "update"]}]


def test_template_with_shards_makes_every_replica_active(helm: Helm) -> None:
    docs = helm.template("shards=8", "replicaCount=3", "leaderElection.enabled=false")
    args = operator_container(docs)["args"]
    assert "--shards=8" in args and "--leader-elect" not in args
    assert {"--leader-elect-namespace=$(POD_NAMESPACE)", "--leader-elect-lease=tenantstore-operator",
            "--lease-duration=15"} <= set(args)
    assert only(docs, "Deployment")["spec"]["replicas"] == 3
    # Member Leases are named after each replica, so no resourceNames; listing them is how replicas see each other.
    assert only(docs, "Role")["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                            "verbs": ["create", "delete", "get", "list", "update"]}]


def test_template_with_every_option(helm: Helm) -> None:
    docs = helm.template(*ALL_OPTIONS)
    kinds = [doc["kind"] for doc in docs]
    assert set(kinds) == DEFAULT_KINDS | {"NetworkPolicy", "ServiceMonitor", "PrometheusRule", "ConfigMap",
                                          "StoreClass", "StatefulSet", "Secret"}
    for workload in (only(docs, "Deployment"), only(docs, "StatefulSet")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"] and container["resources"]["limits"]

    rules = only(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert rules and all(rule["alert"] and rule["expr"] for rule in rules)
    dashboard = only(docs, "ConfigMap", f"{RELEASE}-dashboard")["data"]["tenantstore-operator.json"]
    assert json.loads(dashboard)["title"] == "TenantStore Operator"
    store_class = only(docs, "StoreClass")
    assert store_class["spec"]["postgres"]["adminSecretRef"] == {
        "name": f"{RELEASE}-postgres-admin", "namespace": RELEASE_NAMESPACE, "key": "uri"}
    secret = only(docs, "Secret")
    assert secret["stringData"]["uri"].startswith(f"postgresql://tenant_admin:{secret['stringData']['password']}@")
    assert only(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    ingress = only(docs, "NetworkPolicy")["spec"]["ingress"]
    assert [rule["ports"][0]["port"] for rule in ingress] == ["health", "metrics"]


@pytest.mark.parametrize(("value", "message"), [
    ("replicaCount=-1", "at '/replicaCount': minimum"),
    ("replicas=3", "additional properties 'replicas' not allowed"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
    ("watchNamespaces[0]=Not_A_Namespace", "at '/watchNamespaces/0'"),
    ("metrics.port=70000", "at '/metrics/port': maximum"),
    ("leaderElection.enabled=false", "replicaCount > 1 needs leaderElection.enabled=true"),
    ("shards=-1", "at '/shards': minimum"),
    ("leaderElection.renewDeadline=30", "leaseDuration > renewDeadline > retryPeriod"),
    ("health.port=9090", "health.port and metrics.port must differ"),
])
def test_bad_values_are_refused_with_a_clear_message(helm: Helm, value: str, message: str) -> None:
    with pytest.raises(HelmError) as refused:
        helm.template(value)
    assert message in refused.value.output


def test_kustomize_base_matches_the_chart(helm: Helm) -> None:
    """manifests/base is the chart's default rendering for namespace tenantstore-system: RBAC and container alike."""
    chart = helm.template(namespace="tenantstore-system")
    base = [doc for doc in yaml.safe_load_all(subprocess.run(
        ["kubectl", "kustomize", str(REPO_ROOT / "manifests" / "base")], capture_output=True, text=True,
        check=True).stdout) if doc]
    for kind in ("ClusterRole", "Role"):
        assert only(base, kind)["rules"] == only(chart, kind)["rules"]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        assert only(base, kind)["subjects"] == only(chart, kind)["subjects"]
    assert operator_container(base) == operator_container(chart)
    assert only(base, "Deployment")["spec"]["replicas"] == 2
    assert {doc["kind"] for doc in base} == DEFAULT_KINDS | {"Namespace", "CustomResourceDefinition"}


# ---- on the real API server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_helm(helm: Helm, env: LocalEnvironment) -> Helm:
    return Helm(helm.binary, helm.home, env.control_plane.kubeconfig)


@pytest.fixture(scope="module")
def release(cluster_helm: Helm, kubectl: Kubectl, default_class: str) -> Iterator[str]:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TENANT_NAMESPACE}})
    cluster_helm("install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace")
    yield RELEASE
    cluster_helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--ignore-not-found", "--wait")


def test_the_rendered_objects_pass_server_side_validation(helm: Helm, kubectl: Kubectl) -> None:
    # The Prometheus Operator's kinds are not installed here; everything else is checked by the API server,
    # the StoreClass against its CRD schema.
    docs = [doc for doc in helm.template(*ALL_OPTIONS, namespace="tenantstore-system")
            if doc["kind"] not in ("ServiceMonitor", "PrometheusRule")]
    kubectl.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), "--dry-run=server")


def test_install_creates_the_objects(kubectl: Kubectl, release: str) -> None:
    selector = f"app.kubernetes.io/instance={release}"
    names = kubectl("get", "deployment,service,serviceaccount,role,rolebinding", "-n", RELEASE_NAMESPACE,
                    "-l", selector, "-o", "name").split()
    assert sorted(names) == sorted([f"deployment.apps/{RELEASE}", f"service/{RELEASE}-metrics",
                                    f"serviceaccount/{RELEASE}", f"role.rbac.authorization.k8s.io/{RELEASE}",
                                    f"rolebinding.rbac.authorization.k8s.io/{RELEASE}"])
    assert kubectl("get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name").split() == [
        f"clusterrole.rbac.authorization.k8s.io/{RELEASE}", f"clusterrolebinding.rbac.authorization.k8s.io/{RELEASE}"]
    deployment = kubectl.get("deployment", RELEASE, RELEASE_NAMESPACE)
    assert deployment["spec"]["replicas"] == 2
    assert not deployment.get("status", {}).get("readyReplicas")  # no kubelet here: pods never run


def can_i(kubectl: Kubectl, verb: str, resource: str, *extra: str) -> bool:
    identity = f"system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}"
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubectl.kubeconfig), "auth", "can-i", verb, resource,
                             f"--as={identity}", *extra], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


ANYWHERE = ("--all-namespaces",)
IN_TENANTS = ("-n", TENANT_NAMESPACE)
IN_RELEASE = ("-n", RELEASE_NAMESPACE)
NEEDED = [
    ("list", "tenantstores.tenancy.dev", *ANYWHERE), ("watch", "tenantstores.tenancy.dev", *ANYWHERE),
    ("get", "tenantstores.tenancy.dev", *IN_TENANTS),  # the owner of a tenant Secret edited by hand
    ("patch", "tenantstores.tenancy.dev", *IN_TENANTS),
    ("patch", "tenantstores.tenancy.dev", "--subresource=status", *IN_TENANTS),
    # TenantStoreExports run; a deletionPolicy Export tenant's final export is created by the operator.
    ("list", "tenantstoreexports.tenancy.dev", *ANYWHERE), ("watch", "tenantstoreexports.tenancy.dev", *ANYWHERE),
    ("create", "tenantstoreexports.tenancy.dev", *IN_TENANTS), ("get", "tenantstoreexports.tenancy.dev", *IN_TENANTS),
    ("patch", "tenantstoreexports.tenancy.dev", "--subresource=status", *IN_TENANTS),
    ("list", "storeclasses.tenancy.dev"), ("watch", "storeclasses.tenancy.dev"), ("patch", "storeclasses.tenancy.dev"),
    ("patch", "storeclasses.tenancy.dev", "--subresource=status"),
    # Tenant Secrets are watched (label-selected) so one deleted or edited by hand is repaired at once.
    *[(verb, "secrets", *IN_TENANTS) for verb in ("get", "list", "watch", "create", "update", "patch", "delete")],
    ("get", "secrets/pg-admin", "-n", "tenantstore-system"),
    ("create", "events", *IN_TENANTS), ("list", "customresourcedefinitions"), ("watch", "customresourcedefinitions"),
    ("get", "namespaces"),  # labels, for StoreClasses with spec.allowedNamespaces
    ("create", "leases.coordination.k8s.io", *IN_RELEASE),
    ("get", "leases.coordination.k8s.io/tenantstore-operator", *IN_RELEASE),
    ("update", "leases.coordination.k8s.io/tenantstore-operator", *IN_RELEASE),
]
REFUSED = [
    ("*", "*", *ANYWHERE), ("delete", "namespaces"), ("create", "namespaces"), ("list", "namespaces"),
    ("watch", "namespaces"), ("patch", "namespaces"), ("get", "pods", *IN_TENANTS),
    ("create", "pods", *IN_TENANTS), ("delete", "pods", *IN_RELEASE), ("get", "configmaps", *IN_RELEASE),
    ("create", "tenantstores.tenancy.dev", *IN_TENANTS), ("delete", "tenantstores.tenancy.dev", *IN_TENANTS),
    ("delete", "storeclasses.tenancy.dev"), ("update", "tenantstores.tenancy.dev", *IN_TENANTS),
    ("create", "customresourcedefinitions"), ("delete", "customresourcedefinitions"),
    ("create", "clusterrolebindings"), ("escalate", "clusterroles"), ("bind", "clusterroles"),
    ("impersonate", "serviceaccounts", *ANYWHERE), ("get", "nodes"), ("create", "deployments.apps", *IN_RELEASE),
    ("update", "leases.coordination.k8s.io/someone-else", *IN_RELEASE),
    ("get", "leases.coordination.k8s.io/tenantstore-operator", *IN_TENANTS),
    ("create", "serviceaccounts/token", *IN_RELEASE),
]


def test_rbac_allows_what_the_operator_needs_and_nothing_else(kubectl: Kubectl, release: str) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:  # ~50 independent kubectl calls
        allowed = dict(zip(NEEDED + REFUSED, pool.map(lambda check: can_i(kubectl, *check), NEEDED + REFUSED)))
    missing = [check for check in NEEDED if not allowed[check]]
    assert not missing, f"the chart's ServiceAccount may not: {missing}"
    excess = [check for check in REFUSED if allowed[check]]
    assert not excess, f"the chart's ServiceAccount may: {excess}"


def token_kubeconfig(env: LocalEnvironment, kubectl: Kubectl, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount, with a token from the TokenRequest API,
    like the projected token in a pod. Its namespace is the release namespace, as a pod's would be."""
    token = kubectl("create", "token", SERVICE_ACCOUNT, "-n", RELEASE_NAMESPACE, "--duration=1h").strip()
    ca = base64.b64encode((env.control_plane.pki / "ca.crt").read_bytes()).decode()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "devcluster", "cluster": {"server": env.control_plane.server,
                                                        "certificate-authority-data": ca}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "devcluster", "user": "operator",
                                                      "namespace": RELEASE_NAMESPACE}}]}))
    path.chmod(0o600)
    return path


def chart_args(kubectl: Kubectl) -> list[str]:
    """The operator's arguments as the installed Deployment says, with what the kubelet would substitute."""
    container = kubectl.get("deployment", RELEASE, RELEASE_NAMESPACE)["spec"]["template"]["spec"]["containers"][0]
    # Ports are the test's own (free loopback ports): several operators share this machine.
    return [arg.replace("$(POD_NAMESPACE)", RELEASE_NAMESPACE) for arg in container["args"]
            if not arg.startswith(("--liveness=", "--metrics-port="))]


def provision_and_delete(kubectl: Kubectl, operator: OperatorProcess, name: str) -> None:
    kubectl.apply(tenant_store(name, TENANT_NAMESPACE, f"iso-{name}"))
    wait_for_condition(kubectl, TENANT_NAMESPACE, name, "Ready", "True")
    assert kubectl.get("secret", f"{name}-store", TENANT_NAMESPACE) is not None
    kubectl("delete", "tenantstore", name, "-n", TENANT_NAMESPACE, "--wait=false")
    wait_until_gone(kubectl, "tenantstore", name, TENANT_NAMESPACE)
    assert kubectl.get("secret", f"{name}-store", TENANT_NAMESPACE) is None
    log = operator.log_since_start()
    assert f"[{TENANT_NAMESPACE}/{name}]" in log


@contextlib.contextmanager
def namespace_reader(kubectl: Kubectl) -> Iterator[None]:
    """Test-only grant: list/watch Namespaces, which Kopf needs once it is given --namespace, not in the chart's
    cluster-wide mode. Without it Kopf retries the listing for about a minute, then falls back to the exact name."""
    name = f"{ISOLATED_PREFIX}test-namespace-reader"
    kubectl.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
                   "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]})
    kubectl.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                   "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": RELEASE_NAMESPACE}]})
    try:
        yield
    finally:
        kubectl("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found")


def test_the_operator_runs_with_the_chart_identity(env: LocalEnvironment, kubectl: Kubectl, release: str,
                                                   tmp_path: Path) -> None:
    """Cluster-wide RBAC (the default), the Deployment's arguments, a ServiceAccount token. The process watches only
    TENANT_NAMESPACE so it never meets the shared operator's tenants; that restriction alone needs the
    namespace listing granted above. Cluster-scope list/watch of TenantStores is checked by `can-i` instead."""
    with namespace_reader(kubectl):
        operator = env.operator("operator-chart-rbac.log", [*chart_args(kubectl), "--namespace", TENANT_NAMESPACE],
                                kubeconfig=token_kubeconfig(env, kubectl, tmp_path / "kubeconfig"))
        operator.start()
        try:
            wait_for("the chart's operator to take its Lease", lambda: (kubectl.get(
                "lease", "tenantstore-operator", RELEASE_NAMESPACE) or {}).get("spec", {}).get("holderIdentity"))
            provision_and_delete(kubectl, operator, "rbac-clusterwide")
        finally:
            operator.stop()
    problems = [line for line in operator.log_since_start().splitlines() if any(p in line for p in PERMISSION_PROBLEMS)]
    assert not problems, "\n".join(problems)


def test_upgrade_to_namespaced_mode_and_more_replicas(env: LocalEnvironment, cluster_helm: Helm, kubectl: Kubectl,
                                                      release: str, tmp_path: Path) -> None:
    # The StoreClasses here name Secrets in tenantstore-system: in namespaced mode that namespace is listed.
    cluster_helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--set", "replicaCount=3",
                 "--set", "networkPolicy.enabled=true", "--set", f"watchNamespaces={{{TENANT_NAMESPACE}}}",
                 "--set", "rbac.secretNamespaces={tenantstore-system}")
    deployment = kubectl.get("deployment", RELEASE, RELEASE_NAMESPACE)
    assert deployment["spec"]["replicas"] == 3
    assert f"--namespace={TENANT_NAMESPACE}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert kubectl.get("networkpolicy", RELEASE, RELEASE_NAMESPACE) is not None

    # Secrets and TenantStores only where it is told to look; cluster-wide access is gone.
    for check in [("create", "secrets", *IN_TENANTS), ("list", "tenantstores.tenancy.dev", *IN_TENANTS),
                  ("get", "secrets/pg-admin", "-n", "tenantstore-system"), ("list", "namespaces")]:
        assert can_i(kubectl, *check), check
    for check in [("get", "secrets", "-n", "tiers"), ("create", "secrets", "-n", "default"),
                  ("create", "secrets", "-n", "tenantstore-system"), ("list", "tenantstores.tenancy.dev", *ANYWHERE),
                  ("create", "events", "-n", "default")]:
        assert not can_i(kubectl, *check), check

    # Exactly the Deployment's arguments now, and not one permission warning in the log.
    operator = env.operator("operator-chart-namespaced.log", chart_args(kubectl),
                            kubeconfig=token_kubeconfig(env, kubectl, tmp_path / "kubeconfig"))
    operator.start()
    try:
        provision_and_delete(kubectl, operator, "rbac-namespaced")
    finally:
        operator.stop()
    problems = [line for line in operator.log_since_start().splitlines() if any(p in line for p in PERMISSION_PROBLEMS)]
    assert not problems, "\n".join(problems)


def test_uninstall_leaves_no_operator_object_but_the_crds(cluster_helm: Helm, kubectl: Kubectl, release: str) -> None:
    cluster_helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait")
    selector = f"app.kubernetes.io/instance={release}"
    for namespace in (RELEASE_NAMESPACE, TENANT_NAMESPACE):
        left = kubectl("get", "all,serviceaccount,role,rolebinding,networkpolicy,configmap,secret", "-n", namespace,
                       "-l", selector, "-o", "name")
        assert left.split() == [], left
    assert kubectl("get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name").split() == []
    assert kubectl.get("crd", "tenantstores.tenancy.dev") is not None  # Helm never deletes CRDs
    assert kubectl.get("crd", "storeclasses.tenancy.dev") is not None
