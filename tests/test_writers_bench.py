"""The many-writers benchmark runs and reports: two counts of writers, a few steps each.

``bench/writers.py`` starts writer processes that write real checkpoints through
the PostgreSQL store into one database; here it runs 1 and 2 writers of 4 steps
against the session's test server, as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_agent.store.open import open_store

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(240)


def test_the_writers_benchmark_runs_and_reports(pg_url: str, tmp_path: Path) -> None:
    figures = tmp_path / "writers.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "writers.py"), "--writers", "1,2", "--steps", "4",
         "--url", pg_url, "--json", str(figures)],
        capture_output=True, text=True, timeout=220, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| writers | checkpoints/s | per core | × DBOS per vCPU |" in done.stdout
    rows = json.loads(figures.read_text())
    assert [r["writers"] for r in rows] == [1, 2]
    for r in rows:
        assert r["checkpoints"] == r["writers"] * 4 * 3
        assert r["checkpoints_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["dbos_ratio_per_core"] > 0
    # The checkpoints are real: every writer's run is in the database, whole.
    store = open_store(pg_url)
    counts = {run.run_id: len(store.checkpoints(run.run_id)) for run in store.runs()}
    assert counts == {
        **{f"warmup-1-{i}": 15 for i in range(1)},
        **{f"bench-1-{i}": 12 for i in range(1)},
        **{f"warmup-2-{i}": 15 for i in range(2)},
        **{f"bench-2-{i}": 12 for i in range(2)},
    }, counts
