"""Many writers on one PostgreSQL database: checkpoints per second, p99 of a step's write.

Each writer is a process of its own, as each kernel or worker of a team is: it
opens the store from its URL and writes one run through the store's writer
(:meth:`jupyter_agent.store.api.Store.writer`), step after step, with no pause
between steps. A step is what an agent persists for one model call and its
tool call (``bench/store_backends.py``): three checkpoints, about 1.3 KB of
conversation, and every tenth step a 4 KiB saved variable, at the default
durability (``sync``: each checkpoint's commit waits for the server's disk,
as DBOS's commits do by default). The processes write
a few warm-up steps, wait for each other, then write ``--steps`` steps each.

* checkpoints/s: every writer's checkpoints over the wall time from the common
  start to the last writer's end.
* step write p50 / p99: wall time of one step's writer calls, over all writers.
* per core: checkpoints/s divided by the machine's cores, which here run the
  writers and the database server both; set against DBOS's published figure,
  144,000 single-row writes per second on one PostgreSQL server of 96 vCPUs
  (1,500 per vCPU; "Benchmarking workflow execution scalability on Postgres",
  dbos.dev, 2026, AWS RDS db.m7i.24xlarge, clients on other machines).

Usage: ``python bench/writers.py [--writers 1,4,16] [--steps 200] [--url URL]``;
without ``--url`` a temporary PostgreSQL cluster with the server's durable
defaults (fsync on) is started and stopped, one fresh database per writer
count. ``--json FILE`` also writes the figures. Needs the PostgreSQL server
binaries (``apt-get install postgresql``) and psycopg.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from store_backends import KINDS, _pct, write_run  # noqa: E402

from jupyter_agent.store.open import open_store  # noqa: E402

#: DBOS's published single-server write throughput, and the vCPUs it ran on.
DBOS_WRITES_PER_S = 144_000
DBOS_VCPUS = 96
WARMUP_STEPS = 5


def writer(url: str, name: str, steps: int, barrier: object, out: object) -> None:
    """One writer process: warm up, wait for the others, write ``steps`` steps, report."""
    store = open_store(url)
    write_run(store, f"warmup-{name}", WARMUP_STEPS)  # connection, statements, caches
    barrier.wait()  # type: ignore[attr-defined]
    start = time.time()
    times = write_run(store, f"bench-{name}", steps)
    end = time.time()
    out.put({"start": start, "end": end, "times": times})  # type: ignore[attr-defined]


def measure(url: str, writers: int, steps: int) -> dict:
    """``writers`` processes writing ``steps`` steps each into the database at ``url``."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(writers)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=writer, args=(url, f"{writers}-{i}", steps, barrier, out))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    results: list[dict] = []
    while len(results) < writers:  # a writer that fails ends the bench, not a hang
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:
                for p in procs:
                    p.terminate()
                raise SystemExit(f"a writer process failed (exit code {failed[0]})") from None
    for p in procs:
        p.join(60)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    times = [t for r in results for t in r["times"]]
    checkpoints = writers * steps * len(KINDS)
    per_s = checkpoints / wall
    cores = os.cpu_count() or 1
    per_core = per_s / cores
    return {
        "writers": writers,
        "checkpoints": checkpoints,
        "seconds": wall,
        "checkpoints_per_s": per_s,
        "per_core": per_core,
        "dbos_ratio_per_core": per_core / (DBOS_WRITES_PER_S / DBOS_VCPUS),
        "p50_ms": _pct(times, 0.5) * 1000,
        "p99_ms": _pct(times, 0.99) * 1000,
    }


def table(rows: list[dict], steps: int) -> str:
    cores = os.cpu_count()
    lines = [
        f"{steps} steps ({steps * len(KINDS)} checkpoints) per writer process on "
        f"{platform.machine()}, {cores} cores shared by the writers and the server, "
        f"Python {platform.python_version()}",
        "",
        "| writers | checkpoints/s | per core | × DBOS per vCPU | step write p50 | step write p99 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['writers']} | {r['checkpoints_per_s']:,.0f} | {r['per_core']:,.0f} | "
            f"{r['dbos_ratio_per_core']:.2f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="1,4,16", help="writer counts, comma-separated")
    parser.add_argument("--steps", type=int, default=200, help="steps per writer (3 checkpoints)")
    parser.add_argument("--url", help="an existing PostgreSQL database (default: a temporary one)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    counts = [int(n) for n in args.writers.split(",")]
    rows = []
    if args.url:
        rows = [measure(args.url, n, args.steps) for n in counts]
    else:
        from tests.pg import PgServer, ensure_binaries

        bindir = ensure_binaries()
        if bindir is None:
            sys.exit("PostgreSQL server binaries not found: apt-get install -y postgresql")
        server = PgServer(bindir, fast=False).start()
        try:
            rows = [measure(server.create_database(), n, args.steps) for n in counts]
        finally:
            server.stop()
    print(table(rows, args.steps))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
