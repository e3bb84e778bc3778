"""Query insights: the p95 estimate, which statement texts may be shown, and the series they become."""
from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tenantstore import insights, metrics
from tenantstore.insights import Statement


def test_the_p95_estimate_is_the_mixture_of_the_shapes_weighted_by_calls() -> None:
    rng = random.Random(7)
    shapes = [Statement("SELECT 1", 900, 2.0, 0.5, 900), Statement("SELECT 2", 100, 40.0, 10.0, 100)]
    samples = sorted(rng.gauss(s.mean_ms, s.stddev_ms) for s in shapes for _ in range(s.calls * 20))
    empirical = samples[int(len(samples) * 0.95)]
    assert insights.estimated_percentile(shapes) == pytest.approx(empirical, rel=0.1)
    # Every call alike: the estimate is that time.
    assert insights.estimated_percentile([Statement("SELECT 1", 10, 3.0, 0.0, 10)]) == pytest.approx(3.0)
    assert insights.estimated_percentile([]) == 0.0


@pytest.mark.parametrize("text, shown", [
    ("SELECT id FROM t WHERE id = $1", "SELECT id FROM t WHERE id = $1"),
    ("  with x as (select $1)\n   select * from x", "with x as (select $1) select * from x"),
    ("INSERT INTO t VALUES ($1, $2)", "INSERT INTO t VALUES ($1, $2)"),
    ("ALTER ROLE tenant_acme PASSWORD 'hunter2'", None),  # utility statements are kept verbatim
    ("SET application_name = 'mine'", None),
    ("<insufficient privilege>", None),
    ("COPY t FROM STDIN", None),
    ('SELECT * FROM "\x1b]0;owned\x07\u202etxt"', 'SELECT * FROM "\\x1b]0;owned\\x07\\x202etxt"'),
])
def test_only_normalized_statements_are_shown(text: str, shown: str | None) -> None:
    assert insights.shown(text) == shown


def test_a_summary_keeps_the_slowest_shown_shapes_and_counts_every_call() -> None:
    rows = [Statement(f"SELECT {n} FROM t WHERE a = $1", 10, float(n), 0.0, 10) for n in range(1, 8)]
    rows.append(Statement("ALTER ROLE x PASSWORD 'secret'", 1, 500.0, 0.0, 0))
    found = insights.summarize(rows)
    assert found.calls == 71 and found.rows == 70
    assert [shape.statement for shape in found.slowest] == [f"SELECT {n} FROM t WHERE a = $1" for n in (7, 6, 5, 4, 3)]
    assert "secret" not in repr(found.to_status())
    long = insights.summarize([Statement("SELECT " + "x, " * 400 + "y FROM t", 1, 1.0, 0.0, 1)])
    assert len(long.slowest[0].statement) == insights.SHAPE_CHARACTERS


def test_a_tenants_insights_become_its_query_series() -> None:
    series = metrics.TenantSeries()
    registry = CollectorRegistry()
    registry.register(series)
    body = {"metadata": {"name": "acme", "namespace": "customers", "uid": "u1"},
            "spec": {"tenantId": "acme", "tier": "pro"},
            "status": {"storeClassName": "standard", "phase": "Ready",
                       "queries": {"calls": 42, "meanSeconds": 0.002, "p95Seconds": 0.011, "rows": 40, "slowest": []}}}
    series.observe_tenant(body)
    text = generate_latest(registry).decode()
    labels = 'namespace="customers",storeclass="standard",tenant="acme",tier="pro"'
    assert f"tenantstore_tenant_queries_total{{{labels}}} 42.0" in text
    assert f"tenantstore_tenant_query_duration_seconds_mean{{{labels}}} 0.002" in text
    assert f"tenantstore_tenant_query_duration_seconds_p95{{{labels}}} 0.011" in text
