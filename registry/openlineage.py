"""OpenLineage events for every build in the registry's history, for a lineage server.

Each version of a model (a distinct manifest id in git history) is one run of its DVC stage:
a START event at `run.started` and a COMPLETE event (FAIL when a gate or check failed) at
`started + duration_s`. Inputs are the source model (a dataset whose `datasetType` facet says
MODEL, versioned by the source's manifest id) and the data; the output is the model, versioned
by its own id. Run ids are uuid5 of the manifest id, so exporting twice gives the same events.
Events follow the OpenLineage 2-0-2 schema.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import StemmaError
from .files import Outputs
from .history import Version, all_history, git_paths, manifest_at
from .pipeline import stage_name
from .registry import Registry
from .tree import git

SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
FACETS = "https://openlineage.io/spec/facets"
PRODUCER = f"https://pypi.org/project/stemma-ml/{__version__}/"
_RUN_IDS = uuid.UUID("5f6d1c2e-3b7a-5e4f-9a61-7c2d9b1e0a47")  # stemma's uuid5 namespace
_FACET_VERSIONS = {
    "DatasetTypeDatasetFacet": "1-0-1",
    "DatasetVersionDatasetFacet": "1-0-1",
    "JobTypeJobFacet": "2-0-4",
    "ErrorMessageRunFacet": "1-0-1",
}


def _facet(kind: str, **fields: Any) -> dict[str, Any]:
    url = f"{FACETS}/{_FACET_VERSIONS[kind]}/{kind}.json#/$defs/{kind}"
    return {"_producer": PRODUCER, "_schemaURL": url, **fields}


def run_id(manifest_id: str) -> str:
    """The run id of the build that produced `manifest_id` (the same on every export)."""
    return str(uuid.uuid5(_RUN_IDS, manifest_id))


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


def _failures(raw: dict[str, Any]) -> list[str]:
    gates = raw.get("gates") or []
    failed = [f"gate {g['metric']} {g['op']} {g['threshold']}" for g in gates if not g["passed"]]
    checks = raw.get("checks") or {}
    return failed + [f"check {n}" for n, r in sorted(checks.items()) if not r.get("passed", True)]


def build_events(raw: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """START and COMPLETE (or FAIL) of the build that wrote manifest `raw`."""
    name = str(raw["name"])
    run = raw.get("run") or {}
    started = _time(str(run["started"]))
    ended = started + timedelta(seconds=float(run.get("duration_s") or 0.0))
    inputs = []
    src = raw.get("source")
    if isinstance(src, dict):
        inputs.append(_dataset(namespace, f"models/{src['model']}", src.get("id"), "MODEL"))
    seen = set()
    for _role, ref in sorted((raw.get("datasets") or {}).items()):
        key = (ref["name"], ref.get("id"))
        if key not in seen:
            seen.add(key)
            inputs.append(_dataset(namespace, f"datasets/{ref['name']}", ref.get("id"), "FILE"))
    outputs = [_dataset(namespace, f"models/{name}", str(raw["id"]), "MODEL")]
    job = {
        "namespace": namespace,
        "name": stage_name("model", name),
        "facets": {
            "jobType": _facet(
                "JobTypeJobFacet", processingType="BATCH", integration="STEMMA", jobType="MODEL"
            )
        },
    }
    failures = _failures(raw)
    end_run: dict[str, Any] = {"runId": run_id(str(raw["id"]))}
    if failures:
        end_run["facets"] = {
            "errorMessage": _facet(
                "ErrorMessageRunFacet",
                message="failed: " + ", ".join(failures),
                programmingLanguage="python",
            )
        }

    def event(kind: str, when: datetime, run_block: dict[str, Any]) -> dict[str, Any]:
        return {
            "eventType": kind,
            "eventTime": _iso(when),
            "producer": PRODUCER,
            "schemaURL": f"{SPEC}#/$defs/RunEvent",
            "run": run_block,
            "job": job,
            "inputs": inputs,
            "outputs": outputs,
        }

    return [
        event("START", started, {"runId": end_run["runId"]}),
        event("FAIL" if failures else "COMPLETE", ended, end_run),
    ]


def _since(reg: Registry, rev: str) -> set[str]:
    """Commits reachable from HEAD but not from `rev`."""
    top = git_paths(reg).top
    if rev.startswith("-"):
        raise StemmaError(f"invalid revision {rev!r} for --since")
    git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return set(git(top, "rev-list", f"{rev}..HEAD").decode().split())


def events(
    reg: Registry, since: str | None = None, namespace: str = "stemma"
) -> list[dict[str, Any]]:
    """Every build's events, oldest build first (builds after `since` only, when given)."""
    versions: list[Version] = list(reversed(all_history(reg)))
    if since is not None:
        keep = _since(reg, since)
        versions = [v for v in versions if v.commit in keep]
    out: list[dict[str, Any]] = []
    done: set[str] = set()
    for v in versions:
        if v.id in done:
            continue  # a version restored later is the same build, not a new run
        done.add(v.id)
        manifest = manifest_at(reg, v.name, v.commit)
        out += build_events(dict(manifest.raw), namespace)
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


def post(found: list[dict[str, Any]], url: str, timeout: float = 30.0) -> None:
    """POST each event as JSON to an OpenLineage HTTP endpoint, in order."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise StemmaError(f"--url {url!r}: give an http:// or https:// address")
    for e in found:
        request = urllib.request.Request(
            url,
            data=json.dumps(e, sort_keys=True).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise StemmaError(f"{url} refused an event: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StemmaError(f"cannot post to {url}: {reason}") from None
