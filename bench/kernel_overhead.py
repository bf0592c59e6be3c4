"""Harness overhead per step in a real kernel, against a bare openai tool loop.

Two fresh ipykernel kernels (``tests/kernels.py``, driven through jupyter_client
as JupyterLab does), each against its own scripted server (in a process of its
own) with the same script: ``--steps`` steps, each a ``python`` call printing
975 bytes.

* **harness**: ``%%agent`` with its timeline widget displayed (the default),
  the default context window of the model (so compaction runs as it would).
* **bare loop**: the ``openai`` client streaming Chat Completions with the same
  tool, ``exec`` of the code with its output captured and printed, no
  persistence. Its context follows the harness's thresholds with plain
  truncation: past :data:`~jupyter_agent.core.context.COMPACT_AT` of the same window
  (four characters a token) it drops its oldest steps down to
  :data:`~jupyter_agent.core.context.COMPACT_TO`, so both loops send requests of
  about the same size and the difference is the harness's own work (the
  scripted server counts dropped replies from a ``[N earlier model replies
  summarized]`` line, so both get the same replies).

Per-step time comes from the server's request log: the gap between one model
request and the next, less the tool's own time (``run_python`` in the harness,
the ``exec`` in the bare loop, timed in the kernel). Harness overhead is the
harness's per-step time less the bare loop's. In the harness kernel the parts
of a step (checkpoint, journal append, fdatasync, text output, widget messages,
namespace tracking, state apply, …) are timed by wrappers installed in the
kernel before the run; nothing in the package is edited.

Also: resume latency after ``--resume-steps`` steps (the run stops at
``--max-steps``; a new kernel re-runs the cell; from the execute request to the
next model request) with the number of ``duckdb.connect`` calls before that
request, and the kernel's RSS over the run (psutil).

``--timeline`` measures only the timeline's cost, in one run: the harness with its
widget sent to by each step itself (``widget.FLUSH_EVERY = 0``, as before the
flusher) and with the flusher (the default), at ``--steps``; it prints a table.

``bench/step_overhead.py`` runs these harness kernels alone, in both durability modes,
on this tree and another (``--tree``) side by side, with the kernel's CPU time per step.

Usage: ``python bench/kernel_overhead.py [--steps 500] [--long] [--profile] [--out docs/performance.md]``
(``--long`` adds a 10,000-step harness run for steps 9,951–10,000 and RSS growth, and
the resume after 10,000 steps;
``--resume-only`` measures only the resume and prints its figures, writing nothing; with
``--tree DIR`` (another checkout's package, e.g. ``git archive <commit> jupyter_agent | tar -x
-C DIR``) each step count of ``--resume-steps`` is resumed with both, ``--trials`` times each,
taking turns, and printed as one table:
``python bench/kernel_overhead.py --resume-only --resume-steps 1000 10000 --tree /tmp/base``.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_steps import API_KEY, PROMPT, Script, scripted, step_code  # noqa: E402

from jupyter_agent.core import context  # noqa: E402
from jupyter_agent.testing.wire import turn_of  # noqa: E402

WINDOW = 50
#: The bare loop's context window: the harness's for the scripted model.
BARE_WINDOW = context.default_window("scripted")
TARGET_MS = 3.0
TARGET_RESUME_S = 0.150
TARGET_RESUME_LONG_S = 0.300  # at 10,000 steps
TARGET_RSS_MB = 50.0


class TurnScript(Script):
    """``Script``, with turns counted as the server counts them (compacted histories too)."""

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        if self.server is not None:
            for entry in self.server.requests[-2:]:
                entry.pop("body", None)
        turn = turn_of(messages)
        if turn >= self.steps:
            return {"content": f"Finished after {self.steps} steps."}
        return {"tool_calls": [{"name": "python", "arguments": {"code": step_code(turn + 1)}}]}


#: Installed in the harness kernel before the run: per-step seconds by part, RSS.
PROBE = r"""
import os as _kb_os, time as _kb_time, psutil as _kb_psutil, duckdb as _kb_duckdb
import jupyter_agent.loop.checkpoints as _kb_agent, jupyter_agent.store.duckdb.journal as _kb_journal
import jupyter_agent.loop.compaction as _kb_compaction
import jupyter_agent.model.chat as _kb_model, jupyter_agent.namespace.tracking as _kb_ns
import jupyter_agent.views.render as _kb_render, jupyter_agent.core.state as _kb_state
import jupyter_agent.tools.python as _kb_tools, jupyter_agent.kernel.widget as _kb_widget
import jupyter_agent.core.context as _kb_context, jupyter_agent.kernel.runtime as _kb_runtime
_kb = {"parts": {}, "cpu": {}, "step": [0], "rss": [], "model_at": [], "connects": [], "at": []}
_kb_proc = _kb_psutil.Process()
_kb_prof = [None]  # a cProfile.Profile: enabled outside the model call and the tool only
_kb_clocks = lambda: (_kb_time.perf_counter(), _kb_time.thread_time(), _kb_time.process_time())
def _kb_wrap(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:  # not in this tree (``--tree``): that part is not timed
        return
    parts = _kb["parts"].setdefault(label, {})
    cpu = _kb["cpu"].setdefault(label, {})
    theirs = label in ("model call", "tool (run_python)")  # the work a bare loop does too
    def timed(*args, **kwargs):
        if label == "model call" and len(args) > 2 and args[2]:  # not a summary request
            _kb["step"][0] += 1
            _kb["model_at"].append(_kb_time.time())
            _kb["at"].append(_kb_clocks())  # where a step starts: (wall, thread CPU, process CPU)
            if _kb["step"][0] % 50 == 1:
                _kb["rss"].append((_kb["step"][0], _kb_proc.memory_info().rss))
        prof = _kb_prof[0] if theirs else None
        if prof is not None:
            prof.disable()
        start, start_cpu = _kb_time.perf_counter(), _kb_time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            step = _kb["step"][0]
            parts[step] = parts.get(step, 0.0) + _kb_time.perf_counter() - start
            cpu[step] = cpu.get(step, 0.0) + _kb_time.thread_time() - start_cpu
            if prof is not None:
                prof.enable()
    setattr(owner, name, timed)
_kb_wrap(_kb_model.ChatCompletionsClient, "complete", "model call")
_kb_wrap(_kb_tools, "run_python", "tool (run_python)")
_kb_wrap(_kb_agent.Recorder, "checkpoint", "Recorder.checkpoint")
_kb_wrap(_kb_agent, "encode_delta", "  encode_delta")
_kb_wrap(_kb_journal.JournalWriter, "append", "  JournalWriter.append")
_kb_wrap(_kb_os, "fdatasync", "    os.fdatasync")
_kb_wrap(_kb_state.RunState, "apply", "  RunState.apply")
_kb_wrap(_kb_runtime.LiveEvents, "checkpoint", "  LiveEvents.checkpoint")
_kb_wrap(_kb_render.TextEvents, "checkpoint", "    TextEvents.checkpoint")
_kb_wrap(_kb_widget.TimelineWidget, "add", "    TimelineWidget.add")
_kb_wrap(_kb_widget.TimelineWidget, "write", "TimelineWidget.write")
_kb_wrap(_kb_ns.Tracker, "begin", "Tracker.begin")
_kb_wrap(_kb_ns.Tracker, "snapshot", "Tracker.snapshot")
_kb_wrap(_kb_compaction.Window, "view", "Window.view")
_kb_wrap(_kb_context, "estimate_tokens", "context.estimate_tokens")
_kb_wrap(_kb_compaction.Window, "compact", "Window.compact")
import jupyter_agent.namespace.files as _kb_files, jupyter_agent.views.cell as _kb_cell
import jupyter_agent.store.writer as _kb_writer, jupyter_agent.loop.execution as _kb_exec
_kb_wrap(_kb_files.Watch, "before", "Watch.before")
_kb_wrap(_kb_files.Watch, "after", "Watch.after")
_kb_wrap(_kb_cell.CellEvents, "checkpoint", "CellEvents.checkpoint")
_kb_wrap(_kb_writer.RunWriter, "put_checkpoint", "RunWriter.put_checkpoint")
_kb_wrap(_kb_state.RunState, "pending_tool_call", "RunState.pending_tool_call")
_kb_wrap(_kb_exec, "stuck_reason", "stuck_reason")
_kb_connect = _kb_duckdb.connect
import traceback as _kb_tb
def _kb_counted_connect(*args, **kwargs):
    at = _kb_time.time()
    frames = [f"{_kb_os.path.basename(f.filename)}:{f.name}" for f in _kb_tb.extract_stack(limit=12)[:-1]
              if "jupyter_agent" in f.filename and not f.filename.endswith("store.py")]
    start = _kb_time.perf_counter()
    try:
        return _kb_connect(*args, **kwargs)
    finally:
        _kb["connects"].append((at, _kb_time.perf_counter() - start, " < ".join(frames[::-1][:3])))
_kb_duckdb.connect = _kb_counted_connect
"""

#: The bare loop, run as one cell in a fresh kernel.
BARE = r"""
import contextlib as _b_cl, io as _b_io, json as _b_json, os as _b_os, time as _b_time
import openai as _b_openai, psutil as _b_psutil
_b_client = _b_openai.OpenAI(base_url=_b_os.environ["OPENAI_BASE_URL"], api_key=_b_os.environ["OPENAI_API_KEY"])
_b_tools = [{"type": "function", "function": {"name": "python", "description": "Run Python code.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}]
_b_messages, _b_dropped, _b_chars = [], 0, 0
_b_high, _b_low = __HIGH__, __LOW__  # characters: the harness's thresholds, 4 a token
_b_prompt = {"role": "user", "content": __PROMPT__}
_b = {"tool": [], "model": [], "rss": []}
_b_proc = _b_psutil.Process()
while True:
    if _b_chars > _b_high:
        while _b_chars > _b_low:
            _b_chars -= len(_b_messages[0]["content"] or "") + len(_b_messages[1]["content"])
            del _b_messages[:2]
            _b_dropped += 1
    view = [_b_prompt] + ([{"role": "user", "content": f"[{_b_dropped} earlier model replies summarized]"}] if _b_dropped else []) + _b_messages
    if len(_b["model"]) % 50 == 0:
        _b["rss"].append((len(_b["model"]) + 1, _b_proc.memory_info().rss))
    start = _b_time.perf_counter()
    content, calls = "", {}
    for chunk in _b_client.chat.completions.create(model="scripted", messages=view, tools=_b_tools, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = tc.id or call["id"]
            if tc.function:
                call["function"]["name"] += tc.function.name or ""
                call["function"]["arguments"] += tc.function.arguments or ""
    _b["model"].append(_b_time.perf_counter() - start)
    if not calls:
        print(content)
        break
    _b_messages.append({"role": "assistant", "content": content or None, "tool_calls": list(calls.values())})
    _b_chars += sum(len(c["function"]["arguments"]) + 20 for c in calls.values())
    for call in calls.values():
        start = _b_time.perf_counter()
        code = _b_json.loads(call["function"]["arguments"])["code"]
        out = _b_io.StringIO()
        with _b_cl.redirect_stdout(out):
            exec(code, globals())
        print(out.getvalue(), end="")
        _b["tool"].append(_b_time.perf_counter() - start)
        _b_messages.append({"role": "tool", "tool_call_id": call["id"], "content": out.getvalue()})
        _b_chars += len(out.getvalue())
"""

#: What the breakdown and the resume table point at, and the smallest fixes (production
#: code is not changed by this benchmark).
FINDINGS = """### Findings

What made the harness step flat and cheap, and what is left:

- **Per-step work no longer grows with the conversation.** `context.Sizes` measures each
  history message once and keeps its stub; the view's token estimate is added up as the
  view grows (`context.view_tokens`), and its pinned messages are found once per
  compaction, so the compaction decision costs the same at step 10,000 as at step 10.
- **Two fdatasyncs per step, not three** (`JournalWriter.append(durable=False)`): a model
  reply that calls tools is made durable with the start of its first call, before the
  tool runs; the run's row and a step's values go with the checkpoint written next.
  Tool call start and result each stay durable before the next action, so a crash
  inside a tool call is known as one.
- **The timeline off the step's path.** `TimelineWidget.add` only queues the checkpoint;
  the widget's flusher thread sends what queued, at most every 0.2 s, as one `append`
  comm message (the entries in order and the summary fields they changed) and stores the traits it told
  the frontends without the change notification that would resend them; a followed
  timeline keeps only the tail of its history (`timeline.KEEP`). Progress lines are left
  to the kernel's stream, which sends them every 0.2 s, instead of a flush per line that
  waited for the IOPub thread.
- **A resume reads a window's worth of history, not the run.** A compaction checkpoint
  carries a snapshot of the state before it (without the messages the view no longer
  shows); a resume folds from the latest one (`Store.payloads(since=…)`), and opens
  the store once (a session opened by the cell before its timeline is built, closed
  before the first model request). `%load_ext` builds the SSL context and imports the
  HTTP transport and the timeline in the background.
- **What grows with the view is the model call** (the request's JSON and its parse on
  the server): timed as the model call, in both loops, which send requests of the same
  size.
"""


def kernel(env: dict[str, str], cwd: Path, *setup: str) -> Any:
    from tests.kernels import Kernel

    k = Kernel(env, cwd=cwd)
    for code in setup:
        done = k.run(code)
        if done.status != "ok":
            k.shutdown()
            error = done.error or {}
            raised = f"{error.get('ename', '')}: {error.get('evalue', '')}" if error else ""
            raise RuntimeError(f"{code.splitlines()[0]!r} failed: {raised}\n{done.text[-3000:]}")
    return k


def kernel_json(k: Any, expr: str) -> Any:
    done = k.run(f"import json as _kj; print(_kj.dumps({expr}))", timeout=120)
    return json.loads(done.stdout)


def run_to_end(k: Any, code: str, steps: int, probe: str) -> Any:
    """Run a loop's cell to its end and return what its probe collected."""
    done = k.run(code, cell_id="bench", timeout=3600)
    if f"Finished after {steps} steps." not in done.text:
        raise RuntimeError(done.text[-3000:])
    return kernel_json(k, probe)


def env_for(server: Any, cwd: Path, tree: Path = ROOT) -> dict[str, str]:
    """A kernel's environment: the package measured is the one in ``tree`` (this checkout by
    default), never whichever an installation points at; the kernel runs in a directory of
    its own, so without it the package may not import at all."""
    return {
        "JUPYTER_AGENT_STORE": str(cwd / "agents.duckdb"),
        "JUPYTER_AGENT_NOTEBOOK": str(cwd / "bench.ipynb"),
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": API_KEY,
        "PYTHONPATH": str(tree),
    }


def gaps(requests: list[dict[str, Any]]) -> list[float]:
    """Seconds from each scripted model request to the next (summary requests in between)."""
    times = [r["time"] for r in requests if r["turn"] >= 0 and r.get("scripted")]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def per_step(gap: list[float], tool: list[float]) -> list[float]:
    return [g - t for g, t in zip(gap, tool, strict=False)]


def outside_model(run: dict[str, Any]) -> list[float]:
    """Per step: the gap less the tool and the model call (the loop's own time)."""
    return [p - m for p, m in zip(run["per_step"], run["model"], strict=False)]


def harness(
    steps: int, workdir: Path, profile: bool = False, inline: bool = False
) -> dict[str, Any]:
    """``inline``: each checkpoint is sent to the timeline by its step (no flusher)."""
    cwd = workdir / f"harness-{steps}-{profile}-{inline}"
    cwd.mkdir(parents=True)
    cell = f"%%agent --model scripted --max-steps {steps + 10}\n{PROMPT}"
    setup = [PROBE, "%load_ext jupyter_agent"]
    if inline:
        setup.append("_kb_widget.FLUSH_EVERY = 0")
    with scripted(TurnScript(steps)) as server:
        k = kernel(env_for(server, cwd), cwd, *setup)
        try:
            if profile:
                code = (
                    "import cProfile as _cp, pstats as _ps, io as _pio\n"
                    "_prof = _cp.Profile()\n_prof.enable()\n"
                    f"get_ipython().run_cell_magic('agent', '--model scripted --max-steps {steps + 10}', {PROMPT!r})\n"
                    "_prof.disable()\n_pout = _pio.StringIO()\n"
                    "_ps.Stats(_prof, stream=_pout).sort_stats('tottime').print_stats(30)\n"
                    "_pprof = _pout.getvalue()"
                )
                done = k.run(code, cell_id="bench-profile", timeout=1800)
                text = kernel_json(k, "_pprof")
                return {"profile": text, "ok": f"Finished after {steps} steps." in done.text}
            started = time.time()
            probe = run_to_end(k, cell, steps, "_kb")
        finally:
            k.shutdown()
        requests = server.requests()
    tool = [probe["parts"]["tool (run_python)"].get(str(i), 0.0) for i in range(1, steps + 1)]
    g = gaps(requests)[:steps]
    return {
        "per_step": per_step(g, tool),
        "gaps": g,
        "tool": tool,
        "parts": {
            label: [v.get(str(i), 0.0) for i in range(1, steps + 1)]
            for label, v in probe["parts"].items()
        },
        "model": [probe["parts"]["model call"].get(str(i), 0.0) for i in range(1, steps + 1)],
        "rss": probe["rss"],
        "summaries": sum(1 for r in requests if r.get("summary")),
        "started": started,
    }


def bare(steps: int, workdir: Path) -> dict[str, Any]:
    cwd = workdir / f"bare-{steps}"
    cwd.mkdir(parents=True)
    code = (
        BARE.replace("__HIGH__", str(int(BARE_WINDOW * context.COMPACT_AT * 4)))
        .replace("__LOW__", str(int(BARE_WINDOW * context.COMPACT_TO * 4)))
        .replace("__PROMPT__", repr(PROMPT))
    )
    with scripted(TurnScript(steps)) as server:
        k = kernel(env_for(server, cwd), cwd)
        try:
            probe = run_to_end(k, code, steps, "_b")
        finally:
            k.shutdown()
        requests = server.requests()
    g = gaps(requests)[:steps]
    return {
        "per_step": per_step(g, probe["tool"]),
        "gaps": g,
        "tool": probe["tool"],
        "model": probe["model"],
        "rss": probe["rss"],
    }


def resume(steps: int, workdir: Path, tree: Path = ROOT, trials: int = 1) -> dict[str, Any]:
    """Stop a run at ``--max-steps steps``; time new kernels' re-runs to their model request.

    ``trials`` resumes of the same run, one new kernel each (each runs one step and stops
    at the limit again); the figures are the median trial's."""
    with scripted(TurnScript(steps + 50 + trials)) as server:
        env, cwd = stopped_run(steps, workdir, server, tree)
        return summarized([resume_once(env, cwd, server) for _ in range(trials)])


def stopped_run(steps: int, workdir: Path, server: Any, tree: Path) -> tuple[dict[str, str], Path]:
    """A run of ``steps`` steps stopped at its step limit, in a store of its own."""
    cwd = workdir / f"resume-{steps}-{tree.name}-{time.monotonic_ns()}"
    cwd.mkdir(parents=True)
    env = env_for(server, cwd, tree)
    k = kernel(env, cwd, "%load_ext jupyter_agent")
    first = k.run(
        f"%%agent --model scripted --max-steps {steps}\n{PROMPT}", cell_id="bench", timeout=3600
    )
    k.shutdown()
    if "step limit" not in first.text:
        raise RuntimeError(first.text[-3000:])
    return env, cwd


def resume_once(env: dict[str, str], cwd: Path, server: Any) -> dict[str, Any]:
    """One resume in a new kernel: from the execute request to the next model request."""
    k = kernel(env, cwd, PROBE)
    loaded = time.time()
    k.run("%load_ext jupyter_agent")
    logged = len(server.requests())
    sent = time.time()
    execution = k.start(f"%%agent --model scripted --max-steps 1\n{PROMPT}", cell_id="bench")
    deadline = time.monotonic() + 120
    while True:
        arrived = [r["time"] for r in server.requests(logged) if r["time"] >= sent]
        if arrived or time.monotonic() > deadline:
            break
        k.pump(0.01)
    k.wait(execution, timeout=120)
    probe = kernel_json(k, "_kb")
    k.shutdown()
    if not arrived:
        raise RuntimeError("no model request after resuming")
    first_model = probe["model_at"][0] if probe["model_at"] else arrived[0]
    connects = probe["connects"]
    before = [c for c in connects if sent <= c[0] < first_model]
    callers: dict[str, list[float]] = {}
    for _, seconds, caller in before:
        callers.setdefault(caller or "?", []).append(seconds)
    return {
        "latency": arrived[0] - sent,
        "connects_load": sum(1 for c in connects if loaded <= c[0] < sent),
        "connects_before_model": len(before),
        "connect_seconds": sum(c[1] for c in before),
        "callers": callers,
        "in_kernel": first_model - sent,
    }


def summarized(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median trial (by latency), with every trial's latency and time in the kernel."""
    ordered = sorted(runs, key=lambda r: r["latency"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["latencies"] = [r["latency"] for r in runs]
    median["in_kernel_all"] = [r["in_kernel"] for r in runs]
    return median


def resume_side_by_side(
    steps: list[int], trees: list[tuple[str, Path]], trials: int
) -> dict[tuple[int, str], dict[str, Any]]:
    """Each tree's resume at each step count, in one run: the trials of the trees take turns,
    so a change in the machine's load falls on both alike."""
    out: dict[tuple[int, str], dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="jupyter-agent-kernel-"))
    try:
        for n in steps:
            with scripted(TurnScript(n + 50 + trials)) as server:
                made = {}
                for label, tree in trees:
                    log(f"{label}: a run stopped at {n:,} steps")
                    made[label] = stopped_run(n, workdir, server, tree)
                runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
                for _ in range(trials):
                    for label, _ in trees:
                        runs[label].append(resume_once(*made[label], server))
                        log(f"  {label}: {ms(runs[label][-1]['latency'])}")
                for label, _ in trees:
                    out[(n, label)] = summarized(runs[label])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def side_by_side_table(
    results: dict[tuple[int, str], dict[str, Any]], labels: list[str], command: str
) -> str:
    lines = [
        f"`{command}`; median of each column's resumes (all of them in brackets), "
        f"1-minute load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.",
        "",
        "| steps | tree | execute request → model request | in the kernel | "
        "DuckDB opens before the request | target ≤ 50 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (n, label), r in sorted(results.items(), key=lambda kv: (kv[0][0], labels.index(kv[0][1]))):
        every = ", ".join(f"{x * 1000:.0f}" for x in r["latencies"])
        opens = f"{r['connects_before_model']} ({ms(r['connect_seconds'])})"
        met = "met" if r["latency"] <= 0.050 else "not met"
        lines.append(
            f"| {n:,} | {label} | {ms(r['latency'])} ({every}) | {ms(r['in_kernel'])} | "
            f"{opens} | {met} |"
        )
    return "\n".join(lines) + "\n"


def restore(steps: int, workdir: Path) -> dict[str, Any]:
    """Finish a ``steps``-step run; time a new kernel's re-run of the cell, which restores it.

    From the execute request to the kernel's idle status (the cell calls no model: a finished
    run is restored). The steps bind no variable, so no value's load is in it.
    """
    cwd = workdir / f"restore-{steps}"
    cwd.mkdir(parents=True)
    cell = f"%%agent --model scripted --max-steps {steps + 10}\n{PROMPT}"
    with scripted(TurnScript(steps)) as server:
        env = env_for(server, cwd)
        k = kernel(env, cwd, "%load_ext jupyter_agent")
        run_to_end(k, cell, steps, "1")
        k.shutdown()
        k = kernel(env, cwd, "%load_ext jupyter_agent")
        logged = len(server.requests())
        sent = time.perf_counter()
        done = k.start(cell, cell_id="bench")
        deadline = time.monotonic() + 120
        while done.status is None and time.monotonic() < deadline:
            k.pump(0.002)  # short polls: the kernel's idle status is seen within 2 ms
        seconds = time.perf_counter() - sent
        k.shutdown()
        asked = len(server.requests(logged))
    if f"Finished after {steps} steps." not in done.text:
        raise RuntimeError(done.text[-3000:])
    return {"steps": steps, "latency": seconds, "model_requests": asked}


# -- report ----------------------------------------------------------------------------


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def windows(steps: int) -> list[tuple[str, slice]]:
    out = [(f"1–{WINDOW}", slice(0, WINDOW))]
    out.append((f"{steps - WINDOW + 1:,}–{steps:,}", slice(steps - WINDOW, steps)))
    return out


def rss_growth(rss: list[list[int]]) -> float:
    """MB from the sample at step 51 (after warm-up) to the last."""
    if len(rss) < 3:
        return float("nan")
    return (rss[-1][1] - rss[1][1]) / 2**20


def render(
    command: str,
    steps: int,
    h: dict[str, Any],
    b: dict[str, Any],
    long: dict[str, Any] | None,
    res: dict[str, Any],
    profile: str | None,
    res_long: dict[str, Any] | None = None,
    restored: dict[str, Any] | None = None,
) -> str:
    add_lines: list[str] = []
    add = add_lines.append
    add("## Harness overhead in a real kernel")
    add("")
    add(
        f"Generated by `{command}` (see its docstring). Per-step time = the gap between "
        "consecutive model requests in the scripted server's log, less the tool's own time. "
        "Harness overhead = that less the model call as timed in the kernel (the bare loop's "
        "streaming parse of the same replies is slower than the harness's, so the plain "
        "difference of the two loops' per-step times would understate it). p50 over each "
        "window of steps."
    )
    add("")
    add(
        "| steps | harness: gap − tool | bare loop: gap − tool | **harness overhead** "
        "(gap − tool − model call) | bare loop: gap − tool − model call | target |"
    )
    add("| --- | --- | --- | --- | --- | --- |")
    rows = [(label, sl, h) for label, sl in windows(steps)]
    if long is not None:
        n = len(long["per_step"])
        rows.append((f"{n - WINDOW + 1:,}–{n:,} (10,000-step run)", slice(n - WINDOW, n), long))
    for label, sl, hh in rows:
        bsl = sl if hh is h else slice(-WINDOW, None)
        over = p50(outside_model(hh)[sl])
        mark = "met" if over * 1000 <= TARGET_MS else "**not met**"
        add(
            f"| {label} | {ms(p50(hh['per_step'][sl]))} | {ms(p50(b['per_step'][bsl]))} | "
            f"**{ms(over)}** | {ms(p50(outside_model(b)[bsl]))} | ≤ {TARGET_MS:.0f} ms: {mark} |"
        )
    add("")
    add(
        f"The harness ran with the model's default context window ({h['summaries']} summary "
        f"requests in the {steps}-step run); the bare loop truncates its context at the same "
        f"thresholds of the same {BARE_WINDOW:,}-token window (its requests are as large)."
    )
    add("")
    add("### Where a harness step's time goes")
    add("")
    add(
        "p50 per step of each part, timed in the harness kernel (indented parts are inside "
        "the part above them; the model call and the tool are the same work the bare loop does)."
    )
    add("")
    wins = windows(steps)
    add("| part | " + " | ".join(f"steps {w}" for w, _ in wins) + " |")
    add("| --- | " + " | ".join("---" for _ in wins) + " |")
    add(
        "| gap between model requests | "
        + " | ".join(ms(p50(h["gaps"][sl])) for _, sl in wins)
        + " |"
    )
    for label, values in h["parts"].items():
        name = label.strip()
        indent = "&nbsp;" * (len(label) - len(name)) * 2
        add(f"| {indent}`{name}` | " + " | ".join(ms(p50(values[sl])) for _, sl in wins) + " |")
    rest = [
        g - m - t - c - nb - ns - v
        for g, m, t, c, nb, ns, v in zip(
            h["gaps"],
            h["model"],
            h["tool"],
            h["parts"]["Recorder.checkpoint"],
            h["parts"]["Tracker.begin"],
            h["parts"]["Tracker.snapshot"],
            h["parts"]["Window.view"],
            strict=False,
        )
    ]
    add(
        "| rest (gap − model call − tool − checkpoints − namespace − view) | "
        + " | ".join(ms(p50(rest[sl])) for _, sl in wins)
        + " |"
    )
    add(
        f"| bare loop: model call | {ms(p50(b['model'][:WINDOW]))} | {ms(p50(b['model'][-WINDOW:]))} |"
    )
    add("")
    add("### Resume, DuckDB opens, memory")
    add("")
    add("| measure | result | target | |")
    add("| --- | --- | --- | --- |")
    ok = res["latency"] <= TARGET_RESUME_S
    add(
        f"| resume at {res['steps']:,} steps: execute request → next model request | "
        f"{ms(res['latency'])} | ≤ {TARGET_RESUME_S * 1000:.0f} ms | {'met' if ok else '**not met**'} |"
    )
    add(
        f"| `duckdb.connect` calls before that request | {res['connects_before_model']} "
        f"(and {res['connects_load']} in `%load_ext`) | | |"
    )
    add(f"| DuckDB connect time before that request | {ms(res['connect_seconds'])} | | |")
    for caller, times in sorted(res["callers"].items(), key=lambda kv: -sum(kv[1])):
        add(f"| &nbsp;&nbsp;opened from `{caller}` | {len(times)}× , {ms(sum(times))} | | |")
    if res_long is not None:
        ok = res_long["latency"] <= TARGET_RESUME_LONG_S
        add(
            f"| resume at {res_long['steps']:,} steps: execute request → next model request | "
            f"{ms(res_long['latency'])} ({res_long['connects_before_model']} `duckdb.connect`) | "
            f"≤ {TARGET_RESUME_LONG_S * 1000:.0f} ms | {'met' if ok else '**not met**'} |"
        )
    if restored is not None:
        ok = restored["latency"] <= TARGET_RESUME_S and not restored["model_requests"]
        add(
            f"| restore of a finished {restored['steps']:,}-step run in a new kernel: execute "
            f"request → kernel idle | {ms(restored['latency'])}, {restored['model_requests']} model "
            f"requests | ≤ {TARGET_RESUME_S * 1000:.0f} ms, none | {'met' if ok else '**not met**'} |"
        )
    for name, run in [("harness", h), ("bare loop", b)] + (
        [("harness, 10,000 steps", long)] if long else []
    ):
        growth = rss_growth(run["rss"])
        n = run["rss"][-1][0] if run["rss"] else 0
        target = f"< {TARGET_RSS_MB:.0f} MB over 10,000 steps" if "10,000" in name else ""
        mark = ("met" if growth < TARGET_RSS_MB else "**not met**") if target else ""
        middle = run["rss"][len(run["rss"]) // 2] if run["rss"] else (0, 0)
        add(
            f"| kernel RSS growth, {name} (step 51 → {n:,}) | {growth:.1f} MB "
            f"({middle[1] / 2**20:.0f} MB at step {middle[0]:,}, "
            f"ends at {run['rss'][-1][1] / 2**20:.0f} MB) | {target} | {mark} |"
        )
    add("")
    add(FINDINGS.strip())
    if profile:
        add("")
        add("### cProfile of the harness kernel (top 30 by own time)")
        add("")
        add("```")
        add(profile.strip())
        add("```")
    return "\n".join(add_lines)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def resume_only(steps: list[int], trees: list[Path], trials: int, command: str) -> int:
    """Measure the resume alone: this tree's, and each ``--tree``'s side by side with it."""
    labelled = [(str(t), t) for t in trees] + [("this tree", ROOT)]
    results = resume_side_by_side(steps, labelled, trials)
    print(side_by_side_table(results, [label for label, _ in labelled], command))
    for (n, label), res in results.items():
        print(f"{label}, {n:,} steps: duckdb.connect before the model request:")
        for caller, times in sorted(res["callers"].items(), key=lambda kv: -sum(kv[1])):
            print(f"  {caller}: {len(times)}x, {ms(sum(times))}")
    return 0


def timeline_cost(steps: int, command: str) -> str:
    """The harness with the timeline sent to inline and by its flusher, one after the other."""
    load = [os.getloadavg()[0]]
    workdir = Path(tempfile.mkdtemp(prefix="jupyter-agent-kernel-"))
    try:
        runs = {}
        for label, inline in (("each step sends (before)", True), ("flusher (now)", False)):
            log(f"harness, {steps} steps, {label}")
            runs[label] = harness(steps, workdir, inline=inline)
            load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    parts = ("Recorder.checkpoint", "  JournalWriter.append", "    TimelineWidget.add")
    lines = [
        "### The timeline off the step's path",
        "",
        f"Generated by `{command}`: the harness with its timeline displayed, twice in one",
        "run: each checkpoint sent to the widget by the step that wrote it",
        "(`widget.FLUSH_EVERY = 0`), then only queued, the widget's flusher thread sending",
        "what queued at most every 0.2 s in one message. p50 over each window of steps.",
        "",
        "| timeline | steps | **harness overhead** (gap − tool − model call) | "
        + " | ".join(f"`{p.strip()}`" for p in parts)
        + " |",
        "| --- | --- | --- |" + " --- |" * len(parts),
    ]
    for label, h in runs.items():
        for name, cut in windows(steps):
            cells = [ms(p50(outside_model(h)[cut])), *(ms(p50(h["parts"][p][cut])) for p in parts)]
            lines.append(f"| {label} | {name} | **{cells[0]}** | " + " | ".join(cells[1:]) + " |")
    lines += [
        "",
        "1-minute load average before / between / after the runs: "
        + " / ".join(f"{x:.2f}" for x in load)
        + " (on 2 cores; above 1, other work shared the machine and every figure is inflated).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--long", action="store_true", help="add a 10,000-step harness run")
    parser.add_argument("--long-steps", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument(
        "--resume-steps",
        type=int,
        nargs="+",
        default=[1000],
        help="steps of the resumed run (--resume-only takes several)",
    )
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        default=[],
        help="--resume-only: also resume with the package in this directory, side by side",
    )
    parser.add_argument("--trials", type=int, default=3, help="--resume-only: resumes per column")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the harness")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--resume-only", action="store_true", help="measure only the resume; print, write nothing"
    )
    parser.add_argument(
        "--timeline", action="store_true", help="measure only the timeline's cost; print it"
    )
    args = parser.parse_args(argv)
    if args.timeline:
        from report import publish

        argv_ = sys.argv[1:] if argv is None else argv
        command = " ".join(["python bench/kernel_overhead.py", *argv_])
        publish(args.out, "timeline-cost", timeline_cost(args.steps, command))
        return 0
    if args.resume_only:
        if args.out:
            parser.error("--resume-only writes nothing; drop --out")
        command = " ".join(
            ["python bench/kernel_overhead.py", *(sys.argv[1:] if argv is None else argv)]
        )
        return resume_only(args.resume_steps, args.tree, args.trials, command)
    if args.steps < 2 * WINDOW:
        parser.error(f"--steps must be at least {2 * WINDOW}")
    command = " ".join(
        ["python bench/kernel_overhead.py", *(sys.argv[1:] if argv is None else argv)]
    )
    workdir = Path(tempfile.mkdtemp(prefix="jupyter-agent-kernel-"))
    try:
        log(f"harness, {args.steps} steps")
        h = harness(args.steps, workdir)
        log(f"  p50 {ms(p50(h['per_step'][:WINDOW]))} → {ms(p50(h['per_step'][-WINDOW:]))}")
        log(f"bare loop, {args.steps} steps")
        b = bare(args.steps, workdir)
        log(f"  p50 {ms(p50(b['per_step'][:WINDOW]))} → {ms(p50(b['per_step'][-WINDOW:]))}")
        resume_steps = args.resume_steps[0]
        log(f"resume at {resume_steps} steps")
        res = resume(resume_steps, workdir)
        res["steps"] = resume_steps
        log(f"  {ms(res['latency'])}, {res['connects_before_model']} connects")
        log(f"restore of a finished {resume_steps}-step run")
        restored = restore(resume_steps, workdir)
        log(f"  {ms(restored['latency'])}, {restored['model_requests']} model requests")
        long = res_long = None
        if args.long:
            log(f"harness, {args.long_steps} steps")
            long = harness(args.long_steps, workdir)
            log(f"  p50 late {ms(p50(long['per_step'][-WINDOW:]))}")
            log(f"resume at {args.long_steps} steps")
            res_long = resume(args.long_steps, workdir)
            res_long["steps"] = args.long_steps
            log(f"  {ms(res_long['latency'])}")
        profile = None
        if args.profile:
            log(f"profiled harness, {args.steps} steps")
            profile = harness(args.steps, workdir, profile=True)["profile"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(command, args.steps, h, b, long, res, profile, res_long, restored)
    from report import publish

    publish(args.out, "kernel-overhead", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
