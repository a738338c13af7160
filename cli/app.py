"""The `stemma` command: one typer app, one sub-app per noun, the verbs people type most."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from . import audit as audit_cmds
from . import build as build_cmds
from . import explore as explore_cmds
from . import lineage as lineage_cmds
from . import pipeline as pipeline_cmds
from . import query as query_cmds
from . import registry as registry_cmds
from . import report as report_cmds
from . import verify as verify_cmds
from . import versions as versions_cmds
from ._common import FunnelGroup

app = typer.Typer(
    name="stemma",
    cls=FunnelGroup,
    help="A declarative, git-versioned registry for models derived by transfer learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from stemma.registry import __version__

        typer.echo(f"stemma {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Show the full traceback on errors.")
    ] = False,
) -> None:
    """stemma: declare, build, version, trace, query and validate derived models."""
    if traceback:
        os.environ["STEMMA_DEBUG"] = "1"


registry_cmds.register(app)
pipeline_cmds.register(app)
app.add_typer(build_cmds.app, name="build")
app.command("register")(build_cmds.register)
verify_cmds.register(app)
report_cmds.register(app)
versions_cmds.register(app)
app.add_typer(lineage_cmds.app, name="lineage")
audit_cmds.register(app)
explore_cmds.register(app)
query_cmds.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="stemma")


if __name__ == "__main__":
    main()
