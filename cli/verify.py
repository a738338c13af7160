"""`stemma verify NAME [--rebuild]`: check a built model against its files, optionally rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry

from ._common import JsonOpt, RepoOpt, emit_json


def register(app: typer.Typer) -> None:
    """Mount `verify` on the root app."""
    app.command("verify")(verify)


def verify(
    name: Annotated[str, typer.Argument(help="Name of a built model.", show_default=False)],
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Also rebuild the model in a temporary folder and compare: identical,"
            " numerically equivalent (max abs difference per tensor within the stated"
            " tolerance; both runs' numerics shown) or different (exit 1).",
        ),
    ] = False,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Re-check hashes, schema, id, staleness, gates, checks, frozen tensors; exit 1 on failure."""
    from stemma.migration.verify import verify_model

    result = verify_model(Registry.open(repo), name, rebuild=rebuild)
    if json_:
        emit_json(result.to_dict())
    else:
        for finding in result.findings:
            typer.echo(f"{finding.status:<4}  {finding.item:<8} {finding.message}")
        if result.ok:
            typer.echo(f"ok: {name} verified")
    for finding in result.failures:
        typer.echo(f"error: {name}: {finding.item}: {finding.message}", err=True)
    if not result.ok:
        raise typer.Exit(1)
