"""Version commands: log, diff, tag, promote, checkout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from stemma.registry import Registry
from stemma.registry.versions import resolve as lib

from ._common import JsonOpt, RepoOpt, console, emit_json
from ._result import ResultJsonOpt
from ._wide import print_whole
from .app import library

if TYPE_CHECKING:
    from stemma.registry.records.manifest import DatasetRef, Source
    from stemma.registry.versions.diffs import ManifestDiff, TensorFacts

RefOpt = Annotated[
    str | None,
    typer.Option(
        "--ref",
        "-r",
        help="Version to tag or promote: a git revision, id prefix, version"
        " or stage (default: HEAD).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Mount the version commands on the root app."""
    app.command("log")(log)
    app.command("diff")(diff)
    app.command("tag")(tag)
    app.command("promote")(promote)
    app.command("checkout")(checkout)


def _short(ident: str | None) -> str:
    return "" if not ident else ident.removeprefix("sha256:")[:12]


def _num(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:+.4g}" if isinstance(value, float) and abs(value) < 1e6 else str(value)


def log(
    name: Annotated[str, typer.Argument(help="Model name.")],
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Show the versions of a model, newest first (a version is a distinct manifest id)."""
    entries = lib.log(Registry.open(repo), name)
    if json_:
        emit_json([e.to_dict() for e in entries])
        return
    from rich.table import Table

    out = console()
    if not entries:
        out.print(f"{name}: no committed versions yet")
        return
    if entries[0].deprecated:
        out.print(f"{name} is deprecated (GTO): no version or stage of it is served")
    metrics = sorted({m for e in entries for m in e.version.metrics})[:3]
    table = Table(box=None, pad_edge=False)
    for col in ("id", "commit", "date"):
        table.add_column(col, no_wrap=True)
    for col in ("author", "source", *metrics):
        table.add_column(col)
    table.add_column("tags", no_wrap=True)
    for e in entries:
        v = e.version
        table.add_row(
            _short(v.id)[:10],
            v.commit[:7],
            v.date[:10],
            v.author,
            _short(v.source_id)[:10],
            *(f"{v.metrics[m]:.4f}" if m in v.metrics else "" for m in metrics),
            " ".join([*e.labels, *(f"{d} (deregistered)" for d in e.deregistered)]),
        )
    print_whole(out, table)


def diff(
    a: Annotated[str, typer.Argument(help="First version: NAME@REF, or a model name.")],
    b: Annotated[str, typer.Argument(help="Second version: NAME@REF, @REF, or a model name.")],
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Compare two versions: source, spec fields, metrics, tensors, datasets, weights."""
    # the comparison reads the typed manifest records, which the other version commands
    # do without: loaded for this command only
    result: ManifestDiff = library("registry.versions.diffs").diff(Registry.open(repo), a, b)
    if json_:
        emit_json(result.to_dict())
        return
    _render_diff(result)


def _cell(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True)


def _source(block: Source | None) -> str:
    return "none" if block is None else f"{block.model} ({block.relation}) {_short(block.id)}"


def _render_diff(d: ManifestDiff) -> None:
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]{d.a.ref}[/bold] {_short(d.a.id)} -> "
        f"[bold]{d.b.ref}[/bold] {_short(d.b.id)}" + ("  (identical)" if d.same else "")
    )
    if d.source.changed:
        out.print(f"source: {_source(d.source.before)} -> {_source(d.source.after)}")
    if d.weights.changed:
        out.print(f"weights: {_short(d.weights.before)} -> {_short(d.weights.after)}")
    sections: list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]] = [
        (
            "spec",
            ("field", "before", "after"),
            [(c.pointer, _cell(c.before), _cell(c.after)) for c in d.spec],
        ),
        (
            "metrics",
            ("metric", "before", "after", "delta"),
            [(m.metric, _cell(m.before), _cell(m.after), _num(m.delta)) for m in d.metrics],
        ),
        (
            "tensors",
            ("tensor", "change", "before", "after"),
            [
                (
                    t.name,
                    t.change + (f" ({', '.join(t.fields)})" if t.fields else ""),
                    _tensor(t.before, t.fields),
                    _tensor(t.after, t.fields),
                )
                for t in d.tensors
            ],
        ),
        (
            "datasets",
            ("role", "before", "after"),
            [(c.role, _dataset(c.before), _dataset(c.after)) for c in d.datasets],
        ),
    ]
    for title, cols, rows in sections:
        if not rows:
            continue
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for col in cols:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        out.print(table)


def _tensor(facts: TensorFacts | None, fields: tuple[str, ...]) -> str:
    if facts is None:
        return ""
    # a tensor added or removed shows its shape and origin; a changed one what changed
    shown = fields or ("shape", "origin")
    return " ".join(f"{k}={_cell(getattr(facts, k))}" for k in shown)


def _dataset(ref: DatasetRef | None) -> str:
    return "" if ref is None else f"{ref.name} {_short(ref.id)}"


def tag(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Semantic version, like v1.2.0.")],
    ref: RefOpt = None,
    json_: ResultJsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Register a version: the annotated git tag NAME@VERSION, readable by GTO."""
    info = lib.tag(Registry.open(repo), name, version, ref)
    if json_:
        emit_json(info.to_dict())
        return
    typer.echo(
        f"Created tag {info.tag} at {info.commit[:10]} ({info.id});"
        f" publish it with: git push origin {info.tag}"
    )


def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    stage: Annotated[str, typer.Argument(help="Stage to assign, like staging or prod.")],
    ref: RefOpt = None,
    json_: ResultJsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Assign a stage: the annotated git tag NAME#STAGE#N, readable by GTO."""
    info = lib.promote(Registry.open(repo), name, stage, ref)
    if json_:
        emit_json(info.to_dict())
        return
    typer.echo(
        f"Created tag {info.tag} at {info.commit[:10]} ({info.id});"
        f" publish it with: git push origin {info.tag}"
    )


def checkout(
    ref: Annotated[str, typer.Argument(help="Version to restore: NAME@REF.")],
    json_: ResultJsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Restore a version's weights into the working tree from the DVC cache or remote."""
    reg = Registry.open(repo)
    path = lib.checkout(reg, ref)
    if json_:
        emit_json({"ref": ref, "path": path.relative_to(reg.repo_root).as_posix()})
        return
    typer.echo(f"Restored {path.relative_to(reg.repo_root)} from {ref}")
