"""Every mistake a user can make with ``%%agent`` gets a short UsageError, and nothing stored is lost.

In an in-process IPython shell with a store that already holds a finished
agent: each bad input must end the cell with a one-line ``UsageError`` (no
traceback), and afterwards the store must still hold exactly what it held.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.store.duckdb.store import DuckDBStore as Store

from .harness import record

TASK = "Add numbers.\n```python\ntotal = sum([1, 2, 3])\ntotal\n```"


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    store = tmp_path / "store" / "agents.duckdb"
    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(store))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_agent")
    shell.run_line_magic("config", "AgentMagics.store = ''")
    shell.run_line_magic("config", "AgentMagics.retries = 1")
    shell.run_line_magic("config", "AgentMagics.retry_backoff = 0.01")
    result = shell.run_cell(f"%%agent --model offline --name kept\n{TASK}")
    assert result.success, result.error_in_exec
    shell.store_path = store
    yield shell
    shell.run_line_magic("config", "AgentMagics.store = ''")
    shell.run_line_magic("config", "AgentMagics.retries = 4")
    shell.run_line_magic("config", "AgentMagics.retry_backoff = 0.5")


def contents(store: Path) -> tuple:
    s = Store(store)
    runs = s.runs()
    return tuple((r.run_id, tuple(c.step for c in s.checkpoints(r.run_id))) for r in runs)


def run(shell, cell: str) -> tuple[object, str]:  # type: ignore[no-untyped-def]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        result = shell.run_cell(cell)
    return result, out.getvalue() + err.getvalue()


CASES = {
    "--max-steps 0": ("%%agent --model offline --max-steps 0\ntask", "positive number"),
    "--max-steps abc": ("%%agent --model offline --max-steps abc\ntask", "invalid int value"),
    "unknown option": ("%%agent --model offline --frobnicate\ntask", "unrecognized arguments"),
    "--name ../x": ('%%agent --model offline --name "../x"\ntask', "Invalid agent name"),
    "empty cell": ("%%agent --model offline\n   \n", "cell is empty"),
    "no model": ("%%agent\ntask", "No model chosen"),
    "no endpoint configured": ("%%agent --model gpt-4o-mini\ntask", "No model endpoint configured"),
    "--max-steps -3": ("%%agent --model offline --max-steps -3\ntask", "positive number"),
    "--max-steps without a value": (
        "%%agent --model offline --max-steps\ntask",
        "expected one argument",
    ),
    "--model without a value": ("%%agent --name x --model\ntask", "expected one argument"),
    "--approve unknown": (
        "%%agent --model offline --approve unknown\ntask",
        "unknown tool 'unknown'",
    ),
    '--name "bad name"': ('%%agent --model offline --name "bad name"\ntask', "Invalid agent name"),
    "unbalanced quote": ("%%agent --model offline --name 'kept\ntask", "No closing quotation"),
    "line: unbalanced quote": ("%agent show 'kept", "No closing quotation"),
    "line: unknown command": ("%agent frobnicate", "invalid choice"),
    "approve unknown agent": ("%agent approve nobody", "is not an agent of this notebook"),
    "approve a finished agent": ("%agent approve kept", "is not waiting for an approval"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_short_usage_error_and_loses_nothing(ip, case: str) -> None:  # type: ignore[no-untyped-def]
    cell, message = CASES[case]
    before = contents(ip.store_path)
    result, output = run(ip, cell)
    assert isinstance(result.error_in_exec, UsageError), (case, output)
    assert message in str(result.error_in_exec), str(result.error_in_exec)
    assert "Traceback" not in output
    assert len(str(result.error_in_exec).splitlines()) <= 3, str(result.error_in_exec)  # short
    assert contents(ip.store_path) == before
    _record(case, cell.replace("\n", " ⏎ "), message)


CONFIG_CASES = {
    "max_steps = 0": "must be 1 or more",
    "max_steps = -5": "must be 1 or more",
    "retries = -1": "must be 0 or more",
    "timeout = 0": "must be more than 0 seconds",
}


@pytest.mark.parametrize("setting", list(CONFIG_CASES))
def test_config_out_of_range_is_refused_and_the_agent_still_runs(ip, caplog, setting: str) -> None:  # type: ignore[no-untyped-def]
    """%config reports a refused value as one logged line (on the cell's stderr in a kernel)."""
    from jupyter_agent.kernel.magics import AgentMagics

    name = setting.split()[0]
    before = contents(ip.store_path)
    try:
        result, output = run(ip, f"%config AgentMagics.{setting}")
        assert CONFIG_CASES[setting] in caplog.text and "Traceback" not in output, output
        assert contents(ip.store_path) == before
        rerun, output = run(ip, f"%%agent --model offline --name kept\n{TASK}")
        assert rerun.success and "restored from the store" in output, output
    finally:  # the shell is shared: never leave a bad value behind
        default = AgentMagics.class_traits()[name].default_value
        ip.run_line_magic("config", f"AgentMagics.{name} = {default!r}")
    _record(f"config {setting}", f"%config AgentMagics.{setting}", CONFIG_CASES[setting])


def test_unreachable_endpoint_is_a_usage_error_and_resumable(ip, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    before = contents(ip.store_path)
    result, output = run(ip, "%%agent --model remote --name far\ntask")
    assert isinstance(result.error_in_exec, UsageError), output
    assert "cannot reach the endpoint" in str(result.error_in_exec)
    assert "re-run the cell to resume" in str(result.error_in_exec)
    assert "Traceback" not in output
    after = contents(ip.store_path)
    assert set(before) <= set(after)  # the finished agent is untouched
    far = Store(ip.store_path).runs(agent="far")
    assert len(far) == 1 and Store(ip.store_path).checkpoints(far[0].run_id)[-1].kind == "error"
    _record(
        "unreachable endpoint",
        "OPENAI_BASE_URL=http://127.0.0.1:9/v1",
        "paused after an error: … cannot reach the endpoint …; the run is resumable",
    )


@pytest.mark.parametrize("how", ["a directory", "under a file", "not a database"])
def test_unopenable_store_is_a_usage_error(ip, tmp_path: Path, how: str) -> None:  # type: ignore[no-untyped-def]
    if how == "a directory":
        target = tmp_path / "dir.duckdb"
        target.mkdir()
    elif how == "under a file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "agents.duckdb"
    else:
        target = tmp_path / "junk.duckdb"
        target.write_bytes(b"not a database" * 100)
    before = contents(ip.store_path)
    ip.run_line_magic("config", f"AgentMagics.store = {str(target)!r}")
    result, output = run(ip, f"%%agent --model offline --name kept\n{TASK}")
    assert isinstance(result.error_in_exec, UsageError), output
    assert "Traceback" not in output
    assert str(target) in str(result.error_in_exec) or str(target.parent) in str(
        result.error_in_exec
    )
    if how == "not a database":
        assert target.read_bytes() == b"not a database" * 100
    ip.run_line_magic("config", "AgentMagics.store = ''")
    assert contents(ip.store_path) == before
    _record(
        f"store path is {how}",
        f"%config AgentMagics.store = <{how}>",
        "The agent store … cannot be used (…). It was left untouched",
    )


def _record(case: str, injection: str, message: str) -> None:
    record(
        "usage",
        case,
        injection=f"`{injection}`",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome=f"UsageError ({message}), no traceback; store unchanged",
    )


def test_resuming_by_name_works_when_the_prompt_held_a_secret(ip, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The stored prompt is redacted, so `%agent resume` must still find the same run."""
    secret = "sk-live-resume-0123456789abcdef"
    monkeypatch.setenv("MY_API_KEY", secret)
    task = f"Use {secret}.\n```python\na = 1\n```\n```python\nb = a + 1\n```"
    result, _ = run(ip, f"%%agent --model offline --name secretive --max-steps 1\n{task}")
    assert result.success
    store = Store(ip.store_path)
    (first,) = store.runs(agent="secretive")
    assert secret not in first.prompt and "[REDACTED]" in first.prompt
    resumed, output = run(ip, "%agent resume secretive")
    assert resumed.success, output
    runs = store.runs(agent="secretive")
    assert [r.run_id for r in runs] == [first.run_id], output  # the same run went on
    assert "resuming after step" in output
