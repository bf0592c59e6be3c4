"""Webhook notifications: an agent that stops to wait, or stops for good, says so.

An unattended agent spends most of its life with nobody watching. When an
execution ends waiting for approval, paused at its budget, stuck, after an
error, or done, one JSON event goes to each URL of ``c.AgentMagics.notify``
(``JUPYTER_AGENT_NOTIFY``): the agent, its notebook, the status sentence every
view shows (:func:`jupyter_agent.vocab.status_text`), a link to the notebook on
the Jupyter server when it is known, and for an approval the pending call. A
Slack incoming webhook gets the ``{"text": ...}`` it reads; any other URL the
whole event, which carries that ``text`` too.

A pause is its run's last checkpoint, so an event is keyed by the run and that
checkpoint's sequence number (and the URL): once delivered, a marker file
records it (written and synced before it counts), and a kernel restarted and
re-run on the same pause sends nothing again; one that died before delivering
sends it then. Delivery runs on a daemon thread of its own per URL, retried
with the model client's backoff, and never blocks or fails the agent: an
endpoint that keeps failing or hangs is dropped after its retries, with a
notice. Everything sent is redacted (:mod:`jupyter_agent.core.redaction`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.redaction import redact
from ..errors import ConfigError
from ..store.api import CheckpointRow, RunRow, Store
from ..vocab import Status, printable, status_text

#: The statuses an execution ends at that someone should hear of, and the event's name.
EVENTS = {
    Status.AWAITING_APPROVAL: "approval",
    Status.BUDGET: "budget",
    Status.STUCK: "stuck",
    Status.ERROR: "error",
    Status.DONE: "done",
}
#: Seconds one delivery attempt may take before it counts as failed (a hanging endpoint).
TIMEOUT = 10.0
#: Where a kernel learns the Jupyter server's URL, for links (``c.AgentMagics.server_url``).
ENV_SERVER_URL = "JUPYTER_AGENT_SERVER_URL"
#: The webhook URLs, whitespace- or comma-separated (``c.AgentMagics.notify``).
ENV_NOTIFY = "JUPYTER_AGENT_NOTIFY"


def webhook_urls(value: str | Iterable[str]) -> tuple[str, ...]:
    """The URLs of a setting (one string may hold several), each checked: http(s) only."""
    items = [value] if isinstance(value, str) else list(value)
    urls = [u for item in items for u in str(item).replace(",", " ").split()]
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"AgentMagics.notify: {url!r} is not an http(s) URL.")
    return tuple(dict.fromkeys(urls))


def notebook_link(server_url: str, notebook: str, api_path: str | None) -> str | None:
    """The notebook in JupyterLab: the server's URL and the notebook's path under its root.

    ``api_path``: the path the server gave the kernel (``JPY_SESSION_NAME``), used
    only when it names this notebook; None when either is unknown.
    """
    if not server_url or not api_path or os.path.isabs(api_path):
        return None
    if not notebook.replace(os.sep, "/").endswith("/" + api_path):
        return None
    return f"{server_url.rstrip('/')}/lab/tree/{urllib.parse.quote(api_path.lstrip('/'))}"


def event_body(
    run: RunRow, row: CheckpointRow, steps: int, link: str | None, secrets: list[str]
) -> dict[str, Any]:
    """The generic JSON event of a run stopped at ``row``, redacted."""
    sentence = status_text(row.status, steps, row.info)
    name = EVENTS[Status.of(row.status) or Status.DONE]
    where = os.path.basename(run.notebook)
    text = f"Agent {printable(run.agent)} in {where}: {sentence}"
    body: dict[str, Any] = {
        "event": name,
        "agent": run.agent,
        "notebook": run.notebook,
        "status": row.status,
        "status_text": sentence,
        "run_id": run.run_id,
        "step": row.step,
        "link": link,
        "text": text + (f" <{link}>" if link else ""),
    }
    if name == "approval":
        info = row.info
        body["call"] = {k: info.get(k) for k in ("call_id", "tool", "code", "in_flight")}
        body["text"] += f"\n{info.get('tool', 'python')}: {info.get('code', '')}"
    return redact(body, secrets)


def wire_body(url: str, event: dict[str, Any]) -> bytes:
    """What ``url`` is sent: Slack's incoming webhooks read ``text`` alone."""
    slack = urllib.parse.urlsplit(url).hostname == "hooks.slack.com"
    return json.dumps({"text": event["text"]} if slack else event).encode("utf-8")


@dataclass(frozen=True)
class Delivery:
    """Where one execution's events go, and how hard to try."""

    urls: tuple[str, ...]
    #: Said when an endpoint is given up on (the agent's cell output).
    notice: Callable[[str], None]
    retries: int = 4
    backoff: float = 0.5
    link: str | None = None


class Notifier:
    """Sends a run's pause to each webhook once, on threads, and records each delivery.

    One per kernel (:attr:`jupyter_agent.kernel.runtime.AgentRuntime.notifier`), so a pause
    re-run while its event is on its way is not sent twice.
    A kernel that exits (a headless ``jupyter agent resume`` ends) first gives its
    events on their way a while to arrive (:meth:`flush`).
    """

    def __init__(self) -> None:
        self._sending: set[str] = set()  # keys on their way, in this process
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # a leaf lock: guards _sending and _threads
        atexit.register(self.flush)

    def flush(self, timeout: float = TIMEOUT) -> None:
        """Wait up to ``timeout`` seconds in all for the events on their way."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stopped(
        self, store: Store, run: RunRow, delivery: Delivery, secrets: list[str]
    ) -> list[threading.Thread]:
        """Send the event of the checkpoint ``run`` stopped at, unless sent already; the senders."""
        if not delivery.urls:
            return []
        row = store.latest_checkpoints([run.run_id]).get(run.run_id)
        if row is None or Status.of(row.status) not in EVENTS:
            return []
        if run.info.get("parent_agent") and row.status != Status.AWAITING_APPROVAL:
            return []  # a delegated agent's end is its parent's to tell; its question is its own
        steps = len(store.model_steps([run.run_id]).get(run.run_id, []))
        event = event_body(run, row, steps, delivery.link, secrets)
        markers = markers_for(store)
        threads = []
        for url in delivery.urls:
            key = hashlib.sha256(f"{run.run_id}\0{row.step}\0{url}".encode()).hexdigest()[:32]
            with self._lock:
                if key in self._sending or (markers / key).exists():
                    continue
                self._sending.add(key)
            thread = threading.Thread(
                target=self._deliver,
                args=(delivery, url, event, markers / key),
                name="jupyter-agent-notify",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + threads
        return threads

    def _deliver(self, delivery: Delivery, url: str, event: dict[str, Any], marker: Path) -> None:
        host = urllib.parse.urlsplit(url).hostname or url
        why = ""
        try:
            for attempt in range(delivery.retries + 1):
                if attempt:
                    time.sleep(delivery.backoff * 2 ** (attempt - 1))
                try:
                    request = urllib.request.Request(
                        url,
                        data=wire_body(url, event),
                        headers={"Content-Type": "application/json"},
                        method="POST",
                    )
                    with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
                        reply.read()
                    _record(marker)
                    return
                except urllib.error.HTTPError as exc:
                    why = f"HTTP {exc.code}"
                except (OSError, ValueError) as exc:  # refused, reset, timed out
                    why = type(exc).__name__ if not str(exc) else str(exc)
            delivery.notice(
                f"the {event['event']} notification of agent {printable(event['agent'])} to "
                f"{host} was dropped after {delivery.retries + 1} attempts ({why})"
            )
        finally:
            with self._lock:
                self._sending.discard(marker.name)


def _record(marker: Path) -> None:
    """Mark an event delivered, durably: a marker file, synced with its folder."""
    with contextlib.suppress(OSError):  # unrecorded: at worst sent again on a later run
        marker.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folder = os.open(marker.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def markers_for(store: Store) -> Path:
    """Where deliveries to a store's agents are recorded: beside a store file, else the data dir."""
    if "://" not in store.location:
        return Path(store.location).parent / "notified"
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "jupyter_agent" / "notified"
