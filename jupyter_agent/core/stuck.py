"""Noticing an agent that goes round in circles.

A run whose latest replies repeat — the same failing tool call (same code,
same error) or the same reply — :data:`REPEATS` times in a row pauses with
status ``stuck`` and a one-line reason, rather than spending its budget on it.
Re-running the cell continues, with a note telling the model it was stuck.
The check reads the history only, so it gives the same answer after a resume.
"""

from __future__ import annotations

import json

REPEATS = 3


def _calls(msg: dict) -> str:
    return json.dumps(
        [
            [(c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments")]
            for c in msg.get("tool_calls") or []
        ]
    )


def stuck_reason(messages: list[dict], repeats: int = REPEATS) -> str | None:
    """Why the run looks stuck, or None. Only the part after the last user message counts."""
    if repeats < 2:
        return None
    tail: list[dict] = []
    assistants = 0
    for msg in reversed(messages):  # only the last few steps: O(1) however long the run
        if msg.get("role") == "user" or assistants == repeats:
            break
        tail.insert(0, msg)
        assistants += msg.get("role") == "assistant"
    steps: list[tuple[str, str, str]] = []  # (content, calls, results)
    for i, msg in enumerate(tail):
        if msg.get("role") != "assistant":
            continue
        outputs = []
        for later in tail[i + 1 :]:
            if later.get("role") != "tool":
                break
            outputs.append(str(later.get("content")))
        steps.append((str(msg.get("content") or ""), _calls(msg), "\n".join(outputs)))
    if len(steps) < repeats:
        return None
    last = steps[-repeats:]
    _, calls, results = last[0]
    failing = "Error" in results or "Traceback" in results
    if calls != "[]" and failing and all(s[1:] == (calls, results) for s in last):
        error = next((ln for ln in reversed(results.splitlines()) if ln.strip()), "")
        return f"the same tool call failed {repeats} times in a row ({error[:120]})"
    if all(s[:2] == last[0][:2] for s in last):
        return f"the model gave the same reply {repeats} times in a row"
    return None


def unstuck_note(reason: str) -> str:
    return (
        f"You were stuck: {reason}. The user has asked you to continue; try a different "
        "approach, or explain what blocks you."
    )
