"""What a timeline's buttons change: forking a run from a checkpoint, rewinding the namespace.

The timeline itself (:mod:`jupyter_agent.views.timeline`) only reads; these
act on the store and on the kernel's namespace, so they live with the kernel.
Both refuse while another process executes one of the agent's runs, and both
start from a state folded from a whole history (a deleted ancestor is refused:
see :mod:`jupyter_agent.core.history`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..config import FilePolicy, Settings
from ..core.state import FileRecord, RunState
from ..errors import AgentBusy
from ..loop.checkpoints import Collaborators
from ..loop.edits import Edit, edited_output, plan_edit
from ..loop.runs import load_state, new_run
from ..namespace.files import Folder, PutBack, put_back
from ..namespace.tracking import restore
from ..store.api import RunRow, Store
from ..views import points
from ..views.timeline import Timeline
from .identity import AgentIdentity
from .runner import Outcome, make_execution, settings_at


@dataclass
class Rewound:
    """What rewinding the namespace did."""

    step: int
    restored: list[str]
    removed: list[str]
    failed: dict[str, str]
    unsaved: dict[str, str]
    #: What it did to the files the runs wrote beside the notebook.
    files: PutBack = field(default_factory=PutBack)

    def message(self) -> str:
        parts = [f"Namespace rewound to checkpoint {self.step}"]
        if self.restored:
            parts.append("restored " + ", ".join(self.restored))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        if not self.restored and not self.removed:
            parts.append("no agent variables to change")
        if self.files.restored:
            parts.append("files put back: " + ", ".join(self.files.restored))
        if self.files.removed:
            parts.append("files removed: " + ", ".join(self.files.removed))
        text = "; ".join(parts) + "."
        for name, why in {**self.unsaved, **self.failed, **self.files.kept}.items():
            text += f" {name}: {why} (left as it is)."
        return text


def ensure_idle(timeline: Timeline) -> None:
    """Refuse to act while any run of the agent executes in another process."""
    live = timeline.store.live_runs() & {r.run_id for r in timeline.runs}
    if live:
        raise AgentBusy(
            f"Agent {timeline.agent!r} is running in another kernel; wait for it or stop it there."
        )


def state_at(timeline: Timeline, run: RunRow, step: int) -> RunState:
    """The run's state folded up to and including ``step``."""
    return points.state_at(timeline.store, run, step, timeline.segments(run, whole=True)).state


@dataclass
class Current:
    """What the run, or the agent's latest run, has now: what a rewind may remove or change."""

    vars: set[str]
    #: The agent's latest record of each file it wrote (the latest run's first).
    files: dict[str, FileRecord]


def _later(timeline: Timeline, run: RunRow) -> Current:
    """What ``run`` and the agent's latest run hold now: a rewind of ``run`` removes what they
    added since its checkpoint, even when a later run (a fork, a re-run) added it."""
    now = load_state(timeline.store, run)
    later = Current(set(now.vars), dict(now.files))
    latest = timeline.latest
    if latest is not None and latest.run_id != run.run_id:
        last = load_state(timeline.store, latest)
        later.vars |= set(last.vars)
        later.files.update(last.files)
    return later


def rewind(timeline: Timeline, shell: Any, run_id: str, step: int, files: FilePolicy) -> Rewound:
    """Put the agent's variables back as they were at a checkpoint.

    Variables the agent set later (in this run or the agent's latest run) and
    that did not exist yet at that step are removed; values that could not be
    saved are left as they are. So are the files beside the notebook: put back
    as they were, removed if written later, kept if the user changed them since
    (see :func:`~jupyter_agent.namespace.files.put_back`). ``files`` is the
    user's policy now: with files off none is touched, and an ignored one is kept.
    """
    ensure_idle(timeline)
    run = timeline.run(run_id)
    target = state_at(timeline, run, step)
    return _rewind_to(timeline.store, shell, run, target, _later(timeline, run), files)


def _rewind_to(
    store: Store, shell: Any, run: RunRow, target: RunState, later: Current, files: FilePolicy
) -> Rewound:
    ns = shell.user_ns
    removed = sorted(
        n for n in later.vars - set(target.vars) if n in ns and n not in target.unsaved
    )
    for name in removed:
        del ns[name]
    restored, failed = restore(ns, target.vars, store.blobs)
    put = PutBack()
    if files.enabled and (target.files or later.files):
        folder = Folder.of(run.notebook, store.location, files)
        put = put_back(folder, target.files, later.files, store.blobs)
    return Rewound(target.step, restored, removed, failed, dict(target.unsaved), put)


def check_edit(
    timeline: Timeline,
    run_id: str,
    step: int,
    *,
    reply: str | None = None,
    output: str | None = None,
    model: str | None = None,
) -> Edit | None:
    """The edit of a "what if" fork from that checkpoint, refused in one line if it does not fit.

    Called before a fork's background job starts, so bad input is said where it was given.
    """
    kind = state_at(timeline, timeline.run(run_id), step).kind
    return plan_edit(kind, step, reply=reply, output=output, model=model)


def fork(
    timeline: Timeline,
    run_id: str,
    step: int,
    *,
    instruction: str = "",
    reply: str | None = None,
    output: str | None = None,
    model: str | None = None,
    collaborators: Collaborators,
    settings: Settings,
) -> Outcome:
    """Start a new run from a checkpoint and execute it; the original run stays as it was.

    The fork continues from that checkpoint's state, so the namespace is first
    rewound to it, with the model and approval policy in effect there
    (``settings`` may add approvals, as for any continuation). It keeps the
    run's prompt, so it becomes what re-running the agent's cell continues.

    "What if" forks (:mod:`jupyter_agent.loop.edits`) change one thing there: the
    model's ``reply`` at a ``model`` checkpoint, the tool ``output`` at a
    ``tool_result`` one, or the ``model``; anything that does not fit is refused
    before the fork exists.
    """
    shell, events = collaborators.shell, collaborators.events
    with timeline.store.agent_lock(*timeline.key):
        ensure_idle(timeline)
        source = timeline.run(run_id)
        identity = AgentIdentity(source.notebook, source.agent, source.cell_id, "store")
        # What the run ran with at that checkpoint: a re-run may have changed them.
        there = settings_at(timeline.store, source, step)
        policy = settings.policy.continuing(there["approve"])
        state = after = state_at(timeline, source, step)
        edit = plan_edit(after.kind, step, reply=reply, output=output, model=model)
        info = {"approve": policy.recorded_approval(), "instruction": instruction.strip()}
        if edit is not None:
            if edit.parent_step != step:
                state = state_at(timeline, source, edit.parent_step)
                if edit.kind == "output":
                    edit.payload = edited_output(state, after, step, output or "")
            info.update(edit.info(source.run_id, step))
        run = new_run(
            identity,
            source.prompt,
            model or there["model"],
            parent=(source.run_id, edit.parent_step if edit else step),
            info=info,
        )
        settings = replace(settings, policy=policy)
        execution = make_execution(run, state, run.model, collaborators, settings)
        # An edited output keeps what its call did: the namespace is as after it.
        target = after if edit is not None and edit.kind == "output" else state
        later = _later(timeline, source)
        rewound = _rewind_to(timeline.store, shell, source, target, later, settings.files)
        events.info(rewound.message())
        execution.execute(first=True)
        return Outcome(run, execution.state, "fork", rewound.restored, rewound.failed)
