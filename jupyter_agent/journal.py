"""``python -m jupyter_agent.journal FILE...``: the documented command that lists a journal.

It lists a journal's records without loading them into a store and without
unpickling a payload; the journal format lives in :mod:`jupyter_agent.store.duckdb.journal`.
This module keeps the command's name stable for the error messages and docs that give it.
"""

from __future__ import annotations

if __name__ == "__main__":
    from .store.duckdb.journal import main

    raise SystemExit(main())
