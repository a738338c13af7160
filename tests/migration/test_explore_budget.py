"""Exploration within its budget: the two-stage decision (every candidate on a seeded sample,
the best few again on the whole split) and the forward pass's fixed costs, by behaviour."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from stemma.migration.architectures import build_module, make_config
from stemma.migration.explore import explore, shortlist, two_stage_order
from stemma.migration.features import compute
from stemma.migration.ranking import CandidateRow, Sample
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from test_explore import zoo  # noqa: F401 (the built candidates, shared with test_explore)

CANDIDATES = ["base", "noise", "untrained"]


# -- the decision, pure -------------------------------------------------------------------------


def test_shortlist_takes_the_highest_undefined_last_ties_by_name() -> None:
    values = {"c": 0.5, "a": 0.5, "b": None, "d": 0.9, "e": float("nan")}
    assert shortlist(values, 2) == ["d", "a"]
    assert shortlist(values, 3) == ["d", "a", "c"]
    assert shortlist(values, 10) == ["d", "a", "c", "b", "e"]
    assert shortlist(values, 0) == []


def test_the_whole_split_orders_the_shortlist_and_the_sample_the_rest() -> None:
    sample = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.95}
    # d and a were shortlisted on the sample; on the whole split a beats d
    order = two_stage_order(sample, {"d": 0.1, "a": 0.2})
    assert order == ["a", "d", "b", "c"]
    # a shortlisted candidate stays above the rest even when its whole-split score is lower
    # than the rest's sample scores (different rows: the scores are not comparable)
    assert two_stage_order(sample, {"d": -5.0}) == ["d", "a", "b", "c"]
    # nothing re-scored: the sample's order
    assert two_stage_order(sample, {}) == ["d", "a", "b", "c"]


# -- explore(sample=..., rescore=...) on built candidates ------------------------------------


def _order(doc: dict[str, object]) -> list[str]:
    return [row["model"] for row in doc["ranking"]]  # type: ignore[attr-defined, index]


def test_rescoring_every_candidate_gives_the_exact_ranking(zoo: Path) -> None:  # noqa: F811
    """With every candidate re-scored, the whole split decides: the exact ranking and scores."""
    reg = Registry.open(zoo)
    exact = explore(reg, "d59", CANDIDATES, scores=("logme",)).to_dict(timings=False)
    staged = explore(reg, "d59", CANDIDATES, scores=("logme",), sample=40, rescore=3)
    doc = staged.to_dict(timings=False)
    assert _order(doc) == _order(exact)
    assert doc["selected"] == exact["selected"] == "base"
    for got, want in zip(doc["ranking"], exact["ranking"], strict=True):
        assert got["scores"] == want["scores"]
        assert got["rescored"] is True
        assert set(got["sample_scores"]) == {"logme"}
    assert doc["sample"]["rescored"] == 3
    assert doc["sample"]["rows"] == 40


def test_only_the_shortlist_is_rescored(zoo: Path) -> None:  # noqa: F811
    reg = Registry.open(zoo)
    sampled = explore(reg, "d59", CANDIDATES, scores=("logme",), sample=40).to_dict(timings=False)
    staged = explore(reg, "d59", CANDIDATES, scores=("logme",), sample=40, rescore=1)
    doc = staged.to_dict(timings=False)
    first, *rest = doc["ranking"]
    # the sample's best, scored again on the whole split; the others keep their sample scores
    assert first["model"] == sampled["ranking"][0]["model"]
    assert first["rescored"] is True
    assert first["sample_scores"] == sampled["ranking"][0]["scores"]
    by_name = {row["model"]: row for row in sampled["ranking"]}
    for row in rest:
        assert "rescored" not in row and "sample_scores" not in row
        assert row["scores"] == by_name[row["model"]]["scores"]
    assert [row["rank"] for row in doc["ranking"]] == [1, 2, 3]
    # the typed rows say the same, and a rescored row's keys keep their order
    best = staged.rows[0]
    assert best.rescored and best.sample_scores == first["sample_scores"]
    assert not any(row.rescored or row.sample_scores is not None for row in staged.rows[1:])
    keys = ["model", "id", "scores", "seconds", "extract_seconds", "sample_scores", "rescored"]
    assert list(best.to_dict()) == [*keys, "rank"]
    assert CandidateRow.from_dict(best.to_dict()) == best
    assert staged.sample == Sample(
        rows=40, of=doc["sample"]["of"], seed=0, stratified=True, rescored=1
    )
    # a sample without rescoring records no "rescored": those documents stay as they were
    assert "rescored" not in sampled["sample"]


def test_the_rescored_features_are_cached_the_samples_are_not(
    zoo: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    shutil.copytree(zoo, tmp_path / "repo", symlinks=True)
    reg = Registry.open(tmp_path / "repo")
    cache = reg.repo_root / ".stemma" / "features"
    shutil.rmtree(cache, ignore_errors=True)
    explore(reg, "d59", CANDIDATES, scores=("logme",), sample=40, rescore=1)
    assert len(list(cache.glob("*.npz"))) == 1  # the whole split of the one re-scored


@pytest.mark.parametrize(
    ("sample", "rescore"),
    [(None, 1), (40, 0), (40, -1)],
)
def test_rescoring_needs_a_sample_and_a_candidate(
    zoo: Path,  # noqa: F811
    sample: int | None,
    rescore: int,
) -> None:
    reg = Registry.open(zoo)
    with pytest.raises(BuildError, match="rescoring the best candidates"):
        explore(reg, "d59", CANDIDATES, scores=("logme",), sample=sample, rescore=rescore)


# -- the forward pass ---------------------------------------------------------------------------


def test_compute_leaves_the_callers_module_as_it_was() -> None:
    """One move to the device and layout for the pass, and back: weights contiguous, the
    training flag restored, and the features those of a plain forward pass."""
    torch.manual_seed(0)
    module = build_module(make_config({"family": "cnn", "channels": [4, 8]}, [1, 8, 8], 3))
    module.train()
    x = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)
    feats, probs = compute(module, x, device="cpu")
    assert module.training
    assert all(p.is_contiguous() for p in module.parameters())
    assert feats.shape[0] == probs.shape[0] == 10
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    again, _ = compute(module, x, device="cpu")
    assert np.array_equal(feats, again)  # deterministic
