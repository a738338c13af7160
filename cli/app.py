"""The `stemma` command: one typer app, one sub-app per noun, the verbs people type most.

A command's module (and the registry code behind it) is imported, and its typer command
built, only when that command runs or when help lists every command: doing so for all of them
took about a third of the 0.3 s that `stemma ls` and `stemma query` may take.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Iterator, MutableMapping
from types import ModuleType
from typing import Annotated, Any

import typer

from ._common import FunnelGroup

# Every top-level command and the module under stemma.cli that defines it, in the order help
# lists them (verbs, then the sub-apps).
COMMANDS: dict[str, str] = {
    "init": "registry",
    "validate": "validate",
    "ls": "registry",
    "show": "registry",
    "pipeline": "pipeline",
    "repro": "repro",
    "register": "build",
    "verify": "verify",
    "doctor": "doctor",
    "report": "report",
    "log": "versions",
    "diff": "versions",
    "tag": "versions",
    "promote": "versions",
    "checkout": "versions",
    "audit": "audit",
    "explore": "explore",
    "query": "query",
    "build": "build",
    "lineage": "lineage",
    "export": "export",
    "monitor": "monitor",
}


def mount(module: str, app: typer.Typer) -> None:
    """Add the commands that `stemma.cli.<module>` defines to `app`."""
    mod = importlib.import_module(f"{__package__}.{module}")
    if module == "build":  # a sub-app plus the `register` verb (its `register` is a command)
        app.add_typer(mod.app, name="build")
        app.command("register")(mod.register)
    else:
        mod.register(app)


def library(module: str) -> ModuleType:
    """The library module `stemma.<module>` behind a command that trains, evaluates or loads
    models, imported when that command runs rather than when its command module loads.

    Listing help (`stemma --help`, shell completion) loads every command module, and an
    install without the `build` extra has no torch, so those modules must load without it;
    a build command also pins the numeric mode before torch loads (migration/numerics.py).
    Like the command modules, such libraries are imported here, the one place that imports
    stemma modules on demand."""
    return importlib.import_module(f"stemma.{module}")


def load_commands(module: str) -> dict[str, Any]:
    """The click commands that `stemma.cli.<module>` defines, by name."""
    scratch = typer.Typer()
    mount(module, scratch)
    return dict(typer.main.get_group(scratch).commands)


class LazyCommands(MutableMapping[str, Any]):
    """The root group's commands: every name is known up front, and looking one up imports
    the module that defines it (with its siblings). Membership and listing import nothing."""

    def __init__(self, loaded: MutableMapping[str, Any]) -> None:
        self._loaded: dict[str, Any] = dict(loaded)
        self._pending: dict[str, str] = {k: v for k, v in COMMANDS.items() if k not in loaded}

    def __getitem__(self, name: str) -> Any:
        module = self._pending.get(name)
        if module is not None:
            self._pending = {k: m for k, m in self._pending.items() if m != module}
            for key, command in load_commands(module).items():
                self._loaded.setdefault(key, command)
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in self._pending

    def __iter__(self) -> Iterator[str]:
        # Declared order first (help lists commands in it), then any added later.
        yield from (k for k in COMMANDS if k in self)
        yield from (k for k in self._loaded if k not in COMMANDS)

    def __len__(self) -> int:
        return len(self._loaded.keys() | self._pending.keys())

    def __setitem__(self, name: str, command: Any) -> None:
        self._pending.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._pending.pop(name, None)
        self._loaded.pop(name, None)


class RootGroup(FunnelGroup):
    """The root group: the error funnel (a module of an uninstalled extra is one line naming
    the extra), with commands imported on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(self.commands)

    def list_commands(self, ctx: Any) -> list[str]:
        """Every command name, without importing any command."""
        return list(self.commands)


app = typer.Typer(
    name="stemma",
    cls=RootGroup,
    help="A declarative, git-versioned registry for models derived by transfer learning.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from stemma.registry import __version__

        typer.echo(f"stemma {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Show the full traceback on errors.")
    ] = False,
) -> None:
    """stemma: declare, build, version, trace, query and validate derived models."""
    if traceback:
        os.environ["STEMMA_DEBUG"] = "1"


# Read-only commands whose process may end without the interpreter's teardown: freeing
# DuckDB, the records read and every imported module takes 20-55 ms of CPU at 1,000 models
# (a tenth of what `ls` and `query` may take) and 0.14 s for `lineage` at 10,000
# (benchmarks/bench_private_apis.py, `exit`).
QUICK_EXIT = ("ls", "query", "lineage", "audit", "validate")
# The exit handlers must still run (flushes, temporary files): `atexit` runs them at teardown
# only, and this undocumented function of CPython's `atexit` runs them now. Where it is
# missing, those commands exit as the others do (benchmarks/bench_private_apis.py: `exit`).
PRIVATE_EXIT = "_run_exitfuncs"
# The cyclic collector runs after every 700 new objects by default, and each run of its
# oldest generation walks every live object: reading 10,000 models it cost a sixth of
# `stemma lineage`. A command makes few cycles: it runs after 100,000.
GC_THRESHOLD = (100_000, 20, 20)


def main(argv: list[str] | None = None) -> None:
    """Run the app on `argv` (the command line's arguments by default)."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="stemma")


def entry() -> None:
    """The `stemma` console script: `main`, then, for the commands of QUICK_EXIT, exit at once
    once the output is flushed and the exit handlers have run."""
    gc.set_threshold(*GC_THRESHOLD)
    args = sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), None)
    # without that private runner, the usual exit
    run_exit_handlers = getattr(atexit, PRIVATE_EXIT, None)
    if command not in QUICK_EXIT or run_exit_handlers is None:
        main(args)
        return
    try:
        main(args)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # what sys.exit does with a message
        print(code, file=sys.stderr)
        code = 1
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to keep
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    entry()
