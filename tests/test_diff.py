"""``jupyter agent diff``: two points of agents' histories compared, from a terminal.

Stores are written by real kernels (or, for files, through a store's writer), and
the command runs as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from jupyter_agent.core.state import Delta, RunState, encode_delta
from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.testing import ScriptedServer

from .test_cli import cli
from .test_durable_kernel import tool

CALC = [
    tool("x = 1\nitems = list(range(30))"),
    tool("x = 2\nitems[3] = 99\nnote = 'hi'"),
    {"content": "Done: x is 2."},
]
OTHER = [tool("x = 5\nlabel = 'other'"), {"content": "Done."}]


def checkpoints(env: dict[str, str], name: str) -> list[dict]:
    shown = cli("show", name, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["checkpoints"]


def after_first_call(env: dict[str, str], name: str) -> int:
    """The checkpoint of the first tool call's result."""
    return next(c["checkpoint"] for c in checkpoints(env, name) if c["kind"] == "tool_result")


def test_diff_shows_what_changed_between_checkpoints_and_agents(
    kernel_factory, scripted: ScriptedServer, agent_env, store_path, tmp_path
):
    k = kernel_factory()
    k.run(f"__session__ = {str(tmp_path / 'a.ipynb')!r}")
    for name, script in (("calc", CALC), ("other", OTHER)):
        scripted.set_script(script)
        result = k.run(f"%%agent --model scripted --name {name}\nSet x.")
        assert result.status == "ok", result.text
    k.shutdown()
    env = agent_env
    first = after_first_call(env, "calc")

    # One agent, an earlier checkpoint against its latest: the variable change shows.
    done = cli("diff", f"calc@{first}", "calc", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"a: calc@{first}" in out
    assert "  ~ x: int 1 -> 2" in out
    assert "  + note: str 'hi'" in out
    assert "  ~ items: list" in out and "      - 3,\n      + 99," in out
    lines = out.splitlines()
    messages = lines[lines.index(next(x for x in lines if x.startswith("Messages"))) :]
    # Side a has nothing after the common prefix; b has the second call and the answer.
    assert not [x for x in messages if x.startswith("  a ")]
    assert any(x.startswith("  b ") and "call" in x and "python: x = 2" in x for x in messages)
    assert any(x.startswith("  b ") and "Done: x is 2." in x for x in messages)

    # --json: the stable shape scripts read.
    data = json.loads(cli("diff", f"calc@{first}", "calc", "--json", env=env).stdout)
    assert set(data) == {"a", "b", "messages", "variables", "files"}
    assert data["a"]["agent"] == "calc" and data["a"]["checkpoint"] == first
    x = next(v for v in data["variables"] if v["name"] == "x")
    assert (x["change"], x["a"]["summary"], x["b"]["summary"]) == ("changed", "1", "2")
    assert x["a"]["type"] == "int" and isinstance(x["a"]["size"], int)
    assert {m["side"] for m in data["messages"]} == {"b"}
    assert all(isinstance(m["checkpoint"], int) for m in data["messages"])
    assert data["files"] == []

    # Two agents: their latest checkpoints, by name; and a run id with a checkpoint.
    other_run = json.loads(cli("show", "other", "--json", env=env).stdout)["run_id"]
    last = checkpoints(env, "other")[-1]["checkpoint"]
    data = json.loads(cli("diff", "calc", f"{other_run}@{last}", "--json", env=env).stdout)
    assert (data["a"]["agent"], data["b"]["agent"]) == ("calc", "other")
    changes = {v["name"]: v["change"] for v in data["variables"]}
    assert changes == {"x": "changed", "items": "removed", "note": "removed", "label": "added"}
    assert {m["side"] for m in data["messages"]} == {"a", "b"}

    # The same point twice: nothing differs, exit 0.
    same = cli("diff", "calc", "calc", env=env)
    assert same.returncode == 0 and "No differences." in same.stdout

    # A store others could write: values are never unpickled, summaries still compare.
    mode = store_path.stat().st_mode
    store_path.chmod(mode | stat.S_IWOTH)
    try:
        untrusted = cli("diff", f"calc@{first}", "calc", env=env)
    finally:
        store_path.chmod(mode)
    assert untrusted.returncode == 0, untrusted.stderr
    assert "  ~ x: int 1 -> 2" in untrusted.stdout and "  ~ items: list" in untrusted.stdout
    assert "--- a/items" not in untrusted.stdout and "--- a/items" in out


def write_run(store: DuckDBStore, run: RunRow, deltas: list[Delta]) -> None:
    w = store.writer(run.run_id, secrets=[])
    w.put_run(run)
    first = 0 if run.parent_step is None else run.parent_step + 1
    for i, delta in enumerate(deltas):
        step = first + i
        row = CheckpointRow(
            run.run_id, step, "tool_result", "running", "", 1.0 + step, 1.0, 0, 0, {}
        )
        w.put_checkpoint(row, encode_delta(delta))
    w.close()


def record(text: str) -> dict:
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "size": len(text)}


def files_store(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A store whose run ``r1`` of agent ``files`` records files, and a fork ``r2`` of it."""
    path = tmp_path / "files.duckdb"
    store = DuckDBStore(str(path))
    nb = str(tmp_path / "f.ipynb")
    write_run(
        store,
        RunRow("r1aaaaaaaaaaaaaa", nb, "files", None, "task", "h", "m", None, None, 1.0, {}),
        [
            Delta(files={"out.csv": record("a,b\n"), "keep.txt": record("k")}),
            Delta(
                files={
                    "out.csv": record("a,b\n1,2\n"),
                    "big.bin": {"unversioned": "over the cap", "size": 99 * 2**20},
                }
            ),
            Delta(files={"keep.txt": None}),
        ],
    )
    fork = RunRow(
        "r2bbbbbbbbbbbbbb", nb, "files", None, "task", "h", "m", "r1aaaaaaaaaaaaaa", 0, 2.0, {}
    )
    write_run(store, fork, [Delta(files={"new.txt": record("n")})])
    return {"JUPYTER_AGENT_STORE": str(path)}, path


def test_files_that_differ_are_listed(tmp_path):
    env, _ = files_store(tmp_path)
    done = cli("diff", "r1aaaa@0", "r1aaaa@2", env=env)
    assert done.returncode == 0, done.stderr
    assert "Files:" in done.stdout
    # A file version reads as the replay and the rewind notice show it.
    four, eight = record("a,b\n")["sha256"][:12], record("a,b\n1,2\n")["sha256"][:12]
    assert f"  ~ out.csv (sha256 {four}, 4 B -> sha256 {eight}, 8 B)" in done.stdout, done.stdout
    assert f"  - keep.txt (sha256 {record('k')['sha256'][:12]}, 1 B)" in done.stdout
    assert "  + big.bin (not versioned (over the cap), 99.0 MiB)" in done.stdout
    data = json.loads(cli("diff", "r1aaaa@2", "r2bbbb", "--json", env=env).stdout)
    # The fork starts from r1's checkpoint 0: it has keep.txt and the first out.csv.
    assert {f["path"]: f["change"] for f in data["files"]} == {
        "out.csv": "changed",
        "big.bin": "removed",
        "keep.txt": "added",
        "new.txt": "added",
    }
    out = next(f for f in data["files"] if f["path"] == "out.csv")
    assert out["a"] == record("a,b\n1,2\n") and out["b"] == record("a,b\n")


def test_unknown_or_malformed_points_are_one_line_errors_and_write_nothing(tmp_path):
    env, path = files_store(tmp_path)
    before = path.read_bytes()
    for args, code, words in (
        (("nope", "r1aaaa"), 1, "No run or agent 'nope'"),
        (("r1aaaa@7", "r1aaaa"), 1, "has no checkpoint 7"),
        (("files@1", "ghost@2"), 1, "No run or agent 'ghost'"),
        (("r1a", "files"), 1, "No run or agent 'r1a'"),  # a run id's prefix: 4 at least
        (("files@x", "files"), 2, "is not a point"),
        (("@3", "files"), 2, "is not a point"),
    ):
        result = cli("diff", *args, env=env)
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""
    assert path.read_bytes() == before


def test_the_comparison_core_on_states_folded_by_hand():
    """diff_states alone: a type change, a value not saved, values read for a diff."""
    from jupyter_agent.core.diff import diff_states

    a, b = RunState(), RunState()
    shared = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"}]
    a.messages = [*shared, {"role": "assistant", "content": "one\ntwo"}]
    b.messages = [
        *shared,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "function": {"name": "load", "arguments": '{"n": 3}'}}],
        },
    ]
    a.vars, b.vars = {"x": "h1", "t": "h3"}, {"x": "h2"}
    b.unsaved = {"t": "a generator cannot be saved"}
    info = (
        {"x": {"type": "int", "repr": "1", "size": 5}},
        {"x": {"type": "str", "repr": "'a'", "size": 6}},
    )
    texts = {"h1": "1\n2", "h2": "1\n3"}
    diff = diff_states(
        a, b, steps=([0, 0, 4], [0, 0, 9]), info=info, value_text=lambda n, h: texts.get(h)
    )
    assert diff.common == 2
    assert [(m.side, m.checkpoint, m.role, m.text) for m in diff.messages] == [
        ("a", 4, "assistant", "one (+1 lines)"),
        ("b", 9, "call", 'load {"n": 3}'),
    ]
    t, x = diff.variables  # by name
    assert (x.change, x.a.type, x.b.type, x.diff[-2:]) == ("changed", "int", "str", ["-2", "+3"])
    assert (t.change, t.b.size, t.b.summary) == (
        "changed",
        None,
        "not saved: a generator cannot be saved",
    )
    assert diff_states(a, a).same


def test_a_name_is_found_by_one_rule_in_every_command(tmp_path):
    """``diff`` and the agent commands find an agent by the same rule, in the same words:
    the exact name, else a unique prefix; an ambiguous one lists the candidates."""
    path = tmp_path / "names.duckdb"
    store = DuckDBStore(str(path))
    nb = str(tmp_path / "n.ipynb")
    for i, agent in enumerate(["sales", "salt"]):
        run = RunRow(f"r{i}cccccccccccccc", nb, agent, None, "task", "h", "m", None, None, 1.0, {})
        write_run(store, run, [Delta()])
    env = {"JUPYTER_AGENT_STORE": str(path)}
    said = {}
    for args in (("show", "sal"), ("diff", "sal", "sales")):
        done = cli(*args, env=env)
        assert done.returncode == 1, done.stderr
        said[args[0]] = done.stderr
    assert said["show"] == said["diff"], said
    assert "'sal' is ambiguous in the store: sales (" in said["show"], said
    assert "Give --notebook or a full name." in said["show"], said
    shown = cli("diff", "sale", "salt", env=env)
    assert shown.returncode == 0 and "a: sales@0" in shown.stdout, shown.stderr
