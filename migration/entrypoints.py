"""Importing user code named by a spec: only `module:function` refs trusted in stemma.yaml."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
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
