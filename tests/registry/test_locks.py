"""A dvc.lock's weights md5: the scan of DVC's layout agrees with YAML, and anything else is
parsed as YAML."""

from __future__ import annotations

import pytest
from stemma.registry.store import yamlio
from stemma.registry.store.yamlio import scan_lock_md5

LOCK = """schema: '2.0'
stages:
  model-a:
    cmd: stemma build model a
    deps:
    - path: models/b/weights.safetensors
      hash: md5
      md5: {dep}
    outs:
    - path: models/a/manifest.json
      hash: md5
      md5: {manifest}
    - path: {path}
      hash: md5
      md5: {md5}
      size: 10
"""
MD5 = "0123456789abcdef0123456789abcdef"
FIELDS = {"dep": "b1" * 16, "manifest": "c2" * 16, "path": "models/a/weights.safetensors"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LOCK.format(**FIELDS, md5=MD5), MD5),  # the scan's case
        (LOCK.format(**{**FIELDS, "path": "'models/a/weights.safetensors'"}, md5=MD5), MD5),
        (LOCK.format(**{**FIELDS, "path": "./models/a/weights.safetensors"}, md5=MD5), MD5),
        (LOCK.format(**FIELDS, md5="d3" * 16 + ".dir"), "d3" * 16 + ".dir"),  # a folder's md5
        (
            LOCK.format(**FIELDS, md5=MD5) + "  model-c:\n    outs:\n"
            "    - path: models/a/weights.safetensors\n      md5: " + "e4" * 16 + "\n",
            "e4" * 16,
        ),
        (LOCK.format(**FIELDS, md5=MD5).replace("    outs:", "    other:"), None),
        (
            LOCK.format(**FIELDS, md5=MD5).replace(
                "    - path: models/a/w", "    - [path: models/a/w"
            ),
            None,
        ),  # does not parse
        ("", None),
    ],
)
def test_other_layouts_are_parsed_as_yaml(text: str, expected: str | None) -> None:
    weights = "models/a/weights.safetensors"
    assert yamlio.locked_md5(text, weights) == expected
    assert yamlio.locked_md5(text, weights) == yamlio.locked_md5s(text).get(weights)


def test_the_scan_never_answers_where_yaml_disagrees() -> None:
    weights = "models/a/weights.safetensors"
    # A dependency with the weights' path above the outputs: only the output counts.
    text = LOCK.format(**{**FIELDS, "path": weights}, md5=MD5).replace(
        "models/b/weights.safetensors", weights
    )
    assert scan_lock_md5(text, weights) is None  # two items of that path: not the scan's case
    assert yamlio.locked_md5(text, weights) == MD5
