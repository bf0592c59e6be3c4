"""Fault injection for tests: a process that kills itself at a named point of a write.

``JUPYTER_AGENT_CRASH=<when>:<what>[:<n>]`` makes this process SIGKILL itself
at the n-th (default first) matching point, where ``when`` is ``before``,
``torn`` (half the record written: half a journal frame, or a PostgreSQL
checkpoint inside its uncommitted transaction) or ``after`` (the record
durable), and ``what`` is a prefix of the record label (``run``, ``blob``,
``checkpoint.<kind>``, see :attr:`jupyter_agent.store.rows.Record.label`) or
``merge.live`` / ``merge.dead`` (folding a running or a finished run's journal
into DuckDB: ``before`` its commit, ``after`` it but before a finished journal
is deleted; a running one is folded only once it holds more than
``DuckDBStore.LIVE_FOLD_BYTES`` unfolded). Unset, it costs one environment
lookup per record.

Both backends' writers call it at the same points, so one crash test names
one moment of a write whatever the store.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "JUPYTER_AGENT_CRASH"

_crash_counts: dict[str, int] = {}


def crash_due(what: str) -> str | None:
    """``when`` if ``$JUPYTER_AGENT_CRASH`` names this occurrence of ``what``, else None."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None
    when, _, rest = spec.partition(":")
    target, _, nth = rest.partition(":")
    if not target or not what.startswith(target):
        return None
    count = _crash_counts[spec] = _crash_counts.get(spec, 0) + 1
    return when if count == int(nth or 1) else None


def crash() -> None:
    """Die the way a kernel killed by the OOM killer or ``kill -9`` does."""
    os.kill(os.getpid(), signal.SIGKILL)
