"""A check that takes its stored verdict says what a check with nothing stored says.

A seeded walk through random changes to a small registry (chains of models, a merge,
manifests, metric files, pipeline files, settings): after each change, the check of the
registry, which takes its stored verdict and reads only the folders that changed where it
can, must give the violations of a check of a copy without the store.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import factories
import pytest
from conftest import write
from stemma.registry import Registry
from stemma.registry.check import consistency
from stemma.registry.check.consistency import check
from stemma.registry.errors import StemmaError
from stemma.registry.rules.parents import combined_id, is_merge, parents_of
from stemma.registry.store.files import digest

SEEDS = (0, 1, 2)
STEPS = 40

# Besides `populated`'s base <- ft and scratch: a chain base <- ft <- ft2 <- ft3 and a merge.
EXTRA = {
    "models/ft2/spec.yaml": "source: {model: ft, relation: finetune}\n"
    "data: {train: digits-5to9}\ntraining: {epochs: 2, lr: 0.01}\n",
    "models/ft3/spec.yaml": "source: {model: ft2, relation: finetune}\n"
    "data: {train: digits-5to9}\ntraining: {epochs: 3}\n",
    "models/merged/spec.yaml": "source: {relation: merge, models: [ft2, scratch],"
    " merge: {method: linear}}\ndata: {train: digits-5to9}\ntraining: {epochs: 2}\n",
}
CONFLICT = "<<<<<<< HEAD\n=======\n>>>>>>> other\n"


def messages(root: Path) -> list[str]:
    return [str(v) for v in check(Registry.open(root))]


def build(root: Path, name: str, accuracy: float, gate: bool = False) -> bool:
    """Write a manifest of model `name` from its spec and its parents' manifests now
    (False where a spec or a parent's manifest cannot be read)."""
    reg = Registry.open(root)
    try:
        spec = reg.model_spec(name)
        extra: dict[str, object] = {}
        if gate:  # the build's gate failed
            result = {"metric": "accuracy", "op": ">=", "threshold": 0.5, "passed": False}
            extra["gates"] = [{**result, "value": accuracy}]
        if is_merge(spec):
            parents = []
            for parent in parents_of(spec):
                found = reg.model_manifest(parent) if reg.has_model(parent) else None
                parents.append({"model": parent, "id": found.id if found else digest("missing")})
            first = parents[0]["model"]
            ids = [p["id"] for p in parents]
            source = {"model": first, "relation": "merge", "id": combined_id(ids)}
            extra["source"] = {**source, "parents": parents}
        factories.model_manifest(reg, name, accuracy=accuracy, **extra)
    except StemmaError:
        return False
    return True


class Walk:
    """The registry, the changes made to it that may be undone, and the random menu."""

    def __init__(self, root: Path, stash: Path, rng: random.Random) -> None:
        self.root, self.stash, self.rng = root, stash, rng
        self.models = root / "models"
        # what was changed -> how to put it back (the last good state of a file or folder)
        self.undo: dict[Path, Callable[[], None]] = {}
        self.added = 0
        self.log: list[str] = []

    def names(self) -> list[str]:
        return sorted(p.name for p in self.models.iterdir() if (p / "spec.yaml").is_file())

    def pick(self, having: str | None = None) -> str | None:
        """A model whose folder is there (and whose spec holds `having`)."""
        names = [
            n
            for n in self.names()
            if having is None or re.search(having, (self.models / n / "spec.yaml").read_text())
        ]
        return self.rng.choice(names) if names else None

    def picked(self, filename: str, having: str | None = None) -> tuple[str, Path] | None:
        """A model (`pick`) and its file `filename`, kept to put back (`keep`)."""
        name = self.pick(having)
        if name is None:
            return None
        path = self.models / name / filename
        self.keep(path)
        return name, path

    def keep(self, path: Path) -> None:
        """Remember how to put `path` back as it is now, unless a change already did."""
        if path in self.undo:
            return
        body = path.read_bytes() if path.is_file() else None

        def back() -> None:
            if body is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(body)

        self.undo[path] = back

    def heal(self) -> str | None:
        """Undo one change (a file is put back only while its folder is there)."""
        ready = [p for p in self.undo if p.parent.is_dir()]
        if not ready:
            return None
        path = self.rng.choice(sorted(ready))
        self.undo.pop(path)()
        return f"undo {path.relative_to(self.root)}"

    # the menu: each change returns what it did, or None where it could not

    def edit_spec(self) -> str | None:
        found = self.picked("spec.yaml", r"epochs: \d")
        if found is None:
            return None
        name, path = found
        epochs = self.rng.choice([1, 4, 12])
        write(path, re.sub(r"epochs: \d+", f"epochs: {epochs}", path.read_text(), count=1))
        return f"{name}: epochs {epochs}"

    def comment_spec(self) -> str | None:
        found = self.picked("spec.yaml")
        if found is None:
            return None
        name, path = found
        with open(path, "a") as fh:
            fh.write("# edited\n")
        return f"{name}: a comment"

    def same_size(self) -> str | None:
        """Another digit in place: the same inode and size, the mtime put back."""
        found = self.picked("spec.yaml", r"epochs: \d\b")
        if found is None:
            return None
        name, path = found
        before, text = path.stat(), path.read_text()
        digit = self.rng.choice([d for d in "23456789" if f"epochs: {d}" not in text])
        with open(path, "w") as fh:
            fh.write(re.sub(r"epochs: \d\b", f"epochs: {digit}", text, count=1))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return f"{name}: epochs {digit} in place"

    def gate(self) -> str | None:
        found = self.picked("spec.yaml", r"gates:")
        if found is None:
            return None
        name, path = found
        limit = self.rng.choice(["0.2", "0.5", "0.95"])
        write(path, re.sub(r'">= [0-9.]+"', f'">= {limit}"', path.read_text(), count=1))
        return f"{name}: gate >= {limit}"

    def source(self) -> str | None:
        found = self.picked("spec.yaml", r"source: \{")
        if found is None:
            return None
        name, path = found
        others = [*self.names(), "nope"]
        text = path.read_text()
        if "models: [" in text:
            picked = self.rng.sample(others, 2)
            new = re.sub(r"models: \[[^]]*\]", f"models: [{', '.join(picked)}]", text)
        else:
            picked = [self.rng.choice(others)]
            new = re.sub(r"model: [\w-]+", f"model: {picked[0]}", text, count=1)
        write(path, new)
        return f"{name}: source {picked}"

    def unreadable(self) -> str | None:
        found = self.picked("spec.yaml")
        if found is None:
            return None
        name, path = found
        text = path.read_text()
        if self.rng.random() < 0.5:
            write(path, text.replace("data:", "bogus: 1\ndata:", 1))
            return f"{name}: unknown key"
        write(path, text + "tags: [unclosed\n")
        return f"{name}: bad YAML"

    def rebuild(self) -> str | None:
        name = self.pick()
        if name is None:
            return None
        path = self.models / name / "manifest.json"
        accuracy = self.rng.choice([0.3, 0.6, 0.9])
        gate = self.rng.random() < 0.3
        if not build(self.root, name, accuracy, gate):
            return None
        self.undo.pop(path, None)  # the new manifest is the one to go back to
        return f"{name}: built, accuracy {accuracy}" + (", a gate failed" if gate else "")

    def other_metrics(self) -> str | None:
        """The manifest written again with other metrics (its sources' ids as they were)."""
        name = self.pick()
        path = self.models / (name or "-") / "manifest.json"
        if name is None or not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            return None
        accuracy = self.rng.choice([0.35, 0.65, 0.95])
        doc["metrics"] = {"accuracy": accuracy, "loss": round(1 - accuracy, 6)}
        self.keep(path)
        Registry.open(self.root).write_model_manifest(name, doc)
        return f"{name}: manifest rewritten, accuracy {accuracy}"

    def tamper(self) -> str | None:
        """A manifest's accuracy edited by hand at the same size, the mtime put back."""
        name = self.pick()
        path = self.models / (name or "-") / "manifest.json"
        if name is None or not path.is_file():
            return None
        before, text = path.stat(), path.read_text()
        found = re.search(r'"accuracy": ?0\.(\d)', text)
        if found is None:
            return None
        self.keep(path)
        digit = "7" if found.group(1) != "7" else "8"
        with open(path, "w") as fh:
            fh.write(text[: found.start(1)] + digit + text[found.end(1) :])
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return f"{name}: manifest edited in place"

    def drop_manifest(self) -> str | None:
        choices = [
            p
            for p in [
                *self.models.glob("*/manifest.json"),
                *self.root.glob("datasets/*/manifest.json"),
            ]
            if p.is_file()
        ]
        if not choices:
            return None
        path = self.rng.choice(sorted(choices))
        self.keep(path)
        if self.rng.random() < 0.7:
            path.unlink()
            return f"{path.relative_to(self.root)} removed"
        path.write_text("{")
        return f"{path.relative_to(self.root)} damaged"

    def dataset(self) -> str | None:
        name = self.rng.choice(["digits-0to4", "digits-5to9"])
        path = self.root / "datasets" / name / "manifest.json"
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            return None
        dtype = self.rng.choice(["uint8", "float32", "float64"])
        Registry.open(self.root).write_dataset_manifest(name, {**doc, "dtype": dtype})
        self.undo.pop(path, None)  # rebuilt: this one stays
        return f"{name}: dataset rebuilt, {dtype}"

    def conflict(self) -> str | None:
        found = self.picked("dvc.yaml")
        if found is None:
            return None
        name, path = found
        path.write_text(CONFLICT)
        return f"{name}: conflict in dvc.yaml"

    def metrics_file(self) -> str | None:
        name = self.pick()
        manifest = self.models / (name or "-") / "manifest.json"
        if name is None or not manifest.is_file():
            return None
        try:
            metrics = dict(json.loads(manifest.read_text())["metrics"])
        except (ValueError, KeyError, TypeError):
            return None
        how = self.rng.choice(["same", "other", "missing"])
        if how == "other":
            metrics["accuracy"] = round(metrics["accuracy"] + 0.01, 6)
        elif how == "missing":
            metrics.pop("loss", None)
        path = self.models / name / "metrics.json"
        self.keep(path)
        path.write_text(json.dumps(metrics))
        return f"{name}: metrics.json {how}"

    def curve_file(self) -> str | None:
        name = self.pick()
        manifest = self.models / (name or "-") / "manifest.json"
        if name is None or not manifest.is_file():
            return None
        try:
            accuracy = json.loads(manifest.read_text())["metrics"]["accuracy"]
        except (ValueError, KeyError, TypeError):
            return None
        off = self.rng.choice([0.0, 0.00001, 0.1])
        path = self.models / name / "curve.json"
        self.keep(path)
        path.write_text(json.dumps([{"epoch": 1, "eval_accuracy": accuracy + off}]))
        return f"{name}: curve.json off by {off}"

    def registered(self) -> str | None:
        """The spec removed from a built model: its manifest's copy of the spec stands in."""
        names = [n for n in self.names() if (self.models / n / "manifest.json").is_file()]
        if not names:
            return None
        name = self.rng.choice(names)
        path = self.models / name / "spec.yaml"
        self.keep(path)
        path.unlink()
        return f"{name}: spec removed, manifest kept"

    def stray(self) -> str | None:
        """A folder under models/ with neither spec nor manifest."""
        self.added += 1
        folder = self.models / f"stray{self.added}"
        folder.mkdir()
        file = self.rng.choice(["dvc.yaml", "metrics.json"])
        (folder / file).write_text("stages: {}\n" if file == "dvc.yaml" else "{}")

        def back() -> None:
            shutil.rmtree(folder)

        self.undo[folder] = back
        return f"{folder.name}: a folder with only {file}"

    def dataset_spec(self) -> str | None:
        path = self.root / "datasets/digits-0to4/spec.yaml"
        if not path.is_file():
            return None
        self.keep(path)
        seed = self.rng.choice([1, 2, 3])
        write(path, re.sub(r"seed: \d+", f"seed: {seed}", path.read_text(), count=1))
        return f"digits-0to4: split seed {seed}"

    def between(self) -> str | None:
        """No change, but `check_state` (which keeps a verdict, never takes one) runs."""
        consistency.check_state(Registry.open(self.root))
        return "check_state"

    def touch(self) -> str | None:
        """A stamp moves, the content stays."""
        name = self.pick()
        if name is None:
            return None
        files = sorted(p for p in (self.models / name).iterdir() if p.is_file())
        path = self.rng.choice(files)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_007))
        return f"{path.relative_to(self.root)} touched"

    def remove_folder(self) -> str | None:
        name = self.pick()
        if name is None:
            return None
        folder, away = self.models / name, self.stash / name
        if away.exists():
            return None
        folder.rename(away)  # the same inodes when it comes back

        def back() -> None:
            away.rename(folder)

        self.undo[folder] = back
        return f"{name}: folder removed"

    def swap(self) -> str | None:
        """Two model folders trade names: the same list of folders, each another's files."""
        names = self.names()
        if len(names) < 2:
            return None
        one, two = self.rng.sample(names, 2)
        a, b, between = self.models / one, self.models / two, self.stash / "swapping"

        def trade() -> None:
            if a.is_dir() and b.is_dir():  # (a later change may have taken one away)
                a.rename(between)
                b.rename(a)
                between.rename(b)

        trade()
        self.undo.setdefault(a, trade)
        return f"{one} and {two} swapped"

    def add_folder(self) -> str | None:
        self.added += 1
        name = f"extra{self.added}"
        folder = self.models / name
        parent = self.rng.choice([None, *self.names()])
        source = f"source: {{model: {parent}, relation: finetune}}\n" if parent else ""
        arch = "" if parent else "architecture: {family: mlp, hidden: [8]}\n"
        write(folder / "spec.yaml", f"{source}{arch}data: {{train: digits-0to4}}\n")

        def back() -> None:
            shutil.rmtree(folder)
            for path in [p for p in self.undo if folder in p.parents]:
                del self.undo[path]

        self.undo[folder] = back
        return f"{name}: folder added, source {parent}"

    def settings(self) -> str | None:
        path = self.root / "stemma.yaml"
        self.keep(path)
        lines = path.read_text().splitlines(keepends=True)
        if self.rng.random() < 0.3:
            text = "".join(line for line in lines if not line.startswith("entrypoints:"))
            path.write_text(f"{text}entrypoints: [pkg.mod:make]\n")
            return "stemma.yaml: an entrypoint"
        limit = self.rng.choice([9, 1_000_000])
        text = "".join(line for line in lines if not line.startswith("limits:"))
        path.write_text(f"{text}limits: {{max_parameters: {limit}}}\n")
        return f"stemma.yaml: max_parameters {limit}"

    def step(self) -> str:
        menu: list[Callable[[], str | None]] = [
            self.edit_spec,
            self.comment_spec,
            self.same_size,
            self.gate,
            self.source,
            self.unreadable,
            self.rebuild,
            self.rebuild,
            self.other_metrics,
            self.tamper,
            self.drop_manifest,
            self.dataset,
            self.conflict,
            self.metrics_file,
            self.curve_file,
            self.registered,
            self.stray,
            self.dataset_spec,
            self.between,
            self.touch,
            self.touch,
            self.remove_folder,
            self.swap,
            self.add_folder,
            self.settings,
        ]
        while True:
            healing = self.undo and self.rng.random() < 0.6  # back towards a clean state
            did = self.heal() if healing else self.rng.choice(menu)()
            if did is not None:
                self.log.append(did)
                return did


@pytest.mark.parametrize("seed", SEEDS)
def test_a_stored_verdict_answers_as_a_check_with_nothing_stored(
    populated: Registry,
    trusting: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    folder_reads: list[str],
    seed: int,
) -> None:
    """After each of a seeded sequence of random changes, `check` of the registry (from its
    stored verdict, reading only the changed folders, where it can) equals `check` of a
    copy without the store; both the verdict and the whole check are taken along the way."""
    root = populated.repo_root
    for rel, text in EXTRA.items():
        write(populated.root / rel, text)
    for name in ("digits-0to4", "digits-5to9"):
        factories.dataset_manifest(Registry.open(root), name)
    for name in ("base", "ft", "scratch", "ft2", "ft3", "merged"):  # parents first
        assert build(root, name, 0.9)
    stash = tmp_path / "stash"
    stash.mkdir()
    walk = Walk(root, stash, random.Random(seed))

    wholes: list[int] = []  # whole checks (the only ones that look for cycles)
    reads = folder_reads  # model folders read
    real_cycles = consistency._cycles

    def cycles(*args: object) -> object:
        wholes.append(1)
        return real_cycles(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(consistency, "_cycles", cycles)

    def fresh(step: int) -> list[str]:
        """The check of a copy of the registry without its store."""
        copy = tmp_path / f"copy-{step}"
        shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".stemma"))
        try:
            return messages(copy)
        finally:
            shutil.rmtree(copy)

    counts = {"whole": 0, "incremental": 0, "verdict": 0}
    first = messages(root)
    assert first == fresh(-1) and first == [], first  # built, consistent: a verdict kept
    for step in range(STEPS):
        walk.step()
        wholes.clear()
        reads.clear()
        found = messages(root)
        kind = "whole" if wholes else "incremental" if reads else "verdict"
        counts[kind] += 1
        wanted = fresh(step)
        assert found == wanted, (seed, walk.log, kind, set(found) ^ set(wanted))
    assert counts["whole"] > 0 and counts["incremental"] > 0, counts
