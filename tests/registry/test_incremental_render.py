"""`stemma pipeline` after an edit of a few model specs renders only the files the edit can
change (`registry/_pipedelta.py`), and the result is a full render's, file for file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import SPECS, new_registry, write
from factories import Fact
from stemma.registry import Registry
from stemma.registry.pipeline import _pipecache, pipefiles, render
from stemma.registry.pipeline.render import render_files

CODE = "nets.small:build"
N = 14


def _spec(rng: random.Random, i: int, names: list[str]) -> str:
    """A random spec for model `m{i}`: a root (plain or entrypoint), a child of an earlier
    model (fine-tuned or LoRA), or (from m10 on) a model exploring m00-m09, none of which
    explores (two explorers that are each other's candidates would close a loop)."""
    kinds = ["root", "entry", "child", "child", "lora"] + (["auto"] if i >= 10 else [])
    kind = rng.choice(kinds) if names else "root"
    train = rng.choice(["digits-0to4", "digits-5to9"])
    lines = [f"data: {{train: {train}}}", f"training: {{epochs: 2, lr: 0.00{rng.randint(1, 9)}}}"]
    if rng.random() < 0.4:
        lines.append(f"description: model {i}, take {rng.randint(0, 99)}")
    if rng.random() < 0.3:
        lines.append(f"tags: [t{rng.randint(0, 3)}]")
    if kind == "root":
        lines.append("architecture: {family: mlp, hidden: [8]}")
    elif kind == "entry":
        lines.append(f"architecture: {{family: entrypoint, entrypoint: '{CODE}'}}")
    elif kind == "auto":
        lines.append("source: {model: auto, candidates: 'm0*'}")
    else:
        lines.append(f"source: {{model: {rng.choice(names)}, relation: finetune}}")
        if kind == "lora":
            lines.append("strategy: {mode: lora, lora: {r: 2, target_modules: [body.0]}}")
    return "\n".join(lines) + "\n"


PARTS = ("files", "docs", "inputs", "facts")


def _full_render(root: Path) -> tuple[list[str], dict[str, str], object]:
    """A full render's verdict, files, and what the render cache keeps of each file, input
    and model, with the render cache put back after."""
    cache = Fact(root, _pipecache.FACT)
    kept = cache.read_bytes()
    cache.unlink()
    verdict = [str(d) for d in pipefiles.differences(Registry.open(root))]
    doc = _pipecache.load(Registry.open(root))
    assert doc is not None
    files = render_files(Registry.open(root))
    cache.write_bytes(kept)
    return verdict, files, {part: doc[part] for part in PARTS}


def _on_disk(root: Path) -> dict[str, str]:
    """Every pipeline file `stemma pipeline` wrote (its header), by repo-relative path."""
    found = {"dvc.yaml": (root / "dvc.yaml").read_text()}
    for kind in ("datasets", "models"):
        for path in sorted((root / kind).glob("*/dvc.yaml")):
            found[str(path.relative_to(root))] = path.read_text()
    return found


@pytest.fixture
def chain(registry: Registry) -> Path:
    """A registry of N random models, a code file, a stage of one's own, its pipeline
    written."""
    root = new_registry(registry.repo_root.parent / "inc", registry.repo_root, SPECS).repo_root
    for old in ("base", "ft", "scratch"):
        (root / "models" / old / "spec.yaml").unlink()
        (root / "models" / old).rmdir()
    rng = random.Random(7)
    names: list[str] = []
    for i in range(N):
        write(root / f"models/m{i:02d}/spec.yaml", _spec(rng, i, names))
        names.append(f"m{i:02d}")
    write(root / "nets/small.py", "def build(in_shape, num_classes): ...\n")
    write(root / "dvc.yaml", "stages:\n  mine:\n    cmd: echo hi\n")
    pipefiles.write(Registry.open(root))
    return root


def test_one_spec_edit_renders_only_what_it_can_change(
    chain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_full_render(reg: Registry, facts: object = None) -> None:
        raise AssertionError("a full render")

    spec = chain / "models/m05/spec.yaml"
    spec.write_text(spec.read_text() + "description: edited\n")
    with monkeypatch.context() as patch:
        patch.setattr(pipefiles, "render_docs", no_full_render)
        assert [str(d) for d in pipefiles.differences(Registry.open(chain))] == [
            "dvc.yaml is out of step with the specs"
        ]
        assert pipefiles.write(Registry.open(chain)).written == ["dvc.yaml"]
        assert pipefiles.differences(Registry.open(chain)) == []


def test_random_spec_edits_give_the_full_render(
    chain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = pipefiles.render_docs
    renders: list[str] = []
    monkeypatch.setattr(
        pipefiles, "render_docs", lambda reg, facts=None: renders.append("") or full(reg, facts)
    )
    rng = random.Random(20240611)
    changes = 0  # steps whose render was kept as a change to the stored one
    for step in range(24):
        names = sorted(p.name for p in (chain / "models").iterdir() if p.is_dir())
        action = rng.choice(["edit", "edit", "edit", "add", "remove", "hand"])
        if action == "add":
            i = 50 + step
            write(chain / f"models/m{i:02d}/spec.yaml", _spec(rng, i, names))
        elif action == "remove" and len(names) > 3:
            gone = rng.choice(names)
            (chain / "models" / gone / "spec.yaml").unlink()
        elif action == "hand":  # a file edited by hand besides a spec: written back
            path = chain / "models" / rng.choice(names) / "dvc.yaml"
            if path.is_file():
                path.write_text(path.read_text() + "# by hand\n")
        if action in ("edit", "hand") or (action == "remove" and len(names) <= 3):
            i = rng.randrange(len(names))
            # an earlier model as source: no loops
            write(chain / f"models/{names[i]}/spec.yaml", _spec(rng, i, names[:i]))
        verdict = [str(d) for d in pipefiles.differences(Registry.open(chain))]
        assert not renders, (step, action)  # each edit was followed, not rendered whole
        doc = _pipecache.load(Registry.open(chain))
        assert doc is not None
        changes += Fact(chain, _pipecache.DELTA).exists()
        full_verdict, full_files, full_parts = _full_render(chain)
        assert verdict == full_verdict, (step, action)
        assert {part: doc[part] for part in PARTS} == full_parts, (step, action)
        pipefiles.write(Registry.open(chain))
        renders.clear()  # the full render to compare with, and one to write a hand edit back
        assert _on_disk(chain) == full_files, (step, action)
    assert changes > 0


def test_the_root_files_own_stages_are_parsed_once_per_text(
    chain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root dvc.yaml's own stages come from the last render's cache while its text is the
    one that render read: a check after a spec edit does not parse the file again; a hand
    edit of the root's own stage is parsed and kept."""
    parsed: list[str] = []
    real = render.load_yaml_text
    monkeypatch.setattr(render, "load_yaml_text", lambda t, w: parsed.append(w) or real(t, w))
    spec = chain / "models/m05/spec.yaml"
    for take in range(3):
        spec.write_text(spec.read_text() + f"description: take {take}\n")
        assert [str(d) for d in pipefiles.differences(Registry.open(chain))] == [
            "dvc.yaml is out of step with the specs"
        ]
        # the first check reads the root as `stemma pipeline` wrote it: parsed once
        assert parsed == (["dvc.yaml"] if take == 0 else []), take
        parsed.clear()
    root = chain / "dvc.yaml"
    root.write_text(root.read_text().replace("echo hi", "echo bye"))
    spec.write_text(spec.read_text() + "description: take 4\n")
    pipefiles.write(Registry.open(chain))
    assert parsed == ["dvc.yaml"]
    assert "echo bye" in root.read_text() and "echo hi" not in root.read_text()
    assert pipefiles.differences(Registry.open(chain)) == []


def test_a_render_after_an_edit_is_kept_as_its_change(
    chain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a spec edit the stored render is not written again: the change is kept beside
    it (the entries that differ); a model added, or more changed entries than MAX_CHANGED,
    write the render whole, under a new serial."""
    stored = Fact(chain, _pipecache.FACT)
    first = stored.read_bytes()
    serial = json.loads(first)["serial"]
    spec = chain / "models/m05/spec.yaml"
    for take in range(3):
        spec.write_text(spec.read_text() + f"description: take {take}\n")
        pipefiles.differences(Registry.open(chain))
        assert stored.read_bytes() == first
        change = json.loads(Fact(chain, _pipecache.DELTA).read_bytes())
        assert change["on"] == serial
        assert 0 < sum(len(change[part]) for part in PARTS) <= 8, take
    assert _pipecache.load(Registry.open(chain))["fingerprint"] == change["fingerprint"]  # type: ignore[index]
    write(
        chain / "models/m60/spec.yaml", "data: {train: digits-0to4}\narchitecture: {family: mlp}\n"
    )
    pipefiles.differences(Registry.open(chain))
    whole = json.loads(stored.read_bytes())
    assert whole["serial"] != serial
    # the change kept for the last stored render is not one to this render: left out
    assert _pipecache.load(Registry.open(chain))["fingerprint"] == whole["fingerprint"]  # type: ignore[index]
    now = stored.read_bytes()
    monkeypatch.setattr(_pipecache, "MAX_CHANGED", 1)
    spec.write_text(spec.read_text() + "description: take 9\n")
    pipefiles.differences(Registry.open(chain))
    assert stored.read_bytes() != now


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "another serial", "an entry the render lacks", "no parts"],
)
def test_a_damaged_change_is_a_miss(chain: Path, damage: str) -> None:
    """A kept change that cannot be read, or is no change to the stored render, is left
    out: the check answers as a full render does."""
    spec = chain / "models/m05/spec.yaml"
    spec.write_text(spec.read_text() + "description: edited\n")
    pipefiles.differences(Registry.open(chain))
    fact = Fact(chain, _pipecache.DELTA)
    body = fact.read_bytes()
    change = json.loads(body)
    if damage == "garbage":
        body = random.Random(3).randbytes(500)
    elif damage == "truncated":
        body = body[: len(body) // 2]
    elif damage == "another serial":
        body = json.dumps({**change, "on": "0" * 16}).encode()
    elif damage == "an entry the render lacks":
        body = json.dumps({**change, "files": {"models/zz/dvc.yaml": "0"}}).encode()
    else:
        body = json.dumps({k: v for k, v in change.items() if k not in PARTS}).encode()
    fact.write_bytes(body)
    spec.write_text(spec.read_text() + "description: edited again\n")
    verdict = [str(d) for d in pipefiles.differences(Registry.open(chain))]
    assert verdict == _full_render(chain)[0] == ["dvc.yaml is out of step with the specs"]
