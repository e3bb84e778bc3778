"""A real Prometheus server (Debian's `prometheus` package, as promtool) scraping the running operator with the
shipped rules file: the per-tenant series exist with their documented labels, the quota alert goes pending when a
tenant passes 80 % of its document quota, and a deleted tenant's series go stale."""
from __future__ import annotations

import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kit import get_json, insert_vector, tenant_secret, tenant_store, wait_for_condition, wait_until_gone

from tenantstore_dev.environment import Kubectl, OperatorProcess, free_port, wait_for

RULES = Path(__file__).resolve().parents[2] / "charts/tenantstore-operator/files/prometheus-rules.yaml"


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        answer = get_json(f"{self.url}/api/v1/{path}", **params)
        assert answer["status"] == "success", answer
        return answer["data"]

    def series(self, expression: str) -> list[dict[str, Any]]:
        return self.api("query", query=expression)["result"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [alert for alert in self.api("alerts")["alerts"] if alert["labels"].get("alertname") == name]


@pytest.fixture
def prometheus(operator: OperatorProcess, tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make promtool` installs Debian's prometheus package"
    target = urllib.parse.urlparse(operator.metrics_url).netloc
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "tenantstore-operator", "static_configs": [{"targets": [target]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={address}"],
                               stdout=subprocess.DEVNULL, stderr=log)
    try:
        server = Prometheus(f"http://{address}")

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        wait_for("Prometheus to be ready", ready, timeout=30)
        wait_for("the operator to be scraped", lambda: any(
            t["health"] == "up" for t in server.api("targets")["activeTargets"]), timeout=30)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_a_live_prometheus_sees_the_tenant_its_quota_alert_and_its_end(
        kubectl: Kubectl, operator: OperatorProcess, prometheus: Prometheus, namespace: str) -> None:
    kubectl.apply(tenant_store("live", namespace, "live", tier="pro", quotas={"maxDocuments": 10},
                               quotaAction="Alert"))
    wait_for_condition(kubectl, namespace, "live", "Ready", "True")
    selector = f'{{tenant="live", namespace="{namespace}"}}'
    # The tenant's series once it is Ready, so the figures below are the provisioned tenant's.
    found = wait_for("the tenant's Ready series in Prometheus", lambda: [
        s for s in prometheus.series(f"tenantstore_tenant_ready{selector}") if s["value"][1] == "1"], timeout=60)
    labels = found[0]["metric"]
    assert {key: labels[key] for key in ("tenant", "namespace", "tier", "storeclass", "job")} == \
        {"tenant": "live", "namespace": namespace, "tier": "pro", "storeclass": "standard",
         "job": "tenantstore-operator"}
    assert found[0]["value"][1] == "1"

    secret = tenant_secret(kubectl, namespace, "live-store")
    for index in range(8):
        insert_vector(secret, f"doc-{index}")
    wait_for("8 documents in Prometheus", lambda: [
        s for s in prometheus.series(f"tenantstore_tenant_documents{selector}") if s["value"][1] == "8"], timeout=60)
    ratio = prometheus.series('tenantstore_tenant_quota_usage_ratio{tenant="live", resource="documents"}')
    assert float(ratio[0]["value"][1]) == 0.8
    alert = wait_for("TenantStoreQuotaAt80Percent to be pending", lambda: [
        a for a in prometheus.alerts("TenantStoreQuotaAt80Percent")
        if a["labels"].get("tenant") == "live" and a["state"] in ("pending", "firing")], timeout=60)[0]
    assert alert["labels"]["resource"] == "documents" and alert["labels"]["severity"] == "info"
    assert "Tenant live uses 80% of its documents quota" == alert["annotations"]["summary"]

    kubectl("delete", "tenantstore", "live", "-n", namespace)
    wait_until_gone(kubectl, "tenantstore", "live", namespace)
    wait_for("the deleted tenant's series to go stale", lambda: not prometheus.series(
        f"tenantstore_tenant_ready{selector}") and not prometheus.alerts("TenantStoreQuotaAt80Percent"), timeout=60)
