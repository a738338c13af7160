"""What `validate` refuses, a build refuses: the one check a build runs before it starts."""

from __future__ import annotations

from stemma.registry.check.consistency import (
    CYCLE,
    DANGLING_DATASET,
    DANGLING_SOURCE,
    INVALID_NAME,
    PATH_ESCAPE,
    SCHEMA,
    UNTRUSTED_ENTRYPOINT,
    check,
)
from stemma.registry.errors import BuildError
from stemma.registry.store.handle import Registry

# Violations that make a spec unbuildable. The others (a stale or failed manifest) are what
# a build is for.
BLOCKING = frozenset(
    {
        SCHEMA,
        INVALID_NAME,
        DANGLING_SOURCE,
        DANGLING_DATASET,
        CYCLE,
        PATH_ESCAPE,
        UNTRUSTED_ENTRYPOINT,
    }
)


def check_buildable(reg: Registry, kind: str, name: str) -> None:
    """Raise `BuildError` with the first violation `validate` reports for the model or
    dataset `name` (kind "model" or "dataset") that a build cannot go past."""
    subject = f"{kind}:{name}"
    for violation in check(reg):
        if violation.subject == subject and violation.code in BLOCKING:
            raise BuildError(str(violation))
