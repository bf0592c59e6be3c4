"""Replay's wall time for a long run against the original run's.

A ``--steps``-step agent (each step one ``python`` call that sets and prints a
variable) runs in this process's IPython shell against the scripted server,
which answers over HTTP as a real endpoint would (without its latency); then
``%agent replay`` executes the same run again from its stored replies. Both
are timed around the magic; the replay must make no model request.

Usage: ``python bench/replay.py [--steps 100]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_agent.testing import ScriptedServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    steps = parser.parse_args().steps
    script: list[dict] = [
        {"tool_calls": [{"name": "python", "arguments": {"code": f"v{i} = {i}\nprint(v{i} * 2)"}}]}
        for i in range(steps)
    ]
    script.append({"content": "Done."})
    from IPython.testing.globalipapp import start_ipython

    with tempfile.TemporaryDirectory() as folder, ScriptedServer(script) as server:
        os.environ["JUPYTER_AGENT_STORE"] = os.path.join(folder, "agents.duckdb")
        os.environ["JUPYTER_AGENT_NOTEBOOK"] = os.path.join(folder, "bench.ipynb")
        os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"] = server.url, "sk-bench"
        ip = start_ipython()
        ip.run_line_magic("load_ext", "jupyter_agent")
        line = f"--model scripted --max-steps {steps + 10} --name bench"
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            ip.run_cell_magic("agent", line, "Benchmark: run the python tool until told to stop.")
        original = time.perf_counter() - start
        asked = len(server.requests)
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            ip.run_line_magic("agent", "replay bench")
        replay = time.perf_counter() - start
        report = out.getvalue().strip().splitlines()[-1]
        assert len(server.requests) == asked, "the replay asked the model"
        assert "the same" in report, report
    print(
        f"{steps}-step run: original {original:.2f} s, replay {replay:.2f} s "
        f"({replay / original:.0%}); {asked} model requests, then 0"
    )
    print(report)


if __name__ == "__main__":
    main()
