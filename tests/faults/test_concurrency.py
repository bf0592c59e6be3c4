"""Four kernels run agents on one store at once while readers poll it; one kernel is killed.

The readers are the store API (``runs``, ``latest_checkpoints``,
``checkpoints``, ``live_runs``) and the REST API's query layer
(``jupyter_agent.server.queries.Reader``, what the HTTP handlers call), polling
every 5 ms. Meanwhile another process grabs the DuckDB file and holds
it for a while. No lock error may reach a cell or a reader, no checkpoint a
reader has seen may disappear, and every agent's history must come out intact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jupyter_agent.server.queries import Reader
from jupyter_agent.store import Store
from jupyter_agent.testing import ScriptedServer

from .harness import (
    API_KEY,
    build_script,
    read_store,
    record,
    soak,
    start_kernel,
    transcript,
    wait_done_or_dead,
    wait_text_or_end,
)

CELL = "%%agent --model scripted\nWork through the task one step at a time."
KERNELS = 4


class Poller(threading.Thread):
    """Reads the store in a loop; remembers errors and the highest step seen per run."""

    def __init__(self, store_path: Path, notebooks: list[str], rest: bool) -> None:
        super().__init__(daemon=True)
        self.store = Store(store_path, busy_timeout=60)
        self.notebooks = notebooks
        self.rest = rest
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.seen: dict[str, int] = {}
        self.regressions: list[str] = []
        self.reads = 0
        self.slowest = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                self.poll()
            except Exception:
                self.errors.append(traceback.format_exc(limit=4))
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.reads += 1
            time.sleep(0.005)  # hammering, but leaving the GIL to the kernels' clients

    def poll(self) -> None:
        if self.rest:
            reader = Reader(self.store)
            for nb in self.notebooks:
                for agent in reader.agents(nb):
                    for run in reader.runs(nb, agent["name"]):
                        detail, _ = reader.run(run["run_id"])
                        steps = [c["step"] for c in detail.get("checkpoints", [])]
                        self.note(run["run_id"], max(steps, default=-1))
            return
        runs = self.store.runs()
        latest = self.store.latest_checkpoints([r.run_id for r in runs])
        self.store.live_runs()
        for run in runs:
            steps = [c.step for c in self.store.checkpoints(run.run_id)]
            if steps != list(range(len(steps))):
                self.regressions.append(f"{run.run_id}: steps {steps} not contiguous")
            top = max(steps, default=-1)
            if run.run_id in latest and latest[run.run_id].step > top:
                top = latest[run.run_id].step
            self.note(run.run_id, top)

    def note(self, run_id: str, step: int) -> None:
        before = self.seen.get(run_id, -1)
        if step < before:
            self.regressions.append(f"{run_id}: saw step {before}, later only {step}")
        self.seen[run_id] = max(before, step)


def hold_duckdb(path: Path, seconds: float) -> subprocess.Popen:
    """Another process opening the DuckDB file and keeping it, as a long query would."""
    code = (
        "import duckdb, time\n"
        "while True:\n"
        "    try:\n"
        f"        c = duckdb.connect({str(path)!r})\n"
        "        break\n"
        "    except duckdb.IOException:\n"
        "        time.sleep(0.001)\n"
        "print('held', flush=True)\n"
        f"time.sleep({seconds})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc


def one_round(root: Path, index: int) -> dict:
    calls = [1, 1, 2, 1, 1]
    entries = build_script(calls)
    server = ScriptedServer(entries).start()
    store_path = root / f"round{index}" / "agents.duckdb"
    env = {
        "JUPYTER_AGENT_STORE": str(store_path),
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": API_KEY,
    }
    cwds = []
    for k in range(KERNELS):
        cwd = root / f"round{index}" / f"k{k}"
        cwd.mkdir(parents=True)
        (cwd / "fx.txt").write_text("")
        (cwd / "ctl.json").write_text(json.dumps({str(i): 0.05 for i in range(sum(calls))}))
        cwds.append(cwd)
    with ThreadPoolExecutor(KERNELS + 1) as ex:
        kernels = list(ex.map(lambda c: start_kernel(env, c), cwds))
        spare = ex.submit(start_kernel, env, cwds[2])
    Store(store_path).flush()  # create the store, so the holder has a file to hold
    notebooks = [str(c / "(no notebook)") for c in cwds]
    pollers = [Poller(store_path, notebooks, rest=False), Poller(store_path, notebooks, rest=True)]
    for p in pollers:
        p.start()
    outcome: dict = {"round": index}
    try:
        runs = [k.start(CELL, cell_id="c") for k in kernels]
        holder = hold_duckdb(store_path, 1.5)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # Kill one agent mid-run and resume it in a new kernel while the others go on.
        victim = kernels[2]
        assert wait_text_or_end(victim, runs[2], "tool 2 running", timeout=60)
        victim.kill()
        effects_at_kill = (cwds[2] / "fx.txt").read_text().splitlines()
        replacement = spare.result()
        (cwds[2] / "ctl.json").write_text("{}")
        resumed = replacement.start(CELL, cell_id="c")
        for k, r in zip(kernels, runs, strict=True):
            if k is not victim:
                assert wait_done_or_dead(k, r, timeout=120), r.text
        assert wait_done_or_dead(replacement, resumed, timeout=120), resumed.text
        holder.wait(timeout=30)
    finally:
        for p in pollers:
            p.stop.set()
        for p in pollers:
            p.join(timeout=60)
        for k in kernels:
            k.shutdown()
        if spare.done() and spare.exception() is None:
            spare.result().shutdown()
        server.stop()

    cells = [r for k, r in zip(kernels, runs, strict=True) if k is not victim] + [resumed]
    problems = []
    for r in cells:
        text = r.text
        if r.status != "ok" or any(w in text for w in ("Traceback", "UsageError", "lock", "busy")):
            problems.append(f"cell output shows a problem:\n{text[-1500:]}")
    if "resuming after step" not in resumed.text:
        problems.append("the killed agent did not resume:\n" + resumed.text[-800:])

    store = Store(store_path)
    runs_stored = store.runs()
    transcripts = []
    lost = duplicated = 0
    for run in runs_stored:
        view = read_store_for(store_path, run.notebook)
        transcripts.append(transcript(view.state))
        if view.state.status != "done":
            problems.append(f"run {run.run_id} ended {view.state.status}")
        steps = [c.step for c in view.checkpoints]
        if steps != list(range(len(steps))):
            problems.append(f"run {run.run_id}: steps not contiguous: {steps}")
        seen = max(p.seen.get(run.run_id, -1) for p in pollers)
        if seen > steps[-1]:
            lost += seen - steps[-1]
            problems.append(
                f"run {run.run_id}: a reader saw step {seen}, the store ends at {steps[-1]}"
            )
    if len(runs_stored) != KERNELS:
        problems.append(f"{len(runs_stored)} runs stored, expected {KERNELS}")
    if any(t != transcripts[0] for t in transcripts):
        problems.append("the agents' transcripts differ although their scripts are the same")

    for k, cwd in enumerate(cwds):
        starts = Counter(
            x for x in (cwd / "fx.txt").read_text().splitlines() if x.startswith("start")
        )
        repeats = {s: n for s, n in starts.items() if n > 1}
        if k == 2:
            allowed = {x for x in effects_at_kill if x.startswith("start")} - {
                x.replace("end", "start") for x in effects_at_kill if x.startswith("end")
            }
            bad = {s for s in repeats if s not in allowed or repeats[s] > 2}
        else:
            bad = set(repeats)
        duplicated += len(bad)
        if bad:
            problems.append(f"kernel {k}: tool calls ran twice: {sorted(bad)}")
        if len(starts) != sum(calls):
            problems.append(f"kernel {k}: {len(starts)} tool calls ran, expected {sum(calls)}")

    for p in pollers:
        problems += [f"{'REST' if p.rest else 'store'} reader error:\n{e}" for e in p.errors[:3]]
        problems += p.regressions[:3]
    outcome.update(
        problems=problems,
        lost=lost,
        duplicated=duplicated,
        reads={("rest" if p.rest else "store"): p.reads for p in pollers},
        slowest_read={("rest" if p.rest else "store"): round(p.slowest, 2) for p in pollers},
        reader_errors=sum(len(p.errors) for p in pollers),
    )
    return outcome


def read_store_for(path: Path, notebook: str):  # type: ignore[no-untyped-def]
    """The store view of the one agent of ``notebook``."""
    from jupyter_agent.agent import chain
    from jupyter_agent.state import fold

    from .harness import StoreView

    store = Store(path)
    runs = store.runs(notebook=notebook)
    view = StoreView(runs=runs)
    view.checkpoints = store.checkpoints(runs[-1].run_id)
    view.state = fold(store.payloads(chain(store, runs[-1])))
    return view


def test_four_kernels_one_store_readers_polling_and_a_kill(tmp_path: Path) -> None:
    rounds = 5 if soak() else 1
    started = time.monotonic()
    outcomes = [one_round(tmp_path, i) for i in range(rounds)]
    problems = [p for o in outcomes for p in o["problems"]]
    record(
        "concurrency",
        "4 kernels + 2 readers + a DuckDB holder",
        injection=(
            "4 agents at once on one store (5 turns, 6 python calls each); a store-API reader "
            "and a REST-query reader polling every 5 ms; another process holding the "
            "DuckDB file for 1.5 s; one kernel SIGKILLed mid-tool and resumed in a new kernel"
        ),
        trials=rounds * KERNELS,
        rounds=rounds,
        agents=rounds * KERNELS,
        completed=sum(not o["problems"] for o in outcomes) * KERNELS,
        lost=sum(o["lost"] for o in outcomes),
        duplicated=sum(o["duplicated"] for o in outcomes),
        reader_errors=sum(o["reader_errors"] for o in outcomes),
        reads=sum(sum(o["reads"].values()) for o in outcomes),
        slowest_read=max(max(o["slowest_read"].values()) for o in outcomes),
        seconds=round(time.monotonic() - started, 1),
    )
    assert not problems, "\n\n".join(problems)
    assert read_store  # imported for symmetry with the other modules
