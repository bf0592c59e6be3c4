"""Webhook notifications from real kernels to a receiver on loopback.

Exactly one event per pause, also when the kernel restarts and the waiting cell
is run again; a receiver that fails or hangs never holds the agent up, and is
given up on with a notice.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jupyter_agent.config import Settings
from jupyter_agent.errors import ConfigError
from jupyter_agent.kernel.identity import AgentIdentity
from jupyter_agent.kernel.runner import CellRequest
from jupyter_agent.kernel.runtime import AgentRuntime
from jupyter_agent.loop.notify import notebook_link, webhook_urls, wire_body
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.views.render import TextEvents

from .conftest import API_KEY, eventually
from .test_cli import SETUP, cli, notebook
from .test_durable_kernel import tool
from .test_kernel_timeline import state, widget_id

AGENT = "%%agent --model scripted --approve --name gated\nWrite the line."


class Receiver:
    """A webhook on loopback: records every POST; answers ``code``, or hangs with ``hang``."""

    def __init__(self, code: int = 200, hang: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                owner.events.append(json.loads(self.rfile.read(size)))
                if hang:
                    owner.release.wait(30)
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def start(kernel_factory: Any, nb: Path, urls: list[str]) -> Any:
    kernel = kernel_factory(JUPYTER_AGENT_NOTIFY=" ".join(urls))
    assert kernel.run(f"__session__ = {str(nb)!r}").status == "ok"
    return kernel


def test_one_event_per_pause_across_a_kernel_restart(
    kernel_factory, scripted: ScriptedServer, receivers, tmp_path: Path
):
    hook = Receiver()
    receivers.append(hook)
    nb = tmp_path / "nb.ipynb"
    log = tmp_path / "effects.log"
    code = f"open({str(log)!r}, 'a').write('ran\\n')  # key {API_KEY}"
    scripted.set_script([tool(code), {"content": "Done."}])
    kernel = start(kernel_factory, nb, [hook.url])
    waiting = kernel.run(AGENT, cell_id="c1")
    assert "waiting for your approval" in waiting.text, waiting.text
    assert eventually(lambda: hook.events), "no event for the approval"
    (event,) = hook.events
    assert event["event"] == "approval" and event["agent"] == "gated"
    assert event["notebook"] == str(nb) and event["status"] == "awaiting_approval"
    assert event["status_text"] == "waiting for approval"
    assert event["call"]["tool"] == "python" and str(log) in event["call"]["code"]
    assert "gated" in event["text"] and "nb.ipynb" in event["text"]
    assert API_KEY not in json.dumps(event) and "key [REDACTED]" in event["call"]["code"]

    # Restarted, and the waiting cell run again: the same pause, told once.
    kernel.restart()
    assert (
        kernel.run("%load_ext jupyter_agent\n%config AgentMagics.retry_backoff = 0.05").status
        == "ok"
    )
    assert kernel.run(f"__session__ = {str(nb)!r}").status == "ok"
    again = kernel.run(AGENT, cell_id="c1")
    assert "waiting for your approval" in again.text, again.text
    time.sleep(1.5)
    assert len(hook.events) == 1, hook.events

    approved = kernel.run("%agent approve gated")
    assert approved.status == "ok", approved.text
    assert eventually(lambda: len(hook.events) == 2), hook.events
    done = hook.events[1]
    assert done["event"] == "done" and done["status_text"] == "done after 2 steps", done
    assert "call" not in done and log.read_text() == "ran\n"

    # A finished cell run again restores: no new pause, no event.
    assert "restored" in kernel.run(AGENT, cell_id="c1").text
    time.sleep(1)
    assert len(hook.events) == 2, hook.events


def test_a_failing_or_hanging_receiver_never_holds_the_agent_up(
    kernel_factory, scripted: ScriptedServer, receivers, tmp_path: Path
):
    failing, hanging, good = Receiver(500), Receiver(hang=True), Receiver()
    receivers.extend([failing, hanging, good])
    scripted.set_script([{"content": "Nothing to do."}])
    kernel = start(kernel_factory, tmp_path / "nb.ipynb", [failing.url, hanging.url, good.url])
    began = time.monotonic()
    done = kernel.run("%%agent --model scripted --name quick\nSay hi.")
    assert done.status == "ok" and "Nothing to do." in done.text, done.text
    assert time.monotonic() - began < 8  # not held up by the hanging receiver (10 s per try)
    assert eventually(lambda: len(good.events) == 1)
    # Retried with the model client's backoff (retries 4, from 0.05 s), then dropped, said.
    later = kernel.run("import time; time.sleep(3)")
    assert len(failing.events) == 5, failing.events
    assert "dropped after 5 attempts (HTTP 500)" in later.text + done.text, later.text
    assert hanging.events and good.events[0]["event"] == "done"


def test_a_dropped_notification_is_said_in_the_agents_timeline(
    kernel_factory, scripted: ScriptedServer, receivers, tmp_path: Path
):
    """The drop is said where the agent's status is read, not only in whatever cell runs next."""
    failing = Receiver(500)
    receivers.append(failing)
    scripted.set_script([{"content": "Nothing to do."}])
    kernel = start(kernel_factory, tmp_path / "nb.ipynb", [failing.url])
    done = kernel.run("%%agent --model scripted --name quick\nSay hi.", cell_id="cell-quick")
    assert done.status == "ok", done.text
    model_id = widget_id(done)
    assert eventually(lambda: len(failing.events) == 5, timeout=10)
    assert eventually(lambda: state(kernel, model_id)["notice"].get("text"), timeout=5)
    notice = state(kernel, model_id)["notice"]
    assert notice["level"] == "warning", notice
    assert notice["text"] == (
        "the done notification of agent quick to 127.0.0.1 was dropped after 5 attempts (HTTP 500)"
    )


def test_webhook_settings_and_bodies():
    slack = "https://hooks.slack.com/services/T0/B0/x"
    assert webhook_urls(f"{slack}, http://h/a http://h/a") == (slack, "http://h/a")
    with pytest.raises(ConfigError, match="not an http"):
        webhook_urls(["ftp://h/a"])
    event = {"event": "done", "text": "Agent a in nb.ipynb: done", "agent": "a"}
    assert json.loads(wire_body(slack, event)) == {"text": event["text"]}
    assert json.loads(wire_body("http://h/a", event)) == event
    assert (
        notebook_link("http://lab:8888/", "/home/me/work/my nb.ipynb", "work/my nb.ipynb")
        == "http://lab:8888/lab/tree/work/my%20nb.ipynb"
    )
    assert notebook_link("", "/w/nb.ipynb", "nb.ipynb") is None
    assert notebook_link("http://lab", "/w/nb.ipynb", "other.ipynb") is None


def test_a_headless_resume_tells_before_its_kernel_exits(
    scripted: ScriptedServer, agent_env, receivers, tmp_path: Path
):
    hook = Receiver()
    receivers.append(hook)
    env = {**agent_env, "JUPYTER_AGENT_NOTIFY": hook.url}
    nb = notebook(tmp_path / "nb.ipynb", [SETUP, AGENT])
    scripted.set_script([tool("x = 1"), {"content": "Done."}])
    assert cli("resume", str(nb), env=env).returncode == 0
    assert [e["event"] for e in hook.events] == ["approval"]
    assert cli("approve", str(nb), "gated", env=env).returncode == 0
    assert cli("resume", str(nb), env=env).returncode == 0
    assert [e["event"] for e in hook.events] == ["approval", "done"]


def test_a_runtime_keeps_the_events_on_their_way_and_waits_for_them(receivers, tmp_path: Path):
    """The notifier is the kernel's runtime's, not the module's: two runtimes in one
    process (tests, embedders) neither share nor wait for each other's events."""
    hook = Receiver()
    receivers.append(hook)
    store = str(tmp_path / "store" / "agents.duckdb")
    runtime, other = (
        AgentRuntime(shell=SimpleNamespace(user_ns={}), store_path=store) for _ in range(2)
    )
    assert runtime.notifier is not other.notifier
    identity = AgentIdentity(str(tmp_path / "nb.ipynb"), "quick", None, "test")
    request = CellRequest(identity, "Say hi.", model="offline")
    settings = Settings(notify=(hook.url,))
    outcome = runtime.run(request, settings, TextEvents(io.StringIO()))
    assert outcome.state.status == "done", outcome
    runtime.notifier.flush()
    assert [e["event"] for e in hook.events] == ["done"], hook.events
