"""``jupyter agent resume``: run a notebook headless, as JupyterLab would, so its agents continue.

Interrupted agents continue from their last checkpoint and finished ones
restore, because every cell reaches the kernel with what JupyterLab sends: the
notebook's path and the cell's id.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from ..store.api import Store
from ..vocab import ENV_NOTEBOOK
from .commands import Refused
from .export import write_atomic


def run_notebook(
    path: str, *, env: dict[str, str], timeout: float | None, write: Callable[[str, str], None]
) -> str | None:
    """Execute a notebook as JupyterLab would, writing outputs back after every cell.

    The kernel starts in the notebook's folder with ``env`` added (the
    notebook's real path among it), and each execute request carries the cell's
    nbformat id as ``metadata.cellId``, as JupyterLab sends it: nbclient sends no
    cell metadata, so its execute call is replaced. Returns what went wrong, or None.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    nb = nbformat.read(path, as_version=4)

    def save() -> None:
        write(path, nbformat.writes(nb))

    class Client(NotebookClient):
        cell_id: str | None = None

        async def async_execute_cell(
            self,
            cell: nbformat.NotebookNode,
            cell_index: int,
            execution_count: int | None = None,
            store_history: bool = True,
        ) -> nbformat.NotebookNode:
            self.cell_id = cell.get("id")
            try:
                return await super().async_execute_cell(
                    cell, cell_index, execution_count, store_history
                )
            finally:
                if cell.get("cell_type") == "code":
                    save()  # as papermill does: a crash keeps the outputs so far

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

    client = Client(
        nb,
        timeout=None if timeout is None else max(1, math.ceil(timeout)),
        resources={"metadata": {"path": os.path.dirname(path)}},
    )
    try:
        client.execute(env={**os.environ, **env})
    except CellExecutionError as exc:
        first = str(exc).strip().splitlines()
        return f"A cell failed: {first[-1] if first else exc}."
    except DeadKernelError:
        return "The kernel died."
    except TimeoutError as exc:
        return f"A cell timed out ({exc})."
    finally:
        save()
    return None


def cmd_resume(store: Store, args: argparse.Namespace) -> Any:
    path = os.path.abspath(os.path.expanduser(args.notebook))
    if not os.path.isfile(path):
        raise Refused(f"No notebook {args.notebook}.")
    env = {ENV_NOTEBOOK: path, "JUPYTER_AGENT_STORE": store.location}
    failure = run_notebook(path, env=env, timeout=args.timeout, write=write_atomic)
    if failure:
        raise Refused(f"{failure} The outputs so far were written to {args.notebook}.")
    if not args.json:
        print(f"Ran {args.notebook}; outputs written back.", file=sys.stderr)
    return {"notebook": path, "ok": True} if args.json else None
