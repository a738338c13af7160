"""DuckDB's engine, without the rest of its Python package.

`import duckdb` (2.x) also loads the package's Python relation and expression API and looks
its own version up among the installed distributions: about 0.1 s, a third of the budget of
`stemma query` on a small registry, for code stemma never calls. The engine is the extension
module `_duckdb`, whose `connect`, connection and exception classes `duckdb` re-exports as
they are. Where the installed DuckDB has that module, it alone is imported; elsewhere (1.x,
or another layout) the `duckdb` package is. Import `duckdb` from here, inside functions:
commands that never query do not load DuckDB at all.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["duckdb"]

# What stemma takes from the module.
USED = ("connect", "DuckDBPyConnection", "Error", "IOException", "InvalidInputException")


def _load() -> ModuleType:
    try:
        engine = importlib.import_module("_duckdb")
    except ImportError:
        return importlib.import_module("duckdb")
    if all(hasattr(engine, name) for name in USED):
        return engine
    return importlib.import_module("duckdb")


if TYPE_CHECKING:
    import duckdb
else:
    duckdb = _load()
