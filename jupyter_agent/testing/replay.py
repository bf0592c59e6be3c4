"""The script of the scripted server and its log of requests.

Which entry answers a request, which fault this attempt of its turn gets, and
what was asked: the bookkeeping a test inspects afterwards, kept apart from
the serving of it over HTTP (:mod:`.server`).
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .wire import EXHAUSTED, FAULT_KINDS, Script


@dataclass(eq=False)
class Replay:
    """A script and the requests made of it, in arrival order.

    An entry's ``faults`` are taken in turn by the attempts at its turn; so
    the log of scripted requests is also what counts the attempts.
    """

    script: Script = None
    #: Every request, in arrival order (see :meth:`_begin` and :meth:`_log`).
    requests: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    #: Re-entrant: an attempt is counted and logged under one hold (:meth:`_begin`).
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def set_script(self, script: Script) -> None:
        """Replace the script; the request log (and so attempt counts) is kept."""
        with self._lock:
            self.script = script

    def reset_log(self) -> None:
        """Forget logged requests, which also resets attempt counting."""
        with self._lock:
            self.requests.clear()

    def turns_requested(self) -> list[int]:
        """Turn of each chat request, in arrival order (bad and summary requests excluded)."""
        with self._lock:
            return [r["turn"] for r in self.requests if r["turn"] >= 0]

    def _log(
        self,
        turn: int,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        outcome: str,
        *,
        summary: bool = False,
        attempt: int = 0,
        scripted: bool = False,
    ) -> None:
        """Record a request; ``scripted``: answered from the script, as attempt ``attempt``.

        Requests the script does not answer (bad body, refusal, summary) count
        as no attempt of their turn.
        """
        with self._lock:
            self.requests.append(
                {
                    "turn": turn,
                    "attempt": attempt,
                    "path": path,
                    "body": body,
                    "headers": headers,
                    "time": time.time(),
                    "outcome": outcome,
                    "summary": summary,
                    "scripted": scripted,
                }
            )

    def _begin(
        self, turn: int, body: dict[str, Any], path: str, headers: dict[str, str]
    ) -> tuple[dict[str, Any] | None, int, str | None]:
        """Resolve the entry, pick this attempt's fault and log it atomically.

        Returns ``(entry, attempt, fault)``; on a broken script or unknown fault
        kind the entry is None and the third item describes the problem.
        """
        with self._lock:
            script = self.script
        problem = None
        try:
            if callable(script):
                entry = dict(script(body))
            elif script is not None and turn < len(script):
                entry = dict(script[turn])
            else:
                entry = {"content": EXHAUSTED}
        except Exception:
            traceback.print_exc()
            entry, problem = {}, "error:script"
        faults = entry.get("faults") or []
        with self._lock:  # counted and logged at once: concurrent attempts get their own
            attempt = sum(1 for r in self.requests if r["turn"] == turn and r["scripted"])
            fault = str(faults[attempt]) if attempt < len(faults) else None
            if fault is not None and fault not in FAULT_KINDS:
                problem = f"error:unknown fault {fault!r}"
            outcome = problem or (f"fault:{fault}" if fault else "reply")
            self._log(turn, path, body, headers, outcome, attempt=attempt, scripted=True)
        if problem:
            return None, attempt, problem
        return entry, attempt, fault
