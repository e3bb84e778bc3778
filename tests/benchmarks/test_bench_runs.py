"""Which runs the provisioning benchmark makes for an N, and what its JSON says of a floor it left out.

`bench` is imported from the repository root, as `python -m bench.provisioning` does (it is no installed package)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def planned_runs(n: int, asked: str, floor_up_to: int) -> list[object]:
    code = (f"import json; from bench.provisioning import planned_runs; "
            f"print(json.dumps(planned_runs({n}, {asked!r}, {floor_up_to})))")
    shown = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                           timeout=60)
    return json.loads(shown.stdout)


def test_the_floor_runs_up_to_its_limit() -> None:
    assert planned_runs(1000, "operator,floor", 1000) == [["operator", "floor"], None]


def test_above_the_limit_only_the_operator_runs_and_the_json_says_why() -> None:
    assert planned_runs(10000, "operator,floor", 1000) == [
        ["operator"], "N = 10000 is above --floor-up-to 1000: the floor would take too long"]


def test_a_floor_not_asked_for_is_said_so() -> None:
    assert planned_runs(200, "operator", 1000) == [["operator"], "not asked for (--runs operator)"]
