"""Node keys, edge kinds and the records a lineage graph is drawn from.

The graph (`graph`) and its index (`query`) both speak these, so they live below both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
