"""The ``read_agent`` tool: agents of a notebook read each other's answers and plans.

Context passes between agents (a parent and its children, siblings, agents
that ran ``--after`` others) through the store, not through files: the latest
run's status, its final answer once done, and its latest plan. It only
reads, so it has no start checkpoint and needs no approval.
"""

from __future__ import annotations

import json

from ..errors import ReadAgentError
from ..store.api import RunRow, Store
from ..views.render import run_status

READ_AGENT_TOOL = {
    "type": "function",
    "function": {
        "name": "read_agent",
        "description": (
            "Read what another agent of this notebook produced: its latest run's status, its "
            "final answer if it is done, and its plan items if it made a plan."
        ),
        "parameters": {
            "type": "object",
            "properties": {"agent": {"type": "string", "description": "The agent's name."}},
            "required": ["agent"],
        },
    },
}


def parse_read_agent(arguments: str) -> str:
    """The ``agent`` of a ``read_agent`` call."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError as exc:
        raise ReadAgentError(f"the arguments are not JSON ({exc})") from None
    agent = args.get("agent") if isinstance(args, dict) else None
    if not isinstance(agent, str) or not agent.strip():
        raise ReadAgentError("'agent' (the name of the agent to read) is missing")
    return agent.strip()


def read_agent(store: Store, reader: RunRow, arguments: str) -> str:
    """What ``reader``'s call of ``read_agent`` returns: the named agent's latest run, as JSON."""
    agent = parse_read_agent(arguments)
    if agent == reader.agent:
        raise ReadAgentError(f"{agent!r} is this agent; name another agent of the notebook")
    runs = store.runs(notebook=reader.notebook)
    latest = {r.agent: r for r in runs}  # oldest first: the last one wins
    run = latest.get(agent)
    if run is None:
        known = ", ".join(sorted(a for a in latest if a != reader.agent)) or "none"
        raise ReadAgentError(
            f"no agent named {agent!r} in this notebook (the other agents: {known})"
        )
    status, text, steps = run_status(store, run, store.live_runs())
    from ..loop.runs import load_state  # the loop imports this module

    state = load_state(store, run)
    out: dict = {"agent": agent, "status": status, "status_text": text, "steps": steps}
    if run.info.get("parent_agent"):
        out["parent_agent"] = run.info["parent_agent"]
    answer = state.final_answer()
    if answer is not None:
        out["final_answer"] = answer
    if state.plan:
        out["plan"] = state.plan
    return json.dumps(out, ensure_ascii=False, indent=1)
