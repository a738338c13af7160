"""`stemma pipeline`: write dvc.yaml from the specs, or check that it is in step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry
from stemma.registry import pipeline as lib

from ._common import RepoOpt, fail


def register(app: typer.Typer) -> None:
    """Mount `pipeline` on the root app."""
    app.command("pipeline")(pipeline)


def pipeline(
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 when dvc.yaml is out of step.")
    ] = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Write dvc.yaml (one stage per dataset and model, parents first) from the specs."""
    reg = Registry.open(repo)
    if check:
        if not lib.in_sync(reg):
            raise fail(f"{lib.PIPELINE_FILE} is out of step with the specs; run `stemma pipeline`")
        typer.echo(f"{lib.PIPELINE_FILE} is in step with the specs")
        return
    changed = lib.write(reg)
    typer.echo(f"{'wrote' if changed else 'unchanged'} {lib.PIPELINE_FILE}")
