"""What the model is sent, kept inside its context window and the run's budget.

Each compaction is a checkpoint of its own (kind ``compaction``), written
before the model call it makes room for, with the state before it as a
snapshot for a resume to fold from (see :meth:`Recorder.checkpoint`). So a
summary the model wrote is never asked for twice, and a resume reads a
window's worth of checkpoints however long the run is.

An endpoint that refuses a request as too long teaches the window it has
(remembered in the store for the model); the view is compacted and the call
made again, at most :data:`MAX_OVERFLOWS` times in a row. A plan run's items
each start afresh: the transition to the next item is a compaction too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from .. import vocab
from ..core import context, summary
from ..core import plan as plans
from ..core.budget import Budget, Price, cost_of, over_budget, usage_cost
from ..core.plan import PLANNER_PROMPT, progress
from ..core.redaction import redact
from ..core.state import BUDGET, RUNNING, Delta
from ..errors import ContextOverflow, ModelError, StoreError
from ..model.base import ModelClient, ModelReply
from ..namespace import tracking as namespace
from ..store.api import Store
from .checkpoints import Recorder, Stop

#: Consecutive "too long" refusals after which the agent stops trying to compact.
MAX_OVERFLOWS = 3


@dataclass(eq=False)
class Window:
    """The model's view of a run: built, measured, compacted, and paid for."""

    recorder: Recorder
    client: ModelClient
    store: Store
    #: The model's context window in tokens (lowered when the endpoint says so).
    window: int
    #: A plan run: plan first, then an item at a time.
    plan_mode: bool
    #: What the model is offered (set once the execution's tools are open).
    tools: list[dict] = field(default_factory=list)
    budget: Budget | None = None
    #: Dollars per million tokens of the model, if known.
    price: Price | None = None
    #: Reported over estimated prompt tokens of the last request (see context).
    ratio: float = 1.0
    #: Prompt tokens the provider's cache served the last request: the next request
    #: starts with that one (the view is appended to between compactions), so the
    #: budget expects it served again.
    cached: int = 0
    sizes: context.Sizes = field(default_factory=context.Sizes)
    _overflows: int = 0

    def view(self) -> list[dict]:
        """What the model is sent now (see :mod:`jupyter_agent.core.context`)."""
        state = self.recorder.state
        return context.model_view(state.messages, state.compaction, self.plan(), self.sizes) + (
            self._planner()
        )

    def view_tokens(self, ratio: float) -> int:
        """The estimate of :meth:`view`'s tokens, without building it."""
        state = self.recorder.state
        return context.view_tokens(
            state.messages,
            state.compaction,
            self.plan(),
            ratio,
            self.tools,
            self.sizes,
            self._planner(),
        )

    def counted(self, reply: ModelReply, prompt: int) -> tuple[int, dict]:
        """The tokens of ``reply`` for the ledger, and the ``info`` to record them with.

        Counts the endpoint misreported were dropped by :class:`ModelReply`;
        the user hears which, once per reply. Counts missing (dropped or never
        sent) are this agent's estimates (``prompt``: the request's), marked
        ``estimated`` in the info, so a budget stops a run whatever the endpoint says.
        """
        if reply.odd_usage:
            sent = ", ".join(f"{k}={v!r:.40}" for k, v in reply.odd_usage.items())
            self.recorder.events.notice(
                f"model: the endpoint's usage was ignored ({sent}): not a token count; "
                "counted by estimate"
            )
        completion = context.estimate_tokens([reply.message()], self.ratio)
        tokens, usage, estimated = reply.counted(prompt, completion)
        info: dict = self.priced({"usage": usage})
        if estimated:
            info["estimated"] = estimated
        return tokens, info

    def priced(self, info: dict) -> dict:
        """``info`` with what its ``usage`` cost (``cost_usd``), caching counted, if priced."""
        cost = usage_cost(info["usage"], self.price)
        return info if cost is None else {**info, "cost_usd": round(cost, 9)}

    def learn(self, usage: dict) -> None:
        """Correct the estimates by the prompt tokens the endpoint reported."""
        self._overflows = 0
        self.cached = int(usage.get("cached_tokens") or 0)
        reported = int(usage.get("prompt_tokens") or 0)
        if reported:
            raw = self.view_tokens(1.0)
            self.ratio = min(max(reported / max(raw, 1), 0.25), 4.0)

    def plan(self) -> list[dict]:
        """The plan as the model sees it: within its share of the window (see plans.in_view)."""
        return plans.in_view(self.recorder.state.plan, plans.max_chars(self.window))

    def _planner(self) -> list[dict]:
        """The planner's instruction, while a plan run has no plan yet."""
        if self.plan_mode and not self.recorder.state.plan:
            return [{"role": "user", "content": context.HARNESS_NOTE + PLANNER_PROMPT}]
        return []

    def next_completion(self) -> int:
        """The estimate of the next reply's tokens: the run's average so far."""
        state = self.recorder.state
        return state.completion_tokens // state.model_calls if state.model_calls else 256

    def unanswered(self) -> tuple[int, dict]:
        """The tokens of a model call that may have been in flight when the run was
        killed, by estimate, and the ``info`` to record them with.

        The endpoint served it (and bills it) though its reply was never
        checkpointed; it is the request the restored state would send now.
        """
        prompt, completion = self.view_tokens(self.ratio), self.next_completion()
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        info = {"usage": usage, "estimated": list(usage), "unanswered": 1}
        return prompt + completion, self.priced(info)

    def check_budget(self, prompt_tokens: int) -> None:
        """Stop at a checkpoint if a call with this prompt would cross the budget."""
        if self.budget is None:
            return
        state = self.recorder.state
        completion = self.next_completion()
        next_cost = cost_of(prompt_tokens, completion, self.price, self.cached)
        spent_cost = cost_of(
            state.prompt_tokens,
            state.completion_tokens,
            self.price,
            state.cached_tokens,
            state.cache_write_tokens,
        )
        if not over_budget(
            self.budget, state.tokens, spent_cost, prompt_tokens + completion, next_cost
        ):
            return
        info = {
            "spent": state.tokens,
            "budget": self.budget.tokens,
            "cost": spent_cost,
            "budget_cost": self.budget.cost,
            "next": prompt_tokens + completion,
            "next_cost": next_cost if self.budget.cost is not None else None,
        }
        self.recorder.checkpoint("budget", BUDGET, vocab.budget_text(info), info=info)
        raise Stop()

    def compact(self, *, force: bool = False) -> None:
        """Bring the model's view inside the window, as a checkpoint of its own."""
        state = self.recorder.state
        decision = context.decide(
            state.messages,
            state.compaction,
            self.plan(),
            self.window,
            self.ratio,
            tools=self.tools,
            force=force,
            sizes=self.sizes,
        )
        if decision is None:
            if force:
                raise ModelError(
                    f"The endpoint refused the request as too long for the model's context "
                    f"window ({self.window:,} tokens), and there is nothing left to compact: "
                    "the latest step alone is too large. Give the model a larger window "
                    "(--context-window) or a task with smaller outputs."
                )
            return
        before = self.view_tokens(self.ratio)
        self.cached = 0  # the view's prefix changes: nothing of it is cached yet
        compaction = decision.compaction
        tokens = 0
        counts: dict = {"usage": {}}
        if decision.summarize is not None:
            start, end = decision.summarize
            request = summary.summarizer_request(
                state.messages,
                start,
                end,
                compaction["summary"],
                namespace.overview(self.recorder.shell.user_ns, list(state.vars)),
                self.window,
            )
            estimate = context.estimate_tokens(request, self.ratio)
            self.check_budget(estimate)
            self.recorder.events.info(
                f"Compacting the context (checkpoints before {end} into a summary)…"
            )
            reply = self.client.complete(request, [])
            written = redact(reply.content, self.recorder.secrets)
            compaction = {
                **compaction,
                "summary": summary.summary_message(
                    written, compaction["replies"], compaction["results"]
                ),
            }
            tokens, counts = self.counted(reply, estimate)
        compaction["window"] = self.window
        after = context.estimate_tokens(
            context.model_view(state.messages, compaction, self.plan(), self.sizes),
            self.ratio,
            self.tools,
            self.sizes,
        )
        kind = compaction["strategy"]
        self.recorder.checkpoint(
            "compaction",
            RUNNING,
            f"context compacted: {before:,} → {after:,} tokens ({kind})",
            Delta(compaction=compaction),
            tokens=tokens,
            info={
                "strategy": kind,
                "before_tokens": before,
                "after_tokens": after,
                "messages_dropped": int(compaction.get("upto") or 0),
                "window": self.window,
                **counts,
            },
        )

    def overflowed(self, exc: ContextOverflow, sent: int) -> None:
        """The endpoint said the request was too long: learn the window, compact, retry."""
        self._overflows += 1
        if self._overflows > MAX_OVERFLOWS:
            raise ModelError(f"The request stays too long for the model's context window: {exc}")
        learnt = exc.limit or int(sent * 0.8)
        if learnt < self.window:
            self.window = max(learnt, context.MIN_WINDOW)
            with contextlib.suppress(StoreError):
                self.store.remember_window(self.client.endpoint.model, self.window)
        self.recorder.events.notice(
            f"the request was too long for the model ({exc.limit or 'unknown'} tokens); "
            "compacting the context and retrying"
        )
        self.compact(force=True)

    def next_item(self, note: str) -> None:
        """In plan mode, after a reply that ends an item: start the next one afresh."""
        state = self.recorder.state
        self.cached = 0  # the next item's view is new to the prompt cache
        variables = namespace.overview(self.recorder.shell.user_ns, list(state.vars))
        item = plans.next_item(state.plan, state.compaction, state.messages, note, variables)
        if item is None:  # nothing left: the plan is done
            done = plans.ended(state.plan, state.compaction)
            info = {"plan": done, "progress": progress(done)}
            self.recorder.checkpoint(
                "tool_result", RUNNING, f"plan {progress(done)}", Delta(plan=done), info=info
            )
            return
        title = item.plan[item.index]["title"]
        self.recorder.checkpoint(
            "compaction",
            RUNNING,
            f"plan item {item.index + 1}/{len(item.plan)}: {title}",
            Delta(
                messages=[{"role": "user", "content": item.instruction}],
                compaction={**item.compaction, "window": self.window},
                plan=item.plan,
            ),
            info={
                "strategy": "item",
                "plan": item.plan,
                "progress": progress(item.plan),
                "item": item.index,
                "messages_dropped": len(state.messages),
            },
        )
