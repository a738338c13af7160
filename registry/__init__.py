"""The registry library: records, files, consistency checks, history and queries.

Importing it never imports torch or dvc, so read-only commands stay fast. The records and
the `Registry` class load on first use: `stemma --version` and the CLI's error funnel need
only the version and `StemmaError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import StemmaError

if TYPE_CHECKING:
    from .records.core import DatasetSpec, Manifest, ModelSpec, Settings, SourceRef
    from .store.handle import Registry

__all__ = [
    "DatasetSpec",
    "Manifest",
    "ModelSpec",
    "Registry",
    "Settings",
    "SourceRef",
    "StemmaError",
]

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_LAZY = {
    "DatasetSpec": "records.core",
    "Manifest": "records.core",
    "ModelSpec": "records.core",
    "Settings": "records.core",
    "SourceRef": "records.core",
    "Registry": "store.handle",
}


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
