"""`stemma monitor`: a daemon that watches the registry, so commands skip the stat of every file.

Like `git fsmonitor--daemon`: `start` runs it in the background, `run` in the foreground,
`stop` ends it and `status` says whether one runs. While it runs, a command (or a script's
`Registry.open`) learns from it whether any spec, manifest or dvc.lock changed since the
index was last brought in step, instead of stat-ing every one (`registry/store/fsmonitor.py`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from stemma.registry import Registry
from stemma.registry.store import fsmonitor

from ._common import JsonOpt, RepoOpt, emit_json

app = typer.Typer(
    help="A daemon that watches the registry's files, so commands need not stat each one.",
    no_args_is_help=True,
)
# How long `start` waits for the daemon's first answer (its watches placed).
START_WAIT_S = 60.0


def register(root: typer.Typer) -> None:
    """Mount the `monitor` sub-app on the root app."""
    root.add_typer(app, name="monitor")


def _root(repo: Path) -> Path:
    return Registry.open(repo).root


@app.command("run")
def run(json_: JsonOpt = False, repo: RepoOpt = Path(".")) -> None:
    """Watch the registry in the foreground until stopped (Ctrl-C, `stemma monitor stop`)."""
    root = _root(repo)

    def ready(path: Path) -> None:
        if json_:
            emit_json({"root": str(root), "socket": str(path), "pid": os.getpid()})
        else:
            typer.echo(f"watching {root} ({path})")
        sys.stdout.flush()

    def stopped(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)
    with contextlib.suppress(KeyboardInterrupt):
        fsmonitor.serve(root, ready=ready)


@app.command("start")
def start(json_: JsonOpt = False, repo: RepoOpt = Path(".")) -> None:
    """Start watching the registry in the background (nothing to do if a daemon runs)."""
    root = _root(repo)
    running = fsmonitor.status(root)
    if running is not None:
        if json_:
            emit_json({"root": str(root), "started": False, "pid": running.get("pid")})
        else:
            typer.echo(f"a monitor already watches {root} (pid {running.get('pid')})")
        return
    log = fsmonitor.socket_path(root, create=True)
    if log is None:
        raise fsmonitor.MonitorError("no runtime folder of this user's alone for the socket")
    log = log.with_suffix(".log")
    code = "import sys; from stemma.cli.app import entry; sys.argv[0] = 'stemma'; entry()"
    with open(log, "wb") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "monitor", "run", "--repo", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        found = fsmonitor.status(root)
        if found is not None and found.get("pid") == proc.pid:
            if json_:
                emit_json({"root": str(root), "started": True, "pid": proc.pid})
            else:
                typer.echo(f"watching {root} (pid {proc.pid})")
            return
        if proc.poll() is not None:
            reason = _last_line(log) or f"it exited with status {proc.returncode}"
            raise fsmonitor.MonitorError(f"the monitor did not start: {reason}")
        time.sleep(0.05)
    proc.terminate()
    raise fsmonitor.MonitorError(f"the monitor did not answer within {START_WAIT_S:.0f} s")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("error: ") if lines else ""


@app.command("stop")
def stop(json_: JsonOpt = False, repo: RepoOpt = Path(".")) -> None:
    """Stop the daemon watching the registry (nothing to do if none runs)."""
    root = _root(repo)
    running = fsmonitor.status(root)
    pid = None if running is None else running.get("pid")
    stopped = running is not None and fsmonitor.stop(root)
    deadline = time.monotonic() + 10.0
    while stopped and isinstance(pid, int) and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    if json_:
        emit_json({"root": str(root), "stopped": stopped, "pid": pid if stopped else None})
    elif stopped:
        typer.echo(f"stopped the monitor of {root} (pid {pid})")
    else:
        typer.echo(f"no monitor watches {root}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of this process (a test's `start`) stays a zombie until reaped.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


@app.command("status")
def status(json_: JsonOpt = False, repo: RepoOpt = Path(".")) -> None:
    """Say whether a daemon watches the registry (exit 1 when none does)."""
    root = _root(repo)
    running = fsmonitor.status(root)
    if json_:
        emit_json({"root": str(root), "running": running is not None, "daemon": running})
    elif running is None:
        typer.echo(f"no monitor watches {root}")
    else:
        typer.echo(
            f"watching {root} (pid {running.get('pid')}, generation"
            f" {running.get('generation')}, {running.get('answers')} answers)"
        )
    if running is None:
        raise typer.Exit(1)
