"""`pip install stemma-ml` without extras: the read commands import nothing of the `build`
extra, a command that needs it says so in one line, and shell completion works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from conftest import git
from factories import dataset_manifest, model_manifest
from stemma.cli._extras import BUILD_MODULES
from stemma.registry import Registry
from stemma.registry.pipeline import pipefiles

READ_COMMANDS = [
    ["pipeline", "--check"],
    ["validate"],
    ["ls", "--json"],
    ["show", "ft", "--json"],
    ["log", "base", "--json"],
    ["diff", "base", "ft", "--json"],
    ["query", "SELECT name FROM models", "--json"],
    ["query", "--history", "SELECT name FROM versions", "--json"],
    ["lineage", "show", "base", "--json"],
    ["audit", "--base", "HEAD", "--json"],
    ["export", "parquet", "out/parquet"],
    ["export", "card", "ft", "out/card"],
    ["export", "openlineage", "--output", "out/events.jsonl"],
    ["tag", "base", "v1.0.0"],
    ["promote", "base", "prod"],
    ["show", "base@prod", "--json"],
]


def _committed(reg: Registry) -> Path:
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(reg, ds)
    for name in ("base", "ft", "scratch"):
        model_manifest(Registry.open(reg.root), name)
    pipefiles.write(Registry.open(reg.root))
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-q", "-m", "three models")
    return reg.repo_root


def _python(
    code: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_read_commands_import_nothing_of_the_build_extra(populated: Registry) -> None:
    repo = _committed(populated)
    proc = _python(
        f"""
        import json, sys
        from stemma.cli.app import main
        codes = []
        for args in {READ_COMMANDS!r}:
            try:
                main(args)
                codes.append(0)
            except SystemExit as exc:
                codes.append(exc.code or 0)
        build = {BUILD_MODULES!r}
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(build))
        sys.stderr.write(json.dumps({{"codes": codes, "loaded": loaded}}) + "\\n")
        """,
        repo,
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["codes"] == [0] * len(READ_COMMANDS), proc.stderr
    assert result["loaded"] == []


BLOCK_TORCH = """
import sys
from importlib.abc import MetaPathFinder

class NotInstalled(MetaPathFinder):
    # what a Python without the build extra does: torch cannot be found
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from stemma.cli.app import main
main(sys.argv[1:])
"""


def test_build_without_the_extra_is_one_line(populated: Registry) -> None:
    repo = _committed(populated)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, "build", "model", "base"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "pip install 'stemma-ml[build]'" in proc.stderr and "torch" in proc.stderr
    assert not (repo / "models" / "base" / "weights.safetensors").exists()


def test_shell_completion_lists_commands(populated: Registry) -> None:
    stemma = Path(sys.executable).with_name("stemma")
    proc = subprocess.run(
        [str(stemma)],
        cwd=populated.root,
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "_STEMMA_COMPLETE": "complete_bash",
            "COMP_WORDS": "stemma l",
            "COMP_CWORD": "1",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == {"ls", "log", "lineage"}


def test_json_flag_is_format_json(populated: Registry, cli: Any) -> None:
    """Every read command takes --json; where --format json exists, the two agree."""
    repo = _committed(populated)
    for args in (
        ["lineage", "show", "base"],
        ["lineage", "impact", "base"],
        ["query", "SELECT name, status FROM models ORDER BY name"],
        ["audit", "--base", "HEAD"],
    ):
        flag = cli([*args, "--json"], repo)
        fmt = cli([*args, "--format", "json"], repo)
        assert flag.code == fmt.code == 0, (args, flag.stderr)
        assert json.loads(flag.stdout) == json.loads(fmt.stdout)
