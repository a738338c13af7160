"""A fast reader for the small YAML subset that specs are written in.

PyYAML, even with libyaml, spends ~200 us on a ten-line spec: indexing 100,000 specs would
take longer than every other step together. Specs are simple (a block mapping whose values
are scalars, flow collections or nested blocks), so this reader rewrites exactly that subset
as canonical JSON (compact, keys sorted: the text `files.digest` hashes), which the index
stores and hashes without ever building the value in Python. It returns None for anything
else (anchors, tags, block scalars, comments after values, multi-line scalars, quotes with
escapes, numbers YAML 1.1 reads in surprising ways, ...), and the caller falls back to PyYAML.
Where it returns a value, the value is the one `yaml.safe_load` returns: tests compare the two
on real, synthetic and fuzzed specs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_NULLS = frozenset({"~", "null", "Null", "NULL"})
_TRUE = frozenset({"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"})
_FALSE = frozenset({"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"})
# Each of those words as JSON (YAML 1.1 reads them as null or booleans).
_WORDS = {w: "null" for w in _NULLS} | {w: "true" for w in _TRUE} | {w: "false" for w in _FALSE}
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?")
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*):(?: +(.*))?")
# A plain scalar inside a flow collection: it stops at flow indicators, '#', '?', quotes and
# at a ':' followed by a space or a flow indicator (where YAML sees a key/value separator).
_PLAIN = r"(?:[^,\[\]{}#:?'\"\s]|:(?![\s,\[\]{}]))(?:[^,\[\]{}#:?'\"]|:(?![\s,\[\]{}]))*"
# One token of a flow collection; only scalars need rewriting, punctuation stays as it is.
_FLOW_SCALAR = re.compile(rf"\"[^\"]*\"|'[^']*'|{_PLAIN}")
# A plain scalar is matched atomically (the lookahead captures it, the backreference takes it
# whole): else a long one that fails to match splits into every sequence of shorter ones, and
# the match takes exponential time.
_FLOW_ALL = re.compile(rf"(?: *(?:[\[\]{{}},]|: |\"[^\"]*\"|'[^']*'|(?=({_PLAIN}))\1))* *")
# Values repeat across specs (whole lines such as a shared `strategy:`, and scalars such as
# relations and dataset names): each is rewritten once.
_VALUES: dict[str, str] = {}
_CACHE: dict[str, str] = {}
_LINES: dict[str, tuple[str, str]] = {}
_SCALARS: dict[str, str] = {}  # the plain scalars of flow mappings (`_flat_mapping`)
_CACHE_MAX = 100_000
# Text that starts with a dot but is no YAML 1.1 number (such as ".5", "._5", ".inf", ".NaN"):
# ".", "./data", ".hidden".
_DOT_TEXT = re.compile(r"\.(?![0-9_]|(?:inf|Inf|INF|nan|NaN|NAN)$).*", re.S)
# Characters that make a flow mapping more than plain `key: value` pairs.
_NOT_FLAT = re.compile(r"[\[\]{}'\"#?&*!|>%@`]")
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Git's merge conflict markers: seven of one character at the start of a line, then a space
# and a label or the end of the line (`|||||||` is diff3's base section). YAML reads them as
# text or as a syntax error somewhere below; DVC refuses the file.
MERGE_CONFLICT = "merge conflict markers"
_CONFLICT = re.compile(r"^(?:<{7}|\|{7}|={7}|>{7})(?: |$)", re.M)


def conflict_line(text: str) -> int | None:
    """The 1-based line of the first git merge conflict marker in `text`, or None.

    The one test for conflict markers: every reader of a spec, dvc.yaml or dvc.lock asks it.
    """
    if not ("<<<<<<<" in text or "=======" in text or ">>>>>>>" in text or "|||||||" in text):
        return None  # the common case, at the speed of a substring search
    found = _CONFLICT.search(text)
    return None if found is None else text.count("\n", 0, found.start()) + 1


class _Unsupported(Exception):
    """The text is outside the subset; PyYAML must read it."""


def fast_load(text: str) -> dict[str, Any] | None:
    """The mapping `yaml.safe_load(text)` returns, or None when the text is outside the subset."""
    compact = fast_canonical(text)
    return None if compact is None else dict(json.loads(compact))


def fast_canonical(text: str) -> str | None:
    """The compact, key-sorted JSON of the mapping `yaml.safe_load(text)` returns (the text
    `files.digest` hashes), or None when the text is outside the subset."""
    compact = _known_flat(text)
    if compact is not None:
        return compact
    if "\t" in text or "\r" in text or "\ufeff" in text or "\\" in text:
        return None
    if conflict_line(text) is not None:
        return None  # PyYAML's reader names the marker's line
    if text.startswith(("%", "---", "...")) or "\n%" in text or "\n---" in text or "\n..." in text:
        return None  # directives and document markers
    if not text.replace("\n", "").isprintable():
        return None
    if not ("#" in text or "\n " in text or "\n-" in text or " \n" in text) and (
        text[:1] not in (" ", "-") and text[-1:] != " "
    ):
        return _flat(text)  # most specs: every line a top-level `key: value`
    # (indent, content) of each line that is not blank; a '#' anywhere is only accepted as
    # a whole-line comment (YAML reads it as a comment after a value in many places).
    lines = [
        (len(raw) - len(content), content)
        for raw in text.split("\n")
        if (content := raw.lstrip(" ")) and (content[0] != "#")
    ]
    if "#" in text and any("#" in content for _indent, content in lines):
        return None
    lines = [(indent, content.rstrip(" ")) for indent, content in lines]
    if not lines or lines[0][0] != 0 or _is_item(lines[0][1]):
        return None
    try:
        end, value = _block(lines, 0, 0)
    except (_Unsupported, IndexError, RecursionError, ValueError):
        return None
    return value if end == len(lines) else None


def _known_flat(text: str) -> str | None:
    """`_flat` of a text whose lines are all `key: value` lines met before (`_LINES`) or
    new ones that pass, each on its own, the checks `fast_canonical` makes of a whole text;
    None for any other text, which the whole-text checks then decide.

    Every check of those is one of a line: a character (a tab, CR, BOM, backslash or any
    other unprintable one, a '#'), a line's start (a directive, a document marker, a merge
    conflict marker, an indent or a list item: none matches `_KEY`, whose first character
    is a letter or '_') or a trailing space. A line in `_LINES` passed them all where it was
    met (its text passed them, and a line's content is cached without its indent or
    trailing spaces): most spec lines repeat, and are not searched again (10,000 synthetic
    specs: 4 us of the 8 each took)."""
    members: dict[str, str] = {}
    cached = _LINES.get
    try:
        for line in text.split("\n"):
            if line:
                pair = cached(line)
                if pair is None:
                    if "#" in line or "\\" in line or line[-1] == " " or not line.isprintable():
                        return None
                    pair = _new_line(line)
                    if pair is None:
                        return None  # `key:` alone: the value is on the following lines
                members[pair[0]] = pair[1]
    except (_Unsupported, IndexError, RecursionError, ValueError):
        return None
    return _join(members) if members else None


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def _flat(text: str) -> str | None:
    """`fast_canonical` of a text whose lines are all `key: value` at the top level (no
    indent, comment, list item or trailing space): one pass over the lines."""
    members: dict[str, str] = {}
    cached = _LINES.get  # most lines were met before: no call to `_line`
    try:
        for line in text.split("\n"):
            if line:
                pair = cached(line) or _new_line(line)
                if pair is None:
                    return None  # a value on the following lines, yet none is indented
                members[pair[0]] = pair[1]
    except (_Unsupported, IndexError, RecursionError, ValueError):
        return None
    return _join(members) if members else None


def _join(members: dict[str, str]) -> str:
    """A mapping's canonical JSON from its members' (keys are `_KEY` names: no escaping)."""
    return "{" + ",".join([f'"{k}":{members[k]}' for k in sorted(members)]) + "}"


def _line(content: str) -> tuple[str, str] | None:
    """The key and the canonical JSON value of a `key: value` line (such lines repeat across
    specs: each is read once); None for `key:` alone (its value is on the following lines)."""
    return _LINES.get(content) or _new_line(content)


def _new_line(content: str) -> tuple[str, str] | None:
    """`_line` of a line not met before (a missed lookup raises no KeyError: most lines
    not met before are met once, such as a spec's description)."""
    match = _KEY.fullmatch(content)
    if match is None:
        raise _Unsupported
    key, rest = match.group(1), (match.group(2) or "").rstrip(" ")
    if key in _WORDS:
        raise _Unsupported  # YAML 1.1 reads these keys as null or booleans
    if not rest:
        return None
    pair = (key, _inline(rest))
    if len(_LINES) > _CACHE_MAX:
        _LINES.clear()
    _LINES[content] = pair
    return pair


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[int, str]:
    """The block (mapping or sequence) starting at line `i` as canonical JSON; the next line."""
    if _is_item(lines[i][1]):
        return _sequence(lines, i, indent)
    n = len(lines)
    members: dict[str, str] = {}  # a repeated key keeps its last value, as in PyYAML
    while i < n and lines[i][0] == indent:
        content = lines[i][1]
        pair = _line(content)
        if pair is not None:
            members[pair[0]] = pair[1]
            i += 1
            continue
        key = content[:-1]  # `key:` alone
        if i + 1 < n and lines[i + 1][0] > indent:
            i, members[key] = _block(lines, i + 1, lines[i + 1][0])
        elif i + 1 < n and lines[i + 1][0] == indent and _is_item(lines[i + 1][1]):
            i, members[key] = _sequence(lines, i + 1, indent)
        else:
            raise _Unsupported  # an empty value: null, or a scalar on following lines
    if i < n and lines[i][0] > indent:
        raise _Unsupported
    return i, _join(members)


def _sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[int, str]:
    n = len(lines)
    items: list[str] = []
    while i < n and lines[i][0] == indent and _is_item(lines[i][1]):
        content = lines[i][1]
        rest = content[1:].lstrip(" ")
        if not rest:
            if not (i + 1 < n and lines[i + 1][0] > indent):
                raise _Unsupported
            i, item = _block(lines, i + 1, lines[i + 1][0])
        elif _KEY.fullmatch(rest) or _is_item(rest):
            # "- key: value" opens a mapping whose keys line up after the dash.
            column = indent + len(content) - len(rest)
            lines[i] = (column, rest)
            i, item = _block(lines, i, column)
        else:
            item = _inline(rest)
            i += 1
        items.append(item)
    if i < n and lines[i][0] > indent:
        raise _Unsupported
    return i, "[" + ",".join(items) + "]"


def _inline(text: str) -> str:
    """A value given on the rest of a line (a flow collection or a scalar) as canonical JSON."""
    value = _VALUES.get(text)
    if value is not None:
        return value
    first = text[0]
    if first == "{" and (flat := _flat_mapping(text)) is not None:
        value = flat
    elif first in "[{":
        if _FLOW_ALL.fullmatch(text) is None:
            raise _Unsupported
        # Flow collections are short: the C parser and encoder sort their keys.
        value = _ENCODER.encode(json.loads(_FLOW_SCALAR.sub(_flow_scalar, text)))
    elif first in "\"'":
        if len(text) < 2 or text[-1] != first or first in text[1:-1] or '"' in text:
            raise _Unsupported
        value = f'"{text[1:-1]}"'
    elif ": " in text or text.endswith(":"):
        raise _Unsupported
    else:
        value = _scalar(text)
    if len(_VALUES) > _CACHE_MAX:
        _VALUES.clear()
    _VALUES[text] = value
    return value


def _flat_mapping(text: str) -> str | None:
    """A flow mapping of plain scalars, such as `{model: base, relation: finetune}`, the
    most common flow value in specs, as canonical JSON without a detour through the JSON
    parser; None for anything else (the general path decides)."""
    if text[-1] != "}" or _NOT_FLAT.search(text, 1, len(text) - 1):
        return None
    members: dict[str, str] = {}
    try:
        for item in text[1:-1].split(","):
            key, sep, value = item.partition(": ")
            key, value = key.strip(" "), value.strip(" ")
            if not (sep and key and value) or ":" in key or ": " in value or value[-1] == ":":
                return None
            quoted = _SCALARS.get(key) or _new_scalar(key)
            if quoted[0] != '"':
                return None  # a key YAML reads as a number, a boolean or null
            members[key] = _SCALARS.get(value) or _new_scalar(value)
    except _Unsupported:
        return None
    return "{" + ",".join(f'"{k}":{members[k]}' for k in sorted(members)) + "}"


def _flow_scalar(match: re.Match[str]) -> str:
    token = match.group()
    json_text = _CACHE.get(token)
    if json_text is not None:
        return json_text
    if token[0] == '"':
        json_text = token
    elif token[0] == "'":
        json_text = f'"{token[1:-1]}"' if '"' not in token else ""
    else:
        json_text = _scalar(token.rstrip(" "))
    if not json_text:
        raise _Unsupported
    if len(_CACHE) > _CACHE_MAX:
        _CACHE.clear()
    _CACHE[token] = json_text
    return json_text


def _new_scalar(text: str) -> str:
    """`_scalar`, kept for the flow mappings met next (keys and most values repeat)."""
    value = _scalar(text)
    if len(_SCALARS) > _CACHE_MAX:
        _SCALARS.clear()
    _SCALARS[text] = value
    return value


def _scalar(text: str) -> str:
    """A plain scalar as JSON, resolved the way PyYAML's SafeLoader does (YAML 1.1)."""
    if text[0].isalpha():  # text, or one of YAML 1.1's words (never a number)
        word = _WORDS.get(text)
        if word is not None:
            return word
        if '"' in text:
            raise _Unsupported
        return f'"{text}"'
    if text == "~":
        return "null"
    if _INT.fullmatch(text):
        if len(text) > 18:
            raise _Unsupported  # possibly past 64 bits: the full reader names the value
        return str(int(text))
    if _FLOAT.fullmatch(text):
        number = float(text)
        if number in (math.inf, -math.inf):
            raise _Unsupported  # JSON has no infinity (the encoder writes "Infinity")
        return repr(number)
    if not (text[0] in "_/" or _DOT_TEXT.fullmatch(text)) or '"' in text:
        raise _Unsupported
    return f'"{text}"'
