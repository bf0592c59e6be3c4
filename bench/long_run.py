"""Long runs: a 1,000-step agent inside a 16K-token window, against a naive loop.

The scripted server (``jupyter_agent.testing.ScriptedServer``) refuses any
request over its ``context_window`` exactly as OpenAI does, and answers the
harness's summarization requests deterministically. Every step is one
``python`` call whose output is ~0.9 KB, as in the report that motivated this,
and which sets one of 20 variables (so the namespace does not grow with the run).

* Prompt tokens per step: what each model request carried (the server's own
  count, the one its window is checked against), steps 1–100 vs 901–1,000.
* Naive loop: the same conversation sent whole every step (what the harness did
  before compaction): its prompt tokens, computed from the stored full history,
  and the step at which it would have hit the window.
* Compaction: each compaction checkpoint's duration (for a summary, including
  the summarization call).
* Step time early vs late: wall time per step (model call, tool call, three
  checkpoints, compactions amortized), steps 1–100 vs 901–1,000.
* Resume after a kill right after a compaction: a real kernel SIGKILLs itself
  just after a late compaction checkpoint is durable; a new kernel re-runs the
  cell; timed from the execute request to the next model request.

Usage: ``python bench/long_run.py [--steps 1000] [--window 16000] [--out docs/performance.md]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import publish  # noqa: E402

from jupyter_agent.loop.runs import load_state  # noqa: E402
from jupyter_agent.store.duckdb.store import DuckDBStore as Store  # noqa: E402
from jupyter_agent.testing import ScriptedServer  # noqa: E402
from jupyter_agent.testing.wire import prompt_tokens  # noqa: E402
from jupyter_agent.tools.python import TOOLS  # noqa: E402

API_KEY = "sk-bench-0123456789abcdef"


def script(steps: int) -> list[dict[str, Any]]:
    calls = [
        {
            "tool_calls": [
                {"name": "python", "arguments": {"code": f"v{i % 20} = {i}\nprint('x' * 880, {i})"}}
            ]
        }
        for i in range(steps)
    ]
    return [*calls, {"content": f"All {steps} steps done."}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def in_process(steps: int, window: int, workdir: Path) -> dict[str, Any]:
    from IPython.testing.globalipapp import start_ipython

    path = workdir / "inproc" / "agents.duckdb"
    with ScriptedServer(script(steps), context_window=window) as server:
        os.environ.update(
            JUPYTER_AGENT_STORE=str(path),
            JUPYTER_AGENT_NOTEBOOK=str(workdir / "bench.ipynb"),
            OPENAI_BASE_URL=server.url,
            OPENAI_API_KEY=API_KEY,
        )
        ip = start_ipython()
        ip.run_line_magic("load_ext", "jupyter_agent")
        ip.run_line_magic("config", "AgentMagics.timeline = False")
        started = time.perf_counter()
        ip.run_cell_magic(
            "agent",
            f"--model scripted --name long --context-window {window} --max-steps {steps + 10}",
            "Work through the steps.",
        )
        elapsed = time.perf_counter() - started
        requests = list(server.requests)
    store = Store(path)
    run = store.runs()[-1]
    cps = store.checkpoints(run.run_id)
    chat = [
        r for r in requests if r["turn"] >= 0 and r["outcome"] != "error:context_length_exceeded"
    ]
    summaries = [r for r in requests if r.get("summary")]
    sent = [prompt_tokens(r["body"]["messages"], r["body"].get("tools")) for r in chat]
    summary_tokens = [prompt_tokens(r["body"]["messages"]) for r in summaries]
    # The naive loop sends the whole history at every step.
    messages = load_state(store, run).messages
    naive, fails_at, seen = [], None, 0
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            tokens = prompt_tokens(messages[:i], TOOLS)
            naive.append(tokens)
            if fails_at is None and tokens > window:
                fails_at = seen + 1
            seen += 1
    model_times = [c.created_at for c in cps if c.kind == "model"]
    step_wall = [b - a for a, b in zip(model_times, model_times[1:], strict=False)]
    compactions = [c for c in cps if c.kind == "compaction"]
    return {
        "status": cps[-1].status,
        "steps": len(chat),
        "elapsed": elapsed,
        "refused": sum(1 for r in requests if r["outcome"] == "error:context_length_exceeded"),
        "sent": sent,
        "summary_tokens": summary_tokens,
        "naive": naive,
        "naive_fails_at": fails_at,
        "step_wall": step_wall,
        "compactions": compactions,
        "checkpoints": len(cps),
    }


def resume_after_compaction(steps: int, window: int, workdir: Path, nth: int) -> dict[str, Any]:
    """SIGKILL right after the ``nth`` compaction is durable; time the resume in a new kernel."""
    from tests.faults.harness import wait_done_or_dead
    from tests.kernels import Kernel

    cwd = workdir / "kernel"
    cwd.mkdir(parents=True)
    cell = f"%%agent --model scripted --name k --context-window {window} --max-steps {steps + 10}\nWork."
    with ScriptedServer(script(steps), context_window=window) as server:
        env = {
            "JUPYTER_AGENT_STORE": str(cwd / "agents.duckdb"),
            "JUPYTER_AGENT_NOTEBOOK": str(cwd / "bench.ipynb"),
            "OPENAI_BASE_URL": server.url,
            "OPENAI_API_KEY": API_KEY,
        }
        first = Kernel(
            {**env, "JUPYTER_AGENT_CRASH": f"after:checkpoint.compaction:{nth}"}, cwd=cwd
        )
        first.run("%load_ext jupyter_agent\n%config AgentMagics.timeline = False")
        run = first.start(cell, cell_id="k")
        if wait_done_or_dead(first, run, timeout=900):
            raise RuntimeError("the run ended before its compaction " + str(nth))
        first.shutdown()
        killed_at = max(r["turn"] for r in server.requests)
        summaries_before = sum(1 for r in server.requests if r.get("summary"))
        second = Kernel(env, cwd=cwd)
        second.run("%load_ext jupyter_agent\n%config AgentMagics.timeline = False")
        sent_at = time.time()
        resumed = second.start(cell, cell_id="k")
        while not [r for r in server.requests if r["time"] >= sent_at and r["turn"] >= 0]:
            second.pump(0.01)
        arrived = next(r for r in server.requests if r["time"] >= sent_at and r["turn"] >= 0)
        latency = arrived["time"] - sent_at
        resummarized = any(
            r.get("summary") for r in server.requests if r["time"] < arrived["time"]
        ) and (
            sum(1 for r in server.requests if r.get("summary") and r["time"] < arrived["time"])
            > summaries_before
        )
        second.wait(resumed, 900)
        turns = [
            r["turn"]
            for r in server.requests
            if r["turn"] >= 0 and r["outcome"] != "error:context_length_exceeded"
        ]
        second.shutdown()
    return {
        "latency": latency,
        "killed_at": killed_at,
        "resummarized": resummarized,
        "repeated": len(turns) - len(set(turns)),
        "done": f"All {steps} steps done." in resumed.text,
    }


def report(steps: int, window: int, r: dict[str, Any], k: dict[str, Any]) -> str:
    early, late = r["sent"][:100], r["sent"][-100:]
    total = sum(r["sent"]) + sum(r["summary_tokens"])
    naive_total = sum(r["naive"])
    wall_early, wall_late = r["step_wall"][:100], r["step_wall"][-100:]
    comp = r["compactions"]
    kinds: dict[str, int] = {}
    for c in comp:
        kinds[c.info.get("strategy", "?")] = kinds.get(c.info.get("strategy", "?"), 0) + 1
    durations = [c.duration_ms for c in comp]
    share = total / naive_total if naive_total else 0
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    rows = [
        (
            "run",
            f"{r['status']} after {r['steps']} model requests ({r['checkpoints']:,} checkpoints) in {r['elapsed']:.0f} s",
            "completes",
            r["status"] == "done",
        ),
        ("requests refused as too long", str(r["refused"]), "0", r["refused"] == 0),
        (
            "prompt tokens per step, steps 1–100",
            f"p50 {statistics.median(early):,.0f}, max {max(early):,}",
            "",
            None,
        ),
        (
            "prompt tokens per step, steps 901–1,000"
            if steps >= 1000
            else "prompt tokens per step, last 100",
            f"p50 {statistics.median(late):,.0f}, max {max(late):,}",
            f"max ≤ window ({window:,})",
            max(r["sent"]) <= window,
        ),
        (
            "largest request of the run",
            f"{max(r['sent']):,} tokens",
            f"≤ {window:,}",
            max(r["sent"]) <= window,
        ),
        ("total prompt tokens (summaries included)", f"{total:,}", "", None),
        (
            "naive full-history loop",
            f"{naive_total:,} tokens; would hit the window at step {r['naive_fails_at']}",
            "",
            None,
        ),
        ("total / naive", f"{share:.1%}", "≤ 15%", share <= 0.15),
        (
            "compactions",
            ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            + f"; {len(r['summary_tokens'])} summarization requests",
            "",
            None,
        ),
        (
            "compaction checkpoint duration",
            f"p50 {statistics.median(durations):.1f} ms, max {max(durations):.1f} ms"
            if durations
            else "-",
            "",
            None,
        ),
        (
            "step wall time, steps 1–100 / last 100",
            f"p50 {ms(statistics.median(wall_early))} / {ms(statistics.median(wall_late))}",
            "unchanged by compaction",
            statistics.median(wall_late) <= 1.5 * statistics.median(wall_early),
        ),
        (
            f"resume after a SIGKILL right after a compaction (at step {k['killed_at']})",
            f"{ms(k['latency'])} to the next model request; summarized again: {'yes' if k['resummarized'] else 'no'}; repeated steps: {k['repeated']}; completed: {'yes' if k['done'] else 'no'}",
            "no re-summary, no repeat",
            not k["resummarized"] and k["repeated"] == 0 and k["done"],
        ),
    ]
    table = ["| measure | result | target | |", "| --- | --- | --- | --- |"]
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("met" if ok else "**not met**")
        table.append(f"| {name} | {value} | {target} | {mark} |")
    return "\n".join(
        [
            "## Long runs: bounded context",
            "",
            f"Generated by `bench/long_run.py --steps {steps} --window {window}` (see its docstring). "
            f"A {steps:,}-step agent whose every step adds ~0.9 KB of tool output, against the scripted "
            f"server with a {window:,}-token context window, which refuses longer requests the way "
            "OpenAI does. Tokens are the server's count (four characters a token), the one its window "
            "is checked against.",
            "",
            *table,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--window", type=int, default=16_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        r = in_process(args.steps, args.window, workdir)
        nth = max(1, len(r["compactions"]) - 2)
        k = resume_after_compaction(args.steps, args.window, workdir, nth)
    text = report(args.steps, args.window, r, k)
    publish(args.out, "long-run", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
