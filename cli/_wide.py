"""Print a rich table whole: never cut or wrap cells to fit 80 columns (rich's width when
stdout is not a terminal, as in a pipe or CI log)."""

from __future__ import annotations

from typing import Any


def print_whole(out: Any, table: Any) -> None:
    """Print `table` on console `out`, widened to the table's natural width when needed."""
    from rich.console import Console
    from rich.measure import Measurement

    need = Measurement.get(out, out.options.update(max_width=100_000), table).maximum
    if need > out.width:
        out = Console(highlight=False, width=need)
    out.print(table)
