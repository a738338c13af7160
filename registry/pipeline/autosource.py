"""Which models an exploration (`source: {model: auto}`) considers, read off the specs.

The pipeline's stages and the lineage graph both need the candidates of an exploring model;
they live here, apart from the renderer, so that `stemma lineage` reads them without
loading the whole of `render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stemma.registry.records.core import ModelSpec
from stemma.registry.rules.dag import Forest, exploration_candidates
from stemma.registry.rules.parents import parents_of
from stemma.registry.store.handle import Registry

# model -> the parents its spec names (`parents.parents_of`), for the exploration candidates
Declared = Mapping[str, Sequence[str]]


def candidates(
    reg: Registry, name: str, spec: ModelSpec, declared: Declared | None = None
) -> list[str]:
    """Models an exploration stage considers for `source: {model: auto}`: matches of the
    candidates glob, excluding the model itself and its descendants (no cycles).
    `declared`: every model's declared parents, when known (`_declared_sources`)."""
    pattern = spec.source.candidates if spec.source and spec.source.candidates else "*"
    forest = Forest.of(reg.model_names(), _declared_sources(reg) if declared is None else declared)
    return exploration_candidates(name, reg.model_names(), pattern, forest)


def _declared_sources(reg: Registry) -> dict[str, list[str]]:
    """model -> the parents its spec names (`parents_of`; exploring models left out)."""
    out = {}
    for name in reg.model_names():
        found = parents_of(reg.model_spec(name))
        if found:
            out[name] = list(found)
    return out
