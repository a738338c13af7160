"""Object detection: generated and COCO datasets, classifier -> detector transfer, init
schemes and train-time augmentation (tiny images, one epoch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import new_registry
from PIL import Image
from stemma.migration.augment import Augment
from stemma.migration.build import build_dataset, build_model
from stemma.migration.data import load_dataset
from stemma.migration.detection import recompute_map
from stemma.migration.detection_data import materialize_detection, unpad
from stemma.migration.initschemes import InitScheme, apply_init
from stemma.migration.shapes import shapes
from stemma.migration.weights import load_weights
from stemma.registry import Registry
from stemma.registry.errors import BuildError, StemmaError
from stemma.registry.records.core import DatasetSpec
from stemma.registry.rules.taskspec import CLASSIFICATION, spec_problems
from torch import nn

DETECTOR = (
    "architecture: {family: torchvision, name: fasterrcnn_mobilenet_v3_large_320_fpn,"
    " options: {min_size: 64, max_size: 64}}\n"
)
SPECS = {
    "datasets/cls/spec.yaml": "source: shapes:classify\noptions: {count: 12, size: 16, seed: 1}\n",
    "datasets/det/spec.yaml": (
        "source: shapes:detect\n"
        "options: {count: 12, size: 64, seed: 2, classes: [rectangle, ellipse]}\n"
    ),
    "datasets/det3/spec.yaml": "source: shapes:detect\noptions: {count: 8, size: 64, seed: 3}\n",
    "models/clf/spec.yaml": (
        "architecture: {family: torchvision, name: mobilenet_v3_large}\n"
        "data: {train: cls}\ntraining: {epochs: 1, batch_size: 16, lr: 0.001, seed: 0}\n"
    ),
    "models/det/spec.yaml": (
        "source: {model: clf}\n" + DETECTOR + "data: {train: det}\n"
        "strategy: {freeze: ['backbone.body.0.*'], init: {scheme: normal, std: 0.01}}\n"
        "training: {epochs: 1, batch_size: 6, lr: 0.01, optimizer: sgd, momentum: 0.9,"
        " seed: 0, augment: {hflip: 0.5, brightness: 0.2}}\n"
        "gates: {map_50: '>= 0.0', per_class_ap: '>= 0.0'}\n"
        "checks: {forgetting: {data: cls}}\n"
    ),
    "models/det3/spec.yaml": (
        "source: {model: det}\ndata: {train: det3}\n"
        "strategy: {reinit: ['roi_heads.box_predictor.*'], init: xavier}\n"
        "training: {epochs: 1, batch_size: 6, lr: 0.01, optimizer: sgd, seed: 0}\n"
        "checks: {forgetting: {data: det, max_drop: 1.0}}\n"
    ),
    # refused before training: drift reads a classifier's features
    "models/drifted/spec.yaml": (
        "source: {model: det}\ndata: {train: det3}\n"
        "training: {epochs: 1, batch_size: 6, lr: 0.01, optimizer: sgd, seed: 0}\n"
        "checks: {drift: {}}\n"
    ),
    # refused before training: the source detector's forgetting data must hold boxes
    "models/wrongdata/spec.yaml": (
        "source: {model: det}\ndata: {train: det3}\n"
        "training: {epochs: 1, batch_size: 6, lr: 0.01, optimizer: sgd, seed: 0}\n"
        "checks: {forgetting: {data: cls}}\n"
    ),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Registry:
    """A classifier on shapes, a detector on its backbone, a detector on a new class set."""
    reg = new_registry(tmp_path_factory.mktemp("det") / "repo", registry_template, SPECS)
    for name in ("cls", "det", "det3"):
        build_dataset(reg, name)
    for name in ("clf", "det", "det3"):
        build_model(reg, name)
    return reg


def _manifest(reg: Registry, name: str) -> dict[str, Any]:
    found = reg.model_manifest(name)
    assert found is not None
    return dict(found.raw)


def test_shapes_are_seeded_and_boxes_inside() -> None:
    x1, b1, names = shapes("detect", {"count": 6, "size": 32, "seed": 4}, "spec")
    x2, b2, _ = shapes("detect", {"count": 6, "size": 32, "seed": 4}, "spec")
    assert np.array_equal(x1, x2) and b1 == b2 and names == ("rectangle", "ellipse", "triangle")
    for boxes in b1:
        for label, xa, ya, xb, yb in boxes:
            assert 0 <= xa < xb <= 32 and 0 <= ya < yb <= 32 and label in (0, 1, 2)
    with pytest.raises(BuildError, match="options/size"):
        shapes("detect", {"size": 4}, "spec")


SHAPES_SPEC = {"source": "shapes:detect", "options": {"count": 8, "size": 16}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"select": {}}, "at /select: does not apply"),  # declared, even empty
        ({"target": "label"}, "at /target: does not apply"),
        ({"features": ["a"]}, "at /features: does not apply"),
        ({"transforms": [{"invert": True}]}, "at /transforms: a detection source takes one"),
        ({"transforms": [{"resize": [8, 8]}] * 2}, "at /transforms: a detection source takes one"),
        ({"transforms": [{"resize": [8, 8]}]}, "at /transforms: set options.size instead"),
        ({"task": "classification"}, "at /task: shapes:detect is a detection source"),
        ({"split": {"eval": 0.95}}, "at /split/eval: leaves no training image"),
    ],
)
def test_a_detection_spec_refuses_what_does_not_apply(extra: dict[str, Any], message: str) -> None:
    spec = DatasetSpec.from_dict("d", {**SHAPES_SPEC, **extra}, "s.yaml")
    with pytest.raises(BuildError, match=rf"^s\.yaml {message}"):
        materialize_detection(spec, display="s.yaml", resolve=Path)


def test_a_detection_split_follows_the_spec_s_split() -> None:
    spec = DatasetSpec.from_dict("d", {**SHAPES_SPEC, "split": {"eval": 0.5, "seed": 3}})
    arrays = materialize_detection(spec, display="s.yaml", resolve=Path)
    assert (len(arrays.x_train), len(arrays.x_eval)) == (4, 4)
    default = materialize_detection(
        DatasetSpec.from_dict("d", SHAPES_SPEC), display="", resolve=Path
    )
    assert (len(default.x_train), len(default.x_eval)) == (6, 2)  # eval 0.25 unless declared


def test_classic_transfer_report(built: Registry) -> None:
    m = _manifest(built, "det")
    assert m["task"] == "detection" and set(m["metrics"]) == {"map", "map_50", "map_75"}
    rows = {r["name"]: r for r in m["architecture"]["tensors"]}
    first = rows["backbone.body.0.0.weight"]
    assert first["origin"] == "transferred" and first["source_name"] == "features.0.0.weight"
    assert first["frozen"] is True
    assert rows["backbone.body.16.0.weight"]["origin"] == "transferred"
    for head in ("rpn.head.conv.0.0.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert rows[head]["origin"] == "new" and rows[head]["source_name"] is None
    assert "classifier.0.weight" in m["transfer"]["unused_source"]
    assert m["architecture"]["config"]["num_classes"] == 3  # two shapes + background
    assert {g["metric"] for g in m["gates"]} == {"map_50", "per_class_ap"}


def test_detector_to_new_class_set(built: Registry) -> None:
    m = _manifest(built, "det3")
    rows = {r["name"]: r for r in m["architecture"]["tensors"]}
    assert rows["roi_heads.box_predictor.cls_score.weight"]["shape"] == [4, 1024]
    assert rows["roi_heads.box_predictor.cls_score.weight"]["origin"] == "new"
    assert rows["backbone.body.0.0.weight"]["origin"] == "transferred"
    assert m["source"]["model"] == "det"


def test_weights_load_in_torchvision_and_map_matches(built: Registry) -> None:
    """get_model(name, weights=None, num_classes=...) + a strict load scores what was recorded."""
    m = _manifest(built, "det")
    state = load_weights(built.model_dir("det") / "weights.safetensors")
    data = load_dataset(built, "det")
    again = recompute_map(state, m["architecture"]["config"], data.x_eval, data.y_eval)
    assert {k: again[k] for k in m["metrics"]} == m["metrics"]
    assert again["per_class"] == m["per_class"]


def test_rebuild_gives_the_same_id(built: Registry, tmp_path: Path) -> None:
    """Init scheme and augmentation are seeded: a second build of det is byte-identical."""
    first = _manifest(built, "det")["id"]
    shutil.copytree(built.repo_root, tmp_path / "copy", symlinks=True)
    reg = Registry.open(tmp_path / "copy")
    (reg.model_dir("det") / "manifest.json").unlink()
    assert build_model(reg, "det")["id"] == first


def test_coco_folder(registry: Registry) -> None:
    root = registry.repo_root
    folder = root / "data" / "coco"
    folder.mkdir(parents=True)
    for i in range(4):
        img = np.zeros((24, 32, 3), dtype=np.uint8)
        img[4:12, 6:20] = 255
        Image.fromarray(img).save(folder / f"{i}.png")
    doc = {
        "images": [{"id": i, "file_name": f"{i}.png"} for i in range(4)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 7, "bbox": [6, 4, 14, 8]} for i in range(4)
        ],
        "categories": [{"id": 7, "name": "box"}],
    }
    (folder / "annotations.json").write_text(json.dumps(doc))
    spec = registry.dataset_dir("c") / "spec.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    rel = folder.relative_to(registry.root)
    spec.write_text(f"source: coco:{rel}\ntransforms: [{{resize: [48, 64]}}]\n")
    reg = Registry.open(root)
    m = build_dataset(reg, "c")
    assert m["task"] == "detection" and m["class_names"] == ["box"] and m["shape"] == [3, 48, 64]
    y = unpad(load_dataset(reg, "c").y_train)[0]
    assert y.tolist() == [[0.0, 12.0, 8.0, 40.0, 24.0]]  # scaled by 2 with the resize
    # a bad box is refused with the file and pointer; an image linked out of the repo too
    doc["annotations"][1]["bbox"] = [1, 1, 0, 3]
    (folder / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(BuildError, match=r"annotations\.json at /annotations/1/bbox"):
        build_dataset(Registry.open(root), "c")
    doc["annotations"][1]["bbox"] = [1, 1, 2, 3]
    doc["images"][2]["file_name"] = "../../../../etc/passwd"
    (folder / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(BuildError, match="images/2/file_name"):
        build_dataset(Registry.open(root), "c")
    doc["images"][2]["file_name"] = "2.png"
    (folder / "annotations.json").write_text(json.dumps(doc))
    outside = root.parent / "outside.png"
    shutil.copy(folder / "3.png", outside)
    (folder / "3.png").unlink()
    (folder / "3.png").symlink_to(outside)
    with pytest.raises(StemmaError, match="outside"):
        build_dataset(Registry.open(root), "c")


@pytest.mark.parametrize("scheme", ["zeros", "normal", "xavier", "kaiming"])
def test_init_scheme_statistics(scheme: str) -> None:
    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(256, 512), nn.BatchNorm1d(512), nn.Linear(512, 256))

    a, b = fresh(), fresh()
    names = {n for n, _ in a.named_parameters()}
    spec = InitScheme.from_spec({"scheme": scheme, "std": 0.05} if scheme == "normal" else scheme)
    apply_init(a, spec, names, seed=3)
    apply_init(b, spec, names, seed=3)
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb)  # deterministic
    w = a[0].weight.detach()
    assert torch.count_nonzero(a[0].bias) == 0 and torch.all(a[1].weight == 1)
    expected = {
        "zeros": 0.0,
        "normal": 0.05,
        "xavier": (2.0 / (256 + 512)) ** 0.5,
        "kaiming": (2.0 / 256) ** 0.5,
    }[scheme]
    assert float(w.std()) == pytest.approx(expected, rel=0.05, abs=1e-9)
    assert abs(float(w.mean())) < 0.01
    c = fresh()
    apply_init(c, spec, names, seed=4)
    assert scheme == "zeros" or not torch.equal(c[0].weight, a[0].weight)


def test_init_scheme_refused() -> None:
    with pytest.raises(BuildError, match="/strategy/init: unknown scheme"):
        InitScheme.from_spec("orthogonal")


def test_augment_is_seeded_and_moves_boxes() -> None:
    aug = Augment.from_spec({"hflip": 1.0})
    img = torch.zeros(3, 8, 10)
    img[:, :, 0] = 1.0
    out, boxes = aug.apply(img, torch.tensor([[0.0, 1.0, 2.0, 3.0]]), aug.generator(0))
    assert out[0, 0, 9] == 1.0 and boxes.tolist() == [[8.0, 1.0, 10.0, 3.0]]
    mixed = Augment.from_spec({"hflip": 0.5, "vflip": 0.5, "brightness": 0.3})
    runs = []
    for _ in range(2):
        gen = mixed.generator(7)
        runs.append([mixed.apply(img, torch.tensor([[0.0, 1.0, 2.0, 3.0]]), gen) for _ in range(5)])
    for (ia, ba), (ib, bb) in zip(*runs, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ba, bb)
    with pytest.raises(BuildError, match="/training/augment/rotate"):
        Augment.from_spec({"rotate": 0.5})


def test_augment_refused_outside_detection() -> None:
    found = spec_problems(CLASSIFICATION, {"training": {"augment": {"hflip": 0.5}}})
    assert found and found[0][0] == "/training/augment"


def test_explore_on_detection_lists_scores_not_applicable(built: Registry, cli: Any) -> None:
    """No transferability score applies to boxes: an empty ranking that says why, exit 0."""
    from stemma.migration.explore import explore
    from stemma.migration.transferability import SCORES

    ranking = explore(built, "det", "*", scores=SCORES, decide="logme")
    doc = ranking.to_dict()
    assert doc["ranking"] == [] and doc["selected"] is None and doc["scores"] == []
    assert sorted(doc["not_applicable"]) == sorted(SCORES)
    assert "detection" in doc["not_applicable"]["logme"]
    res = cli(["explore", "det", "--score", "all", "--json"], built.repo_root)
    assert res.code == 0, res.stderr
    assert sorted(json.loads(res.stdout)["not_applicable"]) == sorted(SCORES)
    res = cli(["explore", "det"], built.repo_root)
    assert res.code == 0 and "logme does not apply" in res.stdout


def test_forgetting_of_a_detector(built: Registry) -> None:
    """Detector -> detector: the source classes' mAP before and after, gated by max_drop."""
    det, det3 = _manifest(built, "det"), _manifest(built, "det3")
    result = det3["checks"]["forgetting"]
    assert result["comparable"] is True and result["figures"]["metric"] == "map"
    assert set(result["figures"]) == {"before", "after", "relative_drop", "metric"}
    assert result["passed"] is True and result["thresholds"] == {"max_drop": 1.0}
    assert result["inputs"]["source_model"] == {"name": "det", "id": det["id"]}
    assert det3["datasets"]["forgetting"]["name"] == "det"
    # the source's own figure is its recorded mAP on that data: the check rescored it
    assert result["figures"]["before"] == pytest.approx(max(det["metrics"]["map"], 0.0))
    # classifier -> detector: no comparable figure, said in the result, not a failure
    first = det["checks"]["forgetting"]
    assert first["passed"] is True and first["comparable"] is False and first["figures"] == {}
    assert "classification" in first["reason"] and det["datasets"]["forgetting"]["name"] == "cls"


@pytest.mark.parametrize(
    ("model", "pointer"),
    [("drifted", "/checks/drift"), ("wrongdata", "/checks/forgetting/data")],
)
def test_detector_checks_refused_before_training(built: Registry, model: str, pointer: str) -> None:
    with pytest.raises(BuildError, match=f"models/{model}/spec.yaml at {pointer}"):
        build_model(built, model)
    assert built.model_manifest(model) is None


def test_feature_stats_of_large_images_match_the_covariance(monkeypatch: Any) -> None:
    """Past 4096 features the covariance's eigenvalues come from the n x n Gram matrix (a
    64x64 RGB classification dataset took minutes); the figures are the covariance's own."""
    from stemma.migration import data as data_mod

    x = np.random.default_rng(0).random((12, 3, 10, 10)).astype(np.float32)
    monkeypatch.setattr(data_mod, "_GRAM_ABOVE", 10**9)
    slow = data_mod.feature_stats(x)
    monkeypatch.setattr(data_mod, "_GRAM_ABOVE", 16)
    fast = data_mod.feature_stats(x)
    assert fast.cov_trace == pytest.approx(slow.cov_trace, rel=1e-9)
    assert fast.cov_top_eigenvalues == pytest.approx(slow.cov_top_eigenvalues, abs=2e-6)
    assert len(fast.cov_top_eigenvalues or ()) == 10


def test_report_shows_eval_images_with_true_and_predicted_boxes(built: Registry) -> None:
    """The build writes detections.json (recorded in the manifest); the HTML report draws
    each sample image with its true boxes and the predicted ones, from that file alone."""
    import hashlib
    import re

    from stemma.registry.publish.report import model_report, render_html

    m = _manifest(built, "det")
    data = (built.model_dir("det") / "detections.json").read_bytes()
    assert m["samples"]["path"] == "detections.json"
    assert m["samples"]["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
    doc = json.loads(data)
    n_eval = len(load_dataset(built, "det").x_eval)
    assert len(doc["images"]) == min(4, n_eval) and doc["class_names"] == ["rectangle", "ellipse"]
    assert all(p["score"] >= doc["score_threshold"] for i in doc["images"] for p in i["predicted"])
    report = model_report(built, "det")
    page = render_html(report)
    pictures = re.findall(r"<svg class='boxes'.*?</svg>", page, flags=re.S)
    assert len(pictures) == len(doc["images"])
    assert all("<image href='data:image/png;base64,iVBORw0KGgo" in p for p in pictures)
    true_boxes = sum(p.count("<rect class='true'") for p in pictures)
    predicted = sum(p.count("<rect class='pred'") for p in pictures)
    assert true_boxes == sum(len(i["truth"]) for i in doc["images"]) > 0
    assert predicted == sum(len(i["predicted"]) for i in doc["images"]) > 0
    assert re.search(r"<text [^>]*>(rectangle|ellipse) \d\.\d\d</text>", page)
    # a classifier records no samples: its report has no such section
    assert "samples" not in model_report(built, "clf")
    assert "sample detections" not in render_html(model_report(built, "clf"))
