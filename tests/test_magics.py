"""The magics in an in-process IPython shell: options, errors, offline runs."""

from __future__ import annotations

import time

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.store.duckdb.store import DuckDBStore as Store

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
    from jupyter_agent.kernel.identity import notebook_path
    from jupyter_agent.store.api import CheckpointRow, RunRow

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
        assert "stalled: no checkpoint for 1 h" in capsys.readouterr().out
    finally:
        writer.close()
    ip.run_line_magic("agent", "list")  # the owner is gone: an interrupted run, resumable
    assert "interrupted before the first step" in capsys.readouterr().out


def test_help_lists_every_option_of_the_cell_magic(ip, capsys):
    from jupyter_agent.kernel.magics import AgentMagics

    ip.run_line_magic("agent", "--help")
    out = capsys.readouterr().out
    declared = [s for a in AgentMagics.agent.parser._actions for s in a.option_strings]
    assert "--background" in declared and "--approve" in declared
    assert all(option in out for option in declared), out
    assert "--approve [TOOLS]" in out and "%%agent [-m MODEL]" in out


def test_cell_magic_usage_names_the_cell_magic(ip):
    usage = ip.find_cell_magic("agent").__doc__
    assert "%%agent [-m MODEL]" in usage
    assert "%agent [-m" not in usage.replace("%%agent", "")


def test_timeline_without_a_frontend_says_where_it_shows(ip, capsys):
    ip.run_cell_magic("agent", "--model offline --name adder", TASK)
    capsys.readouterr()
    ip.run_line_magic("agent", "timeline adder")
    out = capsys.readouterr().out
    assert "a widget: shown in JupyterLab and Notebook 7" in out
    assert "%agent show adder" in out
    assert "%agent timeline" not in out  # not the command just run


def test_quotes_around_option_values_are_removed(ip, store_path, capsys):
    ip.run_cell_magic("agent", "--model \"offline\" --name 'quoted'", TASK)
    assert "■ done" in capsys.readouterr().out
    (run,) = Store(store_path).runs()
    assert (run.model, run.agent) == ("offline", "quoted")


@pytest.mark.parametrize("magic", ["cell", "line"])
def test_an_unbalanced_quote_is_a_usage_error_quoting_the_line(ip, store_path, magic):
    with pytest.raises(UsageError, match=r"--name 'half: No closing quotation"):
        if magic == "cell":
            ip.run_cell_magic("agent", "--model offline --name 'half", TASK)
        else:
            ip.run_line_magic("agent", "show --name 'half")
    assert not store_path.exists() or Store(store_path).runs() == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_steps = 0", "max_steps must be 1 or more"),
        ("max_steps = -5", "max_steps must be 1 or more"),
        ("retries = -1", "retries must be 0 or more"),
        ("retry_backoff = -1.0", "retry_backoff must be 0 or more"),
        ("timeout = 0", "timeout must be more than 0 seconds"),
    ],
)
def test_config_values_out_of_range_are_refused(ip, caplog, setting, message):
    from jupyter_agent.kernel.magics import AgentMagics

    (magics,) = [c for c in ip.configurables if isinstance(c, AgentMagics)]
    name = setting.split()[0]
    before = getattr(magics, name)
    ip.run_line_magic("config", f"AgentMagics.{setting}")
    assert getattr(magics, name) == before
    assert message in caplog.text


CALLS = [
    {"tool_calls": [{"name": "python", "arguments": {"code": "a = 1"}}]},
    {"tool_calls": [{"name": "python", "arguments": {"code": "b = a + 1"}}]},
    {"tool_calls": [{"name": "python", "arguments": {"code": "c = b + 1"}}]},
    {"content": "c is 3"},
]


@pytest.fixture
def endpoint(scripted, monkeypatch, ip):
    """The scripted endpoint; it fails every call naming the model ``typo``."""
    monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    ip.run_line_magic("config", "AgentMagics.retries = 0")

    def reply(body: dict) -> dict:
        if body["model"] == "typo":
            return {"faults": ["500"] * 10}
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return CALLS[turn]

    scripted.set_script(reply)
    yield scripted
    ip.run_line_magic("config", "AgentMagics.retries = 4")


def resume_infos(store_path) -> list[dict]:
    store = Store(store_path)
    (run,) = store.runs()
    return [cp.info for cp in store.checkpoints(run.run_id) if cp.kind == "resume"]


def test_a_corrected_model_applies_to_the_continuation(ip, endpoint, store_path, capsys):
    ip.user_ns.pop("c", None)
    with pytest.raises(UsageError, match="paused after an error"):
        ip.run_cell_magic("agent", "--model typo --name fix", "Compute b.")
    ip.run_cell_magic("agent", "--model right --name fix --max-steps 1", "Compute b.")
    endpoint.reset_log()
    ip.run_line_magic("agent", "resume fix")  # no cell options: the run's latest model
    assert "■ done" in capsys.readouterr().out
    assert {r["body"]["model"] for r in endpoint.requests} == {"right"}
    assert ip.user_ns["c"] == 3
    infos = resume_infos(store_path)
    assert [(i["model"], i["approve"]) for i in infos] == [("right", False), ("right", False)]
    ip.run_line_magic("agent", "show fix")
    assert "model right" in capsys.readouterr().out


def test_the_cells_approval_option_applies_and_commands_keep_it(ip, endpoint, store_path, capsys):
    for name in "abc":
        ip.user_ns.pop(name, None)
    ip.run_cell_magic("agent", "--model right --name gate --max-steps 1", "Compute b.")
    assert ip.user_ns["a"] == 1  # no approval asked for
    ip.run_cell_magic("agent", "--model right --name gate --approve", "Compute b.")
    assert "waiting for your approval" in capsys.readouterr().out
    ip.run_line_magic("agent", "approve gate")
    assert ip.user_ns["b"] == 2 and "c" not in ip.user_ns
    assert "waiting for your approval" in capsys.readouterr().out  # still asks
    ip.run_line_magic("agent", "approve gate")
    assert ip.user_ns["c"] == 3
    assert [i["approve"] for i in resume_infos(store_path)] == [True, True, True]


def python_call(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def test_approving_keeps_a_value_the_user_changed_meanwhile(ip, scripted, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    for name in ("g1", "g2", "g3"):
        ip.user_ns.pop(name, None)
    scripted.set_script(
        [
            python_call("g1 = 1\ng3 = [1]"),
            python_call("g2 = g1 + 1"),
            python_call("g3.append(g2)"),
            {"content": "Done."},
        ]
    )
    ip.run_cell_magic("agent", "-m scripted --name gauge --approve", "Set g1, then g2.")
    ip.run_line_magic("agent", "approve gauge")
    assert ip.user_ns["g1"] == 1 and "g2" not in ip.user_ns
    capsys.readouterr()
    ip.user_ns["g1"] = 500  # the user, while the agent waits for approval
    ip.run_line_magic("agent", "approve gauge")
    out = capsys.readouterr().out
    assert ip.user_ns["g1"] == 500, out
    assert ip.user_ns["g2"] == 501, out
    assert "Variables restored from the store: g1" not in out, out
    assert "g1 was changed in this kernel since the agent saved it" in out, out
    assert "Variables restored from the store: g3\n" in out, out  # as it was: restored
    # The agent's next step saved the kernel's value: approving again says nothing of g1.
    ip.run_line_magic("agent", "approve gauge")
    out = capsys.readouterr().out
    assert ip.user_ns["g3"] == [1, 501] and ip.user_ns["g1"] == 500, out
    assert "g1 was changed" not in out, out
