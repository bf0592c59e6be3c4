"""The ``duckdb`` module, imported where it is first used rather than where it is named.

Importing DuckDB takes a tenth of a second or more. A cell answered from the small
files beside the store (:mod:`.known`, :mod:`.statefile`) never opens DuckDB, so
the modules that open it name it through this stand-in, and the import happens
at the first connection, after the model was asked.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _Deferred(ModuleType):
    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module("duckdb")
        value = getattr(module, name)
        setattr(self, name, value)  # next time without this hook
        return value


duckdb = _Deferred("duckdb")
