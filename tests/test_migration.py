"""A store written by the previous release (schema 1, dill payloads) opens and resumes.

The v1 file is built here with the previous release's table definitions and
payload encoding, frozen below, so the test keeps checking the upgrade after
the current code stops writing that format. Blobs (namespace values) are dill
in both versions and are written with :mod:`jupyter_agent.namespace.tracking`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dill
import duckdb
import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.core.state import prompt_hash
from jupyter_agent.errors import StoreError, StoreWarning
from jupyter_agent.namespace import tracking as namespace
from jupyter_agent.store.duckdb import journal
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.schema import SCHEMA_VERSION
from jupyter_agent.testing import ScriptedServer

#: The schema of release 0.1.0 (SCHEMA_VERSION 1), as it created new stores.
V1_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, notebook VARCHAR NOT NULL, agent VARCHAR NOT NULL,
    cell_id VARCHAR, prompt VARCHAR NOT NULL, prompt_hash VARCHAR NOT NULL,
    model VARCHAR NOT NULL, parent_run VARCHAR, parent_step INTEGER,
    created_at DOUBLE NOT NULL, info VARCHAR
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id VARCHAR NOT NULL, step INTEGER NOT NULL, kind VARCHAR NOT NULL,
    status VARCHAR NOT NULL, summary VARCHAR NOT NULL, created_at DOUBLE NOT NULL,
    duration_ms DOUBLE NOT NULL, tokens INTEGER NOT NULL, size INTEGER NOT NULL,
    info VARCHAR, payload BLOB, PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS blobs (hash VARCHAR PRIMARY KEY, size BIGINT NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS journal_progress (journal VARCHAR PRIMARY KEY, merged_to BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS notebook_moves (old VARCHAR NOT NULL, new VARCHAR NOT NULL, moved_at DOUBLE NOT NULL);
"""
NOTEBOOK = "/work/analysis.ipynb"
PROMPT = "Compute x and tell me its value."
CALL = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "python", "arguments": json.dumps({"code": "x = 41 + 1"})},
}


def v1_payload(**delta: object) -> bytes:
    """A step delta as release 0.1.0 encoded it (state version 2, pickled with dill)."""
    fields = {
        "messages": [],
        "vars": {},
        "unsaved": {},
        "decision": None,
        "tool_call_id": None,
        "compaction": None,
        "plan": None,
    }
    return dill.dumps({"v": 2, **fields, **delta}, protocol=5)


def build_v1_store(path: Path) -> str:
    """One run of agent ``sales`` stopped at the step limit after its first step."""
    blob = namespace.serialize(42)
    digest = namespace.digest(blob)
    settings = {"model": "scripted", "context_window": 128000, "budget": None, "approve": False}
    steps = [
        (
            "start",
            "running",
            PROMPT,
            settings,
            v1_payload(
                messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": PROMPT}]
            ),
        ),
        (
            "model",
            "running",
            "python: x = 41 + 1",
            {"usage": {"prompt_tokens": 20, "completion_tokens": 5}},
            v1_payload(messages=[{"role": "assistant", "content": "", "tool_calls": [CALL]}]),
        ),
        ("tool_call", "running", "x = 41 + 1", {}, v1_payload(tool_call_id="call_0")),
        (
            "tool_result",
            "running",
            "ok",
            {"blobs": [digest]},
            v1_payload(
                messages=[{"role": "tool", "tool_call_id": "call_0", "content": "(no output)"}],
                vars={"x": digest},
                tool_call_id="call_0",
            ),
        ),
        (
            "limit",
            "limit",
            "stopped after 1 steps (--max-steps); re-run to continue",
            {},
            v1_payload(),
        ),
    ]
    with duckdb.connect(str(path)) as con:
        con.execute(V1_DDL)
        con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, NULL, ?, ?, ?, NULL, NULL, ?, ?)",
            [
                "0123456789abcdef",
                NOTEBOOK,
                "sales",
                PROMPT,
                prompt_hash(PROMPT),
                "scripted",
                1000.0,
                json.dumps({"approve": False, "plan": False}),
            ],
        )
        for i, (kind, status, summary, info, payload) in enumerate(steps):
            tokens = 25 if kind == "model" else 0
            con.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    "0123456789abcdef",
                    i,
                    kind,
                    status,
                    summary,
                    1000.0 + i,
                    1.0,
                    tokens,
                    len(payload),
                    json.dumps(info),
                    payload,
                ],
            )
        con.execute("INSERT INTO blobs VALUES (?, ?, ?)", [digest, len(blob), blob])
    path.chmod(0o600)
    return "0123456789abcdef"


@pytest.fixture
def ip(store_path: Path, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(store_path))
    monkeypatch.setenv("JUPYTER_AGENT_NOTEBOOK", NOTEBOOK)
    monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_agent")
    shell.user_ns.pop("x", None)
    yield shell
    shell.user_ns.pop("x", None)


def test_a_v1_store_opens_and_its_unfinished_run_resumes(
    ip, scripted: ScriptedServer, store_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_id = build_v1_store(store_path)
    scripted.set_script([{"content": "unused"}, {"content": "x is 42."}])
    original = store_path.read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ip.run_cell_magic("agent", "--name sales --model scripted", PROMPT)
    out = capsys.readouterr().out
    # Upgraded in place, after a copy of the file as it was, named in the message.
    backup = store_path.with_name(store_path.name + ".v1.bak")
    assert backup.read_bytes() == original and oct(backup.stat().st_mode & 0o777) == "0o600"
    notes = [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]
    assert any(str(backup) in n and f"schema 1 to {SCHEMA_VERSION}" in n for n in notes), notes
    with duckdb.connect(str(backup), read_only=True) as con:  # the copy is the v1 file
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "1",
        )
    assert "x is 42." in out, out
    assert ip.user_ns.get("x") == 42  # the value saved by the old release, restored
    chat = [r for r in scripted.requests if r["turn"] >= 0]
    assert len(chat) == 1  # the step done before the upgrade was not paid for again
    store = Store(store_path)
    (run,) = store.runs()
    assert run.run_id == run_id
    kinds = [c.kind for c in store.checkpoints(run_id)]
    assert kinds[:5] == ["start", "model", "tool_call", "tool_result", "limit"]
    assert kinds[5] == "resume" and kinds[-1] == "model"
    assert store.checkpoints(run_id)[-1].status == "done"
    assert store.info().schema_version == SCHEMA_VERSION
    # Every payload is JSON now: a history reads without unpickling, even from a
    # store others could write (values stay behind the trust check).
    store_path.chmod(0o666)
    try:
        history = store.payloads([(run_id, None)])
        assert all(json.loads(p)["v"] == 3 for _, p in history)
        assert json.loads(history[1][1])["messages"][0]["tool_calls"] == [CALL]
        with pytest.raises(StoreError, match="writable by other users"):
            store.blobs(["any"])
    finally:
        store_path.chmod(0o600)


def test_a_journal_of_the_previous_release_is_folded_as_json(tmp_path: Path) -> None:
    """A kernel of the previous release may still be writing when the new one first reads."""
    path = tmp_path / "s.duckdb"
    build_v1_store(path)
    store = Store(path)
    w = store.writer("fedcba9876543210", secrets=[])
    w.put_run(
        store.runs()[0].__class__(**{**store.runs()[0].__dict__, "run_id": "fedcba9876543210"})
    )
    old = v1_payload(messages=[{"role": "user", "content": "from the old kernel"}])
    # The record as the previous release framed it: no payload_format in the row.
    from jupyter_agent.store.api import CHECKPOINT_COLUMNS, CheckpointRow

    row = CheckpointRow("fedcba9876543210", 0, "start", "running", "s", 1.0, 1.0, 0, 1, {})
    values = {c: getattr(row, c) for c in CHECKPOINT_COLUMNS}
    values["info"] = "{}"
    w._append(journal.Record("checkpoints", values, old))
    w.close()
    ((cp, payload),) = store.payloads([("fedcba9876543210", None)])
    assert json.loads(payload)["messages"] == [{"role": "user", "content": "from the old kernel"}]
