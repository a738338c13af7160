"""The root command loads each command's module on first use, and read-only commands import
only what they need (checked on `sys.modules` in a fresh process, never on time)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest
import typer
from stemma.cli.app import COMMANDS, app, load_commands
from stemma.registry import Registry
from typer.core import TyperGroup

# Runs `stemma ARGS` in a fresh interpreter, then prints what it imported (last stderr line).
PROBE = """
import json, sys
from stemma.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""
# Environment variables that make rich style output that is not a terminal.
STYLE_SWITCHES = ("FORCE_COLOR", "TTY_COMPATIBLE")
# Heavy or unrelated to reading the registry: none of these may load for `ls` or `query`.
NOT_NEEDED = ("torch", "dvc", "pydantic", "rich", "networkx", "jsonschema", "sklearn")
# DuckDB's Python package around its engine module, where the engine is a module of its own
# (see registry/store/_engine.py).
if importlib.util.find_spec("_duckdb") is not None:
    NOT_NEEDED += ("duckdb",)


def probe(args: list[str], cwd: Any) -> tuple[int, set[str], str]:
    """Exit code, imported module names and stdout of `stemma ARGS` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in STYLE_SWITCHES}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), proc.stdout


def test_every_module_defines_exactly_the_commands_declared_for_it() -> None:
    for module in sorted(set(COMMANDS.values())):
        declared = {name for name, where in COMMANDS.items() if where == module}
        assert set(load_commands(module)) == declared, module


def test_root_lists_every_command_in_declared_order() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    ctx = typer.Context(root)
    assert root.list_commands(ctx) == list(COMMANDS)
    assert "query" in root.commands and "nope" not in root.commands
    assert root.get_command(ctx, "nope") is None
    assert root.get_command(ctx, "ls").name == "ls"


def test_unknown_command_is_a_usage_error_with_a_suggestion(tmp_path: Any, cli) -> None:
    res = cli(["qurey", "SELECT 1"], tmp_path)
    assert res.code == 2
    assert "No such command 'qurey'" in res.stderr and "'query'" in res.stderr


@pytest.mark.parametrize(
    ("args", "loaded"),
    [
        (["ls"], "stemma.cli.registry"),
        (["query", "SELECT name FROM models ORDER BY name"], "stemma.cli.query"),
    ],
)
def test_read_commands_import_only_their_module(
    populated: Registry, args: list[str], loaded: str
) -> None:
    probe(args, populated.root)  # the first run builds the index
    code, modules, stdout = probe(args, populated.root)
    assert code == 0 and "scratch" in stdout
    assert loaded in modules
    other_commands = {f"stemma.cli.{m}" for m in COMMANDS.values()} - {loaded}
    assert sorted(modules & other_commands) == []
    assert sorted({m.split(".")[0] for m in modules} & set(NOT_NEEDED)) == []


def test_version_imports_no_command(tmp_path: Any) -> None:
    code, modules, stdout = probe(["--version"], tmp_path)
    assert code == 0 and stdout.startswith("stemma ")
    # the error funnel (with its table of extras), and no command module
    assert sorted(m for m in modules if m.startswith("stemma.cli.") and m != "stemma.cli.app") == [
        "stemma.cli._common",
        "stemma.cli._extras",
    ]
    assert "stemma.registry.store.handle" not in modules and "yaml" not in modules


@pytest.fixture
def unstyled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output that is not a terminal and not told to act as one (rich's own switches)."""
    for name in STYLE_SWITCHES:
        monkeypatch.delenv(name, raising=False)


def test_piped_query_table_is_plain_aligned_text(populated: Registry, cli, unstyled) -> None:
    sql = "SELECT name, source AS parent FROM models ORDER BY name"
    res = cli(["query", sql], populated.root)
    assert res.code == 0
    table = ["name     parent", "base", "ft       base", "scratch", "(3 rows)"]
    assert res.stdout.splitlines() == table
    res = cli(["query", "SELECT 1 AS n WHERE false"], populated.root)
    assert res.stdout == "n\n(0 rows)\n"


def test_query_cells_on_several_lines_keep_their_layout(populated: Registry, cli, unstyled) -> None:
    res = cli(["query", "SELECT 'a' || chr(10) || 'b' AS x, 1 AS y"], populated.root)
    assert res.code == 0
    assert [line.rstrip() for line in res.stdout.splitlines()] == ["x  y", "a  1", "b", "(1 row)"]
