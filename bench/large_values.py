"""A changed large value and the agent's step: serialized on the step, or while the model is asked.

An in-process IPython shell runs ``%%agent`` against the scripted model server
(a process of its own, every reply ``--delay`` seconds late, as a fast model
is). The agent's first step makes a large value, each of the next ``--steps``
steps changes it in place; every step's code writes the time it starts and
ends to a file. From those times and the server's request log, per step
(median over the steps):

* **tool end → next request**: what the step adds before the model is asked;
* **after the reply, before the next code**: what is left to wait for once the
  reply is in (the step's values must be saved before code runs again);
* **step**: from one step's code to the next, the model's delay included.

Once with :attr:`Recorder.save_later_from` as shipped (values of 8 MiB and more
serialized on a thread while the model is asked) and once with it off (``None``:
serialized on the step, as before), for a 100 MB float64 array and a 1M-row
frame with a string column.

Usage: ``python bench/large_values.py [--steps 5] [--delay 0.5] [--out docs/performance.md]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

VALUES = [
    (
        "100 MB float64 array, one element changed",
        "import numpy as np\nv = np.random.default_rng(0).random(100 * 10**6 // 8)",
        "v[0] += 1",
    ),
    (
        "1M-row frame with a string column, one cell changed",
        "import numpy as np, pandas as pd\n"
        "v = pd.DataFrame({'s': [f'row{i}' for i in range(10**6)], 'k': np.arange(10**6)})",
        "v.iloc[0, 1] += 1",
    ),
]


def code(body: str, times: Path) -> str:
    """``body`` between two lines writing its start and end times to ``times``."""
    stamp = (
        f"with open({str(times)!r}, 'a') as _f: _f.write('{{}} %r\\n' % __import__('time').time())"
    )
    return "\n".join([stamp.format("start"), body, stamp.format("end")])


def serve(script: list[dict], workdir: Path) -> tuple[subprocess.Popen, str]:
    path = workdir / "script.json"
    path.write_text(json.dumps(script))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_agent.testing", "--script", str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def requests(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/_log?brief=1", timeout=10) as r:
        return [e for e in json.load(r) if e["turn"] >= 0]


def measure(ip: Any, make: str, change: str, steps: int, delay: float, later: bool) -> dict:
    from jupyter_agent.loop.checkpoints import Recorder
    from jupyter_agent.namespace import tracking as namespace

    workdir = Path(tempfile.mkdtemp(prefix="large-values-"))
    times = workdir / "times"
    script = [
        {"tool_calls": [{"name": "python", "arguments": {"code": code(make, times)}}]},
        *[
            {
                "tool_calls": [
                    # Each step's own: the same call repeated would be taken for a stuck agent.
                    {"name": "python", "arguments": {"code": code(f"{change}  # {i}", times)}}
                ],
                "delay": delay,
            }
            for i in range(steps)
        ],
        {"content": "Done.", "delay": delay},
    ]
    server, url = serve(script, workdir)
    os.environ.update(
        JUPYTER_AGENT_STORE=str(workdir / "store" / "agents.duckdb"),
        OPENAI_BASE_URL=url,
        OPENAI_API_KEY="sk-test-0123456789abcdef",
    )
    Recorder.save_later_from = namespace.SAVE_LATER_BYTES if later else None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ip.run_cell_magic("agent", "--model scripted --name big", "Change v.")
        asked = [e["time"] for e in requests(url)]
    finally:
        Recorder.save_later_from = namespace.SAVE_LATER_BYTES
        server.terminate()
        server.wait()
        ip.user_ns.pop("v", None)
    marks: dict[str, list[float]] = {"start": [], "end": []}
    for line in times.read_text().splitlines():
        what, at = line.split()
        marks[what].append(float(at))
    start, end = marks["start"], marks["end"]
    assert len(start) == steps + 1 and len(asked) == steps + 2, (len(start), len(asked))
    # Step i's code ends, request i + 1 asks for the next step, whose code starts next.
    to_request = [asked[i + 1] - end[i] for i in range(1, steps + 1)]
    after_reply = [start[i + 1] - asked[i + 1] - delay for i in range(1, steps)]
    step = [start[i + 1] - start[i] for i in range(1, steps)]
    return {
        k: statistics.median(v) * 1000
        for k, v in (("to_request", to_request), ("after_reply", after_reply), ("step", step))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds each reply takes")
    parser.add_argument("--out", type=Path, default=None, help="write the section here")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    import numpy as np
    import pandas as pd
    from agent_steps import shell

    ip = shell()
    ip.run_line_magic("config", "AgentMagics.retry_backoff = 0.01")
    rows = []
    for label, make, change in VALUES:
        for later in (False, True):
            print(f"{label}, saved {'later' if later else 'on the step'}", file=sys.stderr)
            rows.append((label, later, measure(ip, make, change, args.steps, args.delay, later)))
    lines = [
        "## A changed large value and the step",
        "",
        f"Generated by `python bench/large_values.py` (see its docstring): {args.steps} steps "
        f"each changing the value in place, every reply {args.delay:.1f} s late; median "
        f"milliseconds per step. Python {platform.python_version()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}, {platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| value | saved | tool end → next request | after the reply, before the next code "
        "| step (model delay included) |",
        "|---|---|---:|---:|---:|",
    ]
    for label, later, r in rows:
        how = "while the model is asked" if later else "on the step (before)"
        lines.append(
            f"| {label} | {how} | {r['to_request']:.1f} | {r['after_reply']:.1f} "
            f"| {r['step']:.0f} |"
        )
    lines += [
        "",
        "Durability point: a step whose changed values are saved while the model is asked is "
        "durable when its `tool_result` checkpoint is written, after those values' files are "
        "(fsynced) and before the model's reply is checkpointed or any code runs again. "
        "Killed before, the step is in flight, as during its tool call: the resume runs it "
        "again (python calls are at-least-once) on the values the step before saved.",
    ]
    from report import publish

    publish(args.out, "large-values", "\n".join(lines))


if __name__ == "__main__":
    main()
