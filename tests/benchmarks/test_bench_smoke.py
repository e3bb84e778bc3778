"""The provisioning benchmark (bench/provisioning.py) at N = 10, so it cannot rot.

It runs in a local environment of its own (control plane, Postgres, the operator), never the e2e tests',
and checks that the JSON carries every figure for the operator and the floor, not how fast anything was.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 10
# Every figure, for the operator and the floor alike (the floor's restart and verify figures are 0).
REQUIRED_FIGURES = (
    "provision.all_ready_seconds", "provision.time_to_ready.p50", "provision.time_to_ready.p95",
    "provision.time_to_ready.p99", "process.cpu_seconds", "process.peak_rss_mb",
    "provision.api_requests_per_tenant", "provision.api_writes_per_tenant", "provision.sql_statements_per_tenant",
    "provision.ddl_per_tenant", "restart.idle_seconds", "restart.ddl_statements", "restart.api_writes",
    "restart.tenant_api_writes", "delete.all_gone_seconds", "delete.residue_zero_seconds", "delete.residue_total",
    "verify.seconds", "verify.tenants", "verify.sql_statements", "verify.sql_statements_per_tenant",
    "verify.api_requests", "verify.api_writes", "verify.logins", "verify.logins_per_tenant", "verify.cpu_seconds",
)


@pytest.mark.e2e
def test_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # A short usage interval: before its restart the operator run waits for every tenant's first measurement.
    # A short verification interval: after the restart the operator run waits for its second pass.
    # The environment's own directory stays the benchmark's (a short /tmp path: Postgres's socket path is limited).
    command = [sys.executable, "-m", "bench.provisioning", "--n", str(N), "--out", str(out), "--usage-interval", "3",
               "--verify-interval", "20", "--quiet", "1", "--after-idle", "1",
               "--phase-timeout", "120"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"benchmark failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    report = json.loads((out / f"provisioning-{N}.json").read_text())
    assert report["n"] == N
    assert sum(report["tiers"].values()) == N and all(report["tiers"].values())
    assert (report["runs"], report["floor_not_run"]) == (["operator", "floor"], None)
    for kind in ("operator", "floor"):
        assert "error" not in report[kind], report[kind]["error"]

    rows = {row["figure"]: row for row in report["figures"]}
    assert set(REQUIRED_FIGURES) <= set(rows), set(REQUIRED_FIGURES) - set(rows)
    floor_has_no = {"restart.first_usage_measurement_done_seconds"}  # there is no operator to restart
    for key, row in rows.items():
        for kind in ("operator", "floor"):
            if kind == "floor" and key in floor_has_no:
                continue
            value = row[kind]
            assert isinstance(value, (int, float)) and value >= 0, (key, kind, value)
        assert row["ratio"] is not None or key in floor_has_no, key
    # Correctness, not speed: every tenant was Ready, resumed, and nothing of them was left behind.
    assert report["operator"]["restart"]["resumed"] >= N
    assert rows["delete.residue_total"]["operator"] == 0 and rows["delete.residue_total"]["floor"] == 0
    assert rows["restart.tenant_api_writes"]["operator"] == 0
    # The verification pass checked every tenant, logged in once as each, found nothing and wrote nothing.
    verified = report["operator"]["verify"]
    assert rows["verify.tenants"]["operator"] == N and verified["adrift"] == 0, verified
    assert rows["verify.logins"]["operator"] == N, verified["connections_by_application"]
    assert rows["verify.api_writes"]["operator"] == 0, verified["api"]
    # Each usage pass is timed by the operator; the restarted process's first measured every tenant.
    restarted = report["operator"]["usage_passes"]["restarted"]
    assert restarted and restarted[0]["tenants"] == N and restarted[0]["seconds"] >= 0, restarted
    # The restart's figures hold that pass; its CPU is the operator's from idle on, when it began after idle.
    first = report["operator"]["restart"]["first_usage_pass"]
    assert first["tenants"] == N and (first["operator_cpu_seconds"] is not None) == first["began_after_idle"], first
    assert {target["target"] for target in report["targets"]}


def test_the_search_probe_benchmark_reports_its_figures(tmp_path: Path) -> None:
    """bench/search_probe.py at N = 12 (its own embedded Postgres, no control plane): every figure there, every
    tenant probed, none failed; no timing is checked."""
    command = [sys.executable, "-m", "bench.search_probe", "--n", "12", "--vectors", "5", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"benchmark failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    figures = json.loads((tmp_path / "search-probe-12.json").read_text())
    assert (figures["probes"], figures["failed"]) == (12, 0)
    assert set(figures["per_probe"]) == {"operator_cpu_ms", "postgres_cpu_ms", "wall_ms"}
    assert figures["probe_latency_seconds"]["p95"] is not None
    assert figures["tenant_query_latency_seconds"]["p50"] is not None
    assert set(figures["overhead_at_rate"]) == {"1", "2", "10"}
    assert "search-probe: n=12 probes=12 failed=0" in result.stdout


def test_the_query_benchmark_reports_the_isolation_overhead(tmp_path: Path) -> None:
    """bench/query.py, small (its own embedded Postgres): every kind (shared index, dedicated table, global index)
    measured in a fresh and a pooled session, tenant against floor; no timing is checked."""
    command = [sys.executable, "-m", "bench.query", "--n", "3", "--dedicated", "1", "--vectors", "50",
               "--global-vectors", "50", "--samples", "10", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"benchmark failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    figures = json.loads((tmp_path / "query-3.json").read_text())
    assert len(figures["kinds"]) == 3
    for modes in figures["kinds"].values():
        assert set(modes) == {"fresh", "pooled"}
        for figure in modes.values():
            for side in ("tenant_ms", "floor_ms", "overhead_ms", "ratio"):
                assert set(figure[side]) == {"p50", "p95", "p99"} and figure[side]["p95"] is not None
    assert result.stdout.count("query: ") == 6
