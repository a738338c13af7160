"""Causal language models with their tokenizers: text datasets, full fine-tune, LoRA, export.

One registry is built once for the module (a tiny GPT-2 base trained on Python's own
documentation text, a prompt/completion fine-tune and a LoRA adapter); each test reads it,
and the tests that change files work on a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.query.listing import model_status
from stemma.registry.rules.taskspec import CAUSAL_LM, spec_problems

pytest.importorskip("transformers")
pytest.importorskip("peft")

TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "tiny-bpe"
TRAIN = "{epochs: 1, batch_size: 8, optimizer: adamw, lr: 0.003, seed: 0}"
SPECS = {
    "datasets/corpus/spec.yaml": "source: text:data/corpus.txt\nsplit: {eval: 0.25, seed: 0}\n",
    "datasets/sft/spec.yaml": "source: jsonl:data/sft.jsonl\n",
    "models/lm-base/spec.yaml": f"""
architecture:
  family: transformers
  config: {{model_type: gpt2, n_layer: 2, n_head: 2, n_embd: 32, n_positions: 32, vocab_size: 384}}
tokenizer: tokenizers/tiny
data: {{train: corpus, eval: corpus}}
lm: {{block_size: 32, prompts: ["The import statement"], max_new_tokens: 4}}
training: {TRAIN}
gates: {{perplexity: "<= 1000"}}
""",
    "models/lm-sft/spec.yaml": f"""
source: {{model: lm-base, relation: finetune}}
data: {{train: sft, eval: sft}}
lm: {{block_size: 32, max_new_tokens: 4}}
training: {TRAIN}
checks: {{forgetting: {{data: corpus, max_drop: 1.0}}}}
""",
    "models/lm-lora/spec.yaml": f"""
source: {{model: lm-base, relation: adapter}}
data: {{train: sft, eval: sft}}
lm: {{block_size: 32, max_new_tokens: 4}}
strategy: {{mode: lora, lora: {{r: 4, alpha: 8, target_modules: [c_attn]}}}}
training: {TRAIN}
""",
}
WORDS = ["assert", "break", "class", "continue", "def", "del", "for", "if", "import", "lambda"]


def _corpus() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(" ".join(topics[k].split())[:160] for k in sorted(topics)[:24]) + "\n"


def _sft() -> str:
    rows = [
        {"prompt": f"Keyword: {w}\nMeaning:", "completion": f" the {w} statement."} for w in WORDS
    ]
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Registry:
    """The registry with both datasets and the three models built, and their exports."""
    from stemma.migration.build import build_dataset, build_model
    from stemma.registry.publish.card import export_card

    root = tmp_path_factory.mktemp("lm") / "repo"
    shutil.copytree(registry_template, root, symlinks=True)
    reg = Registry.open(root)
    _write(reg.repo_root, "data/corpus.txt", _corpus())
    _write(reg.repo_root, "data/sft.jsonl", _sft())
    shutil.copytree(TOKENIZER, reg.repo_root / "tokenizers" / "tiny")
    for rel, text in SPECS.items():
        _write(reg.root, rel, text)
    reg = Registry.open(root)
    for name in ("corpus", "sft"):
        build_dataset(reg, name)
    for name in ("lm-base", "lm-sft", "lm-lora"):
        build_model(reg, name)
        export_card(reg, name, root.parent / "export" / name, weights=True)
    return reg


def _manifest(reg: Registry, name: str) -> dict[str, Any]:
    manifest = reg.model_manifest(name)
    assert manifest is not None
    return dict(manifest.raw)


def _eval_blocks(reg: Registry, dataset: str, tokenizer: Any, block_size: int) -> Any:
    from stemma.migration import lm_train
    from stemma.migration.textdata import PROMPT_COMPLETION, load_text

    data = load_text(reg, dataset, "test")
    return lm_train.blocks(tokenizer, data.eval, block_size, data.format != PROMPT_COMPLETION)


def test_text_datasets_record_utf8_text_and_int64_tokens(built: Registry) -> None:
    for name, fmt in (("corpus", "text"), ("sft", "prompt-completion")):
        manifest = built.dataset_manifest(name)
        assert manifest is not None
        assert manifest.raw["task"] == CAUSAL_LM
        assert manifest.raw["text"]["format"] == fmt
        assert manifest.raw["text"]["token_dtype"] == "int64"
    lm = _manifest(built, "lm-base")["lm"]
    assert lm["token_dtype"] == "int64" and lm["block_size"] == 32 and lm["eval_tokens"] > 0


def test_exported_models_load_and_give_the_recorded_perplexity(built: Registry) -> None:
    from stemma.migration import lm_train
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = built.repo_root.parent / "export"
    for name, dataset in (("lm-base", "corpus"), ("lm-sft", "sft")):
        manifest = _manifest(built, name)
        assert manifest["task"] == CAUSAL_LM
        assert set(manifest["metrics"]) == {"loss", "perplexity"}
        model = AutoModelForCausalLM.from_pretrained(export / name)
        tokenizer = AutoTokenizer.from_pretrained(export / name)
        data = _eval_blocks(built, dataset, tokenizer, 32)
        assert data.ids.dtype.is_floating_point is False
        assert lm_train.score(model, data) == manifest["metrics"]
    base = _manifest(built, "lm-base")
    assert base["gates"][0]["metric"] == "perplexity" and base["gates"][0]["passed"]
    assert base["lm"]["generations"][0]["prompt"] == "The import statement"
    sft = _manifest(built, "lm-sft")
    forgetting = sft["checks"]["forgetting"]
    assert forgetting["figures"]["before"] == base["metrics"]["perplexity"]
    assert forgetting["figures"]["metric"] == "perplexity"


def test_prompt_tokens_carry_no_loss(built: Registry) -> None:
    from stemma.migration import lm_train
    from stemma.migration.textdata import Record
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built.model_dir("lm-base") / "tokenizer")
    rec = Record("Keyword: def\nMeaning:", " the def statement.")
    blocks = lm_train.blocks(tokenizer, [rec], 32, packed=False)
    prompt = len(tokenizer(rec.prompt, add_special_tokens=False)["input_ids"])
    assert (blocks.labels[0, :prompt] == lm_train.IGNORE).all()
    assert (blocks.labels[0, prompt:] != lm_train.IGNORE).sum() > 0
    assert blocks.ids.dtype == blocks.labels.dtype == blocks.mask.dtype  # all int64
    assert str(blocks.ids.dtype) == "torch.int64"


def test_lora_adapter_loads_with_peft(built: Registry) -> None:
    from peft import PeftModel
    from stemma.migration import lm_train
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = built.repo_root.parent / "export"
    manifest = _manifest(built, "lm-lora")
    assert manifest["adapter"]["target_modules"] == ["c_attn"]
    base = AutoModelForCausalLM.from_pretrained(export / "lm-base")
    model = PeftModel.from_pretrained(base, export / "lm-lora")
    tokenizer = AutoTokenizer.from_pretrained(export / "lm-lora")
    assert lm_train.score(model, _eval_blocks(built, "sft", tokenizer, 32)) == manifest["metrics"]


def test_tokenizer_is_inherited_and_hashed(built: Registry) -> None:
    base, child = _manifest(built, "lm-base"), _manifest(built, "lm-sft")
    assert base["tokenizer"]["from"] == "spec"
    assert child["tokenizer"]["from"] == "lm-base"
    assert child["tokenizer"]["files"] == base["tokenizer"]["files"]
    for name, sha in child["tokenizer"]["files"].items():
        data = (built.model_dir("lm-sft") / "tokenizer" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        assert data == (TOKENIZER / name).read_bytes()


def test_pipeline_makes_tokenizers_dependencies(built: Registry) -> None:
    from stemma.registry.pipeline.render import render_dict

    stages = render_dict(built)["stages"]
    base, child = stages["model-lm-base"], stages["model-lm-sft"]
    assert "tokenizers/tiny" in base["deps"]
    assert "models/lm-base/tokenizer" in child["deps"]
    assert {"models/lm-sft/tokenizer": {"persist": True, "cache": False}} in child["outs"]


def test_rebuild_gives_the_same_id(built: Registry) -> None:
    from stemma.migration.build import build_model

    before = _manifest(built, "lm-sft")["id"]
    assert build_model(built, "lm-sft")["id"] == before


def test_a_changed_tokenizer_makes_the_child_stale(built: Registry, tmp_path: Path) -> None:
    from stemma.migration.build import build_model
    from stemma.migration.verify import verify_model

    root = tmp_path / "repo"
    shutil.copytree(built.repo_root, root, symlinks=True)
    reg = Registry.open(root)
    tokenizer = [f for f in verify_model(reg, "lm-base").findings if f.item == "tokenizer"]
    assert [f.status for f in tokenizer] == ["pass"]
    # an edited copy in the model's folder is refused, not silently used
    (reg.model_dir("lm-base") / "tokenizer" / "tokenizer_config.json").write_text("{}")
    tokenizer = [f for f in verify_model(reg, "lm-base").findings if f.item == "tokenizer"]
    assert [f.status for f in tokenizer] == ["fail"]
    assert "tokenizer_config.json does not match its manifest" in tokenizer[0].message
    with pytest.raises(BuildError, match=r"tokenizer_config\.json does not match its manifest"):
        build_model(reg, "lm-sft")
    # a changed tokenizer in the spec's folder: a new base, so the child is stale
    config = reg.repo_root / "tokenizers" / "tiny" / "tokenizer_config.json"
    doc = json.loads(config.read_text())
    config.write_text(json.dumps({**doc, "model_max_length": 32}))
    reg = Registry.open(root)
    before = _manifest(reg, "lm-base")["id"]
    assert build_model(reg, "lm-base")["id"] != before
    reg = Registry.open(root)
    assert model_status(reg, "lm-sft", reg.model_manifest("lm-sft")) == "stale"


def test_causal_lm_gates_name_its_metrics() -> None:
    assert spec_problems(CAUSAL_LM, {"gates": {"perplexity": "<= 30", "loss": "<= 3"}}) == []
    found = spec_problems(CAUSAL_LM, {"gates": {"accuracy": ">= 0.9"}})
    assert found and found[0][0] == "/gates/accuracy"


def test_malformed_jsonl_line_is_one_located_error(
    built: Registry, tmp_path: Path, cli: Any
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(built.repo_root, root, symlinks=True)
    lines = _sft().splitlines()
    lines[2] = '{"prompt": "Keyword: x", "completion": '
    _write(root, "data/bad.jsonl", "\n".join(lines) + "\n")
    _write(root, "datasets/bad/spec.yaml", "source: jsonl:data/bad.jsonl\n")
    before = sorted(p.name for p in (root / "datasets").iterdir())
    res = cli(["build", "dataset", "bad"], root)
    assert res.code == 1, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "data/bad.jsonl line 3" in err and "not valid JSON" in err
    assert sorted(p.name for p in (root / "datasets").iterdir()) == before
    assert not (root / "datasets" / "bad" / "manifest.json").exists()


def _refused(call: Any, *needles: str) -> str:
    """The one-line message of the StemmaError `call()` raises (within 10 s), checked to name
    each of `needles`; any other outcome (another exception, a hang, no error) fails."""
    import signal

    from stemma.registry.errors import StemmaError

    def hang(*_: Any) -> None:
        raise TimeoutError("hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        call()
    except StemmaError as exc:
        message = str(exc)
    else:
        message = ""
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_adversarial_text_sources_are_refused(tmp_path: Path) -> None:
    import os
    import random

    from stemma.migration.textdata import materialize_text

    def build(source: str) -> Any:
        return lambda: materialize_text({"source": source}, "spec.yaml", lambda r: tmp_path / r)

    good = _sft().splitlines()
    cases = {
        "truncated": '{"prompt": "a", "completion": ',
        "nan": '{"prompt": "a", "completion": NaN}',
        "array": "[1, 2]",
        "no completion": '{"prompt": "a"}',
        "number completion": '{"prompt": "a", "completion": 3}',
        "mixed formats": '{"text": "plain"}',
        "deep": "[" * 100_000 + "]" * 100_000,
    }
    for label, line in cases.items():
        _write(tmp_path, "bad.jsonl", "\n".join([good[0], line, good[1]]) + "\n")
        assert _refused(build("jsonl:bad.jsonl"), "bad.jsonl line 2"), label
    (tmp_path / "latin1.jsonl").write_bytes(good[0].encode() + b"\n\xff\xfe\n")
    _refused(build("jsonl:latin1.jsonl"), "latin1.jsonl", "UTF-8")
    _write(tmp_path, "one.txt", "a single document\n")
    _refused(build("text:one.txt"), "one.txt", "2")
    os.mkfifo(tmp_path / "pipe.txt")
    _refused(build("text:pipe.txt"), "pipe.txt", "regular file")
    _refused(build("text:missing.txt"), "missing.txt", "does not exist")
    # seeded fuzz: byte flips and truncations of a valid file give records or one located error
    rng = random.Random(0)
    base = (_sft()).encode()
    for _ in range(60):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        (tmp_path / "fuzz.jsonl").write_bytes(bytes(data[: rng.randrange(len(data)) + 1]))
        try:
            build("jsonl:fuzz.jsonl")()
        except BuildError as exc:
            assert "fuzz.jsonl" in str(exc) and "\n" not in str(exc)
        except Exception as exc:  # a located file error (UTF-8, NUL) is a StemmaError too
            from stemma.registry.errors import StemmaError

            assert isinstance(exc, StemmaError) and "fuzz.jsonl" in str(exc), repr(exc)


def test_adversarial_tokenizer_folders_are_refused(tmp_path: Path) -> None:
    import os

    from stemma.migration import tokenizer as tok

    def folder(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(TOKENIZER, path)
        return path

    (folder("extra") / "evil.py").write_text("import os\n")
    _refused(lambda: tok.read_files(tmp_path / "extra", "extra", tmp_path), "extra/evil.py")
    (tmp_path / "outside.json").write_text("{}")
    linked = folder("linked")
    os.remove(linked / "tokenizer.json")
    os.symlink(tmp_path / "outside.json", linked / "tokenizer.json")
    _refused(lambda: tok.read_files(linked, "linked", linked), "linked/tokenizer.json")
    piped = folder("piped")
    os.remove(piped / "tokenizer.json")
    os.mkfifo(piped / "tokenizer.json")
    _refused(lambda: tok.read_files(piped, "piped", tmp_path), "piped/tokenizer.json")
    remote = folder("remote")
    config = json.loads((remote / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.Tok", None]}
    (remote / "tokenizer_config.json").write_text(json.dumps(config))
    _refused(lambda: tok.read_files(remote, "remote", tmp_path), "auto_map")
    bare = folder("bare")
    os.remove(bare / "tokenizer_config.json")
    _refused(lambda: tok.read_files(bare, "bare", tmp_path), "tokenizer_config.json is missing")
    (folder("garbled") / "tokenizer_config.json").write_text("{not json")
    _refused(lambda: tok.read_files(tmp_path / "garbled", "garbled", tmp_path), "not JSON")
    _refused(lambda: tok.read_files(tmp_path / "absent", "absent", tmp_path), "does not exist")


def test_hf_disk_text_column_is_a_text_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from stemma.migration.textdata import TEXT, materialize_text

    docs = _corpus().split("\n\n")[:8]
    datasets.Dataset.from_dict({"body": docs, "n": list(range(8))}).save_to_disk(tmp_path / "hf")
    spec = {"source": "hf-disk:hf", "task": CAUSAL_LM, "fields": {"text": "body"}}
    splits = materialize_text(spec, "spec.yaml", lambda r: tmp_path / r)
    assert splits.format == TEXT and len(splits.train) + len(splits.eval) == 8
    assert sorted(r.completion for r in splits.train + splits.eval) == sorted(docs)
    _refused(
        lambda: materialize_text({**spec, "fields": {}}, "spec.yaml", lambda r: tmp_path / r),
        "no text column 'text'",
    )


def test_cli_build_reports_progress(built: Registry, tmp_path: Path, cli: Any) -> None:
    root = tmp_path / "repo"
    shutil.copytree(built.repo_root, root, symlinks=True)
    res = cli(["build", "model", "lm-sft"], root)
    assert res.code == 0, res.stderr
    assert "perplexity" in res.stdout


def test_lm_keys_are_refused_for_other_tasks() -> None:
    found = spec_problems("classification", {"tokenizer": "tok", "lm": {"block_size": 8}})
    assert [p for p, _ in found] == ["/tokenizer", "/lm"]
    assert spec_problems(CAUSAL_LM, {"tokenizer": "tok", "lm": {"block_size": 8}}) == []


def test_card_says_how_to_load_a_causal_lm(built: Registry) -> None:
    export = built.repo_root.parent / "export"
    card = (export / "lm-sft" / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "AutoTokenizer" in card
    assert "## Sample generations (greedy)" in card
    adapter = (export / "lm-lora" / "README.md").read_text()
    assert "PeftModel.from_pretrained(base" in adapter and "AutoModelForCausalLM" in adapter


def test_rebuild_copy_holds_the_tokenizers(built: Registry, tmp_path: Path) -> None:
    from stemma.migration.build import build_model
    from stemma.migration.verify import stage_copy

    for name in ("lm-base", "lm-lora"):  # the spec's tokenizer folder; the source's files
        copy = stage_copy(built, name, tmp_path / name)
        assert build_model(copy, name)["id"] == _manifest(built, name)["id"]


def test_a_cuda_causal_lm_build_is_refused(built: Registry, tmp_path: Path) -> None:
    from stemma.migration.build import build_model

    root = tmp_path / "repo"
    shutil.copytree(built.repo_root, root, symlinks=True)
    spec = root / "models" / "lm-sft" / "spec.yaml"
    spec.write_text(spec.read_text().replace("seed: 0}", "seed: 0, device: cuda}"))
    _refused(lambda: build_model(Registry.open(root), "lm-sft"), "/training/device", "CPU")


def test_training_leaves_the_process_deterministic_setting_as_it_was(built: Registry) -> None:
    import torch

    assert not torch.are_deterministic_algorithms_enabled()  # the builds above restored it
