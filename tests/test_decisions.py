"""Answers to a waiting call with no kernel running: REST and ``jupyter agent approve|reject``.

A headless ``jupyter agent resume`` pauses the agent at its approval and its
kernel ends; the answer is given over REST or the command line; the next
``resume`` applies it exactly once, and an answer for a call that is no longer
pending is refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ...)

from jupyter_agent.store.duckdb.store import DuckDBStore
from jupyter_agent.testing import ScriptedServer

from .conftest import BOTH_BACKENDS
from .test_cli import SETUP, cli, notebook, outputs_text
from .test_durable_kernel import tool
from .test_multi_agent import approval_chain, requested
from .test_server_api import API, Api, jp_server_config  # noqa: F401  (a fixture)

AGENT = "%%agent --model scripted --approve --name gated\nWrite the line."


@pytest.fixture
def rest(jp_serverapp: Any, jp_fetch: Any, jp_asyncio_loop: Any) -> Api:
    """The REST API of a Jupyter server on the tests' store, with the extension loaded."""
    return Api(jp_fetch, jp_asyncio_loop)


def paused(scripted: ScriptedServer, env: dict[str, str], root: Path) -> tuple[Path, Path]:
    """A notebook whose agent waits for approval of a call that appends to a log; no kernel runs."""
    log = root / "effects.log"
    nb_path = notebook(root / "nb.ipynb", [SETUP, AGENT])
    scripted.set_script([tool(f"open({str(log)!r}, 'a').write('ran\\n')"), {"content": "Done."}])
    first = cli("resume", str(nb_path), env=env)
    assert first.returncode == 0, first.stderr
    assert "waiting for your approval" in outputs_text(nb_path)[1]
    assert not log.exists() and scripted.turns_requested() == [0]
    return nb_path, log


def decide(rest: Api, body: dict[str, Any]) -> tuple[int, Any]:
    """POST an answer to the call agent ``gated`` of nb.ipynb waits on."""
    return rest.call("POST", API, "agents", "gated", "decision", notebook="nb.ipynb", body=body)


def listed(env: dict[str, str]) -> dict[str, Any]:
    (agent,) = json.loads(cli("list", "--json", env=env).stdout)["agents"]
    return agent


def test_an_approval_posted_over_rest_is_applied_by_the_next_resume_once(
    rest: Api, scripted: ScriptedServer, agent_env, jp_root_dir: Path
):
    nb_path, log = paused(scripted, agent_env, jp_root_dir)
    assert listed(agent_env)["status"] == "awaiting_approval"
    code, agent = rest.get("agents", "gated", notebook="nb.ipynb")
    assert code == 200, agent
    run = rest.get("runs", agent["run_id"])[1]
    call_id = run["checkpoints"][-1]["info"]["call_id"]

    wrong = decide(rest, {"action": "approve", "call_id": "call_elsewhere"})
    assert wrong[0] == 409 and "no longer waiting" in wrong[1]["message"], wrong
    bad = decide(rest, {"action": "ok"})
    assert bad[0] == 400 and "approve, edit or reject" in bad[1]["message"], bad

    code, stored = decide(rest, {"action": "approve", "call_id": call_id})
    assert code == 200, stored
    assert stored["call_id"] == call_id and stored["action"] == "approve"
    assert not log.exists()  # stored, not run: no kernel runs the agent
    row = listed(agent_env)
    assert "approved" in row["label"] and "next runs" in row["label"], row

    # Answered once: a second answer for the same call is refused, with the reason.
    again = decide(rest, {"action": "reject", "call_id": call_id})
    assert again[0] == 409 and "not waiting for an approval" in again[1]["message"], again

    done = cli("resume", str(nb_path), env=agent_env)
    assert done.returncode == 0, done.stderr
    assert log.read_text() == "ran\n"
    assert scripted.turns_requested() == [0, 1]  # no model step asked twice
    assert "waiting for your approval" not in outputs_text(nb_path)[1]
    assert listed(agent_env)["status"] == "done"

    # Never applied twice: the call is answered; an answer now is stale.
    stale = decide(rest, {"action": "approve", "call_id": call_id})
    assert stale[0] == 409 and "it is done" in stale[1]["message"], stale


@BOTH_BACKENDS
def test_the_command_line_edits_or_rejects_a_waiting_call(
    scripted: ScriptedServer, agent_env, tmp_path: Path
):
    nb_path, log = paused(scripted, agent_env, tmp_path)
    usage = cli("approve", str(nb_path), "gated", "--edit", "  ", env=agent_env)
    assert usage.returncode == 1 and "new arguments" in usage.stderr, usage.stderr
    edited = cli(
        "approve",
        str(nb_path),
        "gated",
        "--edit",
        f"open({str(log)!r}, 'a').write('edited\\n')",
        env=agent_env,
    )
    assert edited.returncode == 0, edited.stderr
    assert "Edited the call" in edited.stdout
    refused = cli("reject", str(nb_path), "gated", "--note", "no", env=agent_env)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("jupyter agent: ") and "not waiting" in refused.stderr
    assert cli("resume", str(nb_path), env=agent_env).returncode == 0
    assert log.read_text() == "edited\n" and scripted.turns_requested() == [0, 1]
    assert nbformat.read(nb_path, as_version=4).cells[1].outputs  # the run was written back


def test_an_answer_for_a_parent_goes_to_the_delegated_agent_it_waits_for(
    kernel_factory, scripted: ScriptedServer, agent_env, store_path: Path, tmp_path: Path
):
    log = tmp_path / "effects.log"
    scripted.set_script(approval_chain(log, 1))
    kernel = kernel_factory()
    cell = "%%agent -m scripted --name lead --approve python\nSplit the work."
    assert "waiting for approval" in kernel.run(cell, cell_id="lead").text
    (lead,) = DuckDBStore(store_path).runs(agent="lead")
    answered = cli("approve", lead.notebook, "lead", "--json", env=agent_env)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["name"] == "counter"  # the call is the child's
    resumed = kernel.run(cell, cell_id="lead")
    assert "lead got: counter counted 42 rows" in resumed.text, resumed.text
    asked = requested(scripted)
    assert len(asked) == len(set(asked)) == 4, asked
    assert log.read_text().splitlines() == ["counter"]
