"""DuckDB's engine, without the rest of its Python package.

`import duckdb` (2.x) also loads the package's Python relation and expression API and looks its
own version up among the installed distributions: 0.08 s on its own and 0.02-0.05 s of CPU on
`stemma query` (`benchmarks/bench_private_apis.py`, `duckdb`), for code stemma never calls. The
engine is the extension module `_duckdb`, whose `connect`, connection and exception classes
`duckdb` re-exports as they are. Where the installed DuckDB has that module with every name
stemma uses, it alone is imported; elsewhere (1.x, or another layout) the `duckdb` package is.
Call `duckdb()` where the engine is needed: importing this module loads nothing, so commands
that never query do not load DuckDB at all.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

__all__ = ["duckdb", "engine", "one_line"]

# DuckDB 2.0's engine module (private: DuckDB may rename or drop it; pyproject.toml pins the
# versions tested). benchmarks/bench_private_apis.py measures it against the public package.
PRIVATE = "_duckdb"
# What stemma takes from the module.
USED = ("connect", "DuckDBPyConnection", "Error", "IOException", "InvalidInputException")


@functools.cache
def duckdb() -> ModuleType:
    """DuckDB's engine module (`connect`, `Error`, ...), imported on the first call."""
    return engine()


def engine(private: bool = True) -> ModuleType:
    """The module named PRIVATE where it imports and has every name of USED, else (or with
    `private=False`) the public `duckdb` package, whose names are the same objects."""
    if private:
        try:
            module = importlib.import_module(PRIVATE)
        except ImportError:
            module = None
        if module is not None and all(hasattr(module, name) for name in USED):
            return module
    return importlib.import_module("duckdb")


def one_line(exc: BaseException) -> str:
    """An engine error as one line (DuckDB's messages span several)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(ln for ln in lines if not ln.startswith("LINE ") and set(ln) != {"^"})
    return text[:500] or type(exc).__name__
