"""A Hugging Face model card for a model version, written from its manifest alone.

The YAML front matter uses the Hub's model card fields (`base_model`, `base_model_relation`,
`datasets`, `tags`, `license`, `library_name`, `model-index`), so `huggingface_hub.ModelCard`
reads it; the Markdown body carries the lineage, the transfer report, the gates and the checks.
Nothing here imports torch or huggingface_hub: a card is text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import StemmaError
from .files import Outputs
from .records import Manifest
from .registry import Registry
from .versions import resolve

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
# weights family -> the Hub's library_name (the library whose loader reads the files)
LIBRARY = {"transformers": "transformers", "timm": "timm"}


@dataclass(frozen=True)
class Card:
    """A written model card: where it is and the files beside it."""

    path: Path
    files: tuple[Path, ...]
    front_matter: dict[str, Any]


def _spec_field(reg: Registry, name: str, key: str) -> Any:
    """A top-level field of a model's spec in the working tree (None when absent)."""
    try:
        return reg.model_spec(name).raw.get(key) if reg.has_model(name) else None
    except StemmaError:
        return None


def _lineage(reg: Registry, manifest: Manifest) -> list[dict[str, Any]]:
    """The chain of sources, nearest first, each with the id recorded and the id now."""
    chain: list[dict[str, Any]] = []
    seen = {manifest.name}
    src = manifest.raw.get("source")
    while isinstance(src, dict) and src.get("model") not in seen:
        name = str(src["model"])
        seen.add(name)
        try:
            now = reg.model_manifest(name) if reg.has_model(name) else None
        except StemmaError:
            now = None
        chain.append(
            {
                "model": name,
                "relation": src.get("relation"),
                "id": src.get("id"),
                "current": None if now is None else now.id,
            }
        )
        src = None if now is None else now.raw.get("source")
    return chain


def _task(reg: Registry, dataset: str | None) -> str:
    """The Hub's task type for the model's data: image or tabular, classification or
    regression (from the dataset manifest's task and sample shape)."""
    try:
        dm = reg.dataset_manifest(dataset) if dataset and reg.has_dataset(dataset) else None
    except StemmaError:
        dm = None
    raw = dm.raw if dm is not None else {}
    shape = raw.get("shape") or []
    kind = str(raw.get("task") or "classification")
    kind = {"multilabel": "classification", "multi-label": "classification"}.get(kind, kind)
    modality = "image" if len(shape) == 3 else "tabular"
    return f"{modality}-{kind}"


def front_matter(reg: Registry, manifest: Manifest) -> dict[str, Any]:
    """The card's YAML metadata, in the Hub's field names."""
    raw = manifest.raw
    spec = raw.get("spec") or {}
    family = str(((raw.get("architecture") or {}).get("config") or {}).get("family", ""))
    src = raw.get("source")
    meta: dict[str, Any] = {}
    relation = None
    if isinstance(src, dict):
        relation = str(src.get("relation") or "finetune")
        meta["base_model"] = _spec_field(reg, str(src["model"]), "hub_id") or src["model"]
        meta["base_model_relation"] = HUB_RELATION.get(relation, "finetune")
    datasets = raw.get("datasets") or {}
    names = [datasets[r]["name"] for r in ("train", "eval") if r in datasets]
    if names:
        meta["datasets"] = list(dict.fromkeys(names))
    tags = ["stemma", *(spec.get("tags") or [])]
    if family:
        tags.append(family)
    if relation == "distill":
        tags.append("distillation")
    meta["tags"] = list(dict.fromkeys(tags))
    if spec.get("license"):
        meta["license"] = spec["license"]
    meta["library_name"] = "peft" if relation == "adapter" else LIBRARY.get(family, "pytorch")
    metrics = {k: v for k, v in (raw.get("metrics") or {}).items() if isinstance(v, (int, float))}
    if metrics and names:
        evaluated: dict[str, Any] = datasets.get("eval") or datasets["train"]
        meta["model-index"] = [
            {
                "name": manifest.name,
                "results": [
                    {
                        "task": {"type": _task(reg, evaluated["name"])},
                        "dataset": {
                            "name": evaluated["name"],
                            "type": evaluated["name"],
                            "revision": evaluated.get("id"),
                        },
                        "metrics": [
                            {"type": k, "name": k, "value": v} for k, v in sorted(metrics.items())
                        ],
                        "source": {"name": "stemma", "url": f"stemma:{manifest.id}"},
                    }
                ],
            }
        ]
    return meta


def _json(value: Any) -> str:
    return "`" + json.dumps(value, sort_keys=True) + "`"


def body(reg: Registry, manifest: Manifest) -> str:
    """The card's Markdown: what the model is, where it comes from, how it was checked."""
    raw = manifest.raw
    spec = raw.get("spec") or {}
    out = [f"# {manifest.name}", ""]
    if spec.get("description"):
        out += [str(spec["description"]), ""]
    out += [f"stemma version `{manifest.id}`, weights `{raw['weights']['sha256']}`.", ""]
    out += ["## Lineage", ""]
    chain = _lineage(reg, manifest)
    if not chain:
        out.append("Trained from scratch.")
    for hop in chain:
        stale = hop["current"] is not None and hop["current"] != hop["id"]
        verb = "distilled from" if hop["relation"] == "distill" else f"{hop['relation']} of"
        note = f" (now {str(hop['current'])[:19]}: rebuild to follow it)" if stale else ""
        out.append(f"- {verb} **{hop['model']}** `{str(hop['id'])[:19]}`{note}")
    for role, ref in sorted((raw.get("datasets") or {}).items()):
        out.append(f"- {role} data: **{ref['name']}** `{str(ref['id'])[:19]}`")
    out += ["", "## Transfer report", ""]
    transfer = raw.get("transfer") or {}
    for key in sorted(transfer):
        out.append(f"- {key}: {_json(transfer[key])}")
    tensors = (raw.get("architecture") or {}).get("tensors") or []
    origins: dict[str, int] = {}
    for t in tensors:
        origins[t["origin"]] = origins.get(t["origin"], 0) + 1
    if origins:
        counts = ", ".join(f"{n} {o}" for o, n in sorted(origins.items()))
        frozen = sum(1 for t in tensors if t.get("frozen"))
        out.append(f"- tensors: {counts}; {frozen} frozen")
    params = raw.get("parameters") or {}
    if params:
        out.append(f"- parameters: {_json(params)}")
    if spec.get("training"):
        out.append(f"- training: {_json(spec['training'])}")
    out += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in sorted((raw.get("metrics") or {}).items())]
    out += ["", "## Gates", ""]
    gates = raw.get("gates") or []
    if gates:
        out += ["| metric | rule | value | passed |", "| --- | --- | --- | --- |"]
        out += [
            f"| {g['metric']} | {g['op']} {g['threshold']} | {g['value']} | {g['passed']} |"
            for g in gates
        ]
    else:
        out.append("No gates declared.")
    out += ["", "## Checks", ""]
    checks = raw.get("checks") or {}
    if checks:
        out += ["| check | passed | figures |", "| --- | --- | --- |"]
        for name, result in sorted(checks.items()):
            figures = result.get("figures") or {}
            shown = {k: v for k, v in figures.items() if not isinstance(v, dict)}
            out.append(f"| {name} | {result.get('passed')} | {_json(shown)} |")
    else:
        out.append("No checks declared.")
    return "\n".join(out) + "\n"


def render(reg: Registry, manifest: Manifest) -> tuple[dict[str, Any], str]:
    """(front matter, whole README.md text) of the model card."""
    meta = front_matter(reg, manifest)
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"
    return meta, text + body(reg, manifest)


def export_card(
    reg: Registry, ref: str, folder: Path, weights: bool = False, overwrite: bool = False
) -> Card:
    """Write `folder/README.md` for `NAME[@REF]`, and with `weights` the files the model's
    own library loads; refuses (writing nothing) a family without such a layout, and a
    target that `Outputs` refuses (an existing file unless `overwrite`, a registry file, a
    link, a pipe or a device)."""
    from .hubfiles import weight_files

    manifest = resolve(reg, ref)
    planned = weight_files(reg, manifest) if weights else []
    meta, text = render(reg, manifest)
    planned.append((CARD_FILE, text.encode()))
    outputs = Outputs.for_registry(reg.repo_root, reg.root, overwrite)
    outputs.folder(folder)
    folder = Path(folder)
    for name, _ in planned:  # every target checked before the first is written
        outputs.file(folder / name)
    for name, data in planned:
        outputs.write(folder / name, data)
    return Card(folder / CARD_FILE, tuple(folder / name for name, _ in planned[:-1]), meta)
