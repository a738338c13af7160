"""Every YAML stemma reads or writes, in one place.

- `load_yaml_text` / `load_yaml`: a document as plain data (what JSON can hold), with located
  errors (file, line); the fast reader of the spec subset first, PyYAML's safe loader for the
  rest. `line_of` finds the line of a JSON pointer for error messages.
- `fast_load` / `fast_canonical`: the fast reader alone (None outside its subset), the second
  as the compact, key-sorted JSON the index hashes.
- `dump_yaml` (PyYAML, small files such as stemma.yaml) and `dump_block` (the fast block-style
  writer of the generated pipeline files): both read back to the document they were given.
- `scan_lock_md5` and `without_block`: line scans of DVC's own files (a dvc.lock's md5 of one
  output; a dvc.yaml without its bulky top-level block) that spare a full parse; both give
  up (None, or the text unchanged) on anything but DVC's layout. `locked_md5` / `locked_md5s`:
  what a dvc.lock records for one output (the scan, else the parse) or for every one.
- `conflict_line` / `MERGE_CONFLICT`: git's merge conflict markers, the one test every reader asks.

PyYAML is imported only by the functions that need it: reading a registry whose files are
all in the subset never loads it.
"""

from __future__ import annotations

from stemma.registry.store.yamlio._emit import dump_block
from stemma.registry.store.yamlio._fast import (
    MERGE_CONFLICT,
    conflict_line,
    fast_canonical,
    fast_load,
)
from stemma.registry.store.yamlio._safe import dump_yaml, line_of, load_yaml, load_yaml_text
from stemma.registry.store.yamlio._scan import locked_md5, locked_md5s, scan_lock_md5, without_block

__all__ = [
    "MERGE_CONFLICT",
    "conflict_line",
    "dump_block",
    "dump_yaml",
    "fast_canonical",
    "fast_load",
    "line_of",
    "load_yaml",
    "load_yaml_text",
    "locked_md5",
    "locked_md5s",
    "scan_lock_md5",
    "without_block",
]
