"""Run the fault-injection suite and write ``docs/reliability.md`` from its outcomes.

    python -m tests.faults.report            # the default suite (a few minutes)
    python -m tests.faults.report --soak     # the long soak (hundreds of crash trials)
    python -m tests.faults.report --seed 42  # another seed for the randomized crash trials

Every test in ``tests/faults`` appends its outcome (fault, injection, trials,
completed, lost, duplicated, figures) as a JSON line to the file named by
``JUPYTER_AGENT_FAULT_RESULTS``; this module runs pytest with that set and
renders the lines. The page is rewritten only when the suite passed, unless
``--always`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "reliability.md"

CRASH_KINDS = {
    "stream": "SIGKILL while a model reply streams (that turn's chunks slowed to 0.25 s)",
    "reply": "SIGKILL right after a model reply is durable, before its tool runs "
    "(hook `after:checkpoint.model:n`)",
    "tool": "SIGKILL while a python call runs (it sleeps; killed when its output appears)",
    "torn": "SIGKILL halfway through writing a journal record: run row, start, model reply, "
    "tool call, tool result or variable blob (hook `torn:<record>:n`)",
    "result": "SIGKILL right after a tool result is durable, before the next model call "
    "(hook `after:checkpoint.tool_result:n`)",
    "merge": "SIGKILL while a journal is folded into DuckDB, before or after the commit, "
    "mid-run (the timeline reading) or at the end (hooks `before|after:merge.live|dead:n`)",
    "approval": "with `--approve`: SIGKILL of the idle kernel while waiting for approval, "
    "right after an approval decision is durable, or while the approved call runs",
    "random": "SIGKILL at a uniformly random moment of a run whose calls take 0.15 s each",
}
#: The crash trials run on each backend; a row's fault names its backend by this suffix.
CRASH_BACKENDS = {"": "DuckDB", " (postgres)": "PostgreSQL"}
#: On PostgreSQL the same points, but there is no journal: ``torn`` dies inside the
#: checkpoint's transaction and nothing is folded, so there is no ``merge``.
PG_CRASH_KINDS = {
    **{k: v for k, v in CRASH_KINDS.items() if k != "merge"},
    "torn": "SIGKILL inside the transaction that stores a model reply, tool call, tool result "
    "or start checkpoint (with its variable blobs), before its commit; a run row or blob is "
    "killed before it is written (hook `torn:<record>:n`)",
}
CLASS_TITLES = {
    "crash": "1. Crashes (SIGKILL of the kernel)",
    "concurrency": "2. Concurrency",
    "model": "3. Model endpoint faults",
    "state": "4. State faults",
    "long": "5. Long runs",
    "security": "6. Security",
    "usage": "7. Usage errors",
}


def run_suite(
    results: Path, soak: bool, seed: int | None, extra: list[str]
) -> tuple[int, float, str]:
    env = {**os.environ, "JUPYTER_AGENT_FAULT_RESULTS": str(results)}
    if seed is not None:
        env["JUPYTER_AGENT_FAULT_SEED"] = str(seed)
    cmd = [sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:cacheprovider"]
    if soak:
        cmd.append("--soak")
    cmd += extra
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and "=" not in ln[:1]), "")
    if proc.returncode != 0:
        noise = "[IPKernelApp] WARNING"  # every kernel says it runs over TCP
        keep = [ln for ln in proc.stdout.splitlines() if not ln.startswith(noise)]
        sys.stdout.write("\n".join(keep)[-30000:] + "\n")
        sys.stderr.write(proc.stderr[-3000:])
    return proc.returncode, elapsed, summary.strip("= ")


def load(results: Path) -> list[dict]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def verdict(row: dict) -> str:
    ok = row.get("lost", 0) == 0 and row.get("duplicated", 0) == 0
    ok = ok and row.get("completed", 0) == row.get("trials", 0) and not row.get("failures")
    return "✅" if ok else "❌"


def crash_backend(fault: str) -> tuple[str, str]:
    """A crash row's kind and backend suffix: ``"torn (postgres)"`` -> ``("torn", " (postgres)")``."""
    for suffix in CRASH_BACKENDS:
        if suffix and fault.endswith(suffix):
            return fault.removesuffix(suffix), suffix
    return fault, ""


def crash_how(fault: str) -> str:
    """The "how" of a crash row: where it kills, on that row's backend."""
    kind, suffix = crash_backend(fault)
    if not suffix:
        return CRASH_KINDS.get(kind, "")
    how = PG_CRASH_KINDS.get(kind, "")
    return f"{CRASH_BACKENDS[suffix]} store: {how}" if how else ""


def crash_totals(crash: list[dict], totals: list[dict]) -> dict:
    """The crash intro's figures over every backend (``totals``: each run's ``(all)`` row)."""
    per: list[str] = []
    trials = kills = 0
    wall = 0.0
    seeds: list[str] = []
    for suffix, name in CRASH_BACKENDS.items():
        rows = [r for r in crash if crash_backend(r["fault"])[1] == suffix]
        if not rows:
            continue
        total = next((t for t in totals if t["fault"] == "(all)" + suffix), {})
        n = total.get("trials", sum(r["trials"] for r in rows))
        trials += n
        kills += sum(r["kills"] for r in rows)
        wall += total.get("wall_seconds", 0.0)
        seed = str(total.get("seed", rows[0].get("seed")))
        if seed not in seeds:
            seeds.append(seed)
        per.append(f"{n} on {name}")
    return {
        "trials": trials,
        "per_backend": ", ".join(per),
        "seed": "`, `".join(seeds),
        "kills": kills,
        "wall": round(wall, 1) if wall else "?",
    }


def table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def render(rows: list[dict], meta: dict) -> str:
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append(r)
    totals = [r for r in by_class["crash"] if r["fault"].startswith("(all)")]
    crash = [r for r in by_class["crash"] if not r["fault"].startswith("(all)")]
    parts = [HEADER.format(**meta)]

    summary = []
    for cls, title in CLASS_TITLES.items():
        group = crash if cls == "crash" else by_class.get(cls, [])
        if not group:
            continue
        summary.append(
            [
                title.split(". ", 1)[1],
                len(group),
                sum(r.get("trials", 0) for r in group),
                sum(r.get("completed", 0) for r in group),
                sum(r.get("lost", 0) for r in group),
                sum(r.get("duplicated", 0) for r in group),
                "✅" if all(verdict(r) == "✅" for r in group) else "❌",
            ]
        )
    parts.append("## Summary\n")
    parts.append(
        table(["fault class", "faults", "trials", "completed", "lost", "duplicated", ""], summary)
    )
    parts.append(DEFINITIONS)

    if crash:
        parts.append(f"## {CLASS_TITLES['crash']}\n")
        parts.append(CRASH_INTRO.format(**crash_totals(crash, totals)))
        parts.append(
            table(
                [
                    "kill point",
                    "how",
                    "trials",
                    "kills",
                    "completed",
                    "lost",
                    "duplicated",
                    "in-flight repeats",
                    "last checkpoint before the kill",
                    "",
                ],
                [
                    [
                        r["fault"],
                        crash_how(r["fault"]),
                        r["trials"],
                        r["kills"],
                        r["completed"],
                        r["lost"],
                        r["duplicated"],
                        r["repeated_in_flight"],
                        ", ".join(f"{k} ×{v}" for k, v in sorted(r["killed_at"].items())),
                        verdict(r),
                    ]
                    for r in crash
                ],
            )
        )
        failures = [f for r in crash for f in r.get("failures", [])]
        if failures:
            parts.append(
                "\n**Failed trials:**\n\n```\n" + json.dumps(failures, indent=1)[:6000] + "\n```"
            )
        parts.append(CRASH_NOTES)

    for cls in ("concurrency", "model", "state", "long", "security", "usage"):
        group = by_class.get(cls)
        if not group:
            continue
        parts.append(f"## {CLASS_TITLES[cls]}\n")
        if cls == "long":
            parts += [_long(r) for r in group]
            continue
        parts.append(INTROS.get(cls, ""))
        parts.append(
            table(
                ["fault", "injection", "trials", "completed", "lost", "duplicated", "outcome", ""],
                [
                    [
                        r["fault"],
                        r.get("injection", ""),
                        r.get("trials", ""),
                        r.get("completed", ""),
                        r.get("lost", ""),
                        r.get("duplicated", ""),
                        r.get("outcome", _concurrency_outcome(r)),
                        verdict(r),
                    ]
                    for r in group
                ],
            )
        )
        if cls == "security":
            parts.append(SECURITY)
    parts.append(FOOTER)
    return "\n".join(p.rstrip() + "\n" for p in parts)


def _long(r: dict) -> str:
    rows = [
        [c, b, f"{f / 2**20:.1f} MiB", s]
        for (c, b), (_, f), (_, s) in zip(
            r["stored_bytes_per_checkpoint"], r["file_bytes"], r["fold_seconds"], strict=False
        )
    ]
    return (
        LONG_INTRO
        + "\n"
        + table(
            [
                "checkpoints",
                "stored bytes / checkpoint",
                "DuckDB file + journals",
                "fold (resume) s",
            ],
            rows,
        )
        + f"\n\n{r['injection']}. Outcome: {verdict(r)} completed {r['completed']}/"
        f"{r['trials']}, lost {r['lost']}, duplicated {r['duplicated']}; "
        f"{r['checkpoints']} checkpoints in {r['seconds']} s "
        f"(segments of 40 model calls took {min(r['segment_seconds'])}–"
        f"{max(r['segment_seconds'])} s).\n"
    )


def _concurrency_outcome(r: dict) -> str:
    if r["class"] != "concurrency":
        return ""
    return (
        f"{r.get('completed')} of {r.get('agents')} agents finished with intact histories; "
        f"{r.get('reader_errors')} reader errors in {r.get('reads')} reads (slowest read "
        f"{r.get('slowest_read')} s, while another process held the file); "
        f"{r.get('seconds')} s"
    )


HEADER = """\
# Reliability and security

_Generated by `python -m tests.faults.report` ({mode}) on {date}; do not edit by hand.
Regenerate with that command (add `--soak` for the long soak, `--seed N` for another seed
of the randomized crash trials). The same tests run in the normal `python -m pytest` run._

**Promise: an agent never loses completed work.** Every fault below is injected into real
kernels (ipykernel driven through jupyter_client, SIGKILL for crashes), a real store (a DuckDB
file plus journals; the crash trials also run on a PostgreSQL database) and the scripted OpenAI-compatible endpoint; then what was lost or done
twice is counted. Suite: `{summary}` in {elapsed:.0f} s on {cores} cores
(Python {python}, DuckDB {duckdb}, {system}).
"""

DEFINITIONS = """
* **completed**: trials whose agent reached `done` with the transcript expected (for crashes:
  identical to an uninterrupted run of the same script) and no problem found.
* **lost**: checkpoints present in the store right after a fault (read from a copy of the files
  as the fault left them) that are missing or different afterwards, plus steps a reader had
  seen that later vanished.
* **duplicated**: completed steps done again: a python call whose result was checkpointed and
  that ran again (counted from a side-effect file the tool code appends to), or a model turn
  that was checkpointed and requested again (from the endpoint's request log).
* **in-flight repeats**: the one step in flight at a kill done again, as the in-flight policy
  says (see below); allowed, and counted separately.
"""

CRASH_INTRO = """\
{trials} randomized trials ({per_backend}; seed `{seed}`, {kills} kills, {wall} s wall time on
two workers).
Each trial draws a script (1–3 model turns, 1–2 python calls per turn, then an answer), a kill
point and its details from the seed; one trial in five also kills the resumed kernel once
more (right after the resume checkpoint, mid-write of a later record, or during the final
fold). After every kill the store files are copied as they are and read back — they must be
readable — and a fresh kernel re-runs the cell (or `%agent approve`) until the run is done.
Rerun one trial with `JUPYTER_AGENT_FAULT_SEED=<seed> JUPYTER_AGENT_FAULT_TRIAL=<n> python -m
pytest tests/faults/test_crashes.py`.

Rows marked `(postgres)` are the same trials with the kernels given a `postgresql://` store
on a local PostgreSQL server: each checkpoint is one transaction, so there is no journal to
tear or fold (no `merge` row), and the database is read in place after a kill (a dead kernel
cannot damage the server's files).

Precise kill points use a crash hook compiled into the journal writer and merger
(`jupyter_agent/store/faults.py`): with `JUPYTER_AGENT_CRASH=<when>:<what>[:<n>]` set, the kernel
SIGKILLs itself at the n-th matching record — `before` writing it, `torn` after writing half of
its frame, or `after` it is durable. Unset (always, outside tests) it costs one environment
lookup per record.
"""

CRASH_NOTES = """
**In-flight policy.** A model call in flight at a crash is simply issued again (it has no side
effects). A python call whose start was checkpointed but whose result was not is run again,
after a notice in the output (at-least-once); with `--approve` it waits for approval again
first, since the approval covered one execution. Every other step is exactly-once.
"""

INTROS = {
    "concurrency": (
        "Readers poll every 5 ms: the store API (`runs`, `latest_checkpoints`, "
        "`checkpoints`, `live_runs`) and the REST API's query layer "
        "(`jupyter_agent.views.listing.Reader`, which the HTTP handlers call). A reader "
        "that sees a step must see it forever after; every read must succeed. Two "
        "processes racing for one agent (new runs and resumes, released by a barrier) must "
        "never both execute it: one writer per agent, counted as duplicated.\n"
    ),
    "model": (
        "Faults come from the scripted endpoint, per attempt of a turn; the kernel uses "
        "`%config AgentMagics.retry_backoff = 0.05`, `AgentMagics.timeout = 1.0`, 4 retries.\n"
    ),
    "state": (
        "A damaged or newer store is compared byte for byte before and after: it is never "
        "rewritten, repaired or replaced by an empty store.\n"
    ),
    "security": (
        "The secrets test scans every byte the store keeps on disk, and every decoded column "
        "and payload, for the API key and a token in UTF-8, UTF-16 and UTF-32.\n"
    ),
    "usage": (
        "In an in-process shell whose store holds a finished agent; the store's runs and "
        "checkpoints are compared before and after each error.\n"
    ),
}

LONG_INTRO = """\
An in-process IPython shell, the scripted endpoint and a real store; re-running the cell after
`--max-steps` resumes the run. Each checkpoint stores only its step's delta, so the stored
bytes per checkpoint stay flat; the DuckDB file grows in 256 KiB blocks and reuses freed ones.
Resuming folds the history from the latest compaction's snapshot (a window's worth of
checkpoints, not the whole run); its time is the *fold* column.
"""

SECURITY = """
**Deserialization runs code.** Checkpoint payloads and saved variables are pickled with dill,
and unpickling can execute arbitrary code. So:

* Only the kernel unpickles, and only from a store it trusts: `Store.payloads` and
  `Store.blobs` refuse a DuckDB file or journal directory owned by another user or writable by
  group or others (`chmod go-w` fixes a store of your own). **Only load your own store**;
  never point `JUPYTER_AGENT_STORE` at a file someone else could have written.
* Nothing another user could have written is folded into the store: while the journal
  directory is owned by someone else or writable by others no journal is folded, and a
  journal that is not yours, is writable by others, or is not a regular file is skipped
  with a warning naming it — also after `chmod go-w`, since data written while the
  directory was exposed may be hostile. `python -m jupyter_agent.journal FILE` lists its
  records without unpickling anything.
* The REST server and the store's metadata API (`runs`, `checkpoints`, …) never read a
  payload, let alone unpickle one; journals are framed JSON plus opaque bytes.
* File objects are never pickled or unpickled: dill restores a file by reopening its path with
  the same mode, which empties a file written with `"w"`.

**Secrets.** The API key and every environment value whose name looks like a secret (`*KEY*`,
`*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*CREDENTIAL*`, `*AUTH*`) are replaced by `[REDACTED]` in
prompts, messages, summaries, tool code and errors before anything is written; `Authorization`
header values, `Bearer` tokens and well-known key formats (OpenAI, GitHub, Slack, AWS) are
redacted by shape. A variable whose serialized bytes contain a secret (UTF-8, UTF-16 or UTF-32,
little- or big-endian) is not saved, and is reported by name. Not detected: a secret in a
transformed form (base64, hex, URL-quoted, compressed, encrypted or hashed, reversed, or split
into pieces held in separate strings) or shorter than 8 characters; such a value is stored.

**Files.** The store directory and journal directory are created `0700`; the DuckDB file, its
WAL and every journal `0600`. In a directory that is not private, DuckDB is opened under a
`077` umask (restored when the last connection closes), so its files are never readable by
others even for a moment.
"""

FOOTER = """
## How faults that need privileges are injected

* **Full disk**: `RLIMIT_FSIZE` set inside the kernel (`resource.setrlimit`), which works for
  root too; plus, where the test may mount (root with `CAP_SYS_ADMIN`), a 4 MiB tmpfs that
  fills up. The tmpfs test is skipped, with a message, where mounting is not allowed.
* **Read-only disk**: the tmpfs remounted read-only (root cannot write there either);
  `chmod` would not stop root, so it is not used.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report", description=__doc__)
    parser.add_argument("--soak", action="store_true", help="run the long soak")
    parser.add_argument("--seed", type=int, help="seed of the randomized crash trials")
    parser.add_argument("--always", action="store_true", help="write the page even on failure")
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = parser.parse_args(argv)
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        code, elapsed, summary = run_suite(results, args.soak, args.seed, args.pytest_args)
        rows = load(results)
    meta = {
        "mode": "soak" if args.soak else "default suite",
        "date": dt.date.today().isoformat(),
        "summary": summary or f"exit code {code}",
        "elapsed": elapsed,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "system": f"{platform.system()} {platform.machine()}",
    }
    if code != 0 and not args.always:
        print(f"the suite failed ({summary}); {args.output} left as it was", file=sys.stderr)
        return code
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(rows, meta), encoding="utf-8")
    print(f"wrote {args.output} ({summary}, {elapsed:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
