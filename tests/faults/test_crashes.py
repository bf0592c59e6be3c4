"""SIGKILL the kernel at every kind of point of an agent run; nothing completed may be lost.

Each trial runs a scripted agent (one to three model turns, one or two python
calls per turn, then an answer) in a real kernel and kills the kernel once —
sometimes twice — at a point drawn from a seeded random generator:

* ``stream``   while a model reply streams (the chosen turn's chunks are slowed);
* ``reply``    right after a model reply is durable, before its tool runs (crash hook);
* ``tool``     while a python call runs (it sleeps; the kill lands mid-sleep);
* ``torn``     halfway through writing a journal record (crash hook writes half a frame);
* ``result``   right after a tool result is durable, before the next model call;
* ``merge``    while a journal is folded into DuckDB, mid-run (the timeline reads the
  store) or when the run ends, before or after the commit (crash hook);
* ``approval`` with ``--approve``: while waiting for approval (idle kernel), right
  after an approval decision is durable, or while the approved call runs;
* ``random``   at a uniformly random moment of a run whose tools take a little time.

After every kill the store files are copied as they are and read back (they
must be readable). A fresh kernel then re-runs the cell (or approves) until the
run is done, and the trial checks: the final transcript equals the uninterrupted
run's; every checkpoint present after a kill is still there, unchanged (nothing
lost); no tool call whose result was checkpointed ran again, and no model turn
that was checkpointed was requested again (nothing duplicated) — only the call
or turn in flight at the kill may repeat, as the in-flight policy says.

``JUPYTER_AGENT_FAULT_SEED`` fixes the seed (the default run uses a fixed one),
``JUPYTER_AGENT_FAULT_TRIALS`` the number of trials, ``JUPYTER_AGENT_FAULT_TRIAL``
reruns a single trial. With ``--soak`` the default is 400 trials and a seed
taken from the clock; the seed is printed and recorded either way.

The same trials run on PostgreSQL (kernels given a ``postgresql://`` store),
without the journal's points: there ``torn`` dies inside the checkpoint's
transaction, before its commit, and there is no merge. By default they are 8.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from jupyter_agent.testing import ScriptedServer

from ..kernels import Kernel
from ..pg import PgServer, pg_server  # noqa: F401  (fixture)
from .harness import (
    API_KEY,
    Backend,
    KernelPool,
    StoreSpec,
    StoreView,
    TurnScript,
    build_script,
    read_store,
    record,
    seed,
    set_crash,
    snapshot,
    soak,
    transcript,
    wait_done_or_dead,
    wait_text_or_end,
)
from .harness import (
    run as execute,
)

KINDS = ["stream", "reply", "tool", "torn", "result", "merge", "approval", "random"]
TORN_LABELS = [
    "checkpoint.model",
    "checkpoint.tool_call",
    "checkpoint.tool_result",
    "blob",
    "checkpoint.start",
    "run",
]
SECOND_KILLS = [
    "after:checkpoint.resume:1",
    "torn:checkpoint:2",
    "after:checkpoint:3",
    "before:merge.dead:1",
    "torn:blob:1",
]
PROMPT = "Work through the task one step at a time."
#: A PostgreSQL store has no journal: no merge points.
PG_KINDS = [k for k in KINDS if k != "merge"]
PG_SECOND_KILLS = [k for k in SECOND_KILLS if "merge" not in k]


@dataclass
class Plan:
    """One trial, fully determined by the seed and its index."""

    index: int
    calls: list[int]  # python calls per model turn
    approve: bool
    kind: str
    hook: str | None = None  # crash hook spec for the first kill
    turn: int | None = None  # stream: the turn to kill while streaming
    tool: int | None = None  # tool: the call to kill while running
    at: float | None = None  # random: seconds after the cell starts
    wait: int | None = None  # approval: which approval the kill is tied to
    approval_how: str | None = None  # approval: idle / decided / running
    second: str | None = None  # crash hook spec for a kill during the resume

    @property
    def tools(self) -> int:
        return sum(self.calls)

    @property
    def turns(self) -> int:
        return len(self.calls) + 1


def make_plan(
    base_seed: int,
    index: int,
    kinds: list[str] = KINDS,
    second_kills: list[str] = SECOND_KILLS,
) -> Plan:
    rng = random.Random(f"{base_seed}:{index}")
    calls = [2 if rng.random() < 0.25 else 1 for _ in range(rng.randint(1, 3))]
    kind = kinds[index % len(kinds)]
    plan = Plan(index, calls, approve=kind == "approval", kind=kind)
    n_tools, n_turns = plan.tools, plan.turns
    if kind == "stream":
        plan.turn = rng.randrange(n_turns)
    elif kind == "reply":
        plan.hook = f"after:checkpoint.model:{rng.randint(1, n_turns)}"
    elif kind == "tool":
        plan.tool = rng.randrange(n_tools)
    elif kind == "torn":
        label = rng.choice(TORN_LABELS)
        limit = {"checkpoint.model": n_turns, "blob": n_tools}.get(label, n_tools)
        nth = 1 if label in ("checkpoint.start", "run") else rng.randint(1, limit)
        plan.hook = f"torn:{label}:{nth}"
    elif kind == "result":
        plan.hook = f"after:checkpoint.tool_result:{rng.randint(1, n_tools)}"
    elif kind == "merge":
        plan.hook = rng.choice(
            [
                "before:merge.dead:1",
                "after:merge.dead:1",
                "before:merge.live:1",
                "after:merge.live:1",
            ]
        )
    elif kind == "approval":
        plan.wait = rng.randint(1, n_tools)
        plan.approval_how = rng.choice(["idle", "decided", "running"])
    elif kind == "random":
        plan.at = rng.uniform(0.05, 0.25 * n_tools + 0.1 * n_turns + 0.2)
    if kind not in ("approval", "merge") and rng.random() < 0.2:
        plan.second = rng.choice(second_kills)
    return plan


@dataclass
class Kill:
    """What the store and the world looked like right after one kill."""

    view: StoreView
    effects: int  # lines in fx.txt at the kill
    requests: int  # model requests logged at the kill
    what: str


@dataclass
class Outcome:
    plan: Plan
    kills: list[Kill] = field(default_factory=list)
    completed: bool = False
    lost: int = 0
    duplicated: int = 0
    repeated_in_flight: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {
            "index": self.plan.index,
            "kind": self.plan.kind,
            "plan": {k: v for k, v in asdict(self.plan).items() if v is not None},
            "kills": len(self.kills),
            "killed_at": [k.what for k in self.kills],
            "completed": self.completed,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "repeated_in_flight": self.repeated_in_flight,
            "problems": self.problems,
            "seconds": round(self.seconds, 2),
        }


class Worker:
    """Runs trials one after another with its own endpoint, directory and kernels."""

    def __init__(
        self, root: Path, references: dict, ref_lock: threading.Lock, backend: Backend
    ) -> None:
        self.root = root
        self.cwd = root / "cwd"
        self.cwd.mkdir(parents=True)
        self.backend = backend
        self.server = ScriptedServer().start()
        self.script = TurnScript(self.server, [])
        self.server.set_script(self.script)
        env = {
            "JUPYTER_AGENT_STORE": str(backend.new("default")),
            "OPENAI_BASE_URL": self.server.url,
            "OPENAI_API_KEY": API_KEY,
        }
        self.pool = KernelPool(env, self.cwd)
        self.kernel: Kernel | None = None
        self.references = references
        self.ref_lock = ref_lock

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.shutdown()
        self.pool.close()
        self.server.stop()

    # -- helpers ----------------------------------------------------------------------

    def fresh(self) -> Kernel:
        if self.kernel is None:
            self.kernel = self.pool.get()
        return self.kernel

    def discard(self, killed: bool) -> None:
        """Forget the current kernel (killing it if it still runs)."""
        if self.kernel is not None:
            if killed:
                self.kernel.kill()
            else:
                self.kernel.shutdown()
        self.kernel = None

    def reset_world(self, entries: list[dict]) -> None:
        (self.cwd / "fx.txt").write_text("")
        (self.cwd / "ctl.json").write_text("{}")
        self.script.entries = entries
        self.script.slow_turn = None
        self.server.chunk_delay = 0.0
        self.server.reset_log()

    def effects(self) -> list[str]:
        return (self.cwd / "fx.txt").read_text().splitlines()

    def reference(self, calls: list[int]) -> list[dict]:
        """The transcript of an uninterrupted run of this script (computed once)."""
        key = tuple(calls)
        with self.ref_lock:
            if key in self.references:
                return self.references[key]
        store = self.backend.new(f"ref-{'-'.join(map(str, calls))}")
        self.reset_world(build_script(calls))
        kernel = self.fresh()
        set_crash(kernel, None, store)
        run = execute(kernel, f"%%agent --model scripted\n{PROMPT}", cell_id=f"ref{len(calls)}")
        assert run.status == "ok", run.text
        view = read_store(store)
        assert view.state.status == "done", run.text
        assert Counter(self.effects()) == Counter(
            line for i in range(sum(calls)) for line in (f"start {i}", f"end {i}")
        )
        with self.ref_lock:
            self.references.setdefault(key, transcript(view.state))
            return self.references[key]

    # -- a trial ----------------------------------------------------------------------

    def trial(self, plan: Plan) -> Outcome:
        started = time.monotonic()
        out = Outcome(plan)
        try:
            expected = self.reference(plan.calls)
            self._trial(plan, out, expected)
        except Exception:
            out.problems.append(traceback.format_exc(limit=6))
            self.discard(killed=True)
        out.seconds = time.monotonic() - started
        return out

    def _trial(self, plan: Plan, out: Outcome, expected: list[dict]) -> None:
        entries = build_script(plan.calls)
        call_index = {
            c["id"]: n for n, c in enumerate(c for e in entries for c in e.get("tool_calls", []))
        }
        self.reset_world(entries)
        store = self.backend.new(f"t{plan.index}")
        cell_id = f"trial{plan.index}"
        cell = f"%%agent --model scripted{' --approve' if plan.approve else ''}\n{PROMPT}"
        approve_cmd = f"%agent approve cell-{cell_id}"
        outputs: list[str] = []

        # The first command carries the planned kill; later ones at most the second kill.
        first = True
        waits = 0
        command = cell
        for _ in range(4 * plan.tools + 8):
            kernel = self.fresh()
            hook, action = None, None
            if first:
                hook, action = self._arm(plan)
            elif plan.second and len(out.kills) == 1 and command == cell:
                hook = plan.second
            tied = plan.approve and command == approve_cmd and waits == plan.wait
            if tied and not out.kills and plan.approval_how == "decided":
                hook = "after:checkpoint.approval:1"
            if tied and not out.kills and plan.approval_how == "running":
                action = "tool"
                (self.cwd / "ctl.json").write_text(json.dumps({str(self._nth_tool(plan)): 3}))
            set_crash(kernel, hook, store)
            first = False
            run = kernel.start(command, cell_id=cell_id if command == cell else None)
            killed = self._execute(kernel, run, plan, action)
            outputs.append(run.text)
            if not killed and hook:
                # The hook never fired (the run was shorter): this kernel still
                # has it armed with a count, so never reuse it.
                self.discard(killed=False)
            if killed:
                self._after_kill(store, out, what=hook or action or "?")
                (self.cwd / "ctl.json").write_text("{}")
                self.script.slow_turn = None
                command = approve_cmd if plan.approve and self._awaiting(store) else cell
                continue
            if run.status != "ok" or "Traceback" in run.text or "UsageError" in run.text:
                out.problems.append(f"command failed: {command!r}\n{run.text[-2000:]}")
                return
            status = read_store(store).state.status
            if status == "awaiting_approval":
                waits += 1
                if plan.approval_how == "idle" and waits == plan.wait and not out.kills:
                    self.discard(killed=True)
                    self._after_kill(store, out, what="approval idle")
                command = approve_cmd
                continue
            if status != "done":
                out.problems.append(f"command ended with status {status}:\n{run.text[-1500:]}")
                return
            break
        else:
            out.problems.append("the run did not finish within the command budget")
            return

        final = read_store(store)
        if final.state.status != "done":
            out.problems.append(f"final status {final.state.status}:\n{outputs[-1][-1500:]}")
            return
        if transcript(final.state) != expected:
            out.problems.append(
                "transcript differs from the uninterrupted run:\n"
                + json.dumps(transcript(final.state), indent=1)[:3000]
            )
        self._account(out, final, call_index)
        out.completed = not out.problems

    def _nth_tool(self, plan: Plan) -> int:
        assert plan.wait is not None
        return plan.wait - 1

    def _arm(self, plan: Plan) -> tuple[str | None, str | None]:
        """Set up the first command's kill; returns (hook spec, outside action)."""
        if plan.kind == "stream":
            self.script.slow_turn = plan.turn
            return None, "stream"
        if plan.kind == "tool":
            (self.cwd / "ctl.json").write_text(json.dumps({str(plan.tool): 3}))
            return None, "tool"
        if plan.kind == "random":
            (self.cwd / "ctl.json").write_text(
                json.dumps({str(i): 0.15 for i in range(plan.tools)})
            )
            return None, "random"
        return plan.hook, None

    def _execute(self, kernel: Kernel, run, plan: Plan, action: str | None) -> bool:
        """Run the command to its end or to its kill; True if the kernel was killed."""
        if action == "stream":
            assert plan.turn is not None
            marker = f"Turn {plan.turn}: che"
            if wait_text_or_end(kernel, run, marker):
                self.discard(killed=True)
                return True
        elif action == "tool":
            index = plan.tool if plan.kind == "tool" else self._nth_tool(plan)
            if wait_text_or_end(kernel, run, f"tool {index} running"):
                self.discard(killed=True)
                return True
        elif action == "random":
            assert plan.at is not None
            deadline = time.monotonic() + plan.at
            while run.status is None and time.monotonic() < deadline:
                kernel.pump(0.01)
            if run.status is None:
                self.discard(killed=True)
                return True
        if not wait_done_or_dead(kernel, run):
            self.discard(killed=True)
            return True
        return False

    def _after_kill(self, store: StoreSpec, out: Outcome, what: str) -> None:
        """Snapshot the store files as the crash left them; they must be readable."""
        with snapshot(store, self.root / f"snap{len(out.kills)}-t{out.plan.index}") as snap:
            try:
                view = read_store(snap)
            except Exception as exc:
                out.problems.append(f"store unreadable after kill at {what}: {exc!r}")
                view = StoreView()
        last = view.checkpoints[-1].kind if view.checkpoints else "nothing"
        out.kills.append(
            Kill(view, len(self.effects()), len(self.server.requests), f"{what} (last: {last})")
        )

    def _awaiting(self, store: StoreSpec) -> bool:
        """Whether the run waits for approval (read from a copy: the next kernel folds it)."""
        with snapshot(store, self.root / "peek") as snap:
            return read_store(snap).state.status == "awaiting_approval"

    def _account(self, out: Outcome, final: StoreView, call_index: dict[str, int]) -> None:
        final_keys = set(final.keys())
        lost = set()
        for kill in out.kills:
            lost |= set(kill.view.keys()) - final_keys
        out.lost = len(lost)
        if lost:
            out.problems.append(f"checkpoints lost: {sorted(lost)[:5]}")

        effects = self.effects()
        requests = [r["turn"] for r in self.server.requests]
        duplicated = 0
        for kill in out.kills:
            done = {call_index[c] for c in kill.view.completed_calls() if c in call_index}
            later = effects[kill.effects :]
            again = sorted(i for i in done if f"start {i}" in later)
            if again:
                out.problems.append(f"tool calls {again} ran again although their result was saved")
            duplicated += len(again)
            turns_done = sum(1 for m in kill.view.state.messages if m.get("role") == "assistant")
            asked_again = sorted({t for t in requests[kill.requests :] if t < turns_done})
            if asked_again:
                out.problems.append(f"model turns {asked_again} requested again after completion")
            duplicated += len(asked_again)
        out.duplicated = duplicated
        starts = Counter(line for line in effects if line.startswith("start"))
        turns = Counter(requests)
        out.repeated_in_flight = sum(n - 1 for n in starts.values()) + sum(
            n - 1 for n in turns.values()
        )
        if any(n > 1 + len(out.kills) for n in [*starts.values(), *turns.values()]):
            out.problems.append(f"more repeats than kills: {starts} {turns}")


def trial_count(default: int = 50) -> int:
    value = os.environ.get("JUPYTER_AGENT_FAULT_TRIALS")
    return int(value) if value else (400 if soak() else default)


@pytest.mark.timeout(3600)
def test_sigkill_at_every_kind_of_point_loses_nothing(tmp_path: Path) -> None:
    crash_trials(tmp_path, lambda root: Backend("duckdb", root), trial_count(), KINDS, SECOND_KILLS)


@pytest.mark.timeout(3600)
def test_sigkill_on_postgres_loses_nothing(tmp_path: Path, pg_server: PgServer) -> None:  # noqa: F811
    crash_trials(
        tmp_path,
        lambda root: Backend("postgres", root, pg_server),
        trial_count(8),
        PG_KINDS,
        PG_SECOND_KILLS,
        suffix=" (postgres)",
    )


def crash_trials(
    tmp_path: Path,
    backend: Callable[[Path], Backend],
    trials: int,
    kinds: list[str],
    second_kills: list[str],
    suffix: str = "",
) -> None:
    """Run the planned trials on two workers; record them per kind (names + ``suffix``)."""
    base = seed()
    only = os.environ.get("JUPYTER_AGENT_FAULT_TRIAL")
    indices = [int(only)] if only else range(trials)
    plans = [make_plan(base, i, kinds, second_kills) for i in indices]
    workers_n = min(2, len(plans))
    references: dict = {}
    lock = threading.Lock()
    workers = [
        Worker(tmp_path / f"w{w}", references, lock, backend(tmp_path / f"w{w}"))
        for w in range(workers_n)
    ]
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(workers_n) as ex:
            futures = [
                ex.submit(lambda w=w, mine=plans[i::workers_n]: [w.trial(p) for p in mine])
                for i, w in enumerate(workers)
            ]
            outcomes = [o for f in futures for o in f.result()]
    finally:
        for w in workers:
            w.close()
    elapsed = time.monotonic() - started
    outcomes.sort(key=lambda o: o.plan.index)

    by_kind: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_kind.setdefault(o.plan.kind, []).append(o)
    for kind, group in by_kind.items():
        record(
            "crash",
            kind + suffix,
            seed=base,
            trials=len(group),
            kills=sum(len(o.kills) for o in group),
            completed=sum(o.completed for o in group),
            lost=sum(o.lost for o in group),
            duplicated=sum(o.duplicated for o in group),
            repeated_in_flight=sum(o.repeated_in_flight for o in group),
            killed_at=Counter(
                k.what.split(" (last: ")[1].rstrip(")") for o in group for k in o.kills
            ),
            seconds=round(sum(o.seconds for o in group), 1),
            failures=[o.summary() for o in group if o.problems],
        )
    record(  # the report's totals, per backend
        "crash", "(all)" + suffix, seed=base, trials=len(outcomes), wall_seconds=round(elapsed, 1)
    )

    failed = [o for o in outcomes if o.problems]
    report = "\n\n".join(
        f"trial {o.plan.index} (seed {base}; rerun with JUPYTER_AGENT_FAULT_SEED={base} "
        f"JUPYTER_AGENT_FAULT_TRIAL={o.plan.index}): {json.dumps(o.summary()['plan'])}\n"
        + "\n".join(o.problems)
        for o in failed
    )
    print(
        f"seed {base}: {len(outcomes)} trials, {sum(len(o.kills) for o in outcomes)} kills, "
        f"{len(failed)} failed, {elapsed:.0f} s"
    )
    assert not failed, report
    assert sum(len(o.kills) for o in outcomes) >= 0.9 * len(outcomes)
