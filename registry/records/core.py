"""Frozen records for specs, manifests and settings, validated at the file boundary.

The JSON Schema is the contract for files; these dataclasses are the contract for code.
Every loader validates first, so a record always holds a schema-valid document.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from stemma.registry.errors import SchemaError
from stemma.registry.records.manifest import DatasetManifest, ModelManifest, manifest_record
from stemma.registry.rules.parents import primary
from stemma.registry.store.files import content_id, digest, parse_json_text

# PyYAML and the schemas are imported where they are used: `stemma ls` and `stemma query`
# read the DuckDB index and never parse a spec or validate a document.

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


def _pointer(parts: list[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts) or "/"


def validate_document(doc: Any, schema: str, display: str, text: str | None = None) -> None:
    """Raise `SchemaError` for the first (most relevant) schema violation of `doc`."""
    from stemma import schemas
    from stemma.registry.store import _validcache

    key = _validcache.known(schema, doc)
    if key is True:  # passed this schema before, unchanged (while the checks run)
        return
    check = schemas.validator(schema)
    if check.is_valid(doc):
        _validcache.record(key)
        return
    errors = sorted(
        check.iter_errors(doc),
        key=lambda e: (list(map(str, e.absolute_path)), e.validator or ""),
    )
    if not errors:
        return
    err = errors[0]
    parts: list[str | int] = list(err.absolute_path)
    reason = err.message
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = err.schema.get("properties", {})
        extra = sorted(k for k in err.instance if k not in known)
        if extra:
            parts.append(extra[0])
            reason = f"unknown key {extra[0]!r}"
            close = difflib.get_close_matches(extra[0], list(known), n=1, cutoff=0.6)
            if close:
                reason += f"; did you mean {close[0]!r}?"
    elif (
        err.validator == "pattern" and isinstance(err.schema, dict) and "description" in err.schema
    ):
        # the schema says what the pattern means ("a comparison such as '>= 0.90'"); the
        # raw regular expression helps nobody
        reason = f"expected {err.schema['description']}, got {err.instance!r}"
    elif err.validator == "required":
        reason = f"missing required field: {err.message}"
        if isinstance(err.schema, dict) and "errorMessage" in err.schema:
            # a block another field asks for (relation: quantized): point at it, say why
            parts.append(next(k for k in err.validator_value if k not in err.instance))
            reason = str(err.schema["errorMessage"])
    elif err.schema is False:  # a field its context never reads
        unread, reason = _unread_field(check.schema, doc, parts, list(err.absolute_schema_path))
        if unread is not None:
            parts.append(unread)
    if text is not None:
        from stemma.registry.store.yamlio import line_of

        line = line_of(text, parts)
    else:
        line = None
    if len(reason) > 200:
        reason = reason[:197] + "..."
    raise SchemaError(display, reason, pointer=_pointer(parts), line=line)


def _unread_field(
    schema: Any, doc: Any, parts: list[str | int], schema_path: list[Any]
) -> tuple[str | None, str]:
    """The field a `false` schema under `properties` refuses, and why: the family does not
    read it (jsonschema reports these at the object, not at the field)."""
    node, parent = schema, doc
    for step in schema_path:
        node = node[step]
    for part in parts:
        parent = parent[part]
    if not (isinstance(node, dict) and isinstance(parent, dict)):
        return None, "a value that is not allowed here"
    key = next((k for k in sorted(parent) if node.get(k) is False), None)
    family = parent.get("family")
    if key is None:
        return None, "a value that is not allowed here"
    if "dependentSchemas" in schema_path:  # two fields that say the same thing
        other = schema_path[schema_path.index("dependentSchemas") + 1]
        if family is None:  # top-level blocks (a quantize block allows no training)
            return key, f"{key!r} does not apply with {other!r}; remove it"
        return key, f"family {family!r} takes {other!r} or {key!r}, not both"
    if family is not None:
        return key, f"{key!r} is not read by family {family!r}; remove it"
    return key, f"{key!r} is not allowed here"


def parse_yaml_document(text: str, schema: str, display: str) -> dict[str, Any]:
    """Parse and validate YAML text; an empty document is an empty mapping."""
    from stemma.registry.store.yamlio import load_yaml_text

    doc = load_yaml_text(text, display)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SchemaError(display, "expected a mapping at the top level", pointer="/", line=1)
    validate_document(doc, schema, display, text)
    return doc


def parse_json_document(text: str, schema: str, display: str) -> dict[str, Any]:
    """Parse and validate JSON text."""
    doc = parse_json_text(text, display)
    if not isinstance(doc, dict):
        raise SchemaError(display, "expected an object at the top level", pointer="/")
    validate_document(doc, schema, display)
    return doc


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
    if entrypoints:
        from stemma.registry.rules.naming import (
            ENTRYPOINT_RE,  # compiling the name grammar costs a few ms
        )

        if not all(isinstance(e, str) and ENTRYPOINT_RE.match(e) for e in entrypoints):
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
class SourceRef:
    """The `source:` block of a model spec."""

    model: str
    relation: str = "finetune"
    candidates: str | None = None
    score: str | None = None

    @property
    def auto(self) -> bool:
        """True when the source is chosen by exploration."""
        return self.model == "auto"


@dataclass(frozen=True)
class ModelSpec:
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
    def source(self) -> SourceRef | None:
        """The source model reference, or None for a model trained from scratch."""
        src = self.raw.get("source")
        if not src:
            return None
        return SourceRef(  # a merge's first parent: all of them are `parents_of(spec)`
            model=str(src["model"] if "model" in src else primary(self.raw) or ""),
            relation=src.get("relation", "finetune"),
            candidates=src.get("candidates"),
            score=src.get("score"),
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
    def training(self) -> dict[str, Any]:
        """The training hyper-parameters."""
        return self._block("training")

    @property
    def gates(self) -> dict[str, str]:
        """Metric gates, metric -> comparison string."""
        return self._block("gates")

    @property
    def checks(self) -> dict[str, Any]:
        """Declared checks (forgetting, drift, parameters)."""
        return self._block("checks")

    @property
    def tags(self) -> tuple[str, ...]:
        """Free-form tags."""
        return tuple(self.raw.get("tags", ()))

    def dataset_refs(self) -> dict[str, str]:
        """Every dataset the spec names, by role (pointer-like keys for error messages)."""
        data = self.raw.get("data") or {}
        refs = {f"/data/{role}": str(data[role]) for role in ("train", "eval") if role in data}
        for check in ("forgetting", "drift"):
            block = self.checks.get(check) or {}
            if "data" in block:
                refs[f"/checks/{check}/data"] = str(block["data"])
        return refs


@dataclass(frozen=True)
class DatasetSpec:
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
    def source(self) -> str:
        """The data source string."""
        return str(self.raw["source"])

    @property
    def select(self) -> dict[str, Any]:
        """Class selection and relabelling."""
        return dict(self.raw.get("select") or {})

    @property
    def transforms(self) -> list[dict[str, Any]]:
        """Ordered transforms."""
        return list(self.raw.get("transforms") or [])

    @property
    def split(self) -> dict[str, Any]:
        """Seeded train/eval split settings."""
        return dict(self.raw.get("split") or {})

    @property
    def target(self) -> str:
        """Label column of a tabular file."""
        return str(self.raw.get("target", "label"))

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

    def to_dict(self) -> dict[str, Any]:
        """The manifest document."""
        return dict(self.raw)

    @cached_property
    def record(self) -> ModelManifest | DatasetManifest:
        """The typed record of the document (built on first use, then kept)."""
        return manifest_record(self.raw, self.path or self.name)

    @property
    def model(self) -> ModelManifest:
        """The typed record of a model manifest; a dataset manifest is refused."""
        record = self.record
        if not isinstance(record, ModelManifest):
            raise SchemaError(self.path, f"not a model manifest (kind {self.kind!r})", "/kind")
        return record

    @property
    def dataset(self) -> DatasetManifest:
        """The typed record of a dataset manifest; a model manifest is refused."""
        record = self.record
        if not isinstance(record, DatasetManifest):
            raise SchemaError(self.path, f"not a dataset manifest (kind {self.kind!r})", "/kind")
        return record
