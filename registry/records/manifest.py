"""Typed records of the model and dataset manifests and of each of their blocks.

One frozen dataclass per object of `schemas/model-manifest.json` and
`schemas/dataset-manifest.json`. `from_dict(doc, display)` reads a parsed document (each wrong
field a `SchemaError` naming the file and the JSON pointer); `to_dict()` gives the document
back exactly: the same keys in the same order, optional keys absent where they were absent,
null where they were null, numbers of the same type, and the keys an open block (one the
schema lets hold more) carries beyond its named fields in `extra`. So a manifest read as a
record and written again keeps its bytes and its content id.

A field the document leaves out is None here; `keys` (the document's keys, in order) tells an
absent field from a null one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from stemma.registry.errors import SchemaError
from stemma.registry.records._reader import Reader
from stemma.registry.rules.gates import GATE_OPS as GATE_OPS
from stemma.registry.rules.layout import MANIFEST_FILE as MANIFEST_FILE

if TYPE_CHECKING:
    from stemma.registry.records.core import Manifest

RELATIONS = ("finetune", "adapter", "distill", "quantized", "merge")
TASKS = ("regression", "multilabel", "detection", "causal-lm")
ORIGINS = ("transferred", "reinitialized", "new")


def _plain(value: Any) -> Any:
    """A record, tuple or mapping as the JSON value it came from (fresh containers)."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """A JSON object read into fields: `keys` is its key order, `extra` what the schema
    allows beyond the named fields (open blocks only; empty elsewhere)."""

    keys: tuple[str, ...] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # JSON key -> attribute, where they differ (`from` is a Python keyword)
    _RENAMED: ClassVar[Mapping[str, str]] = {"from": "from_"}

    @classmethod
    def from_dict(cls, doc: Any, display: str = MANIFEST_FILE, pointer: str = "") -> Self:
        """Read `doc`, the object at `pointer` of the file `display` (both for errors)."""
        return cls._read(Reader(doc, display, pointer))

    @classmethod
    def _read(cls, r: Reader) -> Self:
        raise NotImplementedError(cls.__name__)  # each record reads its own fields

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the order they were read."""
        doc: dict[str, Any] = {}
        for key in self.keys:
            if key in self.extra:
                doc[key] = _plain(self.extra[key])
            else:
                doc[key] = _plain(getattr(self, self._RENAMED.get(key, key)))
        return doc

    def has(self, key: str) -> bool:
        """Whether the document holds `key` (an absent field reads as None, as does null)."""
        return key in self.keys


_KNOWN: dict[type[Record], frozenset[str]] = {}


def _known(cls: type[Record]) -> frozenset[str]:
    """The JSON keys a record names (worked out once per class)."""
    known = _KNOWN.get(cls)
    if known is None:
        names = {f.name for f in dataclasses.fields(cls)} - {"keys", "extra"}
        back = {v: k for k, v in Record._RENAMED.items()}
        known = _KNOWN[cls] = frozenset(back.get(n, n) for n in names)
    return known


# ---- shared blocks ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FileRef(Record):
    """A file the build wrote, hashed (defs.json#/$defs/file)."""

    path: str
    md5: str
    sha256: str
    bytes: int
    format: str

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a file block."""
        r.closed(_FILE_KEYS)
        return cls(
            keys=r.keys,
            path=r.text("path"),
            md5=r.text("md5"),
            sha256=r.text("sha256"),
            bytes=r.integer("bytes"),
            format=r.text("format"),
        )

    @classmethod
    def of(cls, path: str, md5: str, sha256: str, bytes: int, format: str) -> Self:
        """A new file block, as a build writes it."""
        return cls(
            keys=("path", "md5", "sha256", "bytes", "format"),
            path=path,
            md5=md5,
            sha256=sha256,
            bytes=bytes,
            format=format,
        )


_FILE_KEYS = _known(FileRef)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Weights(Record):
    """A model's weights: one file, or the index of its shards and each shard."""

    path: str
    md5: str
    sha256: str
    bytes: int
    format: str
    shards: tuple[FileRef, ...] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a weights block."""
        r.closed(_known(cls))
        shards = r.opt_objs("shards")
        return cls(
            keys=r.keys,
            path=r.text("path"),
            md5=r.text("md5"),
            sha256=r.text("sha256"),
            bytes=r.integer("bytes"),
            format=r.text("format"),
            shards=None if shards is None else tuple(FileRef._read(s) for s in shards),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Numerics(Record):
    """The numeric mode of a build and its pins (open: later builds may say more)."""

    mode: str
    pinned: bool
    cpu: Mapping[str, str]
    env: Mapping[str, str] | None = None
    note: str | None = None
    fingerprint: Mapping[str, Any] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a numerics block."""
        fingerprint = r.opt_obj("fingerprint")
        if fingerprint is not None:  # checked, kept as written
            fingerprint.integer("version")
            fingerprint.text("digest")
            fingerprint.table("ops", "a string")
        return cls(
            keys=r.keys,
            extra=r.extra(_known(cls)),
            mode=r.choice("mode", ("portable", "native")),
            pinned=r.flag("pinned"),
            cpu=r.table("cpu", "a string"),
            env=r.opt_table("env", "a string"),
            note=r.opt_text("note"),
            fingerprint=r.opt_free("fingerprint"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Run(Record):
    """How the build ran (not part of the content id; open: threads, train_s ...)."""

    started: str
    duration_s: float
    stemma: str
    device: str | None = None
    torch: str | None = None
    seed: int | None = None
    deterministic: bool | None = None
    numerics: Numerics | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a run block."""
        numerics = r.opt_obj("numerics")
        return cls(
            keys=r.keys,
            extra=r.extra(_known(cls)),
            started=r.text("started"),
            duration_s=r.number("duration_s"),
            stemma=r.text("stemma"),
            device=r.opt_text("device"),
            torch=r.opt_text("torch"),
            seed=r.opt_integer("seed"),
            deterministic=r.opt_flag("deterministic"),
            numerics=None if numerics is None else Numerics._read(numerics),
        )


# ---- model manifest blocks ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelRef(Record):
    """A model and its manifest id (a merge's parent, an adapter's base)."""

    model: str
    id: str

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a model reference."""
        r.closed(("model", "id"))
        return cls(keys=r.keys, model=r.text("model"), id=r.text("id"))

    @classmethod
    def of(cls, model: str, id: str) -> Self:
        """A new reference, as a build writes it."""
        return cls(keys=("model", "id"), model=model, id=id)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Source(Record):
    """The source model as built from: name, relation, manifest id (a merge: every parent)."""

    model: str
    relation: str
    id: str
    parents: tuple[ModelRef, ...] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a source block."""
        r.closed(_known(cls))
        parents = r.opt_objs("parents")
        return cls(
            keys=r.keys,
            model=r.text("model"),
            relation=r.choice("relation", RELATIONS),
            id=r.text("id"),
            parents=None if parents is None else tuple(ModelRef._read(p) for p in parents),
        )

    @classmethod
    def of(
        cls, model: str, relation: str, id: str, parents: tuple[ModelRef, ...] | None = None
    ) -> Self:
        """A new source block, as a build writes it (`parents` only for a merge)."""
        keys = ("model", "relation", "id") + (() if parents is None else ("parents",))
        return cls(keys=keys, model=model, relation=relation, id=id, parents=parents)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DatasetRef(Record):
    """A dataset a model was built from, by role: its name and manifest id."""

    name: str
    id: str

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a dataset reference."""
        r.closed(("name", "id"))
        return cls(keys=r.keys, name=r.text("name"), id=r.text("id"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Tensor(Record):
    """One tensor of the architecture: shape, dtype, where its values came from."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    origin: str
    frozen: bool
    kind: str | None = None
    source_name: str | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a tensor row."""
        r.closed(_known(cls))
        return cls(
            keys=r.keys,
            name=r.text("name"),
            shape=r.array("shape", "an integer"),
            dtype=r.text("dtype"),
            origin=r.choice("origin", ORIGINS),
            frozen=r.flag("frozen"),
            kind=r.choice("kind", ("parameter", "buffer"), required=False),
            source_name=r.opt_text("source_name", null=True),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Architecture(Record):
    """The model's configuration (its family's open config) and its tensors."""

    config: Mapping[str, Any]
    tensors: tuple[Tensor, ...]

    @property
    def family(self) -> str:
        """The architecture family (mlp, cnn, transformers ...)."""
        return str(self.config["family"])

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read an architecture block."""
        r.closed(("config", "tensors"))
        r.obj("config").text("family")
        return cls(
            keys=r.keys,
            config=r.free("config"),
            tensors=tuple(Tensor._read(t) for t in r.objs("tensors")),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Parameters(Record):
    """Parameter counts: total, trainable, transferred from the source."""

    total: int
    trainable: int
    transferred: int

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a parameters block."""
        r.closed(("total", "trainable", "transferred"))
        return cls(
            keys=r.keys,
            total=r.integer("total"),
            trainable=r.integer("trainable"),
            transferred=r.integer("transferred"),
        )

    @classmethod
    def of(cls, total: int, trainable: int, transferred: int) -> Self:
        """New counts, as a build writes them."""
        return cls(
            keys=("total", "trainable", "transferred"),
            total=total,
            trainable=trainable,
            transferred=transferred,
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Pair(Record):
    """A target tensor fed by a source tensor of another name."""

    target: str
    source: str

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a pair."""
        r.closed(("target", "source"))
        return cls(keys=r.keys, target=r.text("target"), source=r.text("source"))

    @classmethod
    def of(cls, target: str, source: str) -> Self:
        """A new pair, as a build writes it."""
        return cls(keys=("target", "source"), target=target, source=source)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Transfer(Record):
    """How source tensors were mapped (open block)."""

    mapping: str | None = None
    mode: str | None = None
    unused_source: tuple[str, ...] | None = None
    features_cached: bool | None = None
    pairs: tuple[Pair, ...] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a transfer block."""
        pairs = r.opt_objs("pairs")
        return cls(
            keys=r.keys,
            extra=r.extra(_known(cls)),
            mapping=r.opt_text("mapping", null=True),
            mode=r.opt_text("mode"),
            unused_source=r.opt_array("unused_source", "a string"),
            features_cached=r.opt_flag("features_cached"),
            pairs=None if pairs is None else tuple(Pair._read(p) for p in pairs),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Tokenizer(Record):
    """The tokenizer files (name -> sha256 hex) and where they came from."""

    files: Mapping[str, str]
    from_: str

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a tokenizer block."""
        r.closed(("files", "from"))
        return cls(keys=r.keys, files=r.table("files", "a string"), from_=r.text("from"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Generation(Record):
    """A seeded greedy generation: prompt and output."""

    prompt: str
    output: str

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a generation."""
        r.closed(("prompt", "output"))
        return cls(keys=r.keys, prompt=r.text("prompt"), output=r.text("output"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LanguageModel(Record):
    """A causal-lm build: tokenization in fixed blocks and its generations."""

    token_dtype: str
    block_size: int
    blocks: Mapping[str, int]
    eval_tokens: int
    generations: tuple[Generation, ...]

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read an lm block."""
        r.closed(_known(cls))
        return cls(
            keys=r.keys,
            token_dtype=r.choice("token_dtype", ("int64",)),
            block_size=r.integer("block_size"),
            blocks=r.table("blocks", "an integer"),
            eval_tokens=r.integer("eval_tokens"),
            generations=tuple(Generation._read(g) for g in r.objs("generations")),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Gate(Record):
    """A metric gate as evaluated: metric, comparison, threshold, value, verdict (open)."""

    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a gate."""
        return cls(
            keys=r.keys,
            extra=r.extra(_known(cls)),
            metric=r.text("metric"),
            op=r.choice("op", GATE_OPS),
            threshold=r.number("threshold"),
            value=r.opt_number("value", null=True) if r.has("value") else r.number("value"),
            passed=r.flag("passed"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Check(Record):
    """A check's result: its verdict, and what each check records besides (open)."""

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
    def method(self) -> str | None:
        """The method a check used, where it records one."""
        method = self.extra.get("method")
        return None if method is None else str(method)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a check result."""
        return cls(keys=r.keys, extra=r.extra(("passed",)), passed=r.flag("passed"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MergeTensor(Record):
    """A merged tensor and the parents that contributed to it."""

    name: str
    parents: tuple[str, ...]

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a merged tensor row."""
        r.closed(("name", "parents"))
        return cls(keys=r.keys, name=r.text("name"), parents=r.array("parents", "a string"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Merge(Record):
    """A merge: method, its parameters as applied, per tensor the contributing parents."""

    method: str
    parameters: Mapping[str, Any]
    tensors: tuple[MergeTensor, ...]
    base: str | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a merge block."""
        r.closed(_known(cls))
        return cls(
            keys=r.keys,
            method=r.choice("method", ("linear", "task_arithmetic", "ties", "slerp", "adapter")),
            parameters=r.free("parameters"),
            tensors=tuple(MergeTensor._read(t) for t in r.objs("tensors")),
            base=r.opt_text("base", null=True),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Adapter(Record):
    """A LoRA adapter in PEFT's format: its base model, rank, scale, targets, config file."""

    format: str
    base: ModelRef
    r: int
    alpha: float
    target_modules: tuple[str, ...]
    config: FileRef
    dropout: float | None = None
    modules_to_save: tuple[str, ...] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read an adapter block."""
        r.closed(_known(cls))
        return cls(
            keys=r.keys,
            format=r.choice("format", ("peft-lora",)),
            base=ModelRef._read(r.obj("base")),
            r=r.integer("r"),
            alpha=r.number("alpha"),
            target_modules=r.array("target_modules", "a string"),
            config=FileRef._read(r.obj("config")),
            dropout=r.opt_number("dropout"),
            modules_to_save=r.opt_array("modules_to_save", "a string"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Library(Record):
    """A library by name and version."""

    name: str
    version: str

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a library block."""
        r.closed(("name", "version"))
        return cls(keys=r.keys, name=r.text("name"), version=r.text("version"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QuantizeSize(Record):
    """Stored bytes before and after quantization."""

    bytes_before: int
    bytes_after: int
    ratio: float

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a size block."""
        r.closed(("bytes_before", "bytes_after", "ratio"))
        return cls(
            keys=r.keys,
            bytes_before=r.integer("bytes_before"),
            bytes_after=r.integer("bytes_after"),
            ratio=r.number("ratio"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QuantizeQuality(Record):
    """The main metric of parent and quantized model, and whether the drop is allowed."""

    metric: str
    parent: float
    quantized: float
    drop: float
    max_drop: float
    passed: bool

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a quality block."""
        r.closed(_known(cls))
        return cls(
            keys=r.keys,
            metric=r.text("metric"),
            parent=r.number("parent"),
            quantized=r.number("quantized"),
            drop=r.number("drop"),
            max_drop=r.number("max_drop"),
            passed=r.flag("passed"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Quantize(Record):
    """A quantized build: method, library, config, layers, size and quality."""

    method: str
    library: Library
    config: Mapping[str, Any]
    layers: int
    size: QuantizeSize
    quality: QuantizeQuality
    hf_quantization_config: Mapping[str, Any] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a quantize block."""
        r.closed(_known(cls))
        return cls(
            keys=r.keys,
            method=r.choice("method", ("int8_weight_only", "int8_dynamic")),
            library=Library._read(r.obj("library")),
            config=r.free("config"),
            layers=r.integer("layers"),
            size=QuantizeSize._read(r.obj("size")),
            quality=QuantizeQuality._read(r.obj("quality")),
            hf_quantization_config=r.opt_free("hf_quantization_config"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelManifest(Record):
    """models/NAME/manifest.json, typed."""

    kind: str
    schema_version: int
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
    task: str | None = None
    tokenizer: Tokenizer | None = None
    lm: LanguageModel | None = None
    class_names: tuple[str, ...] | None = None
    checks: Mapping[str, Check] | None = None
    merge: Merge | None = None
    adapter: Adapter | None = None
    exploration: Mapping[str, Any] | None = None
    search: Mapping[str, Any] | None = None
    quantize: Quantize | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        r.closed(_known(cls))
        source = None if r.doc.get("source", 0) is None else Source._read(r.obj("source"))
        datasets = r.members("datasets")
        transfer, samples, tokenizer = r.opt_obj("transfer"), r.opt_obj("samples"), None
        if r.has("tokenizer"):
            tokenizer = Tokenizer._read(r.obj("tokenizer"))
        lm, checks = r.opt_obj("lm"), r.opt_members("checks")
        merge, adapter, quantize = r.opt_obj("merge"), r.opt_obj("adapter"), r.opt_obj("quantize")
        return cls(
            keys=r.keys,
            kind=r.choice("kind", ("model",)),
            schema_version=r.choice("schema_version", (1,)),
            name=r.text("name"),
            id=r.text("id"),
            spec=r.free("spec"),
            spec_digest=r.text("spec_digest"),
            source=source,
            datasets={role: DatasetRef._read(d) for role, d in datasets.items()},
            weights=Weights._read(r.obj("weights")),
            architecture=Architecture._read(r.obj("architecture")),
            parameters=Parameters._read(r.obj("parameters")),
            metrics=r.table("metrics", "a number"),
            gates=tuple(Gate._read(g) for g in r.objs("gates")),
            run=Run._read(r.obj("run")),
            transfer=None if transfer is None else Transfer._read(transfer),
            per_class=r.opt_table("per_class", "a number"),
            samples=None if samples is None else FileRef._read(samples),
            task=r.choice("task", TASKS, required=False),
            tokenizer=tokenizer,
            lm=None if lm is None else LanguageModel._read(lm),
            class_names=r.opt_array("class_names", "a string"),
            checks=None if checks is None else {k: Check._read(c) for k, c in checks.items()},
            merge=None if merge is None else Merge._read(merge),
            adapter=None if adapter is None else Adapter._read(adapter),
            exploration=r.opt_free("exploration"),
            search=r.opt_free("search"),
            quantize=None if quantize is None else Quantize._read(quantize),
        )

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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TextData(Record):
    """A causal-lm dataset's text records: format, encoding, bytes per split."""

    format: str
    encoding: str
    token_dtype: str
    bytes: Mapping[str, int] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a text block."""
        r.closed(_known(cls))
        return cls(
            keys=r.keys,
            format=r.choice("format", ("text", "prompt-completion")),
            encoding=r.choice("encoding", ("utf-8",)),
            token_dtype=r.choice("token_dtype", ("int64",)),
            bytes=r.opt_table("bytes", "an integer"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Split(Record):
    """A split's sample count and its samples per class (open block)."""

    samples: int
    class_counts: Mapping[str, int]

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a split block."""
        return cls(
            keys=r.keys,
            extra=r.extra(("samples", "class_counts")),
            samples=r.integer("samples"),
            class_counts=r.table("class_counts", "an integer"),
        )

    @classmethod
    def of(cls, samples: int, class_counts: Mapping[str, int]) -> Self:
        """A new split block, as a build writes it."""
        return cls(keys=("samples", "class_counts"), samples=samples, class_counts=class_counts)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stats(Record):
    """Feature statistics of the train split, for drift checks (open block)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    cov_trace: float | None = None
    cov_top_eigenvalues: tuple[float, ...] | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read a stats block."""
        return cls(
            keys=r.keys,
            extra=r.extra(_known(cls)),
            mean=r.opt_array("mean", "a number"),
            std=r.opt_array("std", "a number"),
            cov_trace=r.opt_number("cov_trace"),
            cov_top_eigenvalues=r.opt_array("cov_top_eigenvalues", "a number"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DatasetManifest(Record):
    """datasets/NAME/manifest.json, typed."""

    kind: str
    schema_version: int
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
    task: str | None = None
    text: TextData | None = None
    class_names: tuple[str, ...] | None = None
    stats: Stats | None = None

    @classmethod
    def _read(cls, r: Reader) -> Self:
        r.closed(_known(cls))
        text, stats = r.opt_obj("text"), r.opt_obj("stats")
        return cls(
            keys=r.keys,
            kind=r.choice("kind", ("dataset",)),
            schema_version=r.choice("schema_version", (1,)),
            name=r.text("name"),
            id=r.text("id"),
            spec=r.free("spec"),
            spec_digest=r.text("spec_digest"),
            data=FileRef._read(r.obj("data")),
            shape=r.array("shape", "an integer"),
            classes=r.array("classes", "an integer"),
            splits={k: Split._read(s) for k, s in r.members("splits").items()},
            run=Run._read(r.obj("run")),
            dtype=r.opt_text("dtype"),
            task=r.choice("task", TASKS, required=False),
            text=None if text is None else TextData._read(text),
            class_names=r.opt_array("class_names", "a string"),
            stats=None if stats is None else Stats._read(stats),
        )

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
