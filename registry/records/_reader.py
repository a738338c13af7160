"""Typed reads of a parsed JSON document, each failure a located `SchemaError`, and the
`Record` base class whose dataclass fields say how each block is read.

`Reader` is one JSON object with the file and the JSON pointer it sits at, so a missing field or
a value of the wrong type names both. Values are kept as parsed (an int stays an int, a float a
float), so a record writes back exactly the document it was read from.

A `Record` subclass is read by its fields: the annotation says which read (str: a string,
int: an integer, float: a number, bool: a boolean, another record: that record at its pointer,
`tuple[X, ...]`: an array of X, `Mapping[str, X]`: an object of X, `Mapping[str, Any]`: an open
object kept as parsed), `Annotated[..., OneOf(...)]` an enum or const, and the default whether
the key may be absent: a field with no default is required (`X | None` there: null allowed),
one that defaults to None may be left out (null allowed only where marked `NULLABLE`). A block
the schema leaves open sets `_OPEN` (its other keys go to `extra`); one with a rule its types
cannot say defines `_check(cls, r)`, run before its fields are read.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NoReturn, Self, TypeVar, Union, cast

from stemma.registry.errors import SchemaError
from stemma.registry.rules.layout import MANIFEST_FILE
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

    def value(self, key: str, kind: str) -> Any:
        """A required value of `kind` (a key of `_KINDS`: "a string", "an integer" ...)."""
        if key not in self.doc:
            self.fail(None, f"missing required field: {key!r}")
        value = self.doc[key]
        if not _KINDS[kind](value):
            self.fail(key, f"expected {kind}, got {_name(value)}")
        return value

    def text(self, key: str) -> str:
        """A required string."""
        value: str = self.value(key, "a string")
        return value

    def integer(self, key: str) -> int:
        """A required integer."""
        value: int = self.value(key, "an integer")
        return value

    def choice(self, key: str, allowed: Collection[Any]) -> Any:
        """A required value of an enum (or a const: one allowed value)."""
        if key not in self.doc:
            self.fail(None, f"missing required field: {key!r}")
        value = self.doc[key]
        if value not in allowed or isinstance(value, bool) != any(
            isinstance(a, bool) for a in allowed
        ):
            self.fail(key, f"expected one of {sorted(map(repr, allowed))}, got {value!r}")
        return value

    def obj(self, key: str) -> Reader:
        """A required object, as a reader of its own."""
        return Reader(self.value(key, "an object"), self.display, self.at(key))

    def opt_obj(self, key: str) -> Reader | None:
        """An optional object."""
        return self.obj(key) if key in self.doc else None

    def free(self, key: str) -> Mapping[str, Any]:
        """A required object the schema leaves open (a resolved spec, a library's config)."""
        value: Mapping[str, Any] = self.value(key, "an object")
        return value

    def objs(self, key: str) -> list[Reader]:
        """A required array of objects, each as a reader."""
        items, at = self.value(key, "an array"), self.at(key)
        return [Reader(item, self.display, f"{at}/{i}") for i, item in enumerate(items)]

    def members(self, key: str) -> dict[str, Reader]:
        """A required object whose values are objects (name -> block), each as a reader."""
        obj = self.obj(key)
        return {k: obj.obj(k) for k in obj.doc}

    def array(self, key: str, kind: str) -> tuple[Any, ...]:
        """A required array of strings, integers or numbers (`kind` as in `_KINDS`), as a tuple."""
        items = self.value(key, "an array")
        for i, item in enumerate(items):
            if not _KINDS[kind](item):
                raise SchemaError(
                    self.display, f"expected {kind}, got {_name(item)}", f"{self.at(key)}/{i}"
                )
        return tuple(items)

    def table(self, key: str, kind: str) -> Mapping[str, Any]:
        """A required object whose values are all strings, integers or numbers (`kind`)."""
        obj = self.value(key, "an object")
        for k, item in obj.items():
            if not _KINDS[kind](item):
                raise SchemaError(
                    self.display,
                    f"expected {kind}, got {_name(item)}",
                    f"{self.at(key)}/{_escape(k)}",
                )
        return dict(obj)

    def closed(self, known: Collection[str]) -> None:
        """Refuse a key the schema does not allow here (`additionalProperties: false`)."""
        for key in self.doc:
            if key not in known:
                self.fail(key, f"unknown key {key!r}")

    def extra(self, known: Collection[str]) -> Mapping[str, Any]:
        """The keys the schema allows beyond those it names, kept as parsed."""
        return {k: v for k, v in self.doc.items() if k not in known}


# ---- records read by their fields ----------------------------------------------------------


class OneOf:
    """A field's allowed values (`Annotated[str, OneOf("a", "b")]`: a JSON Schema enum or const)."""

    __slots__ = ("values",)

    def __init__(self, *values: Any) -> None:
        self.values = values


NULLABLE = "nullable"
"""Marks an optional field whose value may also be null (`Annotated[str | None, NULLABLE]`)."""

_R = TypeVar("_R", bound="Record")


class _Constructor:
    """`Cls.of(...)` is `Cls(...)`: the name a build uses for a new block (its keys in field
    order, an optional field left out where it is None)."""

    def __get__(self, obj: object, owner: type[_R]) -> type[_R]:
        return owner


def _plain(value: Any) -> Any:
    """A record, tuple or mapping as the JSON value it came from (fresh containers)."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """A JSON object read into fields: `keys` is its key order, `extra` what the schema
    allows beyond the named fields (open blocks only; empty elsewhere).

    Built without `keys`, a record takes the keys a build writes: its fields in order, an
    optional one left out where it is None, then the keys of `extra`."""

    keys: tuple[str, ...] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # JSON key -> attribute, where they differ (`from` is a Python keyword)
    _RENAMED: ClassVar[Mapping[str, str]] = {"from": "from_"}
    # an open block (`additionalProperties` allowed): keys beyond the fields go to `extra`
    _OPEN: ClassVar[bool] = False

    of = _Constructor()

    def __post_init__(self) -> None:
        if not self.keys:
            keys = [k for a, k, req in _layout(type(self)) if req or getattr(self, a) is not None]
            object.__setattr__(self, "keys", (*keys, *self.extra))

    @classmethod
    def from_dict(cls, doc: Any, display: str = MANIFEST_FILE, pointer: str = "") -> Self:
        """Read `doc`, the object at `pointer` of the file `display` (both for errors)."""
        return cls._read(Reader(doc, display, pointer))

    @classmethod
    def _read(cls, r: Reader) -> Self:
        """Read the object `r` by this class's fields (its plan, made on the first read)."""
        plan = _PLANS.get(cls) or _plan(cls)
        if plan.open:
            extra = r.extra(plan.known)
        else:
            r.closed(plan.known)
            extra = {}
        if plan.check is not None:
            plan.check(r)
        doc, make = r.doc, cast("Callable[..., Self]", cls)  # its fields, positionally
        values: list[Any] = []
        for key, required, null, test, wrong, read in plan.steps:
            if key not in doc:
                if required:
                    r.fail(None, f"missing required field: {key!r}")
                values.append(None)
                continue
            value = doc[key]
            if value is None and null:
                values.append(None)
            elif read is not None:
                values.append(read(r, key))
            elif test(value):  # a string, number, boolean or enum: kept as parsed
                values.append(value)
            else:
                r.fail(key, wrong(value))
        return make(*values, keys=r.keys, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the order they were read."""
        doc: dict[str, Any] = {}
        for key in self.keys:
            if key in self.extra:
                doc[key] = _plain(self.extra[key])
            else:
                doc[key] = _plain(getattr(self, self._RENAMED.get(key, key)))
        return doc

    def has(self, key: str) -> bool:
        """Whether the document holds `key` (an absent field reads as None, as does null)."""
        return key in self.keys


_SCALARS: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}
_LAYOUTS: dict[type[Record], tuple[tuple[str, str, bool], ...]] = {}


def _layout(cls: type[Record]) -> tuple[tuple[str, str, bool], ...]:
    """(attribute, JSON key, required) of each named field, in field order (once per class)."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        back, none = {v: k for k, v in cls._RENAMED.items()}, dataclasses.MISSING
        layout = _LAYOUTS[cls] = tuple(
            (f.name, back.get(f.name, f.name), f.default is f.default_factory is none)
            for f in dataclasses.fields(cls)
            if f.name not in ("keys", "extra")
        )
    return layout


if TYPE_CHECKING:
    # how one field is read: its key, whether required, whether null is allowed, then the
    # test of a plain value and the wording of its error, or (None for a plain value) the
    # read of a block or array
    _Step = tuple[
        str,
        bool,
        bool,
        Callable[[Any], bool],
        Callable[[Any], str],
        Callable[[Reader, str], Any] | None,
    ]


class _Plan:
    """How a record class is read: its keys, open or closed, its own check, its fields."""

    __slots__ = ("check", "known", "open", "steps")

    def __init__(
        self,
        known: frozenset[str],
        open: bool,
        check: Callable[[Reader], None] | None,
        steps: tuple[_Step, ...],
    ) -> None:
        self.known, self.open, self.check, self.steps = known, open, check, steps


_PLANS: dict[type[Record], _Plan] = {}


def _plan(cls: type[Record]) -> _Plan:
    """How `cls` is read, worked out from its annotations on its first read: the annotations
    are strings until then, so defining thirty records costs an import nothing more."""
    hints = _hints(cls)
    steps: list[_Step] = []
    for field in dataclasses.fields(cls):
        if field.kw_only and field.name not in ("keys", "extra"):
            raise TypeError(f"{cls.__name__}.{field.name}: a record's fields are positional")
    for attr, key, required in _layout(cls):
        where, hint, marks, null = f"{cls.__name__}.{attr}", hints[attr], [], False
        while True:  # peel Annotated[...] and `| None` in either order
            if typing.get_origin(hint) is Annotated:
                marks += hint.__metadata__
                hint = hint.__origin__
            elif typing.get_origin(hint) in (Union, types.UnionType):
                rest = [a for a in typing.get_args(hint) if a is not type(None)]
                if len(rest) != 1:
                    raise TypeError(f"{where}: no reader for {hint!r}")
                hint, null = rest[0], True
            else:
                break
        if not required and not null:
            raise TypeError(f"{where}: an optional field must allow None")
        null = (required and null) or NULLABLE in marks
        choices = [m.values for m in marks if isinstance(m, OneOf)]
        if choices:
            steps.append((key, required, null, *_one_of(choices[0]), None))
        elif hint in _SCALARS:
            steps.append((key, required, null, *_scalar(_SCALARS[hint]), None))
        else:
            steps.append((key, required, null, _read_instead, _read_instead, _reads(hint, where)))
    known = frozenset(key for _, key, _ in _layout(cls))
    check: Callable[[Reader], None] | None = getattr(cls, "_check", None)
    plan = _PLANS[cls] = _Plan(known, cls._OPEN, check, tuple(steps))
    return plan


_TYPES: dict[tuple[str, str], Any] = {}


def _hints(cls: type[Record]) -> dict[str, Any]:
    """Each named field's annotation, evaluated where it was written (as `get_type_hints`
    does, but each distinct text once: the same few types recur across thirty records)."""
    hints = {}
    for attr, _, _ in _layout(cls):
        owner = next(c for c in cls.__mro__ if attr in vars(c).get("__annotations__", {}))
        text = vars(owner)["__annotations__"][attr]
        if not isinstance(text, str):
            hints[attr] = text
            continue
        hint = _TYPES.get((owner.__module__, text))
        if hint is None:
            hint = _TYPES[owner.__module__, text] = eval(text, vars(sys.modules[owner.__module__]))
        hints[attr] = hint
    return hints


def _read_instead(value: Any) -> NoReturn:
    raise AssertionError("a block or array is read by its step's `read`, not tested")


def _scalar(kind: str) -> tuple[Callable[[Any], bool], Callable[[Any], str]]:
    return _KINDS[kind], lambda value: f"expected {kind}, got {_name(value)}"


def _one_of(allowed: tuple[Any, ...]) -> tuple[Callable[[Any], bool], Callable[[Any], str]]:
    # an enum of strings takes no boolean, and an enum of booleans no 1 or 0
    flags = any(isinstance(a, bool) for a in allowed)
    shown = sorted(map(repr, allowed))
    return (
        lambda value: value in allowed and isinstance(value, bool) == flags,
        lambda value: f"expected one of {shown}, got {value!r}",
    )


def _reads(hint: Any, where: str) -> Callable[[Reader, str], Any]:
    """How a block or array typed `hint` is read (present, and not an allowed null)."""
    if isinstance(hint, type) and issubclass(hint, Record):
        record = hint._read
        return lambda r, k: record(r.obj(k))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if item in _SCALARS:
            items = _SCALARS[item]
            return lambda r, k: r.array(k, items)
        if isinstance(item, type) and issubclass(item, Record):
            each = item._read
            return lambda r, k: tuple(map(each, r.objs(k)))
    if origin is Mapping and args[0] is str:
        item = args[1]
        if item is Any:
            return Reader.free
        if item in _SCALARS:
            values = _SCALARS[item]
            return lambda r, k: r.table(k, values)
        if isinstance(item, type) and issubclass(item, Record):
            member = item._read
            return lambda r, k: {name: member(m) for name, m in r.members(k).items()}
    raise TypeError(f"{where}: no reader for {hint!r}")
