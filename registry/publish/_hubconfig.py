"""Typed reads of the documents a Hub export is made from: the manifest's open
`architecture.config` (`records.archconfig`), the transformers config it holds, and a README
card's front matter.

Each `from_dict` is the boundary where a parsed document is read by key; `hubfiles` reads the
fields. Values are kept as parsed (a `num_classes` of 0, None or 3 stays what it was), because
the export writes them back into the library's config as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stemma.registry.errors import StemmaError


@dataclass(frozen=True, slots=True)
class TransformersConfig:
    """A transformers config document (`PretrainedConfig.to_dict()`): its `model_type`, the
    classes its `architectures` names, the sequence classifier its `auto_map` names (a
    trusted entrypoint's class), and the whole document."""

    doc: Mapping[str, Any]
    model_type: Any
    architectures: tuple[str, ...]
    auto_sequence_classifier: Any

    @classmethod
    def from_dict(cls, doc: Any, problem: str) -> TransformersConfig:
        """Read `doc`; `StemmaError(problem)` where it is no object with a `model_type`."""
        if not isinstance(doc, dict) or "model_type" not in doc:
            raise StemmaError(problem)
        names, auto_map = doc.get("architectures") or [], doc.get("auto_map")
        return cls(
            doc=doc,
            model_type=doc.get("model_type"),
            # a value that is no list (a number) names no class
            architectures=tuple(str(n) for n in names) if isinstance(names, Iterable) else (),
            auto_sequence_classifier=(
                auto_map.get("AutoModelForSequenceClassification")
                if isinstance(auto_map, Mapping)
                else None
            ),
        )

    def to_dict(self, drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
        """The document without the keys `drop` names, with `changes` set (a change to None
        leaves its key out)."""
        kept = {k: v for k, v in self.doc.items() if k not in drop and k not in changes}
        return {**kept, **{k: v for k, v in changes.items() if v is not None}}


@dataclass(frozen=True, slots=True)
class CardMetadata:
    """What a README card's front matter says of the model's Hub id: `model_id`, and the
    name of its first `model-index` entry (None where either is absent)."""

    model_id: Any
    index_name: Any

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> CardMetadata:
        """Read the front matter (an empty mapping where the card has none)."""
        index = meta.get("model-index")
        named = (
            index[0].get("name")
            if isinstance(index, list) and index and isinstance(index[0], dict)
            else None
        )
        return cls(model_id=meta.get("model_id"), index_name=named)


__all__ = ["CardMetadata", "TransformersConfig"]
