"""The harness's own time per step in a real kernel, with its timeline displayed.

The per-step half of ``bench/kernel_overhead.py``, for working on it: the same
harness kernel (``%%agent`` against the scripted server in a process of its
own, each step a ``python`` call printing 975 bytes, the timeline widget
displayed, the probes of ``kernel_overhead.PROBE`` installed), in each
durability mode (``sync``: one ``fdatasync`` per step; ``process``: none), at
``--steps`` and, with ``--long``, at 10,000 steps. No bare loop: the harness's
own time is what is left of a step once the model call and the tool (the work
any loop does) are taken out, measured three ways:

* **from outside**: the gap between two model requests in the scripted server's
  log, less the tool and the model call as timed in the kernel (as
  ``kernel_overhead.py`` reports it);
* **in the kernel, wall**: ``perf_counter`` from one model request's start to the
  next's, less the model calls and the tool;
* **in the kernel, CPU**: the same with the kernel's main thread's CPU time
  (``time.thread_time``), which waits on neither the disk nor other processes: on
  a shared machine the figure that says what the package costs. The process's CPU
  time (all its threads: the timeline's flusher, ipykernel's IOPub thread) beside it.

``--tree DIR`` (repeatable) runs the same kernels on the package found in DIR
first (another checkout: ``git archive <commit> jupyter_agent | tar -x -C DIR``),
so a change is compared side by side in one run, each mode's trees one after
the other. ``--profile`` adds a cProfile of this tree's harness kernel at
``--steps`` (``sync``), enabled only outside the model call and the tool.

Usage: ``python bench/step_overhead.py [--steps 500] [--long] [--tree DIR] [--profile]
[--out docs/performance.md]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_steps import PROMPT, scripted  # noqa: E402
from kernel_overhead import (  # noqa: E402
    PROBE,
    WINDOW,
    TurnScript,
    env_for,
    gaps,
    kernel,
    log,
    run_to_end,
)

TARGET_MS = 1.0
MODES = ("sync", "process")
#: The parts of a step shown apart (p50 per step of the main thread's CPU time in each).
PARTS = (
    "Recorder.checkpoint",
    "  JournalWriter.append",
    "  LiveEvents.checkpoint",
    "    TimelineWidget.add",
    "Watch.before",
    "Watch.after",
    "Tracker.snapshot",
    "Window.view",
)
#: The functions the profile lists by cumulative time (a regular expression): the package's.
PROFILED = r"jupyter_agent/(?!store/duckdb/fold)"
#: Collected in the kernel after the run: per-step clocks and parts, without the RSS.
COLLECT = '{"at": _kb["at"], "parts": _kb["parts"], "cpu": _kb["cpu"]}'
PROFILE_ON = "import cProfile as _cp\n_kb_prof[0] = _cp.Profile()\n_kb_prof[0].enable()"
PROFILE_OUT = (
    "_kb_prof[0].disable()\nimport pstats as _ps, io as _pio\n_pout = _pio.StringIO()\n"
    "_ps.Stats(_kb_prof[0], stream=_pout).sort_stats('tottime').print_stats(20)\n"
    "_ps.Stats(_kb_prof[0], stream=_pout).sort_stats('cumulative').print_stats(__PROFILED__, 25)\n"
    "print(_pout.getvalue())"
)


def probe_code(parts: bool) -> str:
    """The kernel's probe; without ``parts`` it times only the model call and the tool (each
    part's timer costs the step a few microseconds)."""
    if parts:
        return PROBE
    theirs = ('"model call")', '"tool (run_python)")')
    return "\n".join(
        line
        for line in PROBE.splitlines()
        if not line.startswith("_kb_wrap(") or line.endswith(theirs)
    )


def run(
    steps: int,
    workdir: Path,
    tree: Path,
    durability: str,
    profile: bool = False,
    parts: bool = True,
) -> dict[str, Any]:
    """One harness run of ``steps`` steps on the package in ``tree``; per-step figures."""
    cwd = workdir / f"{tree.name}-{durability}-{steps}-{profile}-{parts}"
    cwd.mkdir(parents=True)
    setup = [
        probe_code(parts),
        "%load_ext jupyter_agent",
        f"%config AgentMagics.durability = {durability!r}",
    ]
    if profile:
        setup.append(PROFILE_ON)
    cell = f"%%agent --model scripted --max-steps {steps + 10}\n{PROMPT}"
    with scripted(TurnScript(steps)) as server:
        k = kernel({**env_for(server, cwd), "PYTHONPATH": str(tree)}, cwd, *setup)
        try:
            probe = run_to_end(k, cell, steps, COLLECT)
            out = PROFILE_OUT.replace("__PROFILED__", repr(PROFILED))
            text = k.run(out, timeout=120).stdout if profile else ""
        finally:
            k.shutdown()
        requests = server.requests()
    n = min(steps, len(probe["at"]) - 1)

    def part(table: dict[str, dict[str, float]], label: str) -> list[float]:
        values = table.get(label, {})
        return [values.get(str(i), 0.0) for i in range(1, n + 1)]

    at = probe["at"]
    model, model_cpu = part(probe["parts"], "model call"), part(probe["cpu"], "model call")
    tool, tool_cpu = (
        part(probe["parts"], "tool (run_python)"),
        part(probe["cpu"], "tool (run_python)"),
    )
    theirs = [m + t for m, t in zip(model, tool, strict=True)]
    theirs_cpu = [m + t for m, t in zip(model_cpu, tool_cpu, strict=True)]
    return {
        "outside": [g - x for g, x in zip(gaps(requests)[:n], theirs, strict=False)],
        "wall": [at[i + 1][0] - at[i][0] - theirs[i] for i in range(n)],
        "cpu": [at[i + 1][1] - at[i][1] - theirs_cpu[i] for i in range(n)],
        "process_cpu": [at[i + 1][2] - at[i][2] - theirs_cpu[i] for i in range(n)],
        "parts": {label: part(probe["cpu"], label) for label in PARTS},
        "fdatasync": part(probe["parts"], "    os.fdatasync"),
        "profile": text,
    }


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def render(
    command: str,
    runs: list[dict[str, Any]],
    load: list[float],
    profile: str,
    modes: list[str] | None = None,
) -> str:
    def rows() -> Iterator[tuple[dict[str, Any], str, slice]]:
        for r in runs:
            n = len(r["wall"])
            yield r, f"1–{WINDOW}", slice(0, WINDOW)
            yield r, f"{n - WINDOW + 1:,}–{n:,}", slice(-WINDOW, None)

    lines = [
        "## The harness's own time per step, side by side",
        "",
        f"Generated by `{command}` (see its docstring): real kernels, the timeline",
        "displayed, each step a `python` call; the harness's own time is a step less its",
        "model call and its tool. p50 per step over each window of steps.",
        "",
        "| tree | durability | steps | from outside | in the kernel, wall | **main thread CPU** "
        "| process CPU (all threads) | `os.fdatasync` (wall) | ≤ 1 ms (from outside) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r, name, cut in rows():
        cells = [p50(r[key][cut]) for key in ("outside", "wall", "cpu", "process_cpu")]
        mark = "met" if cells[0] * 1000 <= TARGET_MS else "not met"
        lines.append(
            f"| {r['tree']} | `{r['durability']}` | {name} | {ms(cells[0])} | {ms(cells[1])} "
            f"| **{ms(cells[2])}** | {ms(cells[3])} | {ms(p50(r['fdatasync'][cut]))} | {mark} |"
        )
    lines += [
        "",
        "Where the main thread's CPU goes (p50 per step; indented parts are inside the one above):",
        "",
        "| tree | durability | steps | " + " | ".join(f"`{p.strip()}`" for p in PARTS) + " |",
        "| --- | --- | --- |" + " --- |" * len(PARTS),
    ]
    for r, name, cut in rows():
        parts = [ms(p50(r["parts"][p][cut])) for p in PARTS]
        lines.append(f"| {r['tree']} | `{r['durability']}` | {name} | " + " | ".join(parts) + " |")
    lines += [
        "",
        "1-minute load average before and after each run: "
        + ", ".join(f"{x:.2f}" for x in load)
        + " (2 cores; above 1, other work shared the machine and wall times are inflated).",
    ]
    if profile:
        lines += [
            "",
            f"cProfile of this tree's harness kernel (`{(modes if modes else MODES)[0]}`, "
            f"{runs[0]['steps']:,} steps), enabled outside the model call and the tool only: by "
            "own time, then the package's functions by cumulative time (the journal's fold into "
            "DuckDB as the cell ends left out of the second list).",
            "",
        ]
        lines += ["```", profile.strip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--long", action="store_true", help="add runs of 10,000 steps")
    parser.add_argument("--long-steps", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, action="append", default=[])
    parser.add_argument("--mode", choices=MODES, action="append", default=[])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-parts", action="store_true", help="time only the model call and the tool"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.steps < 2 * WINDOW:
        parser.error(f"--steps must be at least {2 * WINDOW}")
    argv_ = sys.argv[1:] if argv is None else argv
    command = " ".join(["python bench/step_overhead.py", *argv_])
    trees = [(f"before ({t.name})", t.resolve()) for t in args.tree] + [("this tree", ROOT)]
    lengths = [args.steps] + ([args.long_steps] if args.long else [])
    load = [os.getloadavg()[0]]
    runs: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="jupyter-agent-steps-"))
    try:
        for steps in lengths:
            for mode in args.mode or MODES:
                for label, tree in trees:
                    log(f"{label}, {mode}, {steps} steps")
                    started = time.perf_counter()
                    r = {"tree": label, "durability": mode, "steps": steps}
                    r.update(run(steps, workdir, tree, mode, parts=not args.no_parts))
                    runs.append(r)
                    load.append(os.getloadavg()[0])
                    log(
                        f"  {time.perf_counter() - started:.0f} s; p50 outside "
                        f"{ms(p50(r['outside'][:WINDOW]))} → {ms(p50(r['outside'][-WINDOW:]))}, "
                        f"CPU {ms(p50(r['cpu'][:WINDOW]))} → {ms(p50(r['cpu'][-WINDOW:]))}"
                    )
        profile = ""
        if args.profile:
            log(f"profiled, {args.steps} steps")
            mode = (args.mode or MODES)[0]
            profile = run(args.steps, workdir, ROOT, mode, profile=True)["profile"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    from report import publish

    publish(args.out, "step-overhead", render(command, runs, load, profile, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
