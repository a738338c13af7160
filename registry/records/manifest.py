"""Typed records of the model and dataset manifests and of each of their blocks.

One frozen dataclass per object of `schemas/model-manifest.json` and
`schemas/dataset-manifest.json`, read by its fields (`_reader.Record`): `from_dict(doc, display)`
reads a parsed document (each wrong field a `SchemaError` naming the file and the JSON pointer);
`to_dict()` gives the document back exactly: the same keys in the same order, optional keys
absent where they were absent, null where they were null, numbers of the same type, and the keys
an open block (one the schema lets hold more) carries beyond its named fields in `extra`. So a
manifest read as a record and written again keeps its bytes and its content id.

A field the document leaves out is None here; `keys` (the document's keys, in order) tells an
absent field from a null one. The field order is the order a build writes the keys in
(`Cls.of(...)`, or `Cls(...)` without `keys`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from stemma.registry.errors import SchemaError
from stemma.registry.records._reader import NULLABLE, OneOf, Reader, Record
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.rules.gates import GATE_OPS as GATE_OPS
from stemma.registry.rules.layout import MANIFEST_FILE as MANIFEST_FILE

if TYPE_CHECKING:
    from stemma.registry.records.core import Manifest

RELATIONS = ("finetune", "adapter", "distill", "quantized", "merge")
TASKS = ("regression", "multilabel", "detection", "causal-lm")
ORIGINS = ("transferred", "reinitialized", "new")


# ---- shared blocks ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FileRef(Record):
    """A file the build wrote, hashed (defs.json#/$defs/file)."""

    path: str
    md5: str
    sha256: str
    bytes: int
    format: str


@dataclasses.dataclass(frozen=True, slots=True)
class Weights(FileRef):
    """A model's weights: one file, or the index of its shards and each shard."""

    shards: tuple[FileRef, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Numerics(Record):
    """The numeric mode of a build and its pins (open: later builds may say more)."""

    _OPEN: ClassVar[bool] = True

    mode: Annotated[str, OneOf("portable", "native")]
    pinned: bool
    cpu: Mapping[str, str]
    env: Mapping[str, str] | None = None
    note: str | None = None
    fingerprint: Mapping[str, Any] | None = None

    @classmethod
    def _check(cls, r: Reader) -> None:
        """The fingerprint is checked but kept as written: its readers take the mapping."""
        fingerprint = r.opt_obj("fingerprint")
        if fingerprint is not None:
            fingerprint.integer("version")
            fingerprint.text("digest")
            fingerprint.table("ops", "a string")


@dataclasses.dataclass(frozen=True, slots=True)
class Run(Record):
    """How the build ran (not part of the content id; open: threads, train_s ...)."""

    _OPEN: ClassVar[bool] = True

    started: str
    duration_s: float
    stemma: str
    device: str | None = None
    torch: str | None = None
    seed: int | None = None
    deterministic: bool | None = None
    numerics: Numerics | None = None


# ---- model manifest blocks ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ModelRef(Record):
    """A model and its manifest id (a merge's parent, an adapter's base)."""

    model: str
    id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Source(Record):
    """The source model as built from: name, relation, manifest id (a merge: every parent)."""

    model: str
    relation: Annotated[str, OneOf(*RELATIONS)]
    id: str
    parents: tuple[ModelRef, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetRef(Record):
    """A dataset a model was built from, by role: its name and manifest id."""

    name: str
    id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Tensor(Record):
    """One tensor of the architecture: shape, dtype, where its values came from."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    origin: Annotated[str, OneOf(*ORIGINS)]
    frozen: bool
    kind: Annotated[str | None, OneOf("parameter", "buffer")] = None
    source_name: Annotated[str | None, NULLABLE] = None


@dataclasses.dataclass(frozen=True, slots=True)
class Architecture(Record):
    """The model's configuration (its family's open config) and its tensors."""

    config: Mapping[str, Any]
    tensors: tuple[Tensor, ...]

    @property
    def family(self) -> str:
        """The architecture family (mlp, cnn, transformers ...)."""
        return str(self.block.family)

    @property
    def block(self) -> ArchitectureConfig:
        """The config read by field (`records.archconfig`)."""
        return ArchitectureConfig.from_dict(self.config)

    @classmethod
    def _check(cls, r: Reader) -> None:
        """The config is open but for its family, which it must name."""
        r.obj("config").text("family")


@dataclasses.dataclass(frozen=True, slots=True)
class Parameters(Record):
    """Parameter counts: total, trainable, transferred from the source."""

    total: int
    trainable: int
    transferred: int


@dataclasses.dataclass(frozen=True, slots=True)
class Pair(Record):
    """A target tensor fed by a source tensor of another name."""

    target: str
    source: str


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer(Record):
    """How source tensors were mapped (open block)."""

    _OPEN: ClassVar[bool] = True

    mapping: Annotated[str | None, NULLABLE] = None
    mode: str | None = None
    unused_source: tuple[str, ...] | None = None
    features_cached: bool | None = None
    pairs: tuple[Pair, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Tokenizer(Record):
    """The tokenizer files (name -> sha256 hex) and where they came from."""

    files: Mapping[str, str]
    from_: str


@dataclasses.dataclass(frozen=True, slots=True)
class Generation(Record):
    """A seeded greedy generation: prompt and output."""

    prompt: str
    output: str


@dataclasses.dataclass(frozen=True, slots=True)
class LanguageModel(Record):
    """A causal-lm build: tokenization in fixed blocks and its generations."""

    token_dtype: Annotated[str, OneOf("int64")]
    block_size: int
    blocks: Mapping[str, int]
    eval_tokens: int
    generations: tuple[Generation, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Gate(Record):
    """A metric gate as evaluated: metric, comparison, threshold, value, verdict (open)."""

    _OPEN: ClassVar[bool] = True

    metric: str
    op: Annotated[str, OneOf(*GATE_OPS)]
    threshold: float
    value: float | None
    passed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Check(Record):
    """A check's result: its verdict, and what each check records besides (open)."""

    _OPEN: ClassVar[bool] = True

    passed: bool

    @property
    def figures(self) -> Mapping[str, Any]:
        """The measured figures (before, after, relative_drop ...)."""
        return dict(self.extra.get("figures") or {})

    @property
    def thresholds(self) -> Mapping[str, Any]:
        """The limits the figures were held to."""
        return dict(self.extra.get("thresholds") or {})

    @property
    def violations(self) -> tuple[str, ...]:
        """Why it failed, one line each."""
        return tuple(self.extra.get("violations") or ())

    @property
    def warnings(self) -> tuple[str, ...]:
        """What it noted without failing, one line each."""
        return tuple(self.extra.get("warnings") or ())

    @property
    def inputs(self) -> Mapping[str, Any]:
        """What the check read: datasets and models by name and id, its own settings."""
        return dict(self.extra.get("inputs") or {})

    @property
    def method(self) -> str | None:
        """The method a check used, where it records one."""
        method = self.extra.get("method")
        return None if method is None else str(method)


@dataclasses.dataclass(frozen=True, slots=True)
class MergeTensor(Record):
    """A merged tensor and the parents that contributed to it."""

    name: str
    parents: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Merge(Record):
    """A merge: method, its parameters as applied, per tensor the contributing parents."""

    method: Annotated[str, OneOf("linear", "task_arithmetic", "ties", "slerp", "adapter")]
    parameters: Mapping[str, Any]
    tensors: tuple[MergeTensor, ...]
    base: Annotated[str | None, NULLABLE] = None


@dataclasses.dataclass(frozen=True, slots=True)
class Adapter(Record):
    """A LoRA adapter in PEFT's format: its base model, rank, scale, targets, config file."""

    format: Annotated[str, OneOf("peft-lora")]
    base: ModelRef
    r: int
    alpha: float
    target_modules: tuple[str, ...]
    config: FileRef
    dropout: float | None = None
    modules_to_save: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Library(Record):
    """A library by name and version."""

    name: str
    version: str


@dataclasses.dataclass(frozen=True, slots=True)
class QuantizeSize(Record):
    """Stored bytes before and after quantization."""

    bytes_before: int
    bytes_after: int
    ratio: float


@dataclasses.dataclass(frozen=True, slots=True)
class QuantizeQuality(Record):
    """The main metric of parent and quantized model, and whether the drop is allowed."""

    metric: str
    parent: float
    quantized: float
    drop: float
    max_drop: float
    passed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Quantize(Record):
    """A quantized build: method, library, config, layers, size and quality."""

    method: Annotated[str, OneOf("int8_weight_only", "int8_dynamic")]
    library: Library
    config: Mapping[str, Any]
    layers: int
    size: QuantizeSize
    quality: QuantizeQuality
    hf_quantization_config: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ModelManifest(Record):
    """models/NAME/manifest.json, typed."""

    kind: Annotated[str, OneOf("model")]
    schema_version: Annotated[int, OneOf(1)]
    name: str
    id: str
    spec: Mapping[str, Any]
    spec_digest: str
    source: Source | None
    datasets: Mapping[str, DatasetRef]
    weights: Weights
    architecture: Architecture
    parameters: Parameters
    metrics: Mapping[str, float]
    gates: tuple[Gate, ...]
    run: Run
    transfer: Transfer | None = None
    per_class: Mapping[str, float] | None = None
    samples: FileRef | None = None
    task: Annotated[str | None, OneOf(*TASKS)] = None
    tokenizer: Tokenizer | None = None
    lm: LanguageModel | None = None
    class_names: tuple[str, ...] | None = None
    checks: Mapping[str, Check] | None = None
    merge: Merge | None = None
    adapter: Adapter | None = None
    exploration: Mapping[str, Any] | None = None
    search: Mapping[str, Any] | None = None
    quantize: Quantize | None = None

    @property
    def task_name(self) -> str:
        """The task, "classification" where the manifest names none."""
        return self.task or "classification"

    @property
    def failed_gates(self) -> tuple[str, ...]:
        """The metrics of the gates the build failed, in the manifest's order."""
        return tuple(g.metric for g in self.gates if not g.passed)

    def dataset(self, role: str) -> str | None:
        """The name of the dataset used in `role` (train, eval, forgetting, drift), or None."""
        ref = self.datasets.get(role)
        return None if ref is None else ref.name

    def recorded_datasets(self) -> dict[str, str]:
        """Each dataset the build read, by name, with the manifest id it had then."""
        return {ref.name: ref.id for ref in self.datasets.values()}

    def recorded_parents(self) -> list[tuple[str, str]]:
        """(name, manifest id at build time) of every parent: a merge's `source.parents`,
        else its one `source` (none for a model trained from scratch)."""
        if self.source is None:
            return []
        if self.source.parents is not None:
            return [(p.model, p.id) for p in self.source.parents]
        return [(self.source.model, self.source.id)]


# ---- dataset manifest ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TextData(Record):
    """A causal-lm dataset's text records: format, encoding, bytes per split."""

    format: Annotated[str, OneOf("text", "prompt-completion")]
    encoding: Annotated[str, OneOf("utf-8")]
    token_dtype: Annotated[str, OneOf("int64")]
    bytes: Mapping[str, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Split(Record):
    """A split's sample count and its samples per class (open block)."""

    _OPEN: ClassVar[bool] = True

    samples: int
    class_counts: Mapping[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Stats(Record):
    """Feature statistics of the train split, for drift checks (open block)."""

    _OPEN: ClassVar[bool] = True

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    cov_trace: float | None = None
    cov_top_eigenvalues: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetManifest(Record):
    """datasets/NAME/manifest.json, typed."""

    kind: Annotated[str, OneOf("dataset")]
    schema_version: Annotated[int, OneOf(1)]
    name: str
    id: str
    spec: Mapping[str, Any]
    spec_digest: str
    data: FileRef
    shape: tuple[int, ...]
    classes: tuple[int, ...]
    splits: Mapping[str, Split]
    run: Run
    dtype: str | None = None
    task: Annotated[str | None, OneOf(*TASKS)] = None
    text: TextData | None = None
    class_names: tuple[str, ...] | None = None
    stats: Stats | None = None

    @property
    def task_name(self) -> str:
        """The task, "classification" where the manifest names none."""
        return self.task or "classification"


def manifest_record(doc: Any, display: str = MANIFEST_FILE) -> ModelManifest | DatasetManifest:
    """The typed record of a model or dataset manifest document (by its `kind`)."""
    kind = Reader(doc, display).choice("kind", ("model", "dataset"))
    if kind == "model":
        return ModelManifest.from_dict(doc, display)
    return DatasetManifest.from_dict(doc, display)


# The typed view of a `Manifest` (records/core.py) lives here, not as a property there: every
# command imports records/core.py, and building these thirty record classes costs `stemma ls`
# about a sixth of its time. Readers of manifests import this module; `ls` never does.


def record_of(manifest: Manifest) -> ModelManifest | DatasetManifest:
    """The typed record of a manifest (read anew on each call: keep it where it is reused)."""
    return manifest_record(manifest.raw, manifest.path or manifest.name)


def model_record(manifest: Manifest) -> ModelManifest:
    """The typed record of a model manifest; a dataset manifest is refused at /kind."""
    record = record_of(manifest)
    if not isinstance(record, ModelManifest):
        raise SchemaError(manifest.path, f"not a model manifest (kind {record.kind!r})", "/kind")
    return record


def dataset_record(manifest: Manifest) -> DatasetManifest:
    """The typed record of a dataset manifest; a model manifest is refused at /kind."""
    record = record_of(manifest)
    if not isinstance(record, DatasetManifest):
        raise SchemaError(manifest.path, f"not a dataset manifest (kind {record.kind!r})", "/kind")
    return record
