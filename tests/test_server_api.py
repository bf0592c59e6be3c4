"""The server extension's REST API, on a real Jupyter Server and real store files.

The store is filled by real agents in real kernels, or row by row through
``Store.writer()`` where a test needs a status that is slow to produce. Every
payload written here would create a marker file if it were ever unpickled, so
the tests also check that the server never deserializes one.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_agent.store.api import CheckpointRow, RunRow
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.store.writer import RunWriter
from jupyter_agent.testing import ScriptedServer

from .kernels import Kernel

API = "jupyter-agent/api"


class _Trap:
    """Unpickling this creates ``path``: proof that a payload was deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


class Api:
    """Synchronous calls to the test server (its IOLoop runs only while a call is made)."""

    def __init__(self, fetch: Callable, loop: Any) -> None:
        self._fetch = fetch
        self._loop = loop
        self.durations: list[float] = []

    def call(
        self, method: str, *parts: str, headers: dict | None = None, body: Any = None, **params: str
    ) -> tuple[int, dict]:
        kwargs: dict[str, Any] = {"method": method, "params": params, "headers": headers}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        start = time.monotonic()
        try:
            response = self._loop.run_until_complete(self._fetch(*parts, **kwargs))
            code, raw = response.code, response.body
        except HTTPClientError as exc:
            code, raw = exc.code, exc.response.body if exc.response else b""
        self.durations.append(time.monotonic() - start)
        return code, json.loads(raw) if raw else {}

    def get(self, *parts: str, **params: str) -> tuple[int, dict]:
        return self.call("GET", API, *parts, **params)

    def delete(self, *parts: str, **params: str) -> tuple[int, dict]:
        return self.call("DELETE", API, *parts, **params)


@pytest.fixture
def jp_server_config(store_path: Path) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_agent": True}},
            "AgentServer": {"store_path": str(store_path), "busy_timeout": 1.0},
        }
    )


@pytest.fixture
def api(jp_serverapp: Any, jp_fetch: Callable, jp_asyncio_loop: Any) -> Api:
    return Api(jp_fetch, jp_asyncio_loop)


@pytest.fixture
def store(store_path: Path) -> Store:
    return Store(store_path)


@pytest.fixture
def trap(tmp_path: Path) -> bytes:
    return pickle.dumps(_Trap(tmp_path / "UNPICKLED"))


@pytest.fixture(autouse=True)
def never_unpickled(tmp_path: Path):
    yield
    assert not (tmp_path / "UNPICKLED").exists(), "the server deserialized a payload"


def notebook(root: Path, rel: str) -> str:
    """Write an empty notebook at ``rel`` under the server root; return its absolute path."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(), path)
    return str(path)


def add_run(
    store: Store,
    nb: str,
    agent: str,
    steps: list[tuple[str, str]],
    payload: bytes,
    *,
    cell_id: str | None = None,
    run_id: str | None = None,
    created: float | None = None,
    parent: tuple[str, int] | None = None,
    keep_open: bool = False,
    last_info: dict | None = None,
    run_info: dict | None = None,
) -> RunWriter | str:
    """A run with one checkpoint per (kind, status); open writers make it live."""
    created = time.time() if created is None else created
    run_id = run_id or uuid.uuid4().hex[:16]
    writer = store.writer(run_id)
    writer.put_run(
        RunRow(
            run_id,
            nb,
            agent,
            cell_id,
            f"Task for {agent}\nsecond line",
            "hash",
            "scripted",
            parent[0] if parent else None,
            parent[1] if parent else None,
            created,
            run_info or {},
        )
    )
    for i, (kind, status) in enumerate(steps):
        info = (last_info or {}) if i == len(steps) - 1 else {}
        writer.put_checkpoint(
            CheckpointRow(run_id, i, kind, status, f"{kind} {i}", created + i, 5.0, 10, 100, info),
            payload,
        )
    if keep_open:
        return writer
    writer.close()
    return run_id


RUNNING_STEPS = [("start", "running"), ("model", "running"), ("tool_call", "running")]


# -- reading --------------------------------------------------------------------------


def test_every_endpoint_refuses_unauthenticated_requests(api: Api) -> None:
    anonymous = {"Authorization": ""}
    for method, path in [
        ("GET", f"{API}/status"),
        ("GET", f"{API}/agents"),
        ("GET", f"{API}/agents/a"),
        ("GET", f"{API}/agents/a/runs"),
        ("DELETE", f"{API}/agents/a"),
        ("GET", f"{API}/runs/0123456789abcdef"),
        ("GET", f"{API}/runs/0123456789abcdef/checkpoints"),
    ]:
        code, _ = api.call(method, path, headers=anonymous, notebook="nb.ipynb")
        assert code in (401, 403), (method, path, code)


def test_agents_of_a_notebook_with_every_status(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes
) -> None:
    nb = notebook(jp_root_dir, "work/analysis.ipynb")
    add_run(store, nb, "cell-c1", [*RUNNING_STEPS, ("model", "done")], trap, cell_id="c1")
    add_run(store, nb, "cell-c2", RUNNING_STEPS, trap, cell_id="c2")  # its kernel died
    add_run(store, nb, "reviewer", [*RUNNING_STEPS[:2], ("approval", "awaiting_approval")], trap)
    live = add_run(store, nb, "cell-c4", RUNNING_STEPS, trap, cell_id="c4", keep_open=True)
    add_run(store, nb, "broken", [*RUNNING_STEPS, ("error", "error")], trap, cell_id="c5")
    add_run(store, nb, "long", [*RUNNING_STEPS, ("limit", "limit")], trap)
    budget = {"spent": 48210, "budget": 50000, "cost": None, "budget_cost": None}
    add_run(store, nb, "pricey", [*RUNNING_STEPS, ("budget", "budget")], trap, last_info=budget)
    looping = {"reason": "the same python call failed 3 times"}
    add_run(store, nb, "looping", [*RUNNING_STEPS, ("stuck", "stuck")], trap, last_info=looping)
    add_run(store, notebook(jp_root_dir, "other.ipynb"), "elsewhere", RUNNING_STEPS, trap)
    try:
        code, body = api.get("agents", notebook="work/analysis.ipynb")
    finally:
        assert isinstance(live, RunWriter)
        live.close(merge=False)
    assert code == 200
    assert body["notebook"] == "work/analysis.ipynb"
    assert body["running"] is True
    agents = {a["name"]: a for a in body["agents"]}
    # Steps are model calls (not checkpoints), the same sentences as %agent list and the widget.
    assert {n: (a["status"], a["label"], a["steps"]) for n, a in agents.items()} == {
        "cell-c1": ("done", "done after 2 steps", 2),
        "cell-c2": ("interrupted", "interrupted at step 1", 1),
        "reviewer": ("awaiting_approval", "waiting for approval", 1),
        "cell-c4": ("running", "running", 1),
        "broken": ("error", "paused after an error at step 1", 1),
        "long": ("limit", "stopped at the step limit after 1 step", 1),
        "pricey": ("budget", "paused at the budget: 48,210 of 50,000 tokens", 1),
        "looping": ("stuck", "stuck: the same python call failed 3 times", 1),
    }
    c2 = agents["cell-c2"]
    assert c2["cell_id"] == "c2" and c2["named"] is False and c2["step"] == 2
    assert agents["broken"]["named"] is True and agents["broken"]["cell_id"] == "c5"
    assert c2["prompt"] == "Task for cell-c2"
    assert c2["checkpoints"] == 3 and c2["tokens"] == 30 and c2["runs"] == 1
    assert [t["kind"] for t in c2["timeline"]] == ["start", "model", "tool_call"]
    assert agents["cell-c4"]["live"] is True and c2["live"] is False

    code, body = api.get("agents", notebook="work/analysis.ipynb", cell_id="c2")
    assert [a["name"] for a in body["agents"]] == ["cell-c2"]
    code, body = api.get("agents", notebook="never-seen.ipynb")
    assert (code, body["agents"], body["running"]) == (200, [], False)


def test_an_agent_shows_its_plan_progress_and_its_ledger(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes
) -> None:
    nb = notebook(jp_root_dir, "plans.ipynb")
    plan = [{"title": "load", "status": "done"}, {"title": "plot", "status": "in_progress"}]
    usage = {"prompt_tokens": 25, "completion_tokens": 5, "cached_tokens": 20}
    info = {"plan": plan, "usage": usage, "cost_usd": 0.125}
    add_run(
        store, nb, "planner", [*RUNNING_STEPS, ("tool_result", "running")], trap, last_info=info
    )
    add_run(store, nb, "plain", RUNNING_STEPS, trap)
    code, body = api.get("agents", notebook="plans.ipynb")
    assert code == 200
    agents = {a["name"]: a for a in body["agents"]}
    planner = agents["planner"]
    assert planner["plan"]["text"] == "1/2" and planner["plan"]["items"] == plan
    assert (planner["prompt_tokens"], planner["completion_tokens"]) == (25, 5)
    assert (planner["cached_tokens"], planner["cache_hit_rate"], planner["cost_usd"]) == (
        20,
        0.8,
        0.125,
    )
    assert agents["plain"]["plan"] is None and agents["plain"]["cost_usd"] is None
    code, detail = api.get("agents", "planner", notebook="plans.ipynb")
    assert detail["all_runs"][-1]["plan"]["text"] == "1/2"


def test_runs_of_an_agent_and_checkpoints_of_a_run(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes
) -> None:
    nb = notebook(jp_root_dir, "nb.ipynb")
    first = add_run(store, nb, "cell-x", RUNNING_STEPS, trap, cell_id="x", created=1000.0)
    second = add_run(
        store, nb, "cell-x", [("start", "running"), ("model", "done")], trap, cell_id="x"
    )
    code, agent = api.get("agents", "cell-x", notebook="nb.ipynb")
    assert code == 200
    assert (agent["status"], agent["run_id"], agent["runs"]) == ("done", second, 2)
    assert [r["run_id"] for r in agent["all_runs"]] == [first, second]

    code, body = api.get("agents", "cell-x", "runs", notebook="nb.ipynb")
    assert code == 200
    runs = body["runs"]
    assert [(r["run_id"], r["status"], r["step"], r["steps"]) for r in runs] == [
        (first, "interrupted", 2, 1),
        (second, "done", 1, 1),
    ]
    assert runs[0]["label"] == "interrupted at step 1"
    assert runs[1]["label"] == "done after 1 step"
    assert runs[0]["checkpoints"] == 3 and runs[0]["size"] == 300

    for suffix in ([], ["checkpoints"]):
        code, run = api.get("runs", str(first), *suffix)
        assert code == 200
        assert run["notebook"] == "nb.ipynb" and run["agent"] == "cell-x"
        cps = run["checkpoints"]
        assert [c["step"] for c in cps] == [0, 1, 2]
        assert set(cps[0]) == {
            "step",
            "kind",
            "status",
            "summary",
            "created_at",
            "duration_ms",
            "tokens",
            "size",
            "info",
        }
        assert (cps[2]["kind"], cps[2]["status"], cps[2]["tokens"], cps[2]["size"]) == (
            "tool_call",
            "running",
            10,
            100,
        )


def test_a_fork_counts_its_parents_steps_and_a_quiet_live_run_is_stalled(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = notebook(jp_root_dir, "nb.ipynb")
    steps = [*RUNNING_STEPS, ("tool_result", "running"), ("model", "done")]
    base = add_run(store, nb, "forky", steps, trap, created=1000.0)
    # Forked after checkpoint 3: one model call inherited, then one of its own.
    fork = add_run(
        store, nb, "forky", [("fork", "running"), ("model", "done")], trap, parent=(str(base), 3)
    )
    code, run = api.get("runs", str(fork))
    assert (code, run["steps"], run["label"]) == (200, 2, "done after 2 steps")
    code, agent = api.get("agents", "forky", notebook="nb.ipynb")
    assert [(r["steps"], r["label"]) for r in agent["all_runs"]] == [
        (2, "done after 2 steps"),
        (2, "done after 2 steps"),
    ]

    monkeypatch.setenv("JUPYTER_AGENT_STALL_AFTER", "60")
    quiet = add_run(
        store, nb, "quiet", RUNNING_STEPS, trap, created=time.time() - 1020, keep_open=True
    )
    try:
        code, body = api.get("agents", notebook="nb.ipynb")
    finally:
        assert isinstance(quiet, RunWriter)
        quiet.close(merge=False)
    (agent,) = [a for a in body["agents"] if a["name"] == "quiet"]
    assert agent["status"] == "stalled"
    assert agent["label"] == "stalled: no checkpoint for 16 min"


def test_a_what_if_fork_is_tagged_in_the_lists(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes
) -> None:
    nb = notebook(jp_root_dir, "nb.ipynb")
    steps = [*RUNNING_STEPS, ("tool_result", "running"), ("model", "done")]
    base = str(add_run(store, nb, "whatif", steps, trap, created=1000.0))
    what_if = {"edited": "output", "from": [base, 3]}
    fork = add_run(
        store,
        nb,
        "whatif",
        [("fork", "running"), ("model", "done")],
        trap,
        parent=(base, 2),
        run_info={"what_if": what_if},
    )
    tagged = {**what_if, "text": "what if: edited tool output at checkpoint 3"}
    code, run = api.get("runs", str(fork))
    assert (code, run["what_if"]) == (200, tagged)
    code, body = api.get("agents", notebook="nb.ipynb")
    assert [a["what_if"] for a in body["agents"]] == [tagged]
    code, agent = api.get("agents", "whatif", notebook="nb.ipynb")
    assert [r["what_if"] for r in agent["all_runs"]] == [None, tagged]


def test_reading_never_creates_the_store(api: Api, store_path: Path) -> None:
    code, body = api.get("status")
    assert (code, body["store"], body["exists"]) == (200, str(store_path), False)
    assert api.get("agents", notebook="nb.ipynb") == (
        200,
        {"notebook": "nb.ipynb", "agents": [], "running": False},
    )
    assert api.get("agents", "cell-x", notebook="nb.ipynb")[0] == 404
    assert api.get("runs", "0123456789abcdef")[0] == 404
    assert api.delete("agents", "cell-x", notebook="nb.ipynb")[0] == 404
    assert not store_path.parent.exists()


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "params"),
    [
        (["agents"], {}),
        (["agents"], {"notebook": ""}),
        (["agents"], {"notebook": "/etc/passwd"}),
        (["agents"], {"notebook": "../outside.ipynb"}),
        (["agents"], {"notebook": "a/../../outside.ipynb"}),
        (["agents"], {"notebook": "a\\b.ipynb"}),
        (["agents"], {"notebook": "nb.ipynb", "cell_id": "bad id!"}),
        (["agents", "bad name!"], {"notebook": "nb.ipynb"}),
        (["agents", "-starts-with-dash"], {"notebook": "nb.ipynb"}),
        (["agents", "x" * 65], {"notebook": "nb.ipynb"}),
        (["agents", "ok", "runs"], {}),
        (["agents", "ok", "runs"], {"notebook": "../x.ipynb"}),
        (["runs", "not-a-run-id"], {}),
        (["runs", "ABCDEF0123456789"], {}),
        (["runs", "0123"], {}),
    ],
)
def test_malformed_parameters_are_400(api: Api, parts: list[str], params: dict) -> None:
    code, body = api.get(*parts, **params)
    assert code == 400, body
    assert body["message"]


def test_malformed_delete_parameters_are_400(api: Api) -> None:
    assert api.delete("agents", "ok")[0] == 400
    assert api.delete("agents", "bad name!", notebook="nb.ipynb")[0] == 400
    assert api.delete("agents", "ok", notebook="nb.ipynb", keep="all")[0] == 400


def test_unknown_agents_and_runs_are_404(api: Api) -> None:
    for code, body in [
        api.get("agents", "nobody", notebook="nb.ipynb"),
        api.get("agents", "cell-nobody", "runs", notebook="nb.ipynb"),
        api.get("runs", "0123456789abcdef"),
        api.get("runs", "0123456789abcdef", "checkpoints"),
        api.delete("agents", "nobody", notebook="nb.ipynb"),
    ]:
        assert code == 404, body
        assert "No " in body["message"]


def test_a_busy_store_answers_503_in_bounded_time(api: Api, store: Store, store_path: Path) -> None:
    store.flush()  # create the file
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(store_path)!r})\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        code, body = api.get("agents", notebook="nb.ipynb")
        elapsed = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert code == 503, body
    assert "busy" in body["message"]
    assert elapsed < 3.0
    assert api.get("agents", notebook="nb.ipynb")[0] == 200  # and it recovers


# -- deleting -------------------------------------------------------------------------


def test_delete_an_agent_and_prune_old_runs(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes
) -> None:
    nb = notebook(jp_root_dir, "nb.ipynb")
    old = add_run(store, nb, "keepme", RUNNING_STEPS, trap, created=1000.0)
    base = add_run(store, nb, "keepme", RUNNING_STEPS, trap, created=2000.0)
    latest = add_run(store, nb, "keepme", RUNNING_STEPS, trap, parent=(str(base), 2))
    add_run(store, nb, "gone", RUNNING_STEPS, trap)

    code, body = api.delete("agents", "keepme", notebook="nb.ipynb", keep="latest")
    assert (code, body["deleted"]) == (200, [old])
    assert [r.run_id for r in store.runs(notebook=nb, agent="keepme")] == [base, latest]

    code, body = api.delete("agents", "gone", notebook="nb.ipynb")
    assert code == 200 and len(body["deleted"]) == 1
    assert store.runs(notebook=nb, agent="gone") == []
    assert api.get("agents", "gone", notebook="nb.ipynb")[0] == 404


def test_deleting_a_running_agent_is_409(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes
) -> None:
    nb = notebook(jp_root_dir, "nb.ipynb")
    writer = add_run(store, nb, "busy", RUNNING_STEPS, trap, keep_open=True)
    assert isinstance(writer, RunWriter)
    try:
        code, body = api.delete("agents", "busy", notebook="nb.ipynb")
        assert code == 409, body
        assert "running" in body["message"]
    finally:
        writer.close()
    assert api.delete("agents", "busy", notebook="nb.ipynb")[0] == 200


# -- renames --------------------------------------------------------------------------


def rename(api: Api, old: str, new: str) -> None:
    code, _ = api.call("PATCH", "api/contents", old, body={"path": new})
    assert code == 200


def test_agents_follow_a_renamed_notebook_and_folder(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes
) -> None:
    nb = notebook(jp_root_dir, "draft.ipynb")
    add_run(store, nb, "cell-a", RUNNING_STEPS, trap, cell_id="a")
    # A run still being written (not folded into DuckDB yet) when the rename happens.
    live = add_run(store, nb, "cell-b", RUNNING_STEPS, trap, cell_id="b", keep_open=True)
    before = time.time()
    try:
        rename(api, "draft.ipynb", "final.ipynb")
        # A run that began before the rename but reaches DuckDB only after it.
        add_run(store, nb, "cell-c", RUNNING_STEPS, trap, cell_id="c", created=before - 1)
        code, body = api.get("agents", notebook="final.ipynb")
        assert code == 200
        assert {a["name"] for a in body["agents"]} == {"cell-a", "cell-b", "cell-c"}
        assert api.get("agents", notebook="draft.ipynb")[1]["agents"] == []
    finally:
        assert isinstance(live, RunWriter)
        live.close()

    final = str(jp_root_dir / "final.ipynb")
    # A kernel started before the rename still knows the old path: it is resolved.
    assert store.resolve_notebook(nb, since=before - 60) == final
    # One started after it, at the old path, is a different notebook.
    assert store.resolve_notebook(nb, since=time.time()) == nb

    (jp_root_dir / "project").mkdir()
    rename(api, "final.ipynb", "project/final.ipynb")
    rename(api, "project", "archive")
    code, body = api.get("agents", notebook="archive/final.ipynb")
    assert {a["name"] for a in body["agents"]} == {"cell-a", "cell-b", "cell-c"}
    assert store.resolve_notebook(nb, since=before - 60) == str(
        jp_root_dir / "archive" / "final.ipynb"
    )


# -- with real kernels ----------------------------------------------------------------


def tool(code: str) -> dict:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def test_api_answers_fast_while_a_kernel_runs_an_agent(
    api: Api,
    store: Store,
    jp_root_dir: Path,
    kernel_factory: Callable[..., Kernel],
    scripted: ScriptedServer,
) -> None:
    nb = notebook(jp_root_dir, "live.ipynb")
    scripted.chunk_delay = 0.15  # each reply streams for about a second
    scripted.set_script([*(tool(f"x{i} = {i}") for i in range(4)), {"content": "All set."}])
    kernel = kernel_factory(JUPYTER_AGENT_NOTEBOOK=nb)
    run = kernel.start("%%agent --model scripted\nSet x0..x3.", cell_id="live-cell")

    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        code, body = api.get("agents", notebook="live.ipynb")
        assert code == 200, body
        if body["agents"]:
            agent = body["agents"][0]
            seen.append((agent["status"], agent["step"]))
            if agent["status"] == "done":
                break
        time.sleep(0.05)
    result = kernel.wait(run, timeout=60)
    assert result.status == "ok", result.text

    assert max(api.durations) < 1.0, sorted(api.durations)[-5:]
    statuses = [s for s, _ in seen]
    assert "running" in statuses and statuses[-1] == "done"
    assert "interrupted" not in statuses
    steps = [s for _, s in seen]
    assert steps == sorted(steps) and len(set(steps)) > 3  # progress was visible

    runs = store.runs(notebook=nb)
    assert [r.agent for r in runs] == ["cell-live-cell"]
    checkpoints = store.checkpoints(runs[0].run_id)
    assert [c.step for c in checkpoints] == list(range(len(checkpoints)))
    assert checkpoints[-1].status == "done"
    # start, then per tool: model, tool_call, tool_result; then the final model reply
    assert len(checkpoints) == 1 + 4 * 3 + 1
    code, body = api.get("runs", runs[0].run_id, "checkpoints")
    assert [c["step"] for c in body["checkpoints"]] == [c.step for c in checkpoints]


def test_the_server_imports_the_vocabulary_and_the_store_interface_only() -> None:
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import jupyter_agent.server\n"
        "print(time.perf_counter() - t)\n"
        "ours = {m for m in sys.modules if m.startswith('jupyter_agent')}\n"
        "heavy = {'dill', 'openai', 'IPython', 'jupyter_agent.loop.execution', 'jupyter_agent.core.state',\n"
        "         'jupyter_agent.testing', 'jupyter_agent.model.chat'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "allowed = {'jupyter_agent', 'jupyter_agent.errors', 'jupyter_agent.vocab',\n"
        "           'jupyter_agent.store', 'jupyter_agent.store.api', 'jupyter_agent.store.open',\n"
        "           'jupyter_agent.server',\n"
        "           'jupyter_agent.core', 'jupyter_agent.core.redaction', 'jupyter_agent.core.history',\n"
        "           'jupyter_agent.views', 'jupyter_agent.views.listing',\n"
        "           'jupyter_agent.server.handlers'}\n"
        "assert ours <= allowed, ours - allowed\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_run_shows_its_messages_from_json_payloads_redacted(
    api: Api, store: Store, jp_root_dir: Path, trap: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_agent.core.state import Delta, encode_delta

    nb = notebook(jp_root_dir, "nb.ipynb")
    said = [{"role": "assistant", "content": "the answer is 42"}]
    run_id = add_run(store, nb, "a", [("start", "done")], encode_delta(Delta(messages=said)))
    code, run = api.get("runs", str(run_id), messages="1")
    assert code == 200 and run["checkpoints"][0]["messages"] == said
    code, plain = api.get("runs", str(run_id))
    assert code == 200 and "messages" not in plain["checkpoints"][0]
    assert api.get("runs", str(run_id), messages="yes")[0] == 400
    # A pickle planted as a payload is not a message, and is never unpickled.
    trapped = add_run(store, nb, "b", [("start", "done")], trap)
    code, run = api.get("runs", str(trapped), messages="1")
    assert code == 200 and run["checkpoints"][0]["messages"] == []


def test_an_agents_python_calls_as_cells_with_their_outputs(
    api: Api, store: Store, jp_root_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_agent.core.state import Delta, encode_delta

    monkeypatch.setenv("SOME_API_KEY", "sk-cells-secret-1234567890")
    nb = notebook(jp_root_dir, "cells.ipynb")
    call = {"id": "c1", "type": "function", "function": {"name": "python", "arguments": ""}}
    call["function"]["arguments"] = json.dumps({"code": "key = 'sk-cells-secret-1234567890'\ndf"})
    html = {
        "output_type": "execute_result",
        "data": {"text/html": "<table></table>", "text/plain": "df"},
    }
    delta = Delta(
        messages=[
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "hello\ndf\n"},
        ],
        tool_call_id="c1",
        outputs=[{**html, "metadata": {}}],
    )
    add_run(store, nb, "a", [("tool_result", "done")], encode_delta(delta), cell_id="cellA")
    code, body = api.get("agents", "a", "cells", notebook="cells.ipynb")
    assert code == 200, body
    assert body["cell_id"] == "cellA" and len(body["cells"]) == 1
    cell = body["cells"][0]
    assert cell["cell_type"] == "code" and cell["source"].endswith("\ndf")
    assert "sk-cells-secret" not in json.dumps(body)  # the server's own secrets are redacted
    assert cell["outputs"][0] == {"output_type": "stream", "name": "stdout", "text": "hello\n"}
    assert cell["outputs"][1]["data"]["text/html"] == "<table></table>"
    assert api.get("agents", "nobody", "cells", notebook="cells.ipynb")[0] == 404


def test_jobs_of_the_worker_pool_are_listed(api: Api, store_path: Path, jp_root_dir: Path) -> None:
    pytest.importorskip("dbos", reason="pip install 'jupyter-agent-cells[workers]'")
    from jupyter_agent.cli import main

    assert api.get("jobs") == (200, {"jobs": []})  # no queue: none is made by reading
    assert not store_path.with_suffix(".jobs.sqlite").exists()
    path = Path(notebook(jp_root_dir, "work/job.ipynb"))
    nb = nbformat.read(path, as_version=4)
    nb.cells = [nbformat.v4.new_code_cell("%%agent --model scripted --name nightly\nGo.")]
    nbformat.write(nb, path)
    assert main(["--store", str(store_path), "submit", str(path), "--agent", "nightly"]) == 0
    code, body = api.get("jobs")
    assert code == 200, body
    assert [(j["notebook"], j["agent"], j["status"]) for j in body["jobs"]] == [
        ("work/job.ipynb", "nightly", "queued")
    ]
    assert api.get("jobs", notebook="other.ipynb") == (200, {"jobs": []})
