"""``%%agent`` and ``%agent``: the user-facing commands.

The magics only parse (:mod:`.options`), delegate to the kernel's runtime
(:mod:`.runtime`, :mod:`.runner`) and report. Every error a user can cause is a short :class:`UsageError`
saying what to do, raised before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from ..config import Settings
from ..core.state import AWAITING_APPROVAL, DONE, ERROR, prompt_hash
from ..errors import AgentBusy, AgentError, Cancelled, UsageProblem
from ..loop.runs import load_state, owner_of
from ..model.http import after_sending
from ..store.api import RunRow, Store
from ..tools.python import showing_in
from ..views.cell import CellEvents
from ..views.listing import Reader, agents_text, checkpoint_line
from ..views.render import TextEvents, known_steps
from ..vocab import plural, printable, what_if_text
from . import runner
from .after import After
from .cell_output import LiveCell
from .identity import (
    AgentIdentity,
    notebook_path,
    other_store,
    resolve,
    runner_ignores_display_updates,
)
from .options import HelpShown, cell_arguments, line_parser, parse_cell, parser_of, split_line
from .runner import CellRequest, Outcome
from .runtime import AgentRuntime, current
from .slot import TimelineSlot
from .traits import AgentTraits

if TYPE_CHECKING:
    from ..views.timeline import Timeline


@magics_class
class AgentMagics(AgentTraits, Magics):
    """Durable LLM agents in notebook cells."""

    #: What ``%agent list`` reads through (the REST API's reader, for one store).
    _reader: Any = None

    @property
    def runtime(self) -> AgentRuntime:
        """This kernel's runtime, configured as these magics are now."""
        runtime = current()
        runtime.shell = self.shell
        runtime.store_path = self.store or None
        return runtime

    def _store(self) -> Store:
        return self.runtime.store()

    @property
    def _user_ns(self) -> dict:
        """The namespace of the shell these magics were registered with."""
        assert self.shell is not None
        return self.shell.user_ns

    # -- %%agent --------------------------------------------------------------------

    # Options of %%agent: see .options; `%agent --help` and `%%agent?` are generated from them.
    @cell_arguments
    @cell_magic
    @no_var_expand  # "--budget $2.50" means dollars, not a variable
    def agent(self, line: str, cell: str) -> None:
        """Run the task in the cell body as a durable agent.

        Re-running the cell resumes an unfinished run from its last checkpoint, or
        restores a finished one (answer and variables) without calling the model.
        """
        parsed = parse_cell(
            parser_of(self.agent), line, cell, self._user_ns, dict(self.mcp_servers)
        )
        args, prompt, after = parsed.args, parsed.prompt, parsed.after
        settings = self._settings(
            args.max_steps,
            args.approve is not None,
            parsed.approve,
            budget=parsed.budget,
            context_window=args.context_window,
            plan=args.plan,
            user_tools=parsed.functions,
            mcp=parsed.servers,
            strict=bool(args.strict),
        )
        try:
            identity = resolve(self.shell, args.name, prompt)
            if identity.notice:  # a weak identity: say so before running
                print(identity.notice)
            store = self._store()
            if warning := other_store(identity.notebook, store.store_id, store.location):
                print(warning)
            waits = None
            if after:
                notebook = self._store().resolve_notebook(identity.notebook)
                waits = After(
                    self._store(),
                    notebook,
                    after,
                    here=lambda: self.runtime.claimed_agents(identity.notebook),
                )
                try:
                    waits.check(identity.agent)
                except UsageProblem as exc:
                    raise UsageError(str(exc)) from None
                if self._finished(identity, prompt, args.restart):
                    after, waits = [], None  # restored as it is: what it waited for is history
            request = CellRequest(
                identity,
                prompt,
                model=args.model or self.model or "",
                restart=args.restart,
                cell_options=True,
                info={"after": after} if after else None,
            )
            if args.background:
                self._run_in_background(request, settings, waits)
            elif waits is not None and (
                pending := waits.wait(lambda text: print(f"Agent {identity.agent} is {text}"))
            ):
                waiting = ", ".join(pending)
                print(
                    f"Agent {identity.agent} has not started. Re-run this cell once {waiting} "
                    "is done (re-run or resume it)."
                )
            else:
                outcome = self._run(request, settings, cell=True)
                if outcome.state.status == ERROR:  # e.g. the endpoint kept failing
                    last = self._store().latest_checkpoints([outcome.run.run_id])
                    cp = last.get(outcome.run.run_id)
                    error = (cp.info.get("error") if cp else None) or "see above"
                    raise UsageError(
                        f"Agent {identity.agent} paused after an error: {error} Nothing was "
                        "lost: re-run the cell to resume once the cause is fixed."
                    )
        except AgentError as exc:
            raise UsageError(str(exc)) from None

    def _run(self, request: CellRequest, settings: Settings, cell: bool = False) -> Outcome:
        """Run in the cell, blocking it; a ``%%agent`` cell shows its timeline first.

        Open timelines of the agent follow the run live either way. ``cell``: a
        ``%%agent`` cell, whose settings are what its line says now, so they
        replace the run's; ``%agent resume`` and the like keep the run's.
        """
        runtime = self.runtime
        identity = request.identity
        key = (identity.notebook, identity.agent)
        # The timeline's first load and the run's reads share one open of the store.
        # In a kernel the cell shows one bounded display, updated in place; elsewhere
        # (terminal IPython) the progress is printed as lines.
        live = (
            LiveCell(identity.agent, in_place=not runner_ignores_display_updates())
            if getattr(self.shell, "kernel", None)
            else None
        )
        with runtime.claimed(key), runtime.reads() as reads:
            text = CellEvents(live) if live is not None else TextEvents()
            # The timeline widget is built once the first model request is out (see .slot),
            # on the agent's timeline read now, in this session (from what the store kept of
            # it while current, so a resume's first request waits for no DuckDB). The steps
            # so far, for the output, come from that read; without a timeline, from the store.
            slot = self._timeline_slot(runtime.store(), identity) if cell else None
            text.known = (
                slot.timeline.known_steps()
                if slot is not None
                else known_steps(runtime.store(), identity.notebook, identity.agent)
            )
            outcome: Outcome | None = None
            try:
                events = runtime.events(key, text)
                with (
                    showing_in(live) if live is not None else contextlib.nullcontext(),
                    after_sending(slot.build if slot is not None else None),
                ):
                    outcome = runtime.run(request, settings, events, reads=reads)
            finally:
                if slot is not None:
                    slot.end(failed=sys.exc_info()[0] is not None)
                # A restore wrote nothing: the timelines show the store as it is already.
                wrote = outcome is None or outcome.action not in ("restore", "waiting")
                runtime.refresh(key, reread=wrote)
                if outcome is None and live is not None:
                    live.failed()  # its error follows; the header must not say running
        report(
            outcome,
            identity,
            live,
            restored=lambda: _show_restored(runtime.store(), outcome.run, self.shell),
        )
        return outcome

    def _run_in_background(
        self, request: CellRequest, settings: Settings, waits: After | None = None
    ) -> None:
        """Run on a thread; with ``waits``, first wait (resumes included) for those agents."""
        runtime = self.runtime
        identity = request.identity
        key = (identity.notebook, identity.agent)
        if runtime.busy(key):  # fail here, before anything is shown
            raise AgentBusy.here(identity.agent)
        self._show_timeline(runtime.store(), identity)

        def work(events: Any, cancel: Any) -> Outcome | None:
            if waits is not None:
                try:
                    waits.wait(events.info, cancel=cancel, until_done=True, poll=0.5)
                except Cancelled:
                    events.info(f"Agent {identity.agent} was paused before it started.")
                    return None
            return runtime.run(request, settings, events, cancel=cancel)

        def done(outcome: Outcome | None, out: Any) -> None:
            if outcome is not None:
                report(outcome, identity, out)

        runtime.start_job(key, work, done=done)
        print(
            f"Agent {identity.agent} is running in the background; its timeline shows its "
            f"progress. Pause it there or with %agent pause {identity.agent}."
        )

    def _finished(self, identity: AgentIdentity, prompt: str, restart: bool) -> bool:
        """The cell's agent finished this prompt: re-running it restores, it waits for nothing."""
        store = self._store()
        run = None if restart else runner.latest_run(store, *self._key(identity))
        if run is None or prompt_hash(prompt) not in (run.prompt_hash, prompt_hash(run.prompt)):
            return False
        cp = store.latest_checkpoints([run.run_id]).get(run.run_id)
        return cp is not None and cp.status == DONE

    def _key(self, identity: AgentIdentity) -> tuple[str, str]:
        return (self._store().resolve_notebook(identity.notebook), identity.agent)

    def _timeline_slot(self, store: Store, identity: AgentIdentity) -> TimelineSlot | None:
        """Where the cell's timeline widget will be, and its timeline, read now (None
        outside a kernel, or with the timeline off); :meth:`_show_timeline` builds the
        widget on that timeline when the slot asks."""
        if not self.timeline or getattr(self.shell, "kernel", None) is None:
            return None
        from ..views.timeline import Timeline

        timeline = Timeline.loaded(store, identity.notebook, identity.agent)
        return TimelineSlot(
            self.runtime,
            timeline,
            lambda handle, read: self._show_timeline(store, identity, handle, read),
        )

    def _show_timeline(
        self,
        store: Store,
        identity: AgentIdentity,
        slot: Any = None,
        timeline: Timeline | None = None,
    ) -> Any:
        """The cell's timeline widget (None outside a kernel, or with the timeline off);
        ``timeline``: the agent's, read already, shown as it is."""
        if not self.timeline or getattr(self.shell, "kernel", None) is None:
            return None
        from . import widget  # only where a frontend can show it

        return widget.display_timeline(
            store,
            identity.notebook,
            identity.agent,
            shell=self.shell,
            options=self._settings,
            replace=True,
            slot=slot,
            timeline=timeline,
        )

    # -- %agent ---------------------------------------------------------------------

    # IPython 9 types a named ``line_magic`` as a bare decorator (mypy: expected "Never").
    @line_magic("agent")  # type: ignore[arg-type, unused-ignore]
    def agent_line(self, line: str) -> Any:
        """Manage agents: list, show, resume, approve, reject, fork, cells, replay, diff, delete.
        `%agent --help`."""
        parser = line_parser(parser_of(self.agent))
        try:
            args = parser.parse_args(split_line("%agent", line))
        except HelpShown as shown:
            print(shown.text)
            return None
        except ValueError as exc:
            raise UsageError(f"{exc}\n\n{parser.format_usage().strip()}") from None
        try:
            return getattr(self, f"_cmd_{args.command}")(args)
        except AgentError as exc:
            raise UsageError(str(exc)) from None

    def _notebook(self) -> str:
        return self._store().resolve_notebook(notebook_path(self._user_ns)[0])

    def _find(self, name: str) -> RunRow:
        """The latest run of the agent called ``name`` (or a unique prefix of it)."""
        runs = self._store().runs(notebook=self._notebook())
        names = sorted({r.agent for r in runs})
        matches = [n for n in names if n == name] or [n for n in names if n.startswith(name)]
        if len(matches) != 1:
            known = ", ".join(names) or "none yet"
            what = "is ambiguous" if matches else "is not an agent of this notebook"
            raise UsageError(f"{name!r} {what}. Agents here: {known}.")
        return [r for r in runs if r.agent == matches[0]][-1]

    def _cmd_list(self, args: argparse.Namespace) -> None:
        # The REST API's reader: one short read, and while another kernel holds the
        # store, the last answer brought up to date from the journals (see .stale).
        store = self._store()
        if self._reader is None or self._reader.store is not store:
            self._reader = Reader(store)
        notebook = self._reader.last_good.notebook(notebook_path(self._user_ns)[0])
        print(agents_text(*self._reader.agents_in_order(notebook)))

    def _cmd_show(self, args: argparse.Namespace) -> None:
        run = self._find(args.name)
        store = self._store()
        model = runner.last_settings(store, run)["model"]
        what_if = what_if_text(run.info.get("what_if"))
        print(
            f"Agent {printable(run.agent)} · run {run.run_id} · model {model}"
            + (f" · {what_if}" if what_if else "")
        )
        for cp in store.checkpoints(run.run_id):
            print(checkpoint_line(cp))
        state = load_state(store, run)
        answer = state.final_answer()
        if answer is not None:
            print("\nAnswer:\n" + answer)

    def _cmd_resume(self, args: argparse.Namespace) -> None:
        self._continue(args.name, None)

    def _cmd_approve(self, args: argparse.Namespace) -> None:
        decision = {"action": "edit", "code": args.code} if args.code else {"action": "approve"}
        self._continue(args.name, decision)

    def _cmd_reject(self, args: argparse.Namespace) -> None:
        self._continue(args.name, {"action": "reject", "note": args.note or ""})

    def _continue(self, name: str, decision: dict | None) -> None:
        run = self._find(name)
        settings = self._settings()
        # No model: the run continues with the model of its latest execution.
        request = CellRequest.continuing(run, decision=decision)
        if decision is not None:
            state = load_state(self._store(), run)
            if state.status != AWAITING_APPROVAL:
                # Paused only for a child's approval: the decision is the child's.
                forwarded = self.runtime.child_approval(run, decision)
                if forwarded is None:
                    raise UsageError(f"Agent {run.agent!r} is not waiting for an approval.")
                child, request = forwarded
                verb = "Rejecting" if decision["action"] == "reject" else "Approving"
                print(
                    f"{verb} the call child agent {child.agent} waits on (agent {run.agent} "
                    f"waits for it): {child.agent} continues, then {run.agent}."
                )
        self._run(request, settings)

    def _cmd_timeline(self, args: argparse.Namespace) -> None:
        run = self._find(args.name)
        from . import widget

        widget.display_timeline(
            self._store(),
            run.notebook,
            run.agent,
            shell=self.shell,
            options=self._settings,
        )
        if getattr(self.shell, "kernel", None) is None:  # terminal IPython shows no widgets
            print(f"Here, %agent show {run.agent} prints the checkpoints of agent {run.agent}.")

    def _cmd_cells(self, args: argparse.Namespace) -> None:
        from .cells import insert_cells

        insert_cells(self._store(), self._find(args.name), self.shell, replace=args.replace)

    def _cmd_pause(self, args: argparse.Namespace) -> None:
        run = self._find(args.name)
        if self.runtime.pause((run.notebook, run.agent)):
            print(f"Pausing agent {run.agent} after its current step.")
        else:
            print(f"Agent {run.agent} is not running in the background in this kernel.")

    def _cmd_replay(self, args: argparse.Namespace) -> None:
        from .replay import replay_agent

        replay_agent(self._store(), self._find(args.name), self.shell, self._settings())

    def _cmd_diff(self, args: argparse.Namespace) -> dict | None:
        from ..views import diff as views_diff

        a, b, diff = views_diff.compare_points(self._store(), args.a, args.b, self._notebook())
        if args.json:
            return views_diff.as_dict(a, b, diff)
        print(views_diff.text(a, b, diff))
        return None

    def _cmd_fork(self, args: argparse.Namespace) -> None:
        from ..views import points
        from ..views.timeline import Timeline

        name, at = points.parse_point(args.target)
        if at is None:
            raise UsageError(
                f"Give the checkpoint as NAME@CHECKPOINT (e.g. analyst@7), not {args.target!r}."
            )
        run = self._find(name)
        step, runtime, store = at, self.runtime, self._store()
        key = (run.notebook, run.agent)
        owner = owner_of(store, run, step)  # the checkpoint may be a parent run's
        edit = {"reply": args.reply, "output": args.output, "model": args.model}
        with runtime.claimed(key):
            try:
                events = runtime.events(key, TextEvents())
                outcome = runtime.fork(
                    Timeline(store, *key),
                    owner,
                    step,
                    instruction=args.instruction or "",
                    settings=self._settings(),
                    events=events,
                    **edit,
                )
            finally:
                runtime.refresh(key, reread=True)
        report(outcome, AgentIdentity(run.notebook, run.agent, run.cell_id, "store"))

    def _cmd_delete(self, args: argparse.Namespace) -> None:
        run = self._find(args.name)
        runs = self._store().delete_agent(run.notebook, run.agent)
        if self._reader is not None:
            self._reader.last_good.forget()  # the list kept must not show it again
        print(f"Deleted agent {run.agent} ({len(runs)} run(s)).")


def report(
    outcome: Outcome,
    identity: AgentIdentity,
    file: Any = None,
    restored: Callable[[], None] | None = None,
) -> None:
    """The closing lines of a cell: what was restored, and the answer.

    Into ``file`` (default: stdout); a :class:`LiveCell` also takes the run's
    final status and answer, shown below its tail. ``restored`` shows a restored
    run's outputs again, before its answer.
    """
    state = outcome.state
    live = file if isinstance(file, LiveCell) else None
    if outcome.action == "restore":
        print(
            f"Agent {identity.agent} finished earlier ({plural(state.model_calls, 'step')}); restored "
            "from the store "
            "without calling the model. Use --restart to run it again.",
            file=file,
        )
        if restored is not None:
            restored()
        if live is None:
            print(state.final_answer() or "", file=file)
    elif outcome.action == "waiting":
        call = state.pending_tool_call() or {}
        from ..views.render import format_call

        print(f"Agent {identity.agent} is waiting for your approval of:", file=file)
        print(format_call(call), file=file)
        print(
            f"Approve with %agent approve {identity.agent}, or reject with %agent reject {identity.agent} --note '...'.",
            file=file,
        )
    if live is not None:
        answer = state.final_answer() if state.status == DONE else None
        live.finish(state.status, state.model_calls, answer)


def _show_restored(store: Store, run: RunRow, shell: Any) -> None:
    """A restored run's outputs shown again (imported when a cell restores one)."""
    from .cells import show_restored

    show_restored(store, run, shell)
