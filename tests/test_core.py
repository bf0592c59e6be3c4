"""The pure core: state folding, namespace snapshots, tools, redaction."""

from __future__ import annotations

import threading

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.core.redaction import REDACTED, redact, secrets_in_environment
from jupyter_agent.core.state import Delta, RunState, call_code, decode_delta, encode_delta
from jupyter_agent.errors import MalformedCall
from jupyter_agent.namespace import tracking as namespace
from jupyter_agent.tools.python import parse_call, run_python


def call(name: str = "python", arguments: str = '{"code": "1"}', id: str = "c1") -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_fold_tracks_pending_tool_calls_and_variables():
    state = RunState()
    state.apply(
        Delta(messages=[{"role": "user", "content": "hi"}]),
        step=0,
        kind="start",
        status="running",
        tokens=0,
    )
    state.apply(
        Delta(
            messages=[
                {"role": "assistant", "content": "", "tool_calls": [call(id="a"), call(id="b")]}
            ]
        ),
        step=1,
        kind="model",
        status="running",
        tokens=5,
    )
    assert state.pending_tool_call()["id"] == "a"
    state.apply(Delta(tool_call_id="a"), step=2, kind="tool_call", status="running", tokens=0)
    assert state.started_call == "a"
    state.apply(
        Delta(messages=[{"role": "tool", "tool_call_id": "a", "content": "1"}], vars={"x": "h1"}),
        step=3,
        kind="tool_result",
        status="running",
        tokens=0,
    )
    assert state.started_call is None
    assert state.pending_tool_call()["id"] == "b"
    assert state.vars == {"x": "h1"} and state.tokens == 5


def test_fold_keeps_each_files_latest_record_and_forgets_deleted_ones():
    state = RunState()
    a1, b1 = {"sha256": "a1", "size": 1}, {"sha256": "b1", "size": 2}
    big = {"unversioned": "over the run's cap of 50 MB", "size": 60_000_000}
    steps = [{"a.csv": a1, "b.csv": b1}, {"a.csv": {"sha256": "a2", "size": 3}, "b.csv": None}]
    for step, files in enumerate([*steps, {"big.bin": big}]):
        delta = decode_delta(encode_delta(Delta(files=files)))
        state.apply(delta, step=step, kind="tool_result", status="running", tokens=0)
        if step == 0:
            assert state.files == {"a.csv": a1, "b.csv": b1}
    assert state.files == {"a.csv": {"sha256": "a2", "size": 3}, "big.bin": big}
    snapshot = state.snapshot(0)
    assert snapshot is None or snapshot[1]["state"]["files"] == state.files


def test_delta_round_trip_and_newer_version_refused():
    delta = Delta(
        messages=[{"role": "user", "content": "x"}], vars={"a": "h"}, unsaved={"g": "why"}
    )
    assert decode_delta(encode_delta(delta)) == delta
    import dill

    from jupyter_agent.errors import StateVersionError

    with pytest.raises(StateVersionError):
        decode_delta(b'{"v": 999, "messages": []}')
    assert encode_delta(delta).startswith(b"{")  # JSON: decoding runs no code
    with pytest.raises(StateVersionError, match="not in a format"):
        decode_delta(dill.dumps({"v": 2, "messages": []}))  # dill is read by migrations only


def test_delta_values_json_writes_come_back_exactly():
    """Huge integers, NaN and infinities (which the fast decoder reads differently or not)."""
    for value in (2**70, -(10**30), 2**63, 12, float("inf"), float("nan")):
        decision = {"call_id": "c", "action": "approve", "value": value}
        back = decode_delta(encode_delta(Delta(decision=decision))).decision
        assert back is not None and type(back["value"]) is type(value)
        assert back["value"] == value or value != value, value


def test_touched_names_cover_binding_and_mutation():
    code = "import numpy as np\nx = 1\nrows.append(2)\ndf['a'] = 3\nobj.attr.b = 4\ndel old\nprint(readonly)\ndef f(): pass"
    assert namespace.touched_names(code) >= {"np", "x", "rows", "df", "obj", "old", "f"}
    assert "readonly" not in namespace.touched_names(code)


def test_snapshot_skips_unchanged_and_reports_unpicklable():
    ns = {"a": [1, 2], "gen": (i for i in range(3)), "lock": threading.Lock()}
    first = namespace.snapshot(ns, ["a", "gen"], {}, [])
    assert set(first.vars) == {"a"} and "gen" in first.unsaved
    again = namespace.snapshot(ns, ["a"], dict(first.vars), [])
    assert again.vars == {} and again.blobs == {}
    ns["a"].append(3)
    changed = namespace.snapshot(ns, ["a"], dict(first.vars), [])
    assert set(changed.vars) == {"a"} and changed.info["a"]["type"] == "list"
    del ns["a"]
    assert namespace.snapshot(ns, ["a"], dict(first.vars), []).vars == {"a": None}


def test_snapshot_never_stores_a_secret():
    snap = namespace.snapshot({"key": "sk-secret-value-123"}, ["key"], {}, ["sk-secret-value-123"])
    assert snap.blobs == {} and "secret" in snap.unsaved["key"]


def test_redaction_of_messages_and_environment(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdefgh12345")
    secrets = secrets_in_environment("sk-live-1234567890")
    msg = {"role": "tool", "content": "key sk-live-1234567890 and tok-abcdefgh12345"}
    assert redact(msg, secrets)["content"] == f"key {REDACTED} and {REDACTED}"


def test_parse_call_explains_malformed_calls():
    assert parse_call(call(arguments='{"code": "x = 1"}')) == "x = 1"
    for bad, message in [
        (call(name="shell"), "Unknown tool"),
        (call(arguments="{not json"), "not valid JSON"),
        (call(arguments='{"source": "x"}'), 'Missing argument "code"'),
    ]:
        with pytest.raises(MalformedCall, match=message):
            parse_call(bad)


def test_run_python_reports_output_value_and_errors():
    shell = start_ipython() or get_ipython()
    result = run_python(shell, "x = 40\nprint('hi')\nx + 2")
    assert "hi" in result.output and "42" in result.output and not result.error
    assert "x" in result.touched and shell.user_ns["x"] == 40
    failing = run_python(shell, "1 / 0")
    assert failing.error and "ZeroDivisionError" in failing.output
    assert "jupyter_agent" not in failing.output  # only the agent code's frames
    exiting = run_python(shell, "raise SystemExit(3)")
    assert exiting.error  # the agent's code cannot end the kernel


def test_a_stored_usage_that_is_not_a_number_counts_nothing_and_the_fold_goes_on():
    state = RunState()
    odd = {"prompt_tokens": "n/a", "completion_tokens": 12, "cached_tokens": [3]}
    for step, usage in enumerate([odd, {"prompt_tokens": 7.0, "cache_write_tokens": True}, "x"]):
        state.apply(Delta(), step=step, kind="model", status="running", tokens=0,
                    info={"usage": usage})  # fmt: skip
    assert (state.prompt_tokens, state.completion_tokens) == (7, 12)
    assert (state.cached_tokens, state.cache_write_tokens, state.model_calls) == (0, 0, 3)


def test_the_code_of_a_call_is_read_one_way_whatever_its_arguments() -> None:
    def call(arguments: str) -> dict:
        return {"id": "c", "function": {"name": "python", "arguments": arguments}}

    assert call_code(call('{"code": "x = 1"}')) == "x = 1"
    for odd in ('{"code": 3}', "[1, 2]", "not json", ""):
        assert call_code(call(odd)) is None, odd
    assert call_code({"id": "c"}) is None


def test_ctrl_c_waits_until_a_checkpoint_is_written_whole():
    import os
    import signal

    from jupyter_agent.loop.checkpoints import shield_from_interrupt

    before = signal.getsignal(signal.SIGINT)
    written = []
    with pytest.raises(KeyboardInterrupt), shield_from_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        written.append("whole")  # not cut short by the signal
    assert written == ["whole"]
    assert signal.getsignal(signal.SIGINT) is before  # the kernel's handler is back
