"""The HTML report: verdict banner, lineage as inline SVG, class names, a page that fits.

Manifests are written by `tests/factories.py` (no training); the page is checked as text, and
rendered in headless Chromium when it is installed (/usr/bin/chromium) to see that no table
makes it wider than a 1280 px window.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import new_registry
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.errors import SchemaError
from stemma.registry.publish._reportdoc import TensorCounts
from stemma.registry.publish.report import (
    Report,
    model_report,
    render_html,
    render_text,
    report_record,
)

CHROMIUM = Path("/usr/bin/chromium")
SPECS = {
    "datasets/digits-0to4/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
    """,
    "datasets/digits-5to9/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}
    """,
    "models/base/spec.yaml": """
        architecture: {family: mlp, hidden: [32]}
        data: {train: digits-0to4}
    """,
    "models/ft/spec.yaml": """
        source: {model: base, relation: finetune}
        data: {train: digits-5to9}
    """,
    "models/adapter-with-a-rather-long-name-for-its-folder/spec.yaml": """
        source: {model: ft, relation: adapter}
        data: {train: digits-5to9}
        gates: {per_class_accuracy: ">= 0.9"}
    """,
}
LEAF = "adapter-with-a-rather-long-name-for-its-folder"
# an adapter's tensors: long names on both sides of the mapping, as peft writes them
TENSORS = [
    {
        "name": f"base_model.model.encoder.layer.{i}.attention.self.query.lora_{ab}.default.weight",
        "shape": [8, 768] if ab == "A" else [768, 8],
        "dtype": "float32",
        "origin": "transferred",
        "frozen": False,
        "source_name": f"encoder.layer.{i}.attention.self.query.weight.original_module.weight",
    }
    for i in range(6)
    for ab in "AB"
]
PER_CLASS = {"0": 0.95, "1": 0.99, "2": 0.93, "3": 0.71, "4": 0.97}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Registry:
    """base -> ft -> LEAF, built (manifests written); LEAF fails its per-class gate."""
    reg = new_registry(tmp_path_factory.mktemp("report") / "repo", registry_template, SPECS)
    for name in ("digits-0to4", "digits-5to9"):
        dataset_manifest(reg, name)
    model_manifest(reg, "base", gates=[_gate("accuracy", 0.9, 0.95)])
    model_manifest(reg, "ft", checks={"drift": {"passed": True, "figures": {"mmd_pvalue": 0.4}}})
    arch = {"config": {"family": "mlp", "hidden": [32]}, "tensors": TENSORS}
    model_manifest(
        reg,
        LEAF,
        architecture=arch,
        per_class=PER_CLASS,
        gates=[_gate("per_class_accuracy", 0.9, 0.71)],
    )
    return reg


def _gate(metric: str, threshold: float, value: float) -> dict[str, object]:
    return {
        "metric": metric,
        "op": ">=",
        "threshold": threshold,
        "value": value,
        "passed": value >= threshold,
    }


def test_banner_says_pass_or_fail_with_the_reason(reg: Registry) -> None:
    ok = render_html(model_report(reg, "ft"))
    assert "class='banner ok'" in ok and "<strong>PASS</strong>" in ok
    assert ok.index("banner") < ok.index("<h1>")  # the verdict comes first
    bad = render_html(model_report(reg, LEAF))
    assert "class='banner bad'" in bad
    banner = bad[bad.index("banner bad") : bad.index("<h1>")]
    assert "gate per_class_accuracy &gt;= 0.9 failed (value 0.7100)" in banner
    assert "0/1 gates" in banner and "up to date" in banner
    text = render_text(model_report(reg, LEAF))
    assert "FAIL\n  gate per_class_accuracy >= 0.9 failed" in text


def test_banner_names_staleness(reg: Registry, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(reg.repo_root, copy, symlinks=True)
    spec = copy / "models" / "ft" / "spec.yaml"
    spec.write_text(spec.read_text() + "description: changed after the build\n")
    doc = model_report(Registry.open(copy), "ft")
    assert doc["stale"] == "spec" and not doc["passed"]
    assert "stale: its spec changed since the build" in render_html(doc)
    leaf = render_html(model_report(Registry.open(copy), LEAF))
    assert "stale ancestor" not in leaf  # ft's manifest is unchanged: LEAF's link holds
    model_manifest(Registry.open(copy), "base", accuracy=0.5)  # a rebuilt root
    leaf = render_html(model_report(Registry.open(copy), LEAF))
    assert "stale ancestor: ft was built from an older base" in leaf


def test_lineage_is_an_inline_svg_with_every_ancestor(reg: Registry) -> None:
    page = render_html(model_report(reg, LEAF))
    svg = re.search(r"<svg class='lineage'.*?</svg>", page, re.S)
    assert svg is not None
    nodes = re.findall(r"<g class='node'><title>([^ <]+)", svg.group(0))
    assert nodes == ["base", "ft", LEAF]  # root first, the model last
    assert ">finetune<" in svg.group(0) and ">adapter<" in svg.group(0)
    # offline: no script, no external resource of any kind
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<link" not in page


def test_class_names_replace_the_renumbered_ids(reg: Registry) -> None:
    doc = model_report(reg, LEAF)
    assert doc["class_names"] == ["5", "6", "7", "8", "9"]
    page = render_html(doc)
    rows = re.findall(r"<tr><td>(\d)</td><td>(\d)</td><td>([\d.]+)</td></tr>", page)
    assert rows[:2] == [("5", "0", "0.9500"), ("6", "1", "0.9900")]
    assert "0.7100 (class 8)" in page  # the worst class decides the per-class gate
    assert "per class: 0 5 0.9500, 1 6 0.9900" in render_text(doc)


def test_the_report_is_a_record_whose_json_is_the_report_dict(reg: Registry) -> None:
    record = report_record(reg, LEAF)
    assert [e.name for e in record.lineage] == [LEAF, "ft", "base"]
    child, root = record.lineage[0], record.lineage[-1]
    assert child.relation == "adapter" and child.source == "ft" and child.current is True
    assert root.source is None and root.current is None and root.cycle is None
    assert list(child.to_dict()) == [
        *("name", "built", "id", "metrics", "train", "relation", "source_id", "source"),
        "current",
    ]
    assert record.transfer.tally == TensorCounts(12, 0, 0, 0)
    doc = model_report(reg, LEAF)
    assert record.to_dict() == doc and Report.from_dict(doc, "report") == record
    assert render_text(record) == render_text(doc) and render_html(record) == render_html(doc)
    with pytest.raises(SchemaError, match="at /lineage/1: missing required field: 'built'"):
        Report.from_dict({**doc, "lineage": [doc["lineage"][0], {"name": "ft"}]}, "report")


def test_long_names_are_cut_with_the_whole_name_as_title(reg: Registry) -> None:
    page = render_html(model_report(reg, LEAF))
    full = TENSORS[0]["name"]
    assert f"title='{full}'" in page
    assert f">{full}<" not in page  # the cell shows a cut name
    assert "class='wide'" in page


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_page_fits_a_1280_px_window_in_chromium(reg: Registry, tmp_path: Path) -> None:
    page = render_html(model_report(reg, LEAF))
    # measure in the browser: the page's own width against the window's
    probe = (
        "<script>document.title='width '+document.documentElement.scrollWidth"
        "+' of '+window.innerWidth;</script></body>"
    )
    html = tmp_path / "report.html"
    html.write_text(page.replace("</body>", probe))
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,900",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=2000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=60
    ).stdout
    found = re.search(r"<title>width (\d+) of (\d+)</title>", dom)
    assert found is not None, dom[:500]
    width, window = map(int, found.groups())
    assert window == 1280 and width <= window
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=60)
    assert _png_size(shot) == (1280, 900)
