"""Portability on one machine: rebuild an example model under an emulated second processor.

Runs `stemma build model NAME` for a model of the example registry (zoo/) in a temporary copy
of what its build reads, under Debian's `qemu-user` (`qemu-x86_64 -cpu MODEL`, user-mode
emulation of another CPUID: another vendor string, other cache sizes, MKL's and oneDNN's
dispatch for that processor, approximate instructions computed by the emulator rather than by
the host), and compares the id with the committed manifest. It also computes the numerics
fingerprint (migration/fingerprint.py) natively and under emulation and names the operations
that differ. Prints one JSON document; exits 1 when an id differs.

    python benchmarks/portability_check.py [--model digits-base] [--cpu EPYC-Rome-v1 ...]

An emulated build is slow (digits-base, 10 epochs of a small CNN: about 3 to 10 minutes), so
neither CI nor the test suite runs this; `tests/test_portability.py` runs it when
STEMMA_EMULATED_CHECK=1. What it shows is agreement between the host and the emulated CPUID,
not a proof for every processor: real hardware's own instructions are not emulated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FINGERPRINT = (
    "import json, sys; from stemma.migration.numerics import pin; pin('portable')\n"
    "from stemma.migration import fingerprint; print(json.dumps(fingerprint.compute()))"
)


def _fingerprint(prefix: list[str]) -> dict[str, str]:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", FINGERPRINT], capture_output=True, text=True, check=True
    )
    ops: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])["ops"]
    return ops


def check(model: str, cpus: list[str], build: bool) -> dict[str, object]:
    """The check's JSON document."""
    from stemma.migration.verify import stage_copy
    from stemma.registry import Registry

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        return {"skipped": "qemu-x86_64 is not installed (Debian: apt-get install qemu-user)"}
    reg = Registry.open(REPO)
    found = reg.model_manifest(model)
    assert found is not None, f"{model} is not built in this checkout"
    native_ops = _fingerprint([])
    out: dict[str, object] = {"model": model, "committed_id": found.id, "emulated": {}}
    for cpu in cpus:
        prefix = [qemu, "-cpu", cpu]
        row: dict[str, object] = {}
        ops = _fingerprint(prefix)
        row["fingerprint_ops_differing"] = sorted(k for k in native_ops if ops[k] != native_ops[k])
        if build:
            with tempfile.TemporaryDirectory(prefix="stemma-emulated-") as tmp:
                copy = stage_copy(reg, model, Path(tmp))
                (copy.model_dir(model) / "manifest.json").unlink(missing_ok=True)
                begin = time.perf_counter()
                build_cmd = ["build", "model", model, "-q", "-C", tmp]
                done = subprocess.run(
                    [*prefix, sys.executable, "-m", "stemma.cli.app", *build_cmd],
                    capture_output=True,
                    text=True,
                )
                row["build_s"] = round(time.perf_counter() - begin, 1)
                if done.returncode != 0:
                    row["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:]
                else:
                    rebuilt = copy.model_manifest(model)
                    assert rebuilt is not None
                    row["id"] = rebuilt.id
                    row["identical"] = rebuilt.id == found.id
                    row["cpu"] = rebuilt.raw["run"]["numerics"]["cpu"]
        out["emulated"][cpu] = row  # type: ignore[index]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits-base")
    parser.add_argument("--cpu", nargs="+", default=["EPYC-Rome-v1"])
    parser.add_argument("--fingerprint-only", action="store_true", help="Skip the emulated build.")
    args = parser.parse_args()
    doc = check(args.model, args.cpu, build=not args.fingerprint_only)
    print(json.dumps(doc, indent=1, sort_keys=True))
    rows = doc.get("emulated") or {}
    assert isinstance(rows, dict)
    sys.exit(1 if any(r.get("identical") is False or "error" in r for r in rows.values()) else 0)


if __name__ == "__main__":
    main()
