"""A block-style YAML writer for the generated pipeline files: mappings, lists, strings,
booleans, numbers and null, in the layout PyYAML's `safe_dump(default_flow_style=False,
sort_keys=False)` gives them.

Rendering 10,000 pipeline files through PyYAML's emitter costs seconds (libyaml's one too);
this writer does it in a fraction of that, because it needs no events, no analysis of each
scalar beyond one regular expression, and no line folding. A string is written plain when
it cannot read back as anything else (it starts with a letter, `_`, `..` or `./`, holds only
characters that never start YAML syntax, and is none of YAML 1.1's boolean or null words);
otherwise it is a JSON string, which YAML reads as a double-quoted scalar. Tests check that
every text it writes loads back to the document it was given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

# No ': ' or ' #' can occur: neither ':' nor '#' is allowed; no trailing space; a leading
# '.' only before '.' or '/' (a relative path, never `.inf` or `.5`).
_PLAIN = re.compile(r"(?:[A-Za-z_]|\.[./])(?:[\w./@+ ,;()'!?-]*[\w./@+,;()'!?-])?", re.ASCII)
_WORDS = frozenset(
    w
    for base in ("yes", "no", "on", "off", "true", "false", "null")
    for w in (base, base.capitalize(), base.upper())
)


def scalar(value: Any) -> str:
    """One scalar as YAML text."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text not in _WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def dump_block(doc: Mapping[str, Any]) -> str:
    """The block-style YAML text of a mapping."""
    out: list[str] = []
    _mapping(doc, "", out)
    return "".join(out)


def _mapping(doc: Mapping[str, Any], indent: str, out: list[str]) -> None:
    for key, value in doc.items():
        head = f"{indent}{scalar(key)}:"
        _value(head, value, indent, out)


def _value(head: str, value: Any, indent: str, out: list[str]) -> None:
    if isinstance(value, Mapping):
        if not value:
            out.append(f"{head} {{}}\n")
            return
        out.append(head + "\n")
        _mapping(value, indent + "  ", out)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            out.append(f"{head} []\n")
            return
        out.append(head + "\n")
        _sequence(value, indent, out)  # PyYAML's indentless sequence under a key
    else:
        out.append(f"{head} {scalar(value)}\n")


def _sequence(items: Sequence[Any], indent: str, out: list[str]) -> None:
    for item in items:
        if isinstance(item, Mapping) and item:
            first = True
            for key, value in item.items():
                lead = f"{indent}- " if first else f"{indent}  "
                _value(f"{lead}{scalar(key)}:", value, indent + "  ", out)
                first = False
        elif isinstance(item, Sequence) and not isinstance(item, str) and item:
            raise TypeError("nested lists are not written by the pipeline")
        else:
            out.append(f"{indent}- {scalar(item) if not isinstance(item, Mapping) else '{}'}\n")
