"""Releases and stages as annotated git tags in GTO's grammar, and `NAME@REF` to a commit.

`NAME@v1.2.0` registers a version and `NAME#prod#N` assigns a stage, exactly as GTO writes
them, so `gto show` and `dvc artifacts get` read the same registry. Each tag's message is JSON,
`{"id": ..., "source": ...}`: the manifest id the tag names, checkable without the commit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConsistencyError, GitError, InvalidName, StemmaError
from .history import GitPaths, git_paths, history, manifest_at
from .naming import SEMVER_RE, check_name, parse_tag, stage_tag, version_tag
from .registry import Registry
from .tree import git

# GTO's own patterns (gto/constants.py): a tag it cannot parse is invisible to it, so names,
# stages and versions outside them are refused rather than written.
_GTO_NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-/_]*[a-zA-Z0-9])?$")
_GTO_SEMVER_RE = re.compile(
    r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_ID_RE = re.compile(r"^(?P<scheme>sha256:)?(?P<hex>[0-9a-f]+)$")
_MIN_ID_PREFIX = 4
_FORMAT = (
    "%1f".join(
        [
            "%(refname:strip=2)",
            "%(objecttype)",
            "%(*objectname)",
            "%(*objecttype)",
            "%(taggerdate:iso-strict)",
            "%(contents)",
        ]
    )
    + "%1e"
)


@dataclass(frozen=True)
class TagInfo:
    """One GTO tag of a model: a version (`NAME@v1.2.0`) or a stage assignment (`NAME#prod#3`)."""

    tag: str
    name: str
    version: str | None
    stage: str | None
    number: int | None
    commit: str
    id: str | None  # the manifest id from the tag message (None for a tag without one)
    source: str | None
    date: str  # ISO 8601 tagger date

    @property
    def kind(self) -> str:
        """ "version" or "stage"."""
        return "version" if self.version is not None else "stage"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with stable keys."""
        return {
            "tag": self.tag,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "stage": self.stage,
            "number": self.number,
            "commit": self.commit,
            "id": self.id,
            "source": self.source,
            "date": self.date,
        }


@dataclass(frozen=True)
class _RawTag:
    tag: str
    commit: str
    date: str
    message: str


def _raw_tags(paths: GitPaths) -> list[_RawTag]:
    """Every annotated tag on a commit (GTO ignores lightweight tags, and so do we)."""
    out = git(paths.top, "for-each-ref", f"--format={_FORMAT}", "refs/tags").decode(
        errors="replace"
    )
    tags = []
    for record in out.split("\x1e"):
        fields = record.lstrip("\n").split("\x1f")
        if len(fields) != 6:
            continue
        tag, kind, target, target_kind, date, message = fields
        if kind == "tag" and target_kind == "commit":
            tags.append(_RawTag(tag, target, date, message.strip()))
    return tags


def _message(text: str) -> tuple[str | None, str | None]:
    """(id, source) from a tag message; (None, None) when it is not stemma's JSON."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    ident, source = doc.get("id"), doc.get("source")
    return (ident if isinstance(ident, str) else None, source if isinstance(source, str) else None)


def _semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("-")[0].split("+")[0])[:3])


def _infos(raws: list[_RawTag], name: str | None) -> list[TagInfo]:
    infos = []
    for raw in raws:
        parsed = parse_tag(raw.tag)
        if parsed is None or (name is not None and parsed.name != name):
            continue
        ident, source = _message(raw.message)
        infos.append(
            TagInfo(
                raw.tag,
                parsed.name,
                parsed.version,
                parsed.stage,
                parsed.number,
                raw.commit,
                ident,
                source,
                raw.date,
            )
        )
    return sorted(
        infos,
        key=lambda t: (
            t.name,
            t.version is None,
            _semver_key(t.version) if t.version else (),
            t.number or 0,
            t.tag,
        ),
    )


def list_tags(reg: Registry, name: str | None = None) -> list[TagInfo]:
    """Version and stage tags (of one model, or all): by name, versions by semver, then stages."""
    return _infos(_raw_tags(git_paths(reg)), name)


def current_stages(reg: Registry, name: str) -> dict[str, TagInfo]:
    """Stage -> the assignment now in force (the latest one, minus GTO's `NAME#STAGE!#N` undo)."""
    raws = _raw_tags(git_paths(reg))
    undo = re.compile(rf"^{re.escape(name)}#(?P<stage>[^#!]+)!#(?P<n>\d+)$")
    events: list[tuple[int, str, str, TagInfo | None]] = [
        (t.number or 0, t.stage, t.commit, t) for t in _infos(raws, name) if t.stage is not None
    ]
    for raw in raws:
        if m := undo.match(raw.tag):
            events.append((int(m["n"]), m["stage"], raw.commit, None))
    in_stage: dict[str, dict[str, TagInfo]] = {}
    for _n, stage, commit, assigned in sorted(events, key=lambda e: e[0]):
        held = in_stage.setdefault(stage, {})
        held.pop(commit, None)
        if assigned is not None:
            held[commit] = assigned  # re-inserted last: the most recent assignment wins
    return {stage: list(held.values())[-1] for stage, held in sorted(in_stage.items()) if held}


def next_number(reg: Registry, name: str) -> int:
    """1 + the highest counter among the model's tags, as GTO numbers them (all stages)."""
    counted = re.compile(rf"^{re.escape(name)}[@#][^#]*#(?P<n>\d+)$")
    names = git(git_paths(reg).top, "tag", "--list").decode(errors="replace").splitlines()
    return 1 + max((int(m["n"]) for t in names if (m := counted.match(t))), default=0)


def _commit_of(paths: GitPaths, rev: str) -> str | None:
    try:
        return (
            git(paths.top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
            or None
        )
    except GitError:
        return None


def locate(reg: Registry, name: str, ref: str) -> str | None:
    """The commit that `NAME@REF` names, or None for an id only in the working tree.

    REF is tried as a manifest id prefix, a version tag, a stage, then any git revision.
    """
    paths = git_paths(reg)
    if ref.startswith("-"):
        raise InvalidName(f"invalid reference {ref!r} for model {name!r}")
    if m := _ID_RE.match(ref):
        found = _match_id(reg, name, m["hex"], explicit=bool(m["scheme"]))
        if found is not None:
            return found or None
    if SEMVER_RE.match(ref):
        commit = _commit_of(paths, f"refs/tags/{version_tag(name, ref)}")
        if commit is None:
            known = ", ".join(t.version or "" for t in list_tags(reg, name) if t.version)
            raise StemmaError(
                f"model {name!r} has no version {ref} (tag {name}@{ref});"
                f" versions: {known or 'none'}"
            )
        return commit
    stages = current_stages(reg, name)
    if ref in stages:
        return stages[ref].commit
    if any(t.stage == ref for t in list_tags(reg, name)):
        raise StemmaError(f"stage {ref!r} of model {name!r} is empty: every assignment was undone")
    commit = _commit_of(paths, ref)
    if commit is None:
        raise GitError(
            f"unknown reference {ref!r} for model {name!r}: not a manifest id prefix,"
            " version tag, stage or git revision"
        )
    return commit


def _match_id(reg: Registry, name: str, hexpart: str, explicit: bool) -> str | None:
    """Commit of the newest version whose id starts with the prefix; "" for the working tree.

    None when nothing matches and the prefix may still be a git revision.
    """
    if len(hexpart) < _MIN_ID_PREFIX:
        if explicit:
            raise InvalidName(
                f"manifest id prefix {hexpart!r} is too short:"
                f" give at least {_MIN_ID_PREFIX} hex digits"
            )
        return None
    prefix = "sha256:" + hexpart
    versions = history(reg, name)
    ids = sorted({v.id for v in versions if v.id.startswith(prefix)})
    if len(ids) > 1:
        shown = ", ".join(i[7:19] for i in ids)
        raise StemmaError(
            f"manifest id prefix {hexpart!r} is ambiguous for model {name!r}:"
            f" it matches {shown}; give more digits"
        )
    if ids:
        return next(v.commit for v in versions if v.id == ids[0])
    work = reg.model_manifest(name) if reg.has_model(name) else None
    if work is not None and work.id.startswith(prefix):
        return ""
    if explicit:
        raise StemmaError(f"no version of model {name!r} has a manifest id starting with {prefix}")
    return None


def _target(reg: Registry, name: str, ref: str | None) -> tuple[str, dict[str, Any]]:
    """The commit to tag and the tag message; refuses a commit without a valid manifest."""
    check_name(name, "model name")
    label = ref or "HEAD"
    commit = locate(reg, name, label)
    if commit is None:
        raise StemmaError(f"{name}@{label} exists only in the working tree: commit it first")
    manifest = manifest_at(reg, name, commit, label=f"{label} ({commit[:12]})")
    if manifest.computed_id != manifest.id:
        raise ConsistencyError(
            f"{manifest.path} at {label}: recorded id {manifest.id} does not"
            " match its content; rebuild the model before tagging"
        )
    return commit, {"id": manifest.id, "source": manifest.source_id}


def _gto_name(what: str, value: str) -> None:
    if not _GTO_NAME_RE.match(value):
        raise InvalidName(
            f"{what} {value!r} cannot be tagged: GTO tag names allow letters,"
            " digits, '-' and '_', starting and ending with a letter or digit"
        )


def _create(reg: Registry, name: str, tag: str, commit: str, message: dict[str, Any]) -> TagInfo:
    git(git_paths(reg).top, "tag", "-a", "-m", json.dumps(message, sort_keys=True), tag, commit)
    return next(t for t in list_tags(reg, name) if t.tag == tag)


def tag(reg: Registry, name: str, version: str, ref: str | None = None) -> TagInfo:
    """Register `version` of model `name` at REF (default HEAD) as the tag `NAME@VERSION`."""
    tag_name = version_tag(name, version)
    _gto_name("model name", name)
    if not _GTO_SEMVER_RE.match(version):
        raise InvalidName(f"invalid version {version!r}: expected semantic version like v1.2.0")
    existing = list_tags(reg, name)
    if any(t.tag == tag_name for t in existing) or _commit_of(
        git_paths(reg), f"refs/tags/{tag_name}"
    ):
        raise StemmaError(
            f"tag {tag_name} already exists: versions are immutable, choose a new version"
        )
    commit, message = _target(reg, name, ref)
    for t in existing:
        if t.version and (t.commit == commit or (t.id is not None and t.id == message["id"])):
            raise StemmaError(
                f"{name}@{t.version} already names this version"
                f" ({message['id'][:19]}); one version, one tag"
            )
    return _create(reg, name, tag_name, commit, message)


def promote(reg: Registry, name: str, stage: str, ref: str | None = None) -> TagInfo:
    """Assign `stage` to model `name` at REF (default HEAD) with the tag `NAME#STAGE#N`."""
    stage_tag(name, stage, 1)  # validates the name and the stage
    _gto_name("model name", name)
    _gto_name("stage", stage)
    commit, message = _target(reg, name, ref)
    now = current_stages(reg, name).get(stage)
    if now is not None and (now.commit == commit or now.id == message["id"]):
        raise StemmaError(f"{name} {message['id'][:19]} is already in stage {stage!r} ({now.tag})")
    return _create(reg, name, stage_tag(name, stage, next_number(reg, name)), commit, message)
