"""Four kernels run agents on one store at once while readers poll it; one kernel is killed.

The readers are the store API (``runs``, ``latest_checkpoints``,
``checkpoints``, ``live_runs``) and the REST API's query layer
(``jupyter_agent.views.listing.Reader``, what the HTTP handlers call), polling
every 5 ms. Meanwhile another process grabs the DuckDB file and holds
it for a while. No lock error may reach a cell or a reader, no checkpoint a
reader has seen may disappear, and every agent's history must come out intact.

The same round runs on PostgreSQL (4 kernels, 8 under ``--soak``), where the
other process holds an exclusive lock on the checkpoints table instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.open import open_store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.views.listing import Reader

from ..pg import PgServer, pg_server  # noqa: F401  (fixture)
from .harness import (
    API_KEY,
    Backend,
    StoreSpec,
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

    def __init__(self, store_path: StoreSpec, notebooks: list[str], rest: bool) -> None:
        super().__init__(daemon=True)
        self.store = open_store(store_path, busy_timeout=60)
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
            reader = "REST" if self.rest else "store"
            self.regressions.append(
                f"{reader} reader, {run_id}: saw step {before}, later only {step}"
            )
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


def hold_postgres(url: str, seconds: float) -> subprocess.Popen:
    """Another process locking the checkpoints table against writes, as a long migration would."""
    code = (
        "import psycopg, time\n"
        f"with psycopg.connect({url!r}) as c:\n"
        "    c.execute('LOCK TABLE jupyter_agent.checkpoints IN EXCLUSIVE MODE')\n"
        "    print('held', flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def hold(store: StoreSpec, seconds: float) -> subprocess.Popen:
    return hold_postgres(store, seconds) if isinstance(store, str) else hold_duckdb(store, seconds)


def one_round(root: Path, index: int, backend: Backend, kernels_n: int = KERNELS) -> dict:
    calls = [1, 1, 2, 1, 1]
    entries = build_script(calls)
    server = ScriptedServer(entries).start()
    store_path = backend.new(f"round{index}")
    env = {
        "JUPYTER_AGENT_STORE": str(store_path),
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": API_KEY,
    }
    cwds = []
    for k in range(kernels_n):
        cwd = root / f"round{index}" / f"k{k}"
        cwd.mkdir(parents=True)
        (cwd / "fx.txt").write_text("")
        (cwd / "ctl.json").write_text(json.dumps({str(i): 0.05 for i in range(sum(calls))}))
        cwds.append(cwd)
    # The victim's tool 2 runs long enough that the kill lands inside it, however busy
    # the machine; the resumed run finds the file emptied and goes fast.
    (cwds[2] / "ctl.json").write_text(
        json.dumps({**{str(i): 0.05 for i in range(sum(calls))}, "2": 10})
    )
    with ThreadPoolExecutor(kernels_n + 1) as ex:
        kernels = list(ex.map(lambda c: start_kernel(env, c), cwds))
        spare = ex.submit(start_kernel, env, cwds[2])
    open_store(store_path).flush()  # create the store, so the holder has something to hold
    notebooks = [str(c / "(no notebook)") for c in cwds]
    pollers = [Poller(store_path, notebooks, rest=False), Poller(store_path, notebooks, rest=True)]
    for p in pollers:
        p.start()
    outcome: dict = {"round": index}
    try:
        runs = [k.start(CELL, cell_id="c") for k in kernels]
        holder = hold(store_path, 1.5)
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

    store = open_store(store_path)
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
    if len(runs_stored) != kernels_n:
        problems.append(f"{len(runs_stored)} runs stored, expected {kernels_n}")
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


def read_store_for(path: StoreSpec, notebook: str):  # type: ignore[no-untyped-def]
    """The store view of the one agent of ``notebook``."""
    from jupyter_agent.core.state import fold
    from jupyter_agent.loop.runs import chain

    from .harness import StoreView

    store = open_store(path)
    runs = store.runs(notebook=notebook)
    view = StoreView(runs=runs)
    view.checkpoints = store.checkpoints(runs[-1].run_id)
    view.state = fold(store.payloads(chain(store, runs[-1])))
    return view


def test_four_kernels_one_store_readers_polling_and_a_kill(tmp_path: Path) -> None:
    concurrency_rounds(tmp_path, Backend("duckdb", tmp_path), 5 if soak() else 1, KERNELS)


@pytest.mark.timeout(1800)
def test_kernels_on_one_postgres_store_readers_polling_and_a_kill(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
) -> None:
    backend = Backend("postgres", tmp_path, pg_server)
    concurrency_rounds(tmp_path, backend, 2 if soak() else 1, 8 if soak() else 4)


def concurrency_rounds(root: Path, backend: Backend, rounds: int, kernels_n: int) -> None:
    """Run the rounds and record them (the fault named after the kernels and the backend)."""
    started = time.monotonic()
    outcomes = [one_round(root, i, backend, kernels_n) for i in range(rounds)]
    problems = [p for o in outcomes for p in o["problems"]]
    holder = "a DuckDB holder" if backend.name == "duckdb" else "a table lock (postgres)"
    held = (
        "holding the DuckDB file"
        if backend.name == "duckdb"
        else "locking the PostgreSQL checkpoints table against writes"
    )
    record(
        "concurrency",
        f"{kernels_n} kernels + 2 readers + {holder}",
        injection=(
            f"{kernels_n} agents at once on one {backend.name} store (5 turns, 6 python calls "
            "each); a store-API reader and a REST-query reader polling every 5 ms; another "
            f"process {held} for 1.5 s; one kernel SIGKILLed mid-tool and resumed in a new kernel"
        ),
        trials=rounds * kernels_n,
        rounds=rounds,
        agents=rounds * kernels_n,
        completed=sum(not o["problems"] for o in outcomes) * kernels_n,
        lost=sum(o["lost"] for o in outcomes),
        duplicated=sum(o["duplicated"] for o in outcomes),
        reader_errors=sum(o["reader_errors"] for o in outcomes),
        reads=sum(sum(o["reads"].values()) for o in outcomes),
        slowest_read=max(max(o["slowest_read"].values()) for o in outcomes),
        seconds=round(time.monotonic() - started, 1),
    )
    assert not problems, "\n\n".join(problems)
    assert read_store  # imported for symmetry with the other modules


# -- one writer per agent -----------------------------------------------------------------


class RaceScript:
    """Turn 0 runs a tool call that logs its process; turn 1 fails the first time, then ends.

    So racing a new cell leaves a resumable run (paused at the error), and the
    next race resumes it: both kinds of execution are raced.
    """

    def __init__(self, effects: Path) -> None:
        self.effects = effects
        self.failed: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> dict:
        from .race_worker import prompt

        messages = body.get("messages", [])
        task = next(m["content"] for m in messages if m.get("role") == "user")
        agent = next(a for a in (f"a{k}" for k in range(1000)) if prompt(a) == task)
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if turn == 0:
            code = (
                f"_ = open({str(self.effects)!r}, 'a').write("
                f"'{agent} ' + str(__import__('os').getpid()) + '\\n')"
            )
            return {
                "content": "Working.",
                "tool_calls": [{"name": "python", "arguments": {"code": code}}],
            }
        with self.lock:
            first = agent not in self.failed
            self.failed.add(agent)
        if first:
            return {"faults": ["500"] * 100_000}
        return {"content": "All done."}


def race_trials(root: Path, agents: int) -> dict:
    """Two processes race ``agents`` new cells and then their resumes; count double writers."""
    import multiprocessing

    from .race_worker import NOTEBOOK, race

    store_path = root / "race" / "agents.duckdb"
    effects = root / "race-effects.txt"
    effects.write_text("")
    rounds = agents * 2
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    with ScriptedServer(RaceScript(effects), chunk_delay=0.05) as server:
        procs = [
            ctx.Process(
                target=race, args=(str(store_path), server.url, API_KEY, barrier, results, rounds)
            )
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        got = [results.get(timeout=300) for _ in range(2 * rounds)]
        for p in procs:
            p.join(timeout=60)
    by_race: dict[int, list[tuple]] = {}
    for item in got:
        by_race.setdefault(item[0], []).append(item)
    problems, doubles, busy = [], 0, 0
    for i, (a, b) in sorted(by_race.items()):
        for r in (a, b):
            if r[2] == "error":
                problems.append(f"race {i}: {r[3]}")
        ran = [r for r in (a, b) if r[2] in ("new", "resume")]
        busy += sum(r[2] == "busy" for r in (a, b))
        if len(ran) == 2 and ran[0][4] < ran[1][5] and ran[1][4] < ran[0][5]:
            doubles += 1
            problems.append(f"race {i}: both processes executed the agent at once: {a[:4]} {b[:4]}")
    for r in got:
        if r[2] == "busy" and not re.fullmatch(
            r"Agent 'a\d+' is running in another kernel \(pid \d+\)\. Wait for it, or stop it "
            r"there, before running it here\.",
            r[3],
        ):
            problems.append(f"unexpected busy message: {r[3]}")
    store = Store(store_path)
    for k in range(agents):
        runs = store.runs(notebook=NOTEBOOK, agent=f"a{k}")
        if len(runs) != 1:
            problems.append(f"agent a{k}: {len(runs)} runs stored, expected 1")
            continue
        cps = store.checkpoints(runs[0].run_id)
        steps = [c.step for c in cps]
        if steps != list(range(len(steps))):
            problems.append(f"agent a{k}: steps {steps}")
        if [c.kind for c in cps].count("resume") > 1 or cps[-1].status != "done":
            problems.append(f"agent a{k}: {[(c.kind, c.status) for c in cps]}")
    calls = Counter(line.split()[0] for line in effects.read_text().splitlines())
    repeated = {a: n for a, n in calls.items() if n != 1}
    if repeated or len(calls) != agents:
        problems.append(f"tool calls per agent (expected 1 each): {dict(calls)}")
    return {"races": rounds, "doubles": doubles, "busy": busy, "problems": problems}


def test_two_processes_racing_one_agent_never_both_write(tmp_path: Path) -> None:
    agents = 25 if soak() else 10  # two races each: the new cell, then its resume
    started = time.monotonic()
    outcome = race_trials(tmp_path, agents)
    record(
        "concurrency",
        "two processes racing one agent",
        injection="two processes call run_cell for the same agent at the same instant "
        "(a barrier), for a new run and then for its resume",
        trials=outcome["races"],
        completed=outcome["races"] - len(outcome["problems"]),
        lost=0,
        duplicated=outcome["doubles"],
        busy=outcome["busy"],
        seconds=round(time.monotonic() - started, 1),
        outcome=f"{outcome['doubles']} double writers in {outcome['races']} races; the other "
        f"process was told the agent is running in another kernel {outcome['busy']} times; "
        f"{round(time.monotonic() - started, 1)} s",
    )
    assert outcome["doubles"] == 0, "\n".join(outcome["problems"])
    assert not outcome["problems"], "\n".join(outcome["problems"])
    assert outcome["busy"] >= outcome["races"] // 2  # the rivals really met


def test_two_kernels_rerunning_one_paused_cell_at_once(tmp_path: Path) -> None:
    """Real kernels, same notebook and cell id, re-run within milliseconds: one resumes."""
    trials = 6 if soak() else 2
    script = build_script([1, 1])
    script[1]["faults"] = ["500"] * 5  # the first execution pauses at an error: resumable
    server = ScriptedServer(script).start()
    store_path = tmp_path / "agents.duckdb"
    env = {
        "JUPYTER_AGENT_STORE": str(store_path),
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": API_KEY,
    }
    cwd = tmp_path / "nb"
    cwd.mkdir()
    (cwd / "ctl.json").write_text(json.dumps({"1": 0.5}))  # the resumed run takes a while
    problems: list[str] = []
    busy = 0
    with ThreadPoolExecutor(2) as ex:
        kernels = list(ex.map(lambda _: start_kernel(env, cwd), range(2)))
    try:
        for t in range(trials):
            (cwd / "fx.txt").write_text("")
            server.set_script(script)
            server.reset_log()
            first = kernels[0].start(CELL, cell_id=f"t{t}")
            assert wait_done_or_dead(kernels[0], first), first.text
            assert "paused after an error" in first.text, first.text
            cells = [k.start(CELL, cell_id=f"t{t}") for k in kernels]
            for k, c in zip(kernels, cells, strict=True):
                assert wait_done_or_dead(k, c, timeout=120), c.text
            resumed = [c for c in cells if "resuming after step" in c.text]
            refused = [c for c in cells if "is running in another kernel (pid" in c.text]
            busy += len(refused)
            if len(resumed) != 1 or len(refused) != 1:
                problems.append(f"trial {t}: " + " /// ".join(c.text[-600:] for c in cells))
            starts = Counter(x for x in (cwd / "fx.txt").read_text().split("\n") if "start" in x)
            if starts != Counter({"start 0": 1, "start 1": 1}):
                problems.append(f"trial {t}: tool calls ran {dict(starts)}")
            store = Store(store_path)
            runs = [r for r in store.runs() if r.cell_id == f"t{t}"]
            kinds = [c.kind for c in store.checkpoints(runs[-1].run_id)] if runs else []
            if len(runs) != 1 or kinds.count("resume") != 1:
                problems.append(f"trial {t}: {len(runs)} runs, checkpoints {kinds}")
    finally:
        for k in kernels:
            k.shutdown()
        server.stop()
    record(
        "concurrency",
        "two kernels re-running one paused cell",
        injection="a cell paused at a model error; two kernels on the same notebook re-run "
        "it (same cellId) within milliseconds",
        trials=trials,
        completed=trials - len(problems),
        lost=0,
        duplicated=len(problems),
        busy=busy,
        outcome=f"{len(problems)} of {trials} trials with two writers or a call run twice; the "
        f"other kernel was told the agent is running in another kernel {busy} times",
    )
    assert not problems, "\n\n".join(problems)


def test_a_process_going_from_database_to_database_keeps_few_connections(
    pg_server: PgServer,  # noqa: F811
) -> None:
    """A kernel re-pointed from store to store (or a server reading many) must not pile up
    idle connections until PostgreSQL refuses clients ("too many clients already")."""
    import psycopg

    from jupyter_agent.store.postgres.store import READERS_KEPT

    urls = [pg_server.create_database() for _ in range(12)]
    for url in urls:
        store = open_store(url)
        assert store.runs() == []
        with store.agent_lock("nb.ipynb", "a"):
            store.writer("r1").close()
    names = [url.rsplit("/", 1)[1] for url in urls]
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        (open_now,) = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)", [names]
        ).fetchone()
    assert open_now <= READERS_KEPT + 1, f"{open_now} connections stay open to 12 databases"
    assert open_store(urls[0]).runs() == []  # a closed one reopens when needed
    record(
        "concurrency",
        "one process on 12 PostgreSQL databases in turn",
        injection="a process opens, reads, locks and writes 12 databases one after another "
        "(a kernel re-pointed from store to store)",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        connections=open_now,
        outcome=f"{open_now} connections stay open (at most {READERS_KEPT + 1} allowed)",
    )
