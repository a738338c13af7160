"""`stemma explore`: rank built models as sources for a dataset by transferability.

The explore library (and torch with it) loads only when the command runs (`app.library`), so
the rest of the CLI never pays for it.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from stemma.registry import Registry

from ._common import JsonOpt, RepoOpt, console, emit_json, fail
from ._wide import print_whole
from .app import library

if TYPE_CHECKING:
    from stemma.migration.explore import Ranking
    from stemma.migration.explore_lm import TextRanking


class ScoreChoice(str, enum.Enum):
    """Scores `--score` accepts; `all` computes every score and decides by the dataset's
    default (LogME; for plain text, bits per byte)."""

    logme = "logme"
    bits_per_byte = "bits_per_byte"
    leep = "leep"
    nce = "nce"
    hscore = "hscore"
    knn = "knn"
    all = "all"


def register(app: typer.Typer) -> None:
    """Mount `explore` on the root app."""
    app.command("explore")(explore)


def explore(
    dataset: Annotated[
        str | None,
        typer.Argument(help="Built dataset to rank candidate sources for.", show_default=False),
    ] = None,
    candidates: Annotated[
        str, typer.Option("--candidates", help="Glob over model names to consider.")
    ] = "*",
    score: Annotated[
        ScoreChoice | None,
        typer.Option(
            "--score",
            help="Score that ranks the candidates (all: every score). Default: logme;"
            " bits_per_byte for a text dataset without class labels.",
            show_default=False,
        ),
    ] = None,
    for_: Annotated[
        str | None,
        typer.Option(
            "--for",
            help="Explore for a `source: {model: auto}` spec and write its exploration.json.",
            show_default=False,
        ),
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            min=2,
            help="Score every candidate on the same seeded, stratified sample of at most N"
            " training rows instead of the whole split (recorded as the output's `sample`).",
            show_default=False,
            metavar="N",
        ),
    ] = None,
    rescore: Annotated[
        int | None,
        typer.Option(
            "--rescore",
            min=1,
            help="With --sample: score the K best on the sample again on the whole split and"
            " rank them first, by those scores (their rows say `rescored`).",
            show_default=False,
            metavar="K",
        ),
    ] = None,
    json_: JsonOpt = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Rank models as sources for a dataset without fine-tuning them, and recommend one."""
    if (dataset is None) == (for_ is None):
        raise fail("give a DATASET or --for NAME (not both)", code=2)
    if rescore is not None and sample is None:
        raise fail(f"--rescore {rescore} needs --sample N: it rescores the best on a sample")
    if for_ is not None and sample is not None:
        # a build's exploration (`source: auto`) scores the whole split: its id must not move
        raise fail("--sample and --rescore rank a DATASET; --for always scores the whole split")
    lib = library("migration.explore")
    reg = Registry.open(repo)
    if for_ is not None:
        chosen: Ranking | TextRanking = lib.explore_for(reg, for_)
        if json_:
            emit_json(chosen.to_dict(timings=False))  # the exploration.json it wrote
        else:
            typer.echo(
                f"explored {len(chosen.rows)} candidates for {for_} on"
                f" {chosen.dataset.name}: selected {chosen.selected} by {chosen.decided_by}"
                f" ({len(chosen.skipped)} skipped)"
            )
        return
    assert dataset is not None
    names: tuple[str, ...]
    decide: str | None
    if score is None:  # the dataset's own default (explore_lm's for text)
        names, decide = (), None
    elif score is ScoreChoice.all:
        names, decide = tuple(library("migration.transferability").SCORES), None
    else:
        names, decide = (score.value,), score.value
    with _progress() as progress:
        ranking: Ranking | TextRanking = lib.explore(
            reg,
            dataset,
            candidates,
            scores=names,
            decide=decide,
            progress=progress,
            sample=sample,
            rescore=rescore,
        )
    if json_:
        emit_json(ranking.to_dict())
    else:
        _render(ranking, dataset)
    if ranking.selected is None and not ranking.unscorable:
        raise fail(f"no candidate matching {candidates!r} fits dataset {dataset!r}")


@contextmanager
def _progress() -> Iterator[Callable[[int, int, str], None] | None]:
    """A progress bar on stderr while candidates are scored, when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("scoring {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("candidates", total=None)

        def update(done: int, total: int, model: str) -> None:
            bar.update(task, completed=done, total=total, description=model or "done")

        yield update


def _render(ranking: Ranking | TextRanking, dataset: str) -> None:
    from rich.table import Table

    out = console()
    table = Table(
        title=f"candidate sources for {dataset} (by {ranking.decided_by})",
        caption="each score, and under it the time it took; extract: feature extraction",
    )
    table.add_column("rank", justify="right")
    table.add_column("model", no_wrap=True)
    for name in ranking.scores:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("extract", justify="right", no_wrap=True)
    for row in ranking.rows:
        cells = [str(row.rank), row.model]
        for name in ranking.scores:
            value = row.scores[name]
            # the value, and under it the time the score took
            shown = "n/a" if value is None else repr(value)  # the whole recorded value
            cells.append(f"{shown}\n[dim]{_ms(row.seconds[name])}[/dim]")
        cells.append(f"\n[dim]{_ms(row.extract_seconds)}[/dim]")
        table.add_row(*cells)
    print_whole(out, table)  # every score in full, past 80 columns
    for skip in ranking.skipped:
        out.print(f"skipped {skip.model}: {skip.reason}")
    for score, why in sorted(ranking.not_applicable):
        out.print(f"{score} does not apply to this dataset: {why}")
    sampled = ranking.sample
    if sampled is not None:  # --sample: which rows each candidate was scored on
        kind = "stratified sample" if sampled.stratified else "sample"
        out.print(
            f"scored on a {kind} of {sampled.rows} of {sampled.of} train rows (seed {sampled.seed})"
        )
        again = [row.model for row in ranking.rows if row.rescored]
        if sampled.rescored is not None:
            out.print(
                f"rescored on the whole split (best {sampled.rescored} on the sample):"
                f" {', '.join(again) or 'none'}"
            )
    budget = ranking.budget
    if budget is not None:  # a text dataset: what was scored, and in which unit
        out.print(
            f"scored {budget.bytes} bytes of {budget.records} train records"
            f" (cap {budget.max_bytes} bytes, {budget.max_tokens} tokens a candidate)"
        )
        out.print(ranking.note)
    if ranking.selected is not None:
        chosen, score = ranking.selected, ranking.decided_by
        best = "lowest" if score in ranking.lower_is_better else "highest"
        out.print(f"recommended source: [bold]{chosen}[/bold] ({best} {score})")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
