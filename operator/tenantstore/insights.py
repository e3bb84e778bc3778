"""Per-tenant query insights from pg_stat_statements: how many statements a tenant's roles ran, how long they took
(mean, and a p95 estimated from each statement shape's mean and spread), and its slowest statement shapes.

Only shapes pg_stat_statements normalizes are shown (SELECT, INSERT, UPDATE, DELETE, MERGE, WITH, VALUES, TABLE:
their constants are `$1`, `$2`, ...). Utility statements are kept verbatim by pg_stat_statements, and one such as
`ALTER ROLE ... PASSWORD '...'` would carry a secret, so they count in the figures but their text is never read
out.
"""
from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# In the statements the operator itself runs as a tenant (the isolation canary, the search probe: a column alias,
# or a comment inside a utility statement, since pg_stat_statements drops leading comments): they are the
# operator's, not the tenant's, and stay out of its insights.
OPERATOR_MARK = "tenantstore_operator"
SLOWEST = 5  # shapes kept per tenant
SHAPE_CHARACTERS = 300
NORMALIZED = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|MERGE|WITH|VALUES|TABLE)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Statement:
    """One row of pg_stat_statements: a statement shape run by one of the tenant's roles."""

    text: str
    calls: int
    mean_ms: float
    stddev_ms: float
    rows: int


@dataclasses.dataclass(frozen=True)
class Shape:
    statement: str
    calls: int
    mean_seconds: float

    def to_status(self) -> dict[str, Any]:
        return {"statement": self.statement, "calls": self.calls, "meanSeconds": self.mean_seconds}


@dataclasses.dataclass(frozen=True)
class QueryInsights:
    calls: int
    mean_seconds: float
    p95_seconds: float  # estimated (see estimated_percentile)
    rows: int
    slowest: tuple[Shape, ...] = ()

    def to_status(self) -> dict[str, Any]:
        return {"calls": self.calls, "meanSeconds": self.mean_seconds, "p95Seconds": self.p95_seconds,
                "rows": self.rows, "slowest": [shape.to_status() for shape in self.slowest]}


def shown(text: str) -> str | None:
    """The statement's text as it may be shown (whitespace collapsed, cut short), or None for a verbatim one.

    A tenant writes that text (a quoted identifier may hold any character): control and format characters are
    spelled out, so that printing a shape in a terminal cannot move its cursor or rewrite what it shows."""
    if not NORMALIZED.match(text):
        return None
    collapsed = "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) in ("Cc", "Cf") else c
                        for c in " ".join(text.split()))
    return collapsed if len(collapsed) <= SHAPE_CHARACTERS else collapsed[:SHAPE_CHARACTERS - 1] + "…"


def estimated_percentile(statements: Sequence[Statement], fraction: float = 0.95) -> float:
    """The execution time (ms) below which `fraction` of the calls fall, if each shape's times were normal with
    its mean and standard deviation (all pg_stat_statements keeps), weighted by its calls."""
    weighted = [s for s in statements if s.calls > 0]
    total = sum(s.calls for s in weighted)
    if not total:
        return 0.0

    def below(ms: float) -> float:
        share = 0.0
        for s in weighted:
            if s.stddev_ms <= 0:
                share += s.calls if ms >= s.mean_ms else 0
            else:
                share += s.calls * 0.5 * (1 + math.erf((ms - s.mean_ms) / (s.stddev_ms * math.sqrt(2))))
        return share / total

    low, high = 0.0, max(s.mean_ms + 6 * s.stddev_ms for s in weighted)
    for _ in range(60):  # bisection to well under a microsecond
        middle = (low + high) / 2
        low, high = (middle, high) if below(middle) < fraction else (low, middle)
    return high


def summarize(statements: Iterable[Statement]) -> QueryInsights:
    rows = list(statements)
    calls = sum(s.calls for s in rows)
    mean_ms = sum(s.mean_ms * s.calls for s in rows) / calls if calls else 0.0
    slowest = sorted(((text, s) for s in rows if (text := shown(s.text)) is not None),
                     key=lambda pair: (-pair[1].mean_ms, pair[0]))[:SLOWEST]
    return QueryInsights(calls=calls, mean_seconds=round(mean_ms / 1000, 6),
                         p95_seconds=round(estimated_percentile(rows) / 1000, 6), rows=sum(s.rows for s in rows),
                         slowest=tuple(Shape(text, s.calls, round(s.mean_ms / 1000, 6)) for text, s in slowest))


def same(insights: QueryInsights | None, raw: Mapping[str, Any] | None) -> bool:
    return (insights.to_status() if insights else None) == (dict(raw) if raw else None)


def report(name: str, raw: Mapping[str, Any] | None) -> str:
    """A tenant's insights as text: the figures, then its slowest statement shapes."""
    if not raw:
        return f"{name}: no query insights yet (they need pg_stat_statements, and come with the usage measurement)"
    lines = [f"{name}: {int(raw.get('calls', 0)):,} statements, mean {float(raw.get('meanSeconds', 0)) * 1000:.2f} ms,"
             f" p95 ≈ {float(raw.get('p95Seconds', 0)) * 1000:.2f} ms, {int(raw.get('rows', 0)):,} rows"]
    slowest = raw.get("slowest") or []
    if slowest:
        lines.append(f"{'MEAN ms':>10}  {'CALLS':>8}  STATEMENT")
        lines += [f"{float(shape.get('meanSeconds', 0)) * 1000:>10.2f}  {int(shape.get('calls', 0)):>8,}  "
                  f"{shape.get('statement', '')}" for shape in slowest]
    else:
        lines.append("no statement shapes to show (the admin role needs pg_read_all_stats to read them)")
    return "\n".join(lines)
