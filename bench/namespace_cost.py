"""Per-step cost of namespace checkpoints, before and after change detection by fingerprint.

A namespace holds a 100 MB float64 numpy array, a 1M-row numeric pandas
DataFrame (8 columns) and a few small values; everything is saved once, then
each scenario runs one step's code and times only the namespace work that
follows it (the code itself is not timed):

* **before** — what was done until now: serialize every name the step's code
  binds or uses as an attribute/subscript base (``namespace.touched_names``),
  hash it, compare with the saved hash. Values changed indirectly are missed.
* **after** — :class:`jupyter_agent.namespace.Tracker`: fingerprint every user
  name, serialize only the changed ones and their alias groups. The first step
  of an execution that resumes a run also re-checks every saved name once
  (serializes it, stores it only if its bytes changed).

Each figure is the median of ``--repeat`` runs, in milliseconds. A last table
gives the fingerprint cost of single values, a 1M-row string column included.

Usage: ``python bench/namespace_cost.py [--repeat 7]`` (needs numpy and pandas).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_agent import namespace  # noqa: E402

ROWS = 1_000_000
#: The first step of an execution that resumes a run re-checks every saved name once.
RESUMED = "first step after a resume"
SCENARIOS = [
    ("step not naming the big values", "x = 1"),
    ("step reading the big values", "m = arr.mean()\nn = len(df)"),
    ("small value mutated by a function", "random.shuffle(items)"),
    ("array changed in place (one element)", "arr[0] += 1"),
    ("frame changed in place (one cell)", "df.iloc[0, 0] += 1"),
    (RESUMED, "x = 2"),
]


def make_namespace() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ns: dict[str, Any] = {
        "np": np,
        "pd": pd,
        "arr": rng.random(100 * 10**6 // 8),
        "df": pd.DataFrame({f"c{i}": rng.random(ROWS) for i in range(7)} | {"k": np.arange(ROWS)}),
        "items": list(range(100)),
        "config": {"alpha": 0.1, "names": ["a", "b"]},
    }
    exec("import random", ns)
    return ns


def before(ns: dict[str, Any], code: str, known: dict[str, str]) -> namespace.Snapshot:
    """The former per-step work: serialize and hash each name the code touches."""
    snap = namespace.Snapshot()
    for name in sorted(namespace.touched_names(code)):
        if not namespace.is_user_name(name) or name not in ns:
            continue
        data = namespace.serialize(ns[name])
        namespace.contains_secret(data, [])
        h = namespace.digest(data)
        if known.get(name) != h:
            snap.vars[name], snap.blobs[h] = h, data
    return snap


def known_hashes(ns: dict[str, Any]) -> dict[str, str]:
    snap = namespace.Tracker().snapshot(ns, {}, [])
    return {n: h for n, h in snap.vars.items() if h}


def timed(fn: Callable[..., object], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - start) * 1000, result


def scenario_costs(label: str, code: str, repeat: int) -> tuple[float, float, list[str]]:
    ns = make_namespace()
    known = known_hashes(ns)
    old, new = [], []
    saved: list[str] | None = None
    for _ in range(repeat):
        tracker = namespace.Tracker()
        tracker.begin(ns, known if label == RESUMED else ())
        exec(code, ns)
        ms, _ = timed(before, ns, code, dict(known))
        old.append(ms)
        ms, snap = timed(tracker.snapshot, ns, known, [])
        new.append(ms)
        if saved is None:  # what the first run saved (later runs find it unchanged)
            saved = sorted(n for n, h in snap.vars.items() if h)
        known.update(snap.vars)
    return statistics.median(old), statistics.median(new), saved or []


def value_costs(repeat: int) -> list[tuple[str, float]]:
    ns = make_namespace()
    strings = pd.DataFrame({"s": [f"row{i}" for i in range(ROWS)]})
    values = [
        ("100 MB float64 array", ns["arr"]),
        ("1M-row numeric DataFrame (8 columns, 64 MB)", ns["df"]),
        ("1M-row DataFrame, one string column", strings),
        ("list of 100 ints", ns["items"]),
    ]
    out = []
    for label, value in values:
        runs = [timed(namespace.fingerprint, value)[0] for _ in range(repeat)]
        out.append((label, statistics.median(runs)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"{platform.machine()}; median of {args.repeat} runs, milliseconds per step.\n"
    )
    print("| step | before (ms) | after (ms) | saved (first run) |")
    print("|---|---:|---:|---|")
    for label, code in SCENARIOS:
        old, new, saved = scenario_costs(label, code, args.repeat)
        print(f"| {label}: `{code.splitlines()[0]}` | {old:.1f} | {new:.1f} | {', '.join(saved)} |")
    print("\n| value | fingerprint (ms) |")
    print("|---|---:|")
    for label, ms in value_costs(args.repeat):
        print(f"| {label} | {ms:.2f} |")


if __name__ == "__main__":
    main()
