"""Store backends side by side: per-step write overhead, resume reads, size on disk.

One run of ``--steps`` steps is written to a DuckDB store (a temporary file and
its journal, as a kernel writes it) and to a local PostgreSQL server (a
temporary cluster with the server's durable defaults, fsync on): once as the
store writes by default (commits do not wait for the WAL flush), once with
``synchronous_commit=on`` asked for in the URL (every commit waits for the disk).
A step is what the agent persists for one model call and its tool call: three
checkpoints (model reply, tool call start, tool result) with payloads encoded
as the agent encodes them (about 1.3 KB of conversation per step), and every
tenth step a saved variable (a 4 KiB blob).

* Per-step overhead: wall time of the writer calls of one step (p50, p95).
* Resume read: ``payloads`` of the whole run (``--steps`` x 3 checkpoints;
  1,000 checkpoints by default) from a store opened anew in a new thread, so
  opening the file or connecting is included; median of 5.
* Size: DuckDB file, WAL and journals after ``flush``; PostgreSQL's tables with
  their indexes and TOAST (``pg_total_relation_size``).

Usage: ``python bench/store_backends.py [--steps 334]``; prints a markdown table.
Needs the PostgreSQL server binaries (``apt-get install postgresql``) and psycopg.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_agent.core.state import Delta, encode_delta  # noqa: E402
from jupyter_agent.store.api import CheckpointRow, RunRow  # noqa: E402
from jupyter_agent.store.open import open_store  # noqa: E402
from tests.pg import PgServer, ensure_binaries  # noqa: E402

KINDS = ("model", "tool_call", "tool_result")


def _step_records(run_id: str, step: int) -> list[tuple[CheckpointRow, bytes, dict[str, bytes]]]:
    out = []
    for i, kind in enumerate(KINDS):
        seq = step * len(KINDS) + i
        call = f"call_{step}"
        if kind == "model":
            delta = Delta(
                messages=[
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": call,
                                "type": "function",
                                "function": {
                                    "name": "python",
                                    "arguments": f'{{"code": "x{step} = {step} ** 2"}}',
                                },
                            }
                        ],
                    }
                ]
            )
        elif kind == "tool_call":
            delta = Delta(tool_call_id=call)
        else:
            delta = Delta(
                messages=[{"role": "tool", "tool_call_id": call, "content": "o" * 975}],
                tool_call_id=call,
            )
        blobs = (
            {f"blob-{step:06d}": os.urandom(4096)}
            if kind == "tool_result" and not step % 10
            else {}
        )
        if blobs:
            delta.vars = {f"x{step}": next(iter(blobs))}
        payload = encode_delta(delta)
        row = CheckpointRow(
            run_id=run_id,
            step=seq,
            kind=kind,
            status="running",
            summary=f"{kind} of step {step}",
            created_at=time.time(),
            duration_ms=1.0,
            tokens=120 if kind == "model" else 0,
            size=len(payload) + sum(len(b) for b in blobs.values()),
            info={"blobs": sorted(blobs)} if blobs else {},
        )
        out.append((row, payload, blobs))
    return out


def write_run(store, run_id: str, steps: int) -> list[float]:
    """Write the run; the seconds each step's writer calls took."""
    w = store.writer(run_id, secrets=[])
    w.put_run(
        RunRow(run_id, "/bench.ipynb", "bench", None, "p", "h", "m", None, None, time.time(), {})
    )
    times = []
    for step in range(steps):
        records = _step_records(run_id, step)
        start = time.perf_counter()
        for row, payload, blobs in records:
            for digest, data in blobs.items():
                w.put_blob(digest, data)
            w.put_checkpoint(row, payload)
        times.append(time.perf_counter() - start)
    w.close()
    return times


def resume_read(spec: str, run_id: str) -> tuple[float, int]:
    """Seconds to read the run's payloads from a store opened in a fresh thread."""
    result: list = []

    def read() -> None:
        start = time.perf_counter()
        pairs = open_store(spec).payloads([(run_id, None)])
        result.append((time.perf_counter() - start, len(pairs)))

    t = threading.Thread(target=read)
    t.start()
    t.join()
    return result[0]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(name: str, spec: str, steps: int, size: Callable[[object], int]) -> dict:
    store = open_store(spec)
    write_run(store, "warmup", 5)  # first connection, schema, caches
    times = write_run(store, "bench", steps)
    store.flush()
    reads = [resume_read(spec, "bench") for _ in range(5)]
    assert all(n == steps * len(KINDS) for _, n in reads), reads
    return {
        "backend": name,
        "p50": _pct(times, 0.5) * 1000,
        "p95": _pct(times, 0.95) * 1000,
        "resume": statistics.median(t for t, _ in reads) * 1000,
        "checkpoints": reads[0][1],
        "size": size(store),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=334, help="steps per run (3 checkpoints each)")
    args = parser.parse_args()
    bindir = ensure_binaries()
    if bindir is None:
        sys.exit("PostgreSQL server binaries not found: apt-get install -y postgresql")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        duck = str(Path(tmp) / "agents.duckdb")

        def duck_size(store) -> int:
            s = store.sizes()
            wal = Path(duck + ".wal")
            return s["duckdb"] + s["journals"] + (wal.stat().st_size if wal.exists() else 0)

        rows.append(measure("DuckDB (journal + file)", duck, args.steps, duck_size))
    server = PgServer(bindir, fast=False).start()
    try:
        for label, query in (
            ("PostgreSQL (local, default)", ""),
            ("PostgreSQL (local, synchronous_commit=on)", "?options=-c%20synchronous_commit%3Don"),
        ):
            url = server.create_database() + query
            rows.append(measure(label, url, args.steps, lambda store: store.sizes()["postgres"]))
    finally:
        server.stop()
    print(
        f"{args.steps} steps ({args.steps * len(KINDS)} checkpoints + warm-up) on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print("| backend | step write p50 | step write p95 | resume read | store size |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['backend']} | {r['p50']:.2f} ms | {r['p95']:.2f} ms | "
            f"{r['resume']:.0f} ms ({r['checkpoints']} checkpoints) | {r['size'] / 1024:.0f} KiB |"
        )


if __name__ == "__main__":
    main()
