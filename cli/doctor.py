"""`stemma doctor [NAME...]`: can this machine reproduce the recorded bits of the built models?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stemma.migration.doctor import DIFFERS, check
from stemma.registry import Registry

from ._common import JsonOpt, RepoOpt, emit_json


def register(app: typer.Typer) -> None:
    """Mount `doctor` on the root app."""
    app.command("doctor")(doctor)


def doctor(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Built models to check (default: every one).", show_default=False),
    ] = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Compare this machine's numerics fingerprint with each build's, before any training.

    Exit 1 when a model's recorded bits cannot be reproduced here (its rebuild can then only
    be numerically equivalent); models with nothing to compare are listed as unknown.
    """
    here, predictions = check(Registry.open(repo), names or None)
    if json_:
        emit_json({"machine": here, "models": [p.to_dict() for p in predictions]})
    else:
        cpu = here.get("cpu") or {}
        typer.echo(
            f"this machine: {cpu.get('vendor', '?')} {cpu.get('model', '?')},"
            f" {here.get('mode')} numerics (pinned: {here.get('pinned')}),"
            f" capability {cpu.get('capability', '?')}, torch {here.get('torch')},"
            f" fingerprint {here['fingerprint']['digest']}"
        )
        for p in predictions:
            typer.echo(f"{p.verdict:<12}  {p.name}: {p.reason}")
    if any(p.verdict == DIFFERS for p in predictions):
        raise typer.Exit(1)
