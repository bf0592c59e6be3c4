"""The worker pool's throughput with 1, 2 and 4 workers, and how fast a dead worker's job moves.

One PostgreSQL database (tests/pg.py, fsync on), one scripted model server
answering every request after a fixed latency, ``--notebooks`` notebooks each
with one agent of ``--steps`` python steps. For each worker count, the
notebooks are submitted, that many ``jupyter agent worker`` processes (one run
at a time each) are started, and the agent steps (model requests) per second
are counted from the workers' start to the last job's end: kernel start-up is
part of a job, as it is in use.

Then, with two workers and two notebooks, the worker running a notebook is
SIGKILLed after its second step; the figure is the time from the kill to that
notebook's next model request, made by the other worker.

Usage: ``python bench/workers.py [--notebooks 8] [--steps 5] [--latency 0.2] [--out docs/performance.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_agent.store import queue  # noqa: E402
from jupyter_agent.store.open import open_store  # noqa: E402
from jupyter_agent.testing import ScriptedServer  # noqa: E402
from tests.pg import PgServer, ensure_binaries  # noqa: E402

SETUP = "%load_ext jupyter_agent\n%config AgentMagics.retry_backoff = 0.05"


def notebooks(folder: Path, count: int) -> list[Path]:
    import nbformat

    paths = []
    for n in range(count):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nb.cells = [
            nbformat.v4.new_code_cell(SETUP),
            nbformat.v4.new_code_cell(f"%%agent --model scripted\nNotebook {n}: count."),
        ]
        path = folder / f"nb{n}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def script(steps: int, latency: float) -> list[dict]:
    calls = [
        {"tool_calls": [{"name": "python", "arguments": {"code": f"x = {i}"}}], "delay": latency}
        for i in range(steps)
    ]
    return [*calls, {"content": "Done.", "delay": latency}]


def worker(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_agent", "worker"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stderr.readline() if proc.stderr else ""
    if not line.startswith("Worker "):
        raise SystemExit(f"the worker did not start: {line}")
    return proc, line.split()[1]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def submit(env: dict[str, str], paths: list[Path]) -> None:
    for path in paths:
        subprocess.run(
            [sys.executable, "-m", "jupyter_agent", "submit", str(path)],
            env=env,
            check=True,
            capture_output=True,
        )


def wait_done(url: str, count: int, timeout: float = 600) -> None:
    store = open_store(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in queue.list_jobs(store) if j["status"] != "scheduled"]
        if any(j["status"] == "failed" for j in jobs):
            raise SystemExit(f"a job failed: {jobs}")
        if len(jobs) == count and all(j["status"] == "done" for j in jobs):
            return
        time.sleep(0.2)
    raise SystemExit("the jobs did not finish in time")


def worker_env(url: str, server: ScriptedServer) -> dict[str, str]:
    """The environment of this bench's submits and workers: the store, the scripted model."""
    return {
        **os.environ,
        "JUPYTER_AGENT_STORE": url,
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": "sk-bench",
        "PYTHONPATH": str(ROOT),
    }


def throughput(
    pg: PgServer, server: ScriptedServer, args: argparse.Namespace, workers: int
) -> float:
    url = pg.create_database()
    env = worker_env(url, server)
    with tempfile.TemporaryDirectory() as folder:
        paths = notebooks(Path(folder), args.notebooks)
        submit(env, paths)
        server.requests.clear()
        started = time.monotonic()
        procs = [worker(env)[0] for _ in range(workers)]
        try:
            wait_done(url, len(paths))
        finally:
            elapsed = time.monotonic() - started
            stop(procs)
    return sum(1 for r in server.requests if r["turn"] >= 0) / elapsed


def takeover(pg: PgServer, server: ScriptedServer, args: argparse.Namespace) -> float:
    """Seconds from a worker's SIGKILL to its notebook's next model request, from another worker."""
    url = pg.create_database()
    env = worker_env(url, server)
    store = open_store(url)
    with tempfile.TemporaryDirectory() as folder:
        paths = notebooks(Path(folder), 2)
        submit(env, paths)
        server.requests.clear()
        procs = dict(worker(env)[::-1] for _ in range(2))
        try:
            while True:
                running = [j for j in queue.list_jobs(store) if j["status"] == "running"]
                asked = [r for r in server.requests if r["turn"] >= 2]
                if running and asked:
                    break
                time.sleep(0.05)
            prompt = next(
                m["content"]
                for m in asked[0]["body"]["messages"]
                if str(m.get("content", "")).startswith("Notebook ")
            )
            nb = re.match(r"Notebook (\d+)", prompt).group(1)  # type: ignore[union-attr]
            job = next(j for j in running if j["notebook"].endswith(f"nb{nb}.ipynb"))
            killed = time.time()
            procs[job["worker"]].send_signal(signal.SIGKILL)
            while True:  # until the other worker holds the job (the dead one's kernel may
                # still make a request in the second before it sees its parent gone)
                held = [j for j in queue.list_jobs(store) if j["job"] == job["job"]]
                if held and held[0]["status"] == "running" and held[0]["worker"] != job["worker"]:
                    taken = time.time()
                    break
                time.sleep(0.05)
            while True:
                later = [
                    r
                    for r in list(server.requests)
                    if r["time"] > taken
                    and any(m.get("content") == prompt for m in r["body"]["messages"])
                ]
                if later:
                    return later[0]["time"] - killed
                time.sleep(0.05)
        finally:
            stop(list(procs.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--out", type=Path, help="write the results into this Markdown file")
    args = parser.parse_args()
    bindir = ensure_binaries()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries are needed (apt-get install postgresql)")
    pg = PgServer(bindir, fast=False).start()
    try:
        with ScriptedServer(script(args.steps, args.latency)) as server:
            rates = {n: throughput(pg, server, args, n) for n in (1, 2, 4)}
            server.set_script(script(8, args.latency))
            moved = takeover(pg, server, args)
    finally:
        pg.stop()
    text = report(args, rates, moved)
    print(text)
    if args.out:
        write(args.out, text)


def report(args: argparse.Namespace, rates: dict[int, float], moved: float) -> str:
    cells = " | ".join(f"{rates[n]:.1f}" for n in (1, 2, 4))
    return (
        "<!-- workers:start -->\n## The worker pool\n\n"
        f"{args.notebooks} notebooks, each one agent of {args.steps} python steps, the scripted model "
        f"answering after {args.latency:.1f} s, submitted to one PostgreSQL database (fsync on); "
        "`jupyter agent worker` processes running one job at a time each. Agent steps (model "
        "requests) per second from the workers' start to the last job's end, kernel start-up "
        "included. `python bench/workers.py` on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.\n\n"
        "| workers | 1 | 2 | 4 |\n|---|---|---|---|\n"
        f"| agent steps per second | {cells} |\n\n"
        f"A worker SIGKILLed after its notebook's second step: that notebook's next model request "
        f"came from the other worker {moved:.1f} s after the kill (requests of the dead worker's "
        "kernel, which exits a second after its parent, are not counted; a worker is taken for "
        "dead once "
        "it is seen gone twice, a second apart; then DBOS re-enqueues the job, the other worker "
        "dequeues it and starts a kernel, which resumes from the last checkpoint).\n"
        "<!-- workers:end -->\n"
    )


def write(path: Path, text: str) -> None:
    doc = path.read_text()
    start, end = "<!-- workers:start -->", "<!-- workers:end -->"
    if start in doc:
        doc = doc[: doc.index(start)] + text.rstrip("\n") + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


if __name__ == "__main__":
    main()
