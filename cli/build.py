"""`stemma build dataset|model NAME` (run by `dvc repro`) and `stemma register NAME`.

The build library (and torch with it) loads only when a command runs (`app.library`), so
listing help never pays for it. Each build command first pins the numeric mode of stemma.yaml
(migration/numerics.py), which must happen before anything imports torch in this process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from stemma.migration import distributed as dist
from stemma.migration.numerics import pin_for_repo
from stemma.registry import Registry
from stemma.registry.errors import UsageError
from stemma.registry.records.manifest import DatasetManifest, ModelManifest
from stemma.registry.rules.layout import DATASETS_DIR, MANIFEST_FILE, MODELS_DIR
from stemma.registry.store.derived import held

from ._common import RepoOpt, emit_json
from ._result import ResultJsonOpt
from .app import library

app = typer.Typer(help="Build datasets and models (run by dvc repro).", no_args_is_help=True)

NameArg = Annotated[
    str, typer.Argument(help="Name of the dataset or model (its folder).", show_default=False)
]


@app.command("dataset")
def dataset(name: NameArg, json_: ResultJsonOpt = False, repo: RepoOpt = Path(".")) -> None:
    """Materialize a dataset spec: write data.npz and manifest.json."""
    pin_for_repo(repo)  # before torch loads
    build_dataset = library("migration.build").build_dataset
    reg = Registry.open(repo)
    doc = build_dataset(reg, name)
    manifest = DatasetManifest.from_dict(doc, reg.rel(DATASETS_DIR, name, MANIFEST_FILE))
    splits = manifest.splits
    if json_:
        emit_json(
            {
                "kind": "dataset",
                "name": name,
                "id": manifest.id,
                "samples": {split: splits[split].samples for split in sorted(splits)},
                "shape": list(manifest.shape),
                "task": manifest.task_name,
                "classes": list(manifest.classes),
            }
        )
        return
    train, eval_ = splits["train"], splits["eval"]  # a built dataset's two splits, by name
    typer.echo(
        f"built dataset {name}: {train.samples} train / {eval_.samples} eval samples of shape"
        f" {'x'.join(map(str, manifest.shape))}, {_targets(manifest)}, id {manifest.id[7:19]}"
    )


def _targets(manifest: DatasetManifest) -> str:
    """What a dataset's labels are: classes, labels or regression targets."""
    task = manifest.task_name
    if task == "regression":
        return "regression targets"
    return f"{len(manifest.classes)} {'labels' if task == 'multilabel' else 'classes'}"


@contextmanager
def _epoch_bar(name: str) -> Iterator[Any]:
    """A rich progress bar on stderr; yields the callback the training loop calls."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"training {name}", total=None, info="")

        def update(epoch: int, total: int, info: Mapping[str, Any]) -> None:
            # the curve's eval metric is the task's main one (accuracy, r2, map)
            metric, value = next(
                (k, v) for k, v in info.items() if k.startswith("eval_") and k != "eval_loss"
            )
            text = f"loss {info['train_loss']:.4f}  {metric.replace('_', ' ')} {value:.4f}"
            bar.update(task, completed=epoch, total=total, info=text)

        yield update


@app.command("model")
def model(
    name: NameArg,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_: ResultJsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Build a model from its spec: map the source, train, evaluate, write weights and manifest.
    A spec asking for several processes (training.distributed) runs under torchrun."""
    if dist.launched() and not dist.is_writer():
        with held():  # the other ranks read the caches and write nothing
            _model(name, True, json_, repo)
        return
    _model(name, quiet, json_, repo)


def _model(name: str, quiet: bool, json_: bool, repo: Path) -> None:
    """`model`'s work: relaunch under torchrun when asked, else build and report."""
    reg = Registry.open(repo)
    spec = reg.model_spec(name)
    want = dist.requested(spec.training, reg.settings.training)
    if want is not None and not dist.launched():  # start again as N processes, then done
        args = ["build", "model", name, "--repo", str(repo), *(["--quiet"] if quiet else [])]
        code = subprocess.call(dist.launch_argv(want, [*args, *(["--json"] if json_ else [])]))
        raise typer.Exit(code)
    pin_for_repo(repo)  # before torch loads
    build_model = library("migration.build").build_model
    if quiet or not dist.is_writer():
        doc = build_model(reg, name)
    else:
        with _epoch_bar(name) as progress:
            doc = build_model(reg, name, progress=progress)
    if not doc:  # another rank than 0 of a distributed build: rank 0 reports
        return
    manifest = ModelManifest.from_dict(doc, reg.rel(MODELS_DIR, name, MANIFEST_FILE))
    failed = list(manifest.failed_gates)
    if json_:  # the progress bar is on stderr, so stdout stays one JSON document
        emit_json(
            {
                "kind": "model",
                "name": name,
                "id": manifest.id,
                "metrics": dict(manifest.metrics),
                "failed_gates": failed,
                "device": manifest.run.device,
            }
        )
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(manifest.metrics.items()))
    note = f"; failed gates: {', '.join(failed)}" if failed else ""
    typer.echo(
        f"built model {name}: {metrics} on {manifest.run.device}, id {manifest.id[7:19]}{note}"
    )


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} expects comma-separated integers, got {text!r}") from None


def _options(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--options: not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError("--options: nested too deeply") from None
    if not isinstance(value, dict):
        raise UsageError("--options: expected a JSON object")
    return value


def register(
    name: Annotated[
        str, typer.Argument(help="Name for the imported model (its folder).", show_default=False)
    ],
    weights: Annotated[
        Path,
        typer.Option(
            "--weights",
            "-w",
            help="A .safetensors file, a .pt state dict (loaded with weights_only=True) or a"
            " Hugging Face snapshot folder as the Hub ships it (config.json, model.safetensors"
            " or shards with their index, tokenizer files, README.md card; a base without a"
            " head is kept as is).",
            show_default=False,
        ),
    ],
    family: Annotated[
        str | None,
        typer.Option(
            help="Architecture family: mlp, cnn, entrypoint, timm, torchvision or transformers"
            " (mlp/cnn inferred from the tensors when omitted)."
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option("--name", help="timm or torchvision model name, e.g. resnet18."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="A transformers config.json (family transformers)."),
    ] = None,
    options: Annotated[
        str | None,
        typer.Option(help="Constructor keyword arguments as a JSON object."),
    ] = None,
    source: Annotated[str | None, typer.Option(help="The model these weights derive from.")] = None,
    relation: Annotated[
        str, typer.Option(help="Relation to --source: finetune, adapter, distill, ...")
    ] = "finetune",
    hidden: Annotated[str | None, typer.Option(help="mlp hidden widths, e.g. 128,64.")] = None,
    channels: Annotated[str | None, typer.Option(help="cnn channels, e.g. 16,32.")] = None,
    entrypoint: Annotated[
        str | None,
        typer.Option(help="Trusted module:function that builds the module (family entrypoint)."),
    ] = None,
    in_shape: Annotated[
        str | None,
        typer.Option(
            "--in-shape", help="Input shape C,H,W (or F) when the weights do not show it."
        ),
    ] = None,
    eval_: Annotated[
        str | None,
        typer.Option("--eval", help="Built dataset to compute metrics on (its eval split)."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="One-line description.")] = None,
    json_: ResultJsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Import externally trained weights as a model: weights.safetensors plus a manifest."""
    arch: dict[str, Any] | None = None
    if config is not None:
        read_hf_config = library("migration.families").read_hf_config
        family = family or "transformers"
        arch = {"family": family, "config": read_hf_config(config, str(config))}
    elif family is not None:
        arch = {"family": family}
        if model_name is not None:
            arch["name"] = model_name
        if hidden is not None:
            arch["hidden"] = _ints(hidden, "--hidden")
        if channels is not None:
            arch["channels"] = _ints(channels, "--channels")
        if entrypoint is not None:
            arch["entrypoint"] = entrypoint
    elif hidden or channels or entrypoint or model_name or options:
        raise UsageError("--hidden, --channels, --entrypoint, --name and --options need --family")
    if options is not None and arch is not None:
        arch["options"] = _options(options)
    register_model = library("migration.build").register_model
    reg = Registry.open(repo)
    doc = register_model(
        reg,
        name,
        weights,
        architecture=arch,
        eval_dataset=eval_,
        in_shape=_ints(in_shape, "--in-shape"),
        description=description,
        source=source,
        relation=relation,
    )
    manifest = ModelManifest.from_dict(doc, reg.rel(MODELS_DIR, name, MANIFEST_FILE))
    if json_:
        emit_json(
            {
                "kind": "model",
                "name": name,
                "id": manifest.id,
                "family": manifest.architecture.family,
                "parameters": manifest.parameters.total,
                "metrics": dict(manifest.metrics),
                "source": None if manifest.source is None else manifest.source.to_dict(),
                # the Hub models a card names: a registered model's own spec key, not typed
                "external_sources": manifest.spec.get("external_sources", []),
                "tokenizer": sorted(manifest.tokenizer.files) if manifest.tokenizer else [],
            }
        )
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(manifest.metrics.items()))
    typer.echo(
        f"registered model {name}: {manifest.parameters.total} parameters"
        f" ({manifest.architecture.family}){', ' + metrics if metrics else ''},"
        f" id {manifest.id[7:19]}"
    )
