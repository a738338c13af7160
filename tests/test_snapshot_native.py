"""The native stat loop of the index snapshot (`_statfolders`) against the Python one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write
from stemma.registry import _scan
from stemma.registry.errors import ParseError

native = pytest.importorskip("stemma.registry._statfolders")


def layout(root: Path, models: int = 8) -> Path:
    """Model and dataset folders: specs and manifests, a missing manifest, an empty folder,
    non-ASCII names, a linked folder, a hidden folder and a stray file (both left out)."""
    for i in range(models):
        write(root / f"models/m{i}/spec.yaml", f"data: {{train: d{i}}}\n")
        write(root / f"models/m{i}/manifest.json", "{}" * i)
    (root / "models/m2/manifest.json").unlink()
    write(root / "models/mödel ü/spec.yaml", "data: {train: d0}\n")
    (root / "models/empty").mkdir()
    (root / "models/link").symlink_to("m1")
    write(root / "models/.hidden/spec.yaml", "")
    write(root / "models/stray.txt", "")
    write(root / "datasets/d0/spec.yaml", "source: x\n")
    write(root / "datasets/d1/manifest.json", "{}")
    return root


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    return layout(tmp_path / "reg")


@pytest.fixture
def python_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_scan, "_native", None)
    yield


def in_fresh_process(code: str) -> Any:
    """Run `code` in a new interpreter (one whose only thread is the main one) and return
    the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("threaded", [True, False])  # on the helper thread, and in `result()`
def test_native_snapshot_equals_the_python_one(
    reg: Path, monkeypatch: pytest.MonkeyPatch, threaded: bool
) -> None:
    pending = _scan.PendingSnapshot(reg)
    assert pending._thread is not None
    if not threaded:  # as when no thread could be started
        pending._thread.join()
        pending._thread, pending._found = None, {}
    got = pending.result()
    assert pending.result() is got and pending._thread is None
    monkeypatch.setattr(_scan, "_native", None)
    want = _scan.snapshot(reg)
    assert got.names == want.names and got.numbers == want.numbers
    assert sorted(got.names["models"]) == sorted(
        ["empty", "link", "mödel ü", *(f"m{i}" for i in range(8))]
    )
    assert got.by_path()["models/m3/manifest.json"][0] == 6
    assert "models/m2/manifest.json" not in got.by_path()
    assert len(got.numbers) == 4 * (len(got.names["models"]) + 2)


def test_a_dangling_link_last_in_the_folder_is_left_out(tmp_path: Path) -> None:
    """The end of a listing is told from an error by errno alone: a failed stat of a link
    just before the end must not read as one."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models/dangling").symlink_to("nowhere")
    folder = _scan._Folder(tmp_path, "models")
    try:
        assert native.list_folders(folder.fd) == [] == folder.names()
    finally:
        folder.close()
    assert _scan.snapshot(tmp_path).names == {"models": []}


def test_list_folders_lists_what_scandir_does(reg: Path) -> None:
    odd = os.fsdecode(b"raw \xff")  # not UTF-8: a surrogate-escaped name
    os.mkdir(reg / "models" / odd)
    (reg / "models/dangling").symlink_to("nowhere")
    (reg / "models/to-file").symlink_to("stray.txt")
    folder = _scan._Folder(reg, "models")
    try:
        got = native.list_folders(folder.fd)
        assert got == folder.names()
        assert {"link", "empty", odd} <= set(got)
        assert not {"dangling", "to-file", "stray.txt", ".hidden"} & set(got)
    finally:
        folder.close()
    with pytest.raises(OSError):
        native.list_folders(-1)
    with pytest.raises(TypeError):
        native.list_folders("3")


def test_stat_folders_writes_what_stat_into_appends(reg: Path) -> None:
    odd = os.fsdecode(b"raw \xff")  # not UTF-8: a surrogate-escaped name
    os.mkdir(reg / "models" / odd)
    write(reg / "models" / odd / "spec.yaml", "")
    folder = _scan._Folder(reg, "models")
    try:
        names = [
            *folder.names(),
            "stray.txt",  # a file where the folder would be: ENOTDIR
            "gone",  # ENOENT
            *(f"m{i % 8}" for i in range(1200)),  # enough for several threads
        ]
        want: array[int] = array("q")
        _scan._stat_into(want, folder, names)
        for threads in (1, 2, 3, 7, 1000):
            assert native.stat_folders(folder.fd, names, _scan.FILES, threads) == (
                want.tobytes(),
                -1,
            )
        assert native.stat_folders(folder.fd, [], _scan.FILES, 3) == (b"", -1)
        assert native.stat_folders(folder.fd, names, (), 3) == (b"", -1)
    finally:
        folder.close()


def test_a_file_that_cannot_be_stated_is_named_as_in_python(
    reg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("m5", "m1"):  # links to themselves: ELOOP
        (reg / f"models/{name}/spec.yaml").unlink()
        (reg / f"models/{name}/spec.yaml").symlink_to("spec.yaml")
    folder = _scan._Folder(reg, "models")
    try:
        names = folder.names() * 100  # enough for several threads, each with failures
        first = min(names.index("m1"), names.index("link"), names.index("m5"))
        for threads in (1, 3):
            assert native.stat_folders(folder.fd, names, _scan.FILES, threads)[1] == first
    finally:
        folder.close()
    messages = []
    for switch in (..., None):
        monkeypatch.setattr(_scan, "_native", switch)
        pending = _scan.PendingSnapshot(reg, "sub/reg")
        with pytest.raises(ParseError) as caught:
            pending.result()
        with pytest.raises(ParseError) as again:  # the failure is kept
            pending.result()
        assert again.value is caught.value
        pending.close()
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert "sub/reg/models/" in messages[0]
    assert "cannot read: Too many levels of symbolic links" in messages[0]


def test_bad_arguments_are_refused(reg: Path) -> None:
    fd = os.open(reg / "models", os.O_RDONLY)
    try:
        stat = native.stat_folders
        for args in [
            (fd, ("m0",), _scan.FILES, 1),  # names not a list
            (fd, ["m0"], list(_scan.FILES), 1),  # files not a tuple
            (fd, ["m0", 3], _scan.FILES, 1),
            (fd, ["m0"], (b"spec.yaml",), 1),
            ("3", ["m0"], _scan.FILES, 1),
            (fd, ["m0"], _scan.FILES, 1.5),
            (fd, ["m0"], _scan.FILES),
        ]:
            with pytest.raises(TypeError):
                stat(*args)
        for args in [
            (fd, ["m0"], _scan.FILES, 0),
            (-1, ["m0"], _scan.FILES, 1),
            (fd, ["m\0"], _scan.FILES, 1),
        ]:
            with pytest.raises(ValueError):
                stat(*args)
    finally:
        os.close(fd)


def test_no_thread_is_left_once_the_snapshot_is_taken(reg: Path) -> None:
    got = in_fresh_process(f"""
import json
from stemma.registry import _scan
forkable = []
for _ in range(50):
    pending = _scan.PendingSnapshot({str(reg)!r})
    started = pending._thread is not None
    pending._join()  # what `result()` does first
    forkable.append(started and _scan._can_fork())
    pending.result()
abandoned = _scan.PendingSnapshot({str(reg)!r})
abandoned.close()  # as after an error: the thread is waited for, the folders closed
print(json.dumps([all(forkable), _scan._can_fork(), abandoned._kinds]))
""")
    assert got == [True, True, []]


def test_without_the_native_loop_child_processes_stat(reg: Path) -> None:
    got = in_fresh_process(f"""
import json
from stemma.registry import _scan
here = _scan.snapshot({str(reg)!r})
_scan._native = None
_scan.SPLIT_MIN = 2
pending = _scan.PendingSnapshot({str(reg)!r})
forked = [len(children) for _k, _f, _n, children in pending._kinds]
there = pending.result()
print(json.dumps([forked, here.names == there.names, here.numbers == there.numbers]))
""")
    assert got == [[2, 2], True, True]
