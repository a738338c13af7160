"""Registry commands: init, ls, show (`validate` is cli/validate.py: its checks load more code)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from stemma.registry import Registry
from stemma.registry.errors import GitError
from stemma.registry.query import listing as lib
from stemma.registry.versions.tags import deprecated_models

from ._common import JsonOpt, RepoOpt, console, emit_json, print_table
from ._result import ResultJsonOpt


def register(app: typer.Typer) -> None:
    """Mount the registry commands on the root app."""
    app.command("init")(init)
    app.command("ls")(ls)
    app.command("show")(show)


def init(
    path: Annotated[Path, typer.Argument(help="Folder to create the registry in.")] = Path("."),
    root: Annotated[
        str, typer.Option(help="Folder under PATH that holds models/ and datasets/.")
    ] = ".",
    json_: ResultJsonOpt = False,
) -> None:
    """Create stemma.yaml, models/ and datasets/ (and git / dvc repositories when missing)."""
    reg = Registry.init(path, root=root)
    if json_:
        emit_json({"path": str(reg.repo_root), "root": root})
        return
    typer.echo(f"Initialized stemma registry in {reg.repo_root}")


def ls(
    kind: Annotated[
        lib.Kind | None, typer.Option("--kind", "-k", help="List only models or datasets.")
    ] = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """List declared models and datasets with their build status."""
    reg = Registry.open(repo)
    rows = lib.list_entries(reg, kind)
    deprecated = _deprecated(reg) if any(r.kind == "model" for r in rows) else set()
    if json_:
        emit_json(
            [
                {**r.to_dict(), "deprecated": r.name in deprecated}
                if r.kind == "model"
                else r.to_dict()
                for r in rows
            ]
        )
        return
    table = []
    for r in rows:
        acc = r.metrics.get("accuracy")
        deprecated_model = r.kind == "model" and r.name in deprecated
        table.append(
            [
                r.kind,
                r.name,
                "+".join(r.parents) if r.parents else r.source or "",
                f"{r.status}, deprecated" if deprecated_model else r.status,
                (r.id or "")[7:19],
                "" if acc is None else f"{acc:.4f}",
                _names(r.class_names),
            ]
        )
    print_table(["kind", "name", "source", "status", "id", "accuracy", "classes"], table)


def _names(names: tuple[str, ...], width: int = 40) -> str:
    """A dataset's class names, cut to `width` characters."""
    text = ", ".join(names)
    return text if len(text) <= width else text[: width - 3] + "..."


def _deprecated(reg: Registry) -> set[str]:
    """Models GTO's tags deprecate; none outside a git repository."""
    try:
        return set(deprecated_models(reg))
    except GitError:
        return set()


def show(
    name: Annotated[str, typer.Argument(help="Model or dataset name (models accept NAME@REF).")],
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Show one model or dataset: its spec and, when built, its manifest."""
    detail = lib.describe(Registry.open(repo), name)
    if json_:
        emit_json(detail)
        return
    _render_detail(detail)


def _render_detail(detail: dict[str, Any]) -> None:
    out = console()
    out.print(f"[bold]{detail['kind']} {detail['name']}[/bold]  {detail.get('status', '')}")
    manifest = detail.get("manifest") or {}
    spec = detail.get("spec") or {}
    if spec.get("description"):
        out.print(spec["description"])
    for key in ("id", "spec_digest"):
        if key in manifest:
            out.print(f"{key}: {manifest[key]}")
    src = manifest.get("source") or spec.get("source")
    if isinstance(src, str):  # a dataset's source
        out.print(f"source: {src}", markup=False)
    elif src:
        out.print(
            f"source: {src.get('model')} ({src.get('relation', 'finetune')})"
            + (f" {src['id']}" if src.get("id") else "")
        )
    for role, ref in sorted((manifest.get("datasets") or {}).items()):
        out.print(f"{role}: {ref['name']} {ref['id'][:19]}")
    if manifest.get("task") or manifest.get("class_names"):
        out.print(f"task: {manifest.get('task', 'classification')}")
    if detail["kind"] == "dataset" and manifest.get("class_names"):
        out.print("classes: " + ", ".join(manifest["class_names"]), markup=False)
    for key, value in sorted((manifest.get("metrics") or {}).items()):
        out.print(f"{key}: {value}")
    names = manifest.get("class_names") or []
    for key, value in sorted((manifest.get("per_class") or {}).items(), key=lambda kv: int(kv[0])):
        label = f" {names[int(key)]}" if int(key) < len(names) else ""
        out.print(f"class {key}{label}: {value}", markup=False)
    for gate in manifest.get("gates", []):
        mark = "pass" if gate["passed"] else "FAIL"
        out.print(f"gate {gate['metric']} {gate['op']} {gate['threshold']}: {mark}")
    for check, result in sorted((manifest.get("checks") or {}).items()):
        out.print(f"check {check}: {'pass' if result.get('passed') else 'FAIL'}")
    if "parameters" in manifest:
        p = manifest["parameters"]
        out.print(
            f"parameters: {p['total']} total, {p['trainable']} trainable,"
            f" {p['transferred']} transferred"
        )
