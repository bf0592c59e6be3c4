"""Cached tokens in the ledger, priced: per model call, per run, in every list, in a $ budget.

Runs are made by the real loop in the test process's shell against the scripted
server, whose simulated OpenAI prompt cache serves each request's prefix shared
with the previous one; the command line runs as a subprocess.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from jupyter_agent.core.budget import DEFAULT_PRICES, Price, cost_of, price_of
from jupyter_agent.errors import BudgetError
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer
from jupyter_agent.views import listing
from jupyter_agent.views.timeline import Timeline

from .test_cli import cli

#: A task long enough that every request is over the 1,024 tokens a cache needs.
TASK = "Work through the steps. " + "Context for the task. " * 250
#: Dollars per million prompt, completion and cached prompt tokens.
PRICES = "{'scripted': [10.0, 30.0, 1.0]}"


def script(steps: int) -> list[dict[str, Any]]:
    calls = [
        {"tool_calls": [{"name": "python", "arguments": {"code": f"print('x' * 880, {i})"}}]}
        for i in range(steps)
    ]
    return [*calls, {"content": "done"}]


@pytest.fixture
def priced(ip: Any) -> Any:
    ip.run_line_magic("config", f"AgentMagics.prices = {PRICES}")
    yield ip
    ip.run_line_magic("config", "AgentMagics.prices = {}")


def run_agent(shell: Any, scripted: ScriptedServer, steps: int, options: str) -> None:
    """Run the task as a scripted agent with ``options`` over ``steps`` cached-prompt steps."""
    scripted.set_script(script(steps))
    shell.run_cell_magic("agent", f"--model scripted {options}", TASK)


def model_rows(store_path: Path) -> list[Any]:
    store = Store(store_path)
    run = store.runs()[-1]
    return [c for c in store.checkpoints(run.run_id) if c.kind == "model"]


def test_prices_have_cache_rates_and_a_bad_price_is_refused() -> None:
    assert price_of("gpt-4o-2024-08-06") == Price(2.5, 10.0, 1.25, 2.5)
    assert price_of("openai/gpt-4.1-mini") == Price(0.4, 1.6, 0.1, 0.4)
    assert price_of("claude-sonnet-4-5") == Price(3.0, 15.0, 0.3, 3.75)
    assert price_of("claude-opus-4-1") == Price(15.0, 75.0, 1.5, 18.75)
    assert price_of("claude-haiku-4-5-20251001") == Price(1.0, 5.0, 0.1, 1.25)
    assert all(price_of(name) is not None for name in DEFAULT_PRICES)
    # Two numbers: cached and written tokens cost what prompt tokens cost.
    assert price_of("mine", {"mine": [1, 2]}) == Price(1.0, 2.0, 1.0, 1.0)
    # 1,000 prompt tokens of which 800 cached and 100 written, 10 completion tokens.
    cost = cost_of(1000, 10, Price(1.0, 2.0, 0.1, 1.25), 800, 100)
    assert cost is not None and math.isclose(cost, (100 * 1 + 800 * 0.1 + 100 * 1.25 + 20) / 1e6)
    with pytest.raises(BudgetError, match="'mine' must be 2 to 4 dollar amounts"):
        price_of("mine-2", {"mine": [1]})
    with pytest.raises(BudgetError, match="must be 2 to 4"):
        price_of("mine", {"mine": [1, "two"]})


def test_each_model_call_stores_its_cached_tokens_and_cost(
    priced: Any, scripted: ScriptedServer, store_path: Path
) -> None:
    run_agent(priced, scripted, 4, "--name cache")
    rows = model_rows(store_path)
    assert len(rows) == 5
    price = Price(10.0, 30.0, 1.0, 10.0)
    for row, sent in zip(rows, scripted.usage_log, strict=True):
        usage = row.info["usage"]
        assert usage["cached_tokens"] == sent["prompt_tokens_details"]["cached_tokens"]
        expected = cost_of(usage["prompt_tokens"], usage["completion_tokens"], price,
                           usage["cached_tokens"])  # fmt: skip
        assert expected is not None and math.isclose(row.info["cost_usd"], expected, rel_tol=1e-6)
    assert rows[0].info["usage"]["cached_tokens"] == 0  # the first request: nothing seen yet
    assert all(r.info["usage"]["cached_tokens"] >= 1024 for r in rows[1:])


def test_every_list_and_the_timeline_show_cached_tokens_and_cost(
    priced: Any, scripted: ScriptedServer, store_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_agent(priced, scripted, 3, "--name shown")
    rows = model_rows(store_path)
    cached = sum(r.info["usage"]["cached_tokens"] for r in rows)
    prompt = sum(r.info["usage"]["prompt_tokens"] for r in rows)
    cost = sum(r.info["cost_usd"] for r in rows)
    assert cached > 0
    (_, row), = listing.store_agents(Store(store_path))  # fmt: skip
    assert row["cached_tokens"] == cached and math.isclose(row["cost_usd"], cost, rel_tol=1e-5)
    assert row["cache_hit_rate"] == round(cached / prompt, 4)
    capsys.readouterr()
    priced.run_line_magic("agent", "list")
    out = capsys.readouterr().out
    assert f"${cost:,.4f}" in out and f"({cached / prompt:.0%} cached)" in out
    listed = cli("list", "--json", env={"JUPYTER_AGENT_STORE": str(store_path)})
    assert listed.returncode == 0, listed.stderr
    (agent,) = json.loads(listed.stdout)["agents"]
    assert agent["cached_tokens"] == cached and math.isclose(agent["cost_usd"], cost, rel_tol=1e-5)
    printed = cli("list", env={"JUPYTER_AGENT_STORE": str(store_path)})
    assert f"${cost:,.4f}" in printed.stdout
    store = Store(store_path)
    timeline = Timeline(store, store.runs()[-1].notebook, "shown")
    timeline.load()
    summary = timeline.summary()
    assert summary["cached_tokens"] == cached and math.isclose(summary["cost_usd"], cost)
    assert summary["cache_hit_rate"] == round(cached / prompt, 4)


def test_an_unpriced_model_costs_nothing_known(
    ip: Any, scripted: ScriptedServer, store_path: Path
) -> None:
    run_agent(ip, scripted, 1, "--name free")
    assert all("cost_usd" not in r.info for r in model_rows(store_path))
    (_, row), = listing.store_agents(Store(store_path))  # fmt: skip
    assert row["cost_usd"] is None and listing.cost(row) == "-"


def test_a_dollar_budget_counts_the_cached_rate(
    priced: Any, scripted: ScriptedServer, store_path: Path
) -> None:
    run_agent(priced, scripted, 30, "--name dollars --budget $0.25")
    store = Store(store_path)
    cps = store.checkpoints(store.runs()[-1].run_id)
    assert cps[-1].status == "budget"
    spent = sum(c.info.get("cost_usd", 0.0) for c in cps)
    # What the budget counted is what the calls cost, cached tokens at their rate.
    assert math.isclose(cps[-1].info["cost"], spent, rel_tol=1e-6)
    steps = sum(1 for c in cps if c.kind == "model")
    # At the full prompt rate the same $0.25 would have paid for far fewer steps.
    full = Price(10.0, 30.0, 10.0, 10.0)
    at_full = [
        cost_of(c.info["usage"]["prompt_tokens"], c.info["usage"]["completion_tokens"], full)
        for c in cps
        if c.kind == "model"
    ]
    assert sum(x or 0.0 for x in at_full) > 0.25 and steps > 8


def test_a_bad_price_is_refused_before_anything_is_written(
    ip: Any, scripted: ScriptedServer, store_path: Path
) -> None:
    from IPython.core.error import UsageError

    scripted.set_script(script(1))
    ip.run_line_magic("config", "AgentMagics.prices = {'scripted': 5}")
    try:
        with pytest.raises(UsageError, match="'scripted' must be 2 to 4 dollar amounts"):
            ip.run_cell_magic("agent", "--model scripted --name badprice", TASK)
    finally:
        ip.run_line_magic("config", "AgentMagics.prices = {}")
    assert not scripted.requests
    assert not store_path.exists() or Store(store_path).runs() == []
