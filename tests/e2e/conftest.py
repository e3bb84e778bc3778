"""End-to-end fixtures: a real control plane, a real Postgres, and the operator as its own process."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_kit import DEFAULT_CLASS, ISOLATED_PREFIX, store_class

from tenantstore_dev.environment import Kubectl, LocalEnvironment, OperatorProcess

@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    environment = LocalEnvironment(Path(tmp_path_factory.mktemp("e2e")))
    environment.start()
    yield environment
    environment.stop()


@pytest.fixture(scope="session")
def kubectl(env: LocalEnvironment) -> Kubectl:
    assert env.kubectl is not None
    return env.kubectl


@pytest.fixture(scope="session")
def default_class(kubectl: Kubectl) -> str:
    kubectl.apply(store_class(DEFAULT_CLASS, default=True))
    return DEFAULT_CLASS


@pytest.fixture(scope="session")
def operator(env: LocalEnvironment, default_class: str) -> Iterator[OperatorProcess]:
    # Every namespace but the isolated ones, where tests run operators of their own (leader election, the
    # chart's RBAC): two operators reconciling the same TenantStore would fight.
    # Usage is measured every second so quota tests see enforcement quickly (the default is 60 s).
    # Small migration batches make a copy long enough for the test that interrupts one.
    # Tenants are verified against their backends every 2 s so drift tests see repairs quickly (default 60 s).
    # Costs (classes with spec.pricing) are brought up to date at every measurement (default every 15 min), and
    # search probes (classes with spec.slo) run every second (default 30 s).
    process = env.operator(extra_args=["--namespace", f"!{ISOLATED_PREFIX}*", "--usage-interval", "1",
                                       "--migration-batch", "100", "--verify-interval", "2",
                                       "--retention-interval", "2", "--cost-interval", "1",
                                       "--probe-interval", "1"])
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("_", "-").lower()[:50].strip("-")
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed end-to-end test's report carries what the operator logged about the test's namespace."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    operator, namespace = funcargs.get("operator"), funcargs.get("namespace")
    if report.failed and isinstance(operator, OperatorProcess) and isinstance(namespace, str):
        lines = [line for line in operator.log_since_start().splitlines() if namespace in line]
        report.sections.append((f"operator log about {namespace}", "\n".join(lines[-80:]) or "(nothing)"))
