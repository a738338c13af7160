"""The audit's checks: violations of one registry state, and of the change between two.

Codes and rules are documented in `stemma.lineage.audit`; this module reads the two states
(raw documents, so a broken file is still compared) and runs the checks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from stemma.registry import Registry
from stemma.registry.check import archrules
from stemma.registry.check import consistency as cons
from stemma.registry.check.consistency import Violation
from stemma.registry.errors import StemmaError
from stemma.registry.pipeline import _pipecache
from stemma.registry.pipeline._pipedelta import render_near
from stemma.registry.pipeline.locks import folder_locked_md5
from stemma.registry.pipeline.pipefiles import compare, differences, rendered
from stemma.registry.rules import status
from stemma.registry.rules.layout import (
    LOCK_FILE,
    MANIFEST_FILE,
    SETTINGS_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
)
from stemma.registry.rules.naming import parse_source
from stemma.registry.rules.parents import parents_of
from stemma.registry.store.files import content_id, parse_json_text
from stemma.registry.store.tree import WorkTree
from stemma.registry.store.yamlio import locked_md5s
from stemma.registry.versions import resolve as versions

from ._audit_state import AheadReader, State

LOCK_MISMATCH = "lock-mismatch"
PIPELINE_OUT_OF_SYNC = "pipeline-out-of-sync"
TAGGED_VERSION_CHANGED = "tagged-version-changed"
NEW_ENTRYPOINT = "new-entrypoint"
REMOVED_WITH_DESCENDANTS = "removed-with-descendants"
CODES = (
    *cons.CODES,
    LOCK_MISMATCH,
    PIPELINE_OUT_OF_SYNC,
    TAGGED_VERSION_CHANGED,
    NEW_ENTRYPOINT,
    REMOVED_WITH_DESCENDANTS,
)


@dataclass(frozen=True)
class Finding:
    """One violation at head; `new` when the base state did not have it."""

    code: str
    subject: str
    path: str
    message: str
    pointer: str = ""
    line: int | None = None
    new: bool = True

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity across states (messages may quote ids that differ)."""
        return (self.code, self.subject, self.path, self.pointer)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def finding(v: Violation, new: bool = True) -> Finding:
    """A consistency violation as a report finding."""
    return Finding(v.code, v.subject, v.path, v.message, v.pointer, v.line, new)


def source_of(spec: Any) -> str | None:
    """The source model named by a raw spec (a merge's parents, joined: a changed list is a
    lineage change), or None."""
    src = spec.get("source") if isinstance(spec, dict) else None
    if isinstance(src, dict) and "models" in src:
        return ", ".join(parents_of(spec)) or None
    return str(src["model"]) if isinstance(src, dict) and "model" in src else None


# -- violations of one state -----------------------------------------------------------


def state_violations(state: State, codes: Collection[str] | None = None) -> list[Violation]:
    """Violations of one state: the consistency checks, dvc.lock and dvc.yaml; with
    `codes`, only the checks that can find violations of those codes are run."""
    return check_violations(state, codes) + pipeline_violations(state, codes)


def check_violations(
    state: State, codes: Collection[str] | None = None, subjects: Collection[str] | None = None
) -> list[Violation]:
    """The violations of one state that its consistency check finds (dvc.lock's included:
    they come from the same folder facts); with `codes`, only the checks that can find
    violations of those codes are run; with `subjects`, only violations of those subjects
    are sure to be found (the check reads only their folders, unless it must look for
    cycles)."""
    reg = state.reg
    if reg is None:
        return list(state.errors)
    only = None if subjects is None or _wanted(codes, cons.CYCLE) else frozenset(subjects)
    found = list(state.check(only).violations) if _wanted(codes, *cons.CODES) else []
    if _wanted(codes, LOCK_MISMATCH):
        found += _lock_mismatches(state, reg, only)
    return found


def pipeline_violations(state: State, codes: Collection[str] | None = None) -> list[Violation]:
    """The pipeline files of one state that differ from what its specs render (none when
    `codes` leaves out their code)."""
    if state.reg is None or not _wanted(codes, PIPELINE_OUT_OF_SYNC):
        return []
    return _pipeline(state, state.reg)


def _wanted(codes: Collection[str] | None, *these: str) -> bool:
    return codes is None or any(c in codes for c in these)


def _lock_mismatches(
    state: State, reg: Registry, only: frozenset[str] | None = None
) -> list[Violation]:
    """Models whose manifest records other weights than the dvc.lock beside their dvc.yaml
    (or the root dvc.lock, an older layout's); both md5s come from the folder facts of the
    consistency check where it could read the manifest (`only`: of those subjects)."""
    root = locked_md5s(state.text(LOCK_FILE))
    facts = state.check(only).facts
    found = []
    names = sorted(state.models)
    if only is not None:
        names = [n for n in names if f"model:{n}" in only]
    for name in names:
        mine = facts.get(name)
        if mine is not None and mine.manifest:
            md5, locked = mine.weights_md5, mine.locked_md5
        else:  # an unreadable spec or manifest: its raw document
            md5 = cons.weights_md5(state.manifests.get(f"model:{name}"))
            locked = folder_locked_md5(reg, name, state.text)
        want = locked if locked is not None else root.get(reg.rel("models", name, WEIGHTS_FILE))
        if status.lock_changed(md5, want):  # the checks above judge the rest
            found.append(
                Violation(
                    LOCK_MISMATCH,
                    reg.rel("models", name, MANIFEST_FILE),
                    f"weights md5 {str(md5)[:12]} differs from {str(want)[:12]} in dvc.lock:"
                    " the weights were not produced by the locked run; rebuild with `dvc repro`",
                    "/weights/md5",
                    subject=f"model:{name}",
                )
            )
    return found


def _pipeline(state: State, reg: Registry) -> list[Violation]:
    if not state.models and not state.datasets:
        return []
    try:
        hashes = _near_render(state, reg)
        if hashes is not None:
            found = compare(reg, hashes, AheadReader(state, list(hashes)))
        else:
            found = differences(reg, state.text if state.head is not None else None)
    except StemmaError:  # specs too broken to render: their own violations say why
        return []
    return [
        Violation(
            PIPELINE_OUT_OF_SYNC,
            diff.path,
            f"{diff}; run `stemma pipeline` and commit it",
            subject="pipeline",
        )
        for diff in found
    ]


def _near_render(state: State, reg: Registry) -> dict[str, str] | None:
    """The rendered hashes of a state at a git revision tied to the working tree (`anchor`),
    from the working tree's last render and the model specs that differ between the two
    (`_pipedelta.render_near`); None when that does not apply (render everything)."""
    wt = state.head.reg if state.head is not None else None
    if wt is None or not isinstance(wt.tree, WorkTree) or state.same is None:
        return None
    if reg.rel_root != wt.rel_root or set(reg.dataset_names()) != set(wt.dataset_names()):
        return None
    for name in reg.dataset_names():
        if not all(state.same_file(reg.rel("datasets", name, f)) for f in _INPUTS):
            return None  # a dataset's spec or manifest: render everything
    names, wt_names = reg.model_names(), wt.model_names()
    changed = set(names) ^ set(wt_names)
    for name in names:
        spec, manifest = (reg.rel("models", name, f) for f in _INPUTS)
        if not (state.same_file(spec) and state.same_file(manifest)):
            if not reg.tree.exists(spec):
                return None  # the manifest of a model without a spec is an input
            changed.add(name)  # rendered again from its spec
    cached = _kept_render(wt)
    if cached is None:
        rendered(wt)  # the working tree's render, kept for this and the next command
        cached = _kept_render(wt)
    if cached is None:
        return None  # a cache that cannot be written (a read-only checkout)
    return render_near(reg, cached, changed)


def _kept_render(wt: Registry) -> dict[str, Any] | None:
    """The working tree's last render when it is a render of the working tree as it is now,
    by this code."""
    cached = _pipecache.load(wt)
    if cached is None or not _pipecache.known_hashes(cached):
        return None
    return cached if cached.get("inputs") == _pipecache.inputs(wt) else None


_INPUTS = (SPEC_FILE, MANIFEST_FILE)


# -- violations of the change ----------------------------------------------------------


def change_violations(old: State, new: State) -> list[Finding]:
    """Violations of the change itself: removals still in use, entrypoints, tagged versions."""
    if new.reg is None:
        return []
    found = _removed_in_use(old, new) + _entrypoints(old, new)
    found += _tagged_changes(old, new)
    return found


def _removed_in_use(old: State, new: State) -> list[Finding]:
    assert new.reg is not None
    found = []
    for name in sorted(set(old.models) - set(new.models)):
        users = sorted(m for m, spec in new.models.items() if name in parents_of(spec))
        if users:
            found.append(
                Finding(
                    REMOVED_WITH_DESCENDANTS,
                    f"model:{name}",
                    new.reg.rel("models", name, SPEC_FILE),
                    f"model {name!r} was removed but {_names(users)} still"
                    f" {'derives' if len(users) == 1 else 'derive'} from it;"
                    " re-parent or remove them too",
                    "/source/model",
                )
            )
    for name in sorted(set(old.datasets) - set(new.datasets)):
        users = sorted(m for m, spec in new.models.items() if name in _datasets(spec))
        if users:
            found.append(
                Finding(
                    REMOVED_WITH_DESCENDANTS,
                    f"dataset:{name}",
                    new.reg.rel("datasets", name, SPEC_FILE),
                    f"dataset {name!r} was removed but {_names(users)} still"
                    f" {'uses' if len(users) == 1 else 'use'} it",
                    "/data",
                )
            )
    return found


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _datasets(spec: Any) -> set[str]:
    if not isinstance(spec, dict):
        return set()
    data = spec.get("data")
    used = {str(v) for v in data.values()} if isinstance(data, dict) else set()
    checks = spec.get("checks")
    if isinstance(checks, dict):
        used |= {str(c["data"]) for c in checks.values() if isinstance(c, dict) and "data" in c}
    return used


def _code_of_model(state: State, spec: Any) -> list[tuple[str, str]]:
    """(entrypoint, pointer) for the code a raw model spec runs: its entrypoint, and the
    classes the auto_map of its transformers config names (inline or in the folder of
    `architecture.path`); remote code is an entrypoint too."""
    arch = spec.get("architecture") if isinstance(spec, dict) else None
    if not isinstance(arch, dict):
        return []
    found = []
    entry = arch.get("entrypoint")
    if entry:
        found.append((str(entry), "/architecture/entrypoint"))
    config, base = arch.get("config"), "/architecture/config"
    if isinstance(arch.get("path"), str) and state.reg is not None:
        config, base = _folder_config(state, arch["path"]), "/architecture/path"
    if isinstance(config, dict):
        for ref in archrules.code_refs(config):
            pointer = base + ref.pointer if base.endswith("config") else base
            found.append((ref.entrypoint or ref.ref, pointer))
    return found


def _folder_config(state: State, path: str) -> Any:
    """The config.json of a spec's `architecture.path` in this state, or None."""
    assert state.reg is not None
    rel = state.reg.rel(*PurePosixPath(path, "config.json").parts)
    text = state.text(rel)
    if text is None:
        return None
    try:
        return parse_json_text(text, rel)
    except StemmaError:  # its own violation says why
        return None


def _entry_of_dataset(spec: Any) -> str | None:
    source = spec.get("source") if isinstance(spec, dict) else None
    if not isinstance(source, str):
        return None
    try:
        parsed = parse_source(source)
    except StemmaError:
        return None
    return parsed.value if parsed.kind == "entrypoint" else None


def _entrypoints(old: State, new: State) -> list[Finding]:
    def listed(state: State) -> list[str]:
        s = state.settings if isinstance(state.settings, dict) else {}
        return [str(e) for e in s.get("entrypoints") or []]

    found = []
    before = set(listed(old))
    for i, entry in enumerate(listed(new)):
        if entry not in before:
            found.append(
                Finding(
                    NEW_ENTRYPOINT,
                    "settings",
                    SETTINGS_FILE,
                    f"new trusted entrypoint {entry!r}: builds will run its code; review it",
                    f"/entrypoints/{i}",
                )
            )
    assert new.reg is not None
    in_use: set[str] = set(listed(new))

    def of_dataset(state: State, spec: Any) -> list[tuple[str, str]]:
        entry = _entry_of_dataset(spec)
        return [] if entry is None else [(entry, "/source")]

    for kind, pick in (("model", _code_of_model), ("dataset", of_dataset)):
        specs_new = new.models if kind == "model" else new.datasets
        specs_old = old.models if kind == "model" else old.datasets
        for name in sorted(specs_new):
            was = {entry for entry, _ in pick(old, specs_old.get(name))}
            for entry, pointer in pick(new, specs_new[name]):
                in_use.add(entry)
                if entry in was:
                    continue
                found.append(
                    Finding(
                        NEW_ENTRYPOINT,
                        f"{kind}:{name}",
                        new.reg.rel(f"{kind}s", name, SPEC_FILE),
                        f"{kind} {name!r} now runs entrypoint {entry!r}; review that code",
                        pointer,
                    )
                )
    for entry in sorted(in_use):
        for path in _module_files(entry):
            if old.text(path) != new.text(path) and new.text(path) is not None:
                found.append(
                    Finding(
                        NEW_ENTRYPOINT,
                        "settings",
                        path,
                        f"code of entrypoint {entry!r} changed; review it",
                    )
                )
    return found


def _module_files(entry: str) -> list[str]:
    """Repository files that may hold an entrypoint's module (flat or src/ layout)."""
    parts = entry.partition(":")[0].split(".")
    base = "/".join(parts)
    return [f"{root}{base}{tail}" for root in ("", "src/") for tail in (".py", "/__init__.py")]


def _tagged_changes(old: State, new: State) -> list[Finding]:
    assert new.reg is not None
    changed = []
    for name in sorted(set(old.models) & set(new.models)):
        if old.same_file(new.reg.rel("models", name, MANIFEST_FILE)):
            continue  # the same file: the same content
        a, b = old.manifests.get(f"model:{name}"), new.manifests.get(f"model:{name}")
        if not (isinstance(a, dict) and isinstance(b, dict)) or _same_content(a, b):
            continue
        if all(a.get(k) == b.get(k) for k in ("spec_digest", "source", "datasets")):
            changed.append((name, str(a.get("id"))))
    if not changed:
        return []
    # reads git tags: only when a manifest was rewritten
    tags: dict[tuple[str, str], list[str]] = {}
    for tag in versions.list_tags(new.reg):
        tags.setdefault((tag.name, str(tag.id)), []).append(tag.tag)
    found = []
    for name, mid in changed:
        labels = sorted(set(tags.get((name, mid), [])))
        if labels:
            found.append(
                Finding(
                    TAGGED_VERSION_CHANGED,
                    f"model:{name}",
                    new.reg.rel("models", name, MANIFEST_FILE),
                    f"manifest of tagged version {', '.join(labels)} ({mid[7:19]}) was changed"
                    " although its spec, source and data are the same; build a new version"
                    " instead of rewriting a released one",
                    "/id",
                )
            )
    return found


def _same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    # The recorded id is part of what a hand edit may leave behind: compare it too.
    return bool(a.get("id") == b.get("id") and content_id(a) == content_id(b))
