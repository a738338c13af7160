"""A Hugging Face model card for a model version, written from its manifest alone.

The YAML front matter uses the Hub's model card fields (`base_model`, `base_model_relation`,
`datasets`, `tags`, `license`, `pipeline_tag`, `library_name`, `model-index`), so
`huggingface_hub.ModelCard` reads it; `base_model` and `datasets` hold Hub ids only, and the
registry's own names and versions sit under `stemma`. The Markdown body carries a usage
snippet, the lineage, the transfer report, the gates and the checks. Nothing here imports
torch or huggingface_hub: a card is text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from stemma.registry.errors import StemmaError
from stemma.registry.publish._cardusage import usage
from stemma.registry.publish.hubfiles import record_weight_files
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.core import DatasetSpec, Manifest, ModelSpec
from stemma.registry.records.manifest import (
    ModelManifest,
    dataset_record,
    model_record,
    record_of,
)
from stemma.registry.store.files import Outputs
from stemma.registry.store.handle import Registry
from stemma.registry.versions.resolve import resolve

CARD_FILE = "README.md"
# stemma relation -> the Hub's base_model_relation. The Hub has no word for distillation: a
# distilled student is trained from its teacher, so it maps to "finetune" and the card adds
# the tag "distillation" and says so in the body.
HUB_RELATION = {
    "finetune": "finetune",
    "adapter": "adapter",
    "quantized": "quantized",
    "merge": "merge",
    "distill": "finetune",
}
# weights family -> the Hub's library_name (the library whose loader reads the files). The
# Hub's list of libraries (huggingface.js `model-libraries.ts`) has no entry for a plain torch
# module: stemma's own families (and torchvision's, also absent) leave library_name out, as
# huggingface_hub's PyTorchModelHubMixin does, rather than name a library that cannot load them
LIBRARY = {"transformers": "transformers", "timm": "timm"}


@dataclass(frozen=True)
class Card:
    """A written model card: where it is and the files beside it."""

    path: Path
    files: tuple[Path, ...]
    front_matter: dict[str, Any]


def _spec_hub_id(reg: Registry, kind: str, name: str, recorded: Manifest | None) -> str | None:
    """The `hub_id` a spec declares: the working tree's spec, else the one the version
    recorded (a model registered from a Hub snapshot has no spec file, only that)."""
    try:
        if kind == "model" and reg.has_model(name):
            value = reg.model_spec(name).hub_id
        elif kind == "dataset" and reg.has_dataset(name):
            value = reg.dataset_spec(name).hub_id
        else:
            value = None
    except StemmaError:
        value = None
    if not value and recorded is not None:
        spec = record_of(recorded).spec  # the spec the build used
        declared = ModelSpec if kind == "model" else DatasetSpec
        value = declared.from_dict(name, spec).hub_id
    return value or None


def _manifest(reg: Registry, kind: str, name: str) -> Manifest | None:
    try:
        if kind == "model":
            return reg.model_manifest(name) if reg.has_model(name) else None
        return reg.dataset_manifest(name) if reg.has_dataset(name) else None
    except StemmaError:
        return None


def hub_id(reg: Registry, name: str) -> str | None:
    """A model's Hugging Face Hub id, where one is known (spec `hub_id`)."""
    return _spec_hub_id(reg, "model", name, _manifest(reg, "model", name))


@dataclass(frozen=True)
class _Hop:
    """A link of the lineage: the parent, how the child came from it, its id then and now."""

    model: str
    relation: str
    id: str
    current: str | None = None  # the parent's manifest id today (None: not built)


def _sources(manifest: ModelManifest) -> list[_Hop]:
    """The parents a manifest records: a merge's `source.parents` (all with the merge's
    relation), else its one `source`."""
    src = manifest.source
    if src is None:
        return []
    if src.parents is not None:  # a merge's several
        return [_Hop(p.model, src.relation, p.id) for p in src.parents]
    return [_Hop(src.model, src.relation, src.id)]


@dataclass(frozen=True)
class _Parent:
    """A recorded parent as the card names it (its fields are the card's keys, in order)."""

    model: str
    relation: str
    version: str  # the parent's manifest id the build used
    hub_id: str | None


@dataclass(frozen=True)
class _Data:
    """A recorded dataset as the card names it (its fields are the card's keys, in order)."""

    role: str
    name: str
    version: str  # the dataset's manifest id the build used
    hub_id: str | None


def _parents(reg: Registry, manifest: ModelManifest) -> list[_Parent]:
    return [
        _Parent(src.model, src.relation, src.id, hub_id(reg, src.model))
        for src in _sources(manifest)
    ]


def parents(reg: Registry, manifest: Manifest) -> list[dict[str, Any]]:
    """Each recorded parent: name, relation, the version used and its Hub id (or None)."""
    return [asdict(p) for p in _parents(reg, model_record(manifest))]


def _lineage(reg: Registry, name: str, built: ModelManifest) -> list[_Hop]:
    """Every ancestor, depth first from each parent, with the id recorded and the id now."""
    chain: list[_Hop] = []
    seen = {name}
    todo = list(reversed(_sources(built)))
    while todo:
        src = todo.pop()
        if src.model in seen:
            continue
        seen.add(src.model)
        now = _manifest(reg, "model", src.model)
        chain.append(_Hop(src.model, src.relation, src.id, None if now is None else now.id))
        if now is not None:
            todo += reversed(_sources(model_record(now)))
    return chain


def pipeline_tag(config: ArchitectureConfig, task: str | None) -> str | None:
    """The Hub's pipeline tag for what the model does: text classification for a
    transformers sequence classifier, image classification for images, tabular
    classification or regression for feature vectors. None for image regression, which the
    Hub has no tag for."""
    regression = task == "regression"
    if task == "causal-lm":
        return "text-generation"
    if config.family == "transformers":
        if config.num_classes == 0:  # a registered base without a head
            return "feature-extraction"
        return "text-classification"  # transformers' own tag, regression heads included
    if len(config.in_shape or []) == 3:
        return None if regression else "image-classification"
    return "tabular-regression" if regression else "tabular-classification"


def _datasets(reg: Registry, manifest: ModelManifest) -> list[_Data]:
    """Each dataset role the version recorded, with its Hub id (or None)."""
    out = []
    for role in ("train", "eval"):
        ref = manifest.datasets.get(role)
        if ref is not None:
            found = _manifest(reg, "dataset", ref.name)
            hub = _spec_hub_id(reg, "dataset", ref.name, found)
            out.append(_Data(role, ref.name, ref.id, hub))
    return out


def front_matter(reg: Registry, manifest: Manifest) -> dict[str, Any]:
    """The card's YAML metadata, in the Hub's field names. `base_model` and `datasets` hold
    Hub ids only (the Hub reads any other string as one, and links it to whatever repository
    has that name); registry names and versions go under `stemma`, marked as local."""
    return _front_matter(reg, manifest, model_record(manifest))


def _front_matter(reg: Registry, manifest: Manifest, built: ModelManifest) -> dict[str, Any]:
    spec = built.spec  # the resolved spec the build used (a registered model's has more)
    declared = ModelSpec.from_dict(manifest.name, spec)
    config = built.architecture.block
    family = built.architecture.family
    linked = _parents(reg, built)
    relation = linked[0].relation if linked else None
    meta: dict[str, Any] = {}
    bases = list(dict.fromkeys(p.hub_id for p in linked if p.hub_id is not None))
    # Hub parents a registered snapshot's card named (`stemma register`): Hub ids already
    external = declared.external_sources
    bases += [e.hub_id for e in external if e.hub_id is not None and e.hub_id not in bases]
    relation = relation or (external[0].relation if external else None)
    if bases:
        # a merge lists its parents even when one is recorded, as the Hub's merges do
        several = relation == "merge" or len(bases) > 1
        meta["base_model"] = bases if several else bases[0]
        meta["base_model_relation"] = HUB_RELATION.get(str(relation), "finetune")
    data = _datasets(reg, built)
    hub_data = list(dict.fromkeys(d.hub_id for d in data if d.hub_id is not None))
    if hub_data:
        meta["datasets"] = hub_data
    tags = ["stemma", *declared.tags]
    if family:
        tags.append(family)
    if relation == "distill":
        tags.append("distillation")
    meta["tags"] = list(dict.fromkeys(tags))
    if declared.license:
        meta["license"] = declared.license
    if not config.in_shape and data:  # older manifests: the data's sample shape
        found = _manifest(reg, "dataset", data[-1].name)
        shape = [] if found is None else list(dataset_record(found).shape)
        config = ArchitectureConfig.from_dict({**config.doc, "in_shape": shape})
    tag = pipeline_tag(config, built.task)
    if tag:
        meta["pipeline_tag"] = tag
    adapter = built.adapter is not None or relation == "adapter"
    library = "peft" if adapter else LIBRARY.get(family)
    if library:
        meta["library_name"] = library
    metrics = {k: v for k, v in built.metrics.items() if isinstance(v, (int, float))}
    if metrics and data:
        evaluated = data[-1]  # eval when recorded, else train
        meta["model-index"] = [
            {
                "name": manifest.name,
                "results": [
                    {
                        "task": {"type": tag or "other"},
                        "dataset": {
                            "name": evaluated.name,
                            "type": evaluated.hub_id or evaluated.name,
                            "revision": evaluated.version,
                        },
                        "metrics": [
                            {"type": k, "name": k, "value": v} for k, v in sorted(metrics.items())
                        ],
                        "source": {"name": "stemma", "url": f"stemma:{manifest.id}"},
                    }
                ],
            }
        ]
    meta["stemma"] = {
        "name": manifest.name,
        "version": manifest.id,
        "base_models": [asdict(p) for p in linked],
        "datasets": [asdict(d) for d in data],
    }
    return meta


def _json(value: Any) -> str:
    return "`" + json.dumps(value, sort_keys=True) + "`"


def body(reg: Registry, manifest: Manifest, usage_lines: list[str] | None = None) -> str:
    """The card's Markdown: what the model is, how to load it, where it comes from, how it
    was checked."""
    return _body(reg, manifest, model_record(manifest), usage_lines)


def _body(
    reg: Registry, manifest: Manifest, built: ModelManifest, usage_lines: list[str] | None
) -> str:
    spec = built.spec  # the resolved spec the build used
    declared = ModelSpec.from_dict(manifest.name, spec)
    out = [f"# {manifest.name}", ""]
    if declared.description:
        out += [declared.description, ""]
    out += [f"stemma version `{manifest.id}`, weights `{built.weights.sha256}`.", ""]
    out += usage_lines or []
    out += ["## Lineage", ""]
    chain = _lineage(reg, manifest.name, built)
    if not chain:
        out.append("Trained from scratch.")
    for hop in chain:
        stale = hop.current is not None and hop.current != hop.id
        verb = "distilled from" if hop.relation == "distill" else f"{hop.relation} of"
        note = f" (now {str(hop.current)[:19]}: rebuild to follow it)" if stale else ""
        out.append(f"- {verb} **{hop.model}** `{hop.id[:19]}`{note}")
    for role, ref in sorted(built.datasets.items()):
        out.append(f"- {role} data: **{ref.name}** `{ref.id[:19]}`")
    out += ["", "## Transfer report", ""]
    transfer = {} if built.transfer is None else built.transfer.to_dict()
    for key in sorted(transfer):
        out.append(f"- {key}: {_json(transfer[key])}")
    tensors = built.architecture.tensors
    origins: dict[str, int] = {}
    for t in tensors:
        origins[t.origin] = origins.get(t.origin, 0) + 1
    if origins:
        counts = ", ".join(f"{n} {o}" for o, n in sorted(origins.items()))
        frozen = sum(1 for t in tensors if t.frozen)
        out.append(f"- tensors: {counts}; {frozen} frozen")
    out.append(f"- parameters: {_json(built.parameters.to_dict())}")
    if declared.training:
        out.append(f"- training: {_json(declared.training)}")
    out += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in sorted(built.metrics.items())]
    generations = built.lm.generations if built.lm is not None else ()
    if generations:  # JSON strings: a prompt's newlines or Markdown stay inert text
        out += ["", "## Sample generations (greedy)", ""]
        out += [f"- {_json(g.prompt)} -> {_json(g.output)}" for g in generations]
    out += ["", "## Gates", ""]
    if built.gates:
        out += ["| metric | rule | value | passed |", "| --- | --- | --- | --- |"]
        out += [
            f"| {g.metric} | {g.op} {g.threshold} | {g.value} | {g.passed} |" for g in built.gates
        ]
    else:
        out.append("No gates declared.")
    out += ["", "## Checks", ""]
    if built.checks:
        out += ["| check | passed | figures |", "| --- | --- | --- |"]
        for name, result in sorted(built.checks.items()):
            shown = {k: v for k, v in result.figures.items() if not isinstance(v, dict)}
            out.append(f"| {name} | {result.passed} | {_json(shown)} |")
    else:
        out.append("No checks declared.")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class _Targets:
    """Where the usage snippet loads the model from, and an adapter its base."""

    where: str  # the model's Hub id, else its export folder
    hub: bool  # `where` is a Hub id
    base_ref: str | None  # an adapter's base: its Hub id, else where its export goes
    base_hub: bool  # `base_ref` is a Hub id


def _targets(
    reg: Registry, manifest: Manifest, built: ModelManifest, folder: Path | None
) -> _Targets:
    """Where the snippet loads from: the model's Hub id, else the export folder; for an
    adapter, its base's Hub id, else the folder its own export goes to (beside this one)."""
    own = hub_id(reg, manifest.name)
    where = own or (str(folder) if folder is not None else manifest.name)
    base_name = None if built.adapter is None else built.adapter.base.model
    base_hub = hub_id(reg, base_name) if base_name else None
    base_ref = base_hub
    if base_name and base_hub is None:
        base_ref = str(Path(folder).parent / base_name) if folder is not None else base_name
    return _Targets(where, own is not None, base_ref, base_hub is not None)


def render(
    reg: Registry, manifest: Manifest, folder: Path | None = None
) -> tuple[dict[str, Any], str]:
    """(front matter, whole README.md text) of the model card exported to `folder`."""
    built = model_record(manifest)
    return _render(reg, manifest, built, _targets(reg, manifest, built, folder))


def _render(
    reg: Registry, manifest: Manifest, built: ModelManifest, targets: _Targets
) -> tuple[dict[str, Any], str]:
    meta = _front_matter(reg, manifest, built)
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"
    lines = usage(built, targets.where, targets.hub, targets.base_ref, targets.base_hub)
    return meta, text + _body(reg, manifest, built, lines)


def export_card(
    reg: Registry, ref: str, folder: Path, weights: bool = False, overwrite: bool = False
) -> Card:
    """Write `folder/README.md` for `NAME[@REF]`, and with `weights` the files the model's
    own library loads (for an adapter, PEFT's files naming the base by its Hub id, else by
    the folder beside this one that `stemma export card BASE` would write); refuses
    (writing nothing) a family without such a layout, and a target that `Outputs` refuses
    (an existing file unless `overwrite`, a registry file, a link, a pipe or a device)."""
    manifest = resolve(reg, ref)
    built = model_record(manifest)
    folder = Path(folder)
    targets = _targets(reg, manifest, built, folder)
    planned = record_weight_files(reg, manifest, built, targets.base_ref) if weights else []
    meta, text = _render(reg, manifest, built, targets)
    planned.append((CARD_FILE, text.encode()))
    outputs = Outputs.for_registry(reg.repo_root, reg.root, overwrite)
    outputs.folder(folder)
    for name, _ in planned:  # every target checked before the first is written
        outputs.file(folder / name)
    for name, data in planned:
        outputs.write(folder / name, data)
    return Card(folder / CARD_FILE, tuple(folder / name for name, _ in planned[:-1]), meta)
