"""Budgets that pause a run, and the ledger of what it spent and saved.

A budget caps the tokens (or the money, given a price per token) a run may
spend over all its executions, compactions included. Before each model call
the agent estimates what the call will cost; when it would cross the budget,
the run stops at a checkpoint with status ``budget``. It never fails: re-running
the cell with a larger ``--budget`` continues from there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import BudgetError

# fmt: off
#: US dollars per million tokens: (prompt, completion, cached prompt, cache write), by
#: model name prefix, longest first. List prices published by OpenAI and Anthropic as
#: of November 2025. A cached prompt token is one a provider's prompt cache served
#: (OpenAI caches automatically, Anthropic at ``cache_control`` breakpoints); a cache
#: write is one Anthropic stored (5-minute cache); OpenAI charges writes as prompt tokens.
#: Override or extend with ``c.AgentMagics.prices = {"my-model": [0.5, 1.5, 0.05]}``
#: (2 to 4 numbers: a rate not given is the prompt rate).
DEFAULT_PRICES: dict[str, tuple[float, ...]] = {
    "gpt-5-nano": (0.05, 0.40, 0.005),    "gpt-5-mini": (0.25, 2.00, 0.025),
    "gpt-5": (1.25, 10.00, 0.125),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),  "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4o-mini": (0.15, 0.60, 0.075),   "gpt-4o": (2.50, 10.00, 1.25),
    "o4-mini": (1.10, 4.40, 0.275),       "o3": (2.00, 8.00, 0.50),
    "gpt-3.5-turbo": (0.50, 1.50),
    "claude-opus-4-5": (5.00, 25.00, 0.50, 6.25),
    "claude-opus-4": (15.00, 75.00, 1.50, 18.75),
    "claude-sonnet-4": (3.00, 15.00, 0.30, 3.75),
    "claude-haiku-4": (1.00, 5.00, 0.10, 1.25),
    "claude-3-5-haiku": (0.80, 4.00, 0.08, 1.00),
    "offline": (0.0, 0.0),
}
# fmt: on
_MONEY = re.compile(r"^\$\s*(\d+(?:\.\d+)?)$")
_TOKENS = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmM]?)$")


@dataclass(frozen=True)
class Budget:
    """A limit on a run's spending: tokens, or dollars (``cost``)."""

    tokens: int | None = None
    cost: float | None = None

    def text(self) -> str:
        return f"${self.cost:,.2f}" if self.cost is not None else f"{self.tokens:,} tokens"


def parse_budget(text: str | int | None) -> Budget | None:
    """``50000``, ``50k``, ``1.5M`` (tokens) or ``$2.50`` (dollars); empty means none."""
    if text is None or text == "":
        return None
    raw = str(text).strip().replace(",", "").replace("_", "")
    if m := _MONEY.match(raw):
        cost = float(m.group(1))
        if cost <= 0:
            raise BudgetError("--budget must be more than $0.")
        return Budget(cost=cost)
    if m := _TOKENS.match(raw):
        tokens = int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()])
        if tokens <= 0:
            raise BudgetError("--budget must be a positive number of tokens.")
        return Budget(tokens=tokens)
    raise BudgetError(
        f"--budget {text!r} is not a budget: give tokens (50000, 50k, 1.5M) or dollars ($2.50)."
    )


class Price(NamedTuple):
    """Dollars per million tokens of one model, each kind of token at its own rate."""

    prompt: float
    completion: float
    #: A prompt token the provider's cache served.
    cached: float
    #: A prompt token written to the provider's cache.
    cache_write: float

    @classmethod
    def of(cls, name: str, rates: Sequence[float]) -> Price:
        """The price ``rates`` give (2 to 4 numbers; a rate not given is the prompt rate).

        Raises :class:`BudgetError` naming the model for anything else.
        """
        numbers = list(rates) if isinstance(rates, Sequence) and not isinstance(rates, str) else []
        if not 2 <= len(numbers) <= 4 or not all(_is_rate(r) for r in numbers):
            raise BudgetError(
                f"The price of {name!r} must be 2 to 4 dollar amounts per million tokens "
                f"[prompt, completion, cached prompt, cache write], not {rates!r}."
            )
        prompt, completion, *cache = (float(r) for r in numbers)
        cached, write = [*cache, prompt, prompt][:2]
        return cls(prompt, completion, cached, write)


def _is_rate(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )


def price_of(model: str, prices: Mapping[str, Sequence[float]] | None = None) -> Price | None:
    """The price of ``model``: the longest matching prefix of the table, if any."""
    table = {**DEFAULT_PRICES, **(prices or {})}
    name = model.lower().rsplit("/", 1)[-1]
    for prefix in sorted(table, key=len, reverse=True):
        if name.startswith(prefix.lower()):
            return Price.of(prefix, table[prefix])
    return None


def cost_of(
    prompt_tokens: int,
    completion_tokens: int,
    price: Price | None,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float | None:
    """Dollars for these tokens; cached and written tokens are part of ``prompt_tokens``."""
    if price is None:
        return None
    cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
    written = min(max(cache_write_tokens, 0), max(prompt_tokens, 0) - cached)
    fresh = max(prompt_tokens, 0) - cached - written
    return (
        fresh * price.prompt
        + cached * price.cached
        + written * price.cache_write
        + completion_tokens * price.completion
    ) / 1e6


def usage_cost(usage: Mapping[str, object], price: Price | None) -> float | None:
    """Dollars of one reply's checked ``usage`` (see :data:`..model.base.CACHE_COUNTS`)."""

    def count(key: str) -> int:
        value = usage.get(key)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    return cost_of(
        count("prompt_tokens"),
        count("completion_tokens"),
        price,
        count("cached_tokens"),
        count("cache_write_tokens"),
    )


def over_budget(
    budget: Budget | None,
    spent_tokens: int,
    spent_cost: float | None,
    next_tokens: int,
    next_cost: float | None,
) -> bool:
    """Whether a step costing ``next_*`` would take the run past ``budget``."""
    if budget is None:
        return False
    if budget.tokens is not None:
        return spent_tokens + next_tokens > budget.tokens
    assert budget.cost is not None
    return (spent_cost or 0.0) + (next_cost or 0.0) > budget.cost
