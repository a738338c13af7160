"""Typed reads of a parsed JSON document, each failure a located `SchemaError`.

The manifest records (`records/manifest.py`) read their blocks through `Reader`: it knows the
file and the JSON pointer of the object it reads, so a missing field or a value of the wrong
type names both. Values are kept as parsed (an int stays an int, a float a float), so a record
writes back exactly the document it was read from.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from stemma.registry.errors import SchemaError
from stemma.registry.rules.pointer import escape as _escape


def _is_int(value: Any) -> bool:
    # JSON Schema's integer: 3 and 3.0, never a boolean
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    )


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


_KINDS: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "an integer": _is_int,
    "a number": _is_number,
    "a boolean": lambda v: isinstance(v, bool),
    "an object": lambda v: isinstance(v, dict),
    "an array": lambda v: isinstance(v, list),
}


def _name(value: Any) -> str:
    if value is None:
        return "null"
    for kind, test in _KINDS.items():
        if test(value):
            return kind
    return type(value).__name__


class Reader:
    """One JSON object of a document, with where it is: the file and its JSON pointer."""

    __slots__ = ("display", "doc", "pointer")

    def __init__(self, doc: Any, display: str, pointer: str = "") -> None:
        if not isinstance(doc, dict):
            raise SchemaError(display, f"expected an object, got {_name(doc)}", pointer or "/")
        self.doc: Mapping[str, Any] = doc
        self.display = display
        self.pointer = pointer

    @property
    def keys(self) -> tuple[str, ...]:
        """The object's keys in document order (a record writes them back in that order)."""
        return tuple(self.doc)

    def at(self, key: str | int) -> str:
        """The JSON pointer of `key` inside this object."""
        return f"{self.pointer}/{_escape(key)}"

    def fail(self, key: str | int | None, reason: str) -> NoReturn:
        """Raise a located error at `key` (None: at this object)."""
        raise SchemaError(
            self.display, reason, pointer=self.at(key) if key is not None else self.pointer or "/"
        )

    def has(self, key: str) -> bool:
        """Whether the object holds `key` (null included)."""
        return key in self.doc

    def _get(self, key: str, kind: str, null: bool = False) -> Any:
        if key not in self.doc:
            self.fail(None, f"missing required field: {key!r}")
        value = self.doc[key]
        if value is None and null:
            return None
        if not _KINDS[kind](value):
            self.fail(key, f"expected {kind}, got {_name(value)}")
        return value

    def _opt(self, key: str, kind: str, null: bool = False) -> Any:
        return self._get(key, kind, null) if key in self.doc else None

    def text(self, key: str) -> str:
        """A required string."""
        value: str = self._get(key, "a string")
        return value

    def opt_text(self, key: str, null: bool = False) -> str | None:
        """An optional string (`null`: the schema also allows null)."""
        value: str | None = self._opt(key, "a string", null)
        return value

    def choice(self, key: str, allowed: Collection[Any], required: bool = True) -> Any:
        """A value of an enum (or a const: one allowed value)."""
        if key not in self.doc and not required:
            return None
        if key not in self.doc:
            self.fail(None, f"missing required field: {key!r}")
        value = self.doc[key]
        if value not in allowed or isinstance(value, bool) != any(
            isinstance(a, bool) for a in allowed
        ):
            self.fail(key, f"expected one of {sorted(map(repr, allowed))}, got {value!r}")
        return value

    def integer(self, key: str) -> int:
        """A required integer."""
        value: int = self._get(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        """An optional integer."""
        value: int | None = self._opt(key, "an integer")
        return value

    def number(self, key: str) -> float:
        """A required number (int or float, kept as parsed)."""
        value: float = self._get(key, "a number")
        return value

    def opt_number(self, key: str, null: bool = False) -> float | None:
        """An optional number (`null`: the schema also allows null)."""
        value: float | None = self._opt(key, "a number", null)
        return value

    def flag(self, key: str) -> bool:
        """A required boolean."""
        value: bool = self._get(key, "a boolean")
        return value

    def opt_flag(self, key: str) -> bool | None:
        """An optional boolean."""
        value: bool | None = self._opt(key, "a boolean")
        return value

    def obj(self, key: str) -> Reader:
        """A required object, as a reader of its own."""
        return Reader(self._get(key, "an object"), self.display, self.at(key))

    def opt_obj(self, key: str) -> Reader | None:
        """An optional object."""
        return self.obj(key) if key in self.doc else None

    def free(self, key: str) -> Mapping[str, Any]:
        """A required object the schema leaves open (a resolved spec, a library's config)."""
        value: Mapping[str, Any] = self._get(key, "an object")
        return value

    def opt_free(self, key: str) -> Mapping[str, Any] | None:
        """An optional open object."""
        value: Mapping[str, Any] | None = self._opt(key, "an object")
        return value

    def objs(self, key: str) -> list[Reader]:
        """A required array of objects, each as a reader."""
        items = self._get(key, "an array")
        return [Reader(item, self.display, f"{self.at(key)}/{i}") for i, item in enumerate(items)]

    def opt_objs(self, key: str) -> list[Reader] | None:
        """An optional array of objects."""
        return self.objs(key) if key in self.doc else None

    def members(self, key: str) -> dict[str, Reader]:
        """A required object whose values are objects (name -> block), each as a reader."""
        obj = self.obj(key)
        return {k: obj.obj(k) for k in obj.doc}

    def opt_members(self, key: str) -> dict[str, Reader] | None:
        """An optional object of objects."""
        return self.members(key) if key in self.doc else None

    def array(self, key: str, kind: str) -> tuple[Any, ...]:
        """A required array of strings, integers or numbers (`kind` as in `_KINDS`), as a tuple."""
        items = self._get(key, "an array")
        for i, item in enumerate(items):
            if not _KINDS[kind](item):
                raise SchemaError(
                    self.display, f"expected {kind}, got {_name(item)}", f"{self.at(key)}/{i}"
                )
        return tuple(items)

    def opt_array(self, key: str, kind: str) -> tuple[Any, ...] | None:
        """An optional array of strings, integers or numbers."""
        return self.array(key, kind) if key in self.doc else None

    def table(self, key: str, kind: str) -> Mapping[str, Any]:
        """A required object whose values are all strings, integers or numbers (`kind`)."""
        obj = self._get(key, "an object")
        for k, item in obj.items():
            if not _KINDS[kind](item):
                raise SchemaError(
                    self.display,
                    f"expected {kind}, got {_name(item)}",
                    f"{self.at(key)}/{_escape(k)}",
                )
        return dict(obj)

    def opt_table(self, key: str, kind: str) -> Mapping[str, Any] | None:
        """An optional object of strings, integers or numbers."""
        return self.table(key, kind) if key in self.doc else None

    def closed(self, known: Collection[str]) -> None:
        """Refuse a key the schema does not allow here (`additionalProperties: false`)."""
        for key in self.doc:
            if key not in known:
                self.fail(key, f"unknown key {key!r}")

    def extra(self, known: Collection[str]) -> Mapping[str, Any]:
        """The keys the schema allows beyond those it names, kept as parsed."""
        return {k: v for k, v in self.doc.items() if k not in known}
