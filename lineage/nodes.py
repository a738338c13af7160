"""Node keys, edge kinds and the records a lineage graph is drawn from.

The graph (`graph`) and its index (`query`) both speak these, so they live below both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import networkx as nx

DERIVED_FROM = "derived_from"
TRAINED_ON = "trained_on"
EVALUATED_ON = "evaluated_on"
PREVIOUS = "previous"
EDGE_KINDS = (DERIVED_FROM, TRAINED_ON, EVALUATED_ON, PREVIOUS)


def new_graph() -> nx.MultiDiGraph:
    """An empty lineage graph. networkx loads here, on the first graph: a command that only
    lists help or reads the index never pays its import (about 0.1 s)."""
    import networkx as nx

    return nx.MultiDiGraph()


def model_node(name: str) -> str:
    """Node key of a model."""
    return f"model:{name}"


def dataset_node(name: str) -> str:
    """Node key of a dataset."""
    return f"dataset:{name}"


def version_node(name: str, manifest_id: str) -> str:
    """Node key of one version (manifest id) of a model."""
    return f"model:{name}@{manifest_id}"


def split_node(key: str) -> tuple[str, str]:
    """(kind, name) of a node key; versions keep their `@ID` in the name."""
    kind, _, name = key.partition(":")
    return kind, name


@dataclass(frozen=True)
class ModelRecord:
    """What the graph needs to know about one declared model."""

    name: str
    source: str | None = None
    relation: str | None = None
    source_id: str | None = None
    train: str | None = None
    eval: str | None = None
    checks: tuple[str, ...] = ()  # datasets of forgetting / drift checks
    id: str | None = None
    status: str = "unbuilt"
    auto: bool = False
    candidates: tuple[str, ...] = ()  # models an exploration considers (source: auto)
    metrics: Mapping[str, float] = field(default_factory=dict)
    more: tuple[str, ...] = ()  # a merge's parents after `source` (`parents.parents_of`)


@dataclass(frozen=True)
class DatasetRecord:
    """What the graph needs to know about one declared dataset."""

    name: str
    id: str | None = None
    status: str = "unbuilt"


class LineageNode(NamedTuple):
    """One node of a lineage graph as its attributes say (`graph` sets them), read by field:
    every node has `kind` (model, dataset or version), `name`, `id` and `status`; a model
    also `relation`, `auto`, `candidates` and `metrics` (a Hub parent `hub_id` too), a
    version `commit`, `date`, `author` and `metrics`. None where the node has no such
    attribute.

    A named tuple rather than a frozen dataclass: a renderer reads every node it draws (10,000
    and more), and a tuple is made in well under half the time."""

    key: str
    kind: str | None = None
    name: str | None = None
    id: str | None = None
    status: str | None = None
    relation: str | None = None
    auto: bool | None = None
    candidates: Sequence[str] | None = None
    metrics: Mapping[str, float] | None = None
    hub_id: str | None = None
    commit: str | None = None
    date: str | None = None
    author: str | None = None

    @classmethod
    def of(cls, g: nx.MultiDiGraph, key: str) -> LineageNode:
        """The node `key` of `g` (a TypeError names an attribute this record lacks: a node
        attribute is added here before a graph carries it)."""
        return cls(key, **g.nodes[key])

    @property
    def label(self) -> str:
        """The name a drawing shows: the name (the key's name part where the node has none),
        and a version's short id after `@`."""
        name = self.key.partition(":")[2] if self.name is None else str(self.name)
        return f"{name}@{short_id(self.id)}" if self.kind == "version" else name

    def to_dict(self) -> dict[str, Any]:
        """The attributes the node has (those not None) and its `key`: its JSON form."""
        return {f: v for f, v in zip(self._fields, self, strict=True) if v is not None}

    @classmethod
    def dict_of(cls, key: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """`LineageNode(key, **attrs).to_dict()` without making the record (a JSON render
        makes one per node); an attribute the record lacks raises its TypeError all the same."""
        if not _NODE_ATTRIBUTES.issuperset(attrs):
            return cls(key, **attrs).to_dict()
        return {"key": key} | {k: v for k, v in attrs.items() if v is not None}


class LineageEdge(NamedTuple):
    """The attributes of one edge (`graph` sets them): a `derived_from` edge has `relation`,
    `source_id` and `auto`, a `trained_on` or `evaluated_on` edge its `roles` (comma
    separated); None where the edge has no such attribute. A named tuple, as `LineageNode`."""

    relation: str | None = None
    source_id: str | None = None
    auto: bool | None = None
    roles: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The attributes the edge has (those not None): its JSON form, less its ends."""
        return {f: v for f, v in zip(self._fields, self, strict=True) if v is not None}

    @classmethod
    def dict_of(cls, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """`LineageEdge(**attrs).to_dict()` without making the record, which a JSON render
        would make for every edge (at 30,000 models, ~0.1 s of its 0.26 s); an attribute
        the record lacks raises its TypeError all the same."""
        if not _EDGE_FIELDS.issuperset(attrs):
            return cls(**attrs).to_dict()
        return {k: v for k, v in attrs.items() if v is not None}


_NODE_ATTRIBUTES = frozenset(LineageNode._fields) - {"key"}
_EDGE_FIELDS = frozenset(LineageEdge._fields)


def short_id(mid: str | None) -> str:
    """A manifest id's first 12 hex digits ("" for none)."""
    return str(mid).removeprefix("sha256:")[:12] if mid else ""
