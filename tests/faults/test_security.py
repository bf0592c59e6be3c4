"""Secrets stay out of the store, store files are private, and only trusted stores are unpickled."""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from jupyter_agent.errors import StateVersionError, StoreError
from jupyter_agent.loop.runs import load_state
from jupyter_agent.namespace.tracking import restore
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.views.listing import Reader

from .harness import API_KEY, AgentEnv, raw_store_bytes, record

TOKEN = "tok-service-9f8e7d6c5b4a3210"  # an environment secret that is not the API key
HEADER_TOKEN = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"  # in no environment variable
ENCODINGS = ("utf-8", "utf-16-le", "utf-32-le")

LEAKY_CODE = """\
import os
import numpy as np
key = os.environ['OPENAI_API_KEY']
token = os.environ['MY_SERVICE_TOKEN']
headers = {'Authorization': 'Bearer ' + key}
keys = np.array([key, token])
cfg = {'nested': [{'deep': token}]}
print('the key is', key, 'and the token', token)
print(headers)
print('Authorization: Bearer {HEADER_TOKEN}')
"""


def leaky_script() -> list[dict]:
    return [
        {
            "content": "Reading the credentials.",
            "tool_calls": [{"name": "python", "arguments": {"code": LEAKY_CODE}}],
        },
        {
            "content": f"The key {API_KEY} works.",
            "tool_calls": [
                {"name": "python", "arguments": {"code": f"copy = '{API_KEY}'\nprint(copy[:6])"}}
            ],
        },
        {"content": f"Done; I used {API_KEY} and {TOKEN}."},
    ]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentEnv]:
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)  # inherited by the kernel
    e = AgentEnv(tmp_path)
    yield e
    e.close()


def leaks(data: bytes) -> list[str]:
    return [
        f"{name} as {enc}"
        for name, secret in (("API key", API_KEY), ("token", TOKEN), ("header", HEADER_TOKEN))
        for enc in ENCODINGS
        if secret.encode(enc) in data
    ]


def decoded_leaks(store_path: Path) -> list[str]:
    """Look inside the store too: DuckDB may compress strings, hiding them from a byte scan."""
    found = []
    with duckdb.connect(str(store_path), read_only=True) as con:
        for table in ("runs", "checkpoints", "blobs", "meta"):
            for row in con.execute(f"SELECT * FROM {table}").fetchall():
                for value in row:
                    data = value if isinstance(value, bytes) else str(value).encode()
                    found += [f"{table}: {x}" for x in leaks(data)]
        payloads = con.execute("SELECT payload FROM checkpoints ORDER BY step").fetchall()
    found += [f"payload: {x}" for (p,) in payloads if p for x in leaks(bytes(p))]
    return found


def test_secrets_never_reach_the_store(env: AgentEnv) -> None:
    body = f"Check the service with the key {API_KEY}; the token is {TOKEN}."
    crashed = env.agent(leaky_script(), body=body, crash="after:checkpoint.tool_result:1")
    assert crashed.status is None  # killed with its journal on disk
    on_disk = leaks(raw_store_bytes(env.store))
    assert not on_disk, on_disk

    resumed = env.rerun(body=body)
    assert resumed.status == "ok" and "Traceback" not in resumed.text, resumed.text
    view = env.view()
    assert view.state.status == "done"
    assert not leaks(raw_store_bytes(env.store))
    assert not decoded_leaks(env.store)
    assert not leaks(json.dumps(view.state.messages).encode())
    for name in ("key", "token", "headers", "keys", "cfg"):
        assert "holds a secret" in view.state.unsaved.get(name, ""), (name, view.state.unsaved)
    # The model wrote the key into its code: the call that ran is the redacted one.
    assert "copy" in view.state.vars and "[REDAC" in resumed.text + crashed.text
    assert "[REDACTED]" in json.dumps(view.state.messages)
    # What the model was sent never contained them either (after the first reply, the
    # conversation comes back from the redacted checkpoints).
    for request in env.server.requests:
        assert not leaks(json.dumps(request["body"]).encode()), request["turn"]
    record(
        "security",
        "secrets in checkpoints",
        injection="API key and a *_TOKEN env value in the prompt, printed by tool code, held in "
        "variables (str, dict, numpy str array), echoed by the model, written into tool code; "
        "kernel killed mid-run so journals are on disk",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="no occurrence (UTF-8/16/32) in the raw DuckDB file, WAL or journals, nor in "
        "any decoded column or payload; secret-holding variables reported unsaved",
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_files_are_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    umask = os.umask(0o022)
    try:
        for path in (tmp_path / "fresh" / "dir" / "agents.duckdb", shared / "agents.duckdb"):
            store = Store(path)
            writer = store.writer("r1", secrets=[])
            writer.put_run(RunRow("r1", "/nb", "a", None, "t", "h", "m", None, None, 1.0, {}))
            journal = next(store.journal_dir.glob("*.jnl"))
            assert mode(journal) == 0o600 and mode(store.journal_dir) == 0o700
            with store.session():  # one connection, opened by the first read that needs it
                assert store.runs()  # it folded the live journal
                wal = path.with_name(path.name + ".wal")
                assert wal.exists() and mode(wal) == 0o600, oct(mode(wal))
                store.remember_window("probe", 4096)  # a write while it is open
                assert mode(wal) == 0o600, oct(mode(wal))
            writer.close()
            assert mode(path) == 0o600
            if path.parent != shared:
                assert mode(path.parent) == 0o700
            assert os.umask(0o022) == 0o022  # restored after the connection
    finally:
        os.umask(umask)
    record(
        "security",
        "file permissions",
        injection="stores created in a new directory and in an existing 0755 one, umask 022",
        trials=2,
        completed=2,
        lost=0,
        duplicated=0,
        outcome="DuckDB file, WAL and journals 0600; store and journal directories 0700",
    )


class Boom:
    """Unpickling this creates a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_only_the_kernel_unpickles_and_only_a_trusted_store(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    store = Store(tmp_path / "agents.duckdb")
    evil = pickle.dumps(Boom(marker))
    w = store.writer("r1", secrets=[])
    w.put_run(RunRow("r1", "/nb.ipynb", "a", None, "task", "h", "m", None, None, 1.0, {}))
    w.put_blob("h1", evil)
    w.put_checkpoint(CheckpointRow("r1", 0, "start", "done", "s", 1.0, 0, 0, 1, {}), evil)
    w.close()

    # Metadata reads — the store API and everything the REST server calls — never unpickle.
    store.runs()
    store.checkpoints("r1")
    store.latest_checkpoints(["r1"])
    raw = store.payloads([("r1", None)])
    assert raw and store.blobs(["h1"]) == {"h1": evil}
    reader = Reader(store)
    for agent in reader.agents("/nb.ipynb"):
        for run in reader.runs("/nb.ipynb", agent["name"]):
            reader.run(run["run_id"])
    assert not marker.exists()
    server_dir = Path(__import__("jupyter_agent.server").server.__file__).parent
    for source in server_dir.glob("*.py"):
        text = source.read_text()
        for word in ("dill", "pickle", "decode_delta", "fold(", "load_state", "namespace"):
            assert word not in text, f"{source.name} mentions {word}"

    # Payloads are JSON: reading a history runs nothing, whoever wrote the store.
    os.chmod(store.path, 0o666)
    with pytest.raises(StateVersionError, match="not in a format"):
        load_state(store, store.runs()[0])  # a pickle planted as a payload is just refused
    assert not marker.exists()
    # Values (blobs) are unpickled by the kernel: only from a store it trusts.
    with pytest.raises(StoreError, match="writable by other users"):
        store.blobs(["h1"])
    os.chmod(store.path, 0o600)
    os.chown(store.path, 12345, -1)
    with pytest.raises(StoreError, match="belongs to another user"):
        store.blobs(["h1"])
    assert not marker.exists()
    os.chown(store.path, os.getuid(), -1)
    restore({}, {"v": "h1"}, store.blobs)  # your own store's values are loaded
    assert marker.exists()  # which is why only your own store's values are ever loaded
    record(
        "security",
        "unpickling",
        injection="a checkpoint payload and a blob that run code when unpickled",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="histories are JSON and never unpickled; the kernel loads values only from "
        "a store of its own user that no one else can write; loading your own store runs it",
    )


def plant_journal(directory: Path, run_id: str, payload: bytes, uid: int = 65534) -> Path:
    """A CRC-valid journal written "by another user": a run and a checkpoint carrying ``payload``."""
    from jupyter_agent.store.duckdb import journal

    row = RunRow(run_id, "/nb.ipynb", "a", None, "task", "h", "m", None, None, 9.0, {})
    cp = CheckpointRow(run_id, 0, "start", "done", "planted", 9.0, 0, 0, 1, {})
    run = {**row.__dict__, "info": "{}"}
    checkpoint = {**cp.__dict__, "info": "{}"}
    data = journal.encode(journal.Record("runs", run)) + journal.encode(
        journal.Record("checkpoints", checkpoint, payload)
    )
    path = directory / f"{run_id}.4242.deadbeef.jnl"
    path.write_bytes(data)
    os.chown(path, uid, uid)
    return path


def test_a_journal_planted_by_another_user_is_never_folded(tmp_path: Path) -> None:
    import warnings

    from jupyter_agent.errors import StoreWarning

    marker = tmp_path / "code-ran"
    store = Store(tmp_path / "agents.duckdb")
    w = store.writer("mine", secrets=[])
    w.put_run(RunRow("mine", "/nb.ipynb", "a", None, "task", "h", "m", None, None, 1.0, {}))
    w.close()
    store.journal_dir.chmod(0o777)  # exposed, as a shared or misconfigured directory would be
    planted = plant_journal(store.journal_dir, "evil", pickle.dumps(Boom(marker)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [r.run_id for r in store.runs()] == ["mine"]  # a reader: nothing folded
        assert Reader(store).agents("/nb.ipynb")  # the server's polling: same
        store.journal_dir.chmod(0o700)  # the owner notices and makes it private
        assert [r.run_id for r in store.runs()] == ["mine"]
    texts = [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]
    assert any(
        "writable by other users" in t and "python -m jupyter_agent.journal" in t for t in texts
    )
    assert any(
        str(planted) in t and "another user (uid 65534)" in t and "hostile" in t for t in texts
    )
    assert planted.exists()  # kept for inspection, not deleted as a folded dead journal
    assert store.run("evil") is None
    assert store.payloads([("mine", None)]) == []  # trusted again; the planted data is not in
    assert not marker.exists()
    # A journal of our own uid that others could write is refused the same way.
    own = plant_journal(store.journal_dir, "evil2", pickle.dumps(Boom(marker)), uid=os.getuid())
    own.chmod(0o666)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [r.run_id for r in store.runs()] == ["mine"]
    assert any("writable by other users" in str(w.message) for w in caught)
    record(
        "security",
        "a journal planted by another user",
        injection="journal directory made 0777; a CRC-valid journal owned by uid 65534 whose "
        "checkpoint unpickles into code; readers (store API, REST queries) poll; then the "
        "directory is made private again",
        trials=1,
        completed=1,
        lost=0,
        duplicated=0,
        outcome="never folded (nor deleted); a StoreWarning names the file and how to inspect "
        "it; the planted pickle never runs",
    )
