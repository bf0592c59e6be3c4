"""``jupyter agent resume``: run a notebook headless, as JupyterLab would, so its agents continue.

Interrupted agents continue from their last checkpoint and finished ones
restore, because every cell reaches the kernel with what JupyterLab sends: the
notebook's path and the cell's id. Whatever stops the run (a notebook that
cannot be read, a kernel that is not installed, a failing or timed-out cell) is
one :class:`~jupyter_agent.errors.NotebookError` sentence, never a traceback.

The notebook records the id of the store its agents live in
(:mod:`jupyter_agent.core.notebook_store`): against another store, or one that
holds none of its agents though they ran before, nothing is run
(:class:`~jupyter_agent.errors.OtherStore`) unless ``--new-store`` says to start
them afresh there; after a run the notebook records the store it ran with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from ..core.notebook_store import other_store, record_store, recorded_store
from ..errors import NotebookError, OtherStore
from ..store.api import Store
from ..vocab import ENV_NOTEBOOK, ENV_STOP_FILE, ENV_STRICT
from .export import write_atomic

#: Seconds between looks at whether a run was cancelled (``cancelled`` of :func:`run_notebook`).
CANCEL_POLL = 1.0
#: Seconds between interrupts of a cancelled run's kernel while the run goes on.
INTERRUPT_AGAIN = 2.0
#: Seconds after its first interrupt that a cancelled run's kernel is killed if it still runs.
CANCEL_GRACE = 10.0


def read_notebook(path: str) -> Any:
    """The notebook at ``path`` as nbformat 4, or a :class:`NotebookError` saying why not."""
    import nbformat

    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise NotebookError(f"{name} is a directory, not a notebook.") from None
    except FileNotFoundError:
        raise NotebookError(f"No notebook {name}.") from None
    except OSError as exc:
        raise NotebookError(f"Cannot read {name}: {exc.strerror or exc}.") from None
    try:
        nb = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise NotebookError(f"{name} is not a notebook: not UTF-8 at byte {exc.start}.") from None
    except ValueError as exc:
        why = "it is empty" if not data.strip() else f"not JSON ({exc})"
        raise NotebookError(f"{name} is not a notebook: {why}.") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{name} is not a notebook: it has no list of cells.")
    try:
        node = nbformat.reads(json.dumps(nb), as_version=4, capture_validation_error={})
        nbformat.validate(node)
    except Exception as exc:  # nbformat's errors have no common base
        first = str(exc).strip().splitlines()
        raise NotebookError(
            f"{name} is not a notebook nbformat 4 can read: {first[0] if first else exc}."
        ) from None
    return node


def _last_line(log: IO[str]) -> str:
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _stopped(exc: Exception, cell: int, seconds: int | None, log: IO[str]) -> str:
    """Why a run stopped at ``cell`` (numbered from 1), in one sentence."""
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    if isinstance(exc, CellExecutionError):
        lines = str(exc.evalue).strip().splitlines()
        return f"Cell {cell} failed: {exc.ename}" + (f": {lines[0]}" if lines else ".")
    if isinstance(exc, DeadKernelError):
        last = _last_line(log)
        return f"The kernel died in cell {cell}" + (f": {last}" if last else ".")
    return f"Cell {cell} timed out after {seconds} s; the kernel was stopped."


def run_notebook(
    path: str,
    nb: Any,
    *,
    env: dict[str, str],
    timeout: float | None,
    write: Callable[[str, str], None],
    stamp: Callable[[Any], None] = lambda nb: None,
    written: bool = True,
    skip: Callable[[Any], bool] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> bool:
    """Execute a notebook as JupyterLab would, writing outputs back after every cell.

    The kernel starts in the notebook's folder with ``env`` added (the
    notebook's real path among it), and each execute request carries the cell's
    nbformat id as ``metadata.cellId``, as JupyterLab sends it: nbclient sends no
    cell metadata, so its execute call is replaced. The kernel process's own log
    goes to a temporary file (its last line explains a kernel that died).
    ``nb`` is the notebook as :func:`read_notebook` read it. Raises
    :class:`NotebookError` for what stopped the run; the outputs so far are
    written back once a cell ran. ``stamp`` changes the notebook before each write;
    ``written=False``: ``write`` keeps nothing, and errors do not say it does.
    ``skip``: cells it names are not run (a job for one agent skips the others' cells).
    ``cancelled``: asked every :data:`CANCEL_POLL` seconds during the run; once it says
    so, the kernel's agents are told to stop before their next step, through a file
    the kernel's environment names, and the kernel is interrupted as JupyterLab's stop
    button does (a running agent writes an interrupted checkpoint, so a later run
    continues it), again while it runs on and killed at last (:func:`_watch`); no
    further cell runs, and the run returns False. Otherwise it returns True.
    """
    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    name = os.path.basename(path)
    stopping = threading.Event()  # set once ``cancelled`` said so
    calls = threading.Lock()  # held by the watcher's calls to the kernel's manager (:func:`_call`)

    class Stopped(Exception):
        """Raised in place of the next cell's run once the run was cancelled."""

    def save() -> None:
        stamp(nb)
        try:
            write(path, nbformat.writes(nb))
        except OSError as exc:
            raise NotebookError(
                f"Cannot write the outputs back to {name}: {exc.strerror or exc}."
            ) from None

    class Client(NotebookClient):
        cell_id: str | None = None
        cell_number = 0

        async def async_execute_cell(
            self,
            cell: nbformat.NotebookNode,
            cell_index: int,
            execution_count: int | None = None,
            store_history: bool = True,
        ) -> nbformat.NotebookNode:
            if stopping.is_set():
                raise Stopped
            if skip is not None and skip(cell):
                return cell
            self.cell_id = cell.get("id")
            self.cell_number = cell_index + 1
            try:
                return await super().async_execute_cell(
                    cell, cell_index, execution_count, store_history
                )
            finally:
                if cell.get("cell_type") == "code":
                    save()  # as papermill does: a crash keeps the outputs so far

        async def _async_cleanup_kernel(self) -> None:
            with calls:  # the watcher's call under way ends first, and no other starts
                done.set()
            await super()._async_cleanup_kernel()

        async def async_start_new_kernel_client(self) -> Any:
            kc = await super().async_start_new_kernel_client()

            def execute(
                code: str,
                silent: bool = False,
                store_history: bool = True,
                user_expressions: dict | None = None,
                allow_stdin: bool | None = None,
                stop_on_error: bool = True,
            ) -> str:
                content = {
                    "code": code,
                    "silent": silent,
                    "store_history": store_history,
                    "user_expressions": user_expressions or {},
                    "allow_stdin": bool(allow_stdin),
                    "stop_on_error": stop_on_error,
                }
                metadata = {"cellId": self.cell_id} if self.cell_id else {}
                msg = kc.session.msg("execute_request", content, metadata=metadata)
                kc.shell_channel.send(msg)
                return msg["header"]["msg_id"]

            kc.execute = execute  # type: ignore[method-assign]  # with the cell's id
            return kc

    seconds = None if timeout is None else max(1, math.ceil(timeout))
    client = Client(nb, timeout=seconds, resources={"metadata": {"path": os.path.dirname(path)}})
    done = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="jupyter-agent-run-") as folder,
        tempfile.TemporaryFile("w+", prefix="jupyter-agent-kernel-") as log,
    ):
        if cancelled is not None:
            stop = os.path.join(folder, "stop")
            env = {**env, ENV_STOP_FILE: stop}
            watch = (client, cancelled, stop, stopping, done, calls)
            threading.Thread(target=_watch, args=watch, daemon=True).start()
        try:
            client.execute(env={**os.environ, **env}, stdout=log, stderr=log)
        except Stopped:
            return False
        except NoSuchKernel as exc:
            raise NotebookError(
                f"{name} asks for the kernel {exc.args[0] if exc.args else '?'!s}, which is not "
                "installed (`jupyter kernelspec list` shows those that are)."
            ) from None
        except (CellExecutionError, DeadKernelError, TimeoutError) as exc:
            if stopping.is_set():  # the interrupted cell's KeyboardInterrupt
                return False
            why = _stopped(exc, client.cell_number, seconds, log)
            kept = f" The outputs so far were written to {name}." if written else ""
            raise NotebookError(why + kept) from None
        finally:
            done.set()
            if client.cell_number:
                with contextlib.suppress(NotebookError):
                    save()
    return not stopping.is_set()


def _watch(
    client: Any,
    cancelled: Callable[[], bool],
    stop: str,
    stopping: threading.Event,
    done: threading.Event,
    calls: threading.Lock,
) -> None:
    """Until the run is ``done``: once ``cancelled`` says so, stop the kernel's agents.

    First the file ``stop`` is created, which the kernel's agents look for before
    each step (:data:`~jupyter_agent.vocab.ENV_STOP_FILE`): whatever happens to the
    interrupts, no agent asks the model again or starts another call. Then the
    kernel is interrupted until it stops, to cut short the step under way.

    The interrupt is the kernel manager's, what JupyterLab's stop button does: as the
    kernel spec asks (SIGINT, or an interrupt message), and a signal goes to the
    kernel's process group, so what the agent's code started in it is told too. The
    group is the kernel's own session: no process of the worker or the user outside
    it. The agent running in the kernel writes an interrupted checkpoint.

    One interrupt can be missed: the kernel ignores SIGINT while a command run by
    ``os.system`` runs (the command ends, the agent goes on), and code may catch
    KeyboardInterrupt. So the kernel is interrupted again every
    :data:`INTERRUPT_AGAIN` seconds while the run goes on (a second interrupt during
    a checkpoint waits for it to be written), and one that still runs
    :data:`CANCEL_GRACE` seconds after the first is killed: a kill as in a crash,
    after which the call in flight runs again when the agent is resumed.
    """
    while not done.wait(CANCEL_POLL):
        try:
            if cancelled():
                break
        except Exception:  # a look that failed (a database busy a moment) is tried again
            continue
    else:
        return
    stopping.set()
    with contextlib.suppress(OSError), open(stop, "a"):
        pass  # a run that ended meanwhile took its folder with it
    deadline = time.monotonic() + CANCEL_GRACE
    while True:
        _call(client, calls, done, "interrupt_kernel")
        if done.wait(min(INTERRUPT_AGAIN, max(0.0, deadline - time.monotonic()))):
            return
        if time.monotonic() >= deadline:
            _call(client, calls, done, "signal_kernel", signal.SIGKILL)  # its process group
            return


def _call(client: Any, calls: threading.Lock, done: threading.Event, name: str, *args: Any) -> None:
    """Call the kernel manager's method ``name`` from the watcher thread, unless the run is done.

    Under ``calls``, which the client's clean-up takes before it shuts the
    kernel down: an interrupt message goes through the manager's control socket,
    which that shutdown uses and closes, and a ZeroMQ socket is for one thread at a
    time. A kernel that is gone needs nothing more: errors are ignored.
    """
    with calls, contextlib.suppress(Exception):
        if done.is_set():
            return
        result = getattr(client.km, name)(*args)
        if inspect.iscoroutine(result):  # nbclient's manager is asynchronous
            asyncio.run(result)


def positive_seconds(text: str) -> float:
    """``--timeout``: a number of seconds above zero (argparse reports anything else)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _ran_agents(nb: Any) -> bool:
    """Whether the notebook has an agent cell that ran before (it has outputs)."""
    return any(
        cell.get("cell_type") == "code"
        and cell.get("source", "").lstrip().startswith("%%agent")
        and cell.get("outputs")
        for cell in nb.cells
    )


def check_store(path: str, nb: Any, store: Store) -> None:
    """Refuse to run ``nb`` against a store its agents do not live in (:class:`OtherStore`).

    Its agents live elsewhere when it records another store's id, or records one
    and this store does not exist yet; or, recording none (made before store ids),
    when its agent cells ran before and this store holds no run of the notebook.
    """
    name, where = os.path.basename(path), store.location
    recorded, current = recorded_store(nb), store.store_id()
    advice = (
        "Point JUPYTER_AGENT_STORE or --store at the notebook's store, or pass --new-store "
        "to start its agents afresh in this one."
    )
    if why := other_store(recorded, current, where):
        raise OtherStore(f"{name} {why}: nothing was run. {advice}")
    if recorded is None and _ran_agents(nb) and not store.runs(notebook=path):
        raise OtherStore(
            f"{name}'s agent cells ran before, but {where} holds none of its agents: "
            "nothing was run. " + advice
        )


def store_target(store: Store) -> str:
    """What a headless kernel's ``JUPYTER_AGENT_STORE`` says: the URL it logs in with, or the file."""
    url = getattr(store, "url", None)
    return url if isinstance(url, str) else store.location


def resume_notebook(
    store: Store,
    path: str,
    *,
    timeout: float | None,
    new_store: bool = False,
    skip: Callable[[Any], bool] | None = None,
    nb: Any = None,
    strict: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> bool:
    """Run the notebook at ``path`` headless against ``store``, as ``resume`` and workers do.

    ``nb``: the notebook already read (a worker checks its pin first). ``strict``: the
    kernel's agents refuse to continue after a change (``--strict``). ``cancelled``:
    stops the run, as in :func:`run_notebook`; False if it did.
    """
    env = {ENV_NOTEBOOK: path, "JUPYTER_AGENT_STORE": store_target(store)}
    if strict:
        env[ENV_STRICT] = "1"
    if nb is None:
        nb = read_notebook(path)  # a notebook that cannot be read is refused before a kernel starts
    if not new_store:
        check_store(path, nb, store)
    known: list[str] = []

    def stamp(nb: Any) -> None:
        """Record the store the notebook ran with, once it exists (its kernel may create it)."""
        if not known and (current := store.store_id()):
            known.append(current)
        if known:
            record_store(nb, known[0])

    return run_notebook(
        path,
        nb,
        env=env,
        timeout=timeout,
        write=write_atomic,
        stamp=stamp,
        skip=skip,
        cancelled=cancelled,
    )


def cmd_resume(store: Store, args: argparse.Namespace) -> Any:
    path = os.path.abspath(os.path.expanduser(args.notebook))
    resume_notebook(store, path, timeout=args.timeout, new_store=args.new_store, strict=args.strict)
    if not args.json:
        print(f"Ran {args.notebook}; outputs written back.", file=sys.stderr)
    return {"notebook": path, "ok": True} if args.json else None
