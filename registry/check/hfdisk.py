"""The files of a Hugging Face `save_to_disk` folder, checked before `datasets` reads them.

`datasets.load_from_disk` joins the split names of `dataset_dict.json` and the file names
of each `state.json` (`_data_files`) to the folder without looking at them, and opens what
the joins name: a split `../..` or a data file `/elsewhere/x.arrow` reads a dataset from
anywhere, and a linked file from wherever the link leads. Here every such name must be a
path inside the folder, every file it reads a regular file that resolves inside the folder,
and the JSON files bounded in size; a located error names the file and the field otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from stemma.registry.errors import ParseError, PathEscape, UnsafeFile
from stemma.registry.store.files import file_kind, read_json

DICT_FILE = "dataset_dict.json"
STATE_FILE = "state.json"
INFO_FILE = "dataset_info.json"


def check_saved_dataset(folder: Path, display: str) -> None:
    """Refuse a `save_to_disk` folder (a Dataset or a DatasetDict) whose files lead outside
    it or are not regular files; `display` is the folder as the spec names it."""
    base = Path(os.path.realpath(folder))
    if "::" in str(base) or "://" in str(base):
        # fsspec, which `datasets` opens paths with, reads these as a chain or a URL
        raise UnsafeFile(display, "the path holds '::' or '://'; rename the folder")
    present = {name for name in (DICT_FILE, STATE_FILE, INFO_FILE) if _lexists(base / name)}
    if {STATE_FILE, INFO_FILE} & present or DICT_FILE not in present:
        if {STATE_FILE, INFO_FILE} & present:  # as `load_from_disk` decides: one Dataset
            _check_split(base, base, display)
        return  # neither layout: `datasets` says so itself
    shown = f"{display}/{DICT_FILE}"
    doc = _read(base / DICT_FILE, base, shown)
    splits = doc.get("splits") if isinstance(doc, dict) else None
    if not isinstance(splits, list):
        raise ParseError(shown, "expected a list of split names", pointer="/splits")
    for i, split in enumerate(splits):
        if not _plain(split):
            raise PathEscape(
                shown,
                f"split {str(split)[:80]!r} is not a folder name inside {display}",
                pointer=f"/splits/{i}",
            )
        _check_split(base, base / split, f"{display}/{split}")


def _check_split(base: Path, split: Path, display: str) -> None:
    """One Dataset folder: its JSON files and every data file `state.json` names."""
    _inside(split, base, display)
    state_name = f"{display}/{STATE_FILE}"
    state = _read(split / STATE_FILE, base, state_name)
    _read(split / INFO_FILE, base, f"{display}/{INFO_FILE}")
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list):
        raise ParseError(state_name, "expected a list of data files", pointer="/_data_files")
    for i, entry in enumerate(files):
        pointer = f"/_data_files/{i}/filename"
        name: Any = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ParseError(state_name, "expected a file name", pointer=pointer)
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or "\\" in name or "::" in name or ":/" in name:
            raise PathEscape(
                state_name,
                f"data file {name[:80]!r} lies outside the dataset folder {display};"
                " name a file inside it",
                pointer=pointer,
            )
        path = split / name
        shown = f"{display}/{name}"
        real = _inside(path, base, shown)
        try:
            mode = os.lstat(real).st_mode
        except OSError:
            missing = f"data file {name[:80]!r} does not exist"
            raise ParseError(state_name, missing, pointer=pointer) from None
        if not stat.S_ISREG(mode):
            raise UnsafeFile(shown, f"is {file_kind(mode)}, not a regular file")


def _read(path: Path, base: Path, display: str) -> Any:
    """A JSON file of the folder: inside it, regular, bounded (`read_json`)."""
    return read_json(_inside(path, base, display), display)


def _inside(path: Path, base: Path, display: str) -> Path:
    """`path` with every link resolved, or `PathEscape` when that lies outside `base`."""
    real = Path(os.path.realpath(path))
    if real != base and base not in real.parents:
        raise PathEscape(
            display,
            "resolves outside the dataset folder (through a symbolic link);"
            " keep the data files inside it",
        )
    return real


def _plain(name: object) -> bool:
    """A split name that is one folder name (no separators, not `.` or `..`)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and not {"\\", ":", "\x00"} & set(name)
    )


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)
