"""Code and configuration a spec can smuggle in: transformers remote code (`auto_map`),
unbounded model sizes, spec fields no family reads, one grammar for entrypoints, errors that
name their file, and patterns that refuse a trailing newline.

Every build here that must be refused is refused before a module is allocated; the one that
would hang without the size limit runs in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git, write
from stemma.registry import Registry
from stemma.registry.check import consistency as cons
from stemma.registry.errors import InvalidName, StemmaError

BERT: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 16,
}
EVIL = """
from pathlib import Path
Path(__file__).with_name("PWNED").write_text("ran")
from transformers import BertForSequenceClassification
class EvilModel(BertForSequenceClassification):
    pass
"""
GOOD = """
from transformers import BertForSequenceClassification
class GoodModel(BertForSequenceClassification):
    pass
"""
TOK = "source: file:datasets/tok/tokens.npz\nsplit: {eval: 0.25}\n"
AUTO = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}


def _evil_folder(where: Path) -> Path:
    """A folder (outside any registry) whose module leaves a PWNED file when imported."""
    write(where / "modeling_evil.py", EVIL)
    return where


def _pwned(folder: Path) -> bool:
    return (folder / "PWNED").exists()


def _spec(arch: dict[str, Any]) -> str:
    return f"architecture: {json.dumps(arch)}\ndata: {{train: tok}}\n"


def _violations(reg: Registry, subject: str) -> list[cons.Violation]:
    return [v for v in cons.check(Registry.open(reg.root)) if v.subject == subject]


def _settings(reg: Registry, text: str) -> Registry:
    write(reg.repo_root / "stemma.yaml", text)
    return Registry.open(reg.root)


# -- 1. transformers remote code ----------------------------------------------------------------


def test_inline_auto_map_is_refused_by_validate_and_build(
    registry: Registry, tmp_path: Path, cli: Any
) -> None:
    from stemma.migration.architectures import build_module, make_config
    from stemma.registry.errors import BuildError

    evil = _evil_folder(tmp_path / "elsewhere")
    arch = {
        "family": "transformers",
        "config": {**BERT, "auto_map": AUTO, "name_or_path": str(evil)},
        "options": {"trust_remote_code": True},
    }
    write(registry.root / "datasets/tok/spec.yaml", TOK)
    write(registry.root / "models/evil/spec.yaml", _spec(arch))
    found = _violations(registry, "model:evil")
    pointers = {(v.code, v.pointer) for v in found}
    assert (
        cons.UNTRUSTED_ENTRYPOINT,
        "/architecture/config/auto_map/AutoModelForSequenceClassification",
    ) in pointers
    assert (cons.SCHEMA, "/architecture/options/trust_remote_code") in pointers
    res = cli(["validate"], registry.repo_root)
    assert res.code == 1 and "models/evil/spec.yaml" in res.stderr + res.stdout
    with pytest.raises(BuildError, match="auto_map") as err:
        build_module(make_config(arch, [8], 2), (), "models/evil/spec.yaml")
    assert "\n" not in str(err.value)
    assert not _pwned(evil)
    modules = Path.home() / ".cache/huggingface/modules"
    assert not any(p.name.startswith("modeling_evil") for p in modules.rglob("*"))


def test_auto_map_in_a_config_folder_is_refused(registry: Registry, tmp_path: Path) -> None:
    from stemma.migration.build import build_model
    from stemma.registry.errors import BuildError

    folder = registry.root / "hf/x"
    _evil_folder(folder)
    write(folder / "config.json", json.dumps({**BERT, "auto_map": AUTO}))
    write(registry.root / "datasets/tok/spec.yaml", TOK)
    arch = {"family": "transformers", "path": "hf/x", "options": {"trust_remote_code": True}}
    write(registry.root / "models/evil/spec.yaml", _spec(arch))
    found = _violations(registry, "model:evil")
    assert any(
        v.code == cons.UNTRUSTED_ENTRYPOINT and v.pointer == "/architecture/path" for v in found
    ), found
    with pytest.raises(BuildError, match="modeling_evil"):
        build_model(Registry.open(registry.root), "evil")
    assert not _pwned(folder)


def test_trusted_remote_code_builds_as_an_entrypoint(registry: Registry) -> None:
    """Listed in stemma.yaml, the class is imported like an entrypoint (from the registry
    root), never through transformers' trust_remote_code."""
    from stemma.migration.architectures import build_module, make_config
    from stemma.migration.entrypoints import importable

    write(registry.root / "modeling_good.py", GOOD)
    reg = _settings(registry, "version: 1\nentrypoints: [modeling_good:GoodModel]\n")
    auto = {"AutoModelForSequenceClassification": "modeling_good.GoodModel"}
    arch = {"family": "transformers", "config": {**BERT, "auto_map": auto}}
    write(reg.root / "datasets/tok/spec.yaml", TOK)
    write(reg.root / "models/good/spec.yaml", _spec(arch))
    assert _violations(reg, "model:good") == []
    importable(reg.repo_root)
    module = build_module(make_config(arch, [8], 2), reg.settings.entrypoints, "good")
    assert type(module).__name__ == "GoodModel"
    hub = {"AutoModelForSequenceClassification": "org/repo--modeling_good.GoodModel"}
    write(reg.root / "models/good/spec.yaml", _spec({**arch, "config": {**BERT, "auto_map": hub}}))
    assert [v.code for v in _violations(reg, "model:good")] == [cons.UNTRUSTED_ENTRYPOINT]


def test_register_refuses_remote_code(registry: Registry, tmp_path: Path) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file
    from stemma.migration.register import register
    from stemma.registry.errors import BuildError

    folder = _evil_folder(tmp_path / "hf")
    cfg = transformers.AutoConfig.for_model(**BERT, num_labels=2)
    with torch.random.fork_rng(devices=[]):
        model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    write(
        folder / "config.json", json.dumps({**BERT, "auto_map": AUTO, "name_or_path": str(folder)})
    )
    for options in ({}, {"trust_remote_code": True}):
        arch = {"family": "transformers", "options": options}
        with pytest.raises(BuildError, match=r"modeling_evil|trust_remote_code"):
            register(Registry.open(registry.root), "r", folder, architecture=arch)
        assert not _pwned(folder)
        assert not (registry.root / "models/r").exists()


def test_audit_flags_remote_code_like_a_new_entrypoint(registry: Registry) -> None:
    from stemma.lineage import audit as lib

    repo = registry.repo_root
    write(repo / "modeling_good.py", GOOD)
    reg = _settings(registry, "version: 1\nentrypoints: [modeling_good:GoodModel]\n")
    write(reg.root / "datasets/tok/spec.yaml", TOK)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    auto = {"AutoModelForSequenceClassification": "modeling_good.GoodModel"}
    arch = {"family": "transformers", "config": {**BERT, "auto_map": auto}}
    write(reg.root / "models/good/spec.yaml", _spec(arch))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "remote code")
    report = lib.audit(repo, "HEAD~1", "HEAD")
    flagged = [v for v in report.violations if v.code == "new-entrypoint"]
    assert [(v.subject, v.pointer) for v in flagged] == [
        ("model:good", "/architecture/config/auto_map/AutoModelForSequenceClassification")
    ]


# -- 5. sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_hidden_layers", 10_000_000), ("hidden_size", 1e9), ("vocab_size", 2**40)],
)
def test_validate_refuses_models_past_the_size_limit(
    registry: Registry, field: str, value: Any
) -> None:
    write(registry.root / "datasets/tok/spec.yaml", TOK)
    arch = {"family": "transformers", "config": {**BERT, field: value}}
    write(registry.root / "models/big/spec.yaml", _spec(arch))
    found = _violations(registry, "model:big")
    assert [v.code for v in found] == [cons.SCHEMA], found
    assert "limits" in found[0].message and found[0].pointer.startswith("/architecture/config")


def test_the_limit_is_a_setting(registry: Registry) -> None:
    from stemma.registry.records.core import settings_look_valid
    from stemma.registry.store.documents import validate_document

    write(registry.root / "datasets/tok/spec.yaml", TOK)
    arch = {"family": "transformers", "config": {**BERT, "vocab_size": 2**36}}
    write(registry.root / "models/big/spec.yaml", _spec(arch))
    assert _violations(registry, "model:big")
    reg = _settings(registry, "version: 1\nlimits: {max_parameters: 10000000000000}\n")
    assert reg.settings.limits["max_parameters"] == 10**13
    assert _violations(reg, "model:big") == []
    for bad in ({"max_parameters": 0}, {"max_parameters": True}, {"other": 1}, []):
        doc = {"version": 1, "limits": bad}
        assert settings_look_valid(doc) is False
        with pytest.raises(StemmaError):
            validate_document(doc, "settings", "stemma.yaml")


def test_build_refuses_a_deep_model_before_allocating(registry: Registry) -> None:
    code = (
        "from stemma.migration.architectures import build_module, make_config\n"
        "from stemma.registry.errors import BuildError\n"
        f"arch = {{'family': 'transformers', 'config': {dict(BERT, num_hidden_layers=10**7)!r}}}\n"
        "try:\n"
        "    build_module(make_config(arch, [8], 2), (), 'm', limits={})\n"
        "except BuildError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "max_parameters" in proc.stdout or "max_layers" in proc.stdout, proc.stderr[-2000:]


# -- 15. one rule, one home -------------------------------------------------------------------


def test_settings_fast_check_agrees_with_the_schema_on_entrypoints() -> None:
    from stemma import schemas
    from stemma.registry.records.core import settings_look_valid

    check = schemas.validator("settings")
    rng = random.Random(0)
    alphabet = "ab_Z9.:ó\n é-"
    cases = ["módulo:fn", "a:b\n", "a.b:c", "a:b", "_x.y:z", "a..b:c", "9a:b"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(400)]
    for entry in cases:
        doc = {"version": 1, "entrypoints": [entry]}
        assert settings_look_valid(doc) == check.is_valid(doc), entry
    assert not settings_look_valid({"version": 1, "entrypoints": ["módulo:fn"]})


@pytest.mark.parametrize(
    ("arch", "field"),
    [
        ({"family": "mlp", "entrypoint": "os:system"}, "entrypoint"),
        ({"family": "mlp", "options": {}}, "options"),
        ({"family": "cnn", "hidden": [4]}, "hidden"),
        ({"family": "timm", "name": "resnet18", "dropout": 0.5}, "dropout"),
        ({"family": "torchvision", "name": "resnet18", "config": BERT}, "config"),
        ({"family": "transformers", "config": BERT, "name": "bert"}, "name"),
        ({"family": "transformers", "config": BERT, "path": "hf/x"}, "path"),
        ({"family": "entrypoint", "entrypoint": "m:f", "hidden": [4]}, "hidden"),
    ],
)
def test_a_field_the_family_does_not_read_is_an_error(
    registry: Registry, arch: dict[str, Any], field: str
) -> None:
    write(registry.root / "datasets/tok/spec.yaml", TOK)
    write(registry.root / "models/m/spec.yaml", _spec(arch))
    found = _violations(registry, "model:m")
    assert [(v.code, v.pointer) for v in found] == [(cons.SCHEMA, f"/architecture/{field}")]
    assert arch["family"] in found[0].message


def test_entrypoint_grammar_has_one_home() -> None:
    from stemma import schemas
    from stemma.registry.rules import naming

    defs = json.loads((Path(schemas.__file__).parent / "defs.json").read_text())["$defs"]
    assert defs["entrypoint"]["pattern"] == naming.schema_pattern(naming.ENTRYPOINT_PATTERN)
    assert defs["name"]["pattern"] == naming.schema_pattern(naming.NAME_PATTERN)


# -- 16. errors that name their file ----------------------------------------------------------


def test_a_bad_torch_dtype_names_the_field(registry: Registry) -> None:
    from stemma.migration.architectures import build_module, make_config
    from stemma.registry.errors import BuildError

    write(registry.root / "datasets/tok/spec.yaml", TOK)
    arch = {"family": "transformers", "config": {**BERT, "torch_dtype": "os.system"}}
    write(registry.root / "models/m/spec.yaml", _spec(arch))
    found = _violations(registry, "model:m")
    assert [(v.code, v.pointer) for v in found] == [
        (cons.SCHEMA, "/architecture/config/torch_dtype")
    ]
    with pytest.raises(BuildError, match=r"^models/m/spec.yaml at /architecture.*torch_dtype"):
        build_module(make_config(arch, [8], 2), (), "models/m/spec.yaml")


def test_a_deeply_nested_config_json_names_the_file(registry: Registry, cli: Any) -> None:
    from stemma.migration.families import read_hf_config

    folder = registry.root / "hf/deep"
    folder.mkdir(parents=True)
    deep = '{"model_type": "bert", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (folder / "config.json").write_text(deep)
    write(registry.root / "datasets/tok/spec.yaml", TOK)
    write(
        registry.root / "models/m/spec.yaml", _spec({"family": "transformers", "path": "hf/deep"})
    )
    found = _violations(registry, "model:m")
    assert len(found) == 1 and "nested" in found[0].message, found
    assert found[0].path == "models/m/spec.yaml" and found[0].pointer == "/architecture/path"
    with pytest.raises(StemmaError, match=r"config.json.*nested"):
        read_hf_config(folder, "hf/deep")
    res = cli(["validate"], registry.repo_root)
    assert res.code == 1 and "internal error" not in res.stderr


def test_deep_register_options_is_one_usage_line(registry: Registry, cli: Any) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    res = cli(
        ["register", "r", "-w", "w.safetensors", "--family", "mlp", "--options", deep],
        registry.repo_root,
    )
    assert res.code == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--options" in res.stderr


def test_usage_errors_are_one_line(registry: Registry) -> None:
    for args in (["ls", "--bogus"], ["nosuchcommand"], ["show"]):
        proc = subprocess.run(
            [sys.executable, "-m", "stemma.cli.app", *args],
            cwd=registry.repo_root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_trailing_newlines_are_refused(registry: Registry) -> None:
    from stemma import schemas
    from stemma.registry.rules import naming

    for call in (
        lambda: naming.check_stage("prod\n"),
        lambda: naming.version_tag("m", "v1.0.0\n"),
        lambda: naming.check_name("m\n"),
        lambda: naming.parse_entrypoint("a:b\n"),
    ):
        with pytest.raises(InvalidName):
            call()
    assert naming.parse_tag("m@v1.0.0\n") is None and naming.parse_tag("m#prod#1\n") is None
    spec = schemas.validator("model-spec")
    assert not spec.is_valid({"data": {"train": "tok\n"}})
    assert not spec.is_valid({"data": {"train": "tok"}, "hub_id": "org/x\n"})
    manifest = schemas.validator("dataset-spec")
    assert not manifest.is_valid({"source": "sklearn:digits\n"})
