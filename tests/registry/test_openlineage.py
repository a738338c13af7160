"""OpenLineage export: START + COMPLETE/FAIL per dataset and model build in history, in lineage
order, every event valid against the OpenLineage 2-0-2 JSON Schema (a copy under
tests/data/openlineage) with source-code and metrics facets, sent through openlineage-python's
HTTP transport (API key, retries) to a real local receiver."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import git, write
from factories import dataset_manifest, model_manifest
from jsonschema import Draft202012Validator
from referencing import Registry as Schemas
from referencing import Resource
from stemma.registry import Registry
from stemma.registry.errors import StemmaError
from stemma.registry.publish import openlineage as ol

SPECS = Path(__file__).resolve().parents[1] / "data" / "openlineage"
ZOO = Path(__file__).resolve().parents[2] / "zoo"
FAILED = {"metric": "accuracy", "op": ">=", "threshold": 0.95, "value": 0.9, "passed": False}


def _schemas() -> tuple[Schemas, str]:
    docs = [json.loads(p.read_text()) for p in sorted(SPECS.glob("*.json"))]
    docs.append(ol.METRICS_FACET_SCHEMA)
    schemas: Schemas = Schemas().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)
    main = next(d["$id"] for d in docs if d["$id"].endswith("/OpenLineage.json"))
    return schemas, main


SCHEMAS, MAIN = _schemas()
RUN_EVENT = Draft202012Validator(
    {"$ref": f"{MAIN}#/$defs/RunEvent"},
    registry=SCHEMAS,
    format_checker=Draft202012Validator.FORMAT_CHECKER,
)


def _facets(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from (event["run"].get("facets") or {}).values()
    yield from (event["job"].get("facets") or {}).values()
    for ds in event["inputs"] + event["outputs"]:
        yield from (ds.get("facets") or {}).values()


def assert_valid(event: dict[str, Any]) -> None:
    """The event against RunEvent, and each facet against the facet schema it names."""
    errors = [e.message for e in RUN_EVENT.iter_errors(event)]
    assert errors == [], errors
    datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00"))
    uuid.UUID(event["run"]["runId"])
    for facet in _facets(event):
        validator = Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=SCHEMAS)
        errors = [e.message for e in validator.iter_errors(facet)]
        assert errors == [], (facet, errors)


@pytest.fixture
def history(populated: Registry) -> dict[str, Any]:
    """Two commits: base + ft + scratch built; then base retrained and ft rebuilt, failing
    its gate."""
    reg = populated
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(reg, ds)
    first = {n: model_manifest(Registry.open(reg.root), n) for n in ("base", "ft", "scratch")}
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-q", "-m", "three models")
    write(
        reg.root / "models/base/spec.yaml",
        (reg.root / "models/base/spec.yaml").read_text().replace("epochs: 2", "epochs: 3"),
    )
    reg = Registry.open(reg.root)
    second = {"base": model_manifest(reg, "base", accuracy=0.95)}
    second["ft"] = model_manifest(Registry.open(reg.root), "ft", gates=[FAILED])
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-q", "-m", "retrain base; ft fails its gate")
    return {"reg": Registry.open(reg.root), "first": first, "second": second}


def test_one_start_and_one_end_per_build(history: dict[str, Any]) -> None:
    reg = history["reg"]
    every = ol.events(reg)
    for e in every:
        assert_valid(e)
    events = [e for e in every if e["job"]["name"].startswith("model-")]
    builds = [*history["first"].values(), *history["second"].values()]
    assert len(events) == 2 * len(builds)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_run.setdefault(e["run"]["runId"], []).append(e)
    assert set(by_run) == {ol.run_id(doc["id"]) for doc in builds}
    for doc in builds:
        start, end = by_run[ol.run_id(doc["id"])]
        assert start["eventType"] == "START"
        assert end["eventType"] == ("FAIL" if doc["gates"] else "COMPLETE")
        assert start["eventTime"] <= end["eventTime"]
        assert end["job"] == {**start["job"]} and end["job"]["name"] == f"model-{doc['name']}"
        (out,) = end["outputs"]
        assert out["name"] == f"models/{doc['name']}"
        assert out["facets"]["version"]["datasetVersion"] == doc["id"]
        assert out["facets"]["datasetType"]["datasetType"] == "MODEL"
        inputs = {i["name"]: i["facets"] for i in end["inputs"]}
        if doc["source"]:
            src = inputs[f"models/{doc['source']['model']}"]
            assert src["datasetType"]["datasetType"] == "MODEL"
            assert src["version"]["datasetVersion"] == doc["source"]["id"]
        for ref in doc["datasets"].values():
            assert inputs[f"datasets/{ref['name']}"]["version"]["datasetVersion"] == ref["id"]
    failed = by_run[ol.run_id(history["second"]["ft"]["id"])][1]
    assert "gate accuracy >= 0.95" in failed["run"]["facets"]["errorMessage"]["message"]
    assert ol.events(reg) == every  # deterministic: the same export twice
    # the schemas bite: an event without a run id, a type facet without its type
    assert list(RUN_EVENT.iter_errors({**events[0], "run": {}}))
    broken = json.loads(json.dumps(events[0]))
    del broken["outputs"][0]["facets"]["datasetType"]["datasetType"]
    with pytest.raises(AssertionError):
        assert_valid(broken)


def test_since_output_and_cli(history: dict[str, Any], cli: Any, tmp_path: Path) -> None:
    reg = history["reg"]
    newer = ol.events(reg, since="HEAD~1")
    assert {e["run"]["runId"] for e in newer} == {  # the datasets were built in the first
        ol.run_id(d["id"]) for d in history["second"].values()
    }
    out = tmp_path / "events.jsonl"
    res = cli(["export", "openlineage", "--since", "HEAD~1", "--output", str(out)], reg.root)
    assert res.code == 0, res.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == newer
    res = cli(["export", "openlineage"], reg.root)
    assert [json.loads(line) for line in res.stdout.splitlines()] == ol.events(reg)
    res = cli(["export", "openlineage", "--json"], reg.root)
    assert json.loads(res.stdout) == ol.events(reg)
    again = tmp_path / "again.jsonl"
    res = cli(["export", "openlineage", "--output", str(again), "--json"], reg.root)
    assert json.loads(res.stdout) == {"written": len(ol.events(reg)), "output": str(again)}
    res = cli(["export", "openlineage", "--since", "no-such-rev"], reg.root)
    assert res.code == 1 and res.stderr.count("\n") == 1
    res = cli(["export", "openlineage", "--output", str(out), "--url", "http://x"], reg.root)
    assert res.code == 2


def test_lineage_order_datasets_and_facets(history: dict[str, Any]) -> None:
    """Every build after the builds it read (ft after base although git lists ft first in a
    commit), dataset builds included, spec and commit as source-code facets, metrics as a run
    facet, and the order is the registry's build order (`dag.build_order`)."""
    reg = history["reg"]
    every = ol.events(reg)
    ends = [e for e in every if e["eventType"] != "START"]
    position: dict[str, int] = {}
    for i, e in enumerate(ends):
        position[e["outputs"][0]["facets"]["version"]["datasetVersion"]] = i
    for i, e in enumerate(ends):
        for read in e["inputs"]:
            assert position[read["facets"]["version"]["datasetVersion"]] < i, (e, read)
    jobs = [e["job"]["name"] for e in ends]
    assert jobs == [
        "dataset-digits-0to4",
        "dataset-digits-5to9",
        "model-base",
        "model-ft",
        "model-scratch",
        "model-base",
        "model-ft",
    ]
    commits = git(reg.repo_root, "rev-list", "HEAD").split()  # newest first
    base, ft = ends[2], ends[3]
    assert base["job"]["facets"]["sourceCodeLocation"]["version"] == commits[1]
    assert ends[-1]["job"]["facets"]["sourceCodeLocation"]["version"] == commits[0]
    assert base["job"]["facets"]["sourceCodeLocation"]["path"] == "models/base/spec.yaml"
    code = json.loads(base["job"]["facets"]["sourceCode"]["sourceCode"])
    assert code == history["first"]["base"]["spec"] and code["training"]["epochs"] == 2
    assert (
        json.loads(ends[-2]["job"]["facets"]["sourceCode"]["sourceCode"])["training"]["epochs"] == 3
    )
    assert ft["run"]["facets"]["stemma_metrics"]["metrics"] == history["first"]["ft"]["metrics"]
    failed = ends[-1]["run"]["facets"]["stemma_metrics"]["gates"]
    assert failed == [FAILED]
    quality = ends[0]["outputs"][0]["facets"]["dataQualityMetrics"]
    assert quality["rowCount"] == 10 and quality["columnMetrics"] == {}
    assert ends[0]["job"]["facets"]["jobType"]["jobType"] == "DATASET"
    # the custom facet's schema bites: a metric that is not a number
    broken = json.loads(json.dumps(ft))
    broken["run"]["facets"]["stemma_metrics"]["metrics"]["accuracy"] = "high"
    with pytest.raises(AssertionError):
        assert_valid(broken)


class _Receiver(BaseHTTPRequestHandler):
    """An OpenLineage endpoint on 127.0.0.1: keeps each POST with its API key header; the
    first POST to /flaky answers 503 (the client retries), /broken always answers 500 and
    /reject 400 (a client error: no retry)."""

    received: ClassVar[list[tuple[str, str | None, dict[str, Any]]]] = []
    flaky_left: ClassVar[int] = 0

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        assert self.headers["Content-Type"] == "application/json"
        body = json.loads(self.rfile.read(length))
        status = 201
        if self.path == "/broken":
            status = 500
        elif self.path == "/reject":
            status = 400
        elif self.path.startswith("/flaky") and type(self).flaky_left > 0:
            type(self).flaky_left -= 1
            status = 503
        else:
            self.received.append((self.path, self.headers.get("Authorization"), body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass  # keep the test output clean


@pytest.fixture
def receiver() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 in a thread, stopped after the test."""
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Receiver.received = []
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_sends_through_the_client_with_key_and_retry(
    history: dict[str, Any], cli: Any, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = history["reg"]
    monkeypatch.setenv("OPENLINEAGE_API_KEY", "k-123")
    _Receiver.flaky_left = 1
    res = cli(["export", "openlineage", "--url", f"{receiver}/flaky/api/v1/lineage"], reg.root)
    assert res.code == 0, res.stderr
    events = ol.events(reg)
    assert [r[2] for r in _Receiver.received] == events  # in order, retried once, no loss
    assert {(r[0], r[1]) for r in _Receiver.received} == {("/flaky/api/v1/lineage", "Bearer k-123")}
    assert _Receiver.flaky_left == 0
    with pytest.raises(StemmaError, match="500"):
        ol.send(events[:1], f"{receiver}/broken", retries=0)
    with pytest.raises(StemmaError, match="http:// or https://"):
        ol.send([], "file:///etc/passwd")
    closed = HTTPServer(("127.0.0.1", 0), _Receiver)
    port = closed.server_port
    closed.server_close()  # nothing listens there now: refused at once, no retry asked
    with pytest.raises(StemmaError, match="cannot post to") as refused:
        ol.send(events[:1], f"http://u:secret@127.0.0.1:{port}/x", retries=0)
    assert "secret" not in str(refused.value)
    res = cli(["export", "openlineage", "--url", f"{receiver}/reject"], reg.root)
    assert res.code == 1 and res.stderr.count("\n") == 1 and "k-123" not in res.stderr
    assert "refused an event: HTTP 400" in res.stderr


def test_environment_configures_the_client(
    history: dict[str, Any], cli: Any, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = history["reg"]
    monkeypatch.setenv("OPENLINEAGE_URL", receiver)
    monkeypatch.setenv("OPENLINEAGE_API_KEY", "env-key")
    before = dict(os.environ)
    res = cli(["export", "openlineage", "--since", "HEAD~1"], reg.root)
    assert res.code == 0, res.stderr
    assert res.stdout == ""  # sent, not printed
    assert [r[2] for r in _Receiver.received] == ol.events(reg, since="HEAD~1")
    assert {(r[0], r[1]) for r in _Receiver.received} == {("/api/v1/lineage", "Bearer env-key")}
    assert dict(os.environ) == before  # the client's aliases do not leak into the process
    # OPENLINEAGE_CONFIG: the client's own YAML file picks the transport
    monkeypatch.delenv("OPENLINEAGE_URL")
    monkeypatch.delenv("OPENLINEAGE_API_KEY")
    config = reg.repo_root.parent / "openlineage.yml"
    config.write_text(
        f"transport:\n  type: http\n  url: {receiver}\n  endpoint: custom/lineage\n"
        "  auth: {type: api_key, apiKey: file-key}\n"
    )
    monkeypatch.setenv("OPENLINEAGE_CONFIG", str(config))
    _Receiver.received = []
    res = cli(["export", "openlineage", "--since", "HEAD~1"], reg.root)
    assert res.code == 0, res.stderr
    assert {(r[0], r[1]) for r in _Receiver.received} == {("/custom/lineage", "Bearer file-key")}
    # --output still writes the file, whatever the environment says
    out = reg.repo_root.parent / "events.jsonl"
    res = cli(["export", "openlineage", "--since", "HEAD~1", "-o", str(out)], reg.root)
    assert res.code == 0 and len(out.read_text().splitlines()) == len(_Receiver.received)


def test_example_registry_events_validate() -> None:
    reg = Registry.open(ZOO)
    events = ol.events(reg)
    for e in events:
        assert_valid(e)
    built = {n for n in reg.model_names() if reg.model_manifest(n) is not None}
    assert {e["outputs"][0]["name"] for e in events} >= {f"models/{n}" for n in built}
