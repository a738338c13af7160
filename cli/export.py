"""`stemma export card` (a Hugging Face model card) and `stemma export openlineage`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry

from ._common import JsonOpt, RepoOpt, emit_json, fail


def register(export_app: typer.Typer) -> None:
    """Add the card and OpenLineage exports to the `export` sub-app (once)."""
    if any(c.name == "card" for c in export_app.registered_commands):
        return
    export_app.command("card")(card)
    export_app.command("openlineage")(openlineage)


def card(
    name: Annotated[str, typer.Argument(help="Model version: NAME or NAME@REF.")],
    folder: Annotated[Path, typer.Argument(help="Folder to write README.md (and weights) in.")],
    weights: Annotated[
        bool,
        typer.Option(
            "--weights",
            help="Also write the folder layout the model's library loads (transformers,"
            " timm: config.json + model.safetensors; adapters: PEFT's files).",
        ),
    ] = False,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Write a Hugging Face model card: front matter the Hub reads, lineage and checks."""
    from stemma.registry.card import export_card

    written = export_card(Registry.open(repo), name, folder, weights=weights)
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
            "--output", "-o", help="Write the events to FILE (JSON lines).", show_default=False
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="POST each event to this OpenLineage endpoint (e.g. Marquez's /api/v1/lineage).",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", help="OpenLineage namespace of jobs and datasets.")
    ] = "stemma",
    repo: RepoOpt = Path("."),
) -> None:
    """Emit an OpenLineage START and COMPLETE (or FAIL) event for every build in history."""
    from stemma.registry import openlineage as lib

    if output is not None and url is not None:
        raise fail("give --output or --url, not both", code=2)
    events = lib.events(Registry.open(repo), since=since, namespace=namespace)
    if url is not None:
        lib.post(events, url)
        typer.echo(f"posted {len(events)} events to {url}", err=True)
        return
    text = lib.to_jsonl(events)
    if output is not None:
        from stemma.registry.files import write_atomic

        write_atomic(output, text)
        typer.echo(f"wrote {len(events)} events to {output}", err=True)
        return
    typer.echo(text, nl=False)
