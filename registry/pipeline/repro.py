"""What `stemma repro` hands DVC: the stale stages, from the index, in lineage order.

`dvc repro` starts by collecting every dvc.yaml of the repository and checking every stage,
which at 10,000 models takes longer than the builds it finds to do. The index already knows
which models and datasets are stale or unbuilt (`status`, the one rule); everything derived
from those (`dag.Forest`) will change when they are rebuilt. `plan` lists exactly those
stages, datasets first and then models each after its source (`dag.build_order`), as DVC
targets `PATH/dvc.yaml:STAGE`. `dvc repro --single-item TARGETS...` runs them in that order:
DVC still checks each stage against its own dvc.lock, runs it when it changed, and records
it in the dvc.lock beside it, as a full `dvc repro` would.

A model whose manifest records other weights than its folder's dvc.lock (a build that DVC
never recorded: killed before it wrote the lock, or run by hand) is stale too (the status
rule's lock case, judged by the index): DVC runs its stage, which records the lock and caches
the weights.

A stage whose output is missing from the working tree (a fresh clone that has not run
`dvc pull`, an output deleted by hand, a sharded model's folder without its index) is
handed to DVC as well, as `dvc repro` would find
it: the manifest in git says the model was built, not that its weights are here.

What only DVC sees (stemma.yaml's settings, an entrypoint's code, a data file edited in
place) is not in the index: `dvc repro` (or `stemma repro NAME`, which hands DVC the model
itself) finds those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stemma.registry.errors import ModelNotFound
from stemma.registry.pipeline.locks import conflicted_files
from stemma.registry.pipeline.render import ADAPTER_DIR, stage_file, stage_name
from stemma.registry.rules import status
from stemma.registry.rules.dag import Forest, exploration_candidates
from stemma.registry.rules.dag import build_order as dag_order
from stemma.registry.rules.layout import DATA_FILE, DATASETS_DIR, MODELS_DIR, WEIGHTS_FILE
from stemma.registry.store.handle import Registry
from stemma.registry.store.index import open_index

TO_BUILD = (status.STALE, status.UNBUILT)
# A sharded build's index, inside the `weights.safetensors` folder (migration/shards.py).
SHARD_INDEX = WEIGHTS_FILE + ".index.json"


@dataclass(frozen=True)
class Plan:
    """The stages to hand DVC, in order, and the entries they build."""

    targets: list[str] = field(default_factory=list)  # `PATH/dvc.yaml:STAGE`
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    # target -> the targets of this plan it needs built first (`stemma repro --jobs`)
    parents: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "targets": self.targets,
            "datasets": self.datasets,
            "models": self.models,
            "parents": self.parents,
        }


@dataclass(frozen=True)
class _Declared:
    """What the index holds of a model's spec that a plan needs."""

    source: str | None  # the declared source model, "auto" for an exploration
    data: frozenset[str]  # every dataset it reads: train, eval and its checks' data
    candidates: str | None  # an exploration's glob of candidate models
    parents: tuple[str, ...]  # `parents.parents_of` as the index holds it (a merge has several)


@dataclass
class _Rows:
    """What the index says about every model and dataset."""

    model_status: dict[str, str]
    declared: dict[str, _Declared]  # models with a spec
    dataset_status: dict[str, str]


def _rows(reg: Registry) -> _Rows:
    with open_index(reg) as index:
        models = index.con.execute(
            "SELECT m.name, m.status, s.name IS NOT NULL, s.source, s.train, s.eval, s.checks,"
            " s.candidates, s.parents FROM models m LEFT JOIN raw.model_specs s ON s.name = m.name"
        ).fetchall()
        datasets = index.con.execute("SELECT name, status FROM datasets").fetchall()
    declared = {}
    for name, _state, has_spec, source, train, eval_, checks, glob, parents in models:
        if has_spec:
            data = frozenset(d for d in (train, eval_, *(checks or ())) if d)
            declared[name] = _Declared(source, data, glob, tuple(parents or ()))
    return _Rows({r[0]: r[1] for r in models}, declared, dict(datasets))


def _deps(rows: _Rows, forest: Forest) -> dict[str, list[str]]:
    """model -> the models it is built from: its source, or its exploration's candidates
    (the pipeline's rule: not the model itself nor what derives from it)."""
    names = sorted(rows.model_status)
    deps: dict[str, list[str]] = {}
    for name, spec in rows.declared.items():
        if spec.source == "auto":
            deps[name] = exploration_candidates(name, names, spec.candidates or "*", forest)
        else:
            deps[name] = [p for p in spec.parents if p in rows.model_status]
    return deps


def plan(reg: Registry, targets: Sequence[str] = (), downstream: bool = False) -> Plan:
    """The stale stages (stale or unbuilt per the index, and everything derived from them),
    in lineage order. With `targets` (model or dataset names), only those and what they are
    built from, as `dvc repro TARGET` goes; with `downstream`, those and what derives from
    them, as `dvc repro --downstream TARGET` goes. A target is always handed to DVC, which
    decides whether it changed. A pipeline file DVC cannot parse (merge conflict markers) is
    an error here too, before anything is planned."""
    for _, error in conflicted_files(reg):
        raise error
    rows = _rows(reg)
    parents = {m: list(s.parents) for m, s in rows.declared.items() if s.parents}
    forest = Forest.of(rows.model_status, parents)
    deps = _deps(rows, forest)
    used_by: dict[str, set[str]] = {}
    for name, spec in rows.declared.items():
        for dataset in spec.data:
            used_by.setdefault(dataset, set()).add(name)
    stale_data = {d for d, s in rows.dataset_status.items() if s in TO_BUILD}
    # stale includes a build DVC did not record (`status`'s lock case): its stage must run
    # so DVC locks and caches the weights the manifest names
    roots = {m for m in rows.declared if rows.model_status.get(m) in TO_BUILD}
    for dataset in stale_data:
        roots |= used_by.get(dataset, set())
    affected = set(forest.union(roots))
    affected |= {m for m, d in deps.items() if affected.intersection(d)}  # explorations
    affected &= set(rows.declared)  # registered models have no stage
    absent_models, absent_data = _absent_outputs(reg, rows)
    affected |= absent_models
    stale_data |= absent_data
    data = set(stale_data)
    if targets:
        models, data = _restrict(rows, forest, deps, affected, stale_data, targets, downstream)
        affected = models
    order = dag_order({m: deps[m] for m in affected}, strict=False)
    out = Plan(datasets=sorted(data), models=order)
    built: dict[str, str] = {}  # model or dataset of this plan -> the target that builds it
    for name in out.datasets:
        target = f"{stage_file(reg, 'dataset', name)}:{stage_name('dataset', name)}"
        out.targets.append(target)
        out.parents[target] = []
        built[f"dataset:{name}"] = target
    for name in order:
        where = stage_file(reg, "model", name)
        spec = rows.declared[name]
        needs = [built[f"dataset:{d}"] for d in sorted(spec.data) if f"dataset:{d}" in built]
        first = [built[m] for m in deps[name] if m in built]  # sources, in lineage order
        if spec.source == "auto":  # the exploration reads the candidates, then the build
            explore = f"{where}:{stage_name('explore', name)}"
            out.targets.append(explore)
            out.parents[explore] = [*first, *needs]
            first = [explore]
        target = f"{where}:{stage_name('model', name)}"
        out.targets.append(target)
        out.parents[target] = [*first, *needs]
        built[name] = target
    return out


def _absent_outputs(reg: Registry, rows: _Rows) -> tuple[set[str], set[str]]:
    """Declared models with neither weights nor an adapter folder on disk, and datasets with
    no data file: their stages have an output to make (one stat each, no file read)."""
    root = reg.root
    models = {
        m
        for m in rows.declared
        if not _has_weights(root / MODELS_DIR / m)
        and not (root / MODELS_DIR / m / ADAPTER_DIR).is_dir()
    }
    data = {d for d in rows.dataset_status if not (root / DATASETS_DIR / d / DATA_FILE).exists()}
    return models, data


def _has_weights(folder: Path) -> bool:
    """The model's weights are on disk: the file, or a sharded build's folder of that name
    holding its index (shards beside it; `verify` checks each)."""
    weights = folder / WEIGHTS_FILE
    return weights.is_file() or (weights / SHARD_INDEX).is_file()


def _restrict(
    rows: _Rows,
    forest: Forest,
    deps: dict[str, list[str]],
    affected: set[str],
    stale_data: set[str],
    targets: Iterable[str],
    downstream: bool,
) -> tuple[set[str], set[str]]:
    """The models and datasets of the plan for named targets (see `plan`)."""
    models: set[str] = set()
    data: set[str] = set()
    for target in targets:
        if target in rows.declared:
            if downstream:  # all of them: DVC checks each, whatever the index knows
                models |= {target, *forest.descendants(target)}
                continue
            line = {target, *_upstream(target, deps)} & set(rows.declared)
            models |= {target} | (affected & line)
            for model in line:
                data |= stale_data & rows.declared[model].data
        elif target in rows.dataset_status:
            data.add(target)
            if downstream:
                users = {m for m, s in rows.declared.items() if target in s.data}
                models |= set(forest.union(users))
        elif target not in rows.model_status:  # a registered model has nothing to build
            names = [*rows.model_status, *rows.dataset_status]
            raise ModelNotFound(target, Registry._hint(target, names))
    if downstream:
        models |= {m for m, d in deps.items() if models.intersection(d)}  # explorations
    return models & set(rows.declared), data


def _upstream(name: str, deps: dict[str, list[str]]) -> list[str]:
    """Every model `name` is built from, directly or not."""
    seen: list[str] = []
    todo = list(deps.get(name, ()))
    while todo:
        node = todo.pop()
        if node not in seen and node != name:
            seen.append(node)
            todo += deps.get(node, ())
    return seen
