"""One checkpoint opened from the timeline: its messages, tool call and result, variables.

The timeline (:mod:`.timeline`) is built from store rows only; opening a checkpoint
is where its payloads are read and folded, up to that checkpoint, from its history's
start (a delegated child's from the child's own history).
"""

from __future__ import annotations

from typing import Any

from ..core.history import segments as history_of
from ..core.state import RunState, call_code, decode_delta
from ..errors import NotFound
from ..store.api import CheckpointRow
from .cells import editable
from .timeline import Timeline, clip, entry

CONTENT_LIMIT = 8_000  # characters of a message shown when a checkpoint is opened


def detail(timeline: Timeline, run_id: str, step: int) -> dict:
    """Everything about one checkpoint: its messages, tool call and result, variables."""
    child = timeline.children.get(run_id)  # a delegated child's checkpoint, opened here
    run = child or timeline.run(run_id)
    if child:
        segments = history_of(run, timeline.store.run, whole=True)
    else:
        segments = timeline.segments(run, whole=True)
    segments[-1] = (run_id, step)
    state = RunState()
    found: tuple[CheckpointRow, Any] | None = None
    for row, payload in timeline.store.payloads(segments):
        delta = decode_delta(payload)
        state.apply(delta, step=row.step, kind=row.kind, status=row.status, tokens=row.tokens)
        if row.run_id == run_id and row.step == step:
            found = (row, delta)
    if found is None:
        raise NotFound(f"Run {run_id} has no checkpoint {step}.")
    row, delta = found
    call_id = delta.tool_call_id or row.info.get("call_id")
    if call_id is None and delta.decision:
        call_id = delta.decision.get("call_id")
    call = _find_call(state.messages, call_id) if call_id else None
    result = next(
        (m.get("content") for m in delta.messages if m.get("role") == "tool"),
        None,
    )
    info = row.info.get("vars") or {}
    return {
        **entry(row),
        "messages": [_message(m) for m in delta.messages],
        "call": call,
        "result": clip(result, CONTENT_LIMIT) if isinstance(result, str) else None,
        "vars": [{"name": n, **info[n]} for n in sorted(info)],
        "deleted": sorted(n for n, h in delta.vars.items() if h is None),
        "unsaved": dict(delta.unsaved),
        "decision": delta.decision,
        "namespace": sorted(state.vars),
        "editable": editable(row.kind, delta.messages),
    }


def _find_call(messages: list[dict], call_id: str) -> dict | None:
    for msg in reversed(messages):
        for call in msg.get("tool_calls") or []:
            if call.get("id") == call_id:
                return _call(call)
    return None


def _call(call: dict) -> dict:
    """A tool call as the detail pane shows it: its code when it carries some, else its arguments."""
    fn = call.get("function") or {}
    code = call_code(call)
    return {
        "id": call.get("id", ""),
        "name": fn.get("name") or "?",
        "code": None if code is None else clip(code, CONTENT_LIMIT),
        "arguments": None if code is not None else clip(fn.get("arguments") or "", CONTENT_LIMIT),
    }


def _message(msg: dict) -> dict:
    content = msg.get("content")
    if not isinstance(content, str):
        content = "" if content is None else str(content)
    out = {"role": msg.get("role", "?"), "content": clip(content, CONTENT_LIMIT)}
    if msg.get("tool_calls"):
        out["tool_calls"] = [_call(c) for c in msg["tool_calls"]]
    if msg.get("tool_call_id"):
        out["tool_call_id"] = msg["tool_call_id"]
    return out
