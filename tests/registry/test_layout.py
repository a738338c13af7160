"""The registry's file names have one home (rules/layout.py) and the old constants name it."""

from __future__ import annotations

import re

import pytest
from stemma.registry.check import metricfiles
from stemma.registry.pipeline import locks, render
from stemma.registry.publish import report
from stemma.registry.records import manifest
from stemma.registry.rules import commits, layout, naming
from stemma.registry.store import _snapshot, derived, handle, index


def test_old_constants_are_the_layout_names() -> None:
    assert handle.SETTINGS_FILE == layout.SETTINGS_FILE == "stemma.yaml"
    assert handle.SPEC_FILE == _snapshot.SPEC == layout.SPEC_FILE == "spec.yaml"
    assert handle.MANIFEST_FILE == manifest.MANIFEST_FILE == commits.LAST == "manifest.json"
    assert handle.WEIGHTS_FILE == layout.WEIGHTS_FILE == "weights.safetensors"
    assert metricfiles.METRICS_FILE == "metrics.json"
    assert metricfiles.CURVE_FILE == report.CURVE_FILE == "curve.json"
    assert locks.PIPELINE_FILE == render.PIPELINE_FILE == "dvc.yaml"
    assert locks.LOCK_FILE == "dvc.lock"
    assert render.EXPLORATION_FILE == "exploration.json"
    assert handle.INDEX_DIR == derived.STORE == ".stemma"
    assert index.INDEX_NAME == derived.STORE_FILE == "index.duckdb"
    assert (commits.STAGING, commits.COMMITTING) == (".stemma-staging", ".stemma-commit")
    assert layout.KINDS == _snapshot.KINDS == ("models", "datasets")


def test_name_pattern_is_unchanged() -> None:
    assert naming.NAME_PATTERN == r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?"


@pytest.mark.parametrize(
    "name", ["a", "a1", "res-net_2", "x" * 64, "x" * 65, "A", "a/b", "-a", "a-", "a\n", ""]
)
def test_artifact_names_are_stemma_names_without_the_bound(name: str) -> None:
    # the rule render.py used before it named naming.py's pieces
    old = re.compile(r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?\Z")
    assert bool(naming.ARTIFACT_NAME_RE.match(name)) == bool(old.match(name))
    if len(name) <= 64:
        assert bool(naming.ARTIFACT_NAME_RE.match(name)) == bool(naming.NAME_RE.match(name))
