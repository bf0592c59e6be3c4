"""Real ipykernel kernels for tests, driven through jupyter_client the way JupyterLab does.

Execute requests carry the cell id in their metadata (``cellId``), exactly as
JupyterLab 4 and Notebook 7 send it, so agent identity works as for a user.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client import KernelManager


@dataclass
class Execution:
    msg_id: str
    stdout: str = ""
    stderr: str = ""
    error: dict | None = None
    outputs: list[dict] = field(default_factory=list)
    comms: list[dict] = field(default_factory=list)  # comm_open contents
    status: str | None = None  # "ok", "error", "aborted"; None while running

    @property
    def text(self) -> str:
        """Streams, then each display updated in place (an agent cell's output) as the
        lines it showed over time: every line of its tail once, then its latest end."""
        shown: dict[str, tuple[int, list[str], list[str], list[str]]] = {}
        for out in self.outputs:
            display = (out.get("transient") or {}).get("display_id")
            if display and "text/plain" in out.get("data", {}):
                earlier, tail, end = _parts(out["data"]["text/plain"])
                before, seen, old, _ = shown.get(display, (0, [], [], []))
                shift = earlier - before  # lines that left the tail since the last update
                new = tail[max(0, len(old) - shift) :] if 0 <= shift <= len(old) else tail
                shown[display] = (earlier, seen + new, tail, end)
        parts = ["\n".join(end[:1] + seen + end[1:]) for _, seen, _, end in shown.values()]
        return self.stdout + self.stderr + "".join(f"\n{part}\n" for part in parts)


def _parts(text: str) -> tuple[int, list[str], list[str]]:
    """An agent cell's display text: its earlier-lines count, its tail, and its
    header, answer and pointer (see jupyter_agent.views.cell)."""
    lines = text.split("\n")
    earlier, tail, end = 0, [], [lines[0]]
    for i, line in enumerate(lines[1:], 1):
        match = re.fullmatch(r"  … ([\d,]+) earlier lines?", line)
        if match:
            earlier = int(match.group(1).replace(",", ""))
        elif line.startswith("  "):
            tail.append(line)
        else:
            end += lines[i:]
            break
    return earlier, tail, end


class Kernel:
    """One ipykernel process with its own environment."""

    def __init__(self, env: dict[str, str], cwd: Path | None = None) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.kernel_spec  # noqa: B018  (fail early if no kernel spec)
        full_env = {**os.environ, **env}
        full_env.pop("JPY_SESSION_NAME", None)
        self.km.start_kernel(env=full_env, cwd=str(cwd) if cwd else None, extra_arguments=[])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self._runs: dict[str, Execution] = {}

    def start(self, code: str, cell_id: str | None = None) -> Execution:
        """Send an execute request without waiting for it to finish."""
        metadata = {"cellId": cell_id} if cell_id else {}
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        msg = self.kc.session.msg("execute_request", content, metadata=metadata)
        self.kc.shell_channel.send(msg)
        run = Execution(msg["header"]["msg_id"])
        self._runs[run.msg_id] = run
        return run

    def pump(self, timeout: float = 0.1) -> None:
        """Collect iopub output and replies that have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                msg = self.kc.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                break
            run = self._runs.get(msg["parent_header"].get("msg_id"))
            if run is None:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    run.stdout += content["text"]
                else:
                    run.stderr += content["text"]
            elif kind in ("execute_result", "display_data", "update_display_data"):
                run.outputs.append(content)
            elif kind == "comm_open":
                run.comms.append(content)
            elif kind == "error":
                run.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                run.status = "error" if run.error else "ok"
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=0)
            except queue.Empty:
                break
            run = self._runs.get(reply["parent_header"].get("msg_id"))
            if run is not None and reply["content"].get("status") == "aborted":
                run.status = "aborted"

    def wait(self, run: Execution, timeout: float = 120) -> Execution:
        deadline = time.monotonic() + timeout
        while run.status is None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"cell did not finish in {timeout} s; output so far:\n{run.text}"
                )
            self.pump(0.2)
        return run

    def run(self, code: str, cell_id: str | None = None, timeout: float = 120) -> Execution:
        return self.wait(self.start(code, cell_id), timeout)

    def wait_for(self, run: Execution, text: str, timeout: float = 60) -> None:
        """Wait until ``text`` appears in the cell's output."""
        deadline = time.monotonic() + timeout
        while text not in run.text:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} did not appear; output so far:\n{run.text}")
            if run.status is not None:
                raise AssertionError(f"cell ended before {text!r} appeared:\n{run.text}")
            self.pump(0.1)

    def kill(self) -> None:
        """SIGKILL the kernel process, as a crash or the OOM killer would.

        ``shutdown_kernel(now=True)`` interrupts the kernel first, which would let
        the agent write an orderly "interrupted" checkpoint; a crash gives no
        such chance, so the signal goes straight to the process.
        """
        process = self.km.provisioner.process  # type: ignore[union-attr]
        process.kill()
        process.wait(10)
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)  # only cleans up: ports, connection file

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def restart(self) -> None:
        """Restart as JupyterLab's Restart Kernel does: interrupt, ask to shut down, start."""
        self.kc.stop_channels()
        self.km.restart_kernel(now=False)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self._runs = {}

    def shutdown(self) -> None:
        if self.km.is_alive():
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)


def python() -> str:
    return sys.executable


def ended(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie (it exited; its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
