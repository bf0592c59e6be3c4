"""The agent loop depends on models only through the ``ModelClient`` protocol.

Both shipped clients satisfy it structurally (checked here by mypy through
typed assignments, and at run time through their signatures), and a third
client written only for this test drives a real execution end to end: the
loop needs nothing of a model beyond the protocol.
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jupyter_agent.config import Settings
from jupyter_agent.core.state import DONE, INTERRUPTED, RunState
from jupyter_agent.errors import Cancelled
from jupyter_agent.kernel.identity import AgentIdentity
from jupyter_agent.loop.checkpoints import Collaborators
from jupyter_agent.loop.execution import Execution
from jupyter_agent.loop.runs import load_state, new_run
from jupyter_agent.model.base import Endpoint, Hooks, ModelClient, ModelReply
from jupyter_agent.model.chat import ChatCompletionsClient, ChatHooks
from jupyter_agent.model.offline import OfflineClient
from jupyter_agent.store.api import CheckpointRow, RunRow, Store
from jupyter_agent.store.open import open_store

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from jupyter_agent.core.state import Delta


class CannedClient:
    """A model that answers with the replies it was given, in order, and notes what it was asked."""

    def __init__(self, replies: list[ModelReply]) -> None:
        self.endpoint = Endpoint("canned", None, "none", "canned replies")
        self.cancel = threading.Event()
        self.replies = list(replies)
        self.asked: list[tuple[list[dict], list[str]]] = []
        self.closed = 0

    def complete(
        self, messages: list[dict], tools: list[dict], **hooks: Unpack[Hooks]
    ) -> ModelReply:
        if self.cancel.is_set():
            raise Cancelled()
        self.asked.append(([dict(m) for m in messages], [t["function"]["name"] for t in tools]))
        on_sent = hooks.get("on_sent")
        if on_sent is not None:
            on_sent()
        reply = self.replies.pop(0)
        on_text = hooks.get("on_text")
        if on_text is not None:
            on_text(reply.content)
        return reply

    def close(self) -> None:
        self.closed += 1


class Recorder:
    """The events of a run, as the text renderer or the timeline would receive them."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.notes: list[str] = []
        self.kinds: list[str] = []

    def text(self, chunk: str) -> None:
        self.texts.append(chunk)

    def info(self, message: str) -> None:
        self.notes.append(message)

    def notice(self, message: str) -> None:
        self.notes.append(message)

    def checkpoint(self, run: RunRow, row: CheckpointRow, delta: Delta) -> None:
        self.kinds.append(row.kind)


class Shell:
    """The part of an IPython shell the loop and the python tool use: its namespace."""

    def __init__(self) -> None:
        self.user_ns: dict[str, Any] = {}


def call(code: str, call_id: str) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "python", "arguments": f'{{"code": "{code}"}}'},
    }


@pytest.fixture
def store(store_path: Path) -> Store:
    return open_store(store_path)


def test_the_shipped_clients_satisfy_the_protocol() -> None:
    endpoint = Endpoint("scripted", "http://127.0.0.1:9/v1", "sk-test", "test")
    # Checked by mypy: each assignment compiles only if the class matches the protocol.
    clients: list[ModelClient] = [
        ChatCompletionsClient(endpoint),
        OfflineClient(endpoint),
        CannedClient([]),
    ]
    wanted = {name: inspect.signature(getattr(ModelClient, name)) for name in ("complete", "close")}
    for client in clients:
        assert client.endpoint is endpoint or client.endpoint.model == "canned"
        assert isinstance(client.cancel, threading.Event)
        for name, protocol in wanted.items():
            actual = inspect.signature(getattr(type(client), name))
            assert [(p.name, p.kind) for p in actual.parameters.values()] == [
                (p.name, p.kind) for p in protocol.parameters.values()
            ], (type(client).__name__, name)
    # The Chat Completions client hears every hook of the protocol, and one more of its own.
    assert set(Hooks.__optional_keys__) < set(ChatHooks.__optional_keys__)


def test_a_reply_never_carries_a_count_that_is_not_one() -> None:
    """The loop adds up and budgets with usage: what an endpoint sends is checked first."""
    usage = {
        "prompt_tokens": "12",
        "completion_tokens": -3,
        "total_tokens": float("nan"),
        "cached_tokens": None,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    reply = ModelReply("hi", [], usage)
    assert reply.usage == {"completion_tokens_details": {"reasoning_tokens": 2}}
    assert reply.tokens == 0
    assert ModelReply("hi", [], {"prompt_tokens": 5, "total_tokens": 7}).tokens == 7


def test_the_loop_runs_a_cell_with_any_client_of_the_protocol(store: Store, tmp_path: Path) -> None:
    client = CannedClient(
        [
            ModelReply("Computing.", [call("x = 41 + 1", "c1")], {"total_tokens": 30}),
            ModelReply("x is 42.", [], {"prompt_tokens": 40, "total_tokens": 45}),
        ]
    )
    identity = AgentIdentity(str(tmp_path / "n.ipynb"), "seam", None, "test")
    run = new_run(identity, "Set x to 42.", "canned")
    shell, events = Shell(), Recorder()
    collaborators = Collaborators(store, shell, events, cancel=client.cancel)
    execution = Execution(run, RunState(), client, collaborators, Settings())

    state = execution.execute(first=True)

    assert state.status == DONE and state.final_answer() == "x is 42."
    assert shell.user_ns["x"] == 42
    assert state.tokens == 75
    # Both replies were asked for with the built-in tools, the second after the tool's result.
    assert [tools for _, tools in client.asked] == [["python", "update_plan"]] * 2
    assert client.asked[1][0][-1]["role"] == "tool"
    assert client.closed == 1
    assert "".join(events.texts) == "Computing.x is 42."
    assert events.kinds[0] == "start" and events.kinds[-1] == "model"
    # What was checkpointed folds back into the same state: the run is durable.
    again = load_state(store, run)
    assert again.status == DONE and again.final_answer() == "x is 42."
    assert again.vars.keys() == {"x"}


def test_a_cancelled_client_pauses_the_run(store: Store, tmp_path: Path) -> None:
    client = CannedClient([ModelReply("never", [])])
    client.cancel.set()
    identity = AgentIdentity(str(tmp_path / "n.ipynb"), "paused", None, "test")
    run = new_run(identity, "Anything.", "canned")
    collaborators = Collaborators(store, Shell(), Recorder(), cancel=client.cancel)
    execution = Execution(run, RunState(), client, collaborators, Settings())

    state = execution.execute(first=True)

    assert state.status == INTERRUPTED and client.asked == [] and client.replies


def test_a_stop_asked_from_outside_pauses_the_run_between_two_steps(
    store: Store, tmp_path: Path
) -> None:
    """``stop_asked`` (a headless kernel's stop file) pauses as a set cancel does.

    Asked before every step: the call under way when it says so ends, its result is
    kept, and the model is not asked again; a resume without it goes on from there.
    """
    client = CannedClient(
        [ModelReply("Computing.", [call("x = 41 + 1", "c1")]), ModelReply("x is 42.", [])]
    )
    identity = AgentIdentity(str(tmp_path / "n.ipynb"), "stopped", None, "test")
    run = new_run(identity, "Set x to 42.", "canned")
    shell = Shell()
    stop = Collaborators(store, shell, Recorder(), stop_asked=lambda: "x" in shell.user_ns)

    state = Execution(run, RunState(), client, stop, Settings()).execute(first=True)

    assert state.status == INTERRUPTED and shell.user_ns["x"] == 42
    assert len(client.asked) == 1  # not asked after the call's result
    assert not client.cancel.is_set()  # nothing of the client's was needed
    collaborators = Collaborators(store, shell, Recorder())
    again = Execution(run, load_state(store, run), client, collaborators, Settings())
    state = again.execute(first=False)
    assert state.status == DONE and state.final_answer() == "x is 42."
    assert len(client.asked) == 2  # the call did not run again: its result was kept
    assert [m["role"] for m in client.asked[1][0]] == ["system", "user", "assistant", "tool"]
