"""The alert rules pass promtool's unit tests, and the rules and dashboard only use metrics the operator serves."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tenantstore import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/tenantstore-operator/files/prometheus-rules.yaml"
DASHBOARD = ROOT / "charts/tenantstore-operator/files/grafana-dashboard.json"
MANIFEST_RULES = ROOT / "manifests/monitoring/prometheusrule.yaml"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make promtool` installs Debian's prometheus package"
    return found


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool(), "test", "rules", "prometheus-rules.test.yaml"], cwd=ROOT / "tests/alerts",
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_manifests_carry_the_charts_rules() -> None:
    assert yaml.safe_load(MANIFEST_RULES.read_text())["spec"] == yaml.safe_load(RULES.read_text())


def served_metric_names() -> set[str]:
    series = metrics.TenantSeries()
    series.observe_tenant({"metadata": {"name": "t", "namespace": "n"}, "spec": {"tenantId": "t"},
                           "status": {"phase": "Ready", "usage": {"documents": 1, "storageBytes": 1, "connections": 0,
                                                                  "dailyQueries": 0},
                                      "quotas": {"maxDocuments": 10},
                                      "queries": {"calls": 1, "meanSeconds": 0.001, "p95Seconds": 0.002}}})
    series.observe_store_class({"metadata": {"name": "c"}, "status": {"sharedIndexes": [
        {"name": "shared-3-cosine-1", "tenants": 1, "capacity": 100}]}})
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}
    names = {family.name + suffix for family in series.collect() for suffix in suffixes.get(family.type, ("",))}
    for family in metrics.REGISTRY.collect():  # labelled families have no samples until first observed
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names | {"up"}


def test_rules_and_dashboard_use_only_served_metrics() -> None:
    served = served_metric_names()
    expressions = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    expressions += [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]
                    for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b(tenantstore_[a-z_]+|up)\b", expr)}
    assert used and used <= served, used - served
