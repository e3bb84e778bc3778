"""manifests/: the kustomize base and every example pass the real API server's validation (server-side dry run)."""
from __future__ import annotations

import subprocess

import pytest

from tenantstore_dev.environment import REPO_ROOT, Kubectl

MANIFESTS = REPO_ROOT / "manifests"
EXAMPLES = sorted((MANIFESTS / "examples").glob("*.yaml"))


def test_the_kustomize_base_is_accepted(kubectl: Kubectl) -> None:
    built = subprocess.run(["kubectl", "kustomize", str(MANIFESTS / "base")], capture_output=True, text=True,
                           check=True).stdout
    # Server-side apply, as Argo CD (ServerSideApply=true) and Flux do: the CRDs are too large for the
    # client-side last-applied annotation.
    output = kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=built)
    for expected in ("namespace/tenantstore-system", "customresourcedefinition.apiextensions.k8s.io/tenantstores",
                     "clusterrole.rbac.authorization.k8s.io/tenantstore-operator", "deployment.apps/tenantstore-operator",
                     "service/tenantstore-operator-metrics", "serviceaccount/tenantstore-operator"):
        assert expected in output, output


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_is_accepted(kubectl: Kubectl, example: object) -> None:
    # The TenantStores live in the example namespace, which a dry run alone would not create.
    kubectl.apply(MANIFESTS / "examples" / "namespace-customers.yaml")
    output = kubectl("apply", "--dry-run=server", "-f", str(example))
    assert "(server dry run)" in output
