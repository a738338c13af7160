"""OpenLineage export: START + COMPLETE/FAIL per build in history, every event valid against
the OpenLineage 2-0-2 JSON Schema (a copy under tests/data/openlineage), posted over HTTP."""

from __future__ import annotations

import json
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
from stemma.registry import openlineage as ol
from stemma.registry.errors import StemmaError

SPECS = Path(__file__).parent / "data" / "openlineage"
ZOO = Path(__file__).resolve().parents[1] / "zoo"
FAILED = {"metric": "accuracy", "op": ">=", "threshold": 0.95, "value": 0.9, "passed": False}


def _schemas() -> tuple[Schemas, str]:
    docs = [json.loads(p.read_text()) for p in sorted(SPECS.glob("*.json"))]
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
    events = ol.events(reg)
    for e in events:
        assert_valid(e)
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
    assert ol.events(reg) == events  # deterministic: the same export twice
    # the schemas bite: an event without a run id, a type facet without its type
    assert list(RUN_EVENT.iter_errors({**events[0], "run": {}}))
    broken = json.loads(json.dumps(events[0]))
    del broken["outputs"][0]["facets"]["datasetType"]["datasetType"]
    with pytest.raises(AssertionError):
        assert_valid(broken)


def test_since_output_and_cli(history: dict[str, Any], cli: Any, tmp_path: Path) -> None:
    reg = history["reg"]
    newer = ol.events(reg, since="HEAD~1")
    assert {e["run"]["runId"] for e in newer} == {
        ol.run_id(d["id"]) for d in history["second"].values()
    }
    out = tmp_path / "events.jsonl"
    res = cli(["export", "openlineage", "--since", "HEAD~1", "--output", str(out)], reg.root)
    assert res.code == 0, res.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == newer
    res = cli(["export", "openlineage"], reg.root)
    assert [json.loads(line) for line in res.stdout.splitlines()] == ol.events(reg)
    res = cli(["export", "openlineage", "--since", "no-such-rev"], reg.root)
    assert res.code == 1 and res.stderr.count("\n") == 1
    res = cli(["export", "openlineage", "--output", str(out), "--url", "http://x"], reg.root)
    assert res.code == 2


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        assert self.headers["Content-Type"] == "application/json"
        self.received.append(json.loads(self.rfile.read(length)))
        status = 500 if self.path == "/broken" else 201
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass  # keep the test output clean


def test_url_posts_every_event(history: dict[str, Any], cli: Any) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/v1/lineage"
        _Collector.received = []
        res = cli(["export", "openlineage", "--url", url], history["reg"].root)
        assert res.code == 0, res.stderr
        assert _Collector.received == ol.events(history["reg"])
        broken = f"http://127.0.0.1:{server.server_port}/broken"
        with pytest.raises(StemmaError, match="refused an event: HTTP 500"):
            ol.post(ol.events(history["reg"]), broken)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(StemmaError, match="http:// or https://"):
        ol.post([], "file:///etc/passwd")


def test_example_registry_events_validate() -> None:
    reg = Registry.open(ZOO)
    events = ol.events(reg)
    for e in events:
        assert_valid(e)
    built = {n for n in reg.model_names() if reg.model_manifest(n) is not None}
    assert {e["outputs"][0]["name"] for e in events} >= {f"models/{n}" for n in built}
