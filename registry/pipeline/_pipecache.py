"""What `stemma pipeline` last rendered, kept by the content of its inputs: a check of an
unchanged registry compares files with hashes instead of rendering 10,000 stages again.

The render reads the specs (and the manifests of models that have no spec), the root
dvc.yaml's own stages, and whether entrypoint code files exist; nothing else. The query
index already holds a digest of every spec and the id of every manifest, refreshed from the
files' sizes and mtimes, so one query gives a fingerprint of all the inputs but the last
two. The cache (the store's fact `pipeline`, ignored by git like the index) keeps, for the last
fingerprint: the code files probed and whether they existed, and the sha256 of every file
rendered. A check can trust it when the fingerprint and the probes match and the root
dvc.yaml on disk is the one rendered (so its own stages are those the render kept); any
other case renders again. Writing YAML is most of a render, so the cache also keeps a digest
of each file's document: a render after a change writes out only the documents that differ
from last time's (one changed spec: a handful of files instead of 10,000). A lost or damaged
cache only costs a full render.

The cache also keeps each input's digest and, per model, the facts other files' renders read
of it (`pipeline.model_facts`): after an edit of a few model specs, `_pipedelta` renders only
the files those can change, and takes every other file's hashes from here. It keeps the root
dvc.yaml's own stages too, by the hash of the text they were parsed from: at 10,000 models
the file is 2 MB, mostly artifacts, and a check after an edit need not parse it again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from stemma.registry.pipeline.render import FOREIGN_MEMO, current, foreign_key, foreign_stages
from stemma.registry.rules.layout import SETTINGS_FILE
from stemma.registry.store import derived as _store
from stemma.registry.store.codekey import code_key
from stemma.registry.store.handle import Registry
from stemma.registry.store.index import open_index

FACT = "pipeline"
FORMAT = 4
# The registry handle's read-cache key of the cached render's bytes, read with `inputs`.
_BODY = ("pipecache", "body")


def sha(text: str) -> str:
    """The hash a cached file is compared by."""
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(reg: Registry) -> str:
    """A digest of every input of the render that the index knows (see the module doc)."""
    h = hashlib.sha256(f"{FORMAT}\0{reg.rel_root}\0{code_key()}\0".encode())
    for path, digest in inputs(reg, render=True).items():
        h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()


def base(reg: Registry) -> str:
    """A digest of what every file's render reads besides the specs: the code, the
    registry's place in the repository and its settings."""
    settings = reg.tree.read_text(reg.rel(SETTINGS_FILE)) or ""
    return sha(f"{FORMAT}\0{reg.rel_root}\0{code_key()}\0{settings}")


def foreign(reg: Registry) -> str:
    """A digest of the root dvc.yaml's stages that stemma did not write (an input)."""
    return doc_digest(foreign_stages(reg))


def _foreign_memo(reg: Registry) -> dict[str, Any]:
    """The root dvc.yaml's foreign stages with the hash of its text, for the next command to
    take instead of parsing the file again (`_take_memo`): plain JSON values with text keys,
    as the YAML reader gives them, so they come back from the cache as they are."""
    return {"sha": foreign_key(current(reg) or "")[1], "stages": foreign_stages(reg)}


def _take_memo(reg: Registry, doc: dict[str, Any]) -> None:
    """Put the foreign stages a cached render kept (`_foreign_memo`) in the registry's read
    cache, when the same code parsed them and they are those whose digest it kept: a root
    dvc.yaml with the same text hash has them (parsing it is ~30 ms at 10,000 models)."""
    memo = doc.get("root")
    if doc.get("code") != code_key() or not isinstance(memo, dict):
        return
    sha, stages = memo.get("sha"), memo.get("stages")
    if (
        isinstance(sha, str)
        and isinstance(stages, dict)
        and doc_digest(stages) == doc.get("foreign")
    ):
        reg._cache.setdefault((FOREIGN_MEMO, sha), stages)


def inputs(reg: Registry, render: bool = False) -> dict[str, str]:
    """Each spec's digest, and the id of each manifest of a model or dataset without a spec,
    by path, from the index (kept for the registry handle's life: one command). With
    `render`, the last render is read in the same open of the store, for the next `load` to
    take (one attach less for a check; an audit, which holds far more, does not: at 30,000
    models its peak was ~8 MiB higher with the 15 MB render read while the index was open)."""
    memo = ("pipecache", "inputs")
    if memo in reg._cache:
        kept: dict[str, str] = reg._cache[memo]
        return kept
    with open_index(reg) as index:
        rows = index.con.execute(
            "SELECT path, digest FROM raw.model_specs"
            " UNION ALL SELECT path, digest FROM raw.dataset_specs"
            " UNION ALL SELECT path, coalesce(id, '') FROM raw.model_manifests"
            "  WHERE name NOT IN (SELECT name FROM raw.model_specs)"
            " UNION ALL SELECT path, coalesce(id, '') FROM raw.dataset_manifests"
            "  WHERE name NOT IN (SELECT name FROM raw.dataset_specs)"
            " ORDER BY 1"
        ).fetchall()
        found = {str(path): str(digest) for path, digest in rows}
        if render:
            reg._cache[_BODY] = _store.load(reg.repo_root, FACT)
    reg._cache[memo] = found
    return found


def doc_digest(doc: Any) -> str:
    """A digest of one file's document, key order included (the text keeps it)."""
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


def load(reg: Registry) -> dict[str, Any] | None:
    """The cached render, or None (also for a damaged one)."""
    # read with the inputs, when they were (and taken once)
    body = reg._cache.pop(_BODY) if _BODY in reg._cache else _store.load(reg.repo_root, FACT)
    try:
        doc = json.loads(body or b"null")
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    _take_memo(reg, doc)
    return doc


def known_hashes(cached: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """path -> (document digest, text hash) of the last render, when the same code wrote it."""
    if cached is None or cached.get("code") != code_key():
        return {}
    docs, files = cached.get("docs"), cached.get("files")
    if not isinstance(docs, dict) or not isinstance(files, dict):
        return {}
    return {path: (str(docs[path]), str(files[path])) for path in docs if path in files}


def save(
    reg: Registry,
    key: str,
    probes: dict[str, bool],
    hashes: dict[str, str],
    docs: dict[str, str],
    facts: dict[str, list[Any]],
) -> None:
    """Keep a render: its fingerprint, its probes, each file's text hash and document
    digest, each input's digest and each model's facts."""
    doc = {
        "format": FORMAT,
        "fingerprint": key,
        "code": code_key(),
        "base": base(reg),
        "probes": probes,
        "files": hashes,
        "docs": docs,
        "inputs": inputs(reg),
        "foreign": foreign(reg),
        "root": _foreign_memo(reg),
        "facts": facts,
    }
    # Where it cannot be written (a read-only checkout): render again next time.
    _store.save(reg.repo_root, FACT, json.dumps(doc))


def still_valid(reg: Registry, cached: dict[str, Any], key: str) -> bool:
    """True when a cached render is what rendering now would give."""
    if cached.get("fingerprint") != key:
        return False
    return isinstance(cached.get("files"), dict) and probes_hold(reg, cached)


def probes_hold(reg: Registry, cached: dict[str, Any]) -> bool:
    """True when every code file the cached render looked for is still found, or not, as
    then."""
    probes = cached.get("probes")
    if not isinstance(probes, dict):
        return False
    return all(reg.tree.exists(path) == bool(found) for path, found in probes.items())
