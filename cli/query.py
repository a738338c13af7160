"""`stemma query`: read-only SQL over the registry."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from stemma.registry import Registry
from stemma.registry.query import sql as lib

from ._common import (
    HistoryOpt,
    JsonOpt,
    RepoOpt,
    console,
    emit_json,
    fail,
    print_table,
    styled_output,
)

if TYPE_CHECKING:
    from stemma.registry.query.sql import QueryResult


class Format(str, enum.Enum):
    """Output formats of `stemma query`."""

    table = "table"
    json = "json"
    csv = "csv"


def register(app: typer.Typer) -> None:
    """Mount `query` on the root app."""
    app.command("query")(query)


def query(
    sql: Annotated[
        str | None,
        typer.Argument(
            help="One SELECT over models, datasets, edges, layers, metrics"
            " (and versions with --history); ancestors(NAME) and"
            " descendants(NAME) are table macros.",
            show_default=False,
        ),
    ] = None,
    history: HistoryOpt = False,
    format_: Annotated[
        Format, typer.Option("--format", "-f", help="Output: a table, JSON objects or CSV.")
    ] = Format.table,
    schema: Annotated[
        bool, typer.Option("--schema", help="List the views and their columns instead.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.001, help="Stop the query after this many seconds."),
    ] = 30.0,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Run read-only SQL over every spec and manifest (DuckDB, refreshed incrementally)."""
    if json_:
        format_ = Format.json

    reg = Registry.open(repo)
    if schema:
        _render_schema(lib.schema(reg, history=history), format_)
        return
    if not sql or not sql.strip():
        raise fail("give a SQL query (or --schema to list the views)", code=2)
    result = lib.query(reg, sql, history=history, timeout=timeout)
    if format_ is Format.json:
        emit_json(result.to_json())
    elif format_ is Format.csv:
        _write_csv(result)
    else:
        _render_table(result)


def _cell(value: Any) -> str:
    """A value as table or CSV text: nested values as compact JSON, null as empty."""
    value = lib.jsonable(value)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_csv(result: QueryResult) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(
            ["" if v is None else _cell(v) if not isinstance(v, float) else repr(v) for v in row]
        )


def _render_table(result: QueryResult) -> None:
    cells = [[_cell(v) for v in row] for row in result.rows]
    footer = f"({len(result)} row{'s' if len(result) != 1 else ''})"
    texts = [*result.columns, *(c for row in cells for c in row)]
    if not styled_output() and all(t.isascii() and t.isprintable() for t in texts):
        # Piped output has no styles and no screen to fold to: the same table as plain
        # text, without importing rich (a tenth of the time `stemma query` may take). Rich
        # keeps multi-line and wide (East Asian) text, which padding by len() would misalign.
        print_table(list(result.columns), cells)
        sys.stdout.write(footer + "\n")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in result.columns:
        table.add_column(name, overflow="fold")
    for row in cells:
        table.add_row(*row)
    out = console()
    if not out.is_terminal:
        # Piped output has no screen to fit: keep each row on one line.
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(result.columns)]
        out.width = max(out.width, sum(widths) + 2 * len(widths))
    out.print(table)
    out.print(footer, style="dim")


def _render_schema(views: dict[str, list[tuple[str, str]]], format_: Format) -> None:
    if format_ is Format.json:
        emit_json(
            {name: [{"column": c, "type": t} for c, t in cols] for name, cols in views.items()}
        )
        return
    if format_ is Format.csv:
        typer.echo("view,column,type")
        for name, cols in views.items():
            for column, type_ in cols:
                typer.echo(f"{name},{column},{type_}")
        return
    out = console()
    for name, cols in views.items():
        out.print(f"[bold]{name}[/bold]")
        for column, type_ in cols:
            out.print(f"  {column:<20} {type_}")
