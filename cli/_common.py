"""Shared CLI pieces: option aliases, output helpers and the one error funnel."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from stemma.registry.errors import StemmaError, StemmaWarning
from typer.core import TyperGroup

from ._extras import missing_extra

JsonOpt = Annotated[bool, typer.Option("--json", help="Print stable JSON instead of a table.")]
RepoOpt = Annotated[
    Path,
    typer.Option(
        "--repo",
        "-C",
        help="Folder inside the registry (default: the current one).",
        show_default=False,
    ),
]
HistoryOpt = Annotated[
    bool,
    typer.Option("--history", help="Also provide the `versions` view, read from git history."),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an existing regular file of the same name (never a file inside the"
        " registry, a link, a pipe or a device; without it an existing file is refused).",
    ),
]


def emit_json(obj: Any) -> None:
    """Print canonical JSON on stdout: indented on a terminal, one line when piped (as `gh`
    and `jq -c` do; Python's encoder is 5x slower with an indent, which shows at 10,000
    models)."""
    sys.stdout.write(dump_json(obj, pretty=sys.stdout.isatty()) + "\n")


def dump_json(obj: Any, pretty: bool) -> str:
    """Canonical JSON text (sorted keys), indented or compact."""
    if pretty:
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def console() -> Any:
    """A rich console on stdout (imported lazily: rich is not needed for --json)."""
    from rich.console import Console

    return Console(highlight=False)


def styled_output() -> bool:
    """True when rich would style stdout: a terminal, unless TTY_COMPATIBLE or FORCE_COLOR
    say otherwise (rich's own rules, checked without importing rich)."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "1"
    force_color = os.environ.get("FORCE_COLOR")
    if force_color is not None:
        return force_color != ""
    try:
        return sys.stdout.isatty()
    except ValueError:  # a closed stream
        return False


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def debug_enabled() -> bool:
    """True when tracebacks were asked for (--traceback or STEMMA_DEBUG=1)."""
    return os.environ.get("STEMMA_DEBUG", "") not in ("", "0")


def one_line(text: str, limit: int = 1000) -> str:
    """`text` as one line of at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_unexpected(exc: BaseException) -> str:
    """One line for an error no library code raised on purpose."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return one_line(f"{where}{exc.strerror}")
    detail = one_line(str(exc), 300)
    return (
        f"internal error: {type(exc).__name__}{': ' + detail if detail else ''}"
        " (rerun with --traceback for details)"
    )


# typer's own errors (usage errors exit 2): typer renders them itself.
_CLICK_ERRORS = (typer.BadParameter.__mro__[2],)  # ClickException, which typer re-exports


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Print each distinct `StemmaWarning` raised inside as `warning: MESSAGE` on stderr
    (others as Python shows them)."""
    shown: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", StemmaWarning)
        python_way = warnings.showwarning

        def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            if not issubclass(category, StemmaWarning):
                python_way(message, category, *args, **kwargs)
            elif str(message) not in shown:
                shown.add(str(message))
                typer.echo(f"warning: {one_line(str(message))}", err=True)

        warnings.showwarning = show
        yield


class FunnelGroup(TyperGroup):
    """The root command group: turns every error into one stderr line; exit 1 for errors,
    2 for usage errors (typer's own and `UsageError`)."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run as a program: typer's usage errors become one line too (typer draws a
        five-line box), with the exit status they carry (2)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _CLICK_ERRORS as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as asked
                exc.show()
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                typer.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        """Run the command; render errors as one line unless tracebacks are on, and what the
        library skipped (`StemmaWarning`) as one `warning:` line each."""
        with warnings_to_stderr():
            return self._invoke(ctx)

    def _invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except StemmaError as exc:
            if debug_enabled():
                raise
            raise fail(one_line(exc.message), exc.exit_code) from None
        except (typer.Exit, typer.Abort, *_CLICK_ERRORS):
            raise
        except Exception as exc:  # nothing a user gives reaches them as a traceback
            if debug_enabled():
                raise
            extra = missing_extra(exc) if isinstance(exc, ModuleNotFoundError) else None
            raise fail(extra or describe_unexpected(exc)) from None


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Aligned plain-text columns on stdout: rich tables cost ~1 ms a row, too slow for
    listings of thousands of entries."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    sys.stdout.write("\n".join(lines) + "\n")
