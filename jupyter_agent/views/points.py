"""A point of an agent's history as users name it, and its state there.

A point is ``RUN``, ``RUN@CHECKPOINT``, an agent's name (its latest run) or
``NAME@CHECKPOINT``; a name may be a unique prefix, as everywhere else. The
state at a point is folded from the run's whole history (a fork's parents
included, :mod:`jupyter_agent.core.history`) by :func:`jupyter_agent.core.state.fold`,
the one fold there is: the timeline's fork and rewind
(:mod:`jupyter_agent.kernel.actions`), ``jupyter agent diff`` and ``%agent diff``
all read it here. Reads payloads and rows only; unpickles nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.history import Segments
from ..core.history import segments as history_of
from ..core.state import RunState, fold
from ..errors import NotFound, UsageProblem
from ..store.api import RunRow, Store
from .listing import by_agent


@dataclass
class Folded:
    """A run's state at one checkpoint, and what a diff reads beside it."""

    run: RunRow
    state: RunState
    #: The checkpoint each of ``state.messages`` was added at.
    message_steps: list[int] = field(default_factory=list)
    #: Variable name -> ``{type, repr, size}`` as the checkpoint that last saved it said.
    var_info: dict[str, dict] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def label(self) -> str:
        return f"{self.run.agent}@{self.step}"


def state_at(
    store: Store, run: RunRow, step: int | None = None, segments: Segments | None = None
) -> Folded:
    """``run``'s state up to its own checkpoint ``step`` (None: its last), folded along its
    history (``segments``: as a timeline already knows them); :class:`NotFound` if the run
    has no such checkpoint."""
    if segments is None:
        segments = history_of(run, store.run, whole=True)
    pairs = store.payloads([*segments[:-1], (run.run_id, step)])
    steps: list[int] = []
    state = fold(pairs, steps)
    if step is not None and state.step != step:
        raise NotFound(f"Run {run.run_id} has no checkpoint {step}.")
    if state.step < 0:
        raise NotFound(f"Run {run.run_id} has no checkpoints yet.")
    info: dict[str, dict] = {}
    for row, _ in pairs:
        info.update(row.info.get("vars") or {})
    return Folded(run, state, steps, {n: info[n] for n in state.vars if n in info})


def parse_point(text: str) -> tuple[str, int | None]:
    """``"NAME@7"`` -> ``("NAME", 7)``; :class:`UsageProblem` for a malformed one."""
    name, at, step = text.strip().partition("@")
    if not name or (at and not step.isdigit()):
        raise UsageProblem(
            f"{text!r} is not a point: give RUN, RUN@CHECKPOINT, NAME or NAME@CHECKPOINT "
            "(a checkpoint is a number, as in sales@7)."
        )
    return name, int(step) if at else None


def find_run(store: Store, name: str, notebook: str | None = None) -> RunRow:
    """The run ``name`` names, first match wins: a run id (anywhere); the latest run of the
    agent of that name; a unique prefix of a run id (4 characters at least); the latest
    run of the agent whose name it uniquely begins. Prefixes and names are looked for in
    ``notebook``, or in every notebook."""
    if not store.exists():  # reading must not create a store
        raise NotFound(f"No run or agent {name!r}: the store holds no agents yet.")
    exact = store.run(name)  # a run id names one run wherever its notebook is
    if exact is not None:
        return exact
    runs = store.runs(notebook=notebook)
    if len(name) >= 4 and not any(r.agent == name for r in runs):
        hits = [r for r in runs if r.run_id.startswith(name)]
        if len(hits) == 1:
            return hits[0]
    return agent_runs(runs, name, notebook, what="run or agent")[-1]


def agent_runs(
    runs: list[RunRow], name: str, notebook: str | None, *, what: str = "agent"
) -> list[RunRow]:
    """The runs, oldest first, of the agent called ``name`` among ``runs``, else of the one
    whose name ``name`` uniquely begins: the one rule every command finds an agent by.

    :class:`NotFound` in one line when none is, or when several are (naming them);
    ``notebook``: the one ``runs`` are of (None: every notebook).
    """
    agents = by_agent(runs)
    keys = [k for k in agents if k[1] == name] or [k for k in agents if k[1].startswith(name)]
    where = f"in {notebook}" if notebook else "in the store"
    if not keys:
        raise NotFound(f"No {what} {name!r} {where}. `jupyter agent list` shows the agents.")
    if len(keys) > 1:
        listed = ", ".join(f"{a} ({nb})" for nb, a in keys[:5])
        hint = "Give a full name." if notebook else "Give --notebook or a full name."
        raise NotFound(f"{name!r} is ambiguous {where}: {listed}. {hint}")
    return agents[keys[0]]


def point(store: Store, text: str, notebook: str | None = None) -> Folded:
    """The state at the point ``text`` names (see the module)."""
    name, step = parse_point(text)
    return state_at(store, find_run(store, name, notebook), step)
