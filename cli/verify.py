"""`stemma verify NAME [--rebuild]`: check a built model against its files, optionally rebuild.

The verify library (and torch with it) loads only when the command runs (`app.library`),
after the numeric mode is pinned (migration/numerics.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from stemma.migration.doctor import REPRODUCIBLE, machine_numerics, predict
from stemma.migration.numerics import pin_for_repo
from stemma.registry import Registry
from stemma.registry.records.manifest import model_record

from ._common import JsonOpt, RepoOpt, emit_json
from .app import library


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
            " tolerance; both runs' numerics shown) or different (exit 1). A line on stderr"
            " says when the rebuild starts and how long it took.",
        ),
    ] = False,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Re-check hashes, schema, id, staleness, gates, checks, frozen tensors; exit 1 on failure."""
    pin_for_repo(repo)  # before torch loads: a merge is recomputed on the build's code paths
    verify_model = library("migration.verify").verify_model
    reg = Registry.open(repo)
    machine = None
    found = None
    if rebuild:  # before any training: can the recorded bits come back on this machine?
        machine = machine_numerics(reg)
        found = reg.model_manifest(name)
        if found is not None and not json_:
            before = predict(name, model_record(found).run, machine)
            expect = (
                "a rebuild must be identical"
                if before.verdict == REPRODUCIBLE
                else "a numerically equivalent rebuild passes"
            )
            typer.echo(f"numerics  {before.reason}: {expect}")
    announce = found is not None  # a rebuild runs only for a built model
    if announce:  # training again takes as long as the build did: say so, on stderr
        started = time.monotonic()
        typer.echo(
            f"{time.strftime('%H:%M:%S')} rebuilding {name} in a temporary folder"
            " (training it again)...",
            err=True,
        )
    result = verify_model(reg, name, rebuild=rebuild, machine=machine)
    if announce:
        typer.echo(
            f"{time.strftime('%H:%M:%S')} rebuilt and compared {name}"
            f" in {time.monotonic() - started:.1f} s",
            err=True,
        )
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
