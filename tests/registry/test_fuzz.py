"""Fuzz the read commands with mutated specs, manifests, settings and trees.

Each generated case changes one thing in a small registry (a value, the bytes of a file, the
kind of file, a link, a folder), runs one read command in-process and puts the registry back.
Whatever the input, a command either succeeds or fails with one line on stderr and exit
status 1: no traceback, no error that the library did not raise on purpose, no hang, and no
file of the registry changed. The cases are seeded, so a failure names a case to replay.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SPECS, write
from factories import dataset_manifest, model_manifest
from stemma.cli.app import app
from stemma.registry import Registry
from typer.testing import CliRunner

CASES = 1000
SEED = 18
HANG_S = 10
SECRET = "outside-secret-7f3a"  # the content of a file outside the registry

COMMANDS: list[list[str]] = [
    ["validate"],
    ["ls"],
    ["show", "ft"],
    ["lineage", "show", "ft", "--format", "json"],
    ["query", "SELECT name, status FROM models ORDER BY name"],
    ["pipeline", "--check"],
]

# Files a case may change, relative to the registry root.
TARGETS = [
    "stemma.yaml",
    "models/base/spec.yaml",
    "models/ft/spec.yaml",
    "datasets/digits-0to4/spec.yaml",
    "datasets/digits-5to9/spec.yaml",
    "models/base/manifest.json",
    "datasets/digits-0to4/manifest.json",
]

BIG_INT = "9" * 5000

# YAML texts for values JSON cannot hold, or that stress the reader.
YAML_VALUES = [
    BIG_INT,
    "-" + BIG_INT,
    "1" * 400,
    "2026-12-03",
    "2026-12-03 10:00:00",
    "!!set {a, b}",
    "!!binary aGVsbG8=",
    "&a [*a]",
    "&a {x: *a}",
    ".inf",
    "-.inf",
    ".nan",
    "{0: 1, 1: 0}",
    "{1: 0, '1': 2}",
    "{null: 1}",
    "{true: 1}",
    "{[1]: 2}",
    "[" * 5000 + "]" * 5000,
    "{a: " * 3000 + "1" + "}" * 3000,
    '"a\\0b"',
    '"\\ud800"',
    "!!python/object:os.system [ls]",
    "!!float 1e400",
    "1e400",
    "-1",
    "0",
    "1.5",
    "64.0",
    "true",
    "null",
    "''",
    '"x"',
    "[]",
    "{}",
    "[1, 2, 3]",
    "[-1, 0]",
    "[1000000000000]",
    "10000000000000000000000",
    "?",
    "a" * 20000,
]

ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)

JSON_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    1.5,
    1e308,
    "",
    "x" * 10000,
    "a\x00b",
    [],
    {},
    [None],
    {"": None},
    {"0": {"1": [2]}},
]


@dataclass
class Stats:
    """What a corpus run found."""

    cases: int = 0
    failed: int = 0
    clean: int = 0
    tracebacks: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """The headline numbers."""
        return {
            "cases": self.cases,
            "failing_runs": self.failed,
            "clean_share_of_failing": round(self.clean / self.failed, 3) if self.failed else 1.0,
            "tracebacks": len(self.tracebacks),
            "hangs": len(self.hangs),
            "other_problems": len(self.problems),
        }


class Hang(BaseException):
    """A command ran past HANG_S (a BaseException: the CLI funnel must not catch it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang


def build_base(path: Path, template: Path) -> Path:
    """A registry of two datasets and three models, with manifests (no training)."""
    shutil.copytree(template, path, symlinks=True)
    for rel, text in SPECS.items():
        write(path / rel, text)
    reg = Registry.open(path)
    for name in reg.dataset_names():
        dataset_manifest(reg, name)
    for name in ("base", "ft", "scratch"):
        model_manifest(Registry.open(path), name)
    (path.parent / "outside").mkdir(exist_ok=True)
    (path.parent / "outside" / "secret.yaml").write_text(f"source: {SECRET}\n")
    (path.parent / "outside" / "evil").mkdir(exist_ok=True)
    (path.parent / "outside" / "evil" / "spec.yaml").write_text(SPECS["models/scratch/spec.yaml"])
    return path


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under `root` (but the .stemma cache and .git internals): kind and content."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if rel != "." or d not in (".stemma", ".git")]
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            info = os.lstat(full)
            key = os.path.normpath(os.path.join(rel, name))
            if stat.S_ISLNK(info.st_mode):
                out[key] = ("link", os.readlink(full))
            elif stat.S_ISREG(info.st_mode):
                with open(full, "rb") as fh:
                    out[key] = ("file", hashlib.file_digest(fh, "sha256").hexdigest())
            else:
                out[key] = ("other", stat.S_IFMT(info.st_mode))
    return out


Mutation = Callable[[Path], None]


def _set_at(doc: Any, rng: random.Random, value: Any) -> Any:
    """`doc` with `value` put at a random place (a member, an item or the whole)."""
    if isinstance(doc, dict) and doc and rng.random() < 0.8:
        key = rng.choice(sorted(doc, key=str))
        doc = dict(doc)
        doc[key] = _set_at(doc[key], rng, value)
        return doc
    if isinstance(doc, list) and doc and rng.random() < 0.8:
        doc = list(doc)
        i = rng.randrange(len(doc))
        doc[i] = _set_at(doc[i], rng, value)
        return doc
    return value


def _yaml_value(rng: random.Random, target: str, root: Path) -> Mutation:
    text = (root / target).read_text()
    doc = yaml.safe_load(text) or {}
    marker = "__FUZZ__"
    placed = _set_at(doc, rng, marker)
    if rng.random() < 0.3 and isinstance(placed, dict):
        placed = dict(placed)
        placed[rng.choice(["extra", "version", "root", "training", "select"])] = marker
    raw = yaml.safe_dump(placed, default_flow_style=True, width=10**9)
    value = rng.choice(YAML_VALUES)
    new = raw.replace(f"'{marker}'", value).replace(marker, value)
    return lambda r: (r / target).write_text(new)


def _json_value(rng: random.Random, target: str, root: Path) -> Mutation:
    doc = json.loads((root / target).read_text())
    value = rng.choice(JSON_VALUES)
    if rng.random() < 0.2:
        new = json.dumps(_set_at(doc, rng, "__BIG__")).replace('"__BIG__"', BIG_INT)
    elif rng.random() < 0.1:
        new = "[" * 100_000 + "]" * 100_000
    else:
        new = json.dumps(_set_at(doc, rng, value))
    return lambda r: (r / target).write_text(new)


def _bytes(rng: random.Random, target: str, root: Path) -> Mutation:
    data = (root / target).read_bytes()
    kind = rng.randrange(8)
    if kind == 0:
        new = data[: rng.randrange(len(data) + 1)]
    elif kind == 1:
        i = rng.randrange(len(data))
        new = data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    elif kind == 2:
        i = rng.randrange(len(data))
        new = data[:i] + bytes(rng.randrange(256) for _ in range(8)) + data[i:]
    elif kind == 3:
        new = data.decode().encode("utf-16")
    elif kind == 4:
        new = b"\xef\xbb\xbf" + data
    elif kind == 5:
        new = data + b"\n\xff\xfe\x00"
    elif kind == 6:
        new = b""
    else:
        new = data.replace(b":", b":\x00", 1)
    return lambda r: (r / target).write_bytes(new)


def _special(rng: random.Random, target: str, root: Path) -> Mutation:
    outside = root.parent / "outside"
    choices: list[Mutation] = [
        lambda r: _replace(r / target, lambda p: p.mkdir()),
        lambda r: _replace(r / target, lambda p: os.mkfifo(p)),
        lambda r: _replace(r / target, lambda p: p.symlink_to(p.name)),
        lambda r: _replace(r / target, lambda p: p.symlink_to("/dev/zero")),
        lambda r: _replace(r / target, lambda p: p.symlink_to(outside / "secret.yaml")),
        lambda r: _replace(r / target, lambda p: p.symlink_to("missing")),
    ]
    return rng.choice(choices)


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    make(path)


def _tree(rng: random.Random, root: Path) -> Mutation:
    outside = root.parent / "outside"
    choices: list[Mutation] = [
        lambda r: (r / "models" / "evil").symlink_to(outside / "evil"),
        lambda r: (r / "models" / "loop").symlink_to("loop"),
        lambda r: (r / "models" / "zero").symlink_to("/dev/zero"),
        lambda r: _replace(r / "models", lambda p: p.symlink_to(outside)),
        lambda r: _replace(r / "datasets", lambda p: p.symlink_to(outside)),
        lambda r: shutil.move(r / "models" / "base", r / "models" / "Base"),
        lambda r: shutil.move(r / "models" / "scratch", r / "models" / ("x" * 200)),
        lambda r: _replace(r / "models", lambda p: p.write_text("not a folder")),
        lambda r: os.mkfifo(r / "models" / "ft" / "metrics.json"),
        lambda r: _replace(r / "models" / "base", lambda p: p.symlink_to(r / "models" / "ft")),
        lambda r: (r / "models" / "bad\udcff").mkdir(),
        lambda r: _settings(r, "root: ..\n"),
        lambda r: _settings(r, "root: " + "a" * 5000 + "\n"),
        lambda r: _settings(r, 'root: "a\\0b"\n'),
        lambda r: _settings(r, 'root: "\\0"\n'),
        lambda r: _settings(r, "root: /etc\n"),
        lambda r: _settings(r, "version: true\n"),
        lambda r: _settings(r, "defaults: {training: {epochs: -1}}\n"),
        lambda r: _settings(r, "defaults: {training: {batch_size: 0.5}}\n"),
        lambda r: _settings(r, "entrypoints: [1, 2]\n"),
        lambda r: _settings(r, ALIAS_BOMB + "\n"),
        lambda r: (r / "models" / "base" / "spec.yaml").write_text(ALIAS_BOMB + "\n"),
        lambda r: (r / "datasets" / "digits-0to4" / "spec.yaml").write_text(
            "source: sklearn:digits\nselect: {classes: [0, 1], relabel: {0: 1, 1: 0}}\n"
        ),
    ]
    return rng.choice(choices)


def _settings(root: Path, extra: str) -> None:
    path = root / "stemma.yaml"
    if extra.startswith(("root:", "version:")):
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(extra[:4])]
        path.write_text("\n".join(lines) + "\n" + extra)
    else:
        path.write_text(path.read_text() + extra)


def mutation(rng: random.Random, root: Path) -> Mutation:
    """One random change to the registry at `root`."""
    pick = rng.random()
    if pick < 0.15:
        return _tree(rng, root)
    target = rng.choice(TARGETS)
    if pick < 0.25:
        return _special(rng, target, root)
    if pick < 0.45:
        return _bytes(rng, target, root)
    if target.endswith(".json"):
        return _json_value(rng, target, root)
    return _yaml_value(rng, target, root)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """The registry every case starts from (read commands run in a copy)."""
    return build_base(tmp_path_factory.mktemp("fuzz") / "repo", registry_template)


def restore(work: Path, pristine: Path, now: dict[str, Any], then: dict[str, Any]) -> None:
    """Put back in `work` what differs between its snapshot `now` and pristine's `then`."""
    differ = {k for k in now.keys() | then.keys() if now.get(k) != then.get(k)}
    for key in sorted(differ):
        parts = Path(key).parts
        if any(str(Path(*parts[:i])) in differ for i in range(1, len(parts))):
            continue  # put back with the folder above it
        path, source = work / key, pristine / key
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, path, symlinks=True)
        elif os.path.lexists(source):
            shutil.copy2(source, path, follow_symlinks=False)


def run_corpus(pristine: Path, work: Path, cases: int = CASES, seed: int = SEED) -> Stats:
    """Run `cases` generated cases; what they found."""
    rng = random.Random(seed)
    runner = CliRunner()
    stats = Stats()
    old_cwd = Path.cwd()
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work, symlinks=True)
    then = snapshot(pristine)
    try:
        for case in range(cases):
            change = mutation(rng, work)
            args = COMMANDS[case % len(COMMANDS)]
            label = f"case {case} ({' '.join(args)})"
            change(work)
            before = snapshot(work)
            stats.cases += 1
            os.chdir(work)
            signal.alarm(HANG_S)
            try:
                res = runner.invoke(app, args, catch_exceptions=True)
            except Hang:
                stats.hangs.append(label)
                stats.failed += 1
                continue
            finally:
                signal.alarm(0)
                os.chdir(old_cwd)
                after = snapshot(work)
                restore(work, pristine, after, then)
            if after != before:
                changed = sorted(
                    k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
                )
                stats.problems.append(f"{label}: changed {changed[:3]}")
            _judge(stats, label, args, res)
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        os.chdir(old_cwd)
    return stats


def _judge(stats: Stats, label: str, args: list[str], res: Any) -> None:
    err = res.stderr
    out = res.stdout
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stats.failed += 1
        stats.tracebacks.append(f"{label}: {type(res.exception).__name__}: {res.exception!s:.200}")
        return
    if res.exit_code == 0:
        if SECRET in out + err:
            stats.problems.append(f"{label}: printed the content of an outside file")
        return
    stats.failed += 1
    lines = err.splitlines()
    problem = None
    if res.exit_code != 1:
        problem = f"exit {res.exit_code}"
    elif "Traceback" in err or "internal error" in err:
        stats.tracebacks.append(f"{label}: {err.strip()[-200:]}")
        return
    elif SECRET in out + err:
        problem = "printed the content of an outside file"
    elif args[0] != "validate" and len(lines) != 1:
        problem = f"{len(lines)} lines on stderr"
    elif not lines or any(not ln.strip() for ln in lines):
        problem = "no message"
    if problem:
        stats.problems.append(f"{label}: {problem}: {err.strip()[:200]!r}")
    else:
        stats.clean += 1


def test_fuzz_read_commands(base: Path, tmp_path: Path) -> None:
    """Every generated case ends in success or in one clean line with exit 1."""
    stats = run_corpus(base, tmp_path / "work")
    found = stats.tracebacks + stats.hangs + stats.problems
    assert not found, f"{stats.figures()}\n" + "\n".join(found[:20])
    assert stats.cases >= 1000
    assert stats.failed > stats.cases // 3  # the corpus does break things


def corpus_figures(base: Path, work: Path) -> Iterator[str]:
    """Lines describing a corpus run (for measuring by hand)."""
    stats = run_corpus(base, work)
    yield json.dumps(stats.figures())
    yield from stats.tracebacks + stats.hangs + stats.problems


# -- named cases: each input class of the corpus, with the message it gets -------------------


def _one_line(cli: Any, args: list[str], cwd: Path, *expected: str, code: int = 1) -> str:
    res = cli(args, cwd)
    assert res.code == code, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    plain = re.sub(r":\d+ at /", " at /", lines[0])  # the YAML line, where known
    for text in expected:
        assert text in plain, lines[0]
    return str(lines[0])


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("version: true\nroot: .\n", "stemma.yaml at /version"),
        ("version: 1\nroot: .\ndefaults: {training: {epochs: -1}}\n", "/defaults/training/epochs"),
        (
            "version: 1\nroot: .\ndefaults: {training: {batch_size: 64.0}}\n",
            "/defaults/training/batch_size",
        ),
        ('version: 1\nroot: "a\\0b"\n', "stemma.yaml at /root: text holds a NUL character"),
        ("version: 1\nroot: " + "a" * 5000 + "\n", "stemma.yaml at /root"),
        ("version: 1\nroot: .\nx: 2026-12-03\n", "stemma.yaml at /x: a date"),
        (ALIAS_BOMB + "\nversion: 1\n", "stemma.yaml at /"),
    ],
)
def test_bad_settings_are_one_line(
    populated: Registry, cli: Any, settings: str, expected: str
) -> None:
    (populated.repo_root / "stemma.yaml").write_text(settings)
    _one_line(cli, ["ls"], populated.repo_root, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data: {train: digits-0to4}\ntraining: {batch_size: 32.0}\n", "at /training/batch_size"),
        ("data: {train: digits-0to4}\ntraining: {epochs: -3}\n", "at /training/epochs"),
        ("data: {train: digits-0to4}\ntraining: {lr: 1.0e+9}\n", "at /training/lr"),
        ("data: {train: digits-0to4}\ntraining: {seed: -1}\n", "at /training/seed"),
        (
            "data: {train: digits-0to4}\narchitecture: {family: mlp, hidden: [100000000]}\n",
            "at /architecture/hidden/0",
        ),
        (f"data: {{train: digits-0to4}}\ntraining: {{seed: {BIG_INT}}}\n", "number is too large"),
        ("data: {train: digits-0to4}\ntags: !!set {a, b}\n", "at /tags: a set"),
        ("data: {train: digits-0to4}\ndescription: !!binary aGVsbG8=\n", "binary data"),
        ("data: &a {train: *a}\n", "recursive alias"),
        ("data: {train: digits-0to4}\nx: " + "[" * 200 + "]" * 200 + "\n", "nested more than"),
    ],
)
def test_values_training_cannot_take_are_refused_by_validate_and_build(
    populated: Registry, cli: Any, text: str, expected: str
) -> None:
    (populated.root / "models" / "base" / "spec.yaml").write_text(text)
    res = cli(["validate"], populated.root)
    assert res.code == 1 and "models/base/spec.yaml" in res.stderr and expected in res.stderr
    _one_line(cli, ["show", "base"], populated.root, "models/base/spec.yaml", expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("source: x\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
        (b"source: \xff\n", "is not UTF-8 text (byte 0xff)"),
        (b"source: a\x00b\n", "holds a NUL character"),
    ],
)
def test_text_that_is_not_utf8_is_named(
    populated: Registry, cli: Any, data: bytes, expected: str
) -> None:
    (populated.root / "datasets" / "digits-0to4" / "spec.yaml").write_bytes(data)
    _one_line(cli, ["lineage", "show", "base"], populated.root, "digits-0to4/spec.yaml", expected)


@pytest.mark.parametrize("kind", ["folder", "fifo", "loop", "zero"])
def test_a_spec_that_is_no_regular_file_is_refused_without_blocking(
    populated: Registry, cli: Any, kind: str
) -> None:
    for name in populated.dataset_names():
        dataset_manifest(populated, name)
    model_manifest(populated, "base")
    model_manifest(populated, "ft")  # listed by its manifest whatever its spec is
    spec = populated.root / "models" / "ft" / "spec.yaml"
    spec.unlink()
    if kind == "folder":
        spec.mkdir()
    elif kind == "fifo":
        os.mkfifo(spec)
    elif kind == "loop":
        spec.symlink_to(spec.name)
    else:
        spec.symlink_to("/dev/zero")
    expected = "models/ft/spec.yaml"
    for args in (["show", "ft"], ["ls"], ["pipeline", "--check"]):
        _one_line(cli, args, populated.root, expected)


def test_relabel_with_integer_keys_validates(populated: Registry, cli: Any) -> None:
    spec = populated.root / "datasets" / "digits-5to9" / "spec.yaml"
    spec.write_text("source: sklearn:digits\nselect: {classes: [5, 6], relabel: {5: 0, 6: 1}}\n")
    res = cli(["validate"], populated.root)
    assert res.code == 0, res.stderr
    assert populated.dataset_spec("digits-5to9").select.relabel == {"5": 0, "6": 1}


def test_an_entrypoint_only_counts_for_the_entrypoint_family(populated: Registry, cli: Any) -> None:
    spec = populated.root / "models" / "scratch" / "spec.yaml"
    spec.write_text(
        "architecture: {family: mlp, entrypoint: 'os:system'}\ndata: {train: digits-5to9}\n"
    )
    res = cli(["validate"], populated.root)  # a field the family does not read is an error
    assert res.code == 1 and "'entrypoint' is not read by family 'mlp'" in res.stderr
    spec.write_text(
        "architecture: {family: entrypoint, entrypoint: 'os:system'}\ndata: {train: digits-5to9}\n"
    )
    res = cli(["validate"], populated.root)
    assert res.code == 1 and "[untrusted-entrypoint]" in res.stderr


def test_a_build_refuses_what_validate_refuses(populated: Registry, cli: Any) -> None:
    write(populated.root / "datasets" / "ext" / "spec.yaml", "source: entrypoint:os:getcwd\n")
    res = cli(["validate"], populated.root)
    assert res.code == 1
    (line,) = [ln for ln in res.stderr.splitlines() if "datasets/ext" in ln]
    _one_line(cli, ["build", "dataset", "ext"], populated.root, line.partition(" [")[0])


def test_a_garbage_data_file_is_one_line(populated: Registry, cli: Any) -> None:
    dataset_manifest(populated, "digits-0to4")
    (populated.root / "datasets" / "digits-0to4" / "data.npz").write_bytes(b"PK\x03\x04garbage")
    _one_line(
        cli, ["build", "model", "base", "-q"], populated.root, "data.npz is not a readable .npz"
    )


def test_usage_errors_exit_2(populated: Registry, cli: Any) -> None:
    _one_line(
        cli,
        ["register", "x", "--weights", "w.safetensors", "--hidden", "8"],
        populated.root,
        "need --family",
        code=2,
    )


def test_an_invalid_folder_name_and_a_cycle_name_their_file(populated: Registry, cli: Any) -> None:
    os.rename(populated.root / "models" / "scratch", populated.root / "models" / "Scratch")
    _one_line(cli, ["pipeline", "--check"], populated.root, "models/Scratch/spec.yaml: invalid")
    os.rename(populated.root / "models" / "Scratch", populated.root / "models" / "scratch")
    (populated.root / "models" / "base" / "spec.yaml").write_text(
        "source: {model: ft}\ndata: {train: digits-0to4}\n"
    )
    _one_line(
        cli, ["pipeline", "--check"], populated.root, "spec.yaml at /source/model: lineage cycle"
    )


def test_unexpected_errors_are_one_line_with_a_hint(populated: Registry, cli: Any) -> None:
    from stemma.registry.query import listing

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("boom\nsecond line")

    original = listing.list_entries
    listing.list_entries = broken  # type: ignore[assignment]
    try:
        line = _one_line(cli, ["ls"], populated.root, "internal error: TypeError: boom second")
    finally:
        listing.list_entries = original  # type: ignore[assignment]
    assert "--traceback" in line


def test_a_file_past_the_size_limit_is_not_read(populated: Registry, cli: Any) -> None:
    from stemma.registry.store.files import MAX_TEXT_BYTES

    spec = populated.root / "models" / "base" / "spec.yaml"
    with open(spec, "ab") as fh:
        fh.truncate(MAX_TEXT_BYTES + 1)
    _one_line(cli, ["show", "base"], populated.root, "models/base/spec.yaml: is", "allowed")
