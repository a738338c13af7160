"""`stemma validate`: every consistency check over the registry's specs and manifests.

A module of its own: the checks import more of the registry than `ls` and `show` need.
"""

from __future__ import annotations

from pathlib import Path

import typer
from stemma.registry import Registry
from stemma.registry.check.consistency import check

from ._common import JsonOpt, RepoOpt, emit_json


def register(app: typer.Typer) -> None:
    """Mount `validate` on the root app."""
    app.command("validate")(validate)


def validate(json_: JsonOpt = False, repo: RepoOpt = Path(".")) -> None:
    """Check every spec and manifest: schema, references, cycles, paths, staleness, ids."""
    reg = Registry.open(repo)
    violations = check(reg)
    if json_:
        emit_json({"ok": not violations, "violations": [v.to_dict() for v in violations]})
    else:
        for v in violations:
            typer.echo(str(v), err=True)
        if not violations:
            n_models, n_data = len(reg.model_names()), len(reg.dataset_names())
            typer.echo(f"ok: {n_models} models, {n_data} datasets")
    if violations:
        raise typer.Exit(1)
