"""One invalidation key for every derived fact: the code of the installed registry package.

A derived fact (folder facts, schema-valid digests, a pipeline render) depends on the code
that computed it and on the schemas. The key hashes every module of `stemma.registry`, the
schemas and the version, found by walking the installed package itself, so no list of source
files can fall behind the code.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

from stemma.registry import __version__

_PACKAGE = Path(__file__).resolve().parent.parent


@functools.cache
def code_key() -> str:
    """The hex digest of every `.py` file under the registry package and every schema."""
    digest = hashlib.sha256(__version__.encode() + b"\0")
    for path in sorted(_PACKAGE.rglob("*.py")):
        name = path.relative_to(_PACKAGE).as_posix()
        try:
            code = path.read_bytes()
        except OSError:  # installed without its sources: the version stands for the code
            code = b""
        digest.update(name.encode() + b"\0" + hashlib.sha256(code).digest())
    for entry in sorted(resources.files("stemma.schemas").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            digest.update(entry.name.encode() + b"\0" + hashlib.sha256(entry.read_bytes()).digest())
    return digest.hexdigest()
