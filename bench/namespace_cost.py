"""Per-step cost of namespace checkpoints, before and after change detection by fingerprint.

A namespace holds a 100 MB float64 numpy array, a 1M-row numeric pandas
DataFrame (8 columns) and a few small values; everything is saved once, then
each scenario runs one step's code and times only the namespace work that
follows it (the code itself is not timed):

* **before** — what was done until now: serialize every name the step's code
  binds or uses as an attribute/subscript base (``namespace.touched_names``),
  hash it, compare with the saved hash. Values changed indirectly are missed.
* **after** — :class:`jupyter_agent.namespace.tracking.Tracker`: fingerprint every user
  name, serialize only the changed ones and their alias groups. The first step
  of an execution that resumes a run also re-checks every saved name once
  (serializes it, stores it only if its bytes changed).

Each figure is the median of ``--repeat`` runs, in milliseconds. Then, per value
alone in a namespace (a 100 MB float64 array, a 1M-row numeric DataFrame, a
1M-row DataFrame with a string column), the per-step cost of
``Tracker.snapshot`` when the value is unchanged, changed in place, or the step
ran no code in the kernel (an MCP tool, a rejected call), two ways:

* **before** — fingerprints as they were: object arrays (a string column) read
  item by item, every tool step fingerprinted;
* **after** — large object arrays of atoms fingerprinted by their items'
  addresses (the previous fingerprint holds the items alive), no fingerprint
  when no code ran.

A changed value's time includes serializing it (dill) and hashing its bytes,
not writing it: it is written once, a blob file of its own when 1 MiB or more
(fsynced, renamed into place, its directory fsynced) before the ``tool_result``
checkpoint naming it is appended to the run's journal; the value is durable
when that append's fdatasync returns. (From 8 MiB in memory the agent does
this on a thread while the model is asked: ``bench/large_values.py``.) Last, the candidate hashes side by side: for the
100 MB buffer (xxh3-128, which is used, xxh3-64, blake2b, crc32, adler32) and
for the string column (items' reprs, ``str.join``, pandas'
``hash_pandas_object``, the items' addresses).

Usage: ``python bench/namespace_cost.py [--repeat 7] [--out docs/performance.md]`` (needs
numpy and pandas).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xxhash

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_agent.namespace import fingerprint as fingerprints  # noqa: E402
from jupyter_agent.namespace import tracking as namespace  # noqa: E402

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


def strings_frame() -> pd.DataFrame:
    return pd.DataFrame({"s": [f"row{i}" for i in range(ROWS)], "k": np.arange(ROWS)})


#: (value, the code that makes it, the code that changes it in place)
VALUES = [
    ("100 MB float64 array", "v = np.random.default_rng(0).random(100 * 10**6 // 8)", "v[0] += 1"),
    (
        "1M-row numeric DataFrame (8 columns, 64 MB)",
        "v = pd.DataFrame({f'c{i}': np.random.default_rng(i).random(ROWS) for i in range(8)})",
        "v.iloc[0, 0] += 1",
    ),
    (
        "1M-row DataFrame with a string column",
        "v = strings_frame()",
        "t += 1\nv.iloc[0, 0] = f'row{t}!'",  # a new string each time
    ),
]


def step_costs(make: str, change: str, repeat: int, after: bool) -> tuple[float, float, float]:
    """Median ms of one step's snapshot: value unchanged, changed in place, no code run."""
    items = fingerprints.ADDRESS_ITEMS
    if not after:  # as before: object arrays read item by item
        fingerprints.ADDRESS_ITEMS = sys.maxsize
    try:
        ns: dict[str, Any] = {
            "np": np,
            "pd": pd,
            "ROWS": ROWS,
            "strings_frame": strings_frame,
            "t": 0,
        }
        exec(make, ns)
        tracker = namespace.Tracker()
        tracker.begin(ns)
        known = {n: h for n, h in tracker.snapshot(ns, {}, []).vars.items() if h}
        same, changed, idle = [], [], []
        for _ in range(repeat):
            exec("x = 1", ns)
            ms, snap = timed(tracker.snapshot, ns, known, [])
            same.append(ms)
            known.update(snap.vars)
            exec(change, ns)
            ms, snap = timed(tracker.snapshot, ns, known, [])
            assert "v" in snap.vars, "the change was not seen"
            changed.append(ms)
            known.update(snap.vars)
            ms, _ = timed(tracker.snapshot, ns, known, [], (), not after)  # ran=False after
            idle.append(ms)
        return statistics.median(same), statistics.median(changed), statistics.median(idle)
    finally:
        fingerprints.ADDRESS_ITEMS = items


def hash_costs(repeat: int) -> list[tuple[str, float]]:
    buffer = np.random.default_rng(0).random(100 * 10**6 // 8).view(np.uint8)
    column = np.asarray(strings_frame()["s"].array)
    frame = strings_frame()[["s"]]
    kept: dict[str, Any] = {}

    def addresses() -> None:
        walker = fingerprints._Walker(kept)
        walker._array(column, "values")
        kept.update(walker.kept)

    def walk() -> None:
        fingerprints._Walker()._items(column.tolist())

    candidates: list[tuple[str, Callable[[], object]]] = [
        ("100 MB buffer: xxh3-128 (used)", lambda: xxhash.xxh3_128_hexdigest(buffer)),
        ("100 MB buffer: xxh3-64", lambda: xxhash.xxh3_64_hexdigest(buffer)),
        ("100 MB buffer: blake2b", lambda: hashlib.blake2b(buffer).hexdigest()),
        ("100 MB buffer: zlib.crc32", lambda: zlib.crc32(buffer)),
        ("100 MB buffer: zlib.adler32", lambda: zlib.adler32(buffer)),
        ("1M strings: items' reprs (before)", walk),
        (
            "1M strings: str.join + xxh3",
            lambda: xxhash.xxh3_128_hexdigest("\x1f".join(column.tolist()).encode()),
        ),
        ("1M strings: pandas hash_pandas_object", lambda: pd.util.hash_pandas_object(frame)),
        ("1M strings: items' addresses, unchanged (after)", addresses),
    ]
    addresses()  # the first sight checks the items' types; later steps do not
    return [
        (label, statistics.median(timed(fn)[0] for _ in range(repeat))) for label, fn in candidates
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the section into this file")
    args = parser.parse_args()
    lines: list[str] = []
    add = lines.append
    add("## Large values in the namespace")
    add("")
    add(
        f"Generated by `python bench/namespace_cost.py{' --out ' + str(args.out) if args.out else ''}` "
        f"(see its docstring). Python {platform.python_version()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}, {platform.machine()}; median of {args.repeat} runs, "
        "milliseconds per step. Target: an unchanged 100 MB array or DataFrame adds ≤ 5 ms to "
        "a step. A changed value's time below is its serialization (dill) and hash; it is "
        "written once, as a blob file of its own from 1 MiB (fsynced, renamed into place), "
        "before the `tool_result` checkpoint naming it. From 8 MiB in memory the agent does "
        "both on a thread while the model is asked for the next step (section *A changed "
        "large value and the step*)."
    )
    add("")
    add("| step | before (ms) | after (ms) | saved (first run) |")
    add("|---|---:|---:|---|")
    for label, code in SCENARIOS:
        old, new, saved = scenario_costs(label, code, args.repeat)
        add(f"| {label}: `{code.splitlines()[0]}` | {old:.1f} | {new:.1f} | {', '.join(saved)} |")
    add("")
    add("| value, step | before (ms) | after (ms) | target |")
    add("|---|---:|---:|---|")
    for label, make, change in VALUES:
        old = step_costs(make, change, args.repeat, after=False)
        new = step_costs(make, change, args.repeat, after=True)
        for what, a, b in zip(
            ("unchanged", "changed in place", "no code ran"), old, new, strict=True
        ):
            target = ("met" if b <= 5 else "**not met**") if what == "unchanged" else ""
            add(
                f"| {label}, {what} | {a:.1f} | {b:.1f} | {'≤ 5 ms: ' + target if target else ''} |"
            )
    add("")
    add("| hash candidate | ms |")
    add("|---|---:|")
    for label, ms in hash_costs(args.repeat):
        add(f"| {label} | {ms:.2f} |")
    text = "\n".join(lines)
    from report import publish

    publish(args.out, "namespace-cost", text)


if __name__ == "__main__":
    main()
