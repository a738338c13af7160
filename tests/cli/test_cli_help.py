"""Every command and every option of `stemma` has help text."""

from __future__ import annotations

from typing import Any

import typer
from stemma.cli.app import app


def walk(command: Any, path: str = "stemma") -> list[tuple[str, Any]]:
    """Every (path, command) in the tree."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += walk(sub, f"{path} {name}")
    return found


def test_every_command_and_option_has_help() -> None:
    root = typer.main.get_command(app)
    missing = []
    commands = walk(root)
    assert len(commands) > 5
    for path, command in commands:
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if param.name in ("help",):
                continue
            text = getattr(param, "help", None)
            if param.param_type_name == "argument":
                text = text or getattr(param, "help", None)
            if not (text or "").strip():
                missing.append(f"{path} {param.name}")
    assert missing == []


def test_every_command_prints_json_on_request() -> None:
    leaves = [
        (path, c) for path, c in walk(typer.main.get_command(app)) if not hasattr(c, "commands")
    ]
    without = [
        path
        for path, command in leaves
        if "--json" not in [o for p in command.params for o in getattr(p, "opts", [])]
    ]
    assert without == []


def test_help_runs_for_every_command(cli, tmp_path) -> None:
    for path, _ in walk(typer.main.get_command(app)):
        res = cli([*path.split()[1:], "--help"], tmp_path)
        assert res.code == 0, path
        assert "Usage" in res.stdout
