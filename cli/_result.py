"""The `--json` option of commands that change something (init, pipeline, build, register,
tag, promote, checkout): the result as one JSON object on stdout instead of a sentence."""

from __future__ import annotations

from typing import Annotated

import typer

ResultJsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as one JSON object on stdout instead of a sentence."
    ),
]
