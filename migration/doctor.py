"""Can this machine reproduce the recorded bits? The numerics fingerprint, compared.

Each manifest records the fingerprint of the machine that built it (`migration/fingerprint.py`,
`run.numerics.fingerprint`). This module computes this machine's fingerprint under the
registry's own pins, in a fresh process (the pins must be set before torch loads, and the
calling process may have loaded torch already), and compares the two before any training:

- `reproducible`: same torch, same numeric mode, every operation's hash equal: a rebuild here
  must give the recorded bits, and one that does not is a real difference;
- `differs`: the operations named give other bits here: a rebuild can only be numerically
  equivalent;
- `unknown`: the manifest records no fingerprint, or another torch or numeric mode, or was
  built on CUDA: nothing to promise.

This module does not import torch; run as a module (its `__main__` block), it does, after
pinning.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import Run, model_record
from stemma.registry.rules.layout import STATE_DIR
from stemma.registry.store.handle import Registry

from .numerics import pin_for_repo, record

REPRODUCIBLE, DIFFERS, UNKNOWN = "reproducible", "differs", "unknown"


@dataclass(frozen=True)
class Prediction:
    """Whether a rebuild here can give a manifest's recorded bits, and why."""

    name: str
    verdict: str  # REPRODUCIBLE, DIFFERS or UNKNOWN
    reason: str
    ops: list[str] = field(default_factory=list)  # the operations that differ

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"name": self.name, "verdict": self.verdict, "reason": self.reason, "ops": self.ops}


def machine_numerics(reg: Registry) -> dict[str, Any]:
    """This machine's `run.numerics` block (with its fingerprint) under the registry's pins."""
    args = [sys.executable, "-m", "stemma.migration.doctor", str(reg.repo_root)]
    done = subprocess.run(args, capture_output=True, text=True)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = None
    if done.returncode != 0 or not isinstance(doc, dict):
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise BuildError(f"the numerics fingerprint of this machine failed: {lines[-1]}")
    return doc


def predict(name: str, run: Run, here: Mapping[str, Any]) -> Prediction:
    """Compare a manifest's run block with this machine's numerics block (`machine_numerics`)."""
    there = run.numerics
    device = run.device or "cpu"
    if device != "cpu":
        return Prediction(name, UNKNOWN, f"built on {device}: no bits are promised")
    if there is None or there.fingerprint is None:
        return Prediction(name, UNKNOWN, "the manifest records no numerics fingerprint")
    if run.torch != here.get("torch"):
        return Prediction(
            name, UNKNOWN, f"built with torch {run.torch}, this machine has {here['torch']}"
        )
    if there.mode != here.get("mode") or not there.pinned or not here.get("pinned"):
        return Prediction(
            name,
            UNKNOWN,
            f"built in {there.mode} mode (pinned: {there.pinned}), this machine"
            f" builds in {here.get('mode')} mode (pinned: {here.get('pinned')})",
        )
    ops = differing_ops(there.fingerprint, here["fingerprint"])
    if ops:
        return Prediction(
            name,
            DIFFERS,
            f"this machine's numerics differ from the build's on: {', '.join(ops)}",
            ops,
        )
    return Prediction(name, REPRODUCIBLE, "this machine's numerics match the build's")


def differing_ops(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """The operations whose hashes differ between two fingerprints ([] when none)."""
    if recorded.get("version") != here.get("version"):
        return [
            f"all (fingerprint version {recorded.get('version')} against {here.get('version')})"
        ]
    there_ops = recorded.get("ops") if isinstance(recorded.get("ops"), Mapping) else {}
    here_ops = here.get("ops") if isinstance(here.get("ops"), Mapping) else {}
    assert isinstance(there_ops, Mapping) and isinstance(here_ops, Mapping)
    return sorted(k for k in set(there_ops) | set(here_ops) if there_ops.get(k) != here_ops.get(k))


def check(
    reg: Registry, names: Iterable[str] | None = None
) -> tuple[dict[str, Any], list[Prediction]]:
    """This machine's numerics and, for each built model (or those named), the prediction."""
    here = machine_numerics(reg)
    out = []
    for name in names if names is not None else reg.model_names():
        found = reg.model_manifest(name)
        if found is None:
            out.append(Prediction(name, UNKNOWN, "not built"))
        else:
            out.append(predict(name, model_record(found).run, here))
    return here, out


if __name__ == "__main__":  # `python -m stemma.migration.doctor ROOT`, from machine_numerics
    # This machine's numerics block, pinned as `stemma build` pins it in ROOT: the pin comes
    # first, and torch (with the fingerprint's kernels) loads only after it.
    _repo = Path(sys.argv[1])
    _mode = pin_for_repo(_repo).mode
    import torch

    from . import fingerprint

    _doc = {
        **record(_mode),
        "torch": torch.__version__,
        "fingerprint": fingerprint.of_this_machine(_repo / STATE_DIR),
    }
    sys.stdout.write(json.dumps(_doc, sort_keys=True) + "\n")
