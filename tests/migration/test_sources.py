"""Dataset sources and labels: sklearn:diabetes, image folders, hf-disk folders, CSV feature
columns, string labels with a sorted label map, the task inferred from the labels, and
entrypoint options."""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
from stemma.migration.data import encode_labels, materialize
from stemma.migration.explore import NOT_APPLICABLE
from stemma.migration.tasks import get, task_of
from stemma.migration.transferability import logme_regression
from stemma.registry import Registry
from stemma.registry.errors import BuildError, InvalidName
from stemma.registry.pipeline import render as pipeline
from stemma.registry.rules.naming import parse_source


def _at(root: Path):  # type: ignore[no-untyped-def]
    return lambda rel: root / rel


def test_diabetes_is_a_regression_target() -> None:
    data = materialize({"source": "sklearn:diabetes"})
    assert data.task == "regression" and data.shape == [10] and data.classes == []
    assert data.y_train.dtype == np.float32 and len(data.y_train) + len(data.y_eval) == 442


def test_labels_infer_the_task_and_strings_get_a_sorted_map() -> None:
    y, names = encode_labels(np.array(["dog", "cat", "eel", "cat"]), "w")
    assert y.tolist() == [1, 0, 2, 0] and names == ("cat", "dog", "eel")
    assert task_of(encode_labels(np.array([0, 2, 1]), "w")[0]) == "classification"
    assert task_of(encode_labels(np.array([0.5, 2.0]), "w")[0]) == "regression"
    assert task_of(encode_labels(np.array([[0, 1], [1, 1]]), "w")[0]) == "multilabel"
    assert task_of(encode_labels(np.array([1, 2, 3]), "w", "regression")[0]) == "regression"
    with pytest.raises(BuildError, match=r"^w: multilabel targets must be 0/1"):
        encode_labels(np.array([[0, 2]]), "w", "multilabel")
    with pytest.raises(BuildError, match=r"^w: string labels need task classification"):
        encode_labels(np.array(["a", "b"]), "w", "regression")
    with pytest.raises(BuildError, match=r"declare the task"):
        encode_labels(np.array([[0, 3], [1, 1]]), "w")


def test_csv_features_pick_columns_and_several_targets_regress(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 3},txt,{i * 0.5},{i * 0.25}\n" for i in range(20))
    (tmp_path / "t.csv").write_text("a,b,note,y1,y2\n" + rows)
    spec = {"source": "file:t.csv", "features": ["b", "a"], "target": ["y1", "y2"]}
    data = materialize(spec, resolve=_at(tmp_path))
    assert data.task == "regression" and data.shape == [2] and data.y_train.shape[1] == 2
    row = int(np.flatnonzero(data.y_train[:, 0] == 1.5)[0])  # the sample a = 3
    assert data.x_train[row].tolist() == [0.0, 3.0]  # columns in the order `features` names
    with pytest.raises(BuildError, match=r"feature column 'note' of t\.csv is not numeric"):
        materialize({"source": "file:t.csv", "target": "y1"}, display="s", resolve=_at(tmp_path))
    with pytest.raises(BuildError, match=r"^s at /source: feature column 'zz' not in t\.csv"):
        materialize({**spec, "features": ["zz"]}, display="s", resolve=_at(tmp_path))


def _image(path: Path, size: tuple[int, int], mode: str, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_image_folder_classes_sizes_and_modes(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / f"imgs/zebra/{i}.png", (6, 4), "L", 255)
        _image(tmp_path / f"imgs/ant/{i}.png", (6, 4), "RGB", 51)
    (tmp_path / "imgs/ant/notes.txt").write_text("not an image")
    data = materialize({"source": "imagefolder:imgs"}, resolve=_at(tmp_path))
    assert data.class_names == ("ant", "zebra") and data.shape == [3, 4, 6]  # RGB wins
    ant = data.x_train[data.y_train == 0][0]
    assert np.allclose(ant[0], 0.2) and np.allclose(ant[1:], 0.0)
    _image(tmp_path / "imgs/ant/big.png", (12, 8), "RGB", 51)
    with pytest.raises(BuildError, match=r"imgs/ant/big\.png is 12x8, other images 6x4"):
        materialize({"source": "imagefolder:imgs"}, resolve=_at(tmp_path))
    resized = materialize(
        {"source": "imagefolder:imgs", "transforms": [{"resize": [4, 4]}]}, resolve=_at(tmp_path)
    )
    assert resized.shape == [3, 4, 4] and len(resized.y_train) + len(resized.y_eval) == 7


def test_hf_disk_folder_keeps_class_label_names(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "a": datasets.Value("float32"),
            "b": datasets.Value("int64"),
            "kind": datasets.ClassLabel(names=["no", "yes"]),
            "text": datasets.Value("string"),
        }
    )
    rows = {
        "a": [i / 10 for i in range(16)],
        "b": [i % 4 for i in range(16)],
        "kind": [i % 2 for i in range(16)],
        "text": ["x"] * 16,
    }
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    spec = {"source": "hf-disk:hf", "target": "kind", "features": ["a", "b"]}
    data = materialize(spec, resolve=_at(tmp_path))
    assert data.class_names == ("no", "yes") and data.shape == [2] and data.task == "classification"
    with pytest.raises(BuildError, match=r"feature column 'text' of hf is not numeric"):
        materialize({"source": "hf-disk:hf", "target": "kind"}, resolve=_at(tmp_path))


def test_entrypoint_sources_take_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "optdata.py").write_text(
        dedent("""
        import numpy as np
        def make(n=4, offset=0.0):
            return np.ones((n, 2)), np.arange(n) + offset
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"source": "entrypoint:optdata:make", "options": {"n": 12, "offset": 0.5}}
    data = materialize(spec, trusted=["optdata:make"])
    assert len(data.y_train) + len(data.y_eval) == 12 and data.task == "regression"
    sys.modules.pop("optdata", None)


def test_folder_sources_parse_and_are_stage_dependencies(registry: Registry) -> None:
    assert parse_source("imagefolder:data/imgs").path == "data/imgs"
    assert parse_source("hf-disk:data/hf").kind == "hf-disk"
    assert parse_source("sklearn:diabetes").path is None
    with pytest.raises(InvalidName, match="imagefolder:PATH"):
        parse_source("imagefolder")
    (registry.root / "datasets/imgs").mkdir(parents=True)
    (registry.root / "datasets/imgs/spec.yaml").write_text("source: imagefolder:data/imgs\n")
    stage = pipeline.render_dict(Registry.open(registry.root))["stages"]["dataset-imgs"]
    assert "data/imgs" in stage["deps"]


def test_task_rules_losses_and_scores() -> None:
    import torch

    reg = get("regression")
    out, y = torch.tensor([[1.0], [2.0], [3.0]]), reg.target(np.array([1.0, 2.0, 4.0]))
    scored = reg.scores(out, y)
    assert scored["mse"] == pytest.approx(1 / 3, abs=1e-6) and scored["rmse"] == pytest.approx(
        (1 / 3) ** 0.5, abs=1e-6
    )
    assert scored["r2"] == pytest.approx(1 - 1 / (14 / 3), abs=1e-6)
    ml = get("multilabel")
    logits = torch.tensor([[3.0, -3.0], [3.0, 3.0], [-3.0, -3.0]])
    scored = ml.scores(logits, ml.target(np.array([[1, 0], [1, 1], [0, 1]])))
    assert scored["subset_accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert scored["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1), abs=1e-6)
    assert scored["map"] == pytest.approx((1 + (0.5 + 0.5 * 2 / 3)) / 2, abs=1e-6)  # a tie
    with pytest.raises(BuildError, match=r"loss 'bce' does not apply to a regression target"):
        reg.resolve_loss("bce")
    assert set(NOT_APPLICABLE["regression"]) == {"leep", "nce", "hscore", "knn"}
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(100, 4))
    useful = logme_regression(feats, feats[:, 0] * 3 + rng.normal(size=100) * 0.1)
    assert useful > logme_regression(feats, rng.normal(size=100))
