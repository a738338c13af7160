"""`stemma lineage`: a family tree drawn as a tree, Mermaid, DOT or JSON."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from stemma.lineage.graph import build_graph
from stemma.lineage.query import LineageIndex, lineage_index, neighbourhood
from stemma.lineage.query import impact as build_order
from stemma.lineage.render import render
from stemma.registry import Registry

from ._common import JsonOpt, RepoOpt

app = typer.Typer(
    help="Trace lineage: ancestors, descendants, and what a change would rebuild.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    """Mount the `lineage` sub-app on the root app."""
    root.add_typer(app, name="lineage")


class Format(str, enum.Enum):
    """Output formats of the lineage commands."""

    tree = "tree"
    mermaid = "mermaid"
    dot = "dot"
    json = "json"


NameArg = Annotated[
    str, typer.Argument(help="Model or dataset name (prefix with model: or dataset: when both).")
]
FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", help="Output format: tree, mermaid, dot or json.")
]
RevOpt = Annotated[
    str | None,
    typer.Option(
        "--rev",
        help="Read the registry at this git revision instead of the working tree.",
        show_default=False,
    ),
]


def _fmt(fmt: Format, json_: bool) -> Format:
    """--json is --format json."""
    return Format.json if json_ else fmt


def _run(
    pick: Callable[[LineageIndex, str], list[str]],
    name: str,
    fmt: Format,
    rev: str | None,
    repo: Path,
) -> None:
    reg = Registry.open(repo) if rev is None else Registry.at_revision(repo, rev)
    g = build_graph(reg, whole=True)
    index = lineage_index(g)
    focus = index.resolve(name)
    sys.stdout.write(
        render(g, pick(index, focus), fmt.value, focus=focus, pretty=sys.stdout.isatty())
    )


@app.command("show")
def show(
    name: NameArg,
    fmt: FormatOpt = Format.tree,
    rev: RevOpt = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """The neighbourhood of NAME: its ancestors, its descendants and its datasets."""
    _run(neighbourhood, name, _fmt(fmt, json_), rev, repo)


@app.command("ancestors")
def ancestors(
    name: NameArg,
    fmt: FormatOpt = Format.tree,
    rev: RevOpt = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """NAME and the models it derives from, up to a model trained from scratch."""
    _run(lambda ix, n: [*reversed(ix.ancestors(n)), n], name, _fmt(fmt, json_), rev, repo)


@app.command("descendants")
def descendants(
    name: NameArg,
    fmt: FormatOpt = Format.tree,
    rev: RevOpt = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """NAME and every model deriving from it (for a dataset: the models using it)."""
    _run(lambda ix, n: [n, *ix.descendants(n)], name, _fmt(fmt, json_), rev, repo)


@app.command("impact")
def impact(
    name: NameArg,
    fmt: FormatOpt = Format.tree,
    rev: RevOpt = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """What `dvc repro` would rebuild if NAME changed, in build order (as a numbered list
    with --format tree)."""
    fmt = _fmt(fmt, json_)
    if fmt is Format.tree:
        # A build order is a list, not a tree: print it as one, numbered.
        reg = Registry.open(repo) if rev is None else Registry.at_revision(repo, rev)
        for i, key in enumerate(build_order(build_graph(reg, whole=True), name), 1):
            typer.echo(f"{i:>3}. {key}")
        return
    _run(lambda ix, n: ix.impact(n), name, fmt, rev, repo)
