"""Shared fixtures: isolated HOME and git identity, real registries in temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest
from stemma.cli.app import app
from stemma.migration.numerics import pin
from stemma.registry import Registry
from stemma.registry.check import consistency
from stemma.registry.store import _checkcache
from typer.testing import CliRunner

# In-process builds use the code paths that `stemma build` pins (before anything loads torch),
# so they give the same bits as the builds the tests run as commands.
pin("portable")

ISOLATED_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "DVC_NO_ANALYTICS": "1",
    "STEMMA_DEBUG": "",
}


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs with its own HOME, a fixed git identity and no DVC analytics."""
    home = tmp_path_factory.mktemp("home")
    keys = [*ISOLATED_ENV, "HOME", "DVC_SITE_CACHE_DIR", "PATH", "XDG_RUNTIME_DIR"]
    saved = {k: os.environ.get(k) for k in keys}
    saved_path = os.environ.get("PATH", "")
    os.environ.update(ISOLATED_ENV)
    os.environ["HOME"] = str(home)
    os.environ["DVC_SITE_CACHE_DIR"] = str(home / "dvc-site")
    # The sockets of monitor daemons (`stemma monitor`): the tests' own, none of the user's.
    (home / "run").mkdir(mode=0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(home / "run")
    # `dvc repro` runs `stemma build ...`: the venv's console scripts must be on PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), saved_path])
    subprocess.run(["git", "config", "--global", "init.defaultBranch", "main"], check=True)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest (and steadiest) on one intra-op thread; tests that never
    import torch do not pay for importing it here."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def new_registry(path: Path, template: Path, specs: dict[str, str] | None = None) -> Registry:
    """A copy of the initialised template registry at `path`, with `specs` written in."""
    shutil.copytree(template, path, symlinks=True)
    for rel, text in (specs or {}).items():
        write(path / rel, text)
    return Registry.open(path)


def write(path: Path, text: str) -> Path:
    """Write dedented text, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text).lstrip())
    return path


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` and return stdout."""
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory: pytest.TempPathFactory, isolated_home: Path) -> Path:
    """One initialised registry (git init + dvc init are slow), copied by `registry`."""
    return Registry.init(tmp_path_factory.mktemp("template") / "repo").repo_root


@pytest.fixture
def registry(tmp_path: Path, registry_template: Path) -> Registry:
    """A fresh registry (git + dvc initialised) in a temporary folder."""
    shutil.copytree(registry_template, tmp_path / "repo", symlinks=True)
    return Registry.open(tmp_path / "repo")


SPECS = {
    "datasets/digits-0to4/spec.yaml": """
        description: Digits 0-4.
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
        split: {eval: 0.25, seed: 0}
    """,
    "datasets/digits-5to9/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}
    """,
    "models/base/spec.yaml": """
        description: Base model on digits 0-4.
        architecture: {family: mlp, hidden: [32]}
        data: {train: digits-0to4}
        training: {epochs: 2, batch_size: 64, optimizer: adam, lr: 0.01, seed: 0}
        gates: {accuracy: ">= 0.5"}
    """,
    "models/ft/spec.yaml": """
        source: {model: base, relation: finetune}
        data: {train: digits-5to9}
        strategy: {mapping: by-name, reinit: ["head.*"]}
        training: {epochs: 2, lr: 0.01, optimizer: adam}
    """,
    "models/scratch/spec.yaml": """
        architecture: {family: mlp, hidden: [32]}
        data: {train: digits-5to9, eval: digits-5to9}
        tags: [baseline]
    """,
}


@pytest.fixture
def populated(registry: Registry) -> Registry:
    """A registry with two datasets and three models (one derived), specs only."""
    for rel, text in SPECS.items():
        write(registry.root / rel, text)
    return Registry.open(registry.root)


class Result:
    """What a CLI run produced."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr


@pytest.fixture
def cli() -> Iterator[object]:
    """Run `stemma ARGS` in-process in a folder: cli(args, cwd) -> Result."""
    runner = CliRunner()

    def run(args: list[str], cwd: Path) -> Result:
        old = Path.cwd()
        os.chdir(cwd)
        try:
            res = runner.invoke(app, args, catch_exceptions=True)
        finally:
            os.chdir(old)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        return Result(res.exit_code, res.stdout, res.stderr)

    yield run


def dvc(repo: Path, *args: str) -> str:
    """Run the real DVC command line in `repo` and return its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test count as old enough for the check to trust (they are
    seconds old: `_checkcache.RACY_NS`)."""
    monkeypatch.setattr(_checkcache, "RACY_NS", 0)


@pytest.fixture
def folder_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model folders the consistency check reads, in order (the others come from what
    the store keeps); clear it to count from a later point."""
    seen: list[str] = []
    real = consistency.model_facts

    def counting(reg: Registry, name: str) -> consistency.ModelFacts:
        seen.append(name)
        return real(reg, name)

    monkeypatch.setattr(consistency, "model_facts", counting)
    return seen
