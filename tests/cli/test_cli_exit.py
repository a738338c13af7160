"""The console script's quick exit (cli/app.py `entry`): read-only commands run the exit
handlers, flush and leave without the interpreter's teardown; where CPython's private runner
of the handlers is missing, they exit as every other command does, with the same result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stemma.cli.app import PRIVATE_EXIT, QUICK_EXIT
from stemma.registry import Registry

# `stemma ARGS` through `entry`, in a fresh interpreter: argv[1] "public" removes the private
# runner first. An exit handler and an object freed at teardown each leave a line on stderr.
CHILD = f"""
import atexit, os, sys
if sys.argv[1] == "public":
    delattr(atexit, {PRIVATE_EXIT!r})
atexit.register(lambda: print("exit handler ran", file=sys.stderr, flush=True))


class Teardown:
    def __del__(self, write=os.write):
        write(2, b"interpreter teardown\\n")


kept = Teardown()
from stemma.cli.app import entry
sys.argv = ["stemma", *sys.argv[2:]]
entry()
"""


def run(path: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`stemma ARGS` in `cwd` through the private (quick) or the public exit path."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run(
        [sys.executable, "-c", CHILD, path, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "code"),
    [(["ls", "--json"], 0), (["query", "SELECT * FROM no_such_table"], 1)],
    ids=["ls", "failing-query"],
)
def test_both_exit_paths_give_the_same_output_and_code(
    registry: Registry, args: list[str], code: int
) -> None:
    assert args[0] in QUICK_EXIT
    quick = run("private", args, registry.repo_root)
    usual = run("public", args, registry.repo_root)
    assert quick.returncode == usual.returncode == code, (quick.stderr, usual.stderr)
    assert quick.stdout == usual.stdout
    for res in (quick, usual):
        assert "exit handler ran" in res.stderr
    # the quick path skips the teardown; without the private runner, the teardown happens
    assert "interpreter teardown" not in quick.stderr
    assert "interpreter teardown" in usual.stderr
    if code:
        assert quick.stderr.splitlines()[0] == usual.stderr.splitlines()[0]
        assert quick.stderr.splitlines()[0].startswith("error:")


def test_other_commands_exit_through_the_teardown(registry: Registry) -> None:
    res = run("private", ["--version"], registry.repo_root)
    assert res.returncode == 0 and res.stdout.startswith("stemma ")
    assert "interpreter teardown" in res.stderr
