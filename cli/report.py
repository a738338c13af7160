"""`stemma report NAME [--html FILE]`: a one-page report of a built model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry
from stemma.registry.publish import report as lib

from ._common import JsonOpt, OverwriteOpt, RepoOpt, emit_json


def register(app: typer.Typer) -> None:
    """Mount `report` on the root app."""
    app.command("report")(report)


def report(
    name: Annotated[str, typer.Argument(help="Name of a built model.", show_default=False)],
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Write a self-contained HTML page that opens offline (a pass/fail banner, the"
            " lineage drawn as SVG, transfer, metrics per class, gates, checks, curve) to FILE"
            " instead of printing a summary: a new file, or with --overwrite an existing"
            " regular file outside the registry.",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Pass or fail (gates, checks, staleness), lineage to the roots, transfer report,
    metrics, gates, checks and the training curve."""
    reg = Registry.open(repo)
    report = lib.report_record(reg, name)
    if html is not None:
        lib.write_html(reg, html, lib.render_html(report), overwrite=overwrite)
        typer.echo(f"wrote {html}")
    elif json_:
        emit_json(report.to_dict())
    else:
        typer.echo(lib.render_text(report), nl=False)
