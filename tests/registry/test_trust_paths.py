"""Nothing is read or written outside the registry, and files parsed are regular files of
bounded size: `hf-disk:` folders whose files lead out, image folders holding a pipe or a
decompression bomb, and exports (`card`, `openlineage`, `parquet`, `report --html`) aimed
at registry files, pipes, devices and links."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import write
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.errors import StemmaError

SPLIT = "data/hf/train"
ARROW = "data-00000-of-00001.arrow"
STAMP = 0.123456  # a feature value only the outside dataset holds


def _saved(folder: Path, value: float) -> None:
    """A real `save_to_disk` folder: a DatasetDict with one train split of 16 rows."""
    datasets = pytest.importorskip("datasets")
    rows = {"a": [value + i for i in range(16)], "label": [i % 2 for i in range(16)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(folder))


@pytest.fixture
def hf(registry: Registry, tmp_path: Path) -> Registry:
    """A registry with dataset `hf` read from data/hf, and a dataset saved outside it."""
    _saved(registry.root / "data" / "hf", 0.0)
    _saved(tmp_path / "outside", STAMP)
    write(registry.root / "datasets/hf/spec.yaml", "source: hf-disk:data/hf\n")
    return Registry.open(registry.root)


def _stemma(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`stemma ARGS` in a child process: a hang is a timeout here, not a stuck suite."""
    exe = str(Path(sys.executable).parent / "stemma")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _refused_everywhere(reg: Registry, cli: Any, *names: str) -> None:
    """validate and build both fail in one line naming every text in `names`; no data made."""
    res = cli(["validate"], reg.root)
    assert res.code == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert all(n in out for n in names), out
    res = cli(["build", "dataset", "hf"], reg.root)
    assert res.code == 1, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and all(n in lines[0] for n in names), res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    assert not (reg.root / "datasets/hf/data.npz").exists()


def _state(reg: Registry) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((reg.root / SPLIT / "state.json").read_text())
    return doc


def test_a_clean_hf_disk_folder_validates_and_builds(hf: Registry, cli: Any) -> None:
    assert cli(["validate"], hf.root).code == 0
    res = cli(["build", "dataset", "hf"], hf.root)
    assert res.code == 0, res.stderr
    assert (hf.root / "datasets/hf/data.npz").is_file()


def test_an_arrow_file_linked_outside_is_refused(hf: Registry, tmp_path: Path, cli: Any) -> None:
    arrow = hf.root / SPLIT / ARROW
    arrow.unlink()
    arrow.symlink_to(tmp_path / "outside/train" / ARROW)
    _refused_everywhere(hf, cli, f"{SPLIT}/{ARROW}", "outside")


@pytest.mark.parametrize("absolute", [False, True])
def test_data_files_naming_a_path_outside_are_refused(
    hf: Registry, tmp_path: Path, cli: Any, absolute: bool
) -> None:
    state = _state(hf)
    outside = tmp_path / "outside/train" / ARROW
    state["_data_files"][0]["filename"] = (
        str(outside) if absolute else f"../../../../{outside.relative_to(tmp_path)}"
    )
    (hf.root / SPLIT / "state.json").write_text(json.dumps(state))
    _refused_everywhere(hf, cli, f"{SPLIT}/state.json", "/_data_files/0/filename")


def test_a_split_naming_a_folder_outside_is_refused(hf: Registry, cli: Any) -> None:
    (hf.root / "data/hf/dataset_dict.json").write_text('{"splits": ["../../../outside/train"]}')
    _refused_everywhere(hf, cli, "data/hf/dataset_dict.json", "/splits/0")


def test_a_state_file_that_is_a_pipe_is_refused(hf: Registry, cli: Any) -> None:
    state = hf.root / SPLIT / "state.json"
    state.unlink()
    os.mkfifo(state)
    _refused_everywhere(hf, cli, f"{SPLIT}/state.json", "named pipe")


def test_an_info_file_linked_outside_is_refused(hf: Registry, tmp_path: Path, cli: Any) -> None:
    info = hf.root / SPLIT / "dataset_info.json"
    info.unlink()
    info.symlink_to(tmp_path / "outside/train/dataset_info.json")
    _refused_everywhere(hf, cli, f"{SPLIT}/dataset_info.json", "outside")


# -- image folders --------------------------------------------------------------------------


def _png(path: Path, width: int, height: int, body: bytes = b"") -> None:
    """A grayscale PNG whose header says width x height (its pixel data may be short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = body or b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def images(registry: Registry) -> Registry:
    """Dataset `imgs` from an image folder of two classes of 4x4 gray images."""
    for cls in ("a", "b"):
        for i in range(3):
            _png(registry.root / f"imgs/{cls}/{i}.png", 4, 4)
    write(registry.root / "datasets/imgs/spec.yaml", "source: imagefolder:imgs\n")
    return Registry.open(registry.root)


def _build_refused(reg: Registry, cli: Any, *names: str, child: bool = False) -> None:
    """`build dataset imgs` fails in one line naming `names`; in a child process where the
    old code hung."""
    if child:
        proc = _stemma(["build", "dataset", "imgs"], reg.root, timeout=30)
        code, err = proc.returncode, proc.stderr
    else:
        res = cli(["build", "dataset", "imgs"], reg.root)
        code, err = res.code, res.stderr
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and all(n in lines[0] for n in names), err
    assert "internal error" not in err
    assert not (reg.root / "datasets/imgs/data.npz").exists()


def test_an_image_that_is_a_pipe_is_refused_without_opening_it(images: Registry) -> None:
    os.mkfifo(images.root / "imgs/a/x.png")
    _build_refused(images, None, "imgs/a/x.png", "named pipe", child=True)


@pytest.mark.parametrize("side", [16384, 9000])
def test_an_image_of_too_many_pixels_is_refused(images: Registry, cli: Any, side: int) -> None:
    # 256 megapixels (Pillow's own bomb error) and 81 (past stemma's bound, under Pillow's)
    _png(images.root / "imgs/b/bomb.png", side, side, body=b"\x00" * 64)
    _build_refused(images, cli, "imgs/b/bomb.png", "pixels")


def test_damaged_images_are_refused_in_one_line(images: Registry, cli: Any) -> None:
    import random

    rng = random.Random(7)
    good = (images.root / "imgs/a/0.png").read_bytes()
    for trial in range(6):
        data = bytearray(good)
        for _ in range(4):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        bad = images.root / "imgs/a/0.png"
        bad.write_bytes(bytes(data[: rng.randrange(8, len(data) + 1)]))
        res = cli(["build", "dataset", "imgs"], images.root)
        assert res.code in (0, 1), (trial, res.stderr)
        assert "internal error" not in res.stderr and "Traceback" not in res.stderr, res.stderr
        if res.code == 1:
            assert res.stderr.count("\n") == 1 and "imgs/a/0.png" in res.stderr, res.stderr


def test_damaged_images_of_every_format_raise_only_stemma_errors(tmp_path: Path) -> None:
    import random

    from PIL import Image
    from stemma.migration.data import materialize

    for cls in "ab":
        (tmp_path / "imgs" / cls).mkdir(parents=True)
    for i, suffix in enumerate((".png", ".gif", ".jpg", ".tiff", ".webp", ".bmp")):
        Image.new("RGB", (5, 4), (40 * i, 9, 200)).save(
            tmp_path / f"imgs/{'ab'[i % 2]}/{i}{suffix}"
        )
    files = sorted(tmp_path.glob("imgs/*/*"))
    good = {f: f.read_bytes() for f in files}
    rng = random.Random(11)
    for _ in range(60):
        f = rng.choice(files)
        data = bytearray(good[f])
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        f.write_bytes(bytes(data[: rng.randrange(1, len(data) + 1)]))
        with contextlib.suppress(StemmaError):
            materialize({"source": "imagefolder:imgs"}, resolve=lambda rel: tmp_path / rel)
        f.write_bytes(good[f])


# -- exports --------------------------------------------------------------------------------


@pytest.fixture
def manifests(populated: Registry) -> Registry:
    """The populated registry with manifests for its datasets and `base` (no training)."""
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(populated, ds)
    model_manifest(populated, "base")
    return Registry.open(populated.root)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def _refused(cli: Any, args: list[str], reg: Registry, *names: str) -> str:
    before = _snapshot(reg.root)
    res = cli(args, reg.root)
    assert res.code == 1, (args, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and all(n in lines[0] for n in names), res.stderr
    assert _snapshot(reg.root) == before
    return lines[0]


def _exports(reg: Registry, target: Path) -> list[list[str]]:
    """Every export aimed at `target` (a file; the folder exports at its folder)."""
    return [
        ["export", "openlineage", "--output", str(target)],
        ["report", "base", "--html", str(target)],
    ]


@pytest.mark.parametrize("overwrite", [False, True])
def test_exports_never_replace_registry_files(
    manifests: Registry, cli: Any, overwrite: bool
) -> None:
    reg = manifests
    (reg.root / "README.md").write_text("# my registry\n")
    flag = ["--overwrite"] if overwrite else []
    manifest = reg.root / "models/base/manifest.json"
    for args in _exports(reg, manifest):
        _refused(cli, [*args, *flag], reg, "models/base/manifest.json")
    _refused(cli, ["export", "card", "base", str(reg.root), *flag], reg, "README.md")
    _refused(
        cli, ["export", "card", "base", str(reg.root / "models/base"), *flag], reg, "models/base"
    )
    _refused(cli, ["export", "parquet", str(reg.root / "models"), *flag], reg, "models")


def test_exports_refuse_a_pipe_and_a_device(manifests: Registry, cli: Any, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for args in _exports(manifests, fifo):
        _refused(cli, [*args, "--overwrite"], manifests, "pipe.jsonl", "named pipe")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if os.geteuid() == 0:  # only root makes device nodes: one like /dev/full, in tmp
        dev = tmp_path / "full"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        for args in _exports(manifests, dev):
            _refused(cli, [*args, "--overwrite"], manifests, "full", "device")
        assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_exports_do_not_follow_a_link(manifests: Registry, cli: Any, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    victim = tmp_path / "elsewhere/victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(victim)
    for args in _exports(manifests, link):
        _refused(cli, [*args, "--overwrite"], manifests, "link.jsonl", "symbolic link")
    folder = tmp_path / "cards"
    folder.symlink_to(tmp_path / "elsewhere")
    _refused(cli, ["export", "card", "base", str(folder)], manifests, "cards", "symbolic link")
    _refused(cli, ["export", "parquet", str(folder)], manifests, "cards", "symbolic link")
    assert victim.read_text() == "keep me\n" and os.listdir(tmp_path / "elsewhere") == [
        "victim.txt"
    ]


def test_an_existing_file_needs_overwrite(manifests: Registry, cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    out.write_text("old\n")
    _refused(
        cli, ["export", "openlineage", "-o", str(out)], manifests, "events.jsonl", "--overwrite"
    )
    assert out.read_text() == "old\n"
    res = cli(["export", "openlineage", "-o", str(out), "--overwrite"], manifests.root)
    assert res.code == 0, res.stderr
    assert out.read_text() != "old\n"
    page = tmp_path / "report.html"
    assert cli(["report", "base", "--html", str(page)], manifests.root).code == 0
    _refused(cli, ["report", "base", "--html", str(page)], manifests, "report.html", "--overwrite")
    assert cli(["report", "base", "--html", str(page), "--overwrite"], manifests.root).code == 0
    card = tmp_path / "card"
    assert cli(["export", "card", "base", str(card)], manifests.root).code == 0
    _refused(cli, ["export", "card", "base", str(card)], manifests, "README.md", "--overwrite")
    assert cli(["export", "card", "base", str(card), "--overwrite"], manifests.root).code == 0
    views = tmp_path / "views"
    assert cli(["export", "parquet", str(views)], manifests.root).code == 0
    _refused(cli, ["export", "parquet", str(views)], manifests, "views", "--overwrite")
    assert cli(["export", "parquet", str(views), "--overwrite"], manifests.root).code == 0
    leftovers = [p.name for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_new_files_inside_the_registry_are_allowed(manifests: Registry, cli: Any) -> None:
    res = cli(["export", "openlineage", "-o", "lineage.jsonl"], manifests.root)
    assert res.code == 0, res.stderr
    assert (manifests.root / "lineage.jsonl").is_file()
    # but an export never replaces a file inside the registry, even one it wrote
    _refused(
        cli,
        ["export", "openlineage", "-o", "lineage.jsonl", "--overwrite"],
        manifests,
        "lineage.jsonl",
    )


def test_outputs_refuse_in_the_library(registry: Registry, tmp_path: Path) -> None:
    from stemma.registry.store.files import Outputs

    outputs = Outputs.for_registry(registry.repo_root, registry.root, overwrite=True)
    with pytest.raises(StemmaError, match=r"stemma\.yaml: is a file of the registry"):
        outputs.write(registry.repo_root / "stemma.yaml", "x")
    with pytest.raises(StemmaError, match=r"lies inside \.git"):
        outputs.write(registry.repo_root / ".git/hooks/post-checkout", "x")
    with pytest.raises(StemmaError, match="lies in the registry's models/ folder"):
        outputs.write(registry.root / "models/new/manifest.json", "x")
    assert outputs.write(tmp_path / "new/out.txt", "hi\n").read_text() == "hi\n"
    assert oct(os.stat(tmp_path / "new/out.txt").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_data_file_that_is_a_pipe_is_named_as_one(tmp_path: Path) -> None:
    from stemma.migration.data import materialize

    os.mkfifo(tmp_path / "t.csv")
    with pytest.raises(StemmaError, match=r"t\.csv is a named pipe, not a regular file"):
        materialize({"source": "file:t.csv"}, display="s", resolve=lambda rel: tmp_path / rel)
