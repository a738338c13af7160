"""`stemma pipeline`: write the pipeline files from the specs, or check that they are in step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry
from stemma.registry.pipeline import pipefiles
from stemma.registry.pipeline import render as lib

from ._common import RepoOpt, emit_json, fail
from ._result import ResultJsonOpt


def register(app: typer.Typer) -> None:
    """Mount `pipeline` on the root app."""
    app.command("pipeline")(pipeline)


def pipeline(
    check: Annotated[
        bool,
        typer.Option("--check", help="Change nothing; exit 1 when a pipeline file is out of step."),
    ] = False,
    json_: ResultJsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Write dvc.yaml files from the specs: the root one (artifacts, your own stages) and
    one per dataset and model folder, parents first."""
    reg = Registry.open(repo)
    if check:
        found = pipefiles.differences(reg)
        if json_:
            emit_json(
                {
                    "ok": not found,
                    "differences": [{"path": d.path, "reason": d.reason} for d in found],
                }
            )
            if found:
                raise typer.Exit(1)
            return
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise fail(f"{found[0]}{more}; run `stemma pipeline`")
        typer.echo(f"{lib.PIPELINE_FILE} files are in step with the specs")
        return
    changes = pipefiles.write(reg)
    if json_:
        emit_json(
            {
                "written": changes.written,
                "removed": changes.removed,
                "locks_moved": changes.locks_moved,
            }
        )
        return
    if not changes:
        typer.echo(f"unchanged {lib.PIPELINE_FILE} files")
        return
    parts = [f"wrote {len(changes.written)} {lib.PIPELINE_FILE} files"]
    if changes.removed:
        parts.append(f"removed {len(changes.removed)} stale files")
    if changes.locks_moved:
        parts.append(f"moved {changes.locks_moved} lock entries out of the root dvc.lock")
    typer.echo(", ".join(parts))
