"""The registry's file layout: the one home of the names of its files and folders.

A registry is `stemma.yaml` at its root, `models/NAME/` and `datasets/NAME/` folders, DVC's
pipeline files at the root and in each model folder, and `.stemma/`, the untracked derived
state. Every module that reads or writes one of these names takes it from here. Names only:
this module imports nothing, so every layer can use it.
"""

from __future__ import annotations

SETTINGS_FILE = "stemma.yaml"
"""The registry's settings, at its root; its presence marks the root."""

MODELS_DIR = "models"
DATASETS_DIR = "datasets"
KINDS = (MODELS_DIR, DATASETS_DIR)
"""The folders of the two kinds of entries, in the order they are listed."""

SPEC_FILE = "spec.yaml"
MANIFEST_FILE = "manifest.json"
"""A folder's record of its build; a build switches it in last (`rules.commits`)."""
WEIGHTS_FILE = "weights.safetensors"
DATA_FILE = "data.npz"
METRICS_FILE = "metrics.json"
CURVE_FILE = "curve.json"
EXPLORATION_FILE = "exploration.json"
"""The scores of an exploring model's candidate sources (`source: {model: auto}`)."""
LAST_RUN_FILE = "last-run.json"
"""The untracked record of a model's latest run (the manifest keeps the build's own)."""

PIPELINE_FILE = "dvc.yaml"
LOCK_FILE = "dvc.lock"

STATE_DIR = ".stemma"
"""The untracked derived state at the root: index, snapshot and caches, all rebuildable."""
STAGING_DIR = ".stemma-staging"
"""A build's outputs while they are written, inside the entry's folder."""
COMMITTING_DIR = ".stemma-commit"
"""The staged outputs once renamed: the commit point of a build's switch."""
