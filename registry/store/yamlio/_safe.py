"""Safe YAML loading that remembers where each value came from, for error messages.

PyYAML is imported inside these functions: its import alone is a tenth of a `stemma ls`, and
a registry whose files are all in the fast reader's subset never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemma.registry.errors import ParseError
from stemma.registry.store.files import plain_value, read_text_file
from stemma.registry.store.yamlio._fast import MERGE_CONFLICT, conflict_line, fast_load


def load_yaml_text(text: str, path: str) -> Any:
    """Safe-load YAML text restricted to values JSON can hold (no dates, sets, binary data,
    recursive aliases or alias bombs; integer keys become text); a syntax error or another
    value names the file, and the line or JSON pointer. Git's merge conflict markers are
    refused as such, at their line, not as the syntax error they cause further down.
    Text in the spec subset is read by the fast reader (the same value, without PyYAML)."""
    fast = fast_load(text)
    if fast is not None:  # still checked: the subset has no bound on depth or size
        return plain_value(fast, path, string_keys=True)
    line = conflict_line(text)
    if line is not None:
        raise ParseError(path, MERGE_CONFLICT, line=line)
    import yaml

    # libyaml's loader is ~10x faster; fall back when PyYAML was built without it.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ParseError(path, f"invalid YAML: {exc.problem}", line=line) from None
    except yaml.YAMLError as exc:
        raise ParseError(path, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ParseError(path, "nested too deeply") from None
    except ValueError as exc:  # PyYAML's int(): more than 4300 digits
        reason = "a number is too large" if "digits" in str(exc) else f"invalid YAML: {exc}"
        raise ParseError(path, reason) from None
    return plain_value(doc, path, string_keys=True)


def load_yaml(path: Path, display: str | None = None) -> Any:
    """Safe-load a YAML file (a bounded regular file of UTF-8 text)."""
    name = display or str(path)
    text = read_text_file(path, name)
    if text is None:
        raise ParseError(name, "the file does not exist")
    return load_yaml_text(text, name)


def line_of(text: str, pointer_parts: list[str | int]) -> int | None:
    """The 1-based line where the value at a JSON pointer starts, or None when unknown."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in pointer_parts:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def dump_yaml(obj: Any) -> str:
    """Dump YAML with stable key order as given (for small written files such as stemma.yaml;
    the generated pipeline files use `dump_block`)."""
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100)
