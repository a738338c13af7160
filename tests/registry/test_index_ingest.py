"""Building the query index: one pass over the files, a chunk of manifests at a time.

A cold build reads each model folder once (spec and manifest together); these tests pin what
that must keep: the same index whatever the chunk size, a bad spec reported before a bad
manifest wherever the two are, and a new index written without a log left beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import duckdb
import pytest
from stemma.lineage import graph
from stemma.registry import Registry
from stemma.registry.errors import ParseError, SchemaError, StemmaError
from stemma.registry.query.listing import model_status
from stemma.registry.rules import status
from stemma.registry.store import _ingest, _snapshot, index

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import synth

TABLES = (
    "raw.model_specs",
    "raw.dataset_specs",
    "raw.model_manifests",
    "raw.dataset_manifests",
    "raw.layers",
    "raw.edges",
    "raw.model_locks",
)


def _dump(reg: Registry) -> dict[str, list[tuple[object, ...]]]:
    """Every stored row of the index, sorted, and the models view."""
    with index.open_index(reg) as idx:
        out = {
            t: sorted(map(repr, idx.con.execute(f"SELECT * FROM {t}").fetchall())) for t in TABLES
        }
        out["models"] = sorted(map(repr, idx.con.execute("SELECT * FROM models").fetchall()))
    return out  # type: ignore[return-value]


@pytest.fixture
def synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setattr(_snapshot, "RACY_NS", 0)
    synth.generate(tmp_path / "reg", 40, shape="mixed", seed=5, family_size=12, unbuilt=0.2)
    return Registry.open(tmp_path / "reg")


def _cold(reg: Registry) -> None:
    shutil.rmtree(reg.repo_root / ".stemma", ignore_errors=True)


def test_the_index_is_the_same_whatever_the_chunk_size(
    synthetic: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cold(synthetic)
    expected = _dump(synthetic)
    assert len(expected["raw.model_manifests"]) > 5 and len(expected["raw.layers"]) > 20
    for chunk in (1, 3, 7):
        monkeypatch.setattr(_ingest, "CHUNK", chunk)
        _cold(synthetic)
        assert _dump(synthetic) == expected, chunk


def test_chunks_hold_at_most_chunk_manifests_of_one_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ingest, "CHUNK", 2)
    paths = [
        "models/a/spec.yaml",
        "models/a/manifest.json",
        "models/b/spec.yaml",  # unbuilt
        "models/c/spec.yaml",
        "models/c/manifest.json",
        "models/d/manifest.json",
        "datasets/x/spec.yaml",
        "datasets/x/manifest.json",
    ]
    assert _ingest._file_chunks(paths) == [
        (True, paths[:5]),
        (True, ["models/d/manifest.json"]),
        (False, ["datasets/x/spec.yaml", "datasets/x/manifest.json"]),
    ]


@pytest.mark.parametrize("chunk", [1, 5000])
@pytest.mark.parametrize(
    "spec_text, error, message",
    [
        ("data: [unclosed\n", ParseError, "invalid YAML"),
        ("description: 5\ndata: {train: ds00-train}\n", SchemaError, "/description"),
    ],
)
def test_a_bad_spec_is_reported_before_a_bad_manifest_wherever_they_are(
    synthetic: Registry,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    spec_text: str,
    error: type[Exception],
    message: str,
) -> None:
    monkeypatch.setattr(_ingest, "CHUNK", chunk)
    names = _snapshot.snapshot(synthetic.root).names["models"]
    built = [n for n in names if (synthetic.root / "models" / n / "manifest.json").exists()]
    # A bad manifest in the first folder read, a bad spec in the last one, and the reverse.
    for manifest_at, spec_at in ((built[0], names[-1]), (built[-1], names[0])):
        manifest = synthetic.root / "models" / manifest_at / "manifest.json"
        spec = synthetic.root / "models" / spec_at / "spec.yaml"
        good_manifest, good_spec = manifest.read_text(), spec.read_text()
        manifest.write_text(good_manifest[:100])
        spec.write_text(spec_text)
        _cold(synthetic)
        with pytest.raises(error, match=rf"models/{spec_at}/spec.yaml.*{message}"):
            index.refresh(Registry.open(synthetic.root))
        spec.write_text(good_spec)
        with pytest.raises(
            ParseError, match=rf"models/{manifest_at}/manifest.json:\d+: invalid JSON"
        ):
            index.refresh(Registry.open(synthetic.root))
        manifest.write_text(good_manifest)
        assert index.refresh(Registry.open(synthetic.root)).rebuilt


def test_a_manifest_of_the_wrong_shape_in_a_later_chunk_is_reported(
    synthetic: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ingest, "CHUNK", 2)
    names = _snapshot.snapshot(synthetic.root).names["models"]
    built = [n for n in names if (synthetic.root / "models" / n / "manifest.json").exists()]
    path = synthetic.root / "models" / built[-1] / "manifest.json"
    path.write_text(path.read_text().replace('"kind": "model"', '"kind": 5'))
    _cold(synthetic)
    with pytest.raises(SchemaError, match=rf"models/{built[-1]}/manifest.json at /kind"):
        index.refresh(Registry.open(synthetic.root))


def test_a_new_index_is_written_without_a_log(synthetic: Registry) -> None:
    _cold(synthetic)
    stats = index.refresh(synthetic)
    assert stats.rebuilt
    store = index.index_path(synthetic)
    assert store.is_file() and not Path(f"{store}.wal").exists()
    # The instance's setting is back: a later change is logged as any other.
    default = duckdb.connect().execute("SELECT current_setting('checkpoint_threshold')")
    with index.open_index(synthetic) as idx:
        setting = idx.con.execute("SELECT current_setting('checkpoint_threshold')")
        assert setting.fetchone() == default.fetchone()


def test_read_texts_reads_each_file_as_read_text_does(tmp_path: Path) -> None:
    """The one-pass reader gives each path what the careful reader gives: the text, None
    for a file or folder that is not there, and the same refusal for a folder that is a
    link out of the root."""
    root, outside = tmp_path / "reg", tmp_path / "outside"
    (root / "models" / "a").mkdir(parents=True)
    (root / "models" / "a" / "spec.yaml").write_text("x: 1\n")
    outside.mkdir()
    (root / "models" / "b").symlink_to(outside, target_is_directory=True)
    paths = ["models/a/spec.yaml", "models/a/dvc.lock", "models/c/dvc.lock", "models/b/dvc.lock"]

    def outcome(read: object) -> object:
        try:
            return read()  # type: ignore[operator]
        except StemmaError as exc:
            return (type(exc).__name__, str(exc))

    for path in paths:
        one = outcome(lambda p=path: _snapshot.read_texts(root, [p])[0])
        assert one == outcome(lambda p=path: _snapshot.read_text(root, p, -1)), path
    assert _snapshot.read_texts(root, paths[:3]) == ["x: 1\n", None, None]
    assert isinstance(outcome(lambda: _snapshot.read_texts(root, paths)), tuple)  # refused


def _lock(folder: Path, name: str, md5: str) -> None:
    """A dvc.lock as DVC writes it for the model's stage."""
    (folder / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  model-{name}:\n    cmd: stemma build {name}\n"
        f"    outs:\n    - path: models/{name}/weights.safetensors\n      hash: md5\n"
        f"      md5: {md5}\n      size: 1\n"
    )


def test_the_index_judges_each_model_by_its_dvc_lock(synthetic: Registry, tmp_path: Path) -> None:
    """The index holds what each model folder's dvc.lock records for the weights and what
    the manifest records (a sharded model's as DVC hashes the folder), and its status is
    the rule's, as `ls` judged from the files: a lock of other weights makes a model stale,
    an edit of the lock alone is seen, and a lock it must not read (a link out of the root,
    a named pipe, a link to itself) records nothing."""
    _cold(synthetic)
    with index.open_index(synthetic) as idx:
        found = idx.con.execute("SELECT name FROM models WHERE status = 'built' ORDER BY name")
        built = [n for (n,) in found.fetchall()]
    same, other, sharded, linked, piped, looped = built[:6]
    models = synthetic.root / "models"
    doc = json.loads((models / sharded / "manifest.json").read_text())
    shard = {"path": "model-00001-of-00001.safetensors", "md5": "a" * 32, "bytes": 1}
    doc["weights"]["shards"] = [{**shard, "sha256": "sha256:" + "b" * 64, "format": "safetensors"}]
    (models / sharded / "manifest.json").write_text(json.dumps(doc))
    recorded = status.recorded_md5(doc["weights"])
    assert recorded is not None and recorded.endswith(".dir")
    md5 = {
        n: json.loads((models / n / "manifest.json").read_text())["weights"]["md5"] for n in built
    }
    _lock(models / same, same, md5[same])
    _lock(models / other, other, "f" * 32)
    _lock(models / sharded, sharded, recorded)
    (tmp_path / "outside.lock").write_text((models / other / "dvc.lock").read_text())
    (models / linked / "dvc.lock").symlink_to(tmp_path / "outside.lock")
    os.mkfifo(models / piped / "dvc.lock")
    (models / looped / "dvc.lock").symlink_to("dvc.lock")  # stat cannot resolve it

    def statuses(reg: Registry) -> dict[str, str]:
        with index.open_index(reg) as idx:
            return dict(idx.con.execute("SELECT name, status FROM models").fetchall())

    reg = Registry.open(synthetic.root)
    seen = statuses(reg)
    assert [seen[n] for n in (same, other, sharded, linked, piped, looped)] == [
        "built",
        "stale",
        "built",
        "built",
        "built",
        "built",
    ]
    with index.open_index(reg) as idx:
        rows = idx.con.execute("SELECT name, weights_md5 FROM raw.model_manifests").fetchall()
        locks = dict(idx.con.execute("SELECT name, md5 FROM raw.model_locks").fetchall())
    assert dict(rows)[sharded] == recorded and dict(rows)[same] == md5[same]
    assert locks == {same: md5[same], other: "f" * 32, sharded: recorded, linked: None, piped: None}
    fresh = Registry.open(synthetic.root)
    assert seen == {n: model_status(fresh, n, fresh.model_manifest(n)) for n in seen}
    # the lineage's reading of the files (at a revision, or where the index cannot answer)
    assert seen == {m.name: m.status for m in graph._file_records(fresh)[0]}

    _lock(models / same, same, "e" * 32)  # the lock alone changes
    assert statuses(Registry.open(synthetic.root))[same] == "stale"
