"""The scripted server's OpenAI Responses wire format (``POST /v1/responses``).

Pure, like :mod:`.wire`: a Responses request read as the Chat-Completions-shaped
conversation the script and the turn count understand (:func:`chat_body`), and
the SSE events of a :class:`~.wire.ScriptedReply`. An entry with ``reasoning``
gets a reasoning item whose ``encrypted_content`` names the reply, so a test can
see it sent back on a later request. Errors use OpenAI's envelope (:mod:`.wire`).
"""

from __future__ import annotations

from typing import Any

from ..model.offline import pieces
from .wire import STREAM_ERRORS, ScriptedReply, chat_request

PATH = "/v1/responses"


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request as a Chat Completions body, the original under ``native``.

    Consecutive reasoning items, assistant messages and function calls are one
    assistant reply, as they were made.
    """
    items = body.get("input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    reply: dict[str, Any] | None = None
    for item in items:
        kind, role = item.get("type"), item.get("role")
        if kind in ("reasoning", "function_call") or role == "assistant":
            if reply is None:
                reply = {"role": "assistant", "content": "", "tool_calls": None}
                messages.append(reply)
            if kind == "function_call":
                fn = {"name": item.get("name"), "arguments": item.get("arguments") or ""}
                call = {"id": item.get("call_id"), "type": "function", "function": fn}
                reply["tool_calls"] = [*(reply["tool_calls"] or []), call]
            elif role == "assistant":
                reply["content"] += _text(item.get("content"))
            continue
        reply = None
        if kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": str(item.get("output")),
                }
            )
        else:
            messages.append({"role": role or "user", "content": _text(item.get("content"))})
    functions = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    return chat_request(body, messages, [(t.get("name"), t.get("parameters")) for t in functions])


def events(
    reply: ScriptedReply, rid: str, model: str, cached: int, fault: str | None
) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """The SSE events of ``reply``, and whether the stream ends cleanly (else: dropped).

    Faults as in :func:`.anthropic_wire.events`; the end is ``response.completed``
    (``response.incomplete`` for a reply cut at the length limit).
    """
    out: list[tuple[str, dict[str, Any]]] = []
    seq = 0

    def event(name: str, **payload: Any) -> None:
        nonlocal seq
        out.append((name, {"type": name, "sequence_number": seq, **payload}))
        seq += 1

    base = {"id": rid, "object": "response", "created_at": 1_700_000_000, "model": model}
    event("response.created", response={**base, "status": "in_progress", "output": []})
    output: list[dict[str, Any]] = []
    if reply.reasoning:
        item: dict[str, Any] = {
            "id": f"rs_{rid}",
            "type": "reasoning",
            "summary": [],
            "encrypted_content": f"enc-{rid}",
        }
        for piece in pieces(reply.reasoning):
            event(
                "response.reasoning_summary_text.delta",
                item_id=item["id"],
                output_index=len(output),
                summary_index=0,
                delta=piece,
            )
        item["summary"] = [{"type": "summary_text", "text": reply.reasoning}]
        event("response.output_item.done", output_index=len(output), item=item)
        output.append(item)
    if reply.content:
        item_id = f"msg_{rid}"
        for piece in pieces(reply.content):
            event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=len(output),
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        part = {"type": "output_text", "text": reply.content, "annotations": []}
        item = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [part],
        }
        event("response.output_item.done", output_index=len(output), item=item)
        output.append(item)
    for call in reply.tool_calls:
        item = {
            "id": f"fc_{call['id']}",
            "type": "function_call",
            "call_id": call["id"],
            "name": call["name"],
            "arguments": call["arguments"],
            "status": "completed",
        }
        event(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=len(output),
            delta=call["arguments"],
        )
        event("response.output_item.done", output_index=len(output), item=item)
        output.append(item)
    prompt = int(reply.usage.get("prompt_tokens") or 0)
    completion = int(reply.usage.get("completion_tokens") or 0)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    done = {
        **base,
        "output": output,
        "usage": usage,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    incomplete = {"length": "max_output_tokens", "content_filter": "content_filter"}
    if reply.finish_reason in incomplete:
        reason = {"reason": incomplete[reply.finish_reason]}
        event(
            "response.incomplete",
            response={**done, "status": "incomplete", "incomplete_details": reason},
        )
    else:
        event("response.completed", response={**done, "status": "completed"})
    if fault == "drop":
        return out[:2], False
    if fault == "cut" or fault in STREAM_ERRORS:
        cut = out[: max(2, len(out) - 2)]
        if fault in STREAM_ERRORS:
            error = STREAM_ERRORS[fault]
            said = {"code": error["code"] or error["type"], "message": error["message"]}
            cut.append(("error", {"type": "error", "sequence_number": seq, "param": None, **said}))
        return cut, True
    return out, True
