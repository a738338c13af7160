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

A render that differs from the stored one in a few entries (an edit of a few specs) is kept
as its change, beside it (the fact `pipeline-delta`: the entries that differ, naming the
stored render by a serial); `load` applies it. A change that names another serial, or sets
an entry the stored render lacks, is left out: the stored render alone is an older render,
still true of its own inputs.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from stemma.registry.pipeline.render import FOREIGN_MEMO, current, foreign_key, foreign_stages
from stemma.registry.rules.layout import SETTINGS_FILE
from stemma.registry.store import derived as _store
from stemma.registry.store.codekey import code_key
from stemma.registry.store.handle import Registry
from stemma.registry.store.index import open_index

FACT = "pipeline"
# A later render kept as the entries it changes in the one stored as FACT (see `save`).
DELTA = "pipeline-delta"
FORMAT = 5
# The registry handle's read-cache key of the cached render and its change, read with `inputs`.
_BODY = ("pipecache", "body")
# The parts of a render with an entry per file, input or model.
_FIELDS = ("files", "docs", "inputs", "facts")
# A render that differs from the stored one in at most this many entries is kept as a change
# to it: at 30,000 models the stored render is 15 MB of JSON, whose writing was a quarter of
# a `pipeline --check` after a one-spec edit.
MAX_CHANGED = 2000


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
            reg._cache[_BODY] = (_fact(reg, FACT), _fact(reg, DELTA))
    reg._cache[memo] = found
    return found


def doc_digest(doc: Any) -> str:
    """A digest of one file's document, key order included (the text keeps it)."""
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


def _fact(reg: Registry, name: str) -> dict[str, Any] | None:
    """A fact of the render cache as a document of this format, or None."""
    try:
        doc = json.loads(_store.load(reg.repo_root, name) or b"null")
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def load(reg: Registry) -> dict[str, Any] | None:
    """The cached render, or None (also for a damaged one): the stored one, with the change
    kept beside it applied where that change is one to this stored render; its `change`
    holds the entries that change set (for `save` to keep them), `serial` the stored one's."""
    # read with the inputs, when they were (and taken once)
    doc: dict[str, Any] | None
    change: dict[str, Any] | None
    if _BODY in reg._cache:
        doc, change = reg._cache.pop(_BODY)
    else:
        doc, change = _fact(reg, FACT), _fact(reg, DELTA)
    if doc is None:
        return None
    serial = doc.get("serial")
    changed: dict[str, dict[str, Any]] = {f: {} for f in _FIELDS}
    if change is not None and isinstance(serial, str) and change.get("on") == serial:
        entries = _changed_entries(doc, change)
        if entries is not None:
            rest = {k: v for k, v in change.items() if k not in _FIELDS and k != "on"}
            doc = {**doc, **rest, **{f: {**doc[f], **entries[f]} for f in _FIELDS}}
            changed = entries
    doc["change"] = changed
    _take_memo(reg, doc)
    return doc


def _changed_entries(
    doc: dict[str, Any], change: dict[str, Any]
) -> dict[str, dict[str, Any]] | None:
    """The entries a kept change sets, by part, where each replaces one of `doc` (None: not
    a change this render can take)."""
    out = {}
    for name in _FIELDS:
        entries, stored = change.get(name), doc.get(name)
        if not (isinstance(entries, dict) and isinstance(stored, dict)):
            return None
        if not entries.keys() <= stored.keys():
            return None
        out[name] = entries
    return out


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
    last: dict[str, Any] | None = None,
) -> None:
    """Keep a render: its fingerprint, its probes, each file's text hash and document
    digest, each input's digest and each model's facts. `last`: the cached render this one
    started from (`load`). Where the two have the same files, inputs and models in the same
    order and differ in few entries, the render is kept as its change to the stored render
    (DELTA: the entries that differ, and the rest of the render); otherwise whole, with a new
    serial that no kept change names."""
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
    change = _change(doc, last)
    # Where it cannot be written (a read-only checkout): render again next time.
    if change is not None:
        _store.save(reg.repo_root, DELTA, json.dumps(change))
    else:
        _store.save(reg.repo_root, FACT, json.dumps({**doc, "serial": secrets.token_hex(8)}))


def _change(doc: dict[str, Any], last: dict[str, Any] | None) -> dict[str, Any] | None:
    """`doc` as a change to the stored render `last` was loaded from (`save`), or None
    where it is not one."""
    if last is None:
        return None
    serial, kept = last.get("serial"), last.get("change")
    if not isinstance(serial, str) or not isinstance(kept, dict):
        return None
    out = {k: v for k, v in doc.items() if k not in _FIELDS}
    count = 0
    for name in _FIELDS:
        new, old, prior = doc[name], last.get(name), kept.get(name)
        if not isinstance(old, dict) or not isinstance(prior, dict) or list(new) != list(old):
            return None  # a file, input or model added, removed or moved in the order
        out[name] = {**prior, **{k: v for k, v in new.items() if old[k] != v}}
        count += len(out[name])
    return {**out, "on": serial} if count <= MAX_CHANGED else None


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
