"""Bad input to lineage, history and the audit: unreadable or dangling entries, merge conflict
markers, hostile tag messages, binary files in a diff, and GTO's own tags.

Each case runs on a real git repository (and, for the GTO cases, the real `gto` command line);
the hostile tag messages are built by a seeded generator and every command runs in a
subprocess bounded in time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git, write
from stemma.registry import Registry
from stemma.registry.check import consistency as cons
from stemma.registry.errors import LocatedError, StemmaError
from stemma.registry.pipeline import pipefiles
from stemma.registry.versions import resolve as v
from test_versions import commit, put_model

STEMMA = str(Path(sys.executable).with_name("stemma"))
GTO = str(Path(sys.executable).with_name("gto"))
CONFLICT = """\
<<<<<<< HEAD
source: {model: base, relation: finetune}
=======
source: {model: base, relation: distill}
>>>>>>> other
data: {train: digits-5to9}
"""


def run(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`stemma ARGS` in a subprocess bounded in time (a hang fails the test)."""
    return subprocess.run(
        [STEMMA, *args], cwd=repo, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed command (no traceback)."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- lineage: unreadable and dangling entries ---------------------------------------------------


@pytest.fixture
def family(populated: Registry) -> Registry:
    """The populated registry with its pipeline files, committed."""
    pipefiles.write(populated)
    git(populated.repo_root, "add", "-A")
    git(populated.repo_root, "commit", "-q", "-m", "specs")
    return Registry.open(populated.repo_root)


def test_lineage_refuses_a_child_with_merge_conflict_markers(family: Registry, cli: Any) -> None:
    write(family.root / "models" / "child" / "spec.yaml", CONFLICT)
    for command in ("show", "descendants", "ancestors", "impact"):
        res = cli(["lineage", command, "base"], family.root)
        assert res.code == 1, (command, res.stdout)
        assert "models/child/spec.yaml:1: merge conflict markers" in res.stderr, res.stderr
        assert res.stdout == ""
    # validate says the same, not a YAML syntax error on the marker's next line
    found = [x for x in cons.check(Registry.open(family.root)) if x.subject == "model:child"]
    assert [(x.path, x.line, x.message) for x in found] == [
        ("models/child/spec.yaml", 1, "merge conflict markers")
    ]


def test_lineage_refuses_a_dangling_source(family: Registry, cli: Any) -> None:
    write(family.root / "models" / "child" / "spec.yaml", "".join(CONFLICT.splitlines(True)[1::4]))
    write(
        family.root / "models" / "child2" / "spec.yaml",
        "source: {model: Base, relation: finetune}\ndata: {train: digits-5to9}\n",
    )
    res = cli(["lineage", "show", "base"], family.root)
    assert res.code == 1
    assert "models/child2/spec.yaml at /source/model" in res.stderr
    assert "'Base'" in res.stderr and "did you mean 'base'" in res.stderr
    # the same at a committed revision
    git(family.root, "add", "-A")
    git(family.root, "commit", "-q", "-m", "child2")
    res = cli(["lineage", "show", "base", "--rev", "HEAD", "--json"], family.root)
    assert res.code == 1 and "models/child2/spec.yaml" in res.stderr
    # a whole registry still draws
    shutil.rmtree(family.root / "models" / "child2")
    res = cli(["lineage", "show", "base", "--json"], family.root)
    assert res.code == 0, res.stderr
    assert "model:child" in json.loads(res.stdout)["order"]


def test_a_dangling_dataset_is_refused_too(family: Registry, cli: Any) -> None:
    write(
        family.root / "models" / "child" / "spec.yaml",
        "source: {model: base}\ndata: {train: digits-5to8}\n",
    )
    res = cli(["lineage", "descendants", "base"], family.root)
    assert res.code == 1
    assert "models/child/spec.yaml at /data/train" in res.stderr and "digits-5to8" in res.stderr


# -- merge conflict markers in pipeline files ---------------------------------------------------

LOCK = """\
schema: '2.0'
stages:
  model-base:
    cmd: stemma build model base
    outs:
<<<<<<< HEAD
    - path: models/base/weights.safetensors
      hash: md5
      md5: 11111111111111111111111111111111
      size: 100
=======
    - path: models/base/weights.safetensors
      hash: md5
      md5: 22222222222222222222222222222222
      size: 100
>>>>>>> theirs
"""


def test_merge_conflict_markers_in_pipeline_files_are_validation_errors(
    family: Registry,
) -> None:
    from stemma.registry.pipeline.locks import conflict_line, folder_locked_md5

    lock = family.root / "models" / "base" / "dvc.lock"
    write(lock, LOCK)
    assert conflict_line(LOCK) == 6
    assert folder_locked_md5(family, "base") is None  # no md5 is read off a conflicted lock
    stage = family.root / "models" / "ft" / "dvc.yaml"
    write(stage, "stages:\n  model-ft:\n<<<<<<< ours\n    cmd: a\n=======\n    cmd: b\n>>>>>>> x\n")
    found = {(x.path, x.line, x.message) for x in cons.check(Registry.open(family.root))}
    assert ("models/base/dvc.lock", 6, "merge conflict markers") in found
    assert ("models/ft/dvc.yaml", 3, "merge conflict markers") in found
    # a marker-like line inside a value is not a marker
    assert conflict_line("a: |\n  <<<<<<<x\n") is None
    assert conflict_line("=======\n") == 1


def test_a_pipeline_file_linked_out_of_the_root_is_reported_beside_markers(
    family: Registry, tmp_path: Path
) -> None:
    """The one-pass read of the folders' pipeline files gives way to the careful reader
    where a file is refused: each refusal and each file with markers is still reported."""
    outside = tmp_path / "outside.lock"
    outside.write_text(LOCK)
    (family.root / "models" / "base" / "dvc.lock").symlink_to(outside)
    write(family.root / "models" / "ft" / "dvc.lock", LOCK.replace("model-base", "model-ft"))
    found = {(x.path, x.line) for x in cons.check(Registry.open(family.root))}
    assert ("models/ft/dvc.lock", 6) in found
    assert any(path.startswith("models/base/dvc.lock") for path, _ in found), found
    assert outside.read_text() == LOCK  # read, never written


def test_the_yaml_reader_reports_markers_with_their_line() -> None:
    from stemma.registry.store.yamlio import load_yaml_text

    with pytest.raises(LocatedError) as err:
        load_yaml_text("a: 1\n" + CONFLICT, "x/dvc.yaml")
    assert err.value.message == "x/dvc.yaml:2: merge conflict markers"


# -- hostile tag messages -----------------------------------------------------------------------


@pytest.fixture
def tagged(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """`base` with two committed versions, v0.1.0 tagged by stemma."""
    for name in ("d0", "d1"):
        write(registry.dataset_dir(name) / "spec.yaml", "source: sklearn:digits\n")
    put_model(registry, "base", accuracy=0.8)
    c1 = commit(registry.repo_root, "base", "2026-01-01T10:00:00+00:00")
    put_model(registry, "base", accuracy=0.9, hidden=48)
    commit(registry.repo_root, "retrain", "2026-01-02T10:00:00+00:00")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-02T11:00:00+00:00")
    v.tag(registry, "base", "v0.1.0", ref=c1)
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    return Registry.open(registry.repo_root)


def annotated_tag(repo: Path, tag: str, message: bytes, rev: str = "HEAD") -> None:
    """An annotated tag whose message is exactly `message` (any bytes)."""
    subprocess.run(
        ["git", "tag", "-a", "--cleanup=verbatim", "-F", "-", tag, rev],
        cwd=repo,
        input=message,
        check=True,
        capture_output=True,
    )


def hostile_messages(seed: int = 7) -> dict[str, bytes]:
    """Tag messages a registry may meet: deep, huge, not JSON, not UTF-8, huge numbers."""
    rnd = random.Random(seed)
    noise = bytes(rnd.randrange(256) for _ in range(4096))
    return {
        "deep-list": b"[" * 100_000 + b"]" * 100_000,
        "deep-object": b'{"id":' * 5_000 + b"1" + b"}" * 5_000,
        "deep-small": b"[" * 30_000 + b"]" * 30_000,
        "deep-unclosed": b"[" * 200_000,
        "huge": json.dumps({"id": "sha256:" + "0" * 64, "pad": "x" * (2 << 20)}).encode(),
        "not-json": b"Registering artifact base version v0.0.1",
        "not-utf8": b'{"id": "\xff\xfe", "source": null}',
        "noise": noise,
        "big-int": b'{"id": ' + b"9" * 10_000 + b"}",
        "big-float": b'{"id": 1e999999, "source": -1e999999}',
        "nan": b'{"id": NaN}',
        "id-not-text": b'{"id": ["sha256:00"], "source": {"a": 1}}',
        "array": b'["sha256:' + b"0" * 64 + b'"]',
        "nul": b'{"id": "a\\u0000b"}',
    }


HISTORY_COMMANDS = [
    ["ls"],
    ["log", "base"],
    ["log", "base", "--json"],
    ["show", "base@v0.1.0"],
    ["diff", "base@v0.1.0", "@HEAD"],
    ["query", "--history", "SELECT count(*) AS n FROM versions"],
]


def test_a_deeply_nested_tag_message_is_skipped_with_a_warning(tagged: Registry) -> None:
    repo = tagged.repo_root
    annotated_tag(repo, "base#bad#7", b"[" * 100_000 + b"]" * 100_000)
    scan = v.read_tags(tagged)
    assert [s.tag for s in scan.skipped] == ["base#bad#7"]
    assert scan.skipped[0].message.startswith("tag base#bad#7 skipped: its message is 200000 bytes")
    assert [t.tag for t in scan.infos] == ["base@v0.1.0"]
    for args in HISTORY_COMMANDS:
        proc = run(repo, *args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        assert "warning: tag base#bad#7" in proc.stderr, (args, proc.stderr)
    proc = run(repo, "promote", "base", "staging")
    assert proc.returncode == 0, proc.stderr
    assert "warning: tag base#bad#7" in proc.stderr
    proc = run(repo, "tag", "base", "v0.2.0")
    assert proc.returncode == 0, proc.stderr


def test_hostile_tag_messages_never_break_history(tagged: Registry) -> None:
    repo = tagged.repo_root
    messages = hostile_messages()
    for i, (label, message) in enumerate(sorted(messages.items())):
        annotated_tag(repo, f"base#{label}#{100 + i}", message)
    scan = v.read_tags(tagged)
    skipped = {s.tag.split("#")[1] for s in scan.skipped}
    # too deep or too large: skipped; the rest are read as tags without stemma's JSON
    assert skipped == {"deep-list", "deep-object", "deep-small", "deep-unclosed", "huge"}
    reasons = {s.tag.split("#")[1]: s.reason for s in scan.skipped}
    assert reasons["deep-small"] == reasons["deep-object"] == "is JSON nested too deeply"
    read = {t.tag.split("#")[1]: t for t in scan.infos if t.stage is not None}
    assert set(read) == set(messages) - skipped
    assert all(t.id is None or t.id.startswith("sha256:") for t in scan.infos)
    for args in HISTORY_COMMANDS:
        proc = run(repo, *args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        assert proc.stderr.count("warning: tag ") == len(skipped), (args, proc.stderr)


# -- audit: binary files in the diff -----------------------------------------------------------


def test_audit_ignores_binary_files_and_names_a_binary_spec(family: Registry) -> None:
    repo = family.root
    (repo / "models" / "base" / "weights.safetensors").write_bytes(b"\x80\xff\x00" * 100)
    (repo / "extra.bin").write_bytes(bytes(range(256)) * 4)
    git(repo, "add", "-f", "models/base/weights.safetensors", "extra.bin")
    git(repo, "commit", "-q", "-m", "binaries")
    proc = run(repo, "audit", "--base", "HEAD~1", "--head", "HEAD", "--json")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    proc = run(repo, "audit", "--base", "HEAD~1", "--json")
    assert proc.returncode == 0, proc.stderr
    # a spec that is not UTF-8 text: one line naming it
    (repo / "models" / "scratch" / "spec.yaml").write_bytes(b"data: {train: \xff\xfe}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "binary spec")
    for extra in (["--head", "HEAD"], []):
        line = one_error_line(run(repo, "audit", "--base", "HEAD~2", "--json", *extra))
        assert line.startswith("error: models/scratch/spec.yaml:1: is not UTF-8 text"), line


def test_a_revision_with_a_non_utf8_file_name_reads(family: Registry) -> None:
    repo = family.root
    name = os.fsdecode(b"odd-\xff.bin")
    (repo / name).write_bytes(b"\x00\xff")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "odd name")
    at = Registry.at_revision(repo, "HEAD")
    assert at.model_names() == ["base", "ft", "scratch"]
    proc = run(repo, "audit", "--base", "HEAD~1", "--json")
    assert proc.returncode == 0, proc.stderr


# -- GTO's own tags -----------------------------------------------------------------------------


def gto(repo: Path, *args: str) -> None:
    """The real `gto` command line."""
    subprocess.run([GTO, *args], cwd=repo, check=True, capture_output=True, text=True)


def test_tags_gto_writes_on_a_later_commit_are_in_the_log(tagged: Registry) -> None:
    repo = tagged.repo_root
    newest = v.history(tagged, "base")[0]
    # a later commit that leaves the manifest alone, then GTO's own tags on it
    write(repo / "README.md", "notes\n")
    later = commit(repo, "docs", "2026-01-03T10:00:00+00:00")
    assert later != newest.commit
    gto(repo, "register", "base", later, "--version", "v0.2.0")
    gto(repo, "assign", "base", "--version", "v0.2.0", "--stage", "prod")
    entries = v.log(tagged, "base")
    assert entries[0].version.id == newest.id
    assert set(entries[0].labels) == {"v0.2.0", "prod"}
    assert entries[1].labels == ("v0.1.0",)
    proc = run(repo, "log", "base", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert set(rows[0]["labels"]) == {"v0.2.0", "prod"}
    assert v.resolve(tagged, "base@v0.2.0").id == newest.id
    assert v.resolve(tagged, "base@prod").id == newest.id


def test_a_gto_tag_at_a_commit_without_the_model_labels_nothing(tagged: Registry) -> None:
    repo = tagged.repo_root
    # a commit without the model, tagged as `gto register` tags (GTO itself refuses to)
    empty = subprocess.run(  # a tree with no files at all
        ["git", "mktree"], cwd=repo, input="", capture_output=True, text=True, check=True
    ).stdout.strip()
    bare = git(repo, "commit-tree", empty, "-m", "nothing")
    git(repo, "tag", "-a", "-m", "Registering artifact base version v0.0.1", "base@v0.0.1", bare)
    entries = v.log(tagged, "base")
    assert all("v0.0.1" not in e.labels for e in entries)
    with pytest.raises(StemmaError):
        v.resolve(tagged, "base@v0.0.1")
