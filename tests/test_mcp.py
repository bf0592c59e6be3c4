"""MCP servers as tools, in real kernels: a stdio (and an HTTP) server the tests start.

The server (tests/mcp_server.py, written with the SDK's FastMCP) logs each call's
start and end, and its own shutdown, so the tests see how often a call ran and
that each execution's server was stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from .kernels import Kernel, ended
from .test_user_tools import call, lines, tool_messages, wait_for_line

SERVER = str(Path(__file__).with_name("mcp_server.py"))
CELL = "%%agent --model scripted --mcp reports\nLook it up and send the report."


def configure(kernel: Kernel, servers: dict) -> None:
    result = kernel.run(f"%config AgentMagics.mcp_servers = {servers!r}")
    assert result.status == "ok", result.text


def reports(log: Path) -> dict:
    return {"reports": {"command": sys.executable, "args": [SERVER, str(log)]}}


def test_an_mcp_servers_tools_are_offered_and_called(
    kernel_factory, scripted: ScriptedServer, tmp_path, store_path
):
    log = tmp_path / "mcp.log"
    scripted.set_script(
        [
            call("reports__lookup", key="q3"),
            call("reports__send_report", text="all good"),
            call("reports__fail", reason="no printer"),
            {"content": "Sent."},
        ]
    )
    k = kernel_factory()
    configure(k, reports(log))
    result = k.run(CELL, cell_id="m1")
    assert result.status == "ok", result.text
    assert "Sent." in result.text
    offered = {t["function"]["name"]: t["function"] for t in scripted.requests[0]["body"]["tools"]}
    assert {"reports__lookup", "reports__send_report", "reports__fail"} <= set(offered)
    assert offered["reports__lookup"]["description"] == "Look a key up (idempotent)."
    assert offered["reports__send_report"]["parameters"]["required"] == ["text"]
    looked, sent, failed = tool_messages(scripted)
    assert looked == "q3 = 2" and sent == "sent: all good"
    assert "Error executing tool fail" in failed
    # Each call ran once, and the server was stopped when the execution ended.
    ran = ["lookup start", "lookup done", "send_report start", "send_report done"]
    assert lines(log) == [*ran, "stopped"]
    store = Store(store_path)
    (run,) = store.runs()
    assert run.info["mcp"] == ["reports"] and run.info["tools"] == []
    calls = [c.info.get("tool") for c in store.checkpoints(run.run_id) if c.kind == "tool_call"]
    assert calls == ["reports__lookup", "reports__send_report", "reports__fail"]
    results = [c for c in store.checkpoints(run.run_id) if c.kind == "tool_result"]
    assert [c.info["error"] for c in results] == [False, False, True]


@pytest.mark.parametrize(
    ("servers", "line", "message"),
    [
        (
            {
                "broken": {
                    "command": sys.executable,
                    "args": ["-c", "import sys; sys.exit('no token')"],
                }
            },
            "--mcp broken",
            "MCP server 'broken' failed to start: Connection closed (stderr: no token)",
        ),
        (
            {"gone": {"command": "/nonexistent/mcp-server"}},
            "--mcp gone",
            "MCP server 'gone' failed to start: [Errno 2] No such file or directory",
        ),
        ({"odd": {"args": ["x"]}}, "--mcp odd", 'needs either "command"'),
        (
            {"slow": {"command": "x", "call_timeout": "soon"}},
            "--mcp slow",
            '"call_timeout" is a number of seconds above 0',
        ),
        (None, "--mcp reports --approve reports__nope", "--approve: unknown tool 'reports__nope'"),
    ],
)
def test_bad_mcp_servers_write_nothing(
    kernel_factory, tmp_path, store_path, servers, line, message
):
    k = kernel_factory()
    configure(k, servers or reports(tmp_path / "mcp.log"))
    result = k.run(f"%%agent --model scripted {line}\nTask.", cell_id="bad")
    assert "UsageError" in result.text and message in result.text, result.text
    assert "Traceback" not in result.text
    error_lines = [x for x in result.text.splitlines() if "UsageError" in x]
    assert len(error_lines) == 1
    assert not store_path.exists() or Store(store_path).runs() == []


def test_kill_during_mcp_calls(kernel_factory, scripted: ScriptedServer, tmp_path, store_path):
    """Killed mid-call: the idempotent call runs again, the other one waits for approval."""
    log = tmp_path / "mcp.log"
    slow = Path(str(log) + ".slow")
    scripted.set_script(
        [
            call("reports__lookup", key="q3"),
            call("reports__send_report", text="q3"),
            {"content": "Sent."},
        ]
    )
    slow.touch()
    k1 = kernel_factory()
    configure(k1, reports(log))
    k1.start(CELL, cell_id="kill")
    wait_for_line(log, "lookup start")
    k1.kill()

    k2 = kernel_factory()
    configure(k2, reports(log))
    run2 = k2.start(CELL, cell_id="kill")  # lookup is idempotent: it simply runs again
    deadline = time.monotonic() + 60
    while lines(log).count("lookup start") < 2:
        assert time.monotonic() < deadline, lines(log)
        k2.pump(0.1)
    slow.unlink()  # lookup may finish; send_report will be slow again below
    wait_for_line(log, "lookup done")
    slow.touch()
    wait_for_line(log, "send_report start")
    k2.pump(0.2)
    assert "running it again" in run2.text, run2.text
    k2.kill()
    slow.unlink()

    k3 = kernel_factory()
    configure(k3, reports(log))
    waiting = k3.run(CELL, cell_id="kill")
    assert "reports__send_report call was in flight" in waiting.text, waiting.text
    assert "may have run" in waiting.text
    assert lines(log).count("send_report start") == 1  # not silently run again
    done = k3.run("%agent approve cell-kill")
    assert "Sent." in done.text, done.text
    assert lines(log).count("send_report start") == 2
    assert lines(log).count("send_report done") == 1
    # Turns 0 and 1 were each answered before a kill; none was requested again.
    assert scripted.turns_requested() == [0, 1, 2]
    assert tool_messages(scripted) == ["q3 = 2", "sent: q3"]
    store = Store(store_path)
    (run,) = store.runs()
    results = [c for c in store.checkpoints(run.run_id) if c.kind == "tool_result"]
    assert len(results) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_streamable_http_server(kernel_factory, scripted: ScriptedServer, tmp_path):
    log = tmp_path / "mcp.log"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, SERVER, str(log), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.1)
        scripted.set_script([call("web__lookup", key="abc"), {"content": "Looked."}])
        k = kernel_factory()
        configure(k, {"web": {"url": f"http://127.0.0.1:{port}/mcp"}})
        result = k.run("%%agent --model scripted --mcp web\nLook abc up.", cell_id="h")
        assert "Looked." in result.text, result.text
        assert tool_messages(scripted) == ["abc = 3"]
    finally:
        server.terminate()
        server.wait(10)


def server_processes(log: Path) -> list[int]:
    """Pids of the test server processes started for ``log``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if SERVER.encode() in cmdline and str(log).encode() in cmdline:
            found.append(int(entry.name))
    return found


def _slow_lookup(kernel_factory, scripted: ScriptedServer, tmp_path):
    """A kernel, and a script whose one call waits in the server until ``slow`` is gone."""
    log = tmp_path / "mcp.log"
    slow = Path(str(log) + ".slow")
    scripted.set_script([call("reports__lookup", key="q3"), {"content": "Looked."}])
    slow.touch()
    return kernel_factory(), log, slow


def test_an_mcp_call_that_never_answers_pauses_at_its_timeout_and_resumes(
    kernel_factory, scripted: ScriptedServer, tmp_path
):
    k, log, slow = _slow_lookup(kernel_factory, scripted, tmp_path)
    configure(k, {"reports": {**reports(log)["reports"], "call_timeout": 2}})
    started = time.monotonic()
    paused = k.run(CELL, cell_id="slow", timeout=25)
    assert time.monotonic() - started < 20, paused.text
    assert "did not answer lookup within 2 s" in paused.text, paused.text
    assert lines(log).count("lookup start") == 1
    slow.unlink()
    configure(k, reports(log))  # the default limit: a loaded machine may start slowly
    done = k.run(CELL, cell_id="slow")
    assert "Looked." in done.text, done.text
    assert lines(log).count("lookup done") == 1
    assert scripted.turns_requested() == [0, 1]


def test_pause_works_during_an_mcp_call_and_servers_end_with_the_kernel(
    kernel_factory, scripted: ScriptedServer, tmp_path
):
    k, log, slow = _slow_lookup(kernel_factory, scripted, tmp_path)
    configure(k, reports(log))
    line = "%%agent --model scripted --mcp reports --name hang --background\nLook it up."
    assert k.run(line, cell_id="hang").status == "ok"
    wait_for_line(log, "lookup start")
    assert k.run("%agent pause hang").status == "ok"
    waited = k.run("import jupyter_agent.kernel.runtime as r; print(r.current().wait_all(10))")
    assert waited.stdout.strip() == "True", waited.text  # the job ended during the call
    shown = k.run("%agent list").stdout
    assert "interrupted" in shown, shown

    assert k.run(line, cell_id="hang").status == "ok"  # resumed: the call hangs again
    deadline = time.monotonic() + 30
    while lines(log).count("lookup start") < 2:
        assert time.monotonic() < deadline, lines(log)
        time.sleep(0.05)
    assert server_processes(log)
    k.kc.stop_channels()
    k.km.shutdown_kernel(now=False)  # as JupyterLab's Shut Down Kernel
    deadline = time.monotonic() + 15
    while server_processes(log):
        assert time.monotonic() < deadline, f"server still running: {server_processes(log)}"
        time.sleep(0.1)


def test_a_stdio_server_ends_when_its_kernel_is_killed(
    kernel_factory, scripted: ScriptedServer, tmp_path
):
    """SIGKILLed mid-call, the kernel cannot stop its servers: they end with it all the same."""
    k, log, slow = _slow_lookup(kernel_factory, scripted, tmp_path)
    configure(k, reports(log))
    k.start(CELL, cell_id="killed")
    wait_for_line(log, "lookup start")  # the server is busy in a call: it reads no stdin now
    (pid,) = server_processes(log)
    k.kill()
    deadline = time.monotonic() + 5
    try:
        while not ended(pid):
            assert time.monotonic() < deadline, f"server {pid} still running after its kernel died"
            time.sleep(0.1)
    finally:
        slow.unlink()
        if not ended(pid):
            os.kill(pid, signal.SIGKILL)  # not left behind by a failing run
