"""`stemma repro`: hand DVC exactly the stale stages the index knows of, in lineage order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from stemma.registry import Registry
from stemma.registry.pipeline import repro as lib

from ._common import JsonOpt, RepoOpt, emit_json

# Targets per `dvc repro` process: far below the kernel's limit on a command line.
CHUNK = 2000


def register(app: typer.Typer) -> None:
    """Mount `repro` on the root app."""
    app.command("repro")(repro)


def repro(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models or datasets: these and the stale stages they are built from.",
            show_default=False,
        ),
    ] = None,
    dry: Annotated[
        bool, typer.Option("--dry", help="Print the DVC stages in order; run nothing.")
    ] = False,
    downstream: Annotated[
        bool,
        typer.Option("--downstream", help="With targets: these and every stage derived from them."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", "-f", help="Run the stages even when DVC finds them unchanged."),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Run up to N stages at once: each as its own `dvc repro --single-item`,"
            " started once the stages it is built from have succeeded.",
        ),
    ] = 1,
    as_json: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Rebuild the stale models and datasets without DVC's whole-pipeline status: the index
    gives the stale set (and everything derived from it), `dvc repro --single-item` runs
    those stages in lineage order and records them in their dvc.lock files."""
    reg = Registry.open(repo)
    plan = lib.plan(reg, targets or (), downstream=downstream)
    if dry or as_json:
        if as_json:
            emit_json(plan.to_dict())
        elif plan.targets:
            typer.echo("\n".join(plan.targets))
        else:
            typer.echo("nothing to reproduce: every model and dataset is up to date")
        return
    if not plan.targets:
        typer.echo("nothing to reproduce: every model and dataset is up to date")
        return
    extra = ["--force"] if force else []
    if jobs > 1:
        code = _parallel(plan, jobs, extra, reg.repo_root)
        if code != 0:
            raise typer.Exit(code)
        return
    for start in range(0, len(plan.targets), CHUNK):
        argv = [sys.executable, "-m", "dvc", "repro", "--single-item", *extra]
        done = subprocess.run([*argv, *plan.targets[start : start + CHUNK]], cwd=reg.repo_root)
        if done.returncode != 0:
            raise typer.Exit(done.returncode)


def _parallel(plan: lib.Plan, jobs: int, extra: list[str], cwd: Path) -> int:
    """Run each target as its own `dvc repro --single-item`, at most `jobs` at once, each
    once its parents (`plan.parents`) exited 0; DVC runs, checks and locks each stage.

    DVC releases its repository lock while a stage's command runs and takes it again to
    record the result; `--wait-for-lock` makes each process wait for it instead of
    failing. After a failure no new stage starts; the running ones finish. Returns the
    first non-zero exit status, or 0."""
    argv = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", *extra]
    waiting = list(plan.targets)
    running: dict[subprocess.Popen[bytes], str] = {}
    done: set[str] = set()
    failed = 0
    while waiting or running:
        ready = [t for t in waiting if set(plan.parents.get(t, ())) <= done]
        while not failed and ready and len(running) < jobs:
            target = ready.pop(0)
            waiting.remove(target)
            running[subprocess.Popen([*argv, target], cwd=cwd)] = target
        if not running:
            break  # a failure left the rest waiting on it
        pid, status = os.wait()  # whichever stage ends first
        proc = next((p for p in running if p.pid == pid), None)
        if proc is None:  # not one of ours
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        target = running.pop(proc)
        if proc.returncode == 0:
            done.add(target)
        elif not failed:
            failed = proc.returncode if proc.returncode > 0 else 1  # killed by a signal
    return failed
