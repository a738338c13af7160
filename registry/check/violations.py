"""A problem the consistency check finds: its stable code, the file, the JSON pointer and line
where it is, and the model or dataset it belongs to."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from stemma.registry.errors import LocatedError, StemmaError

# Stable violation codes; tools and the audit key on these strings.
SCHEMA = "schema"
INVALID_NAME = "invalid-name"
DANGLING_SOURCE = "dangling-source"
DANGLING_DATASET = "dangling-dataset"
CYCLE = "cycle"
PATH_ESCAPE = "path-escape"
UNTRUSTED_ENTRYPOINT = "untrusted-entrypoint"
STALE_MANIFEST = "stale-manifest"
ID_MISMATCH = "id-mismatch"
FAILED_GATE = "failed-gate"
FAILED_CHECK = "failed-check"
METRICS_MISMATCH = "metrics-mismatch"

# What is declared wrongly (a spec, a name, a reference, a path, trust): a build cannot go
# past it (`gate`).
DECLARED = (
    SCHEMA,
    INVALID_NAME,
    DANGLING_SOURCE,
    DANGLING_DATASET,
    CYCLE,
    PATH_ESCAPE,
    UNTRUSTED_ENTRYPOINT,
)
# What a build left behind: a build is what they call for.
BUILT = (STALE_MANIFEST, ID_MISMATCH, FAILED_GATE, FAILED_CHECK, METRICS_MISMATCH)
CODES = (*DECLARED, *BUILT)
# Violations that judge a build's outcome, not a file's content: a registry that has only
# these is well-formed, and its documents may be remembered as passing their schemas.
OUTCOMES = frozenset({STALE_MANIFEST, FAILED_GATE, FAILED_CHECK})


@dataclass(frozen=True)
class Violation:
    """One problem found in the registry."""

    code: str
    path: str
    message: str
    pointer: str = ""
    line: int | None = None
    subject: str = ""  # "model:NAME" or "dataset:NAME"

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line is not None else "")
        if self.pointer:
            where += f" at {self.pointer}"
        return f"{where}: {self.message} [{self.code}]"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def from_error(exc: StemmaError, subject: str, fallback: str) -> Violation:
    if isinstance(exc, LocatedError):
        return Violation(
            exc.code if exc.code in CODES else SCHEMA,
            exc.path,
            exc.reason,
            exc.pointer,
            exc.line,
            subject,
        )
    return Violation(getattr(exc, "code", SCHEMA), fallback, exc.message, subject=subject)


def violation_list(v: Violation | None) -> list[Any] | None:
    """A violation as a JSON list of its six fields (None for none)."""
    return None if v is None else [v.code, v.path, v.message, v.pointer, v.line, v.subject]


def violation_of(doc: list[Any] | None) -> Violation | None:
    """Read back `violation_list`."""
    return None if doc is None else Violation(*doc)
