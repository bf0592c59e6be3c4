"""Cold start: ``%load_ext jupyter_agent`` to the first model request of a new agent.

Each trial starts a fresh ipykernel kernel (``tests/kernels.py``; its own start is not
timed), against the scripted server in a process of its own, and measures:

* **load_ext**: the ``%load_ext jupyter_agent`` cell, execute request to its reply;
* **load_ext → first request**: ``%load_ext`` and a new agent's ``%%agent`` cell sent
  back to back, from the first execute request until the server receives the agent's
  first model request;
* **cell → first request, 1 s after load_ext**: the same agent cell sent one second
  after ``%load_ext`` answered (a user typing the cell), from its execute request.

And, in a fresh interpreter that has imported IPython and ipykernel as a kernel has,
``python -X importtime`` of what ``%load_ext`` imports, of what a new agent's cell adds
before its first model request, and of the timeline widget: their totals and the
largest packages in them.

Each tree is byte-compiled first (``compileall``), as a package installed by pip is:
otherwise every kernel would compile the package's sources again, which is most of
what its imports cost (and is skipped with ``PYTHONDONTWRITEBYTECODE``).

``--tree DIR`` runs the kernels on the package found in DIR (another checkout, e.g.
``git archive <commit> jupyter_agent | tar -x -C DIR``) for a before/after comparison
in one run: ``python bench/cold_start.py --tree /tmp/base --out docs/performance.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_steps import Script, scripted  # noqa: E402
from kernel_overhead import env_for, kernel  # noqa: E402
from report import publish  # noqa: E402

TARGET_S = 0.150
CELL = "%%agent --model scripted --max-steps 1\nCount to three."
LOAD = "%load_ext jupyter_agent"
#: What a kernel has imported before any cell runs.
KERNEL_IMPORTS = "import IPython, ipykernel.ipkernel, ipykernel.zmqshell"
#: What ``%load_ext`` imports.
LOAD_IMPORTS = "jupyter_agent.kernel.magics, jupyter_agent.model.http"
#: What a new agent's cell imports besides, before its first model request: the model
#: client (with the SDK in trees whose client is the SDK's) and the store.
CELL_IMPORTS = "jupyter_agent.model.clients, jupyter_agent.store.duckdb.store"
#: The timeline widget: built once the first request is out (before it, in older trees).
WIDGET_IMPORTS = "jupyter_agent.kernel.widget"


def first_request(k: Any, server: Any, sent: float, logged: int) -> float:
    """Seconds from ``sent`` to the first model request the server logs after ``logged``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        arrived = [r["time"] for r in server.requests(logged) if r["time"] >= sent]
        if arrived:
            return arrived[0] - sent
        k.pump(0.005)
    raise RuntimeError("no model request")


def finished(k: Any, run: Any, sent: float) -> float:
    """Seconds from ``sent`` until ``run`` finished, seen in steps of 5 ms (a kernel's
    ``wait`` looks every 200 ms, too coarse here)."""
    deadline = time.perf_counter() + 120
    while run.status is None:
        if time.perf_counter() > deadline:
            raise RuntimeError("the cell did not finish")
        k.pump(0.005)
    return time.perf_counter() - sent


def trial(tree: Path, workdir: Path, n: int) -> dict[str, float]:
    cwd = workdir / f"trial-{n}"
    cwd.mkdir(parents=True)
    with scripted(Script(1)) as server:
        env = {**env_for(server, cwd), "PYTHONPATH": str(tree)}
        out: dict[str, float] = {}
        k = kernel(env, cwd)
        try:  # back to back
            logged = len(server.requests())
            sent = time.time()
            load = k.start(LOAD)
            cell = k.start(CELL, cell_id="a")
            out["back_to_back"] = first_request(k, server, sent, logged)
            k.wait(load)
            k.wait(cell)
        finally:
            k.shutdown()
        k = kernel(env, cwd)
        try:  # load_ext alone, then the cell a second later
            sent = time.perf_counter()
            done = k.start(LOAD)
            out["load_ext"] = finished(k, done, sent)
            if done.status != "ok":
                raise RuntimeError(done.text)
            time.sleep(1.0)
            logged = len(server.requests())
            sent = time.time()
            cell = k.start(CELL, cell_id="b")
            out["after_pause"] = first_request(k, server, sent, logged)
            k.wait(cell)
        finally:
            k.shutdown()
    return out


def import_profile(tree: Path, before: str = "", modules: str = LOAD_IMPORTS) -> dict[str, Any]:
    """``-X importtime`` of ``modules``, after what a kernel imported already and ``before``."""
    code = (
        f"{KERNEL_IMPORTS}\nfrom IPython.core.interactiveshell import InteractiveShell\n"
        f"{before}\n"
        "import sys, time; sys.stderr.write('MARK\\n'); t = time.perf_counter()\n"
        f"import {modules}\n"
        "print(time.perf_counter() - t)"
    )
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd=tree,  # `-c` puts the working directory first on the path
            check=True,
        )
        runs.append((float(done.stdout.strip()), done.stderr))
    seconds, log = sorted(runs)[1]  # the median run
    lines = log.split("MARK\n", 1)[1].splitlines()
    packages: dict[str, int] = {}
    for line in lines:
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            top = m.group(2).split(".")[0]
            packages[top] = packages.get(top, 0) + int(m.group(1))
    biggest = sorted(packages.items(), key=lambda kv: -kv[1])[:6]
    return {"seconds": seconds, "packages": [(p, us / 1e6) for p, us in biggest]}


NOTE = """\
A new agent's first model request waits for no SDK: Chat Completions requests go
through the package's own client over the standard library (`model/transport.py`),
whose modules a kernel has loaded before any cell. `%load_ext` imports the magics and
starts a warm-up thread that imports that client and, for an `https` endpoint, loads
the CA bundle. The timeline widget (ipywidgets) is built once the first request is out,
in the place its line held above the cell's output. `tests/test_imports.py` pins it: at
a new kernel's first connection to the endpoint, neither openai, anthropic, httpx,
pydantic, DuckDB nor the widget is imported. Both columns are byte-compiled, as installed;
without bytecode (`PYTHONDONTWRITEBYTECODE`, a source checkout) every kernel compiles
the package again, which about triples the package's own import time.

The target is met on a quiet machine. A new agent learns that it has no run yet from the
small files beside the store (`store.summary`, trusted only while the DuckDB file and its
log are as stamped and no journal waits; otherwise DuckDB is read as before), so neither
DuckDB nor, through its connect's progress bar, ipywidgets is imported before the
request: `tests/test_imports.py` pins both. What is left on the path is `%load_ext`'s
imports (the row above: the package's own modules, most of whose self time is creating
their dataclasses, then dill) and the cell's own work.

Every time here grows several-fold on a loaded machine (see the load average above);
the profile's shares hold."""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def summary(trials: list[dict[str, float]], key: str) -> str:
    values = [t[key] for t in trials]
    return f"{ms(statistics.median(values))} ({ms(min(values))}–{ms(max(values))})"


def render(results: dict[str, dict[str, Any]], trials: int) -> str:
    names = list(results)
    head = "| measure | " + " | ".join(names) + " | target |"
    rows = [head, "|" + " --- |" * (len(names) + 2)]

    def row(label: str, cell: Any, target: str = "") -> None:
        rows.append(
            f"| {label} | " + " | ".join(cell(results[n]) for n in names) + f" | {target} |"
        )

    row(
        "`%load_ext jupyter_agent`: execute request → reply",
        lambda r: summary(r["trials"], "load_ext"),
    )
    row(
        "`%load_ext` and a new agent's cell back to back → first model request",
        lambda r: summary(r["trials"], "back_to_back"),
        f"≤ {ms(TARGET_S)}",
    )
    row(
        "the cell sent 1 s after `%load_ext` → first model request",
        lambda r: summary(r["trials"], "after_pause"),
    )
    row("imports of `%load_ext` (`-X importtime`, after IPython and ipykernel)",
        lambda r: ms(r["imports"]["seconds"]))  # fmt: skip
    row(
        "largest packages in them (self time)",
        lambda r: ", ".join(f"{p} {ms(s)}" for p, s in r["imports"]["packages"]),
    )
    for key, label in (
        (
            "cell_imports",
            "imports a new agent's cell adds before its first request (client, store)",
        ),
        ("widget_imports", "imports of the timeline widget (after the first request in this tree)"),
    ):
        row(label, lambda r, key=key: ms(r[key]["seconds"]))
        row(
            "largest packages in them (self time)",
            lambda r, key=key: ", ".join(f"{p} {ms(s)}" for p, s in r[key]["packages"]),
        )
    load = os.getloadavg()[0]
    return (
        "## Cold start\n\n"
        "Generated by `python bench/cold_start.py --tree <before> --out docs/performance.md` "
        f"(see its docstring): {trials} fresh kernels per column; median (min–max). "
        f"1-minute load average at the end: {load:.2f} on {os.cpu_count()} cores.\n\n"
        + "\n".join(rows)
        + "\n\n"
        + NOTE
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="another checkout to measure first (its label: 'before')")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    trees = [("before", t) for t in args.tree] + [("this tree", ROOT)]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _, tree in trees:  # byte-compiled, as installed (see the docstring)
            compile_ = [sys.executable, "-m", "compileall", "-q", str(tree / "jupyter_agent")]
            subprocess.run(compile_, check=True, stdout=subprocess.DEVNULL)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
        for n in range(args.trials):  # the trees in turn, so that both meet the same load
            for label, tree in trees:
                runs[label].append(trial(tree, Path(tmp) / label, n))
        for label, tree in trees:
            results[label] = {
                "trials": runs[label],
                "imports": import_profile(tree),
                "cell_imports": import_profile(tree, f"import {LOAD_IMPORTS}", CELL_IMPORTS),
                "widget_imports": import_profile(
                    tree, f"import {LOAD_IMPORTS}, {CELL_IMPORTS}", WIDGET_IMPORTS
                ),
            }
            print(label, runs[label], file=sys.stderr)
    publish(args.out, "cold-start", render(results, args.trials))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
