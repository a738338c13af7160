"""Render only what a few changed model specs can change, from the facts the last render
kept (`_pipecache`), with the same functions as a full render: the result is the full
render's, file for file.

A model's dvc.yaml reads its own spec, and of other models only: its source's facts
(whether it exists, its weights output, the entrypoint it runs or passes on), and for an
exploring model (`source: {model: auto}`) every model's name and declared source (its
candidates). The root dvc.yaml holds every model's artifact entry, in build order. So after
an edit of some model specs, the files to render again are those of the edited models,
of every exploring model, of each model whose source's facts changed (parents come first
in build order, so one pass finds them all), and the root's; build order comes from the
kept facts. Anything else that changed (a dataset spec, a manifest, the settings) is
left to a full render by the caller.

The same holds between two trees: a registry at a git revision whose specs differ from the
working tree's in a few model specs is rendered from the working tree's last render
(`render_near`), when everything else that render read is the same at the revision.
"""

from __future__ import annotations

from typing import Any

from stemma.registry.pipeline import _pipecache
from stemma.registry.pipeline.render import (
    F_ARTIFACT,
    F_AUTO,
    F_ENTRY,
    F_LORA,
    F_PATTERN,
    F_REGISTERED,
    F_SOURCE,
    _model_entrypoint,
    _model_stages,
    _wdir,
    file_text,
    model_facts,
    order_from,
    root_doc,
    stage_file,
    stage_name,
)
from stemma.registry.rules.dag import Forest, exploration_candidates
from stemma.registry.rules.layout import PIPELINE_FILE
from stemma.registry.store.handle import Registry

# Past this many changed specs a full render is about as cheap, and simpler to trust.
MAX_CHANGED = 200


def _passed_on(facts: list[Any] | None) -> tuple[Any, ...] | None:
    """What a model's children read of it (None: it does not exist)."""
    return None if facts is None else (facts[F_LORA], facts[F_ENTRY], facts[F_REGISTERED])


def render_changed(
    reg: Registry,
    kept: dict[str, list[Any]],
    changed: set[str],
    files: list[str],
    names: list[str],
) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, list[Any]]] | None:
    """(the documents of the files to render again, every file's path in render order, the
    new facts of every model) after the specs of `changed` models changed; `kept`: each
    model's facts at the last render, `files`: its files in order, `names`: the models now
    (`Registry.model_names`, sorted). None when the change is not one this render can follow
    (then render everything)."""
    if len(changed) > MAX_CHANGED:
        return None
    present = set(names)
    facts = {name: f for name, f in kept.items() if name not in changed}
    specs = {}
    for name in sorted(changed & present):
        spec = reg.model_spec(name)
        if spec.registered:  # its facts come from a manifest: not an edit of a spec
            return None
        specs[name] = spec
        facts[name] = model_facts(reg, name, spec, None)  # its entry comes below
    if set(facts) != present:
        return None
    if any(isinstance(f[F_SOURCE], list) for f in facts.values()):
        return None  # a merge (several parents): the full render orders it after each
    declared = {n: [f[F_SOURCE]] for n, f in facts.items() if f[F_SOURCE] is not None}
    explorers = {n for n, f in facts.items() if f[F_AUTO]}
    deps: dict[str, list[str]] = {}
    forest = Forest.of(names, declared) if explorers else None
    for name in names:
        f = facts[name]
        if f[F_AUTO]:
            assert forest is not None
            deps[name] = exploration_candidates(name, names, f[F_PATTERN], forest)
        else:
            deps[name] = [f[F_SOURCE]] if f[F_SOURCE] in present else []
    order = order_from(reg, deps)
    # Models whose facts passed on changed: their children render again.
    moved = {n for n in changed if n not in facts}
    entries = {n: f[F_ENTRY] for n, f in facts.items()}
    docs: dict[str, dict[str, Any]] = {}
    for name in order:
        f = facts[name]
        if not (name in changed or name in explorers or f[F_SOURCE] in moved):
            continue
        spec = specs.get(name) or reg.model_spec(name)
        entries.pop(name)
        if spec.registered:
            _model_entrypoint(reg, spec, entries)
        else:
            where = stage_file(reg, "model", name)
            stages = _model_stages(reg, name, spec, entries, declared)
            docs[where] = {"stages": {s: {"wdir": _wdir(where), **b} for s, b in stages}}
        new = [*f[:F_ENTRY], entries.get(name), *f[F_ENTRY + 1 :]]
        if _passed_on(new) != _passed_on(kept.get(name)):
            moved.add(name)
        facts[name] = new
    artifacts = {n: facts[n][F_ARTIFACT] for n in order if facts[n][F_ARTIFACT] is not None}
    docs[PIPELINE_FILE] = root_doc(reg, artifacts, _own_stage_names(reg, facts))
    datasets = [p for p in files if p.startswith(_dataset_prefix(reg))]
    models = [stage_file(reg, "model", n) for n in order if not facts[n][F_REGISTERED]]
    return docs, [PIPELINE_FILE, *datasets, *models], {n: facts[n] for n in order}


def render_near(reg: Registry, cached: dict[str, Any], changed: set[str]) -> dict[str, str] | None:
    """The hash of the text of every pipeline file of `reg`, in render order, from `cached`:
    another tree's last render (`_pipecache.load`, the working tree's), whose inputs are
    those of `reg` but the specs of the `changed` models (added, removed or edited). Only
    the files those can change are rendered (`render_changed`); the settings, the root
    dvc.yaml's own stages, the code files looked for and the code itself must be as the
    cached render found them. None when they are not, or the change is not one
    `render_changed` can follow: then render everything."""
    known = _pipecache.known_hashes(cached)  # empty when other code wrote it
    facts, files = cached.get("facts"), cached.get("files")
    if not known or not (isinstance(facts, dict) and isinstance(files, dict)):
        return None
    if cached.get("base") != _pipecache.base(reg) or not _pipecache.probes_hold(reg, cached):
        return None
    if cached.get("foreign") != _pipecache.foreign(reg):
        return None
    out = render_changed(reg, facts, changed, list(files), reg.model_names())
    if out is None:
        return None
    docs, order, _ = out
    hashes = {}
    for path in order:
        doc = docs.get(path)
        last = known.get(path)
        if doc is None:  # not rendered again: as the cached render wrote it
            if last is None:
                return None
            hashes[path] = last[1]
        elif last is not None and last[0] == _pipecache.doc_digest(doc):
            hashes[path] = last[1]
        else:
            hashes[path] = _pipecache.sha(file_text(doc))
    return hashes


def _dataset_prefix(reg: Registry) -> str:
    """The start of every dataset folder's repo-relative path."""
    return stage_file(reg, "dataset", "")[: -len(f"/{PIPELINE_FILE}")]


def _own_stage_names(reg: Registry, facts: dict[str, list[Any]]) -> set[str]:
    """The names of every stage stemma writes (a stage of the root file that shares one of
    them is left out of the root)."""
    out = {stage_name("dataset", name) for name in reg.dataset_names()}
    for name, f in facts.items():
        if not f[F_REGISTERED]:
            out.add(stage_name("model", name))
            if f[F_AUTO]:
                out.add(stage_name("explore", name))
    return out
