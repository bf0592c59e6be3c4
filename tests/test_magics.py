"""The magics in an in-process IPython shell: options, errors, offline runs."""

from __future__ import annotations

import time

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.store import Store

TASK = "Add numbers.\n```python\ntotal = sum([1, 2, 3])\ntotal\n```"


@pytest.fixture
def ip(store_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(store_path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_agent")
    shell.user_ns.pop("total", None)
    yield shell
    shell.run_line_magic("config", "AgentMagics.model = ''")


@pytest.mark.parametrize(
    ("line", "body", "message"),
    [
        ("--bogus", "task", "unrecognized arguments: --bogus"),
        ("--max-steps 0", "task", "--max-steps must be a positive number"),
        ("--max-steps abc", "task", "invalid int value"),
        ("--model gpt-x", "task", "Set OPENAI_API_KEY"),
        ("", "task", "No model chosen"),
        ("--model offline --name ../etc", "task", "Invalid agent name"),
        ("--model offline", "   ", "cell is empty"),
    ],
)
def test_bad_input_gets_a_short_error_and_writes_nothing(ip, store_path, line, body, message):
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("agent", line, body)
    assert not store_path.exists() or Store(store_path).runs() == []


def test_offline_run_then_restore_then_list_and_delete(ip, capsys):
    ip.run_cell_magic("agent", "--model offline --name adder", TASK)
    out = capsys.readouterr().out
    assert "→ python" in out and "saved total" in out and "■ done" in out
    assert ip.user_ns["total"] == 6
    del ip.user_ns["total"]

    ip.run_cell_magic("agent", "--model offline --name adder", TASK)
    out = capsys.readouterr().out
    assert "restored from the store without calling the model" in out
    assert ip.user_ns["total"] == 6

    ip.run_line_magic("agent", "list")
    assert "adder" in capsys.readouterr().out
    ip.run_line_magic("agent", "show add")  # a unique prefix is enough
    assert "tool_result" in capsys.readouterr().out
    ip.run_line_magic("agent", "delete adder")
    ip.run_line_magic("agent", "list")
    assert "No agents" in capsys.readouterr().out


def test_line_magic_errors(ip):
    with pytest.raises(UsageError, match="invalid choice"):
        ip.run_line_magic("agent", "frobnicate")
    with pytest.raises(UsageError, match="not an agent of this notebook"):
        ip.run_line_magic("agent", "show nobody")
    with pytest.raises(UsageError, match="No closing quotation|closing quotation"):
        ip.run_line_magic("agent", "reject x --note 'unterminated")


def test_model_default_from_config(ip, capsys):
    ip.run_line_magic("config", "AgentMagics.model = 'offline'")
    ip.run_cell_magic("agent", "--name configured", TASK)
    assert "■ done" in capsys.readouterr().out


def test_a_live_run_without_checkpoints_for_long_is_reported_stalled(
    ip, store_path, capsys, monkeypatch
):
    from jupyter_agent.identity import notebook_path
    from jupyter_agent.store import CheckpointRow, RunRow

    monkeypatch.setenv("JUPYTER_AGENT_STALL_AFTER", "60")
    notebook = notebook_path(ip.user_ns)[0]
    store = Store(store_path)
    writer = store.writer("hung")  # held open: the run looks alive, like a hung kernel's
    try:
        writer.put_run(RunRow("hung", notebook, "slow", None, "t", "h", "m", None, None, 1.0, {}))
        long_ago = time.time() - 3600
        writer.put_checkpoint(
            CheckpointRow("hung", 4, "tool_call", "running", "python: ...", long_ago, 0, 0, 1, {}),
            b"",
        )
        ip.run_line_magic("agent", "list")
        assert "stalled: no checkpoint for a long time" in capsys.readouterr().out
    finally:
        writer.close()
    ip.run_line_magic("agent", "list")  # the owner is gone: an interrupted run, resumable
    assert "interrupted at step 4" in capsys.readouterr().out
