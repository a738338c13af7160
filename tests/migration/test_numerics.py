"""Numeric modes: the pin happens before torch loads, manifests record it, settings check it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write
from factories import Fact
from stemma.migration.numerics import PORTABLE_ENV, mode_of
from stemma.registry import Registry
from stemma.registry.errors import StemmaError

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _python(code: str, env: dict[str, str] | None = None) -> str:
    import os

    full = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**full, **(env or {})}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not X86, reason="portable mode pins x86-64 code paths")
def test_pin_before_torch_caps_the_kernels_torch_reports() -> None:
    code = (
        "import json; from stemma.migration.numerics import pin, record\n"
        "p = pin('portable')\n"
        "import torch\n"
        "caps = torch.backends.cpu.get_cpu_capability()\n"
        "print(json.dumps([p.applied, caps, record('portable')]))"
    )
    applied, capability, doc = json.loads(_python(code))
    assert applied and doc["pinned"] and doc["env"] == dict(PORTABLE_ENV)
    assert capability in ("AVX2", "DEFAULT") and doc["cpu"]["capability"] == capability
    assert doc["cpu"]["vendor"] and doc["cpu"]["machine"]


def test_pin_after_torch_is_recorded_as_not_applied() -> None:
    code = (
        "import json, torch; from stemma.migration.numerics import pin, record\n"
        "p = pin('portable')\n"
        "print(json.dumps([p.applied, p.reason, record('portable')]))"
    )
    applied, reason, doc = json.loads(_python(code))
    assert not applied and "torch was imported" in reason
    assert doc["pinned"] is False and doc["note"] == reason and doc["env"] == {}


def test_native_pins_nothing_and_says_so() -> None:
    code = (
        "import json; from stemma.migration.numerics import pin, record\n"
        "pin('native'); import torch; print(json.dumps(record('native')))"
    )
    doc = json.loads(_python(code))
    assert doc["mode"] == "native" and doc["pinned"] and doc["env"] == {}


def test_mode_comes_from_the_settings_with_portable_as_default() -> None:
    assert mode_of({}) == "portable"
    assert mode_of({"numerics": "native"}) == "native"


def test_settings_refuse_an_unknown_mode(registry: Registry) -> None:
    settings = registry.repo_root / "stemma.yaml"
    write(settings, settings.read_text() + "defaults: {numerics: fast}\n")
    with pytest.raises(StemmaError, match="numerics"):
        Registry.open(registry.repo_root)
    write(settings, settings.read_text().replace("fast", "native"))
    assert Registry.open(registry.repo_root).settings.defaults == {"numerics": "native"}


def test_cli_build_records_the_pin(tmp_path: Path, registry: Registry) -> None:
    write(registry.root / "datasets/d/spec.yaml", "source: sklearn:digits\nselect: {limit: 200}\n")
    write(
        registry.root / "models/m/spec.yaml",
        "architecture: {family: mlp, hidden: [8]}\ndata: {train: d}\ntraining: {epochs: 1}\n",
    )
    stemma = str(Path(sys.executable).parent / "stemma")
    for args in (["dataset", "d"], ["model", "m", "-q"]):
        done = subprocess.run(
            [stemma, "build", *args], cwd=registry.repo_root, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    run = json.loads((registry.model_dir("m") / "manifest.json").read_text())["run"]
    numerics = run["numerics"]
    assert numerics["mode"] == "portable" and numerics["pinned"] is X86
    assert set(numerics["cpu"]) == {"machine", "vendor", "model", "capability"}
    assert 0 <= run["train_s"] <= run["duration_s"]


def test_build_records_a_fingerprint_and_doctor_compares_it(registry: Registry) -> None:
    write(registry.root / "datasets/d/spec.yaml", "source: sklearn:digits\nselect: {limit: 200}\n")
    write(
        registry.root / "models/m/spec.yaml",
        "architecture: {family: mlp, hidden: [8]}\ndata: {train: d}\n"
        "training: {epochs: 1, optimizer: adam}\n",
    )
    stemma = str(Path(sys.executable).parent / "stemma")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [stemma, *args], cwd=registry.repo_root, capture_output=True, text=True
        )

    for args in (["build", "dataset", "d"], ["build", "model", "m", "-q"]):
        assert run(*args).returncode == 0
    path = registry.model_dir("m") / "manifest.json"
    doc = json.loads(path.read_text())
    fingerprint = doc["run"]["numerics"]["fingerprint"]
    assert len(fingerprint["digest"]) == 16 and "optim.adam" in fingerprint["ops"]
    facts = Fact(registry.repo_root, "")  # computed once, kept in the store
    assert any(name.startswith("numerics-") for name in facts.names())
    done = run("doctor", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["machine"]["fingerprint"] == fingerprint  # the build's own pins, the cache
    assert [m["verdict"] for m in report["models"]] == ["reproducible"]
    # the run block is outside the id: a manifest from another machine differs only there
    fingerprint["ops"]["elementwise.sqrt"] = "0" * 12
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    done = run("doctor", "m")
    assert done.returncode == 1
    assert "differ from the build's on: elementwise.sqrt" in done.stdout


def test_a_damaged_fingerprint_cache_is_a_miss(tmp_path: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path\n"
        "from stemma.migration.numerics import pin; pin('portable')\n"
        "from stemma.migration import fingerprint\n"
        "from stemma.registry.store import derived\n"
        "root = Path(sys.argv[1]); d = root / '.stemma'\n"
        "first = fingerprint.of_this_machine(d)\n"
        "[name] = [n for n in os.listdir(d) if n.endswith('.duckdb')]\n"
        "for damage in ('garbage', 'foreign', 'fifo', 'link'):\n"
        "    if damage in ('garbage', 'foreign'):\n"
        "        [fact] = [f'numerics-{fingerprint._cache_key()}']\n"
        "        body = b'{\"version\": 1, \"ops\": {' if damage == 'garbage' else b'[1]'\n"
        "        assert derived.save(root, fact, body)\n"
        "    else:\n"
        "        os.remove(d / name)\n"
        "        if damage == 'fifo': os.mkfifo(d / name)\n"
        "        else: os.symlink('/dev/zero', d / name)\n"
        "    again = fingerprint.of_this_machine(d)\n"
        "    assert again == first, damage\n"
        "print(first['digest'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 16


def test_doctor_promises_nothing_without_a_comparable_record() -> None:
    from stemma.migration.doctor import DIFFERS, REPRODUCIBLE, UNKNOWN, predict
    from stemma.registry.records.manifest import Run

    fp = {"version": 1, "digest": "0" * 16, "ops": {"mm": "a", "sqrt": "b"}}
    here = {"mode": "portable", "pinned": True, "torch": "2.14.1", "fingerprint": fp}
    cpu = {"machine": "x86_64"}
    numerics = {"mode": "portable", "pinned": True, "cpu": cpu, "fingerprint": fp}
    run = {"started": "2026-01-01T00:00:00Z", "duration_s": 1.0, "stemma": "0"}
    run |= {"torch": "2.14.1", "device": "cpu", "numerics": numerics}

    def verdict(doc: dict[str, object]) -> str:
        return predict("m", Run.from_dict(doc), here).verdict

    assert verdict(run) == REPRODUCIBLE
    other = {**fp, "ops": {"mm": "a", "sqrt": "c"}}
    moved = predict(
        "m", Run.from_dict({**run, "numerics": {**numerics, "fingerprint": other}}), here
    )
    assert moved.verdict == DIFFERS and moved.ops == ["sqrt"]
    for changed in (
        {"torch": "2.13.0"},
        {"device": "cuda"},
        {"numerics": {"mode": "portable", "pinned": True, "cpu": cpu}},
        {"numerics": {**numerics, "mode": "native"}},
        {"numerics": {**numerics, "pinned": False}},
    ):
        assert verdict({**run, **changed}) == UNKNOWN, changed
    without = {k: v for k, v in run.items() if k != "device"}  # no device recorded: the CPU
    assert verdict(without) == REPRODUCIBLE


def test_pinning_again_after_torch_loaded_keeps_the_pin() -> None:
    code = (
        "import json; from stemma.migration import numerics\n"
        "first = numerics.pin('portable'); import torch\n"
        "again = numerics.pin('portable')  # what an in-process `stemma build` does\n"
        "other = numerics.pin('native')\n"
        "print(json.dumps([first.applied, again.applied, other.applied]))"
    )
    assert json.loads(_python(code)) == [True, True, False]
