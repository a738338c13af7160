"""Schema-valid documents for tests that need manifests without training a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemma.registry import Registry
from stemma.registry.store import derived as _derived
from stemma.registry.store.files import digest

RUN = {"started": "2026-01-01T00:00:00Z", "duration_s": 1.0, "stemma": "0.1.0", "device": "cpu"}


def dataset_manifest(reg: Registry, name: str) -> dict[str, Any]:
    """A dataset manifest for the declared dataset `name`, written to disk."""
    spec = reg.dataset_spec(name)
    doc = {
        "kind": "dataset",
        "schema_version": 1,
        "name": name,
        "spec": dict(spec.raw),
        "spec_digest": spec.digest,
        "data": {
            "path": "data.npz",
            "md5": "0" * 32,
            "sha256": "sha256:" + "0" * 64,
            "bytes": 1,
            "format": "npz",
        },
        "shape": [1, 8, 8],
        "dtype": "float32",
        "classes": [0, 1],
        "splits": {"train": {"samples": 10, "class_counts": {"0": 5, "1": 5}}},
        "run": RUN,
    }
    doc["id"] = reg.write_dataset_manifest(name, doc)
    return doc


def model_manifest(
    reg: Registry, name: str, accuracy: float = 0.9, weights_md5: str = "1" * 32, **extra: Any
) -> dict[str, Any]:
    """A model manifest consistent with the current specs (source id, dataset ids), written."""
    spec = reg.model_spec(name)
    src = spec.source
    source = None
    if src is not None:
        parent = reg.model_manifest(src.model)
        source = {
            "model": src.model,
            "relation": src.relation,
            "id": parent.id if parent else digest("missing"),
        }
    datasets = {}
    for role, ds in (("train", spec.train), ("eval", spec.eval)):
        dm = reg.dataset_manifest(ds)
        datasets[role] = {"name": ds, "id": dm.id if dm else digest(ds)}
    doc: dict[str, Any] = {
        "kind": "model",
        "schema_version": 1,
        "name": name,
        "spec": dict(spec.raw),
        "spec_digest": spec.digest,
        "source": source,
        "datasets": datasets,
        "weights": {
            "path": "weights.safetensors",
            "md5": weights_md5,
            "sha256": "sha256:" + "2" * 64,
            "bytes": 100,
            "format": "safetensors",
        },
        "architecture": {
            "config": {"family": "mlp", "hidden": [32]},
            "tensors": [
                {
                    "name": "head.weight",
                    "shape": [5, 32],
                    "dtype": "float32",
                    "origin": "new" if source is None else "transferred",
                    "frozen": False,
                },
            ],
        },
        "parameters": {"total": 160, "trainable": 160, "transferred": 0},
        "metrics": {"accuracy": accuracy, "loss": round(1 - accuracy, 6)},
        "gates": [],
        "run": RUN,
    }
    doc.update(extra)
    doc["id"] = reg.write_model_manifest(name, doc)
    return doc


class Fact:
    """A fact of a registry's store (`.stemma/index.duckdb`), read and written like a file."""

    def __init__(self, repo_root: Path, name: str) -> None:
        self.repo_root, self.name = repo_root, name

    def read_bytes(self) -> bytes:
        data = _derived.load(self.repo_root, self.name)
        assert data, f"no fact {self.name}"
        return data

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        assert _derived.save(self.repo_root, self.name, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self) -> None:
        """Forget it (an empty fact is no fact to its readers)."""
        self.write_bytes(b"")

    def exists(self) -> bool:
        return bool(_derived.load(self.repo_root, self.name))

    is_file = exists

    def names(self) -> list[str]:
        """The names of every fact of the store."""
        import duckdb

        con = duckdb.connect()
        path = _derived.store_path(self.repo_root)
        con.execute(f"ATTACH '{path}' AS store (READ_ONLY)")
        con.execute("USE store")
        return _derived.fact_names(con)
