"""`stemma export parquet` (the query views as Parquet files), `stemma export card` (a Hugging
Face model card), `stemma export openlineage` and `stemma export mlflow`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry
from stemma.registry.publish import _olsend
from stemma.registry.publish import openlineage as ol
from stemma.registry.publish.card import export_card
from stemma.registry.publish.mlflow_export import export
from stemma.registry.query import sql

from ._common import HistoryOpt, JsonOpt, OverwriteOpt, RepoOpt, emit_json, fail

export_app = typer.Typer(
    help="Export the registry's query views for other engines (Spark, Trino, DuckDB).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Mount the `export` sub-app on the root app."""
    app.add_typer(export_app, name="export")


@export_app.command("parquet")
def export_parquet(
    folder: Annotated[Path, typer.Argument(help="Folder to write <view>.parquet files into.")],
    history: HistoryOpt = False,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Write every query view as a Parquet file, for engines that read Parquet.

    The folder may be new or hold other files; an existing <view>.parquet is replaced only
    with --overwrite, and never inside the registry."""
    reg = Registry.open(repo)
    written = sql.export_parquet(reg, folder, history=history, overwrite=overwrite)
    if json_:
        emit_json({"written": [str(path) for path in written]})
        return
    for path in written:
        typer.echo(str(path))


@export_app.command("card")
def card(
    name: Annotated[str, typer.Argument(help="Model version: NAME or NAME@REF.")],
    folder: Annotated[Path, typer.Argument(help="Folder to write README.md (and weights) in.")],
    weights: Annotated[
        bool,
        typer.Option(
            "--weights",
            help="Also write the folder the model's library loads: config.json +"
            " model.safetensors (transformers, timm; stemma's own families, rebuilt by"
            " stemma's build_module), or PEFT's adapter files naming the base.",
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Write a Hugging Face model card: front matter the Hub reads, lineage and checks.

    The folder may be new or hold other files; an existing README.md (or weights file) is
    replaced only with --overwrite, and never inside the registry."""
    written = export_card(Registry.open(repo), name, folder, weights=weights, overwrite=overwrite)
    if json_:
        emit_json(
            {
                "card": str(written.path),
                "files": [str(p) for p in written.files],
                "front_matter": written.front_matter,
            }
        )
        return
    for path in (written.path, *written.files):
        typer.echo(str(path))


@export_app.command("openlineage")
def openlineage(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only builds committed after this git revision.", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the events to FILE (JSON lines): a new file, or with --overwrite an"
            " existing regular file outside the registry.",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="POST each event to this OpenLineage endpoint (e.g. Marquez's /api/v1/lineage)"
            " through openlineage-python, with OPENLINEAGE_API_KEY and retries. Without --url"
            " and --output, OPENLINEAGE_URL or OPENLINEAGE_CONFIG in the environment sends the"
            " events where the client's configuration says.",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", help="OpenLineage namespace of jobs and datasets.")
    ] = "stemma",
    overwrite: OverwriteOpt = False,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print stable JSON: the events as one array, or with --output / --url what"
            " was written or sent.",
        ),
    ] = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Emit OpenLineage START and COMPLETE (or FAIL) events for every dataset and model build
    in history, in lineage order (each build after the builds it read)."""
    if output is not None and url is not None:
        raise fail("give --output or --url, not both", code=2)
    reg = Registry.open(repo)
    events = ol.events(reg, since=since, namespace=namespace)
    if url is not None or (output is None and _olsend.configured()):
        kind = ol.send(events, url)
        if json_:
            emit_json({"sent": len(events), "to": url or kind})
        else:
            typer.echo(f"sent {len(events)} events to {url or kind + ' transport'}", err=True)
        return
    if output is not None:
        ol.write_jsonl(reg, events, output, overwrite=overwrite)
        if json_:
            emit_json({"written": len(events), "output": str(output)})
        else:
            typer.echo(f"wrote {len(events)} events to {output}", err=True)
        return
    if json_:
        emit_json(events)
        return
    typer.echo(ol.to_jsonl(events), nl=False)


@export_app.command("mlflow")
def mlflow(
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking and registry store: a sqlite:/// URI or a server URL"
            " (default: MLFLOW_TRACKING_URI).",
            show_default=False,
        ),
    ] = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Export every model version to MLflow: runs with metrics, parameters and lineage, model
    versions, stages as aliases (NAME#prod -> prod). A second export changes nothing."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise fail("give --tracking-uri or set MLFLOW_TRACKING_URI", code=2)
    report = export(Registry.open(repo), uri)
    if json_:
        emit_json(report.to_dict())
        return
    for line in [*(f"created {v}" for v in report.created), *report.changed]:
        typer.echo(line)
    typer.echo(
        f"{len(report.created)} versions created, {len(report.changed)} labels changed,"
        f" {report.unchanged} unchanged",
        err=True,
    )
