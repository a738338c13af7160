"""The monitor daemon (`stemma monitor`): a new handle whose index the daemon vouches for
stats no spec, manifest or lock, and every change is still seen at once (in-place edits with
the old stamp put back, same-size same-mtime copies, writes through a hard link elsewhere,
folders added, removed or switched, locks, the models folder swapped, a daemon restarted);
anything the daemon cannot vouch for is the full check."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from stemma.registry import Registry
from stemma.registry.query.sql import query
from stemma.registry.rules.commits import COMMITTING
from stemma.registry.store import fsmonitor
from stemma.registry.store.index import open_index

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import synth
from test_monitor import ROWS, _spec, _swapped

Changes = Callable[[Path, Path], None]
WIDE = "SELECT name, relation, id, status FROM models ORDER BY name"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-model synthetic registry with a dvc.lock per built model, in git."""
    root = tmp_path_factory.mktemp("fsm") / "reg"
    synth.generate(root, 30, shape="mixed", seed=5, family_size=10, locks=True)
    git(root, "init", "-q")
    return root


@pytest.fixture
def root(synthetic: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic registry."""
    shutil.copytree(synthetic, tmp_path / "reg", symlinks=True)
    return tmp_path / "reg"


class Daemon:
    """`fsmonitor.serve` on a thread of this process, as `stemma monitor run` runs it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(30) or self.error is not None
        if self.error is not None:
            raise self.error

    def _serve(self) -> None:
        try:
            fsmonitor.serve(self.root, ready=lambda _path: self.ready.set())
        except BaseException as exc:  # reported to the test's thread
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        if self.thread.is_alive():
            fsmonitor.stop(self.root)
            self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def daemon(root: Path) -> Iterator[Daemon]:
    running = Daemon(root)
    yield running
    running.stop()


def _open(root: Path) -> dict[str, float]:
    """A new handle's open of the index: the steps it took."""
    with open_index(Registry.open(root)) as index:
        return dict(index.stats.phases)


def _rows(root: Path, sql: str = ROWS) -> Any:
    """A new handle's answer."""
    return query(Registry.open(root), sql).rows


def _truth(root: Path, sql: str = ROWS) -> Any:
    """The answer of the full check on a copy of the files (no daemon watches the copy, and
    the registry's own index is left as it is)."""
    copy = root.parent / f"truth-{len(list(root.parent.glob('truth-*')))}"
    shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".stemma"))
    assert fsmonitor.token(copy) is None
    try:
        return _rows(copy, sql)
    finally:
        shutil.rmtree(copy)


def test_an_open_the_daemon_vouches_for_stats_no_file(
    root: Path, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "snapshot" in _open(root)  # the first open checks every file, then records the token
    calls: list[str] = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def counted(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            calls.append(str(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, counted)
    phases = _open(root)
    monkeypatch.undo()
    assert "ask" in phases and "snapshot" not in phases, phases
    inside = (str(root / "models") + "/", str(root / "datasets") + "/")
    assert calls and not [c for c in calls if c.startswith(inside)], calls


def _edit_in_place(spec: Path) -> None:
    """The spec's relation changed at the same length, its old stamp put back."""
    edited, _new = _swapped(spec.read_text())
    st = spec.stat()
    with open(spec, "r+") as fh:
        fh.write(edited)
    os.utime(spec, ns=(st.st_atime_ns, st.st_mtime_ns))


def _in_place_edit(root: Path, _tmp: Path) -> None:
    _edit_in_place(_spec_of(root, 7))


def _same_stamp_copy(root: Path, tmp: Path) -> None:
    spec = _spec_of(root, 8)
    edited, _new = _swapped(spec.read_text())
    staged = tmp / "spec.yaml"
    staged.write_text(edited)
    st = spec.stat()
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copy2(staged, spec)


def _through_a_hard_link(root: Path, tmp: Path) -> None:
    os.link(_spec_of(root, 9), tmp / "linked.yaml")
    _edit_in_place(tmp / "linked.yaml")


def _folder_added(root: Path, _tmp: Path) -> None:
    shutil.copytree(root / "models" / synth.model_name(3), root / "models" / "zz-new")


def _folder_removed(root: Path, _tmp: Path) -> None:
    shutil.rmtree(root / "models" / synth.model_name(4))


def _switch_interrupted(root: Path, _tmp: Path) -> None:
    folder = root / "models" / synth.model_name(5)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / COMMITTING).mkdir()
    (folder / COMMITTING / "manifest.json").write_text(json.dumps(dict(manifest, id="x")))


def _lock_rewritten(root: Path, _tmp: Path) -> None:
    lock = root / "models" / synth.model_name(6) / "dvc.lock"
    text = lock.read_text()
    st = lock.stat()
    at = text.index("md5: ", text.index("weights.safetensors", text.index("outs:"))) + 5
    with open(lock, "r+") as fh:  # the weights' md5 changed, at the same length and stamp
        fh.write(text[:at] + "f" * 32 + text[at + 32 :])
    os.utime(lock, ns=(st.st_atime_ns, st.st_mtime_ns))


def _models_swapped(root: Path, tmp: Path) -> None:
    models = root / "models"
    shutil.copytree(models, tmp / "other")
    shutil.rmtree(tmp / "other" / synth.model_name(6))
    os.rename(models, tmp / "old-models")
    os.rename(tmp / "other", models)


def _spec_of(root: Path, i: int) -> Path:
    return _spec(Registry.open(root), i)


@pytest.mark.parametrize(
    "change",
    [
        _in_place_edit,
        _same_stamp_copy,
        _through_a_hard_link,
        _folder_added,
        _folder_removed,
        _switch_interrupted,
        _lock_rewritten,
        _models_swapped,
    ],
)
def test_every_change_is_seen_by_the_next_new_handle(
    root: Path, daemon: Daemon, tmp_path: Path, change: Changes
) -> None:
    before = _rows(root, WIDE)
    _open(root)
    assert "snapshot" not in _open(root)  # vouched for
    change(root, tmp_path)
    after = _rows(root, WIDE)
    assert after == _truth(root, WIDE)
    assert after != before
    _open(root)  # (the interrupted switch is finished by the open after it: one more check)
    assert "snapshot" not in _open(root)  # the next generation vouches again


def test_seeded_random_changes_match_the_full_check(
    root: Path, daemon: Daemon, tmp_path: Path
) -> None:
    rng = random.Random(7)
    models = root / "models"
    for step in range(10):
        name = rng.choice(sorted(p.name for p in models.iterdir()))
        action = rng.choice([_in_place_edit, _same_stamp_copy, "touch", "copy", "remove"])
        spec = models / name / "spec.yaml"
        if action == "touch" and spec.exists():
            os.utime(spec)
        elif action == "copy":
            shutil.copytree(models / name, models / f"copy-{step}")
        elif action == "remove" and (models / name / "manifest.json").exists():
            os.unlink(models / name / "manifest.json")
        elif callable(action):
            (tmp_path / str(step)).mkdir()
            action(root, tmp_path / str(step))
        assert _rows(root, WIDE) == _truth(root, WIDE), (step, action, name)


def test_a_restarted_daemon_is_another_epoch(root: Path, daemon: Daemon) -> None:
    _open(root)
    first = fsmonitor.token(root)
    assert first is not None and first == fsmonitor.token(root)
    daemon.stop()
    assert fsmonitor.token(root) is None
    assert "snapshot" in _open(root)  # no daemon: the full check
    again = Daemon(root)
    try:
        second = fsmonitor.token(root)
        assert second is not None and second.split(":")[0] != first.split(":")[0]
        assert "snapshot" in _open(root)  # a token the index never recorded
        assert "snapshot" not in _open(root)
    finally:
        again.stop()


def test_a_check_without_the_daemon_forgets_its_token(
    root: Path, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    _open(root)
    token = fsmonitor.token(root)
    _in_place_edit(root, root.parent)
    with monkeypatch.context() as patch:  # a full check that finds the edit, asking no daemon
        elsewhere = root.parent / "no-daemon"
        elsewhere.mkdir(mode=0o700)
        patch.setenv("XDG_RUNTIME_DIR", str(elsewhere))
        assert fsmonitor.token(root) is None
        assert "snapshot" in _open(root)
    import duckdb

    con = duckdb.connect(str(root / ".stemma" / "index.duckdb"), read_only=True)
    try:
        keys = dict(con.execute("SELECT key, value FROM raw.meta").fetchall())
    finally:
        con.close()
    assert "watched" not in keys and token is not None


def test_what_cannot_vouch_is_the_full_check(root: Path, tmp_path: Path) -> None:
    path = fsmonitor.socket_path(root, create=True)
    assert path is not None
    # A socket nobody listens on (a daemon that died), a regular file, another user's folder.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    assert fsmonitor.token(root) is None and "snapshot" in _open(root)
    path.unlink()
    path.write_text("ok x:1 0:0\n")
    assert fsmonitor.token(root) is None
    path.unlink()
    os.chmod(path.parent, 0o755)
    try:
        assert fsmonitor.runtime_dir() is None and fsmonitor.token(root) is None
    finally:
        os.chmod(path.parent, 0o700)


def test_a_daemon_of_the_folder_that_was_there_is_not_believed(root: Path, daemon: Daemon) -> None:
    _open(root)
    assert fsmonitor.token(root) is not None
    os.rename(root, root.parent / "moved")
    shutil.copytree(root.parent / "moved", root, symlinks=True)
    assert fsmonitor.token(root) is None  # the socket's name, another folder
    assert "snapshot" in _open(root)


def test_no_daemon_where_no_monitor_can_run(root: Path) -> None:
    folder = root / "models" / synth.model_name(2)
    os.rename(folder, root / "elsewhere")
    os.symlink(root / "elsewhere", folder)
    with pytest.raises(fsmonitor.MonitorError, match="cannot be watched"):
        fsmonitor.serve(root)
    assert fsmonitor.status(root) is None


def test_the_commands_start_report_and_stop_a_daemon(root: Path) -> None:
    stemma = str(Path(sys.executable).with_name("stemma"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [stemma, "monitor", *args], cwd=root, capture_output=True, text=True, timeout=120
        )

    listed = _rows(root)
    try:
        started = run("start")
        assert started.returncode == 0 and "watching" in started.stdout, started.stderr
        pid = fsmonitor.status(root)["pid"]  # type: ignore[index]
        assert run("start").stdout.startswith("a monitor already watches")
        shown = run("status", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["daemon"]["pid"] == pid
        assert _rows(root) == listed
        assert "snapshot" not in _open(root)
        stopped = run("stop")
        assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        fsmonitor.stop(root)
    gone = run("status")
    assert gone.returncode == 1 and gone.stdout.startswith("no monitor watches")
    assert not [p for p in fsmonitor.runtime_dir().iterdir() if p.suffix == ".sock"]  # type: ignore[union-attr]
    # A registry no monitor can watch: one line, exit 1, no traceback.
    folder = root / "models" / synth.model_name(2)
    os.rename(folder, root / "elsewhere")
    os.symlink(root / "elsewhere", folder)
    failed = run("run")
    assert failed.returncode == 1 and "cannot be watched" in failed.stderr
    assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1


def test_watches_that_cannot_be_placed_are_no_token_then_tried_again(
    root: Path, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    _open(root)
    folder = root / "models" / synth.model_name(2)
    os.rename(folder, root / "elsewhere")
    os.symlink(root / "elsewhere", folder)  # a link among the folders: no watches
    assert fsmonitor.token(root) is None
    assert "snapshot" in _open(root)
    os.unlink(folder)
    os.rename(root / "elsewhere", folder)
    assert fsmonitor.token(root) is None  # not tried again at once
    monkeypatch.setattr(fsmonitor, "RETRY_S", 0.0)
    assert fsmonitor.token(root) is not None


def _appear_and_change(root: Path, tmp_path: Path, agrees: Callable[[], None]) -> None:
    """Each step makes a folder or file appear, then the next changes it in place with its
    old stamp: seen only if the watches followed what appeared; `agrees` after each step."""
    models = root / "models"
    shutil.copytree(models / synth.model_name(3), tmp_path / "staged")
    os.rename(tmp_path / "staged", models / "zz-moved-in")  # a folder moved in
    agrees()
    _edit_in_place(models / "zz-moved-in" / "spec.yaml")
    agrees()
    os.rename(models / "zz-moved-in", models / "zz-renamed")  # renamed within models/
    agrees()
    _edit_in_place(models / "zz-renamed" / "spec.yaml")
    agrees()
    (models / ".zz-hidden").mkdir()  # made under a dot name, then renamed into view
    shutil.copy2(models / synth.model_name(4) / "spec.yaml", models / ".zz-hidden" / "spec.yaml")
    os.rename(models / ".zz-hidden", models / "zz-shown")
    agrees()
    _edit_in_place(models / "zz-shown" / "spec.yaml")
    agrees()
    spec = models / synth.model_name(5) / "spec.yaml"
    staged = spec.with_name("spec.yaml.tmp")
    shutil.copy2(spec, staged)
    os.replace(staged, spec)  # a new inode under the spec's name (an atomic write)
    agrees()
    os.link(spec, tmp_path / "spec-elsewhere.yaml")
    _edit_in_place(tmp_path / "spec-elsewhere.yaml")  # seen by the new inode's own watch only
    agrees()
    manifest = models / synth.model_name(6) / "manifest.json"
    text = manifest.read_text()
    manifest.unlink()
    agrees()
    manifest.write_text(text)  # made again
    agrees()
    doc = json.loads(text)
    manifest.write_text(json.dumps(dict(doc, id="sha256:" + "ab" * 32)).ljust(len(text)))
    agrees()


def test_what_appears_is_watched_from_then_on(root: Path, daemon: Daemon, tmp_path: Path) -> None:
    _open(root)
    started = fsmonitor.status(root)
    assert started is not None

    def agrees() -> None:
        assert _rows(root, WIDE) == _truth(root, WIDE)
        _open(root)
        assert "snapshot" not in _open(root)

    _appear_and_change(root, tmp_path, agrees)
    # The watches followed every step: the daemon never placed them anew.
    now = fsmonitor.status(root)
    assert now is not None and now["starts"] == started["starts"] == 1
    assert now["generation"] > started["generation"]


def test_a_kept_open_handle_keeps_its_watches_through_what_appears(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stemma.registry.store._monitor import Monitor

    starts: list[Path] = []
    real = Monitor.start.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Monitor], where: Path) -> Monitor | None:
        starts.append(where)
        return real(cls, where)  # type: ignore[no-any-return]

    monkeypatch.setattr(Monitor, "start", classmethod(counted))
    handle = Registry.open(root)
    query(handle, "SELECT 1")
    query(handle, "SELECT 1")  # the second query places the watches

    def agrees() -> None:
        assert query(handle, WIDE).rows == _truth(root, WIDE)

    _appear_and_change(root, tmp_path, agrees)
    assert len(starts) == 1, starts
