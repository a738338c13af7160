"""`stemma repro`: hand DVC exactly the stale stages the index knows of, in lineage order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry
from stemma.registry import repro as lib

from ._common import JsonOpt, RepoOpt, emit_json

# Targets per `dvc repro` process: far below the kernel's limit on a command line.
CHUNK = 2000


def register(app: typer.Typer) -> None:
    """Mount `repro` on the root app."""
    app.command("repro")(repro)


def repro(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models or datasets: these and the stale stages they are built from.",
            show_default=False,
        ),
    ] = None,
    dry: Annotated[
        bool, typer.Option("--dry", help="Print the DVC stages in order; run nothing.")
    ] = False,
    downstream: Annotated[
        bool,
        typer.Option("--downstream", help="With targets: these and every stage derived from them."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", "-f", help="Run the stages even when DVC finds them unchanged."),
    ] = False,
    as_json: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Rebuild the stale models and datasets without DVC's whole-pipeline status: the index
    gives the stale set (and everything derived from it), `dvc repro --single-item` runs
    those stages in lineage order and records them in their dvc.lock files."""
    reg = Registry.open(repo)
    plan = lib.plan(reg, targets or (), downstream=downstream)
    if dry or as_json:
        if as_json:
            emit_json(plan.to_dict())
        elif plan.targets:
            typer.echo("\n".join(plan.targets))
        else:
            typer.echo("nothing to reproduce: every model and dataset is up to date")
        return
    if not plan.targets:
        typer.echo("nothing to reproduce: every model and dataset is up to date")
        return
    extra = ["--force"] if force else []
    for start in range(0, len(plan.targets), CHUNK):
        argv = [sys.executable, "-m", "dvc", "repro", "--single-item", *extra]
        done = subprocess.run([*argv, *plan.targets[start : start + CHUNK]], cwd=reg.repo_root)
        if done.returncode != 0:
            raise typer.Exit(done.returncode)
