"""PostgreSQL only: the server extension's REST API on a PostgreSQL store.

The same Jupyter Server as tests/test_server_api.py, with ``c.AgentServer.store_path``
set to the database's URL: lists, details, checkpoints and deletes answer from
PostgreSQL, and no payload is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

import pytest  # noqa: E402
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)
from traitlets.config import Config

from jupyter_agent.store.postgres.store import PostgresStore

from .. import test_server_api as server_api
from ..test_server_api import RUNNING_STEPS, Api, add_run, notebook

# The REST API tests' fixtures: the client, and the payload that proves a deserialization.
api = server_api.api
trap = server_api.trap
never_unpickled = server_api.never_unpickled


@pytest.fixture
def jp_server_config(pg_url: str) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_agent": True}},
            "AgentServer": {"store_path": pg_url, "busy_timeout": 1.0},
        }
    )


def test_the_rest_api_answers_from_postgres(
    api: Api, pg_url: str, jp_root_dir: Path, trap: bytes
) -> None:
    store = PostgresStore(pg_url)
    code, status = api.get("status")
    assert code == 200 and status["store"] == store.location and status["exists"] is False
    nb = notebook(jp_root_dir, "work/nb.ipynb")
    steps = [*RUNNING_STEPS, ("tool_result", "running"), ("model", "done")]
    base = add_run(store, nb, "forky", steps, trap, created=1000.0)
    fork = add_run(
        store, nb, "forky", [("fork", "running"), ("model", "done")], trap, parent=(str(base), 3)
    )
    live = add_run(store, nb, "busy", RUNNING_STEPS, trap, keep_open=True)
    try:
        code, body = api.get("agents", notebook="work/nb.ipynb")
        assert code == 200 and body["running"] is True
        agents = {a["name"]: a for a in body["agents"]}
        assert agents["busy"]["status"] == "running"
        code, busy = api.delete("agents", "busy", notebook="work/nb.ipynb")
        assert code == 409
    finally:
        live.close()  # type: ignore[union-attr]
    forky = agents["forky"]
    assert (forky["run_id"], forky["runs"], forky["steps"]) == (fork, 2, 2)
    assert forky["label"] == "done after 2 steps"

    code, agent = api.get("agents", "forky", notebook="work/nb.ipynb")
    assert code == 200 and [r["run_id"] for r in agent["all_runs"]] == [base, fork]
    code, run = api.get("runs", str(base), "checkpoints")
    assert code == 200 and run["notebook"] == "work/nb.ipynb"
    assert [c["kind"] for c in run["checkpoints"]] == [k for k, _ in steps]

    code, body = api.delete("agents", "forky", notebook="work/nb.ipynb", keep="latest")
    assert (code, body["deleted"]) == (200, [])  # the latest run needs its parent
    code, body = api.delete("agents", "forky", notebook="work/nb.ipynb")
    assert code == 200 and sorted(body["deleted"]) == sorted([base, fork])
    assert api.get("agents", "forky", notebook="work/nb.ipynb")[0] == 404
    assert store.runs(notebook=nb, agent="forky") == []
    assert api.get("status")[1]["exists"] is True
