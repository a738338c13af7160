"""Optional third-party libraries that one export needs, imported when that export runs.

`pip install stemma-ml` stays light: the OpenLineage and MLflow exports and the model families
import their library only when called, and a missing one is one line naming the extra that
installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from stemma.registry.errors import StemmaError


class MissingExtra(StemmaError):
    """An optional library that an export needs is not installed."""


def require(module: str, extra: str, error: type[StemmaError] = MissingExtra) -> ModuleType:
    """Import `module`, or raise `error` (one line) naming the stemma extra that installs it.

    The one rule for optional libraries: exports raise `MissingExtra`, builds `BuildError`.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise error(
            f"the {top} package is not installed; install it with pip install 'stemma-ml[{extra}]'"
        ) from None
