"""Releases and stages as annotated git tags in GTO's grammar, and `NAME@REF` to a commit.

`NAME@v1.2.0` registers a version and `NAME#prod#N` assigns a stage, exactly as GTO writes
them, so `gto show` and `dvc artifacts get` read the same registry; GTO's other tags
(deregistration, deprecation, undoing a stage, simple tags without a counter) are read as GTO
reads them (`gtostate`). Each tag's message is JSON,
`{"id": ..., "source": ...}`: the manifest id the tag names, checkable without the commit.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any

from stemma.registry.errors import (
    ConsistencyError,
    GitError,
    InvalidName,
    StemmaError,
    StemmaWarning,
)
from stemma.registry.records.core import Manifest
from stemma.registry.rules import status
from stemma.registry.rules.naming import (
    ASSIGN,
    REGISTER,
    SEMVER_RE,
    TAG_RE,
    check_name,
    check_stage,
    parse_tag,
    stage_tag,
    version_tag,
)
from stemma.registry.rules.parents import parents_of
from stemma.registry.store.handle import Registry
from stemma.registry.store.tree import git
from stemma.registry.versions.gtostate import TagState, tag_state
from stemma.registry.versions.history import GitPaths, git_paths, history, manifest_at

_ID_RE = re.compile(r"^(?P<scheme>sha256:)?(?P<hex>[0-9a-f]+)$")
_FULL_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
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
    """One GTO tag of a model: any of GTO's actions (`NAME@v1.2.0`, `NAME#prod#3`, ...)."""

    tag: str
    name: str
    action: str  # naming.REGISTER, DEREGISTER, ASSIGN, UNASSIGN, DEPRECATE or CREATE
    version: str | None
    stage: str | None
    number: int | None
    commit: str
    id: str | None  # the manifest id from the tag message (None for a tag without one)
    source: str | None
    date: str  # ISO 8601 tagger date

    @property
    def kind(self) -> str:
        """ "version" (a registration), "stage" (an assignment), or GTO's other action."""
        return {REGISTER: "version", ASSIGN: "stage"}.get(self.action, self.action)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with stable keys."""
        return {
            "tag": self.tag,
            "kind": self.kind,
            "action": self.action,
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


# A tag message stemma writes is under 200 bytes; GTO's are a line of text.
MAX_MESSAGE_BYTES = 64 << 10


class TagWarning(StemmaWarning):
    """A tag that was skipped: its message cannot be read (see `SkippedTag`)."""


@dataclass(frozen=True)
class SkippedTag:
    """A GTO tag left out of the registry's state, and why."""

    tag: str
    reason: str

    @property
    def message(self) -> str:
        """One line naming the tag: what the CLI prints as a warning."""
        return f"tag {self.tag} skipped: its message {self.reason}"


@dataclass(frozen=True)
class TagScan:
    """Every GTO tag that could be read, and those that were skipped."""

    infos: list[TagInfo]
    skipped: list[SkippedTag]


class _BadMessage(ValueError):
    """A tag message no reader should take: too large, or nested too deeply."""


def _message(text: str) -> tuple[str | None, str | None]:
    """(id, source) from a tag message; (None, None) when it is not stemma's JSON (GTO's own
    messages are text). A message too large or too deep to parse raises `_BadMessage`."""
    size = len(text.encode(errors="replace"))
    if size > MAX_MESSAGE_BYTES:
        raise _BadMessage(f"is {size} bytes, more than the {MAX_MESSAGE_BYTES} allowed")
    try:
        doc = json.loads(text)
    except RecursionError:  # the parser's own stack: JSON nested thousands deep
        raise _BadMessage("is JSON nested too deeply") from None
    except ValueError:  # not JSON, or a number of more than 4300 digits
        return None, None
    if not isinstance(doc, dict):
        return None, None
    ident, source = doc.get("id"), doc.get("source")
    return (_an_id(ident), _an_id(source))


def _an_id(value: Any) -> str | None:
    """`value` when it is a manifest id (what stemma writes), else None."""
    return value if isinstance(value, str) and _FULL_ID_RE.fullmatch(value) else None


def _semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("-")[0].split("+")[0])[:3])


def _infos(raws: list[_RawTag], name: str | None) -> TagScan:
    infos = []
    skipped = []
    for raw in raws:
        parsed = parse_tag(raw.tag)
        if parsed is None or (name is not None and parsed.name != name):
            continue
        try:
            ident, source = _message(raw.message)
        except _BadMessage as exc:
            skipped.append(SkippedTag(raw.tag, str(exc)))
            continue
        infos.append(
            TagInfo(
                raw.tag,
                parsed.name,
                parsed.action,
                parsed.version,
                parsed.stage,
                parsed.number,
                raw.commit,
                ident,
                source,
                raw.date,
            )
        )
    ordered = sorted(
        infos,
        key=lambda t: (
            t.name,
            t.action != REGISTER,
            _semver_key(t.version) if t.version else (),
            t.number or 0,
            t.tag,
        ),
    )
    return TagScan(ordered, sorted(skipped, key=lambda s: s.tag))


def read_tags(reg: Registry, name: str | None = None) -> TagScan:
    """Every GTO tag (of one model, or all) as `list_tags` orders them, and the tags skipped
    because their message cannot be read."""
    return _infos(_raw_tags(git_paths(reg)), name)


def list_tags(reg: Registry, name: str | None = None) -> list[TagInfo]:
    """Every GTO tag (of one model, or all): by name, registrations by semver, then the rest.
    A tag whose message cannot be read is left out with a `TagWarning` naming it: one bad tag
    must not stop every history command of the registry."""
    scan = read_tags(reg, name)
    for bad in scan.skipped:
        warnings.warn(TagWarning(bad.message), stacklevel=2)
    return scan.infos


def state(reg: Registry, name: str) -> TagState:
    """What the model's tags say now: active and deregistered versions, stages, deprecation."""
    return tag_state(list_tags(reg, name))


def deprecated_models(reg: Registry) -> dict[str, TagInfo]:
    """Model name -> the deprecation in force, for every deprecated model (one git call)."""
    infos = list_tags(reg)
    names = {t.name for t in infos if t.action == "deprecate"}
    found = {}
    for name in sorted(names):
        now = tag_state(t for t in infos if t.name == name).deprecated
        if now is not None:
            found[name] = now
    return found


def current_stages(reg: Registry, name: str) -> dict[str, TagInfo]:
    """Stage -> the assignment now in force (newest first, minus GTO's undo and deregistered
    versions)."""
    return state(reg, name).stages


def next_number(reg: Registry, name: str) -> int:
    """1 + the highest counter among the model's tags, as GTO numbers them (all stages)."""
    names = git(git_paths(reg).top, "tag", "--list").decode(errors="replace").splitlines()
    counters = [
        int(m["n"]) for t in names if (m := TAG_RE.match(t)) and m["name"] == name and m["n"]
    ]
    return 1 + max(counters, default=0)


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
    now = state(reg, name)
    tag_ref = SEMVER_RE.match(ref) is not None or ref in now.stages
    if now.deprecated is not None and tag_ref:
        raise StemmaError(
            f"model {name!r} is deprecated (tag {now.deprecated.tag}): GTO serves none of its"
            f" versions or stages; name a manifest id or git revision to read {name}@{ref}"
        )
    if SEMVER_RE.match(ref):
        if ref in now.deregistered:
            raise StemmaError(
                f"version {ref} of model {name!r} was deregistered"
                f" (tag {now.deregistered[ref].tag}); versions: {', '.join(now.versions) or 'none'}"
            )
        commit = _commit_of(paths, f"refs/tags/{version_tag(name, ref)}")
        if commit is None:
            raise StemmaError(
                f"model {name!r} has no version {ref} (tag {name}@{ref});"
                f" versions: {', '.join(now.versions) or 'none'}"
            )
        return commit
    if ref in now.stages:
        return now.stages[ref].commit
    if any(t.stage == ref for t in list_tags(reg, name)):
        raise StemmaError(
            f"stage {ref!r} of model {name!r} is empty: every assignment was undone"
            " or its version deregistered"
        )
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
    stale = _stale_at(reg, name, commit, manifest)
    if stale:
        raise ConsistencyError(
            f"{manifest.path} at {label}: {stale} since the last build; rebuild the model"
            " (`dvc repro`) and commit before tagging"
        )
    return commit, {"id": manifest.id, "source": manifest.source_id}


def _stale_at(reg: Registry, name: str, commit: str, manifest: Manifest) -> str:
    """Why the manifest at `commit` is stale there ("" when it is not), by the status rule
    (`status.gather`) on the spec and the parents' manifests of that same commit. Its data
    case is left out, as tagging has always left it: a version whose dataset was rebuilt
    since can still be tagged (`ls` calls it stale)."""
    at = Registry.at_revision(reg.repo_root, commit)
    try:
        spec = at.model_spec(name)
    except StemmaError:
        return ""  # no readable spec at that commit: nothing to compare with
    if spec.registered:
        return ""  # registered weights: nothing to build, never stale
    named = parents_of(spec)
    built = replace(manifest.status_record, datasets=())
    why = status.gather(spec.digest, built, named, lambda p: _model_id_at(at, p)).staleness()
    if why == status.SPEC_CHANGED:
        return "the spec changed"
    if why == status.SOURCE_CHANGED:  # a merge compares all its parents, as one id
        return f"the source {named[0]!r} changed" if len(named) == 1 else "a parent changed"
    return ""


def _model_id_at(at: Registry, name: str) -> str | None:
    """The manifest id of model `name` in `at`; None when it has none or it cannot be read
    (not judged, as `ls` does not judge it)."""
    try:
        found = at.model_manifest(name) if at.has_model(name) else None
    except StemmaError:
        return None
    return found.id if found is not None else None


def _create(reg: Registry, name: str, tag: str, commit: str, message: dict[str, Any]) -> TagInfo:
    git(git_paths(reg).top, "tag", "-a", "-m", json.dumps(message, sort_keys=True), tag, commit)
    return next(t for t in list_tags(reg, name) if t.tag == tag)


def tag(reg: Registry, name: str, version: str, ref: str | None = None) -> TagInfo:
    """Register `version` of model `name` at REF (default HEAD) as the tag `NAME@VERSION`."""
    tag_name = version_tag(name, version)
    existing = list_tags(reg, name)
    if any(t.tag == tag_name for t in existing) or _commit_of(
        git_paths(reg), f"refs/tags/{tag_name}"
    ):
        raise StemmaError(
            f"tag {tag_name} already exists: versions are immutable, choose a new version"
        )
    commit, message = _target(reg, name, ref)
    for t in tag_state(existing).versions.values():
        if t.commit == commit or (t.id is not None and t.id == message["id"]):
            raise StemmaError(
                f"{name}@{t.version} already names this version"
                f" ({message['id'][:19]}); one version, one tag"
            )
    return _create(reg, name, tag_name, commit, message)


def promote(reg: Registry, name: str, stage: str, ref: str | None = None) -> TagInfo:
    """Assign `stage` to model `name` at REF (default HEAD) with the tag `NAME#STAGE#N`."""
    check_name(name, "model name")
    check_stage(stage)
    commit, message = _target(reg, name, ref)
    now = current_stages(reg, name).get(stage)
    if now is not None and (now.commit == commit or now.id == message["id"]):
        raise StemmaError(f"{name} {message['id'][:19]} is already in stage {stage!r} ({now.tag})")
    return _create(reg, name, stage_tag(name, stage, next_number(reg, name)), commit, message)
