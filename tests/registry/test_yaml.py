"""The one YAML module against PyYAML: the fast reader of the spec subset reads what
`yaml.safe_load` reads or declines, the block writer's text reads back to its document, the
dvc.lock scan answers what PyYAML reads off the lock or nothing, `without_block` drops just
the block, and errors name their line. Documents are generated from fixed seeds."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from stemma.registry import Registry
from stemma.registry.errors import ParseError
from stemma.registry.pipeline import render as pipeline
from stemma.registry.store.files import plain_value
from stemma.registry.store.yamlio import (
    MERGE_CONFLICT,
    conflict_line,
    dump_block,
    dump_yaml,
    fast_canonical,
    fast_load,
    line_of,
    load_yaml_text,
    scan_lock_md5,
    without_block,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import synth  # noqa: E402


def same(a: Any, b: Any) -> bool:
    """Equal values with equal types all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def pyyaml(text: str) -> Any:
    return yaml.load(text, Loader=yaml.CSafeLoader)


# -- the fast reader of the spec subset ---------------------------------------------------


def check_against_pyyaml(text: str) -> bool:
    """The fast reader either declines or agrees with PyYAML; True when it read the text."""
    fast = fast_load(text)
    compact = fast_canonical(text)
    if fast is None:
        assert compact is None, text
        return False
    expected = pyyaml(text)
    assert same(fast, expected), text
    # The index hashes this text directly: it must be what `files.digest` hashes.
    assert compact == json.dumps(
        expected, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ), text
    return True


EDGE_CASES = [
    "a: yes\nb: no\nc: on\nd: off\ne: true\nf: ~\ng: null\n",
    "a: 012\nb: 0x1f\nc: 1_000\nd: 1:30\ne: 1e-3\nf: 1.0e-3\ng: .5\nh: 1.\ni: -0\nj: +5\n",
    "a: 2024-01-01\nb: .inf\nc: .nan\nd: -.5\ne: 1.5e+3\n",
    "a: 'single'\nb: \"double\"\nc: 'it''s'\nd: \"esc\\n\"\ne: 'a # b'\n",
    "a: b # comment\n",
    "# head\na: 1\n  # indented comment\nb: 2\n",
    "a:\n  - x\n  - y\nb:\n- 1\n- 2\n",
    "a:\n  - k: 1\n    m: 2\n  - k: 3\n",
    "a: [x, y,]\nb: {k: v,}\n",
    "a: [ ]\nb: { }\nc: []\n",
    "on: 1\n",
    "yes: x\n",
    "a:\nb: 1\n",
    "a: |\n  text\n",
    "a: >\n  folded\n",
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "a: sklearn:digits\nb: file:data/x.npz\nc: entrypoint:pkg.mod:fn\n",
    "a: {x: sklearn:digits, y: a:b}\n",
    "a: {x:1}\n",
    "a: [a: b]\n",
    "a: {x}\n",
    "a: 1\na: 2\n",
    "a: ünïcode\nb: [é, ß]\n",
    "a:\tb\n",
    "a: 1\r\nb: 2\r\n",
    "a: multi\n  line\n",
    "a: x: y\n",
    "- 1\n- 2\n",
    "a: -\n",
    "a: - x\n",
    "a: *x\n",
    "a: [*x]\n",
    "a: [1, [2, [3, {b: c}]]]\n",
    "a: 'x' y\n",
    'a: "x" y\n',
    "a: [\"x\", 'y', z]\n",
    "a: Yes please\nb: null value\n",
    "a: [yes, No, ON, ~, null]\n",
    "---\na: 1\n",
    "a: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "  a: 1\n",
    "a: {b: {c: {d: 1}}}\n",
    "a: <<\n",
    "<<: {a: 1}\n",
    "a: =\n",
    "a: 1 # c\n",
    "a: [1 # c\n",
    'a: "#"\n',
    "a: b\n  c: d\n",
    "a:\n  b: 1\n c: 2\n",
    "a:\n    b: 1\n  c: 2\n",
    "a: [x]]\n",
    "a: {k: }\n",
    "a: ? x\n",
    "a: [? x]\n",
    "a: @x\n",
    "a: `x`\n",
    "a: %x\n",
    "a: x, y\n",
    "a: [x, y] z\n",
    "a: 0x10\nb: 007\nc: 0o7\nd: 0b101\ne: 1_0.5\nf: 190:20:30\ng: +.inf\nh: -.Inf\n",
    "a: 1e3\nb: 1E3\nc: 1.e3\nd: 1.0E+3\ne: 6.8523015e+5\nf: 685.230_15e+03\n",
    "a: 12345678901234567890\nb: -9223372036854775808\nc: 9223372036854775807\n",
    "a: 日本語\nb: [日本, 'ß']\nc: {ключ: значение}\n",
    "a: x\n# a comment\n\n  \nb: y\n",
    "a: '" + "x" * 400 + "'\nb: " + "y" * 400 + "\n",
    "a: '' \nb: \"\"\n",
    "a.b: 1\na-b: 2\n_a: 3\n",
    "a: 1\n\ufeffb: 2\n",
    "a: [1, 2]\n---\n",
    "<<<<<<< ours\na: 1\n=======\na: 2\n>>>>>>> theirs\n",
]

SCALARS = [
    # text of every kind the subset reads
    "x",
    "a-b",
    "sk:d",
    "a b",
    "x.y*",
    "/p",
    "_u",
    "T",
    "é",
    "日本",
    ".",
    "./p",
    "../p",
    ".x",
    "._5",
    "a:b",
    "file:data/x.npz",
    "entrypoint:pkg.mod:fn",
    "w" * 130,  # a long line
    # numbers, and what YAML 1.1 reads as a number though JSON would not
    "1",
    "0",
    "-3",
    "+2",
    "1.5",
    "1.0e-3",
    "1.0e+3",
    "1e3",
    "1E3",
    "0x10",
    "0o7",
    "007",
    "012",
    "0b11",
    "1_000",
    "1:30",
    "0.",
    ".5",
    ".5_0",
    ".e3",
    ".inf",
    "-.inf",
    ".NaN",
    "1.0e+999",
    "-1.0e+999",
    "12345678901234567890",
    "2026-01-01",
    # booleans and null
    "yes",
    "No",
    "on",
    "OFF",
    "true",
    "False",
    "null",
    "~",
    "Null",
    # quoting
    "'q'",
    '"d"',
    "'it''s'",
    "'a # b'",
    '"esc\\t"',
    "'日本'",
    "''",
    '""',
    # punctuation that starts or ends YAML syntax
    "",
    " ",
    "#",
    "x #c",
    ":",
    ",",
    "[",
    "]",
    "{",
    "}",
    "'",
    '"',
    "-",
    "?",
    "&a",
    "*a",
    "!t",
    "|",
    ">",
    "%",
    "@",
    "`",
]
KEYS = ["a", "b", "c", "yes", "on", "k.1", "k-2", "1", "_", "ключ", "null", "~", "'q'"]
# What the subset reads, to draw from most of the time (so that both paths are exercised).
PLAIN_SCALARS = [*SCALARS[: SCALARS.index("0x10")], "1.5", "-3", "yes", "~", "'q'", '"d"']
PLAIN_KEYS = ["a", "b", "c", "k.1", "k-2", "_"]


def fuzz_texts(n: int, seed: int) -> list[str]:
    """Random YAML-ish documents from the pieces specs are made of, some of them broken:
    flow and block collections nested a few deep, comment lines and blank lines."""
    rng = random.Random(seed)

    def scalar() -> str:
        return rng.choice(SCALARS if rng.random() < 0.04 else PLAIN_SCALARS)

    def key() -> str:
        return rng.choice(KEYS if rng.random() < 0.04 else PLAIN_KEYS)

    def flow(depth: int) -> str:
        r = rng.random()
        if depth > 2 or r < 0.5:
            return scalar()
        if r < 0.75:
            return "[" + ", ".join(flow(depth + 1) for _ in range(rng.randrange(4))) + "]"
        return "{" + ", ".join(f"{key()}: {flow(depth + 1)}" for _ in range(rng.randrange(4))) + "}"

    def block(indent: int, depth: int, lines: list[str]) -> None:
        pad = " " * indent
        for _ in range(rng.randrange(1, 5)):
            r = rng.random()
            name = key()
            if r < 0.03:
                lines.append(rng.choice(["", "# note", pad + "# indented note", "  "]))
            elif r < 0.15 and depth < 3:
                lines.append(f"{pad}{name}:")
                block(indent + rng.choice((2, 4)), depth + 1, lines)
            elif r < 0.25 and depth < 3:
                lines.append(f"{pad}{name}:")
                inner = indent + rng.choice((0, 2))
                for _ in range(rng.randrange(1, 4)):
                    if rng.random() < 0.3:
                        lines.append(f"{' ' * inner}- {key()}: {flow(1)}")
                        lines.append(f"{' ' * (inner + 2)}{key()}: {flow(1)}")
                    else:
                        lines.append(f"{' ' * inner}- {flow(1)}")
            elif r < 0.26:
                lines.append(f"{pad}- {flow(0)}")  # out of place: a list item among keys
            else:
                gap = rng.choice([" "] * 8 + ["", "  "])
                lines.append(f"{pad}{name}:{gap}{flow(0)}")
        if rng.random() < 0.02:
            lines.append(" " * rng.choice((0, 1, 3)) + f"{key()}: x")  # odd indent

    texts = []
    for _ in range(n):
        lines: list[str] = []
        block(0, 0, lines)
        texts.append("\n".join(lines) + rng.choice(["\n", "\n", "\n", "", "\n\n"]))
    return texts


def real_specs() -> list[str]:
    texts = [p.read_text() for p in sorted(REPO.glob("zoo/*/*/spec.yaml"))]
    texts += [
        synth.model_files(i, i - 1 if i else None, random.Random(i), [16], "adapter", i % 8)[0]
        for i in range(50)
    ]
    return texts + [synth.dataset_files(j, "train")[0] for j in range(8)]


def test_the_fast_reader_reads_every_real_spec() -> None:
    assert all(check_against_pyyaml(t) for t in real_specs())


def test_the_fast_reader_agrees_with_pyyaml_or_declines() -> None:
    texts = EDGE_CASES + fuzz_texts(4000, seed=1)
    read = sum(check_against_pyyaml(text) for text in texts)
    assert 0.2 * len(texts) < read < len(texts)  # both paths are exercised


@pytest.mark.parametrize("seed", [2, 3])
def test_the_loader_gives_pyyaml_values_whichever_path(seed: int) -> None:
    """`load_yaml_text` takes the fast path where it can: the value is PyYAML's either way
    (restricted to plain data, `plain_value`), and any other text is a located error."""
    for text in fuzz_texts(500, seed):
        try:
            expected = plain_value(pyyaml(text), "x.yaml", string_keys=True)
        except (yaml.YAMLError, ParseError):
            with pytest.raises(ParseError):
                load_yaml_text(text, "x.yaml")
            continue
        assert same(load_yaml_text(text, "x.yaml"), expected), text


def test_lines_met_before_are_checked_again_beside_new_ones() -> None:
    """A text of lines the reader cached is read at once, and only where each of its other
    lines would pass the whole text's checks: a known line beside a comment, an indent, a
    trailing space, a tab, a marker or a directive, each is read as PyYAML reads it, or
    declined."""
    known = "name: a\nsource: {model: b, relation: finetune}\ntags: [x, y]\n"
    assert check_against_pyyaml(known)
    assert check_against_pyyaml("nested:\n  name: a\n  tags: [x, y]\n")  # cached, indented
    for extra in [
        "# a comment",
        "c: 1 # after",
        "  d: 2",
        "e: 3 ",
        "f:\t4",
        "- g",
        "---",
        "...",
        "%YAML 1.1",
        "=======",
        "h:",
        "h:\n  i: 1",
        "j: '\\'",
        "k: \ufeff1",
        "l: \x85",
        " ",
        "",
        "name: b",
    ]:
        for text in (known + extra + "\n", extra + "\n" + known, known + extra):
            check_against_pyyaml(text)
    assert check_against_pyyaml("name: a\nnested:\n  name: a\n")


def test_the_fast_path_keeps_the_limits_of_the_safe_loader() -> None:
    deep = "".join(f"{' ' * (2 * i)}k{i}:\n" for i in range(70)) + " " * 140 + "leaf: 1\n"
    assert fast_load(deep) is not None  # the subset has no depth bound ...
    with pytest.raises(ParseError, match="nested more than"):
        load_yaml_text(deep, "deep.yaml")  # ... the loader does


# -- errors name their line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", 3),
        ("a: 1\nb: 2\n  c: 3\n", 3),
        ("a: 1\n\tb: 2\n", 2),
        ("a: 'x\nb: 1\n", 3),
        ("a: 1\nb: *nowhere\n", 2),
    ],
)
def test_syntax_errors_name_pyyaml_line(text: str, line: int) -> None:
    with pytest.raises(ParseError) as err:
        load_yaml_text(text, "spec.yaml")
    try:
        pyyaml(text)
    except yaml.MarkedYAMLError as exc:
        assert exc.problem_mark is not None
        assert err.value.line == exc.problem_mark.line + 1 == line
    assert err.value.path == "spec.yaml"


def test_conflict_markers_are_refused_at_their_line() -> None:
    text = "a: 1\n<<<<<<< HEAD\nb: 2\n=======\nb: 3\n>>>>>>> other\n"
    assert conflict_line(text) == 2
    assert fast_load(text) is None
    with pytest.raises(ParseError, match=MERGE_CONFLICT) as err:
        load_yaml_text(text, "dvc.lock")
    assert err.value.line == 2
    assert conflict_line("a: '<<<<<<< not at the start'\n") is None
    assert conflict_line("a: 1\n=======\n") == 2


def test_line_of_a_pointer() -> None:
    text = "a: 1\nb:\n  c: [x, y]\n  d:\n  - e: 1\n  - e: 2\n"
    assert line_of(text, []) == 1
    assert line_of(text, ["b", "c"]) == 3
    assert line_of(text, ["b", "d", 1, "e"]) == 6
    assert line_of(text, ["b", "missing"]) == 2  # the nearest line known
    assert line_of(text, ["b", "d", 9]) == 4
    assert line_of("a: [\n", ["a"]) is None


def test_other_values_are_refused_with_their_pointer() -> None:
    with pytest.raises(ParseError, match="/a"):
        load_yaml_text("a: 2026-01-01\n", "spec.yaml")
    with pytest.raises(ParseError, match="too large"):
        load_yaml_text("a: " + "9" * 5000 + "\n", "spec.yaml")
    assert load_yaml_text("1: x\n", "spec.yaml") == {"1": "x"}  # integer keys become text


# -- the block writer of pipeline files ---------------------------------------------------

ODD_TEXT = [
    "ü ß — 日本",
    "a: b # c",
    "'quoted'",
    'x "y"',
    "yes",
    "No",
    "null",
    "~",
    "1e3",
    "0x10",
    "007",
    "12",
    "2026-01-01",
    ".inf",
    ".5",
    "-x",
    "x ",
    "",
    " lead",
    "x" * 150,
    "a\nb",
    "tab\tx",
    "[x]",
    "{y}",
    "*ref",
    "&a",
    "!tag",
    "%x",
    "@x",
    "`x",
    "|x",
    ">x",
    "?x",
    "x,y (z)",
    "./models/a",
    "../x",
]


def random_doc(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A mapping of the values pipeline files hold: text, numbers, booleans, null, lists of
    scalars or mappings, nested mappings (empty ones too)."""

    def scalar() -> Any:
        return rng.choice(
            [
                rng.choice(ODD_TEXT),
                rng.choice(SCALARS),
                rng.randrange(-(10**12), 10**12),
                rng.random() * 10 ** rng.randrange(-5, 20),
                float(rng.randrange(100)),
                rng.choice([True, False, None]),
            ]
        )

    doc: dict[str, Any] = {}
    for _ in range(rng.randrange(0 if depth else 1, 5)):
        key = rng.choice([rng.choice(ODD_TEXT), rng.choice(SCALARS), f"stage-{rng.randrange(99)}"])
        r = rng.random()
        if r < 0.2 and depth < 3:
            doc[key] = random_doc(rng, depth + 1)
        elif r < 0.35:
            doc[key] = [scalar() for _ in range(rng.randrange(3))]
        elif r < 0.45 and depth < 3:
            doc[key] = [random_doc(rng, depth + 1) for _ in range(rng.randrange(3))]
        else:
            doc[key] = scalar()
    return doc


def test_the_block_writer_reads_back_to_its_document() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        doc = random_doc(rng)
        text = dump_block(doc)
        assert same(yaml.safe_load(text), doc), text


def test_the_block_writer_gives_pyyaml_text_for_real_pipelines(tmp_path: Path) -> None:
    synth.generate(tmp_path / "reg", 40, shape="mixed", seed=5, family_size=15)
    reg = Registry.open(tmp_path / "reg")
    doc = pipeline.render_dict(reg)
    assert dump_block(doc) == dump_yaml(doc)  # plain text: PyYAML's bytes
    for path, text in pipeline.render_files(reg).items():
        body = text.removeprefix(pipeline.HEADER)
        assert dump_block(yaml.safe_load(body)) == body, path
        assert load_yaml_text(text, path) == yaml.safe_load(text), path
    for i, odd in enumerate(ODD_TEXT):
        doc["artifacts"][f"odd{i}"] = {"path": f"models/odd{i}", "desc": odd, "labels": [odd]}
    doc["artifacts"]["true"] = {"n": 3, "f": 0.5, "b": False, "none": None, "empty": []}
    assert yaml.safe_load(dump_block(doc)) == doc


# -- line scans of DVC's files ------------------------------------------------------------


def pyyaml_outs(text: str) -> dict[str, list[Any]]:
    """Output path -> every md5 PyYAML reads for it off a lock's stages (a list: a path may
    be the output of several stages)."""
    found: dict[str, list[Any]] = {}
    for stage in yaml.safe_load(text)["stages"].values():
        for out in stage.get("outs", []):
            found.setdefault(str(out["path"]), []).append(out.get("md5"))
    return found


def committed_locks() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "*dvc.lock"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [REPO / p for p in out]


def test_the_lock_scan_reads_every_output_of_the_locks_dvc_wrote() -> None:
    paths = committed_locks()
    assert paths  # the example registry's own, written by `dvc repro`
    for lock in paths:
        text = lock.read_text()
        outs = pyyaml_outs(text)
        assert outs, lock
        for out, md5s in outs.items():
            assert scan_lock_md5(text, out) == md5s[0], (lock, out)
        deps = [d["path"] for s in yaml.safe_load(text)["stages"].values() for d in s["deps"]]
        assert all(scan_lock_md5(text, d) is None for d in deps if d not in outs)


def random_lock(rng: random.Random) -> str:
    """A dvc.lock in DVC's layout, with the odd stage that is not: paths shared between
    deps and outs or between stages, quoted paths, folders (`.dir`), missing or bad md5s,
    comments, flow items and other keys than `outs`."""
    paths = [f"models/m{i}/weights.safetensors" for i in range(4)] + ["models/m0/adapter"]

    def md5() -> str:
        r = rng.random()
        digest = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        if r < 0.1:
            return digest + ".dir"
        if r < 0.15:
            return digest.upper()
        if r < 0.18:
            return digest[:31]
        return digest

    def item(pad: str, path: str) -> list[str]:
        r = rng.random()
        written = f"'{path}'" if r < 0.05 else path
        if r > 0.97:
            return [f"{pad}- {{path: {path}, md5: {md5()}}}"]
        lines = [f"{pad}- path: {written}", f"{pad}  hash: md5"]
        if rng.random() < 0.95:
            lines.append(f"{pad}  md5: {md5()}")
        if rng.random() < 0.03:
            lines.append(f"{pad}  md5: {md5()}")  # a repeated key: YAML keeps the last
        lines.append(f"{pad}  size: {rng.randrange(10**6)}")
        if rng.random() < 0.2:
            lines.append(f"{pad}  nfiles: {rng.randrange(1, 9)}")
        return lines

    lines = ["schema: '2.0'", "stages:"]
    for s in range(rng.randrange(1, 4)):
        lines += [f"  model-m{s}:", f"    cmd: stemma build model m{s}"]
        for key in rng.sample(["deps", "outs", "params", "metrics"], rng.randrange(1, 4)):
            if key == "params":
                lines += ["    params:", "      params.yaml:", f"        lr: {rng.random()}"]
                continue
            lines.append(f"    {key}:")
            for path in rng.sample(paths, rng.randrange(1, 3)):
                lines += item("    ", path)
        if rng.random() < 0.05:
            lines.append("# a comment")
    return "\n".join(lines) + "\n"


def test_the_lock_scan_answers_what_pyyaml_reads_or_nothing() -> None:
    rng = random.Random(11)
    answered = 0
    for _ in range(1500):
        text = random_lock(rng)
        outs = pyyaml_outs(text)
        for path in [f"models/m{i}/weights.safetensors" for i in range(4)] + ["models/m0/adapter"]:
            found = scan_lock_md5(text, path)
            if found is not None:
                answered += 1
                assert outs.get(path) == [found], (text, path)
    assert answered > 500


def test_the_lock_scan_never_answers_for_a_dependency() -> None:
    weights = "models/a/weights.safetensors"
    text = (
        "schema: '2.0'\nstages:\n  model-a:\n    deps:\n    - path: models/a/weights.safetensors\n"
        "      md5: " + "b1" * 16 + "\n    outs:\n    - path: models/a/manifest.json\n"
        "      md5: " + "c2" * 16 + "\n"
    )
    assert scan_lock_md5(text, weights) is None
    assert scan_lock_md5(text, "models/a/manifest.json") == "c2" * 16


def test_without_block_drops_only_that_block() -> None:
    rng = random.Random(13)
    for _ in range(300):
        doc = {
            "stages": random_doc(rng),
            "artifacts": {f"m{i}": {"path": f"models/m{i}", "type": "model"} for i in range(3)},
            "metrics": [f"models/m{i}/metrics.json" for i in range(rng.randrange(1, 3))],
        }
        keys = list(doc)
        rng.shuffle(keys)
        text = "# header\n" + dump_block({k: doc[k] for k in keys})
        expected = {k: v for k, v in doc.items() if k != "artifacts"}
        assert same(yaml.safe_load(without_block(text, "artifacts")), expected), text
    assert without_block("stages: {}\n", "artifacts") == "stages: {}\n"
    top = "artifacts:\n  m: {}\nstages: {}\n"  # the first line: not plainly a block after others
    assert without_block(top, "artifacts") == top
