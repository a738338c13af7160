"""Importing user code named by a spec: only `module:function` refs trusted in stemma.yaml.

Modules import relative to the registry root (the folder of stemma.yaml), which the builds
put on `sys.path`: a spec's `mycode.nets:build` is the file `mycode/nets.py` there, and that
file is a DVC dependency of every stage that runs it (registry/pipeline.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stemma.registry.errors import BuildError


def import_entrypoint(ref: str, trusted: Sequence[str], where: str) -> Any:
    """Import `module:function`, only when `ref` is listed as trusted."""
    if ref not in trusted:
        raise BuildError(
            f"{where}: entrypoint {ref!r} is not listed under entrypoints in"
            " stemma.yaml; add it there to trust it"
        )
    module, _, func = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise BuildError(f"{where}: cannot import entrypoint {ref!r}: {exc}") from None


def importable(root: Path) -> None:
    """Put the registry root first on `sys.path` (once), so its entrypoints import."""
    path = str(Path(root).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
