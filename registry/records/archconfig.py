"""A model's architecture config: the family's open block, read by field.

The block lives in a spec (`architecture`, as written) and in a manifest
(`architecture.config`: the spec's block, or the source's, sized for the data with
`in_shape` and `num_classes`, plus what the build adds: `task`, a torchvision model's
`input`). Its keys differ by family (`hidden` for mlp, `name` for timm, a transformers
`config` ...), so the record is open: `from_dict` is the one place the block is read by key,
values are kept as parsed (a `num_classes` of 0, None or 3 stays what it was: an export
writes them back into the library's config as they are), and `to_dict` gives the document
unchanged. A build turns them into the numbers it needs where it uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# How a torchvision model built for three channels takes one-channel data (`input.method`).
REPEAT = "repeat"


@dataclass(frozen=True, slots=True)
class ArchitectureConfig:
    """The fields of an architecture block; `doc` is the whole document.

    `library` is the library's own config (`config`, a transformers config where the family
    is transformers), `options` the keyword arguments of an entrypoint or the library's
    constructor (`options`, else `kwargs`; None where neither is set), `input` how the data
    is fed to a model that wants another input (a torchvision model's repeated channels)."""

    doc: Mapping[str, Any]
    family: Any
    task: Any
    name: Any
    num_classes: Any
    in_shape: Any
    options: Mapping[str, Any] | None
    library: Any
    hidden: Any
    channels: Any
    dropout: Any
    entrypoint: Any
    input: Any

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ArchitectureConfig:
        """Read an architecture block (open: other keys stay in `doc`)."""
        options = doc.get("options") or doc.get("kwargs") or None
        return cls(
            doc=doc,
            family=doc.get("family"),
            task=doc.get("task"),
            name=doc.get("name"),
            num_classes=doc.get("num_classes"),
            in_shape=doc.get("in_shape"),
            options=options,
            library=doc.get("config"),
            hidden=doc.get("hidden"),
            channels=doc.get("channels"),
            dropout=doc.get("dropout"),
            entrypoint=doc.get("entrypoint"),
            input=doc.get("input"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The block as recorded (a fresh dict)."""
        return dict(self.doc)

    @property
    def repeats_channels(self) -> bool:
        """True where one-channel data is repeated to the three channels a model takes."""
        return isinstance(self.input, Mapping) and self.input.get("method") == REPEAT


__all__ = ["REPEAT", "ArchitectureConfig"]
