"""`stemma export mlflow`: every model version into an MLflow tracking and model registry.

Each model is a registered model of the same name; each of its builds (in lineage order,
`builds.builds`, so a parent's version exists before its child's) is one MLflow run in the
`stemma` experiment, holding the manifest's metrics, the spec's `training` and `strategy` as
parameters and the datasets it read as run inputs, and one model version made from that run.
Lineage goes where MLflow has a field for it (the parent build's run as `mlflow.parentRunId`,
the commit as `mlflow.source.git.commit`) and into `stemma.*` tags (parent model, its MLflow
version and manifest id). Stemma's stages become aliases (`NAME#prod` -> `prod`), its version
tags a `stemma.version` tag. A version is found again by its `stemma.id` tag, so a second
export changes nothing.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from stemma.registry.errors import StemmaError
from stemma.registry.publish._optional import require
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import ModelManifest
from stemma.registry.rules.layout import MANIFEST_FILE, MODELS_DIR
from stemma.registry.store.handle import Registry
from stemma.registry.versions.builds import Build, builds
from stemma.registry.versions.resolve import log
from stemma.registry.versions.tags import current_stages

EXPERIMENT = "stemma"
ID_TAG = "stemma.id"
_PARAM_MAX = 6000  # MLflow's longest parameter value


@dataclass
class MlflowReport:
    """What one export did: versions created, aliases and tags set or removed."""

    created: list[str] = field(default_factory=list)  # "NAME/N": registered version N of NAME
    changed: list[str] = field(default_factory=list)  # "NAME#alias -> N", "NAME/N tag=value"
    unchanged: int = 0  # versions already there, as they should be

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"created": self.created, "changed": self.changed, "unchanged": self.unchanged}


def _millis(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def flat_params(spec: dict[str, Any]) -> dict[str, str]:
    """The spec's `training` and `strategy` as MLflow parameters: dotted keys, JSON values
    for lists and other non-strings, cut to MLflow's longest value."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in sorted(value.items()):
                walk(f"{prefix}.{k}", v)
            return
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[prefix] = text[:_PARAM_MAX]

    for part in ("training", "strategy"):
        if isinstance(spec.get(part), dict):
            walk(part, spec[part])
    return out


def _metrics(manifest: ModelManifest) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in sorted(manifest.metrics.items())
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class _Exporter:
    """One export into one MLflow store: the client, the experiment, what exists there."""

    def __init__(self, reg: Registry, client: Any, entities: Any) -> None:
        self.reg, self.client, self.entities = reg, client, entities
        self.report = MlflowReport()
        self.runs: dict[str, str] = {}  # manifest id -> run id
        self.versions: dict[str, str] = {}  # manifest id -> MLflow version number
        self.known: set[str] = set()
        exp = client.get_experiment_by_name(EXPERIMENT)
        self.experiment = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)

    def model(self, name: str) -> None:
        """Make sure the registered model exists; remember the versions it already has."""
        if name in self.known:
            return
        self.known.add(name)
        found = self.client.search_registered_models(filter_string=f"name = '{name}'")
        if not any(m.name == name for m in found):
            self.client.create_registered_model(name, tags={"stemma.registry": "true"})
        for mv in self.client.search_model_versions(f"name = '{name}'"):
            mid = (mv.tags or {}).get(ID_TAG)
            if mid and mid not in self.versions:
                self.versions[mid] = str(mv.version)
                self.runs[mid] = str(mv.run_id)

    def add(self, b: Build) -> None:
        """The run and the model version of build `b`, unless they are there already."""
        self.model(b.name)
        if b.id in self.versions:
            self.report.unchanged += 1
            return
        manifest = ModelManifest.from_dict(b.raw, f"{MODELS_DIR}/{b.name}/{MANIFEST_FILE}")
        e = self.entities
        start = _millis(manifest.run.started)
        end = start + int(float(manifest.run.duration_s or 0.0) * 1000)
        src = manifest.source
        tags = {ID_TAG: b.id, "stemma.commit": b.commit, "mlflow.source.git.commit": b.commit}
        if src is not None:
            tags.update({"stemma.parent": src.model, "stemma.relation": src.relation})
            tags["stemma.parent_id"] = src.id
            if src.id in self.versions:
                tags["stemma.parent_version"] = self.versions[src.id]
                tags["mlflow.parentRunId"] = self.runs[src.id]
        created = self.client.create_run(
            self.experiment, start_time=start, tags=tags, run_name=f"{b.name}@{b.id[7:19]}"
        )
        rid = created.info.run_id
        self.client.log_batch(
            rid,
            metrics=[e.Metric(k, v, end, 0) for k, v in _metrics(manifest).items()],
            params=[e.Param(k, v) for k, v in flat_params(dict(manifest.spec)).items()],
        )
        inputs = [
            e.DatasetInput(
                e.Dataset(ref.name, ref.id[7:39], "stemma", ref.id),
                [e.InputTag("mlflow.data.context", role)],
            )
            for role, ref in sorted(manifest.datasets.items())
        ]
        if inputs:
            self.client.log_inputs(rid, datasets=inputs)
        failed = any(not g.passed for g in manifest.gates)
        self.client.set_terminated(rid, "FAILED" if failed else "FINISHED", end_time=end)
        version_tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
        mv = self.client.create_model_version(
            b.name,
            source=f"stemma://models/{b.name}/{b.id}",
            run_id=rid,
            tags=version_tags,
            description=ModelSpec.from_dict(b.name, manifest.spec).description,
        )
        self.versions[b.id], self.runs[b.id] = str(mv.version), rid
        self.report.created.append(f"{b.name}/{mv.version}")

    def labels(self, name: str) -> None:
        """Aliases from the model's stages, a `stemma.version` tag from its version tags."""
        self.model(name)
        stages = set(current_stages(self.reg, name))
        want: dict[str, str] = {}
        for entry in log(self.reg, name):
            number = self.versions.get(entry.version.id)
            if number is None:
                continue
            semver = [x for x in entry.labels if x not in stages]
            want.update({s: number for s in entry.labels if s in stages})
            if semver:
                self._tag(name, number, "stemma.version", ",".join(sorted(semver)))
        # MLflow 3 gives version numbers as ints, its 2.x as strings
        have = {
            a: str(n) for a, n in (self.client.get_registered_model(name).aliases or {}).items()
        }
        ours = set(self.versions.values())
        for alias, number in sorted(want.items()):
            if have.get(alias) != number:
                self.client.set_registered_model_alias(name, alias, number)
                self.report.changed.append(f"{name}#{alias} -> {number}")
        for alias, number in sorted(have.items()):
            if alias not in want and number in ours:  # a stage stemma no longer assigns
                self.client.delete_registered_model_alias(name, alias)
                self.report.changed.append(f"{name}#{alias} removed")

    def _tag(self, name: str, number: str, key: str, value: str) -> None:
        mv = self.client.get_model_version(name, number)
        if (mv.tags or {}).get(key) != value:
            self.client.set_model_version_tag(name, number, key, value)
            self.report.changed.append(f"{name}/{number} {key}={value}")


def export(reg: Registry, tracking_uri: str, registry_uri: str | None = None) -> MlflowReport:
    """Export every model version of `reg` into the MLflow store at `tracking_uri` (a
    `sqlite:///` URI or a server URL); idempotent."""
    mlflow = require("mlflow", "mlflow")
    entities = require("mlflow.entities", "mlflow")
    errors = require("mlflow.exceptions", "mlflow")
    found = builds(reg, kinds=("model",))
    store_errors: tuple[type[BaseException], ...] = (errors.MlflowException, OSError)
    # a SQLite store raises SQLAlchemy's errors for a file that is not a database; a server
    # store needs no SQLAlchemy here
    with suppress(StemmaError):
        store_errors += (require("sqlalchemy.exc", "mlflow").SQLAlchemyError,)
    try:
        client = mlflow.MlflowClient(
            tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri
        )
        job = _Exporter(reg, client, entities)
        for b in found:
            job.add(b)
        for name in sorted({b.name for b in found}):
            job.labels(name)
    except store_errors as exc:
        text = str(getattr(exc, "message", None) or exc).strip().splitlines() or ["failed"]
        raise StemmaError(f"MLflow store {tracking_uri}: {text[0][:300]}") from None
    return job.report
