"""Notebook functions as tools, in real kernels against the scripted endpoint.

Each tool appends to a log file when it starts and when it ends, so the tests
count executions; the scripted server's request log shows what the model was
offered and told, and that no completed step was requested twice.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.tools.user import function_tool, parse_docstring

from .kernels import Kernel


def call(name: str, **arguments: object) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def define(kernel: Kernel, log: Path, decorator: str = "@tool", sleep: float = 0.0) -> None:
    """Define ``send_report`` (and ``broken``) in the kernel, as a user's cell would."""
    code = textwrap.dedent(
        f'''
        import time
        from jupyter_agent import tool

        {decorator}
        def send_report(text: str, copies: int = 1) -> str:
            """Send a report to the team.

            Args:
                text: What the report says.
                copies: How many copies to send.
            """
            with open({str(log)!r}, "a") as f:
                f.write("start\\n")
            time.sleep({sleep})
            with open({str(log)!r}, "a") as f:
                f.write("done\\n")
            return f"sent {{copies}} x {{text}}"

        @tool
        def broken(ticker: str) -> float:
            """Always fails."""
            raise ValueError(f"no prices for {{ticker}}")
        '''
    )
    result = kernel.run(code)
    assert result.status == "ok", result.text


def tool_messages(scripted: ScriptedServer) -> list[str]:
    last = scripted.requests[-1]["body"]["messages"]
    return [m["content"] for m in last if m["role"] == "tool"]


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_for_line(log: Path, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while line not in lines(log):
        assert time.monotonic() < deadline, f"{line!r} never logged: {lines(log)}"
        time.sleep(0.05)


def test_a_notebook_function_is_a_tool(kernel_factory, scripted, tmp_path, store_path):
    log = tmp_path / "effects.log"
    scripted.set_script(
        [
            call("send_report", text="hi", copies="2"),  # "2": converted as the hint says
            call("send_report", txt="hi"),  # does not match the schema
            call("broken", ticker="ACME"),
            {"content": "Reported."},
        ]
    )
    k = kernel_factory()
    define(k, log)
    result = k.run("%%agent --model scripted\nSend the report.", cell_id="c1")
    assert result.status == "ok", result.text
    assert "Reported." in result.text

    offered = {t["function"]["name"]: t["function"] for t in scripted.requests[0]["body"]["tools"]}
    assert {"python", "update_plan", "send_report", "broken"} <= set(offered)
    schema = offered["send_report"]
    assert schema["description"] == "Send a report to the team."
    params = schema["parameters"]
    assert params["required"] == ["text"]
    assert params["properties"]["copies"]["type"] == "integer"
    assert params["properties"]["text"]["description"] == "What the report says."

    sent, mismatch, failed = tool_messages(scripted)
    assert sent.strip() == "sent 2 x hi"
    assert "do not match send_report" in mismatch and "text: Field required" in mismatch
    assert "txt: Extra inputs are not permitted" in mismatch and "Nothing was run" in mismatch
    assert "ValueError: no prices for ACME" in failed and "Traceback" in failed
    assert "jupyter_agent" not in failed  # our own frames are left out
    assert lines(log) == ["start", "done"]  # the mismatching call ran nothing

    store = Store(store_path)
    (run,) = store.runs()
    assert run.info["tools"] == ["send_report", "broken"]  # names only, no schemas
    kinds = [(c.kind, c.info.get("tool")) for c in store.checkpoints(run.run_id)]
    assert ("tool_call", "send_report") in kinds and ("tool_call", "broken") in kinds
    assert [k for k, _ in kinds].count("tool_call") == 2  # the mismatch was never started


def test_tools_option_names_plain_functions(kernel_factory, scripted, tmp_path, store_path):
    log = tmp_path / "effects.log"
    scripted.set_script([call("send_report", text="x"), {"content": "Sent."}])
    k = kernel_factory()
    define(k, log, decorator="")
    cell = "%%agent --model scripted --tools send_report --approve send_report\nSend it."
    waiting = k.run(cell, cell_id="c2")
    assert "waiting for your approval" in waiting.text, waiting.text
    assert lines(log) == []
    done = k.run("%agent approve cell-c2")
    assert "Sent." in done.text, done.text
    assert lines(log) == ["start", "done"]
    offered = [t["function"]["name"] for t in scripted.requests[0]["body"]["tools"]]
    assert "send_report" in offered and "broken" in offered  # broken is still @tool


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--tools missing_fn", "tool missing_fn is not defined in this kernel: run the cell"),
        ("--tools not_a_function", "tool not_a_function is not a function (it is a int)"),
        ("--tools python", "tool python is built in"),
        ("--mcp unknown", "--mcp: unknown MCP server 'unknown'"),
        ("--approve nope", "--approve: unknown tool 'nope'; the tools are: python, update_plan"),
    ],
)
def test_bad_tool_options_write_nothing(kernel_factory, store_path, line, message):
    k = kernel_factory()
    assert k.run("not_a_function = 5").status == "ok"
    result = k.run(f"%%agent --model scripted {line}\nTask.", cell_id="bad")
    assert "UsageError" in result.text and message in result.text, result.text
    assert "Traceback" not in result.text
    assert not store_path.exists() or Store(store_path).runs() == []


def test_kill_during_a_user_tool_call_asks_before_running_it_again(
    kernel_factory, scripted, tmp_path, store_path
):
    log = tmp_path / "effects.log"
    script = [call("send_report", text="q3"), {"content": "Report sent."}]
    scripted.set_script(script)
    cell = "%%agent --model scripted\nSend the Q3 report."
    k1 = kernel_factory()
    define(k1, log, sleep=30)
    k1.start(cell, cell_id="kill")
    wait_for_line(log, "start")
    k1.kill()
    assert scripted.turns_requested() == [0]

    k2 = kernel_factory()
    before = len(Store(store_path).checkpoints(Store(store_path).runs()[0].run_id))
    missing = k2.run(cell, cell_id="kill")  # the function is not defined yet
    assert (
        "tool send_report is not defined in this kernel: run the cell that defines it, "
        "then re-run this cell" in missing.text
    ), missing.text
    assert "Traceback" not in missing.text
    store = Store(store_path)
    (run,) = store.runs()
    cps = store.checkpoints(run.run_id)
    assert len(cps) == before  # nothing written, and no tool result stored
    assert cps[-1].kind == "tool_call" and "interrupted at step" in k2.run("%agent list").stdout

    define(k2, log)
    waiting = k2.run(cell, cell_id="kill")
    assert "was in flight when the agent stopped and may have run" in waiting.text, waiting.text
    assert lines(log) == ["start"]  # not silently run again
    cp = Store(store_path).checkpoints(run.run_id)[-1]
    assert cp.status == "awaiting_approval" and cp.info["in_flight"] is True

    done = k2.run("%agent approve cell-kill")
    assert "Report sent." in done.text, done.text
    assert lines(log) == ["start", "start", "done"]  # approving ran it again
    assert scripted.turns_requested() == [0, 1]  # no completed step requested twice
    assert tool_messages(scripted) == ["sent 1 x q3\n"]


def test_interrupted_calls_follow_each_tools_policy(kernel_factory, scripted, tmp_path):
    log = tmp_path / "effects.log"
    k = kernel_factory()
    define(k, log, decorator="@tool(idempotent=True)", sleep=3)

    # An idempotent tool's call cut short simply runs again.
    scripted.set_script([call("send_report", text="a"), {"content": "Done a."}])
    run = k.start("%%agent --model scripted --name idem\nSend a.", cell_id="i")
    wait_for_line(log, "start")
    k.interrupt()
    k.wait(run, 30)
    assert "interrupted during a send_report call; it runs again" in run.text, run.text
    again = k.run("%%agent --model scripted --name idem\nSend a.", cell_id="i")
    assert "running it again" in again.text and "Done a." in again.text, again.text
    assert lines(log) == ["start", "start", "done"]

    # With approvals on, a call cut short waits for approval again.
    log.unlink()
    define(k, log, sleep=3)
    scripted.set_script([call("send_report", text="b"), {"content": "Done b."}])
    scripted.reset_log()
    cell = "%%agent --model scripted --name asks --approve send_report\nSend b."
    assert "waiting for your approval" in k.run(cell, cell_id="a").text
    approving = k.start("%agent approve asks")
    wait_for_line(log, "start")
    k.interrupt()
    k.wait(approving, 30)
    assert "it may have run, so the agent asks" in approving.text, approving.text
    waiting = k.run(cell, cell_id="a")
    assert "may have run" in waiting.text and "waiting for your approval" in waiting.text
    assert lines(log) == ["start"]
    done = k.run("%agent approve asks")
    assert "Done b." in done.text, done.text
    assert lines(log) == ["start", "start", "done"]
    assert scripted.turns_requested() == [0, 1]


def test_schemas_from_signatures_and_docstrings():
    def numpy_style(frame_name, limit=10):
        """Count rows.

        Parameters
        ----------
        frame_name : str
            The variable
            to count.
        limit : int
            At most this many.
        """

    def sphinx_style(a: int, b: list[str] | None = None):
        """Join.

        :param a: the count
        :param b: the words
        :returns: text
        """
        return f"{a}:{','.join(b or [])}"

    summary, params = parse_docstring(numpy_style.__doc__ or "")
    assert summary == "Count rows."
    assert params == {"frame_name": "The variable to count.", "limit": "At most this many."}
    tool = function_tool("sphinx_style", sphinx_style)
    parameters = tool.schema["function"]["parameters"]
    assert parameters["properties"]["b"]["description"] == "the words"
    assert parameters["required"] == ["a"]
    assert tool.run(tool.parse('{"a": "3", "b": ["x", "y"]}')).output.strip() == "3:x,y"
    with pytest.raises(ValueError, match="valid integer"):
        tool.parse('{"a": "three"}')
