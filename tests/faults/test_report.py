"""The reliability page describes and totals the crash trials of every backend."""

from __future__ import annotations

from .report import render

META = {
    "mode": "default suite",
    "date": "2026-01-01",
    "summary": "1 passed",
    "elapsed": 1.0,
    "cores": 2,
    "python": "3",
    "duckdb": "1",
    "system": "Linux",
}


def crash_rows(suffix: str, kinds: list[str], trials: int, seed: int, wall: float) -> list[dict]:
    rows: list[dict] = [
        {
            "class": "crash",
            "fault": kind + suffix,
            "trials": trials,
            "kills": trials + 1,
            "completed": trials,
            "lost": 0,
            "duplicated": 0,
            "repeated_in_flight": 0,
            "killed_at": {"model": trials},
            "seed": seed,
        }
        for kind in kinds
    ]
    total = {"trials": trials * len(kinds), "seed": seed, "wall_seconds": wall}
    return [*rows, {"class": "crash", "fault": "(all)" + suffix, **total}]


def test_postgres_crash_rows_are_described_and_totalled():
    rows = crash_rows("", ["torn", "merge", "tool"], 4, 7, 30.0)
    rows += crash_rows(" (postgres)", ["torn", "tool"], 2, 7, 12.5)
    page = render(rows, META)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in page.splitlines()}
    assert "inside the transaction" in lines["torn (postgres)"]
    assert "python call runs" in lines["tool (postgres)"]
    assert "journal record" in lines["torn"] and "folded into DuckDB" in lines["merge"]
    # 12 trials on DuckDB, 4 on PostgreSQL; kills and wall time of both.
    assert "16 randomized trials (12 on DuckDB, 4 on PostgreSQL; seed `7`, 21 kills, 42.5 s" in (
        " ".join(page.split())
    )
