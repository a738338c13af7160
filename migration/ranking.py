"""Typed records of an exploration's ranking: its rows, its skips, its sample and text budget.

`explore.py` (array datasets) and `explore_lm.py` (text datasets) build them; `to_dict()` gives
the JSON of `stemma explore --json` and of exploration.json, `from_dict()` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class CandidateRow:
    """One ranked candidate: its scores, the wall times they took, and its rank (1 first).

    `tokens` is set for a text dataset (tokens its tokenizer made of the scored text); a
    two-stage decision's rescored rows hold the whole split's scores, with the sample's under
    `sample_scores`, and `rescored` true.
    """

    model: str
    id: str
    scores: Mapping[str, float | None]
    seconds: Mapping[str, float]
    extract_seconds: float
    rank: int = 0  # 0 until the rows are ordered
    tokens: int | None = None
    sample_scores: Mapping[str, float | None] | None = None
    rescored: bool = False

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """The row as JSON-ready data; without `timings`, no wall times."""
        doc: dict[str, Any] = {"model": self.model, "id": self.id, "scores": dict(self.scores)}
        if self.tokens is not None:
            doc["tokens"] = self.tokens
        if timings:
            doc["seconds"] = dict(self.seconds)
            doc["extract_seconds"] = self.extract_seconds
        if self.sample_scores is not None:
            doc["sample_scores"] = dict(self.sample_scores)
        if self.rescored:  # absent otherwise: rows of one-stage rankings stay as they were
            doc["rescored"] = True
        doc["rank"] = self.rank
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CandidateRow:
        """The row of a ranking document; one written without timings reads as zero times."""
        sample_scores = doc.get("sample_scores")
        return cls(
            model=doc["model"],
            id=doc["id"],
            scores=dict(doc["scores"]),
            seconds=dict(doc.get("seconds", {})),
            extract_seconds=doc.get("extract_seconds", 0.0),
            rank=doc["rank"],
            tokens=doc.get("tokens"),
            sample_scores=None if sample_scores is None else dict(sample_scores),
            rescored=doc.get("rescored", False),
        )


@dataclass(frozen=True)
class Skipped:
    """A candidate left out of the ranking, and why."""

    model: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The skip as JSON-ready data."""
        return {"model": self.model, "reason": self.reason}

    @classmethod
    def from_dict(cls, doc: Mapping[str, str]) -> Skipped:
        """The skip of a ranking document."""
        return cls(model=doc["model"], reason=doc["reason"])


@dataclass(frozen=True)
class Sample:
    """The training rows every candidate was scored on, when a sample bounded them.

    `rescored`: how many of the best on the sample a two-stage decision scored again on the
    whole split (None: no second stage).
    """

    rows: int
    of: int
    seed: int
    stratified: bool
    rescored: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The sample as JSON-ready data."""
        doc: dict[str, Any] = {
            "rows": self.rows,
            "of": self.of,
            "seed": self.seed,
            "stratified": self.stratified,
        }
        if self.rescored is not None:  # absent otherwise: sampled documents stay as they were
            doc["rescored"] = self.rescored
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Sample:
        """The sample of a ranking document."""
        return cls(
            rows=doc["rows"],
            of=doc["of"],
            seed=doc["seed"],
            stratified=doc["stratified"],
            rescored=doc.get("rescored"),
        )


@dataclass(frozen=True)
class TextBudget:
    """The bound on the text a text ranking scored: its caps, and the text it scored."""

    max_bytes: int
    max_tokens: int
    bytes: int
    records: int

    def to_dict(self) -> dict[str, int]:
        """The budget as JSON-ready data."""
        return {
            "max_bytes": self.max_bytes,
            "max_tokens": self.max_tokens,
            "bytes": self.bytes,
            "records": self.records,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, int]) -> TextBudget:
        """The budget of a ranking document."""
        return cls(
            max_bytes=doc["max_bytes"],
            max_tokens=doc["max_tokens"],
            bytes=doc["bytes"],
            records=doc["records"],
        )


def ranked(rows: list[CandidateRow]) -> tuple[CandidateRow, ...]:
    """The rows, in their order, numbered from rank 1."""
    return tuple(replace(row, rank=rank) for rank, row in enumerate(rows, start=1))
