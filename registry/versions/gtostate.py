"""What a model's GTO tags say now: active versions, deregistered ones, stages, deprecation.

GTO reads its tags as events in time order, the newest deciding: a version is registered while
its newest register/deregister tag is a registration, a stage holds the version of its newest
assignment that was not undone, and a model is deprecated while its newest tag of any kind is
`NAME@deprecated`. stemma reads them the same way, so `gto show` and stemma agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from stemma.registry.rules.naming import ASSIGN, DEPRECATE, DEREGISTER, REGISTER, UNASSIGN

if TYPE_CHECKING:
    from stemma.registry.versions.tags import TagInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TagState:
    """The registry state of one model, read from its tags."""

    versions: dict[str, TagInfo] = field(default_factory=dict)  # active version -> its tag
    deregistered: dict[str, TagInfo] = field(default_factory=dict)  # version -> undoing tag
    stages: dict[str, TagInfo] = field(default_factory=dict)  # stage -> assignment in force
    deprecated: TagInfo | None = None  # the deprecation in force, if any

    def hidden_commits(self) -> set[str]:
        """Commits whose only versions were deregistered: GTO serves nothing from them."""
        active = {t.commit for t in self.versions.values()}
        return {t.commit for t in self.deregistered.values()} - active


def _when(info: TagInfo) -> datetime:
    try:
        moment = datetime.fromisoformat(info.date)
    except ValueError:
        return _EPOCH
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def in_time_order(infos: Iterable[TagInfo]) -> list[TagInfo]:
    """Oldest first; GTO's counter breaks ties within a second (a simple tag counts as 0)."""
    return sorted(infos, key=lambda t: (_when(t), t.number or 0, t.tag))


def tag_state(infos: Iterable[TagInfo]) -> TagState:
    """The state that one model's tags (any order, any GTO action) describe."""
    ordered = in_time_order(infos)
    newest_by_version: dict[str, TagInfo] = {}
    for t in ordered:
        if t.action in (REGISTER, DEREGISTER) and t.version is not None:
            newest_by_version[t.version] = t
    versions = {v: t for v, t in newest_by_version.items() if t.action == REGISTER}
    deregistered = {v: t for v, t in newest_by_version.items() if t.action == DEREGISTER}
    state = TagState(versions, deregistered)
    hidden = state.hidden_commits()
    in_stage: dict[str, dict[str, TagInfo]] = {}
    for t in ordered:
        if t.action not in (ASSIGN, UNASSIGN) or t.stage is None or t.commit in hidden:
            continue
        held = in_stage.setdefault(t.stage, {})
        held.pop(t.commit, None)
        if t.action == ASSIGN:
            held[t.commit] = t  # re-inserted last: the most recent assignment wins
    stages = {s: list(held.values())[-1] for s, held in sorted(in_stage.items()) if held}
    newest = ordered[-1] if ordered else None
    deprecated = newest if newest is not None and newest.action == DEPRECATE else None
    return TagState(versions, deregistered, stages, deprecated)
