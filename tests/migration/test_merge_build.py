"""Merges built end to end: two real fine-tunes of a tiny base merged with each method, an
adapter merged into its base, checked against the parents' stored tensors, verified,
rebuilt, re-derived after a parent's spec changes, and drawn under every parent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import new_registry
from safetensors.torch import load_file, save_file
from stemma.migration import merge
from stemma.migration.build import build_dataset, build_model
from stemma.registry import Registry

MERGES = {
    "m-lin": "{relation: merge, models: [ft-a, ft-b], merge: {method: linear, weight: [0.3, 0.7]}}",
    "m-ta": "{relation: merge, models: [ft-a, ft-b], base: base,"
    " merge: {method: task_arithmetic, weight: [0.6, 0.9], lambda: 0.8}}",
    "m-ties": "{relation: merge, models: [ft-a, ft-b], base: base,"
    " merge: {method: ties, density: 0.5, weight: [1.0, 0.5]}}",
    "m-slerp": "{relation: merge, models: [ft-a, ft-b], merge: {method: slerp, t: 0.3}}",
    "m-ad": "{relation: merge, models: [ad]}",
}
SPECS = {
    "datasets/d/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n"
    "split: {eval: 0.25, seed: 0}\n",
    "models/base/spec.yaml": "architecture: {family: mlp, hidden: [16]}\ndata: {train: d}\n"
    "training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01, seed: 0}\n",
    "models/ft-a/spec.yaml": "source: {model: base}\ndata: {train: d}\n"
    "training: {epochs: 1, lr: 0.01, optimizer: adam, seed: 1}\n",
    "models/ft-b/spec.yaml": "source: {model: base}\ndata: {train: d}\n"
    "training: {epochs: 1, lr: 0.02, optimizer: adam, seed: 2}\n",
    "models/ad/spec.yaml": "source: {model: base, relation: adapter}\ndata: {train: d}\n"
    "strategy: {mode: lora, lora: {r: 2, alpha: 4, target_modules: [body.0]}}\n"
    "training: {epochs: 1, lr: 0.01}\n",
    **{
        f"models/{name}/spec.yaml": f"source: {src}\ndata: {{train: d}}\n"
        'gates: {accuracy: ">= 0.1"}\n'
        for name, src in MERGES.items()
    },
}
ORDER = ("base", "ft-a", "ft-b", "ad", *MERGES)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """Every spec above built once, in lineage order, by the code `stemma build` runs
    (shared; the cases that change files work on a copy)."""
    torch.set_num_threads(1)
    reg = new_registry(tmp_path_factory.mktemp("merges") / "repo", registry_template, SPECS)
    build_dataset(reg, "d")
    for name in ORDER:
        build_model(Registry.open(reg.repo_root), name)
    return reg.repo_root


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built registry, free to change."""
    shutil.copytree(built, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def weights(repo: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(repo / "models" / name / "weights.safetensors")


def manifest(repo: Path, name: str) -> dict[str, Any]:
    found = Registry.open(repo).model_manifest(name)  # validates against the schema
    assert found is not None and found.id == found.computed_id
    return dict(found.raw)


def expected(name: str, a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Each spec's method applied by hand to the parents' stored tensors."""
    if name == "m-lin":
        return merge.linear([a, b], [0.3, 0.7], normalize=True)
    if name == "m-ta":
        return merge.task_arithmetic(base, [a, b], [0.6, 0.9], lam=0.8)
    if name == "m-ties":
        return merge.ties(base, [a, b], [1.0, 0.5], [0.5, 0.5])
    return merge.slerp(0.3, a, b)


# -- each method on real fine-tunes ------------------------------------------------------------


@pytest.mark.parametrize("name", ["m-lin", "m-ta", "m-ties", "m-slerp"])
def test_merged_weights_are_the_method_on_the_stored_parents(built: Path, name: str) -> None:
    a, b, base = (weights(built, p) for p in ("ft-a", "ft-b", "base"))
    got = weights(built, name)
    assert set(got) == set(a)
    for key in got:
        assert not torch.equal(a[key], b[key])  # the fine-tunes really differ
        torch.testing.assert_close(got[key], expected(name, a[key], b[key], base[key]))
    doc = manifest(built, name)
    ids = {p: manifest(built, p)["id"] for p in ("ft-a", "ft-b", "base")}
    named = ["ft-a", "ft-b", *(["base"] if name in ("m-ta", "m-ties") else [])]
    assert doc["source"]["parents"] == [{"model": p, "id": ids[p]} for p in named]
    assert doc["merge"]["method"] == name.removeprefix("m-").replace("lin", "linear").replace(
        "ta", "task_arithmetic"
    )
    assert set(doc["metrics"]) == {"accuracy", "loss"} and doc["metrics"]["accuracy"] > 0.5
    assert [g["metric"] for g in doc["gates"]] == ["accuracy"] and doc["gates"][0]["passed"]
    metrics = json.loads((built / "models" / name / "metrics.json").read_text())
    assert metrics == doc["metrics"]


def test_mergekit_agrees_on_the_stored_tensors(built: Path) -> None:
    """The fine-tunes' real tensors through mergekit's own linear and slerp."""
    mk = pytest.importorskip("mergekit.merge_methods.linear")
    from mergekit.merge_methods.base import TensorBatch
    from mergekit.merge_methods.slerp import slerp

    a, b = weights(built, "ft-a"), weights(built, "ft-b")
    lin, sl = weights(built, "m-lin"), weights(built, "m-slerp")
    for key in a:
        ref = mk.linear_merge.merge_batch(
            TensorBatch([a[key].unsqueeze(0), b[key].unsqueeze(0)]),
            weight=torch.tensor([[0.3, 0.7]]),
            normalize=True,
        )[0]
        torch.testing.assert_close(lin[key], ref)
        ref = slerp(torch.tensor([0.3]), a[key].unsqueeze(0), b[key].unsqueeze(0))[0]
        torch.testing.assert_close(sl[key], ref)


def test_adapter_merged_into_its_base_is_peft_merge_and_unload(built: Path) -> None:
    from peft import PeftModel
    from stemma.migration.architectures import build_module

    base_doc = manifest(built, "base")
    module = build_module(base_doc["architecture"]["config"], {}, "base")
    module.load_state_dict(weights(built, "base"))
    peft_model = PeftModel.from_pretrained(module, str(built / "models/ad/adapter"))
    want = peft_model.merge_and_unload().state_dict()
    got = weights(built, "m-ad")
    assert set(got) == set(want)
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    assert not torch.equal(got["body.0.weight"], weights(built, "base")["body.0.weight"])
    doc = manifest(built, "m-ad")
    assert doc["merge"]["method"] == "adapter" and doc["merge"]["base"] == "base"
    assert doc["source"]["parents"] == [{"model": "ad", "id": manifest(built, "ad")["id"]}]


# -- ids, verify, repro ------------------------------------------------------------------------


def test_two_builds_give_the_same_id(built: Path, tmp_path: Path) -> None:
    """Rebuilt in a folder holding only what `verify --rebuild` copies: every parent, and
    an adapter's base."""
    from stemma.migration.verify import stage_copy

    for name in ("m-ties", "m-ad"):
        folder = tmp_path / name
        copy = stage_copy(Registry.open(built), name, folder)
        build_model(copy, name)
        assert manifest(copy.repo_root, name)["id"] == manifest(built, name)["id"]
        assert (copy.root / "models" / name / "weights.safetensors").read_bytes() == (
            built / "models" / name / "weights.safetensors"
        ).read_bytes()


def test_verify_passes_then_fails_when_a_parent_is_tampered_with(copy: Path, cli: Any) -> None:
    for name in MERGES:
        res = cli(["verify", name], copy)
        assert res.code == 0, res.stdout + res.stderr
    # as a command: the adapter merge is recomputed on the build's numeric code paths
    done = subprocess.run(
        [sys.executable, "-m", "stemma.cli.app", "verify", "m-ad", "-C", str(copy)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    state = weights(copy, "ft-b")
    state["body.0.bias"] = state["body.0.bias"] + 1e-3
    save_file(state, str(copy / "models/ft-b/weights.safetensors"))
    res = cli(["verify", "m-ties"], copy)
    assert res.code == 1
    assert "models/ft-b/weights.safetensors does not match its manifest" in res.stdout, res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_verify_fails_when_the_merged_weights_are_edited(copy: Path, cli: Any) -> None:
    state = weights(copy, "m-lin")
    state["head.bias"] = state["head.bias"] * 2
    save_file(state, str(copy / "models/m-lin/weights.safetensors"))
    res = cli(["verify", "m-lin", "--json"], copy)
    assert res.code == 1
    frozen = [f for f in json.loads(res.stdout)["findings"] if f["item"] == "frozen"]
    assert frozen[0]["status"] == "fail", res.stdout
    assert "differ from the linear merge of ft-a, ft-b" in frozen[0]["message"]
    assert "head.bias" in frozen[0]["message"] and "head.weight" not in frozen[0]["message"]


def test_a_parent_spec_edit_rebuilds_the_parent_then_the_merge(copy: Path, cli: Any) -> None:
    assert cli(["pipeline"], copy).code == 0
    before = manifest(copy, "m-lin")
    spec = copy / "models/ft-b/spec.yaml"
    spec.write_text(spec.read_text().replace("lr: 0.02", "lr: 0.03"))
    res = cli(["ls", "--json"], copy)
    rows = {r["name"]: r["status"] for r in json.loads(res.stdout) if r.get("kind") == "model"}
    assert rows["ft-b"] == "stale"
    res = cli(["repro", "m-lin", "--json"], copy)  # the plan: the parent, then the merge
    assert json.loads(res.stdout)["targets"] == [
        "models/ft-b/dvc.yaml:model-ft-b",
        "models/m-lin/dvc.yaml:model-m-lin",
    ]
    res = cli(["repro", "m-lin"], copy)
    assert res.code == 0, res.stdout + res.stderr
    after = manifest(copy, "m-lin")
    assert after["id"] != before["id"]
    assert after["source"]["parents"][1]["id"] == manifest(copy, "ft-b")["id"]
    new_b, a = weights(copy, "ft-b"), weights(copy, "ft-a")
    got = weights(copy, "m-lin")
    for key in got:
        torch.testing.assert_close(got[key], merge.linear([a[key], new_b[key]], [0.3, 0.7]))
    assert cli(["verify", "m-lin"], copy).code == 0


# -- the tree ----------------------------------------------------------------------------------


def test_lineage_tree_shows_a_merge_under_each_parent(built: Path, cli: Any) -> None:
    res = cli(["lineage", "show", "ft-b", "--format", "tree"], built)
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    # no merge drawn as a root of its own: every line below the first is indented
    assert lines[0].startswith("base") and all(ln[:1] in "│├└ " for ln in lines[1:]), res.stdout
    under_b = [ln for ln in lines if "m-lin" in ln]
    assert len(under_b) == 1 and "merge" in under_b[0], res.stdout
    res = cli(["lineage", "show", "base", "--format", "tree"], built)
    text = res.stdout
    for name in ("m-lin", "m-ta", "m-ties", "m-slerp"):
        drawn = [ln for ln in text.splitlines() if f" {name} " in ln]
        # once under ft-a, once under ft-b (and once under base for ta/ties): the first full,
        # the others marked as drawn above
        want = 3 if name in ("m-ta", "m-ties") else 2
        assert len(drawn) == want, text
        assert sum("above" in ln for ln in drawn) == want - 1, text
    assert "ft-a, ft-b" in text


# -- causal language models ----------------------------------------------------------------

TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "tiny-bpe"
LM_TRAIN = "{epochs: 1, batch_size: 8, optimizer: adamw, lr: %s, seed: %d}"
GPT2 = "{model_type: gpt2, n_layer: 2, n_head: 2, n_embd: 32, n_positions: 32, vocab_size: 384}"
LM_SPECS = {
    "datasets/corpus/spec.yaml": "source: text:data/corpus.txt\nsplit: {eval: 0.25, seed: 0}\n",
    "models/lm-base/spec.yaml": f"architecture: {{family: transformers, config: {GPT2}}}\n"
    "tokenizer: tokenizers/tiny\ndata: {train: corpus}\n"
    "lm: {block_size: 32, max_new_tokens: 2}\n"
    f"training: {LM_TRAIN % ('0.003', 0)}\n",
    **{
        f"models/lm-{k}/spec.yaml": "source: {model: lm-base}\ndata: {train: corpus}\n"
        f"lm: {{block_size: 32, max_new_tokens: 2}}\ntraining: {LM_TRAIN % (lr, seed)}\n{extra}"
        for k, lr, seed, extra in (
            ("a", "0.003", 1, ""),
            ("b", "0.006", 2, ""),
            ("c", "0.003", 3, "tokenizer: tokenizers/other\n"),
        )
    },
    "models/lm-m/spec.yaml": "source: {relation: merge, models: [lm-a, lm-b], base: lm-base,"
    " merge: {method: ties, density: 0.7}}\ndata: {train: corpus}\n"
    'gates: {perplexity: "<= 10000"}\n',
    "models/lm-bad/spec.yaml": "source: {relation: merge, models: [lm-a, lm-c],"
    " merge: {method: linear}}\ndata: {train: corpus}\n",
}


def _corpus() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(" ".join(topics[k].split())[:160] for k in sorted(topics)[:24]) + "\n"


@pytest.fixture(scope="module")
def lm_built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A tiny GPT-2 base, three fine-tunes (one with a tokenizer of its own) and a TIES
    merge of two of them."""
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    reg = new_registry(tmp_path_factory.mktemp("lm-merges") / "repo", registry_template, LM_SPECS)
    root = reg.repo_root
    (root / "data").mkdir()
    (root / "data/corpus.txt").write_text(_corpus())
    shutil.copytree(TOKENIZER, root / "tokenizers/tiny")
    shutil.copytree(TOKENIZER, root / "tokenizers/other")
    config = root / "tokenizers/other/tokenizer_config.json"
    config.write_text(
        config.read_text().replace('"backend"', '"model_max_length_note": 1,\n  "backend"')
    )
    build_dataset(reg, "corpus")
    for name in ("lm-base", "lm-a", "lm-b", "lm-c", "lm-m"):
        build_model(Registry.open(root), name)
    return root


def test_causal_lm_merge_scores_perplexity_and_carries_the_tokenizer(lm_built: Path) -> None:
    from stemma.migration import lm_train
    from stemma.migration.textdata import load_text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a, b, base = (weights(lm_built, p) for p in ("lm-a", "lm-b", "lm-base"))
    got = weights(lm_built, "lm-m")
    assert set(got) == set(a)
    for key in got:
        want = merge.ties(base[key], [a[key], b[key]], [1.0, 1.0], [0.7, 0.7])
        torch.testing.assert_close(got[key], want)
    doc = manifest(lm_built, "lm-m")
    assert doc["task"] == "causal-lm" and set(doc["metrics"]) == {"loss", "perplexity"}
    assert doc["gates"][0]["metric"] == "perplexity" and doc["gates"][0]["passed"]
    parent_tok = manifest(lm_built, "lm-a")["tokenizer"]["files"]
    assert doc["tokenizer"]["files"] == parent_tok
    folder = lm_built / "models/lm-m/tokenizer"
    assert sorted(p.name for p in folder.iterdir()) == sorted(parent_tok)
    # the merged model loaded by the libraries' own loaders gives the recorded perplexity
    from stemma.migration.build import load_model

    module = load_model(Registry.open(lm_built), "lm-m")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = load_text(Registry.open(lm_built), "corpus", "test")
    data = lm_train.blocks(tokenizer, text.eval, 32, True)
    assert lm_train.score(module, data)["perplexity"] == pytest.approx(
        doc["metrics"]["perplexity"], rel=1e-5
    )
    assert isinstance(module, AutoModelForCausalLM._model_mapping[type(module.config)])


def test_causal_lm_merge_of_parents_with_different_tokenizers_is_one_error(
    lm_built: Path, tmp_path: Path
) -> None:
    from stemma.registry.errors import BuildError

    repo = tmp_path / "repo"
    shutil.copytree(lm_built, repo, symlinks=True)
    with pytest.raises(BuildError) as err:
        build_model(Registry.open(repo), "lm-bad")
    assert str(err.value.message).startswith(
        "models/lm-bad/spec.yaml at /source/models/1: 'lm-c' has another tokenizer than 'lm-a'"
        " (tokenizer_config.json differs)"
    ), err.value.message
    assert not (repo / "models/lm-bad/manifest.json").exists()


def test_causal_lm_merge_verifies(lm_built: Path, cli: Any) -> None:
    res = cli(["verify", "lm-m"], lm_built)
    assert res.code == 0, res.stdout + res.stderr
