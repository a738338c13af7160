"""What to call a class id: the dataset's class names, or the labels it selected.

A dataset manifest records `class_names` when its labels had names (strings in a table,
folder names). Without names, a selection that renumbers classes (`select: {classes:
[5, 6, 7, 8, 9], relabel: contiguous}`) still says what each id was in the source: id 0
is digit 5. Reports and listings show those labels, so a per-class row never reads as the
wrong digit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def class_labels(manifest: Mapping[str, Any]) -> list[str]:
    """The label of each class id of a dataset (or model) manifest; [] when the ids are
    the labels themselves (nothing was renamed or renumbered)."""
    names = manifest.get("class_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    spec = manifest.get("spec")
    select = spec.get("select") if isinstance(spec, Mapping) else None
    if not isinstance(select, Mapping):
        return []
    classes = select.get("classes")
    relabel = select.get("relabel")
    if relabel == "contiguous" and isinstance(classes, list) and classes:
        # the build keeps these classes and numbers them in sorted order (migration/data.py)
        return [str(c) for c in sorted({int(c) for c in classes})]
    if isinstance(relabel, Mapping):
        return _mapped(relabel, classes if isinstance(classes, list) else None)
    return []


def _mapped(relabel: Mapping[str, Any], classes: Sequence[Any] | None) -> list[str]:
    """Labels after an explicit relabel: each new id names the source classes it holds."""
    held: dict[int, list[int]] = {}
    moved = {int(k) for k in relabel}
    for key, value in relabel.items():
        held.setdefault(int(value), []).append(int(key))
    for cls in classes or ():  # a kept class the mapping does not move keeps its id
        if int(cls) not in moved:
            held.setdefault(int(cls), []).append(int(cls))
    if not held:
        return []
    return ["/".join(map(str, sorted(held.get(i, [])))) or str(i) for i in range(max(held) + 1)]


def label(labels: Sequence[str], class_id: str | int) -> str:
    """The label of one class id, or the id itself when there is none."""
    i = int(class_id)
    return labels[i] if 0 <= i < len(labels) else str(class_id)
