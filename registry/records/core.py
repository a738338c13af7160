"""Frozen records for specs, manifests and settings: pure data, no file I/O.

The JSON Schema is the contract for files; these dataclasses are the contract for code.
Every loader validates first (`store/documents.py`), so a record always holds a
schema-valid document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stemma.registry.records.checkspec import DeclaredChecks
from stemma.registry.rules import taskspec
from stemma.registry.rules.classlabels import class_labels
from stemma.registry.rules.contentid import content_id, digest
from stemma.registry.rules.gates import GateResult
from stemma.registry.rules.naming import ENTRYPOINT_RE
from stemma.registry.rules.parents import primary
from stemma.registry.rules.status import Built

MODEL_SPEC = "model-spec"
DATASET_SPEC = "dataset-spec"
MODEL_MANIFEST = "model-manifest"
DATASET_MANIFEST = "dataset-manifest"
SETTINGS = "settings"
# stemma.yaml's `limits` and their defaults: a spec whose model would be larger is refused
# by `validate` and by the build before anything is allocated (registry/archrules.py);
# weights larger than `max_shard_bytes` are saved in shards (migration/shards.py).
LIMITS: Mapping[str, int] = {
    "max_parameters": 1_000_000_000,
    "max_layers": 1024,
    "max_shard_bytes": 20 << 30,
}


def settings_look_valid(doc: Any) -> bool:
    """A hand-written check that stemma.yaml matches its schema: every command opens the
    registry, and importing jsonschema costs more than the rest of `stemma ls`."""
    if not isinstance(doc, dict) or type(doc.get("version")) is not int or doc["version"] != 1:
        return False  # `version: true` is no version (True == 1 in Python)
    if set(doc) - {"version", "root", "entrypoints", "defaults", "limits"}:
        return False
    limits = doc.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - set(LIMITS):
        return False
    if not all(type(v) is int and v >= 1 for v in limits.values()):
        return False  # the schema's integers: no bool, no float
    root = doc.get("root", ".")
    if not isinstance(root, str) or not root or root.startswith(("/", "~")) or len(root) > 255:
        return False
    if not root.isprintable():
        return False
    entrypoints = doc.get("entrypoints", [])
    if not isinstance(entrypoints, list) or len(set(map(str, entrypoints))) != len(entrypoints):
        return False
    if entrypoints and not all(isinstance(e, str) and ENTRYPOINT_RE.match(e) for e in entrypoints):
        return False
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - {"training", "device", "numerics"}:
        return False
    if defaults.get("numerics", "portable") not in ("portable", "native"):
        return False
    # Training defaults have value ranges: the schema checks them.
    return defaults.get("training", {}) == {} and defaults.get("device", "auto") in (
        "auto",
        "cpu",
        "cuda",
    )


@dataclass(frozen=True)
class Settings:
    """The registry settings from stemma.yaml."""

    root: str = "."
    entrypoints: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    given_limits: Mapping[str, int] = field(default_factory=dict)  # as stemma.yaml says them

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Settings:
        """Build from a validated stemma.yaml document."""
        return cls(
            root=str(doc.get("root", ".")),
            entrypoints=tuple(doc.get("entrypoints", ())),
            defaults=dict(doc.get("defaults", {})),
            given_limits=dict(doc.get("limits", {})),
        )

    @property
    def training(self) -> dict[str, Any]:
        """The training defaults a spec's training block leaves out (empty where none)."""
        return dict(self.defaults.get("training") or {})

    @property
    def limits(self) -> dict[str, int]:
        """Every limit: stemma.yaml's, the defaults for those it leaves out."""
        return {**LIMITS, **self.given_limits}

    def to_dict(self) -> dict[str, Any]:
        """The stemma.yaml document."""
        doc: dict[str, Any] = {"version": 1, "root": self.root}
        doc["entrypoints"] = list(self.entrypoints)
        if self.defaults:
            doc["defaults"] = dict(self.defaults)
        if self.given_limits:
            doc["limits"] = dict(self.given_limits)
        return doc


@dataclass(frozen=True)
class MergeSettings:
    """A merge spec's `source.merge:` block: mergekit's method and its parameters, each None
    where the spec leaves it to the method's default (migration/merge.py applies them)."""

    method: str | None = None
    weight: float | tuple[float, ...] | None = None  # one for all models, or one per model
    density: float | tuple[float, ...] | None = None
    t: float | None = None
    normalize: bool | None = None
    lam: float | None = None  # `lambda` in the spec

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> MergeSettings:
        """Read a validated `source.merge` block."""
        return cls(
            method=block.get("method"),
            weight=_one_or_many(block.get("weight")),
            density=_one_or_many(block.get("density")),
            t=block.get("t"),
            normalize=block.get("normalize"),
            lam=block.get("lambda"),
        )


def _one_or_many(value: Any) -> Any:
    """A number as given, an array of numbers as a tuple (None stays None)."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class SourceRef:
    """The `source:` block of a model spec."""

    model: str
    relation: str = "finetune"
    candidates: str | None = None
    score: str | None = None
    allow_failed_gates: bool = False  # derive from a source that failed its gates
    models: tuple[str, ...] = ()  # a merge's models, in the spec's order (else empty)
    base: str | None = None  # a merge's base model
    merge: MergeSettings | None = None  # a merge's method and parameters

    @property
    def auto(self) -> bool:
        """True when the source is chosen by exploration."""
        return self.model == "auto"


@dataclass(frozen=True)
class ExternalSource:
    """A parent on the Hugging Face Hub that a registered model's card named (recorded by
    `stemma register`, never fetched): its Hub id and relation, None where not given."""

    hub_id: str | None
    relation: str | None


@dataclass(frozen=True)
class LmSettings:
    """A causal-lm spec's `lm:` block, each None where the spec leaves it to the default."""

    block_size: int | None = None
    prompts: tuple[str, ...] | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class QuantizeSettings:
    """A quantized model's `quantize:` block: the method, and the largest relative drop
    allowed (None: the build's default)."""

    method: str
    max_drop: float | None = None


class _Described:
    """What model and dataset specs both declare about themselves."""

    raw: Mapping[str, Any]

    @property
    def description(self) -> str:
        """The one-line description ("" where the spec has none)."""
        return str(self.raw.get("description") or "")

    @property
    def hub_id(self) -> str | None:
        """The Hugging Face Hub id (org/name) it is published under, or None."""
        given = self.raw.get("hub_id")
        return None if given is None else str(given)


@dataclass(frozen=True)
class ModelSpec(_Described):
    """A declared model (models/NAME/spec.yaml)."""

    name: str
    path: str
    raw: Mapping[str, Any]
    registered: bool = False  # imported by `stemma register`: no spec.yaml, nothing to build

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any], path: str = "") -> ModelSpec:
        """Wrap a validated spec document."""
        return cls(name=name, path=path, raw=raw)

    def to_dict(self) -> dict[str, Any]:
        """The spec document."""
        return dict(self.raw)

    @property
    def digest(self) -> str:
        """Content digest of the spec, recorded in manifests to detect staleness."""
        return digest(self.raw)

    @property
    def license(self) -> str | None:
        """The license the model card names (an SPDX id or the Hub's name), or None."""
        given = self.raw.get("license")
        return None if given is None else str(given)

    @property
    def source(self) -> SourceRef | None:
        """The source model reference, or None for a model trained from scratch."""
        src = self.raw.get("source")
        if not src:
            return None
        merge = src.get("merge")
        return SourceRef(  # a merge's first parent: all of them are `parents_of(spec)`
            model=str(src["model"] if "model" in src else primary(self.raw) or ""),
            relation=src.get("relation", "finetune"),
            candidates=src.get("candidates"),
            score=src.get("score"),
            allow_failed_gates=bool(src.get("allow_failed_gates", False)),
            models=tuple(str(m) for m in src.get("models") or ()),
            base=None if src.get("base") is None else str(src["base"]),
            merge=None if merge is None else MergeSettings.from_dict(merge),
        )

    @property
    def external_sources(self) -> tuple[ExternalSource, ...]:
        """A registered model's parents on the Hub, in its card's order (the entries that
        are objects); empty for a model whose spec names none."""
        return tuple(
            ExternalSource(
                hub_id=None if e.get("hub_id") is None else str(e["hub_id"]),
                relation=None if e.get("relation") is None else str(e["relation"]),
            )
            for e in self.raw.get("external_sources") or ()
            if isinstance(e, Mapping)
        )

    @property
    def train(self) -> str:
        """Name of the training dataset ("" for a registered model that names none)."""
        return str((self.raw.get("data") or {}).get("train", ""))

    @property
    def eval(self) -> str:
        """Name of the evaluation dataset (the training dataset's eval split by default)."""
        return str((self.raw.get("data") or {}).get("eval", self.train))

    def _block(self, key: str) -> dict[str, Any]:
        return dict(self.raw.get(key) or {})

    @property
    def architecture(self) -> dict[str, Any]:
        """The architecture block (may be empty: inherited from the source)."""
        return self._block("architecture")

    @property
    def strategy(self) -> dict[str, Any]:
        """The transfer strategy block."""
        return self._block("strategy")

    @property
    def lora(self) -> bool:
        """True when the strategy trains a LoRA adapter (`strategy.mode: lora`): the build's
        output is an adapter folder beside the weights."""
        return self._block("strategy").get("mode") == "lora"

    @property
    def training(self) -> dict[str, Any]:
        """The training hyper-parameters."""
        return self._block("training")

    @property
    def gates(self) -> dict[str, str]:
        """Metric gates, metric -> comparison string."""
        return self._block("gates")

    @property
    def checks(self) -> DeclaredChecks:
        """The declared checks (forgetting, drift, parameters; None each where undeclared)."""
        return DeclaredChecks.from_dict(self._block("checks"))

    @property
    def tags(self) -> tuple[str, ...]:
        """Free-form tags."""
        return tuple(self.raw.get("tags", ()))

    @property
    def tokenizer(self) -> str | None:
        """A causal LM's tokenizer folder, relative to the repository (None: the source's)."""
        given = self.raw.get("tokenizer")
        return None if given is None else str(given)

    @property
    def lm(self) -> LmSettings:
        """The causal-lm settings (all None where the spec has no `lm` block)."""
        block = self.raw.get("lm") or {}
        prompts = block.get("prompts")
        return LmSettings(
            block_size=block.get("block_size"),
            prompts=None if prompts is None else tuple(str(p) for p in prompts),
            max_new_tokens=block.get("max_new_tokens"),
        )

    @property
    def quantize(self) -> QuantizeSettings | None:
        """The quantize block of a quantized model, or None."""
        block = self.raw.get("quantize")
        if block is None:
            return None
        return QuantizeSettings(method=str(block.get("method", "")), max_drop=block.get("max_drop"))

    def dataset_refs(self) -> dict[str, str]:
        """Every dataset the spec names, by role (pointer-like keys for error messages)."""
        data = self.raw.get("data") or {}
        refs = {f"/data/{role}": str(data[role]) for role in ("train", "eval") if role in data}
        for check, name in self.checks.datasets:
            refs[f"/checks/{check}/data"] = name
        return refs


@dataclass(frozen=True)
class Selection:
    """A dataset spec's `select:` block, each None where the spec leaves it out."""

    classes: tuple[int, ...] | None = None  # source classes kept, in the spec's order
    relabel: str | Mapping[str, int] | None = None  # "contiguous", or source class -> new id
    limit: int | None = None  # samples kept at most (a class-stratified draw)

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> Selection:
        """Read a validated `select` block."""
        classes, relabel, limit = block.get("classes"), block.get("relabel"), block.get("limit")
        return cls(
            classes=None if classes is None else tuple(int(c) for c in classes),
            relabel=(
                relabel
                if relabel is None or isinstance(relabel, str)
                else {str(k): int(v) for k, v in relabel.items()}
            ),
            limit=None if limit is None else int(limit),
        )


@dataclass(frozen=True)
class SplitSettings:
    """A dataset spec's `split:` block: the fraction of samples held out for evaluation and
    the seed of the draw (these defaults where the spec leaves them out)."""

    eval: float = 0.25
    seed: int = 0

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> SplitSettings:
        """Read a validated `split` block."""
        default = cls()
        return cls(
            eval=float(block.get("eval", default.eval)),
            seed=int(block.get("seed", default.seed)),
        )


@dataclass(frozen=True)
class TextFields:
    """A text dataset's `fields:` block: the JSONL keys or hf-disk columns that hold plain
    text, or a prompt and its completion (these defaults where the spec leaves them out)."""

    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> TextFields:
        """Read a validated `fields` block."""
        default = cls()
        return cls(
            text=str(block.get("text", default.text)),
            prompt=str(block.get("prompt", default.prompt)),
            completion=str(block.get("completion", default.completion)),
        )


@dataclass(frozen=True)
class DatasetSpec(_Described):
    """A declared dataset (datasets/NAME/spec.yaml)."""

    name: str
    path: str
    raw: Mapping[str, Any]

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any], path: str = "") -> DatasetSpec:
        """Wrap a validated spec document."""
        return cls(name=name, path=path, raw=raw)

    def to_dict(self) -> dict[str, Any]:
        """The spec document."""
        return dict(self.raw)

    @property
    def digest(self) -> str:
        """Content digest of the spec."""
        return digest(self.raw)

    @property
    def declared_fields(self) -> frozenset[str]:
        """The top-level fields the spec declares (a builder refuses those that do not apply
        to its source, even when empty)."""
        return frozenset(self.raw)

    @property
    def source(self) -> str:
        """The data source string."""
        return str(self.raw["source"])

    @property
    def task(self) -> str | None:
        """The task the spec's `task:` declares, None where it declares none (`declared_task`
        also tells the task its source implies)."""
        given = self.raw.get("task")
        return None if given is None else str(given)

    @property
    def select(self) -> Selection:
        """Class selection, relabelling and the sample limit."""
        return Selection.from_dict(self.raw.get("select") or {})

    @property
    def transforms(self) -> list[dict[str, Any]]:
        """Ordered transforms, each a one-key mapping of the operation to its argument."""
        return list(self.raw.get("transforms") or [])

    @property
    def resize(self) -> tuple[int, int] | None:
        """The (height, width) of the first resize transform, None without one: images of an
        image folder or a COCO folder are read at that size."""
        for step in self.transforms:
            if "resize" in step:
                height, width = step["resize"]
                return int(height), int(width)
        return None

    @property
    def split(self) -> SplitSettings:
        """Seeded train/eval split settings."""
        return SplitSettings.from_dict(self.raw.get("split") or {})

    @property
    def declared_task(self) -> str | None:
        """The task as far as the spec tells without the data: declared, or implied by its
        source (`rules.taskspec`); None when only the data says."""
        return taskspec.declared_task(self.raw)

    @property
    def target(self) -> str | tuple[str, ...]:
        """Label column of a tabular file or an hf-disk folder, or several of them (one
        target per column: multi-output regression or multi-label)."""
        given = self.raw.get("target", "label")
        return str(given) if isinstance(given, str) else tuple(str(t) for t in given)

    @property
    def features(self) -> tuple[str, ...] | None:
        """Feature columns of a tabular file or an hf-disk folder; None: every column but the
        target."""
        given = self.raw.get("features")
        return None if given is None else tuple(str(f) for f in given)

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options of an entrypoint, shapes or coco source (empty where none)."""
        return dict(self.raw.get("options") or {})

    @property
    def text_fields(self) -> TextFields:
        """The record keys or columns a text dataset reads."""
        return TextFields.from_dict(self.raw.get("fields") or {})

    @property
    def tags(self) -> tuple[str, ...]:
        """Free-form tags."""
        return tuple(self.raw.get("tags", ()))


@dataclass(frozen=True)
class Manifest:
    """A produced manifest (model or dataset), schema-valid."""

    name: str
    path: str
    raw: Mapping[str, Any]

    @property
    def kind(self) -> str:
        """ "model" or "dataset"."""
        return str(self.raw["kind"])

    @property
    def id(self) -> str:
        """The content id recorded in the file."""
        return str(self.raw["id"])

    @property
    def computed_id(self) -> str:
        """The content id recomputed from the document."""
        return content_id(self.raw)

    @property
    def spec_digest(self) -> str:
        """Digest of the spec the build used."""
        return str(self.raw["spec_digest"])

    @property
    def source_id(self) -> str | None:
        """Manifest id of the source model at build time (models only)."""
        src = self.raw.get("source")
        return str(src["id"]) if src else None

    @property
    def metrics(self) -> dict[str, float]:
        """Headline metrics (models only)."""
        return dict(self.raw.get("metrics") or {})

    # Typed reads for the light commands (`ls`, `show`, `validate`), which do not import
    # `records.manifest`: its typed records cost more to import than `stemma ls` to run.
    @property
    def spec(self) -> dict[str, Any]:
        """The copy of the spec the build used."""
        return dict(self.raw.get("spec") or {})

    @property
    def class_names(self) -> tuple[str, ...]:
        """A dataset's names of its class ids, if it records them."""
        return tuple(self.raw.get("class_names") or ())

    @property
    def class_labels(self) -> tuple[str, ...]:
        """The label of each class id (`rules.classlabels`): the class names, else the
        source labels a renumbering selection kept; () where the ids are the labels."""
        return tuple(class_labels(self.raw))

    @property
    def gates(self) -> tuple[GateResult, ...]:
        """A model's gates as the build evaluated them (`rules.gates`), in order."""
        return tuple(GateResult.of(g) for g in self.raw.get("gates") or ())

    @property
    def failed_checks(self) -> tuple[str, ...]:
        """The names of the checks a model's build ran and failed, sorted."""
        checks = self.raw.get("checks") or {}
        return tuple(k for k, v in sorted(checks.items()) if not v.get("passed", True))

    @property
    def status_record(self) -> Built:
        """What the status rule compares from this manifest (`rules.status.Built`)."""
        return Built.of(self.raw)

    def to_dict(self) -> dict[str, Any]:
        """The manifest document."""
        return dict(self.raw)
