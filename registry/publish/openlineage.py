"""OpenLineage events for every build in the registry's history, for a lineage server.

Each version of a dataset or model (a distinct manifest id in git history) is one run of its
DVC stage: a START event at `run.started` and a COMPLETE event (FAIL when a gate or check
failed) at `started + duration_s`. A model's inputs are its source model (a dataset whose
`datasetType` facet says MODEL, versioned by the source's manifest id) and its data; its output
is the model, versioned by its own id. The job carries the spec as its source code and the git
commit that recorded the build; the run carries the metrics and gates (`stemma_metrics`).
Run ids are uuid5 of the manifest id, so exporting twice gives the same events.

Builds come in lineage order (`builds.builds`, over `dag.build_order`): every build after the
builds it read, so a lineage server that links an input to the newest version it has seen
links the right one.
Events follow the OpenLineage 2-0-2 schema; `send` hands them to openlineage-python's
transports (`registry/_olsend.py`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from stemma.registry import __version__
from stemma.registry.errors import GitError
from stemma.registry.pipeline.render import stage_name
from stemma.registry.publish._olsend import send
from stemma.registry.records.manifest import DatasetManifest, ModelManifest
from stemma.registry.rules.layout import DATASETS_DIR, MANIFEST_FILE, MODELS_DIR
from stemma.registry.store.files import Outputs
from stemma.registry.store.handle import Registry
from stemma.registry.store.tree import git
from stemma.registry.versions.builds import builds
from stemma.registry.versions.history import git_paths

__all__ = ["METRICS_FACET_SCHEMA", "build_events", "events", "run_id", "send", "to_jsonl"]

SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
FACETS = "https://openlineage.io/spec/facets"
PRODUCER = f"https://pypi.org/project/stemma-ml/{__version__}/"
_RUN_IDS = uuid.UUID("5f6d1c2e-3b7a-5e4f-9a61-7c2d9b1e0a47")  # stemma's uuid5 namespace
_FACET_VERSIONS = {
    "DatasetTypeDatasetFacet": "1-0-1",
    "DatasetVersionDatasetFacet": "1-0-1",
    "DataQualityMetricsDatasetFacet": "1-0-0",
    "JobTypeJobFacet": "2-0-4",
    "SourceCodeJobFacet": "1-0-1",
    "SourceCodeLocationJobFacet": "1-1-0",
    "ErrorMessageRunFacet": "1-0-1",
}
# A custom run facet (the spec's rule: a `_producer`, and a `_schemaURL` naming its schema)
# for what no standard facet holds: a model's metrics and the gates they were held to.
METRICS_FACET_URL = f"{PRODUCER}spec/facets/1-0-0/StemmaMetricsRunFacet.json"
METRICS_FACET_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": METRICS_FACET_URL,
    "$defs": {
        "StemmaMetricsRunFacet": {
            "allOf": [
                {"$ref": f"{SPEC}#/$defs/RunFacet"},
                {
                    "type": "object",
                    "properties": {
                        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                        "gates": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["metric", "op", "threshold", "passed"],
                            },
                        },
                    },
                    "required": ["metrics"],
                },
            ],
            "type": "object",
        }
    },
}


def _facet(kind: str, **fields: Any) -> dict[str, Any]:
    url = f"{FACETS}/{_FACET_VERSIONS[kind]}/{kind}.json#/$defs/{kind}"
    return {"_producer": PRODUCER, "_schemaURL": url, **fields}


def run_id(manifest_id: str) -> str:
    """The run id of the build that produced `manifest_id` (the same on every export)."""
    return str(uuid.uuid5(_RUN_IDS, manifest_id))


@dataclass(frozen=True)
class Origin:
    """Where a build's spec lives in git: the repository, the spec's path, the commit."""

    repo_url: str  # a URI: the `origin` remote when it is one, else the work tree's file URI
    path: str  # the spec, relative to the repository's top
    commit: str


def _dataset(namespace: str, name: str, version: str | None, kind: str) -> dict[str, Any]:
    facets: dict[str, Any] = {"datasetType": _facet("DatasetTypeDatasetFacet", datasetType=kind)}
    if version:
        facets["version"] = _facet("DatasetVersionDatasetFacet", datasetVersion=version)
    return {"namespace": namespace, "name": name, "facets": facets}


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _failures(manifest: ModelManifest) -> list[str]:
    gates = manifest.gates
    failed = [f"gate {g.metric} {g.op} {g.threshold}" for g in gates if not g.passed]
    checks = manifest.checks or {}
    return failed + [f"check {n}" for n, r in sorted(checks.items()) if not r.passed]


def _job(
    namespace: str, kind: str, manifest: ModelManifest | DatasetManifest, origin: Origin | None
) -> dict[str, Any]:
    facets: dict[str, Any] = {
        "jobType": _facet(
            "JobTypeJobFacet", processingType="BATCH", integration="STEMMA", jobType=kind.upper()
        ),
        # the spec is the job's code: what `stemma build` ran, as the manifest recorded it
        "sourceCode": _facet(
            "SourceCodeJobFacet",
            language="json",
            sourceCode=json.dumps(manifest.spec, sort_keys=True, indent=2),
        ),
    }
    if origin is not None:
        facets["sourceCodeLocation"] = _facet(
            "SourceCodeLocationJobFacet",
            type="git",
            url=origin.repo_url,
            repoUrl=origin.repo_url,
            path=origin.path,
            version=origin.commit,
        )
    return {"namespace": namespace, "name": stage_name(kind, manifest.name), "facets": facets}


def _pair(
    manifest: ModelManifest | DatasetManifest,
    job: dict[str, Any],
    io: tuple[list[Any], list[Any]],
    end: dict[str, Any],
) -> list[dict[str, Any]]:
    """The START and the closing event of one build."""
    started = _time(manifest.run.started)
    ended = started + timedelta(seconds=float(manifest.run.duration_s or 0.0))
    rid = run_id(manifest.id)
    failed = "errorMessage" in end

    def event(kind: str, when: datetime, facets: dict[str, Any]) -> dict[str, Any]:
        block: dict[str, Any] = {"runId": rid, **({"facets": facets} if facets else {})}
        return {
            "eventType": kind,
            "eventTime": _iso(when),
            "producer": PRODUCER,
            "schemaURL": f"{SPEC}#/$defs/RunEvent",
            "run": block,
            "job": job,
            "inputs": io[0],
            "outputs": io[1],
        }

    return [event("START", started, {}), event("FAIL" if failed else "COMPLETE", ended, end)]


def build_events(
    raw: dict[str, Any], namespace: str, origin: Origin | None = None
) -> list[dict[str, Any]]:
    """START and COMPLETE (or FAIL) of the build that wrote model manifest `raw`."""
    manifest = ModelManifest.from_dict(raw, f"{MODELS_DIR}/{raw.get('name')}/{MANIFEST_FILE}")
    inputs = []
    for parent, version in manifest.recorded_parents():  # a merge: one input per parent
        inputs.append(_dataset(namespace, f"models/{parent}", version, "MODEL"))
    seen = set()
    for _role, ref in sorted(manifest.datasets.items()):
        if (ref.name, ref.id) not in seen:
            seen.add((ref.name, ref.id))
            inputs.append(_dataset(namespace, f"datasets/{ref.name}", ref.id, "FILE"))
    outputs = [_dataset(namespace, f"models/{manifest.name}", manifest.id, "MODEL")]
    end: dict[str, Any] = {
        "stemma_metrics": {
            "_producer": PRODUCER,
            "_schemaURL": f"{METRICS_FACET_URL}#/$defs/StemmaMetricsRunFacet",
            "metrics": {
                k: v
                for k, v in sorted(manifest.metrics.items())
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
            "gates": [g.to_dict() for g in manifest.gates],
        }
    }
    failures = _failures(manifest)
    if failures:
        end["errorMessage"] = _facet(
            "ErrorMessageRunFacet",
            message="failed: " + ", ".join(failures),
            programmingLanguage="python",
        )
    return _pair(manifest, _job(namespace, "model", manifest, origin), (inputs, outputs), end)


def dataset_events(
    raw: dict[str, Any], namespace: str, origin: Origin | None = None
) -> list[dict[str, Any]]:
    """START and COMPLETE of the build that wrote dataset manifest `raw`."""
    manifest = DatasetManifest.from_dict(raw, f"{DATASETS_DIR}/{raw.get('name')}/{MANIFEST_FILE}")
    output = _dataset(namespace, f"datasets/{manifest.name}", manifest.id, "FILE")
    rows = sum(int(s.samples) for s in manifest.splits.values())
    size = manifest.data.bytes
    output["facets"]["dataQualityMetrics"] = _facet(
        "DataQualityMetricsDatasetFacet",
        rowCount=rows,
        fileCount=1,
        **({"bytes": size} if isinstance(size, int) else {}),
        columnMetrics={},
    )
    return _pair(manifest, _job(namespace, "dataset", manifest, origin), ([], [output]), {})


def _repo_url(top: Path) -> str:
    """The `origin` remote when it is a URL, else the work tree as a file URI."""
    try:
        remote = git(top, "config", "--get", "remote.origin.url").decode().strip()
    except GitError:
        remote = ""
    return remote if remote.startswith(("https://", "http://", "ssh://")) else top.as_uri()


def events(
    reg: Registry, since: str | None = None, namespace: str = "stemma"
) -> list[dict[str, Any]]:
    """Every build's events in lineage order (`builds.builds`): datasets, then models, each
    after the builds it read, otherwise oldest first (those committed after `since` only)."""
    url = _repo_url(git_paths(reg).top)
    out: list[dict[str, Any]] = []
    for b in builds(reg, since):
        make = dataset_events if b.kind == "dataset" else build_events
        out += make(b.raw, namespace, Origin(url, b.spec_path, b.commit))
    return out


def to_jsonl(found: list[dict[str, Any]]) -> str:
    """One compact JSON event per line."""
    return "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in found)


def write_jsonl(
    reg: Registry, found: list[dict[str, Any]], path: Path, overwrite: bool = False
) -> Path:
    """Write the events as JSON lines where `Outputs` allows (an existing file only with
    `overwrite`, never a registry file, a link, a pipe or a device); the real path."""
    return Outputs.for_registry(reg.repo_root, reg.root, overwrite).write(path, to_jsonl(found))
