"""What `validate` refuses, a build refuses: the one check a build runs before it starts."""

from __future__ import annotations

from stemma.registry.check.consistency import check
from stemma.registry.check.violations import DECLARED
from stemma.registry.errors import BuildError
from stemma.registry.store.handle import Registry


def check_buildable(reg: Registry, kind: str, name: str) -> None:
    """Raise `BuildError` with the first violation `validate` reports for the model or
    dataset `name` (kind "model" or "dataset") that a build cannot go past."""
    subject = f"{kind}:{name}"
    for violation in check(reg):
        # the others (a stale or failed manifest) are what a build is for
        if violation.subject == subject and violation.code in DECLARED:
            raise BuildError(str(violation))
