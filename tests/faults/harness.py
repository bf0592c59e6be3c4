"""Shared machinery of the fault-injection suite: warm kernels, scripts, store reading, results.

Everything here observes the system from outside, the way a user would: real
kernels killed with SIGKILL, a scripted OpenAI-compatible endpoint whose
request log says which model turns were asked for, tool code that appends to a
file so executions can be counted, and the store read back from its files.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_agent.core.state import RunState, fold
from jupyter_agent.loop.runs import chain
from jupyter_agent.store.api import CheckpointRow
from jupyter_agent.store.open import open_store

from ..kernels import Execution, Kernel

API_KEY = "sk-test-fault-0123456789abcdefXYZ"
RESULTS_ENV = "JUPYTER_AGENT_FAULT_RESULTS"
SOAK_ENV = "JUPYTER_AGENT_SOAK"
SEED_ENV = "JUPYTER_AGENT_FAULT_SEED"
DEFAULT_SEED = 20240611
SETUP = "%load_ext jupyter_agent\n%config AgentMagics.retry_backoff = 0.05"
BACKENDS = ["duckdb", "postgres"]

#: Where a store is: a DuckDB file, or a PostgreSQL database's URL.
StoreSpec = Path | str


def soak() -> bool:
    return os.environ.get(SOAK_ENV, "").lower() in {"1", "true", "yes"}


def seed() -> int:
    value = os.environ.get(SEED_ENV)
    if value:
        return int(value)
    return int(time.time()) if soak() else DEFAULT_SEED


# -- results for docs/reliability.md ------------------------------------------------


def record(fault_class: str, fault: str, **fields: Any) -> None:
    """Append one outcome line for the report (only when the report generator asks)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    line = json.dumps({"class": fault_class, "fault": fault, **fields}, sort_keys=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


# -- kernels --------------------------------------------------------------------------


def run(kernel: Kernel, code: str, cell_id: str | None = None, timeout: float = 120) -> Execution:
    """Like ``Kernel.run``, but polls finely: short cells finish in milliseconds, not 0.2 s."""
    execution = kernel.start(code, cell_id=cell_id)
    deadline = time.monotonic() + timeout
    while execution.status is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"cell did not finish in {timeout} s:\n{execution.text}")
        kernel.pump(0.01)
    return execution


def start_kernel(env: dict[str, str], cwd: Path, setup: str = SETUP) -> Kernel:
    kernel = Kernel(env, cwd=cwd)
    result = run(kernel, setup)
    if result.status != "ok":
        raise RuntimeError(f"kernel setup failed:\n{result.text}")
    return kernel


class KernelPool:
    """Boots kernels ahead of need in a background thread, so a trial rarely waits."""

    def __init__(self, env: dict[str, str], cwd: Path, spare: int = 1) -> None:
        self.env, self.cwd = env, cwd
        self._ready: queue.Queue[Kernel | BaseException] = queue.Queue()
        self._wanted = threading.Semaphore(spare)
        self._closed = threading.Event()
        self._all: list[Kernel] = []
        self._thread = threading.Thread(target=self._boot, daemon=True)
        self._thread.start()

    def _boot(self) -> None:
        while True:
            self._wanted.acquire()
            if self._closed.is_set():
                return
            try:
                kernel = start_kernel(self.env, self.cwd)
                self._all.append(kernel)
                self._ready.put(kernel)
            except BaseException as exc:  # surfaced by get()
                self._ready.put(exc)

    def get(self, timeout: float = 120) -> Kernel:
        item = self._ready.get(timeout=timeout)
        self._wanted.release()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._closed.set()
        self._wanted.release()
        self._thread.join(timeout=120)
        while not self._ready.empty():
            self._ready.get()
        for kernel in self._all:
            with contextlib.suppress(Exception):
                kernel.shutdown()


def wait_done_or_dead(kernel: Kernel, run: Execution, timeout: float = 60) -> bool:
    """Wait until the cell finishes (True) or the kernel process dies (False)."""
    deadline = time.monotonic() + timeout
    process = kernel.km.provisioner.process  # type: ignore[union-attr]
    while run.status is None:
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"cell neither finished nor died in {timeout} s:\n{run.text}")
        kernel.pump(0.01)
    return True


def wait_text_or_end(kernel: Kernel, run: Execution, text: str, timeout: float = 60) -> bool:
    """Wait for ``text`` in the cell output (True), or the cell ending first (False)."""
    deadline = time.monotonic() + timeout
    while text not in run.text:
        if run.status is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} did not appear in {timeout} s:\n{run.text}")
        kernel.pump(0.01)
    return True


def set_crash(kernel: Kernel, spec: str | None, store: StoreSpec) -> None:
    """Point the kernel at a store and arm (or disarm) the crash hook."""
    code = f"%config AgentMagics.store = {str(store)!r}\nimport os as _os\n" + (
        f"_os.environ['JUPYTER_AGENT_CRASH'] = {spec!r}\n"
        if spec
        else "_os.environ.pop('JUPYTER_AGENT_CRASH', None)\n"
    )
    result = run(kernel, code)
    if result.status != "ok":
        raise RuntimeError(result.text)


# -- scripted model -------------------------------------------------------------------


def tool_code(index: int) -> str:
    """Tool code that logs its start and end to ``fx.txt`` and sleeps as ``ctl.json`` says."""
    return (
        "import json, pathlib, time\n"
        f"pathlib.Path('fx.txt').open('a').write('start {index}\\n')\n"
        f"print('tool {index} running')\n"
        f"time.sleep(json.loads(pathlib.Path('ctl.json').read_text()).get('{index}', 0))\n"
        f"pathlib.Path('fx.txt').open('a').write('end {index}\\n')\n"
        f"v{index} = list(range({index} + 3))\n"
        f"print('tool {index} done', sum(v{index}))"
    )


def turn_text(turn: int) -> str:
    return f"Turn {turn}: checking the next part of the task carefully."


def build_script(calls_per_turn: list[int]) -> list[dict]:
    """One entry per model turn: text plus ``n`` python calls, then a final answer."""
    script, index = [], 0
    for turn, n in enumerate(calls_per_turn):
        calls = []
        for i in range(n):
            calls.append(
                {
                    "name": "python",
                    "arguments": {"code": tool_code(index)},
                    "id": f"call_{turn}_{i}",
                }
            )
            index += 1
        script.append({"content": turn_text(turn), "tool_calls": calls})
    script.append({"content": turn_text(len(calls_per_turn)) + " All done."})
    return script


class TurnScript:
    """A callable script that can slow down the stream of one chosen turn."""

    def __init__(self, server: Any, entries: list[dict]) -> None:
        self.server = server
        self.entries = entries
        self.slow_turn: int | None = None
        self.slow_delay = 0.25

    def __call__(self, body: dict) -> dict:
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        self.server.chunk_delay = self.slow_delay if turn == self.slow_turn else 0.0
        return self.entries[turn] if turn < len(self.entries) else {"content": "(exhausted)"}


# -- reading the store ----------------------------------------------------------------


@dataclass
class StoreView:
    """What a store holds for one agent: its runs, checkpoints and folded state."""

    runs: list[Any] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    state: RunState = field(default_factory=RunState)

    @property
    def model_steps(self) -> int:
        return sum(1 for c in self.checkpoints if c.kind == "model")

    def completed_calls(self) -> set[str]:
        return {m["tool_call_id"] for m in self.state.messages if m.get("role") == "tool"}

    def keys(self) -> list[tuple]:
        return [(c.run_id, c.step, c.kind, c.status, c.summary) for c in self.checkpoints]


def read_store(path: StoreSpec) -> StoreView:
    """Read (and so fold journals into) the store at ``path``; raises if it is unreadable."""
    store = open_store(path, busy_timeout=60)
    view = StoreView(runs=store.runs())
    if view.runs:
        run = view.runs[-1]
        view.checkpoints = store.checkpoints(run.run_id)
        view.state = fold(store.payloads(chain(store, run)))
    return view


def copy_store(path: Path, dest: Path) -> Path:
    """Copy a store's files (DuckDB file, WAL, journals) as they are on disk."""
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".wal"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            shutil.copy2(src, dest / src.name)
    journal_dir = path.with_name(path.name + ".journal")
    if journal_dir.is_dir():
        shutil.copytree(journal_dir, dest / journal_dir.name)
    return dest / path.name


@contextlib.contextmanager
def snapshot(store: StoreSpec, dest: Path) -> Iterator[StoreSpec]:
    """The store as a crash left it, to read without changing it (nor folding its journals).

    A DuckDB store's files are copied (and the copy removed afterwards); a
    PostgreSQL database is the server's, which a dead kernel cannot damage,
    so it is read in place.
    """
    if isinstance(store, str):
        yield store
        return
    try:
        yield copy_store(store, dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


class Backend:
    """Fresh stores of one backend: DuckDB files under ``root``, or databases on a server."""

    def __init__(self, name: str, root: Path, pg: Any = None) -> None:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; one of {BACKENDS}")
        if name == "postgres" and pg is None:
            raise ValueError("the postgres backend needs a PostgreSQL server (tests/pg.py)")
        self.name, self.root, self.pg = name, root, pg

    @property
    def suffix(self) -> str:
        """What the report appends to a fault's name: nothing for DuckDB, " (postgres)"."""
        return "" if self.name == "duckdb" else f" ({self.name})"

    def new(self, label: str) -> StoreSpec:
        """An empty store named after ``label`` (a directory for DuckDB)."""
        if self.pg is not None:
            return self.pg.create_database()
        return self.root / label / "agents.duckdb"


def transcript(state: RunState) -> list[dict]:
    return [dict(m) for m in state.messages]


def raw_store_bytes(path: Path) -> bytes:
    """Every byte the store keeps on disk: DuckDB file, WAL, journals (damaged ones too)."""
    parts = []
    for candidate in sorted(path.parent.glob(path.name + "*")):
        if candidate.is_file():
            parts.append(candidate.read_bytes())
        elif candidate.is_dir():
            parts.extend(p.read_bytes() for p in sorted(candidate.rglob("*")) if p.is_file())
    return b"".join(parts)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


class AgentEnv:
    """A scripted endpoint and a kernel for tests that run one agent after another.

    Each :meth:`agent` call gets its own store and cell id; :meth:`restart`
    SIGKILLs the kernel and starts a new one with the same environment, as a
    crash followed by a kernel restart would. The stores are ``backend``'s
    (default: a DuckDB file per agent under ``root``).
    """

    def __init__(self, root: Path, backend: Backend | None = None, **server_options: Any) -> None:
        from jupyter_agent.testing import ScriptedServer

        self.root = root
        self.backend = backend or Backend("duckdb", root)
        self.cwd = root / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        (self.cwd / "ctl.json").write_text("{}")
        (self.cwd / "fx.txt").write_text("")
        self.server = ScriptedServer(**server_options).start()
        self.env = {
            "JUPYTER_AGENT_STORE": str(root / "default.duckdb"),
            "OPENAI_BASE_URL": self.server.url,
            "OPENAI_API_KEY": API_KEY,
        }
        self.kernel = start_kernel(self.env, self.cwd)
        self.n = 0
        self.store: StoreSpec = root / "default.duckdb"
        self.cell_id = ""

    def agent(
        self,
        script: list[dict],
        body: str = "Do the task.",
        options: str = "",
        crash: str | None = None,
    ) -> Execution:
        """Start a new agent (own store and cell id) and run its cell to the end or the crash."""
        self.n += 1
        self.store = self.backend.new(f"s{self.n}")
        self.cell_id = f"a{self.n}"
        self.server.set_script(script)
        self.server.reset_log()
        return self.rerun(body, options, crash)

    def cell(self, body: str = "Do the task.", options: str = "") -> str:
        return f"%%agent --model scripted {options}\n{body}"

    def rerun(
        self, body: str = "Do the task.", options: str = "", crash: str | None = None
    ) -> Execution:
        set_crash(self.kernel, crash, self.store)
        execution = self.kernel.start(self.cell(body, options), cell_id=self.cell_id)
        if not wait_done_or_dead(self.kernel, execution, timeout=120):
            self.restart()
        return execution

    def run(self, code: str) -> Execution:
        return run(self.kernel, code)

    def restart(self) -> None:
        """SIGKILL the kernel (or reap it, if a crash hook already did) and start a new one."""
        self.kernel.kill()
        self.kernel = start_kernel(self.env, self.cwd)
        set_crash(self.kernel, None, self.store)

    def view(self) -> StoreView:
        return read_store(self.store)

    def close(self) -> None:
        self.kernel.shutdown()
        self.server.stop()
