"""Registry commands: init, ls, show (`validate` is cli/validate.py: its checks load more code)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from stemma.registry import Registry
from stemma.registry.errors import GitError
from stemma.registry.query import listing as lib
from stemma.registry.records.core import DatasetSpec, ModelSpec
from stemma.registry.rules.layout import DATASETS_DIR, MANIFEST_FILE, MODELS_DIR
from stemma.registry.rules.parents import is_merge
from stemma.registry.versions.tags import deprecated_models

from ._common import JsonOpt, RepoOpt, console, emit_json, print_table
from ._result import ResultJsonOpt
from .app import library


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
    reg = Registry.open(repo)
    detail = lib.describe(reg, name)
    if json_:
        emit_json(detail)
        return
    _render_detail(reg, detail)


def _render_detail(reg: Registry, detail: dict[str, Any]) -> None:
    # `detail` is what --json writes; its spec and manifest are read here as records (the
    # manifest records load only now: `ls`, in this module too, never needs them)
    kind, name = detail["kind"], detail["name"]
    records = library("registry.records.manifest")
    raw, doc = detail.get("manifest"), detail.get("spec") or {}
    folder = MODELS_DIR if kind == "model" else DATASETS_DIR
    manifest = records.manifest_record(raw, reg.rel(folder, name, MANIFEST_FILE)) if raw else None
    model = manifest if isinstance(manifest, records.ModelManifest) else None
    declared = (DatasetSpec if kind == "dataset" else ModelSpec).from_dict(name, doc)
    out = console()
    out.print(f"[bold]{kind} {name}[/bold]  {detail.get('status', '')}")
    if declared.description:
        out.print(declared.description)
    if manifest is not None:
        out.print(f"id: {manifest.id}")
        out.print(f"spec_digest: {manifest.spec_digest}")
    if model is not None and model.source is not None:
        src = model.source
        out.print(f"source: {src.model} ({src.relation})" + (f" {src.id}" if src.id else ""))
    elif isinstance(declared, DatasetSpec):
        out.print(f"source: {declared.source}", markup=False)
    elif (ref := declared.source) is not None:
        # a merge names its models, not one model: shown as None, as it always was
        out.print(f"source: {None if is_merge(doc) else ref.model} ({ref.relation})")
    for role, dataset in sorted(model.datasets.items() if model else ()):
        out.print(f"{role}: {dataset.name} {dataset.id[:19]}")
    if manifest is not None and (manifest.task or manifest.class_names):
        out.print(f"task: {manifest.task_name}")
    if kind == "dataset" and manifest is not None and manifest.class_names:
        out.print("classes: " + ", ".join(manifest.class_names), markup=False)
    if model is None:
        return
    for key, value in sorted(model.metrics.items()):
        out.print(f"{key}: {value}")
    names = model.class_names or ()
    for key, value in sorted((model.per_class or {}).items(), key=lambda kv: int(kv[0])):
        label = f" {names[int(key)]}" if int(key) < len(names) else ""
        out.print(f"class {key}{label}: {value}", markup=False)
    for gate in model.gates:
        mark = "pass" if gate.passed else "FAIL"
        out.print(f"gate {gate.metric} {gate.op} {gate.threshold}: {mark}")
    for check, result in sorted((model.checks or {}).items()):
        out.print(f"check {check}: {'pass' if result.passed else 'FAIL'}")
    p = model.parameters
    out.print(f"parameters: {p.total} total, {p.trainable} trainable, {p.transferred} transferred")
