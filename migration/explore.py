"""Source exploration: rank built models as sources for a dataset, without fine-tuning them.

Every candidate whose input shape fits the dataset is run once over the dataset's training
split (features cached by `features.extract`) and scored by transferability scores; the
deciding score orders the candidates (ties broken by name) and the first is recommended.
`explore_for` does this for a `source: {model: auto}` spec and writes the document the
build reads (models/NAME/exploration.json).
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.pipeline.render import candidates as auto_candidates
from stemma.registry.records.manifest import (
    DatasetManifest,
    DatasetRef,
    dataset_record,
    model_record,
)
from stemma.registry.rules.layout import EXPLORATION_FILE, WEIGHTS_FILE
from stemma.registry.rules.taskspec import CAUSAL_LM
from stemma.registry.store.files import canonical_json, write_atomic

from .data import DatasetArrays, load_dataset
from .explore_lm import BITS_PER_BYTE, TextRanking, explore_text
from .features import extract
from .ranking import CandidateRow, Sample, Skipped, TextBudget, ranked
from .tasks import DECIMALS
from .train import CPU_THREADS
from .transferability import (
    SCORE_INPUTS,
    SCORES,
    logme_multilabel,
    logme_regression,
    stratified_sample,
)

_CLASS_ONLY = "needs class labels"
_ONE_PER_IMAGE = (
    "scores one label or target per sample from a classifier's features; a detection"
    " dataset has boxes (fine-tune a candidate and compare map_50 instead)"
)
NOT_APPLICABLE: dict[str, dict[str, str]] = {
    # no transferability score here has evidence behind it for detection: each needs one
    # target per sample; ranking detectors or backbones on boxes would be a made-up score
    "detection": {name: _ONE_PER_IMAGE for name in SCORES},
    "regression": {
        "leep": _CLASS_ONLY,
        "nce": _CLASS_ONLY,
        "hscore": _CLASS_ONLY,
        "knn": _CLASS_ONLY,
    },
    "multilabel": {
        "leep": _CLASS_ONLY + " (one per sample)",
        "nce": _CLASS_ONLY + " (one per sample)",
        "hscore": _CLASS_ONLY + " (one per sample)",
        "knn": _CLASS_ONLY + " (one per sample)",
    },
}
"""Scores that do not apply to a task's targets, with why; LogME has a form for each task."""


def _score(name: str, inputs: dict[str, Any], labels: Any, task: str) -> float:
    """One score of a candidate; LogME on regression or multi-label targets uses the target
    columns (standardised regression targets; the 0/1 label columns as they are)."""
    if name == "logme" and task == "regression":
        return logme_regression(inputs["features"], labels)
    if name == "logme" and task == "multilabel":
        return logme_multilabel(inputs["features"], labels)
    return float(SCORES[name](inputs[SCORE_INPUTS[name]], labels))


DEFAULT_SCORE = "logme"
SAMPLE_SEED = 0  # the seed of `explore(sample=...)`: every candidate sees the same rows


def _blas_threads() -> Any:
    """numpy's BLAS on `CPU_THREADS` threads while scoring, as the build's checks run.

    The scores are recorded (exploration.json, part of a model's manifest): a product split
    over another number of threads can round differently. And the matrices are small (a few
    hundred features): on a busy machine a second thread made H-score 50x slower (11-29 ms
    against 0.22 ms on 600 x 32 features), on an idle one it gains little.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    return threadpool_limits(limits=CPU_THREADS, user_api="blas")


@dataclass(frozen=True)
class Ranking:
    """Candidates ordered by the deciding score (rank 1 first), and those left out, with why."""

    dataset: DatasetRef
    decided_by: str
    rows: tuple[CandidateRow, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    selected: str | None = None
    scores: tuple[str, ...] = ()
    not_applicable: tuple[tuple[str, str], ...] = ()
    sample: Sample | None = None  # the rows scored, when a sample bounded them
    # what only a text ranking (explore_lm.TextRanking) has: the renderers read either kind
    budget: ClassVar[TextBudget | None] = None
    note: ClassVar[str | None] = None
    lower_is_better: ClassVar[tuple[str, ...]] = ()  # every score here: higher is better

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """The ranking as JSON-ready data; without `timings`, deterministic (no wall times)."""
        doc: dict[str, Any] = {
            "dataset": self.dataset.to_dict(),
            "decided_by": self.decided_by,
            "scores": list(self.scores),
            "selected": self.selected,
            "ranking": [row.to_dict(timings) for row in self.rows],
            "skipped": [s.to_dict() for s in self.skipped],
        }
        if self.not_applicable:  # absent for class labels: their documents stay as they were
            doc["not_applicable"] = dict(self.not_applicable)
        if self.sample is not None:  # absent for the whole split: those documents stay as-is
            doc["sample"] = self.sample.to_dict()
        return doc

    @property
    def unscorable(self) -> bool:
        """True when no requested score applies to the dataset's task (e.g. detection)."""
        return not self.scores and bool(self.not_applicable)


def _shape(value: Any) -> list[int] | None:
    if not isinstance(value, list):
        return None
    return [int(d) for d in value]


def fits(reg: Registry, candidate: str, dataset: str) -> bool:
    """True when the built candidate takes samples of the built dataset's shape."""
    return _misfit(reg, candidate, _dataset_shape(reg, dataset)) is None


def _built_dataset(reg: Registry, dataset: str) -> DatasetManifest:
    """The built dataset's manifest, typed; BuildError when it is not built."""
    found = reg.dataset_manifest(dataset)
    if found is None:
        raise BuildError(
            f"{reg.rel('datasets', dataset)}: dataset {dataset!r} has not been built;"
            " build it first (dvc repro)"
        )
    return dataset_record(found)


def _dataset_shape(reg: Registry, dataset: str) -> list[int]:
    return list(_built_dataset(reg, dataset).shape)


def _task(reg: Registry, dataset: str) -> str:
    """The built dataset's task (its manifest's); BuildError when it is not built."""
    return _built_dataset(reg, dataset).task_name


def _misfit(reg: Registry, candidate: str, shape: list[int]) -> str | None:
    """Why the candidate cannot be scored on samples of `shape`, or None when it can."""
    found = reg.model_manifest(candidate)
    manifest = None if found is None else model_record(found)
    # the file the manifest names: weights.safetensors, or an adapter model's adapter file
    own = manifest.weights.path if manifest else WEIGHTS_FILE
    if manifest is None or not (reg.model_dir(candidate) / own).is_file():
        return "not built"
    if manifest.quantize is not None:  # migration/quantize.py: no weights to derive from
        parent = None if manifest.source is None else manifest.source.model
        return f"quantized: no source to derive from (its parent {parent!r} is)"
    in_shape = _shape(manifest.architecture.block.in_shape)
    if in_shape is None:
        return "its manifest records no input shape"
    if in_shape != shape:
        return f"input shape {in_shape} does not fit the dataset's sample shape {shape}"
    return None


def _score_names(scores: Iterable[str], decide: str | None) -> tuple[tuple[str, ...], str]:
    names = list(dict.fromkeys(scores))
    unknown = [s for s in [*names, *([decide] if decide else [])] if s not in SCORES]
    if unknown:
        raise BuildError(f"unknown score {unknown[0]!r}; use one of {', '.join(SCORES)}")
    if not names and decide is None:
        raise BuildError("name at least one score")
    decided_by = decide or names[0]
    if decided_by not in names:
        names.insert(0, decided_by)
    return tuple(names), decided_by


def _value_key(value: Any, name: str) -> tuple[bool, float, str]:
    finite = isinstance(value, float) and math.isfinite(value)
    # higher is better for every score; undefined values go last; ties go by name
    return (not finite, -value if finite else 0.0, name)


def _order_key(row: CandidateRow, score: str) -> tuple[bool, float, str]:
    return _value_key(row.scores[score], row.model)


def shortlist(values: Mapping[str, float | None], top: int) -> list[str]:
    """The `top` names of the highest values, best first (undefined values last, ties by
    name): the candidates a two-stage decision scores again on the whole split."""
    return sorted(values, key=lambda name: _value_key(values[name], name))[:top]


def two_stage_order(
    first: Mapping[str, float | None], second: Mapping[str, float | None]
) -> list[str]:
    """Every name of `first` (each candidate's score on the sample), ranked by a two-stage
    decision: the names re-scored on the whole split (`second`) first, by that score, then
    the others by their sample score. The sample only shortlists; the whole split decides
    among the shortlist, so a sample's noise can reorder the tail, never the shortlist."""
    again = sorted(second, key=lambda name: _value_key(second[name], name))
    rest = sorted(
        (name for name in first if name not in second),
        key=lambda name: _value_key(first[name], name),
    )
    return again + rest


def explore(
    reg: Registry,
    dataset: str,
    candidates: str | Sequence[str] = "*",
    scores: Iterable[str] = (DEFAULT_SCORE,),
    exclude: Iterable[str] = (),
    decide: str | None = None,
    device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    sample: int | None = None,
    rescore: int | None = None,
) -> Ranking | TextRanking:
    """Score every fitting candidate on the dataset's training split and rank them.

    `candidates` is a glob over model names or an explicit list; `decide` names the score that
    orders them (default: the first of `scores`). Candidates that are not built or whose input
    shape differs are listed in `skipped` with the reason. `progress(done, total, model)` is
    called before each candidate and once at the end (model "").
    A text (causal-lm) dataset is ranked by `explore_lm.explore_text` (bits per byte, and
    LogME on pooled hidden states for a labelled one).
    `sample`: score every candidate on the same stratified sample of at most this many
    training rows (seed `SAMPLE_SEED`; the forward pass then runs over those rows only, and
    their features are not cached), recorded as the document's ``sample``.
    `rescore` (with `sample`): a two-stage decision. Every candidate is scored on the sample,
    then the `rescore` best by the deciding score are scored again on the whole split
    (features cached as without a sample) and ranked first, by those scores (see
    `two_stage_order`); their rows hold the whole split's scores, with ``rescored: true``
    and the sample's scores under ``sample_scores``. Recorded as ``sample.rescored``.
    """
    scores = tuple(scores)
    task = _task(reg, dataset)
    if sample is not None and sample < 2:
        raise BuildError(f"a sample needs at least 2 rows, got {sample}")
    if rescore is not None and (sample is None or rescore < 1):
        raise BuildError(
            "rescoring the best candidates on the whole split needs a sample and at least"
            f" one candidate to rescore (sample {sample}, rescore {rescore})"
        )
    if task == CAUSAL_LM:  # scored with each candidate's own tokenizer
        if sample is not None:
            raise BuildError(f"sampling rows applies to array datasets; {dataset!r} is text")
        return explore_text(reg, dataset, candidates, scores, exclude, decide, progress)
    if BITS_PER_BYTE in (*scores, decide):
        raise BuildError(
            f"score {BITS_PER_BYTE!r} applies to text (causal-lm) datasets;"
            f" {dataset!r} is a {task} dataset"
        )
    if not scores and decide is None:
        decide = DEFAULT_SCORE
    names, decided_by = _score_names(scores, decide)
    dataset_manifest = _built_dataset(reg, dataset)
    shape, task = list(dataset_manifest.shape), dataset_manifest.task_name
    skip_scores = NOT_APPLICABLE.get(task, {})
    if all(n in skip_scores for n in SCORES):
        # no score applies to this task at all (detection): an empty ranking that says why,
        # not an error; asking for one score another task's datasets lack is still an error
        return Ranking(
            dataset=DatasetRef(name=dataset, id=dataset_manifest.id),
            decided_by=decided_by,
            scores=(),
            not_applicable=tuple((n, skip_scores[n]) for n in names),
        )
    if decided_by in skip_scores:
        raise BuildError(
            f"score {decided_by!r} does not apply to the {task} dataset {dataset!r}"
            f" ({skip_scores[decided_by]}); decide by logme"
        )
    not_applicable = tuple((n, skip_scores[n]) for n in names if n in skip_scores)
    names = tuple(n for n in names if n not in skip_scores)
    banned = set(exclude)
    if isinstance(candidates, str):
        pool = [m for m in reg.model_names() if fnmatch.fnmatch(m, candidates)]
    else:
        pool = sorted(dict.fromkeys(candidates))
    rows: list[CandidateRow] = []
    skipped: list[Skipped] = []
    todo = [m for m in pool if m not in banned]
    # read once for every candidate (each one whose features are not cached runs over it)
    data = load_dataset(reg, dataset) if todo else None
    whole = data  # the whole split, for the candidates a two-stage decision scores again
    sampled = None
    if data is not None and sample is not None:
        labels = np.asarray(data.y_train)
        picked = stratified_sample(labels, sample, seed=SAMPLE_SEED)
        sampled = Sample(
            rows=int(picked.shape[0]),
            of=int(labels.shape[0]),
            seed=SAMPLE_SEED,
            stratified=bool(labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)),
            rescored=rescore,
        )
        data = replace(data, x_train=data.x_train[picked], y_train=labels[picked])
    for done, model in enumerate(todo):
        if progress is not None:
            progress(done, len(todo), model)
        reason = _misfit(reg, model, shape)
        if reason is not None:
            skipped.append(Skipped(model=model, reason=reason))
            continue
        values, seconds, extract_seconds = _score_candidate(
            reg, model, dataset, names, task, device, data, cache=sampled is None
        )
        manifest = reg.model_manifest(model)
        assert manifest is not None
        rows.append(
            CandidateRow(
                model=model,
                id=manifest.id,
                scores=values,
                seconds=seconds,
                extract_seconds=extract_seconds,
            )
        )
    if progress is not None:
        progress(len(todo), len(todo), "")
    rows.sort(key=lambda row: _order_key(row, decided_by))
    if rescore is not None:
        first = {row.model: row.scores[decided_by] for row in rows}
        again = set(shortlist(first, rescore))
        rows = [
            _rescored(row, reg, dataset, names, task, device, whole) if row.model in again else row
            for row in rows
        ]
        second = {row.model: row.scores[decided_by] for row in rows if row.model in again}
        order = two_stage_order(first, second)
        by_name = {row.model: row for row in rows}
        rows = [by_name[name] for name in order]
    ordered = ranked(rows)
    return Ranking(
        dataset=DatasetRef(name=dataset, id=dataset_manifest.id),
        decided_by=decided_by,
        rows=ordered,
        skipped=tuple(skipped),
        selected=ordered[0].model if ordered else None,
        scores=names,
        not_applicable=not_applicable,
        sample=sampled,
    )


def _rescored(
    row: CandidateRow,
    reg: Registry,
    dataset: str,
    names: Sequence[str],
    task: str,
    device: str,
    whole: DatasetArrays | None,
) -> CandidateRow:
    """The row of a candidate scored again on the whole split: the whole split's scores, the
    sample's under `sample_scores`, and the times of both passes added up."""
    full, full_seconds, full_extract = _score_candidate(
        reg, row.model, dataset, names, task, device, whole, cache=True
    )
    return replace(
        row,
        scores=full,
        seconds={k: round(v + full_seconds[k], 6) for k, v in row.seconds.items()},
        extract_seconds=round(row.extract_seconds + full_extract, 6),
        sample_scores=row.scores,
        rescored=True,
    )


def _score_candidate(
    reg: Registry,
    model: str,
    dataset: str,
    names: Sequence[str],
    task: str,
    device: str,
    data: DatasetArrays | None,
    cache: bool,
) -> tuple[dict[str, float | None], dict[str, float], float]:
    """({score: value}, {score: seconds}, extraction seconds) of one candidate on `data`'s
    training rows; values rounded to DECIMALS, an undefined one (NaN) None."""
    begin = time.perf_counter()
    # the cache holds whole splits: a sample's features are computed, never cached
    found = extract(reg, model, dataset, "train", device=device, data=data, cache=cache)
    extract_seconds = round(time.perf_counter() - begin, 6)
    inputs = {"features": found.features, "probs": found.probs}
    values: dict[str, float | None] = {}
    seconds: dict[str, float] = {}
    with _blas_threads():
        for name in names:
            begin = time.perf_counter()
            value = _score(name, inputs, found.labels, task)
            seconds[name] = round(time.perf_counter() - begin, 6)
            # an undefined score (NaN) is recorded as null: JSON has no NaN
            values[name] = round(value, DECIMALS) if math.isfinite(value) else None
    return values, seconds, extract_seconds


def explore_for(reg: Registry, model_name: str, device: str = "auto") -> Ranking | TextRanking:
    """Explore the sources of a `source: {model: auto}` spec; write its exploration.json (the
    ranking's `to_dict(timings=False)`) and return the ranking.

    The document is deterministic (scores rounded, no wall times), so an unchanged registry
    gives identical bytes, and the model's manifest id does not move on a rebuild.
    """
    spec = reg.model_spec(model_name)
    if spec.source is None or not spec.source.auto:
        raise BuildError(
            f"{spec.path} at /source/model: exploration needs `source: {{model: auto}}`"
        )
    decide = spec.source.score  # None: the dataset's default (logme; text: explore_lm's)
    pool = auto_candidates(reg, model_name, spec)
    ranking = explore(reg, spec.train, pool, scores=SCORES, decide=decide, device=device)
    if ranking.unscorable:
        raise BuildError(
            f"{spec.path} at /source/model: auto picks by a transferability score and none"
            f" applies to the {ranking.dataset.name!r} dataset's task; name the source model"
        )
    if ranking.selected is None:
        glob = spec.source.candidates or "*"
        why = "; ".join(f"{s.model}: {s.reason}" for s in ranking.skipped)
        raise BuildError(
            f"{spec.path} at /source/candidates: no candidate matching {glob!r} fits dataset"
            f" {spec.train!r}" + (f" ({why})" if why else " (no model matches)")
        )
    doc = ranking.to_dict(timings=False)
    write_atomic(reg.model_dir(model_name) / EXPLORATION_FILE, canonical_json(doc))
    return ranking
