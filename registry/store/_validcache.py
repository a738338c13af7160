"""Documents known to match their schema: checked once, then trusted while they are unchanged.

Validating a document with jsonschema costs about a millisecond, most of `stemma validate`
on a large registry. While `remembering(reg)` runs (the consistency checks, so `validate`
and `audit`), each document that passes its schema is recorded by a digest of the schema and
of the document's canonical JSON, and the next run skips the schema for the documents it
finds recorded. Only passing documents are recorded: a failing one is validated, and
reported with the same message, every time. The digests are the store's fact `valid`
(`derived`): a cache, ignored by git; a lost or damaged fact only costs validating again. It
is written only by a run that found no bad input, so a check of a bad file changes no file.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stemma import schemas
from stemma.registry.store import derived as _store

FACT = "valid"
MAGIC = b"stemma-valid/1\n"
KEY_BYTES = 16
# Ten versions of every spec and manifest of 10,000 models (3.2 MB).
MAX_KEYS = 200_000


class _Known:
    """The digests read from the file, and those passed or added in this run."""

    def __init__(self, repo_root: Path) -> None:
        self.repo_root = repo_root
        self.stored: set[bytes] = set()
        # A fact from this code holds at most MAX_KEYS and one run's documents.
        data = _store.load(repo_root, FACT, len(MAGIC) + 2 * MAX_KEYS * KEY_BYTES) or b""
        if data.startswith(MAGIC) and (len(data) - len(MAGIC)) % KEY_BYTES == 0:
            body = memoryview(data)[len(MAGIC) :]
            self.stored = {bytes(body[i : i + KEY_BYTES]) for i in range(0, len(body), KEY_BYTES)}
        self.used: set[bytes] = set()
        self.schemas: dict[str, bytes] = {}
        self.keep = True

    def key(self, schema: str, doc: Any) -> bytes | None:
        if schema not in self.schemas:
            text = json.dumps(schemas.validator(schema).schema, sort_keys=True)
            self.schemas[schema] = hashlib.sha256(text.encode()).digest()
        try:
            blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError):
            return None  # not plain data: never trusted
        return hashlib.sha256(self.schemas[schema] + blob.encode()).digest()[:KEY_BYTES]

    def save(self) -> None:
        """Keep what was stored and what this run added: a run need not see every document
        (a check takes unchanged model folders from `_checkcache` without validating them,
        and the pipeline still needs their specs), so nothing is dropped until the file holds
        MAX_KEYS; then it keeps this run's documents only."""
        keep = self.stored | self.used
        if len(keep) > MAX_KEYS:
            keep = self.used
        if keep == self.stored:
            return
        # Where it cannot be written (a read-only checkout): validate again next time.
        _store.save(self.repo_root, FACT, MAGIC + b"".join(sorted(keep)))


# The cache of the check running in this context (a `remembering` block), if any: a context
# variable, so another thread (a query's, a server's) never sees or fills it.
_ACTIVE: contextvars.ContextVar[_Known | None] = contextvars.ContextVar(
    "stemma_valid", default=None
)


@contextlib.contextmanager
def remembering(repo_root: Path) -> Iterator[None]:
    """Skip the schema for documents that passed it before, and record those that pass now,
    in the cache of the repository at `repo_root` (a nested use for the same repository
    shares the outer one; one for another repository has its own)."""
    outer = _ACTIVE.get()
    if outer is not None and outer.repo_root == repo_root:
        yield
        return
    known = _Known(repo_root)
    token = _ACTIVE.set(known)
    try:
        yield
        if known.keep:
            known.save()
    finally:
        _ACTIVE.reset(token)


def discard() -> None:
    """Write nothing at the end of this run: a check that finds bad input leaves every file
    as it was, this cache included."""
    active = _ACTIVE.get()
    if active is not None:
        active.keep = False


def known(schema: str, doc: Any) -> bytes | bool | None:
    """True when `doc` passed `schema` before; otherwise the key to `record` it under once it
    passes (None: nothing is remembered now)."""
    active = _ACTIVE.get()
    if active is None:
        return None
    key = active.key(schema, doc)
    if key is not None and key in active.stored:
        active.used.add(key)
        return True
    return key


def record(key: bytes | bool | None) -> None:
    """Remember the document of `key` (from `known`) as passing its schema."""
    active = _ACTIVE.get()
    if active is not None and isinstance(key, bytes):
        active.used.add(key)
