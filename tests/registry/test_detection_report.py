"""The report's sample pictures of a detector (registry/_reportboxes.py), without torch.

A well-formed detections.json is drawn as one SVG per image; a missing, altered, linked-out,
oversized, non-regular or malformed file costs the picture only, with one line saying why.
The malformed cases are a seeded fuzz of a valid document, bounded in count and time.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from stemma.registry import Registry
from stemma.registry.publish._reportboxes import (
    Samples,
    SamplesError,
    SamplesProblem,
    load_samples,
    png,
    samples_html,
)
from stemma.registry.records.manifest import FileRef


def _doc() -> dict[str, Any]:
    pixels = bytes(range(48)) * (8 * 8 * 3 // 48)
    image = {
        "width": 8,
        "height": 8,
        "rgb": base64.b64encode(pixels).decode("ascii"),
        "truth": [{"label": 0, "box": [1.0, 1.0, 5.0, 6.0]}],
        "predicted": [{"label": 1, "score": 0.91, "box": [1.5, 1.0, 5.0, 6.5]}],
    }
    return {
        "schema_version": 1,
        "score_threshold": 0.3,
        "class_names": ["rectangle", "<script>alert(1)</script>"],
        "images": [image, copy.deepcopy(image)],
    }


def _place(reg: Registry, name: str, data: bytes) -> FileRef:
    """Write detections.json for model `name`; the manifest's record of it (`samples`)."""
    folder = reg.model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "detections.json").write_bytes(data)
    return _record(data)


def _record(data: bytes) -> FileRef:
    """The `samples` block a build records for a detections.json of `data`."""
    return FileRef(
        path="detections.json",
        md5=hashlib.md5(data).hexdigest(),
        sha256="sha256:" + hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        format="json",
    )


def test_png_is_a_valid_image(tmp_path: Path) -> None:
    from PIL import Image

    rgb = bytes((x * 7 + y * 3 + c) % 256 for y in range(5) for x in range(6) for c in range(3))
    (tmp_path / "a.png").write_bytes(png(6, 5, rgb))
    with Image.open(tmp_path / "a.png") as img:
        assert img.size == (6, 5) and img.mode == "RGB" and img.tobytes() == rgb


def test_samples_are_drawn_and_escaped(registry: Registry) -> None:
    record = _place(registry, "m", json.dumps(_doc()).encode())
    loaded = load_samples(registry, "m", record)
    assert loaded is not None and "problem" not in loaded
    page = samples_html(loaded)
    assert page.count("<svg class='boxes'") == 2
    assert page.count("<rect class='true'") == 2 and page.count("<rect class='pred'") == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 0.91" in page and "<script>" not in page
    assert load_samples(registry, "m", None) is None and samples_html(None) == ""


def test_altered_missing_linked_and_special_files_cost_the_picture(
    registry: Registry, tmp_path: Path
) -> None:
    record = _place(registry, "m", json.dumps(_doc()).encode())
    target = registry.model_dir("m") / "detections.json"
    target.write_text(json.dumps(_doc()).replace("0.91", "0.99"))  # edited after the build
    cases: dict[str, str] = {}
    cases["altered"] = str(load_samples(registry, "m", record)["problem"])  # type: ignore[index]
    target.unlink()
    cases["missing"] = str(load_samples(registry, "m", record)["problem"])  # type: ignore[index]
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_doc()))
    target.symlink_to(outside)
    cases["linked out"] = str(load_samples(registry, "m", _record(outside.read_bytes()))["problem"])  # type: ignore[index]
    target.unlink()
    os.mkfifo(target)  # a pipe must not block the report
    begin = time.monotonic()
    cases["pipe"] = str(load_samples(registry, "m", record)["problem"])  # type: ignore[index]
    assert time.monotonic() - begin < 5
    target.unlink()
    big = b" " * (5 << 20)
    cases["oversized"] = str(load_samples(registry, "m", _place(registry, "m", big))["problem"])  # type: ignore[index]
    cases["not utf-8"] = str(
        load_samples(registry, "m", _place(registry, "m", b"\xff\xfe{}"))["problem"]  # type: ignore[index]
    )
    cases["not json"] = str(load_samples(registry, "m", _place(registry, "m", b"{"))["problem"])  # type: ignore[index]
    for why, problem in cases.items():
        assert "detections.json" in problem and "\n" not in problem, why
        assert "no pictures: " in samples_html({"problem": problem})
    assert "sha256" in cases["altered"] and "does not exist" in cases["missing"]
    assert "outside" in cases["linked out"]


_BAD_VALUES: list[Any] = [
    None,
    True,
    -1,
    10**30,
    1e309,
    float("nan"),
    "x",
    "",
    [],
    {},
    [1, 2],
    0.5,
    513,
    2**63,
]


def _mutations(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `doc`."""
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _mutations(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _mutations(v, (*path, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc[path[0]] = _set(doc[path[0]], path[1:], value)
    return doc


def test_fuzzed_documents_are_drawn_or_refused_in_one_line() -> None:
    """Seeded: each value of a valid document replaced by a bad one, keys dropped or added;
    every result is a drawing or a SamplesError naming a JSON pointer, never another error."""
    rng = random.Random(28)
    base = _doc()
    paths = _mutations(base)
    outcomes = {"drawn": 0, "refused": 0}
    begin = time.monotonic()
    for _ in range(400):
        doc = copy.deepcopy(base)
        path = rng.choice(paths)
        kind = rng.random()
        if kind < 0.7:
            doc = _set(doc, path, rng.choice(_BAD_VALUES))
        elif kind < 0.85 and path and isinstance(_get(doc, path[:-1]), dict):
            del _get(doc, path[:-1])[path[-1]]
        elif isinstance(_get(doc, path), dict):
            _get(doc, path)["extra"] = 1
        try:
            Samples.from_dict(doc, "detections.json")
        except SamplesError as exc:
            assert str(exc).startswith("detections.json") and "\n" not in str(exc)
            assert "no pictures" in samples_html(doc)
            outcomes["refused"] += 1
        else:
            assert samples_html(doc).count("<svg class='boxes'") == len(doc["images"])
            outcomes["drawn"] += 1
    assert time.monotonic() - begin < 20
    assert outcomes["refused"] > 200 and outcomes["drawn"] > 0, outcomes


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def test_pixels_must_match_the_size() -> None:
    doc = _doc()
    doc["images"][1]["width"] = 9
    with pytest.raises(SamplesError, match=r"at /images/1/rgb: 192 bytes"):
        Samples.from_dict(doc, "detections.json")
    doc = _doc()
    doc["images"][0]["predicted"][0]["score"] = 1.5
    with pytest.raises(SamplesError, match=r"at /images/0/predicted/0/score"):
        Samples.from_dict(doc, "detections.json")


def test_report_imports_neither_torch_nor_torchvision() -> None:
    code = (
        "import sys\nimport stemma.registry.publish.report, stemma.registry.publish._reportboxes\n"
        "bad = [m for m in ('torch', 'torchvision', 'dvc') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not re.search("Traceback", done.stdout)


def test_a_problem_reads_as_its_record() -> None:
    """The report's `{"problem": why}` is read as a `SamplesProblem` and written back the same;
    a document of pictures reads as no problem."""
    problem = SamplesProblem.from_dict({"problem": "a <b> problem"})
    assert problem == SamplesProblem("a <b> problem")
    assert problem.to_dict() == {"problem": "a <b> problem"}
    assert SamplesProblem.from_dict(_doc()) is None and SamplesProblem.from_dict(None) is None
    assert "no pictures: a &lt;b&gt; problem" in samples_html(problem.to_dict())
