"""A fast reader for the small YAML subset that specs are written in.

PyYAML, even with libyaml, spends ~200 us on a ten-line spec: indexing 100,000 specs would
take longer than every other step together. Specs are simple (a block mapping whose values
are scalars, flow collections or nested blocks), so this reader rewrites exactly that subset
as JSON text and lets the C JSON parser build the value. It returns None for anything else
(anchors, tags, block scalars, comments after values, multi-line scalars, quotes with escapes,
numbers YAML 1.1 reads in surprising ways, ...), and the caller falls back to PyYAML. Where it
returns a value, the value is the one `yaml.safe_load` returns: tests compare the two on real,
synthetic and fuzzed specs.
"""

from __future__ import annotations

import json
import re
from typing import Any

_NULLS = frozenset({"~", "null", "Null", "NULL"})
_TRUE = frozenset({"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"})
_FALSE = frozenset({"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"})
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?")
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*):(?: +(.*))?")
# A plain scalar inside a flow collection: it stops at flow indicators, '#', '?', quotes and
# at a ':' followed by a space or a flow indicator (where YAML sees a key/value separator).
_PLAIN = r"(?:[^,\[\]{}#:?'\"\s]|:(?![\s,\[\]{}]))(?:[^,\[\]{}#:?'\"]|:(?![\s,\[\]{}]))*"
# One token of a flow collection; only scalars need rewriting, punctuation stays as it is.
_FLOW_SCALAR = re.compile(rf"\"[^\"]*\"|'[^']*'|{_PLAIN}")
_FLOW_ALL = re.compile(rf"(?: *(?:[\[\]{{}},]|: |\"[^\"]*\"|'[^']*'|{_PLAIN}))* *")
# Values repeat across specs (whole lines such as a shared `strategy:`, and scalars such as
# relations and dataset names): each is rewritten once.
_VALUES: dict[str, str] = {}
_CACHE: dict[str, str] = {}


class _Unsupported(Exception):
    """The text is outside the subset; PyYAML must read it."""


def load(text: str) -> dict[str, Any] | None:
    """The mapping `yaml.safe_load(text)` returns, or None when the text is outside the subset."""
    if "\t" in text or "\r" in text or "\ufeff" in text or "\\" in text:
        return None
    lines: list[tuple[int, str]] = []
    for raw in text.split("\n"):
        content = raw.strip(" ")
        if not content or content.startswith("#"):
            continue  # blank lines and whole-line comments
        if "#" in content or not content.isprintable() or raw.startswith(("%", "---", "...")):
            return None
        lines.append((len(raw) - len(raw.lstrip(" ")), content))
    if not lines or lines[0][0] != 0 or _is_item(lines[0][1]):
        return None
    parts: list[str] = []
    try:
        end = _block(lines, 0, 0, parts)
        if end != len(lines):
            return None
        value = json.loads("".join(parts))
    except (_Unsupported, IndexError, RecursionError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def _block(lines: list[tuple[int, str]], i: int, indent: int, out: list[str]) -> int:
    """Write the block (mapping or sequence) starting at line `i` as JSON; the next line."""
    if _is_item(lines[i][1]):
        return _sequence(lines, i, indent, out)
    n = len(lines)
    out.append("{")
    first = True
    while i < n and lines[i][0] == indent:
        match = _KEY.fullmatch(lines[i][1])
        if match is None:
            raise _Unsupported
        key, rest = match.group(1), (match.group(2) or "").rstrip(" ")
        if key in _NULLS or key in _TRUE or key in _FALSE:
            raise _Unsupported  # YAML 1.1 reads these keys as null or booleans
        out.append(f'"{key}":' if first else f',"{key}":')
        first = False
        if rest:
            _inline(rest, out)
            i += 1
        elif i + 1 < n and lines[i + 1][0] > indent:
            i = _block(lines, i + 1, lines[i + 1][0], out)
        elif i + 1 < n and lines[i + 1][0] == indent and _is_item(lines[i + 1][1]):
            i = _sequence(lines, i + 1, indent, out)
        else:
            raise _Unsupported  # an empty value: null, or a scalar on following lines
    if i < n and lines[i][0] > indent:
        raise _Unsupported
    out.append("}")
    return i


def _sequence(lines: list[tuple[int, str]], i: int, indent: int, out: list[str]) -> int:
    n = len(lines)
    out.append("[")
    first = True
    while i < n and lines[i][0] == indent and _is_item(lines[i][1]):
        if not first:
            out.append(",")
        first = False
        content = lines[i][1]
        rest = content[1:].lstrip(" ")
        if not rest:
            if not (i + 1 < n and lines[i + 1][0] > indent):
                raise _Unsupported
            i = _block(lines, i + 1, lines[i + 1][0], out)
        elif _KEY.fullmatch(rest) or _is_item(rest):
            # "- key: value" opens a mapping whose keys line up after the dash.
            column = indent + len(content) - len(rest)
            lines[i] = (column, rest)
            i = _block(lines, i, column, out)
        else:
            _inline(rest, out)
            i += 1
    if i < n and lines[i][0] > indent:
        raise _Unsupported
    out.append("]")
    return i


def _inline(text: str, out: list[str]) -> None:
    """Write a value given on the rest of a line: a flow collection or a scalar."""
    try:
        out.append(_VALUES[text])
        return
    except KeyError:
        pass
    first = text[0]
    if first in "[{":
        if _FLOW_ALL.fullmatch(text) is None:
            raise _Unsupported
        value = _FLOW_SCALAR.sub(_flow_scalar, text)
    elif first in "\"'":
        if len(text) < 2 or text[-1] != first or first in text[1:-1] or '"' in text:
            raise _Unsupported
        value = f'"{text[1:-1]}"'
    elif ": " in text or text.endswith(":"):
        raise _Unsupported
    else:
        value = _scalar(text)
    if len(_VALUES) > 100_000:
        _VALUES.clear()
    _VALUES[text] = value
    out.append(value)


def _flow_scalar(match: re.Match[str]) -> str:
    token = match.group()
    try:
        return _CACHE[token]
    except KeyError:
        pass
    if token[0] == '"':
        json_text = token
    elif token[0] == "'":
        json_text = f'"{token[1:-1]}"' if '"' not in token else ""
    else:
        json_text = _scalar(token.rstrip(" "))
    if not json_text:
        raise _Unsupported
    if len(_CACHE) > 100_000:
        _CACHE.clear()
    _CACHE[token] = json_text
    return json_text


def _scalar(text: str) -> str:
    """A plain scalar as JSON, resolved the way PyYAML's SafeLoader does (YAML 1.1)."""
    if text in _NULLS:
        return "null"
    if text in _TRUE:
        return "true"
    if text in _FALSE:
        return "false"
    if _INT.fullmatch(text):
        return str(int(text))
    if _FLOAT.fullmatch(text):
        return repr(float(text))
    if not (text[0].isalpha() or text[0] in "_/") or '"' in text:
        raise _Unsupported
    return f'"{text}"'
