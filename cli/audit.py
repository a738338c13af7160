"""`stemma audit`: review a change to the registry between two git revisions."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer
from stemma.lineage.audit import audit as run_audit

from ._common import JsonOpt, RepoOpt


class AuditFormat(str, enum.Enum):
    """Output formats of the audit."""

    md = "md"
    json = "json"


def register(app: typer.Typer) -> None:
    """Mount `audit` on the root app."""
    app.command("audit")(audit)


def audit(
    base: Annotated[
        str, typer.Option("--base", help="Git revision to compare against (e.g. origin/main).")
    ],
    head: Annotated[
        str | None,
        typer.Option(
            "--head", help="Git revision to audit (default: the working tree).", show_default=False
        ),
    ] = None,
    fmt: Annotated[
        AuditFormat, typer.Option("--format", "-f", help="Report format: md (Markdown) or json.")
    ] = AuditFormat.md,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Compare two states of the registry; exit 1 when the head state has violations."""
    if json_:
        fmt = AuditFormat.json
    report = run_audit(repo, base, head)
    sys.stdout.write(report.to_markdown() if fmt is AuditFormat.md else report.to_json())
    if report.violations:
        raise typer.Exit(1)
