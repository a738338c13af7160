"""The one exception root of stemma and its subclasses.

Every error says what was wrong, where (file, JSON pointer, line) and, where it helps, what
to do. The library raises these; only the CLI renders them and sets exit codes.
"""

from __future__ import annotations

from typing import Any


class StemmaError(Exception):
    """Root of every error stemma raises on purpose; rendered as one line by the CLI."""

    code = "error"
    template = "{message}"
    exit_code = 1  # what the CLI exits with

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        text = message if message is not None else self.template.format(**fields)
        super().__init__(text)

    @property
    def message(self) -> str:
        """The one-line message."""
        return str(self.args[0]) if self.args else self.code


class LocatedError(StemmaError):
    """An error inside a file: names the file, the JSON pointer and, for YAML, the line."""

    code = "invalid-file"

    def __init__(self, path: str, reason: str, pointer: str = "", line: int | None = None) -> None:
        self.path = path
        self.pointer = pointer
        self.line = line
        reason = " ".join(reason.split())  # one line, whatever the cause's text held
        self.reason = reason
        where = path
        if line is not None:
            where += f":{line}"
        if pointer:
            where += f" at {pointer}"
        super().__init__(f"{where}: {reason}")


class SchemaError(LocatedError, ValueError):
    """A file that does not match its JSON Schema."""

    code = "schema"


class ParseError(LocatedError, ValueError):
    """A file that cannot be parsed as YAML or JSON."""

    code = "parse"


class PathEscape(LocatedError):
    """A path that resolves outside the registry (through `..` or a symbolic link)."""

    code = "path-escape"


class UnsafeFile(LocatedError, ValueError):
    """A file stemma will not parse: not a regular file, too large, not UTF-8, too deep."""

    code = "parse"


class UsageError(StemmaError, ValueError):
    """A command used wrongly (an option or argument out of place): exit status 2."""

    code = "usage"
    exit_code = 2


class RegistryNotFound(StemmaError, FileNotFoundError):
    """No stemma.yaml in the folder or any parent."""

    code = "no-registry"
    template = "no stemma.yaml in {path} or any parent folder; run `stemma init` first"


class RegistryExists(StemmaError, FileExistsError):
    """`stemma init` on a folder that already has a registry."""

    code = "registry-exists"
    template = "{path} already holds a registry (stemma.yaml exists)"


class NotFound(StemmaError, KeyError):
    """A named record that does not exist."""

    code = "not-found"
    template = "no {kind} named {name!r}{hint}"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ModelNotFound(NotFound):
    """No model of that name."""

    def __init__(self, name: str, hint: str = "") -> None:
        super().__init__(kind="model", name=name, hint=hint)


class DatasetNotFound(NotFound):
    """No dataset of that name."""

    def __init__(self, name: str, hint: str = "") -> None:
        super().__init__(kind="dataset", name=name, hint=hint)


class InvalidName(StemmaError, ValueError):
    """A name or reference that breaks the naming grammar."""

    code = "invalid-name"


class ConsistencyError(StemmaError):
    """One or more consistency violations (dangling reference, cycle, stale manifest, ...)."""

    code = "inconsistent"


class BuildError(StemmaError):
    """A build that cannot proceed (missing source weights, shape mismatch, bad strategy)."""

    code = "build"


class GitError(StemmaError):
    """A git command failed or a revision does not exist."""

    code = "git"


class QueryError(StemmaError):
    """A query that failed or was refused."""

    code = "query"


class InvalidFolderName(LocatedError, InvalidName):
    """A model or dataset folder whose name breaks the naming grammar."""

    code = "invalid-name"


class StemmaWarning(UserWarning):
    """Something stemma skipped and went on without (a tag it cannot read, ...): the CLI
    prints each as one `warning:` line on stderr."""
