"""The user-facing words: one definition, and every surface speaking it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_agent import vocab
from jupyter_agent.core import state
from jupyter_agent.views import render
from jupyter_agent.vocab import Kind, Status, clipped

ROOT = Path(__file__).resolve().parents[1]


def test_the_lab_status_type_is_the_vocabulary() -> None:
    source = (ROOT / "labextension" / "src" / "api.ts").read_text()
    match = re.search(r"export type AgentStatus\s*=([^;]*);", source)
    assert match, "labextension/src/api.ts has no AgentStatus type"
    declared = re.findall(r"'([a-z_]+)'", match.group(1))
    assert sorted(declared) == sorted(s.value for s in Status)


def test_the_shared_statuses_and_kinds() -> None:
    assert [s.value for s in Status] == [
        "running", "done", "interrupted", "awaiting_approval", "error", "limit",
        "budget", "stuck", "stalled",
    ]  # fmt: skip
    assert {k.value for k in Kind} == {
        "start", "fork", "resume", "model", "tool_call", "tool_result", "approval",
        "interrupted", "error", "limit", "compaction", "budget", "stuck",
    }  # fmt: skip
    assert all(s.label() for s in Status) and all(k.label() and k.icon() for k in Kind)
    # The old names stay importable and compare like the stored strings.
    assert state.DONE == "done" and state.STALLED == "stalled" and state.BUDGET == "budget"
    assert "limit" in vocab.RESUMABLE and "stuck" in vocab.RESUMABLE
    assert "done" not in vocab.RESUMABLE and f"{state.AWAITING_APPROVAL}" == "awaiting_approval"


@pytest.mark.parametrize(
    ("status", "steps", "info", "idle", "text"),
    [
        ("running", 2, None, None, "running"),
        ("done", 3, None, None, "done after 3 steps"),
        ("done", 1, None, None, "done after 1 step"),
        ("interrupted", 3, None, None, "interrupted at step 3"),
        ("interrupted", 0, None, None, "interrupted before the first step"),
        ("awaiting_approval", 2, None, None, "waiting for approval"),
        ("error", 4, None, None, "paused after an error at step 4"),
        ("limit", 30, None, None, "stopped at the step limit after 30 steps"),
        ("budget", 9, {"spent": 48210, "budget": 50000}, None,
         "paused at the budget: 48,210 of 50,000 tokens"),
        ("budget", 9, {"spent": 1, "budget": None, "cost": 0.52, "budget_cost": 0.5}, None,
         "paused at the budget: $0.52 of $0.50"),
        ("budget", 9, {}, None, "paused at the budget"),
        ("stuck", 5, {"reason": "the same reply 3 times"}, None, "stuck: the same reply 3 times"),
        ("stalled", 5, None, 17 * 60 + 20, "stalled: no checkpoint for 17 min"),
        ("stalled", 5, None, None, "stalled: no checkpoint for a long time"),
        ("paused_somehow", 1, None, None, "paused somehow"),  # a newer version's status
    ],
)  # fmt: skip
def test_status_sentences(
    status: str, steps: int, info: dict | None, idle: float | None, text: str
) -> None:
    assert vocab.status_text(status, steps, info, idle=idle) == text
    # The cell output and %agent list speak through render, with the same words.
    assert render.status_text(status, steps, info, idle=idle) == text


def test_checkpoint_sentences() -> None:
    info = {"strategy": "trim", "before_tokens": 41200, "after_tokens": 9800}
    assert vocab.checkpoint_text("compaction", info) == (
        "context compacted: 41,200 → 9,800 tokens (trim)"
    )
    assert vocab.checkpoint_text("model", info) == ""
    assert vocab.duration(45) == "45 s" and vocab.duration(3 * 3600 + 300) == "3 h 5 min"


def test_counting_steps_follows_forks() -> None:
    model_steps = {"parent": [1, 4, 7], "fork": [9]}
    assert vocab.history_steps([("parent", None)], model_steps) == 3
    assert vocab.history_steps([("parent", 4), ("fork", None)], model_steps) == 3
    assert vocab.history_steps([("parent", 3), ("fork", None)], model_steps) == 2
    assert vocab.count_steps([{"kind": "model"}, {"kind": "tool_call"}, {"kind": "model"}]) == 2


def test_plan_and_ledger() -> None:
    plan = vocab.plan_progress(
        [{"title": "a", "status": "done"}, {"title": "b", "status": "pending"}, "junk"]
    )
    assert plan is not None and (plan["text"], plan["total"]) == ("1/2", 2)
    assert vocab.plan_progress("not a list") is None
    rows = [
        {"tokens": 12, "info": {"usage": {"prompt_tokens": 10, "completion_tokens": 2}}},
        {"tokens": 0},
        {"tokens": 0, "kind": "resume", "info": {"saved_tokens": 12}},
    ]
    assert vocab.ledger(rows) == {
        "tokens": 12,
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": None,
        "saved_tokens": 12,
    }


def test_the_vocabulary_imports_nothing_heavy() -> None:
    code = (
        "import sys, jupyter_agent.vocab\n"
        "heavy = {'duckdb', 'dill', 'openai', 'IPython', 'anywidget'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_ledger_adds_cached_tokens_and_priced_costs() -> None:
    rows = [
        {"tokens": 9, "info": {"usage": {"prompt_tokens": 8, "cached_tokens": 6}, "cost_usd": 0.5}},
        {"tokens": 3, "info": {"usage": {"prompt_tokens": 2, "cache_write_tokens": 2}}},
    ]
    total = vocab.ledger(rows)
    assert (total["cached_tokens"], total["cache_write_tokens"], total["cost_usd"]) == (6, 2, 0.5)
    both = vocab.added(total, vocab.ledger([{"info": {"cost_usd": 0.25}}]))
    assert both["cost_usd"] == 0.75 and both["tokens"] == 12
    assert vocab.cache_hit_rate(10, 6) == 0.6 and vocab.cache_hit_rate(0, 0) is None


# -- one vocabulary in every message ---------------------------------------------------

#: A checkpoint's number written as a step ("⚠ step 9: …", "rewound to step 6").
_STEP_NUMBER = re.compile(r"\bstep (?:\{|\$\{)(?!steps\b)")


def test_a_checkpoint_number_is_never_called_a_step() -> None:
    sources = [*(ROOT / "jupyter_agent").rglob("*.py"), *(ROOT / "jupyter_agent").rglob("*.js")]
    sources += (ROOT / "labextension" / "src").glob("*.ts")
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _STEP_NUMBER.search(line)
    ]
    assert not found, "\n".join(found)


def test_token_counts_have_one_format() -> None:
    assert vocab.tokens(1658) == "1,658 tokens" and vocab.tokens(1) == "1 token"
    info = {"strategy": "trim", "before_tokens": 41200, "after_tokens": 9800}
    assert vocab.tokens(41200).split()[0] in vocab.checkpoint_text("compaction", info)
    # The timeline and the JupyterLab extension write them as the Python side does.
    js = (ROOT / "jupyter_agent" / "kernel" / "static" / "timeline.js").read_text()
    assert '"~"' not in js and " tok`" not in js and 'toLocaleString("en-US")' in js
    for name in ("agents.ts", "panel.ts"):
        ts = (ROOT / "labextension" / "src" / name).read_text()
        assert "${agent.tokens} tokens" not in ts, name


def test_a_budget_pause_says_what_the_next_step_was_estimated_at() -> None:
    info = {"spent": 0, "budget": 800, "next": 1234}
    assert vocab.budget_text(info) == (
        "paused at the budget: 0 of 800 tokens; the next step was estimated at 1,234 tokens"
    )
    cost = {"cost": 0.5, "budget_cost": 0.6, "next_cost": 0.25, "next": 900}
    assert vocab.budget_text(cost) == (
        "paused at the budget: $0.50 of $0.60; the next step was estimated at $0.25"
    )
    assert vocab.budget_text({"spent": 1, "budget": 2}) == "paused at the budget: 1 of 2 tokens"


def test_a_child_agents_lines_carry_its_name() -> None:
    import io

    out = io.StringIO()
    child = render.TextEvents(out, label="helper")
    child.info("↳ looked it up")
    child.text("The answer\nis 42")
    child.notice("slow")
    assert out.getvalue().splitlines() == [
        "[helper] ↳ looked it up",
        "[helper] The answer",
        "[helper] is 42",
        "[helper] ⚠ slow",
    ]


def test_a_clipped_line_keeps_its_limit_and_says_it_was_cut() -> None:
    assert clipped("abc", 3) == "abc"
    assert clipped("abcd", 3) == "ab…" and len(clipped("x" * 500, 48)) == 48
