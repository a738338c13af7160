"""The check keeps what each model folder's files say while they are unchanged, and only then."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import factories
import pytest
from conftest import write
from factories import Fact
from stemma.registry import Registry
from stemma.registry.check import consistency
from stemma.registry.check.consistency import check
from stemma.registry.store import _checkcache


def messages(root: Path) -> list[str]:
    return [str(v) for v in check(Registry.open(root))]


def folder_messages(root: Path) -> list[str]:
    """`messages` from the folders' facts: never from a stored verdict (`check_state`)."""
    return [str(v) for v in consistency.check_state(Registry.open(root)).violations]


def lines(root: Path) -> list[str]:
    """The stored fact's lines: the header, then NAME<TAB>STAMP<TAB>FACTS per folder."""
    return zlib.decompress(Fact(root, _checkcache.FACT).read_bytes()).decode().split("\n")


def stored(root: Path) -> dict[str, list[str]]:
    """name -> [stamp, facts JSON] of each stored folder."""
    return {name: rest for name, *rest in (line.split("\t") for line in lines(root)[1:])}


def test_unchanged_folders_are_not_read_again(
    populated: Registry, trusting: None, folder_reads: list[str]
) -> None:
    root = populated.repo_root
    assert messages(root) == []
    assert sorted(folder_reads) == ["base", "ft", "scratch"]
    assert sorted(stored(root)) == sorted(folder_reads)
    folder_reads.clear()
    assert messages(root) == [] and folder_reads == []
    spec = populated.root / "models/ft/spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.02"))
    assert messages(root) == [] and folder_reads == ["ft"]


def test_a_rewrite_at_the_same_size_and_mtime_is_checked_again(
    populated: Registry, trusting: None
) -> None:
    root = populated.repo_root
    assert messages(root) == []
    spec = populated.root / "models/ft/spec.yaml"
    before = spec.stat()
    text = spec.read_text()
    bad = text.replace("epochs: 2", "epochs: x")
    assert len(bad) == len(text)
    with open(spec, "w") as fh:  # in place: the same inode, the same size
        fh.write(bad)
    os.utime(spec, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert spec.stat().st_mtime_ns == before.st_mtime_ns
    found = messages(root)  # the ctime moved: the folder is read again
    assert found and "models/ft/spec.yaml:4 at /training/epochs" in found[0]
    (Fact(root, _checkcache.FACT)).unlink()
    assert messages(root) == found


def test_files_changed_moments_ago_are_not_kept(
    populated: Registry, folder_reads: list[str]
) -> None:
    root = populated.repo_root
    assert messages(root) == []  # every file was just written: too recent to trust
    assert not (Fact(root, _checkcache.FACT)).exists() or stored(root) == {}
    folder_reads.clear()
    assert messages(root) == [] and sorted(folder_reads) == ["base", "ft", "scratch"]


def test_a_check_that_finds_bad_input_writes_no_facts(
    populated: Registry, trusting: None, folder_reads: list[str]
) -> None:
    root = populated.repo_root
    assert messages(root) == []
    kept = (Fact(root, _checkcache.FACT)).read_bytes()
    spec = populated.root / "models/base/spec.yaml"
    write(spec, spec.read_text().replace("data:", "bogus: 1\ndata:", 1))
    folder_reads.clear()
    first = messages(root)
    assert "unknown key 'bogus'" in first[0] and folder_reads == ["base"]
    assert (Fact(root, _checkcache.FACT)).read_bytes() == kept
    assert messages(root) == first  # reported every time


def test_linked_folders_and_files_are_always_read(
    populated: Registry, trusting: None, folder_reads: list[str]
) -> None:
    root = populated.repo_root
    models = populated.root / "models"
    (models / "ft" / "spec.yaml").rename(models / "ft.yaml")
    (models / "ft" / "spec.yaml").symlink_to(models / "ft.yaml")
    inside = populated.root / "elsewhere"
    (models / "scratch").rename(inside)
    (models / "scratch").symlink_to(inside)
    assert messages(root) == []  # links inside the root are followed
    assert sorted(stored(root)) == ["base"]
    folder_reads.clear()
    assert messages(root) == [] and sorted(folder_reads) == ["ft", "scratch"]
    assert sorted(_checkcache.work_stamps(populated.root)) == ["base"]
    (models / "scratch").unlink()
    outside = root.parent / "outside"
    inside.rename(outside)
    (models / "scratch").symlink_to(outside)
    found = messages(root)
    assert any("models/scratch" in m and "[path-escape]" in m for m in found)


def test_damaged_or_foreign_facts_are_ignored(populated: Registry, trusting: None) -> None:
    root = populated.repo_root
    assert folder_messages(root) == []
    path = Fact(root, _checkcache.FACT)
    foreign = zlib.compress(b"stemma-checked/0 other\n" + "\n".join(lines(root)[1:]).encode())
    for data in (b"damaged", b'{"header": "other", "models": {}}', foreign, foreign[:-9]):
        path.write_bytes(data)
        assert folder_messages(root) == []
    assert sorted(stored(root)) == ["base", "ft", "scratch"]


def test_malformed_entries_are_read_again(
    populated: Registry, trusting: None, folder_reads: list[str]
) -> None:
    root = populated.repo_root
    assert folder_messages(root) == []
    path = Fact(root, _checkcache.FACT)
    kept = lines(root)
    at = next(i for i, line in enumerate(kept) if line.startswith("ft\t"))
    stamp, facts = kept[at].split("\t")[1:]
    # not JSON, not a list, a list that is not the facts, two values (which must not shift
    # the facts of the folders after it), no facts, another stamp
    for bad in ("{", "5", "[5]", "[1, 2]", "[1],[2]", "[[1],[2]", ""):
        for line in (f"ft\t{stamp}\t{bad}", f"ft\t{stamp}", f"ft\t0 {stamp}\t{facts}"):
            path.write_bytes(zlib.compress("\n".join([*kept[:at], line, *kept[at + 1 :]]).encode()))
            folder_reads.clear()
            assert folder_messages(root) == [] and folder_reads == ["ft"], (bad, line)
    assert stored(root)["ft"] == [stamp, facts]  # found again and kept
    assert json.loads(facts)[2].startswith("sha256:")


def test_read_back_facts_share_equal_spec_blocks_and_only_equal_ones() -> None:
    """Folders whose specs hold the same block (the same keys in the same order, the same
    values of the same types) share one object for it; 1, 1.0 and true stay apart."""

    def facts(name: str, training: dict[str, object]) -> consistency.ModelFacts:
        spec = {"source": {"model": name}, "training": training, "tags": ["a"]}
        doc = consistency.ModelFacts(
            spec=consistency.ModelSpec(name, f"models/{name}/spec.yaml", spec)
        ).to_list()
        return consistency.ModelFacts.from_list(name, json.loads(json.dumps(doc)), shared)

    shared: dict[object, object] = {}
    one, two = facts("a", {"epochs": 1, "lr": 0.1}), facts("b", {"epochs": 1, "lr": 0.1})
    odd = [
        facts(n, t)
        for n, t in (
            ("c", {"epochs": 1.0, "lr": 0.1}),
            ("d", {"epochs": True, "lr": 0.1}),
            ("e", {"lr": 0.1, "epochs": 1}),
        )
    ]
    assert one.spec is not None and two.spec is not None
    assert one.spec.raw["training"] is two.spec.raw["training"]
    assert one.spec.raw["tags"] is two.spec.raw["tags"]
    assert one.spec.raw["source"] == {"model": "a"} and two.spec.raw["source"] == {"model": "b"}
    for other in odd:
        assert other.spec is not None
        assert other.spec.raw["training"] is not one.spec.raw["training"]
    assert [list(o.spec.raw["training"].items()) for o in odd if o.spec] == [
        [("epochs", 1.0), ("lr", 0.1)],
        [("epochs", True), ("lr", 0.1)],
        [("lr", 0.1), ("epochs", 1)],
    ]
    assert type(odd[0].spec.raw["training"]["epochs"]) is float  # type: ignore[union-attr]


def test_a_check_keeps_the_facts_of_a_manifest_not_the_parsed_document(
    populated: Registry,
) -> None:
    """A check folder_reads every manifest of a registry without stored facts: what it keeps of
    each is the folder's facts, so the registry holds no parsed manifest afterwards (30,000
    of them took ~0.5 GiB), while the specs the later checks and the pipeline read stay."""
    for name in ("digits-0to4", "digits-5to9"):
        factories.dataset_manifest(populated, name)
    for name in ("base", "ft", "scratch"):  # parents first
        factories.model_manifest(Registry.open(populated.repo_root), name)
    reg = Registry.open(populated.repo_root)
    checked = consistency.check_state(reg)
    assert [v.code for v in checked.violations if v.code != "stale-manifest"] == []
    for name in ("base", "ft", "scratch"):
        assert checked.facts[name].manifest_id is not None
        assert reg.known(reg.rel("models", name, "manifest.json")) is None
        assert reg.known(reg.rel("models", name, "spec.yaml")) is not None
    assert reg.model_manifest("ft") is not None  # read again where asked for


def test_folder_stamps_are_taken_only_where_facts_are_stored(
    populated: Registry, trusting: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`FolderFacts(reg)` of a store without facts (a new index, a registry never checked)
    answers without a look at the folders; once a check stored facts, it takes the stamps."""
    taken: list[Path] = []
    real = _checkcache.work_stamps

    def stamping(root: Path) -> dict[str, str]:
        taken.append(root)
        return real(root)

    monkeypatch.setattr(_checkcache, "work_stamps", stamping)
    reg = Registry.open(populated.repo_root)
    empty = _checkcache.FolderFacts(reg)
    assert (empty.stored, empty.stamps, taken) == ({}, {}, [])
    assert messages(populated.repo_root) == []  # stores the facts of the three folders
    taken.clear()
    facts = _checkcache.FolderFacts(Registry.open(populated.repo_root))
    assert taken == [reg.root] and sorted(facts.stamps) == ["base", "ft", "scratch"]
    assert facts.get("ft") is not None


def _in_place(path: Path, old: str, new: str) -> None:
    """Rewrite `path` in place (same inode) at the same size, with its mtime put back."""
    before, text = path.stat(), path.read_text()
    assert len(old) == len(new) and old in text
    with open(path, "w") as fh:
        fh.write(text.replace(old, new, 1))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_stored_verdict_stands_only_while_what_it_read_is_unchanged(
    populated: Registry,
    trusting: None,
    folder_reads: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`check` keeps its verdict on the model folders; the next check takes it without reading
    a folder, or folder_reads only the folders that changed (and finds again what they touch),
    and after each kind of change its answer is that of a check with nothing stored (a
    folder's files, a parent rebuilt, a source changed, a folder added or removed, a dataset
    rebuilt or removed, the settings, a model's dvc.yaml), whether the change adds bad input
    or not."""
    root, reg = populated.repo_root, populated
    scratch = populated.root / "models/scratch/spec.yaml"
    write(scratch, scratch.read_text().replace("hidden: [32]", "hidden: [32, 32]"))
    for name in ("digits-0to4", "digits-5to9"):
        factories.dataset_manifest(reg, name)
    gate = {"metric": "accuracy", "op": ">=", "threshold": 0.5, "value": 0.3, "passed": False}
    for name in ("base", "ft", "scratch"):  # parents first
        factories.model_manifest(Registry.open(root), name, accuracy=0.3, gates=[gate])
    kept = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}
    data = populated.root / "datasets/digits-5to9/manifest.json"
    models = populated.root / "models"

    def rebuilt() -> None:  # the dataset's manifest made again, another id
        doc = json.loads(data.read_text())
        Registry.open(root).write_dataset_manifest("digits-5to9", {**doc, "dtype": "uint8"})

    def restore(*paths: Path) -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
            path.unlink(missing_ok=True)
            for file, body in kept.items():
                if file == path or path in file.parents:
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_bytes(body)

    def fresh() -> list[str]:
        """The check of a copy of the registry without its store."""
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".stemma"))
        return messages(copy)

    def base_rebuilt() -> None:  # the parent's manifest made again: its child goes stale
        doc = json.loads((models / "base/manifest.json").read_text())
        Registry.open(root).write_model_manifest("base", {**doc, "metrics": {"accuracy": 0.4}})

    def edit(path: Path, old: str, new: str) -> Callable[[], None]:
        return lambda: write(path, path.read_text().replace(old, new))

    ft = models / "ft"
    limited = "version: 1\nlimits: {max_parameters: 9}\n"
    conflict = "<<<<<<< HEAD\n=======\n>>>>>>> x\n"
    cycle = "source: {model: ft, relation: finetune}\ndata: {train: digits-0to4}\n"
    # (what, the change, the folders the next check folder_reads: None for the whole check)
    changes: list[tuple[str, Callable[[], None], list[str] | None]] = [
        ("a parent rebuilt", base_rebuilt, ["base"]),
        ("a spec", lambda: _in_place(models / "base/spec.yaml", '">= 0.5"', '">= 0.2"'), ["base"]),
        ("same stamp", lambda: _in_place(ft / "spec.yaml", "epochs: 2", "epochs: 3"), ["ft"]),
        ("a manifest removed", lambda: (ft / "manifest.json").unlink(), ["ft"]),
        ("a manifest back", lambda: restore(ft / "manifest.json"), ["ft"]),
        ("a cycle", lambda: write(models / "base/spec.yaml", cycle), None),
        ("no cycle", lambda: restore(models / "base/spec.yaml"), ["base"]),
        ("a source changed", edit(ft / "spec.yaml", "model: base", "model: nope"), None),
        ("a spec unreadable", edit(ft / "spec.yaml", "data:", "bogus: 1\ndata:"), None),
        ("the spec back", lambda: restore(ft / "spec.yaml"), ["ft"]),
        ("a dataset rebuilt", rebuilt, None),
        ("a folder removed", lambda: shutil.rmtree(models / "scratch"), None),
        ("a folder back", lambda: restore(models / "scratch"), None),
        ("a dataset removed", lambda: shutil.rmtree(populated.root / "datasets/digits-0to4"), None),
        # back as the stored verdict has it: the verdict stands
        ("the dataset back", lambda: restore(populated.root / "datasets/digits-0to4"), []),
        ("a limit", lambda: write(root / "stemma.yaml", limited), None),
        ("no limit", lambda: restore(root / "stemma.yaml"), []),
        ("a conflict", lambda: write(ft / "dvc.yaml", conflict), ["ft"]),
        ("no conflict", lambda: restore(ft / "dvc.yaml"), []),  # none there, as stored
    ]
    wholes: list[int] = []  # the whole checks (the only ones that look for cycles)
    real = consistency._cycles
    monkeypatch.setattr(consistency, "_cycles", lambda *a: wholes.append(1) or real(*a))
    before = messages(root)
    assert any("[failed-gate]" in m for m in before) and Fact(root, _checkcache.VERDICT).exists()
    folder_reads.clear()
    assert messages(root) == before and folder_reads == []  # the verdict, no folder read
    key, _tab, _rest = Fact(root, _checkcache.VERDICT).read_bytes().partition(b"\n")
    for damaged in (b"[", b"[5]", b'[["a"]]', b"{}", b'{"stamps": {}}'):
        Fact(root, _checkcache.VERDICT).write_bytes(key + b"\n" + damaged)
        assert folder_messages(root) == before and messages(root) == before
    for what, change, read in changes:
        change()
        folder_reads.clear()
        wholes.clear()
        found = messages(root)
        seen = (what, folder_reads, wholes)
        assert (folder_reads, wholes) == (read, []) if read is not None else wholes == [1], seen
        wanted = fresh()
        assert found == wanted, (what, set(found) ^ set(wanted))  # as if nothing were stored
        assert found != before, what  # each change changes the answer
        before = found


def test_no_verdict_stands_for_a_config_file_outside_the_folders(
    populated: Registry, trusting: None
) -> None:
    """A transformers model built from a config folder is checked against that folder's
    config.json, which no folder stamp covers: no verdict is kept, and an edit there is
    found by the next check."""
    root = populated.repo_root
    config = {"model_type": "bert", "vocab_size": 64, "hidden_size": 32}
    config |= {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    write(populated.root / "hf/x/config.json", json.dumps(config))
    arch = json.dumps({"family": "transformers", "path": "hf/x"})
    write(
        populated.root / "models/m/spec.yaml",
        f"architecture: {arch}\ndata: {{train: digits-0to4}}\n",
    )
    assert messages(root) == [] and not Fact(root, _checkcache.VERDICT).exists()
    write(populated.root / "hf/x/config.json", json.dumps({**config, "torch_dtype": "os.system"}))
    found = messages(root)
    assert len(found) == 1 and "hf/x/config.json at /torch_dtype" in found[0], found
