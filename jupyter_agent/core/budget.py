"""Budgets that pause a run, and the ledger of what it spent and saved.

A budget caps the tokens (or the money, given a price per token) a run may
spend over all its executions, compactions included. Before each model call
the agent estimates what the call will cost; when it would cross the budget,
the run stops at a checkpoint with status ``budget``. It never fails: re-running
the cell with a larger ``--budget`` continues from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BudgetError

# fmt: off
#: US dollars per million tokens (prompt, completion); prefix match, longest first.
#: Override or extend with ``c.AgentMagics.prices = {"my-model": [0.5, 1.5]}``.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-5-nano": (0.05, 0.40),    "gpt-5-mini": (0.25, 2.00),    "gpt-5": (1.25, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),  "gpt-4.1-mini": (0.40, 1.60),  "gpt-4.1": (2.00, 8.00),
    "gpt-4o-mini": (0.15, 0.60),   "gpt-4o": (2.50, 10.00),
    "o4-mini": (1.10, 4.40),       "o3": (2.00, 8.00),            "gpt-3.5-turbo": (0.50, 1.50),
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


def price_of(
    model: str, prices: dict[str, tuple[float, float]] | None = None
) -> tuple[float, float] | None:
    """Dollars per million (prompt, completion) tokens of ``model``, if known."""
    table = {**DEFAULT_PRICES, **(prices or {})}
    name = model.lower().rsplit("/", 1)[-1]
    for prefix in sorted(table, key=len, reverse=True):
        if name.startswith(prefix.lower()):
            p, c = table[prefix]
            return float(p), float(c)
    return None


def cost_of(
    prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None
) -> float | None:
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


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
