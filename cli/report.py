"""`stemma report NAME [--html FILE]`: a one-page report of a built model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry

from ._common import JsonOpt, RepoOpt, emit_json


def register(app: typer.Typer) -> None:
    """Mount `report` on the root app."""
    app.command("report")(report)


def report(
    name: Annotated[str, typer.Argument(help="Name of a built model.", show_default=False)],
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Write a self-contained HTML page (lineage, transfer, metrics, checks, curve)"
            " to FILE instead of printing a summary.",
            show_default=False,
        ),
    ] = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Lineage to the roots, transfer report, metrics, gates, checks and the training curve."""
    from stemma.registry import report as lib

    doc = lib.model_report(Registry.open(repo), name)
    if html is not None:
        lib.write_html(html, lib.render_html(doc))
        typer.echo(f"wrote {html}")
    elif json_:
        emit_json(doc)
    else:
        typer.echo(lib.render_text(doc), nl=False)
