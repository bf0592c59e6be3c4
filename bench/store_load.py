"""The store under load: 8 kernels running agents, one of them saving a 512 MiB value.

Eight real kernels (``tests/kernels.py``) run agents on one DuckDB store against
the scripted model server, ``--runs`` cells each, one after another; every agent
takes ``--turns`` python steps (a short sleep and a small variable each). The
first kernel's first agent also creates ``big = bytearray(512 * 2**20)``, which
the agent saves with its checkpoint. Meanwhile:

* the REST API's reader (``views.listing.Reader.agents``, on a store opened with
  the server's ``busy_timeout`` of 2 s, in a thread of this process) is polled
  every 0.1 s; a StoreBusy is what the REST API answers 503 "store busy" for;
* a ninth kernel runs ``%agent list`` in a loop (0.1 s apart).

Each is reported as p50 / p99 / max seconds and the count of "busy" answers;
agent cells whose output says the store "stayed busy" are counted too.

The measurement runs in a child process with ``PYTHONPATH`` set to the code to
measure (the kernels inherit it), once for ``--before DIR`` (a checkout of
another version, e.g. made with ``git worktree add``; skipped by default) and
once for this tree, and the table goes to
docs/performance.md (section ``store-load``). Usage:
``python bench/store_load.py [--before DIR] [--kernels 8,4] [--runs 3] [--turns 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "/bench/load.ipynb"
KERNELS = 8
API_KEY = "sk-test-0123456789abcdef"

LISTER = """
import json, os, time
from IPython.utils.capture import capture_output
times, busy = [], 0
while not os.path.exists({stop!r}):
    t = time.monotonic()
    with capture_output() as out:
        try:
            get_ipython().run_line_magic("agent", "list")
        except Exception as exc:
            print(exc)
    times.append(time.monotonic() - t)
    busy += "busy" in (out.stdout + out.stderr).lower()
    time.sleep(0.1)
print("RESULT" + json.dumps({{"times": times, "busy": busy}}))
"""


def script(turns: int) -> list[dict]:
    """Model replies by turn: python steps, then an answer; BIG=1 kernels make the big value."""
    steps = []
    for i in range(turns):
        code = (
            f"import os, time\ntime.sleep(0.2)\nv{i} = list(range(2000))\n"
            f"if os.environ.get('BIG') and {i} == 1 and 'big' not in globals():\n"
            "    big = bytearray(512 * 2**20)\n"
            f"print('turn {i}')"
        )
        steps.append({"tool_calls": [{"name": "python", "arguments": {"code": code}}]})
    return [*steps, {"content": "Done."}]


#: The REST calls polled, each timed on its own: the reader's method behind each endpoint.
ENDPOINTS = {
    "agent": "`GET agents/{name}` (one agent, all its runs)",
    "run": "`GET runs/{id}` (a run's checkpoints)",
    "messages": "`GET runs/{id}?messages=1` (with the messages each added)",
}


def rest_calls(reader: Any) -> Iterator[tuple[str, Callable[[], Any]]]:
    """The REST API's reads in one poll: the list, then its first agent and that agent's run."""
    answer: list = []
    yield "agents", lambda: answer.extend(reader.agents(NOTEBOOK))
    if answer:
        name, run_id = answer[0]["name"], answer[0]["run_id"]
        yield "agent", lambda: reader.agent(NOTEBOOK, name)
        yield "run", lambda: reader.run(run_id)
        yield "messages", lambda: reader.run(run_id, messages=True)


def stats(times: list[float]) -> dict:
    if not times:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(times), "p50": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


def measure(runs: int, turns: int, kernels_n: int = KERNELS) -> dict:
    """One measurement with the code on ``sys.path`` (the child process's PYTHONPATH)."""
    sys.path.append(str(ROOT))  # after PYTHONPATH: the code measured comes first
    from jupyter_agent.errors import NotFound, StoreBusy
    from jupyter_agent.store.duckdb.store import DuckDBStore
    from jupyter_agent.testing import ScriptedServer
    from jupyter_agent.views.listing import Reader
    from tests.kernels import Kernel

    tmp = Path(tempfile.mkdtemp(prefix="store-load-"))
    store_path = tmp / "store" / "agents.duckdb"
    stop = tmp / "stop"
    rest_times: dict[str, list[float]] = {}
    rest_busy = 0
    cell_busy = 0
    failed = 0
    with ScriptedServer(script(turns)) as server:
        env = {
            "JUPYTER_AGENT_STORE": str(store_path),
            "OPENAI_BASE_URL": server.url,
            "OPENAI_API_KEY": API_KEY,
            "JUPYTER_AGENT_NOTEBOOK": NOTEBOOK,
        }
        kernels = [
            Kernel({**env, **({"BIG": "1"} if i == 0 else {})}, cwd=tmp) for i in range(kernels_n)
        ]
        lister = Kernel(env, cwd=tmp)
        try:
            for k in [*kernels, lister]:
                out = k.run("%load_ext jupyter_agent\n%config AgentMagics.retry_backoff = 0.05")
                assert out.status == "ok", out.text
            lister.run("%agent list")  # imports, first open: not measured
            poll = lister.start(LISTER.format(stop=str(stop)))
            done = threading.Event()

            def rest() -> None:
                nonlocal rest_busy
                reader = Reader(DuckDBStore(store_path, busy_timeout=2.0))
                while not done.is_set():
                    for endpoint, call in rest_calls(reader):
                        t = time.monotonic()
                        try:
                            call()
                        except StoreBusy:
                            rest_busy += 1
                        except NotFound:
                            continue  # no agent yet
                        rest_times.setdefault(endpoint, []).append(time.monotonic() - t)
                    time.sleep(0.1)

            def drive(k: int, kernel: Kernel) -> None:
                nonlocal cell_busy, failed
                for r in range(runs):
                    cell = f"%%agent --model scripted\nAgent {k}, run {r}: take the steps."
                    out = kernel.run(cell, cell_id=f"k{k}r{r}", timeout=600)
                    cell_busy += "stayed busy" in out.text
                    if out.status != "ok" or "Done." not in out.text:
                        failed += 1
                        print(out.text[-1500:], file=sys.stderr)

            poller = threading.Thread(target=rest)
            poller.start()
            started = time.monotonic()
            drivers = [
                threading.Thread(target=drive, args=(k, kernels[k])) for k in range(kernels_n)
            ]
            for d in drivers:
                d.start()
            for d in drivers:
                d.join()
            wall = time.monotonic() - started
            done.set()
            poller.join()
            stop.touch()
            lister.wait(poll, timeout=120)
            listed = json.loads(poll.stdout.split("RESULT", 1)[1])
        finally:
            for k in [*kernels, lister]:
                k.shutdown()
    return {
        "wall": wall,
        "kernels": kernels_n,
        "agents": kernels_n * runs,
        "failed": failed,
        "cell_busy": cell_busy,
        "rest": {**stats(rest_times.get("agents", [])), "busy": rest_busy},
        **{f"rest-{e}": stats(t) for e, t in rest_times.items() if e != "agents"},
        "list": {**stats(listed["times"]), "busy": listed["busy"]},
    }


def run_child(code: Path, runs: int, turns: int, kernels: int = KERNELS) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    args = [sys.executable, __file__, "--child", "--runs", str(runs), "--turns", str(turns)]
    args += ["--kernels", str(kernels)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"measurement with {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    cols = list(results)
    rows = [
        ("REST API (agents of the notebook): p50 / p99 / max s", "rest"),
        ("`%agent list` in another kernel: p50 / p99 / max s", "list"),
    ]
    head = "| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    body = ""
    for key, label in ENDPOINTS.items():
        cells = [
            f"{r[f'rest-{key}']['p50']:.3f} / {r[f'rest-{key}']['p99']:.2f} / "
            f"{r[f'rest-{key}']['max']:.1f}"
            if f"rest-{key}" in r
            else "not measured"
            for r in results.values()
        ]
        body += f"| REST API, {label}: p50 / p99 / max s | " + " | ".join(cells) + " |\n"
    for label, key in rows:
        cells = [
            f"{r[key]['p50']:.3f} / {r[key]['p99']:.2f} / {r[key]['max']:.1f}"
            for r in results.values()
        ]
        body += f"| {label} | " + " | ".join(cells) + " |\n"
        body += (
            f"| {label.split(':')[0]}: busy answers / requests | "
            + " | ".join(f"{r[key]['busy']} / {r[key]['n']}" for r in results.values())
            + " |\n"
        )
    body += (
        '| agent cells that said "stayed busy" | '
        + " | ".join(f"{r['cell_busy']} of {r['agents']}" for r in results.values())
        + " |\n"
    )
    body += (
        "| agent cells that failed | "
        + " | ".join(str(r["failed"]) for r in results.values())
        + " |\n"
    )
    body += (
        "| wall time of the writing kernels' cells, s | "
        + " | ".join(f"{r['wall']:.0f}" for r in results.values())
        + " |\n"
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="", help="a checkout of the code to compare with")
    parser.add_argument("--runs", type=int, default=3, help="agent cells per kernel")
    parser.add_argument("--turns", type=int, default=4, help="python steps per agent")
    parser.add_argument(
        "--kernels", default=f"{KERNELS},4", help="kernels running agents, one column each (8,4)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the docs")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in str(args.kernels).split(",")]
    except ValueError:
        parser.error(f"--kernels: a comma-separated list of counts, not {args.kernels!r}")
    if args.child:
        print(json.dumps(measure(args.runs, args.turns, counts[0])))
        return
    results: dict[str, dict] = {}
    for n in counts:
        if args.before:
            before = run_child(Path(args.before), args.runs, args.turns, n)
            results[f"{n} kernels, before (`{Path(args.before).name}`)"] = before
        results[f"{n} kernels, this tree"] = run_child(ROOT, args.runs, args.turns, n)
    text = (
        "## The store under load\n\n"
        f"Kernels ({', '.join(map(str, counts))}, one column each) each ran {args.runs} agents "
        f"of {args.turns} python steps on one DuckDB store (the scripted model server); the "
        "first agent saved a 512 MiB value. Polled meanwhile: the REST API's reader every "
        "0.1 s (busy timeout 2 s, as the server's; a busy answer is a 503) and `%agent list` "
        "in another kernel. Targets: p99 ≤ 1 s and no busy answer under 8 kernels; REST p99 "
        "≤ 100 ms while 4 kernels write. "
        f"`python bench/store_load.py` on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}.\n\n" + table(results)
    )
    print(text)
    if not args.no_write:
        sys.path.insert(0, str(ROOT / "bench"))
        from report import write_section

        write_section(ROOT / "docs" / "performance.md", "store-load", text)


if __name__ == "__main__":
    main()
