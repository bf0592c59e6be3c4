"""An agent run's persistent state, and the step deltas it is folded from.

Persistent state is what a checkpoint must bring back: the conversation, the
namespace variables the agent set (as content hashes), approval decisions and
counters. Ephemeral state — the HTTP client, threads, widgets, the kernel's
namespace objects themselves — is rebuilt, never stored.

A checkpoint stores only its step's :class:`Delta` (the one or two messages it
added, the variables it changed), so writing step N costs the same as step 1 and
a run's store grows linearly. :func:`fold` rebuilds the state by replaying deltas.

A compaction checkpoint also carries a *snapshot*: the state before it, without
the messages the model's view no longer shows. A resume folds from the latest
one (:func:`fold` with ``partial``), so its cost is bounded by the context
window, not by the length of the run; the compacted messages stay in the store
for the timeline, ``%agent show`` and forks, which fold the whole history.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypedDict, cast

import orjson

from ..errors import StateVersionError
from ..vocab import Status, add_cost, usage_tokens
from .context import is_pinned

#: Version of the delta payload layout. Bump it when :class:`Delta` changes and
#: teach :func:`decode_delta` to read the older versions. Version 3 is JSON;
#: versions 1 and 2 were pickled with dill and are only read to migrate them
#: (:func:`dill_to_json`).
STATE_VERSION = 3
#: The ``info`` key of the fingerprint an execution records in its first checkpoint.
FINGERPRINT = "fingerprint"

# The statuses are defined, with their user-facing words, in :mod:`jupyter_agent.vocab`.
RUNNING = Status.RUNNING
DONE = Status.DONE
INTERRUPTED = Status.INTERRUPTED
AWAITING_APPROVAL = Status.AWAITING_APPROVAL
ERROR = Status.ERROR
LIMIT = Status.LIMIT
BUDGET = Status.BUDGET
STUCK = Status.STUCK
STALLED = Status.STALLED  # derived, never stored


@dataclass
class Delta:
    """What one step adds to a run's state: the payload of one checkpoint."""

    messages: list[dict] = field(default_factory=list)
    vars: dict[str, str | None] = field(default_factory=dict)  # name -> blob hash (None: deleted)
    unsaved: dict[str, str] = field(default_factory=dict)  # name -> why it was not saved
    decision: dict | None = None  # an approval decision: {call_id, action, note?, code?}
    tool_call_id: str | None = None  # the tool call this step started or finished
    #: A compaction of the model's view (see :mod:`jupyter_agent.core.context`): replaces
    #: the previous one; the messages themselves are never removed.
    compaction: dict | None = None
    plan: list[dict] | None = None  # the agent's plan, replacing the previous one
    #: On a compaction checkpoint: the state before it (:meth:`RunState.snapshot`).
    snapshot: dict | None = None
    #: On a python call's result: what it displayed, as nbformat outputs (size-capped).
    #: Read by restores and exports (:mod:`jupyter_agent.views.cells`), never folded into
    #: the state nor sent to the model.
    outputs: list[dict] | None = None
    #: Files under the notebook's folder that this step's code created, changed or
    #: deleted: relative path -> :data:`FileRecord` (None: deleted). Their content is
    #: in the store's blobs, by hash, as large values are.
    files: dict[str, FileRecord | None] = field(default_factory=dict)


class FileRecord(TypedDict, total=False):
    """A file's entry in :attr:`Delta.files` and :attr:`RunState.files`: ``sha256`` and
    ``size`` for a versioned file, or ``unversioned`` and ``size`` for one the run could not
    keep (over the run's cap, unreadable), so it is listed, never silently skipped."""

    #: The content's hash, the key of its bytes in the store's blobs.
    sha256: str
    #: Bytes on disk when it was recorded.
    size: int
    #: Why the content is not kept.
    unversioned: str


#: What stands for a message a partial fold did not read: one the view no longer shows.
#: Read-only, so nothing can mistake it for a message to send or change.
COMPACTED: dict = cast(dict, MappingProxyType({"role": "compacted", "content": ""}))


@dataclass
class RunState:
    """Everything needed to continue a run, rebuilt from its checkpoints."""

    messages: list[dict] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)
    unsaved: dict[str, str] = field(default_factory=dict)
    decisions: dict[str, dict] = field(default_factory=dict)
    step: int = -1
    status: str = RUNNING
    kind: str = ""
    tokens: int = 0
    started_call: str | None = None  # a tool call started but not finished
    #: The latest compaction: what the model is sent instead of the full history.
    compaction: dict = field(default_factory=dict)
    plan: list[dict] = field(default_factory=list)
    #: Model replies so far (each one a step); prompt and completion tokens spent,
    #: and of the prompt tokens those a provider's cache served or stored (priced apart).
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    #: Dollars of the priced checkpoints (``info.cost_usd``); None: none was priced.
    cost_usd: float | None = None
    #: The files the run's code wrote, as they were at this step (see :attr:`Delta.files`).
    files: dict[str, FileRecord] = field(default_factory=dict)
    #: The budget the run last ran with ({"tokens": …, "cost": …}), if any.
    budget: dict | None = None
    #: ``[step, fingerprint]`` of the run's latest execution that recorded one (its first
    #: checkpoint's ``info[FINGERPRINT]``; see :mod:`jupyter_agent.loop.fingerprint`).
    fingerprint: list | None = None
    #: (index of its first message, step) of the steps that added messages, from the
    #: one holding the view's first message: where a snapshot's fold must start.
    message_steps: list[tuple[int, int]] = field(default_factory=list)

    def apply(
        self,
        delta: Delta,
        *,
        step: int,
        kind: str,
        status: str,
        tokens: int,
        info: dict | None = None,
    ) -> None:
        if delta.messages:
            self.message_steps.append((len(self.messages), step))
            self.messages.extend(delta.messages)
        if delta.compaction is not None:
            self.compaction = delta.compaction
            self.message_steps = self.message_steps[self._holding(_upto(delta.compaction)) :]
        if delta.plan is not None:
            self.plan = delta.plan
        if kind == "model":
            self.model_calls += 1
        info = info or {}
        if kind in ("start", "resume") and "budget" in info:
            self.budget = info["budget"]
        if kind in ("start", "resume", "fork") and FINGERPRINT in info:
            self.fingerprint = [step, info[FINGERPRINT]]
        usage = info.get("usage")
        self.prompt_tokens += usage_tokens(usage, "prompt_tokens")
        self.completion_tokens += usage_tokens(usage, "completion_tokens")
        self.cached_tokens += usage_tokens(usage, "cached_tokens")
        self.cache_write_tokens += usage_tokens(usage, "cache_write_tokens")
        self.cost_usd = add_cost(self.cost_usd, info.get("cost_usd"))
        self.bind(delta.vars, delta.unsaved)
        self.bind_files(delta.files)
        if delta.decision:
            self.decisions[delta.decision["call_id"]] = delta.decision
        if kind == "tool_call":
            self.started_call = delta.tool_call_id
            # An approval covers one execution: if this one is cut short by a
            # crash, running the call again needs a new approval.
            self.decisions.pop(delta.tool_call_id or "", None)
        elif kind == "tool_result" or (kind == "fork" and delta.tool_call_id):
            self.started_call = None  # a fork's edited output answers the call in flight
        self.step, self.kind, self.status = step, kind, status
        self.tokens += tokens

    def bind(self, vars: dict[str, str | None], unsaved: dict[str, str]) -> None:
        """Record the variables a step saved (a hash; None: deleted) and those it could not."""
        for name, digest in vars.items():
            if digest is None:
                self.vars.pop(name, None)
            else:
                self.vars[name] = digest
            self.unsaved.pop(name, None)
        self.unsaved.update(unsaved)

    def bind_files(self, files: dict[str, FileRecord | None]) -> None:
        """Record the files a step wrote (their record) and removed (None)."""
        for path, record in files.items():
            if record is None:
                self.files.pop(path, None)
            else:
                self.files[path] = record

    def _holding(self, index: int) -> int:
        """Position in :attr:`message_steps` of the step that added message ``index``."""
        at = 0
        for i, (start, _) in enumerate(self.message_steps):
            if start > index:
                break
            at = i
        return at

    def snapshot(self, upto: int) -> tuple[int, dict] | None:
        """The step a fold must start at, and this state without the messages before it.

        ``upto``: the first message the view will show whole. Kept are the
        messages before the fold's start the view still shows (the system prompt
        and task, the user's pinned instructions); None when nothing would be skipped.
        """
        if upto >= len(self.messages):
            start, since = len(self.messages), self.step + 1
        elif self.message_steps:
            start, since = self.message_steps[self._holding(upto)]
        else:
            return None
        if start <= 2:
            return None
        kept = [[i, m] for i, m in enumerate(self.messages[:start]) if i < 2 or is_pinned(m)]
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("messages", "message_steps"):
            del values[name]
        return since, {"state": values, "length": start, "kept": kept}

    @classmethod
    def from_snapshot(cls, snapshot: dict, later: list[tuple[int, list[dict]]]) -> RunState:
        """The state a snapshot describes, with ``later``: (step, messages) read after its start."""
        state = cls(**{k: v for k, v in snapshot["state"].items() if k in _STATE_FIELDS})
        messages = placeholders(int(snapshot["length"]), snapshot["kept"])
        for step, added in later:
            state.message_steps.append((len(messages), step))
            messages.extend(added)
        state.messages = messages
        return state

    def pending_tool_call(self) -> dict | None:
        """The first tool call of the last assistant message that has no result yet."""
        answered = set()
        for msg in reversed(self.messages):
            if msg.get("role") == "tool":
                answered.add(msg.get("tool_call_id"))
            elif msg.get("role") == "assistant":
                for call in msg.get("tool_calls") or []:
                    if call["id"] not in answered:
                        return call
                return None
        return None

    def final_answer(self) -> str | None:
        if self.status != DONE:
            return None
        for msg in reversed(self.messages):
            if msg.get("role") == "assistant":
                return msg.get("content") or ""
        return None


def call_code(call: dict) -> str | None:
    """The code a tool call carries: its arguments' ``code`` when they are a JSON object
    holding a string there (the ``python`` tool's, an approval's); None for any other call.

    Models write arguments as they like, so a call whose arguments do not parse reads as
    one without code, never as an error.
    """
    try:
        code = json.loads((call.get("function") or {}).get("arguments") or "{}").get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def placeholders(length: int, kept: list) -> list[dict]:
    """``length`` messages a fold skipped: :data:`COMPACTED`, but ``kept``'s ``[index, message]``."""
    messages = [COMPACTED] * length
    for i, msg in kept:
        messages[i] = msg
    return messages


def encode_delta(delta: Delta) -> bytes:
    """The delta as JSON (format ``"json"``): readable without running any code."""
    return json.dumps(
        {"v": STATE_VERSION, **delta.__dict__},
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,  # a stray non-JSON value is kept as its text, never loses the step
    ).encode()


def decode_delta(payload: bytes) -> Delta:
    """A delta from its JSON payload; unpickles nothing."""
    if not payload:
        return Delta()
    try:  # orjson: a third of json's time, which a resume pays for every checkpoint
        if _LONG_DIGITS.search(payload):
            raise orjson.JSONDecodeError("", "", 0)  # orjson reads a huge integer as a float
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:  # and what orjson refuses but json.dumps writes: NaN, Infinity
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            data = None
    return _delta(data)


_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _delta(data: Any) -> Delta:
    if not isinstance(data, dict):
        raise StateVersionError("A checkpoint payload is not in a format this version knows.")
    version = data.pop("v", 1)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise StateVersionError(
            f"This checkpoint was written by a newer jupyter-agent (state version {version}, "
            f"this one reads up to {STATE_VERSION}). Upgrade jupyter-agent to resume it."
        )
    if data.keys() <= _FIELDS:
        return Delta(**data)
    return Delta(**{k: v for k, v in data.items() if k in _FIELDS})


_FIELDS = frozenset(Delta.__dataclass_fields__)
_STATE_FIELDS = frozenset(RunState.__dataclass_fields__) - {"messages", "message_steps"}


def _upto(compaction: dict) -> int:
    return int(compaction.get("upto") or 0)


def dill_to_json(payload: bytes) -> bytes:
    """Re-encode a payload of an older release (dill) as JSON, for a migration only.

    Unpickling runs code: call it only on data the store has checked is this
    user's (:meth:`Store.check_trusted`, or a journal folded as trusted).
    """
    if not payload:
        return encode_delta(Delta())
    import dill

    return encode_delta(_delta(dill.loads(payload)))


def redact_payload(payload: bytes, secrets: list[str]) -> bytes:
    """The payload with every secret in its messages and decision replaced."""
    from .redaction import redact

    delta = decode_delta(payload)
    delta.messages = redact(delta.messages, secrets)
    delta.decision = redact(delta.decision, secrets)
    delta.unsaved = redact(delta.unsaved, secrets)
    delta.outputs = redact(delta.outputs, secrets)
    return encode_delta(delta)


def fold(checkpoints: list[tuple[Any, bytes]], message_steps: list[int] | None = None) -> RunState:
    """Replay ``(checkpoint row, payload)`` pairs, oldest first, into a :class:`RunState`.

    ``message_steps``, if given, receives the checkpoint each message was added at
    (a diff names them; :attr:`RunState.message_steps` forgets the compacted ones).
    """
    state = RunState()
    for row, payload in checkpoints:
        delta = decode_delta(payload)
        if message_steps is not None:
            message_steps.extend([row.step] * len(delta.messages))
        _apply(state, row, delta)
    return state


def fold_from_snapshot(checkpoints: list[tuple[Any, bytes]]) -> RunState | None:
    """:func:`fold` for pairs that start where a snapshot's fold starts (:meth:`RunState.snapshot`).

    Until the snapshot's own checkpoint only their messages are taken; from it
    on, the state is the snapshot's. None if no pair carries a snapshot.
    """
    state: RunState | None = None
    earlier: list[tuple[int, list[dict]]] = []
    for row, payload in checkpoints:
        delta = decode_delta(payload)
        if state is None:
            if delta.snapshot is None:
                if delta.messages:
                    earlier.append((row.step, delta.messages))
                continue
            state = RunState.from_snapshot(delta.snapshot, earlier)
        _apply(state, row, delta)
    return state


def _apply(state: RunState, row: Any, delta: Delta) -> None:
    state.apply(
        delta, step=row.step, kind=row.kind, status=row.status, tokens=row.tokens, info=row.info
    )


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.strip().encode()).hexdigest()[:16]
