"""The `stemma` command: one typer app, one sub-app per noun, the verbs people type most."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from . import pipeline as pipeline_cmds
from . import registry as registry_cmds
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="stemma")


if __name__ == "__main__":
    main()
