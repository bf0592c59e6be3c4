"""The token-economy benchmark runs and reports: a short run, not the 1,000 steps.

``bench/economy.py`` runs three loops against the scripted server's simulated
prompt cache (the naive full-history loop, the harness before cache-awareness,
this harness); here it runs 30 steps in an 8K window, as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(240)


def test_the_economy_benchmark_runs_and_reports(tmp_path: Path) -> None:
    figures = tmp_path / "economy.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "economy.py"), "--steps", "30", "--window", "8000",
         "--json", str(figures)],
        capture_output=True, text=True, timeout=220, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "## Token economy: prompt caching at list prices" in done.stdout
    for row in ("dollars", "prompt tokens", "cached share of prompt tokens", "$/step, steps 1–100"):
        assert f"| {row} |" in done.stdout
    loops = json.loads(figures.read_text())
    assert "now" in loops and "naive (window lifted)" in loops
    now = loops["now"]
    assert now["steps"] == 31 and now["dollars"] > 0 and 0 < now["share"] <= 1
