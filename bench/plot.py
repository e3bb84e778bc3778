"""The picture: time until all Ready and peak RSS against N, operator and floor, from provisioning-*.json.

    python -m bench.plot [RESULTS_DIR]     # default bench/results; writes RESULTS_DIR/provisioning.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET_READY = (1000, 30.0)   # 1,000 Ready within 30 s
TARGET_RSS = (5000, 250.0)    # peak RSS <= 250 MB at N = 5,000


def load(results: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(results.glob("provisioning-*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and "n" in data and "operator" in data:
            found.append(data)
    return sorted(found, key=lambda data: data["n"])


def plot(results: Path) -> Path | None:
    runs = load(results)
    if not runs:
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ns = [run["n"] for run in runs]
    figure, (ready_axes, rss_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axes, key, title, unit, target in (
            (ready_axes, ("provision", "all_ready_seconds"), "N TenantStores created at once: time until all Ready",
             "seconds", TARGET_READY),
            (rss_axes, ("process", "peak_rss_mb"), "peak RSS over the run", "MB", TARGET_RSS)):
        for kind, style in (("operator", "o-"), ("floor", "s--")):
            points = [(run["n"], run[kind][key[0]][key[1]]) for run in runs
                      if kind in run and run[kind].get(key[0], {}).get(key[1]) is not None]
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], style, label=kind)
                for x, y in points:
                    axes.annotate(f"{y:.0f}" if y >= 10 else f"{y:.1f}", (x, y), textcoords="offset points",
                                  xytext=(4, 4), fontsize=8)
        axes.plot([target[0]], [target[1]], "r*", markersize=12,
                  label=f"target ({target[1]:g} {unit} at N={target[0]})")
        axes.set_xscale("log")
        axes.set_xticks(sorted(set(ns + [target[0]])))
        axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.set_xlabel("N (tenants)")
        axes.set_ylabel(unit)
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    started = sorted(run.get("started", "?") for run in runs)
    stamp = started[0] if started[0] == started[-1] else f"{started[0]} .. {started[-1]}"
    figure.suptitle(f"TenantStore provisioning vs N on {runs[-1]['machine']['cpus']} cores (runs {stamp})", fontsize=9)
    figure.tight_layout()
    out = results / "provisioning.png"
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


if __name__ == "__main__":
    print(plot(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"))
