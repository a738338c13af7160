"""The SQL of the query index: stored tables, the public views and the lineage macros.

Stored tables live in the `raw` schema, filled from files; the public names (`models`,
`datasets`, `edges`, `layers`, `metrics`, `ancestors()`, `descendants()`) live in `main`.
"""

from __future__ import annotations

import re

from stemma.registry.rules.layout import (
    DATASETS_DIR,
    LOCK_FILE,
    MANIFEST_FILE,
    MODELS_DIR,
    SPEC_FILE,
)
from stemma.registry.rules.status import BUILT, REGISTERED, STALE, UNBUILT

# Bump when the tables or views change: an index of another format is rebuilt from scratch.
FORMAT = "16"

TABLES = """
CREATE SCHEMA raw;
CREATE TABLE raw.meta(key VARCHAR, value VARCHAR);
CREATE TABLE raw.model_specs(
    name VARCHAR, path VARCHAR, digest VARCHAR, source VARCHAR, relation VARCHAR,
    train VARCHAR, eval VARCHAR, family VARCHAR, description VARCHAR, tags VARCHAR[],
    checks VARCHAR[],  -- datasets of the forgetting and drift checks, in that order
    candidates VARCHAR,  -- the glob of an exploration's candidates (source: auto)
    parents VARCHAR[]);  -- `parents.parents_of`: the source, or a merge's models and base
CREATE TABLE raw.dataset_specs(
    name VARCHAR, path VARCHAR, digest VARCHAR, source VARCHAR, description VARCHAR,
    tags VARCHAR[]);
CREATE TABLE raw.model_manifests(
    name VARCHAR, path VARCHAR, id VARCHAR, spec_digest VARCHAR, source VARCHAR,
    relation VARCHAR, source_id VARCHAR, family VARCHAR, params_total BIGINT,
    params_trainable BIGINT, params_transferred BIGINT, weights_bytes BIGINT,
    created TIMESTAMP, duration_s DOUBLE, device VARCHAR, train VARCHAR, eval VARCHAR,
    gates_passed BOOLEAN, checks_passed BOOLEAN, metrics MAP(VARCHAR, DOUBLE),
    metric_keys VARCHAR,  -- the metric names as a sorted JSON list
    parents VARCHAR[],  -- the source, or a merge's recorded parents
    external STRUCT(hub_id VARCHAR, relation VARCHAR)[],  -- Hub parents (spec.external_sources)
    datasets STRUCT(name VARCHAR, id VARCHAR)[],  -- the dataset ids the build recorded
    weights_md5 VARCHAR);  -- the weights' md5 as DVC records it (`status.recorded_md5`)
CREATE TABLE raw.model_locks(  -- the dvc.lock of each model folder that has one
    name VARCHAR, path VARCHAR,
    md5 VARCHAR);  -- what it records for the weights (`yamlio.locked_md5`; NULL: nothing)
CREATE TABLE raw.layers(  -- no path: a model's is models/NAME/manifest.json
    name VARCHAR, position INTEGER, tensor VARCHAR, shape BIGINT[],
    dtype VARCHAR, origin VARCHAR, frozen BOOLEAN, source_name VARCHAR);
CREATE TABLE raw.dataset_manifests(
    name VARCHAR, path VARCHAR, id VARCHAR, spec_digest VARCHAR, samples BIGINT,
    splits MAP(VARCHAR, BIGINT), classes BIGINT[], shape BIGINT[], dtype VARCHAR,
    data_bytes BIGINT, created TIMESTAMP, task VARCHAR, class_names VARCHAR[]);
CREATE TABLE raw.edges(src VARCHAR, dst VARCHAR, kind VARCHAR, relation VARCHAR);
"""

RAW_BY_FILE = {
    (MODELS_DIR, SPEC_FILE): ("raw.model_specs",),
    (MODELS_DIR, MANIFEST_FILE): ("raw.model_manifests", "raw.layers"),
    (MODELS_DIR, LOCK_FILE): ("raw.model_locks",),
    (DATASETS_DIR, SPEC_FILE): ("raw.dataset_specs",),
    (DATASETS_DIR, MANIFEST_FILE): ("raw.dataset_manifests",),
}
# Removing the rows of the files in `gone_files` (a table of paths) from a table of
# RAW_BY_FILE: by path, but for `raw.layers`, which has none, by the model's name (a
# column of 60,000 rows at 10,000 models that a cold index no longer writes).
DELETE_GONE = "DELETE FROM {table} WHERE path IN (SELECT path FROM gone_files)"
DELETE_GONE_LAYERS = f"""
DELETE FROM raw.layers WHERE name IN (
    SELECT split_part(path, '/', 2) FROM gone_files
    WHERE path = '{MODELS_DIR}/' || split_part(path, '/', 2) || '/{MANIFEST_FILE}')"""

# What DuckDB's from_json extracts from a manifest (everything else stays in the file).
MODEL_MANIFEST_SHAPE = """{
 "kind": "VARCHAR", "id": "VARCHAR", "spec_digest": "VARCHAR",
 "source": {"model": "VARCHAR", "relation": "VARCHAR", "id": "VARCHAR",
            "parents": [{"model": "VARCHAR"}]},
 "spec": {"external_sources": [{"hub_id": "VARCHAR", "relation": "VARCHAR"}]},
 "datasets": "MAP(VARCHAR, STRUCT(name VARCHAR, id VARCHAR))",
 "weights": {"bytes": "BIGINT", "md5": "JSON", "shards": "JSON"},
 "architecture": {"config": {"family": "VARCHAR"},
   "tensors": [{"name": "VARCHAR", "shape": ["BIGINT"], "dtype": "VARCHAR",
                "origin": "VARCHAR", "frozen": "BOOLEAN", "source_name": "VARCHAR"}]},
 "parameters": {"total": "BIGINT", "trainable": "BIGINT", "transferred": "BIGINT"},
 "metrics": "MAP(VARCHAR, DOUBLE)",
 "gates": [{"passed": "BOOLEAN"}],
 "checks": "MAP(VARCHAR, STRUCT(passed BOOLEAN))",
 "run": {"started": "VARCHAR", "duration_s": "DOUBLE", "device": "VARCHAR"}}"""

DATASET_MANIFEST_SHAPE = """{
 "kind": "VARCHAR", "id": "VARCHAR", "spec_digest": "VARCHAR",
 "data": {"bytes": "BIGINT"}, "shape": ["BIGINT"], "dtype": "VARCHAR",
 "classes": ["BIGINT"], "splits": "MAP(VARCHAR, STRUCT(samples BIGINT))",
 "task": "VARCHAR", "class_names": ["VARCHAR"],
 "run": {"started": "VARCHAR"}}"""

# Fields an indexed manifest must have, with the right type; a row failing this is reported.
MODEL_MANIFEST_BAD = """
    j IS NULL OR j.kind IS DISTINCT FROM 'model' OR j.id IS NULL OR j.spec_digest IS NULL
    OR j.parameters.total IS NULL OR j.parameters.trainable IS NULL
    OR j.parameters.transferred IS NULL OR j.metrics IS NULL OR j.run.started IS NULL
    OR j.architecture.tensors IS NULL
    OR list_count(map_values(j.metrics)) <> len(map_values(j.metrics))
    OR (j.source IS NOT NULL AND (j.source.model IS NULL OR j.source.id IS NULL))"""

DATASET_MANIFEST_BAD = """
    j IS NULL OR j.kind IS DISTINCT FROM 'dataset' OR j.id IS NULL OR j.spec_digest IS NULL
    OR j.classes IS NULL OR j.splits IS NULL OR j.run.started IS NULL"""

_UTC = "timezone('UTC', TRY_CAST(j.run.started AS TIMESTAMPTZ))"

INSERT_MODEL_MANIFESTS = f"""
INSERT INTO raw.model_manifests
SELECT name, path, j.id, j.spec_digest, j.source.model, j.source.relation, j.source.id,
       j.architecture.config.family, j.parameters.total, j.parameters.trainable,
       j.parameters.transferred, j.weights.bytes, {_UTC}, j.run.duration_s, j.run.device,
       j.datasets['train'].name, j.datasets['eval'].name,
       coalesce(list_aggregate([g.passed FOR g IN j.gates], 'bool_and'), true),
       coalesce(list_aggregate([c.passed FOR c IN map_values(j.checks)], 'bool_and'), true),
       j.metrics, to_json(list_sort(map_keys(j.metrics))),
       CASE WHEN j.source.parents IS NOT NULL THEN [p.model FOR p IN j.source.parents]
            WHEN j.source.model IS NOT NULL THEN [j.source.model] END,
       j.spec.external_sources,
       [d FOR d IN coalesce(map_values(j.datasets), [])
        IF d.name IS NOT NULL AND d.id IS NOT NULL],
       CASE WHEN j.weights.shards IS NULL AND json_type(j.weights.md5) = 'VARCHAR'
            THEN j.weights.md5->>'$' END
FROM staged"""
# The staged manifests whose recorded md5 SQL leaves to `status.recorded_md5`: a sharded
# model's (DVC's hash of the folder's listing) and an md5 that is not text.
OTHER_WEIGHTS_MD5 = """SELECT path FROM staged WHERE j.weights.shards IS NOT NULL
    OR (j.weights.md5 IS NOT NULL AND json_type(j.weights.md5) <> 'VARCHAR')"""
SET_WEIGHTS_MD5 = """UPDATE raw.model_manifests m SET weights_md5 = x.md5
FROM weights_md5s x WHERE m.path = x.path"""
INSERT_LOCKS = "INSERT INTO raw.model_locks SELECT name, path, md5 FROM staged_locks"

INSERT_LAYERS = """
INSERT INTO raw.layers
SELECT name, pos, t.name, t.shape, t.dtype, t.origin, t.frozen, t.source_name
FROM (SELECT name, unnest(j.architecture.tensors) AS t,
             generate_subscripts(j.architecture.tensors, 1) AS pos FROM staged)"""

INSERT_DATASET_MANIFESTS = f"""
INSERT INTO raw.dataset_manifests
SELECT name, path, j.id, j.spec_digest,
       list_aggregate([s.samples FOR s IN map_values(j.splits)], 'sum')::BIGINT,
       map_from_entries([(k, j.splits[k].samples) FOR k IN map_keys(j.splits)]),
       j.classes, j.shape, j.dtype, j.data.bytes, {_UTC},
       coalesce(j.task, 'classification'), coalesce(j.class_names, []::VARCHAR[])
FROM staged"""

_TEXT_OR_NULL = "(v[{i}] IS NULL OR json_type(v[{i}]) IN ('VARCHAR', 'NULL'))"
_COMMON_OK = f"""{_TEXT_OR_NULL.format(i=9)}
    AND (v[10] IS NULL OR json_type(v[10]) = 'NULL' OR (json_type(v[10]) = 'ARRAY'
         AND len([t FOR t IN json_type(v[10], '$[*]') IF t <> 'VARCHAR']) = 0))"""

MODEL_SPEC_OK = f"""path LIKE 'models/%' AND {_COMMON_OK}
    AND (v[1] IS NULL OR json_type(v[1]) = 'NULL'
         OR (json_type(v[1]) = 'OBJECT' AND json_type(v[2]) = 'VARCHAR'
             AND (v[3] IS NULL OR json_type(v[3]) = 'VARCHAR')))
    AND json_type(v[4]) = 'OBJECT' AND json_type(v[5]) = 'VARCHAR'
    AND (v[6] IS NULL OR json_type(v[6]) = 'VARCHAR')
    AND (v[7] IS NULL OR json_type(v[7]) = 'NULL'
         OR (json_type(v[7]) = 'OBJECT' AND {_TEXT_OR_NULL.format(i=8)}))"""

DATASET_SPEC_OK = f"path LIKE 'datasets/%' AND {_COMMON_OK} AND json_type(v[1]) = 'VARCHAR'"


# Specs arrive as canonical JSON (rows of `path, spec` from the query put in for `{rows}`);
# DuckDB hashes them and picks the indexed fields. A spec is taken here only when every field
# has the type the index needs (`ok`: `*_SPEC_OK`, worked out once per spec); the others go
# through `_specrow.spec_row`, the reference, for a located error.
STAGE_SPECS = f"""
CREATE OR REPLACE TEMP TABLE staged_specs AS
SELECT *, coalesce(({MODEL_SPEC_OK}) OR ({DATASET_SPEC_OK}), false) AS ok
FROM (SELECT path, split_part(path, '/', 2) AS name, spec, 'sha256:' || sha256(spec) AS digest,
             json_extract(spec, ['$.source', '$.source.model', '$.source.relation', '$.data',
                                 '$.data.train', '$.data.eval', '$.architecture',
                                 '$.architecture.family', '$.description', '$.tags',
                                 '$.checks.forgetting.data', '$.checks.drift.data',
                                 '$.source.candidates']) AS v
      FROM ({{rows}}))"""


def _text_at(path: str) -> str:
    """The text at JSON `path` of the spec (column `spec`), NULL where it is not text: the
    same for every spec, so both ways of indexing specs pick these alike."""
    picked = f"json_extract_string(spec, '{path}')"
    return f"CASE WHEN json_type(spec, '{path}') = 'VARCHAR' THEN {picked} END"


# The lineage graph's extra fields of a model spec, as `stemma.lineage.graph` reads them.
_LINEAGE_FIELDS = f"""list_filter([{_text_at("$.checks.forgetting.data")},
                    {_text_at("$.checks.drift.data")}], lambda x: x IS NOT NULL),
       {_text_at("$.source.candidates")}"""
# The same fields from the paths STAGE_SPECS extracted (v[11] to v[13]): each spec is parsed
# once, not once per field.
_STAGED_TEXT = "CASE WHEN json_type(v[{i}]) = 'VARCHAR' THEN v[{i}] ->> '$' END"
_STAGED_LINEAGE_FIELDS = f"""list_filter([{_STAGED_TEXT.format(i=11)},
                    {_STAGED_TEXT.format(i=12)}], lambda x: x IS NOT NULL),
       {_STAGED_TEXT.format(i=13)}"""
# A spec SQL takes names one source (`MODEL_SPEC_OK`); a merge's list comes from Python.
_ONE_PARENT = """CASE WHEN json_type(v[1]) = 'OBJECT' AND v[2] ->> '$' <> 'auto'
            THEN [v[2] ->> '$'] END"""

INSERT_MODEL_SPECS = f"""
INSERT INTO raw.model_specs
SELECT name, path, digest,
       CASE WHEN json_type(v[1]) = 'OBJECT' THEN v[2] ->> '$' END,
       CASE WHEN json_type(v[1]) = 'OBJECT' THEN coalesce(v[3] ->> '$', 'finetune') END,
       v[5] ->> '$', coalesce(v[6] ->> '$', v[5] ->> '$'),
       CASE WHEN json_type(v[8]) = 'VARCHAR' THEN v[8] ->> '$' END,
       CASE WHEN json_type(v[9]) = 'VARCHAR' THEN v[9] ->> '$' END,
       CAST(v[10] AS VARCHAR[]), {_STAGED_LINEAGE_FIELDS}, {_ONE_PARENT}
FROM staged_specs WHERE ok AND path LIKE 'models/%'"""

INSERT_DATASET_SPECS = """
INSERT INTO raw.dataset_specs
SELECT name, path, digest, v[1] ->> '$',
       CASE WHEN json_type(v[9]) = 'VARCHAR' THEN v[9] ->> '$' END,
       CAST(v[10] AS VARCHAR[])
FROM staged_specs WHERE ok AND path LIKE 'datasets/%'"""

FLAGGED_SPECS = """
SELECT path, spec FROM staged_specs WHERE NOT ok ORDER BY path"""

# Rows picked in Python (`_specrow.spec_row`, columns `_specrow.SPEC_COLUMNS`) for flagged specs.
INSERT_MODEL_SPEC_ROWS = f"""
INSERT INTO raw.model_specs
SELECT split_part(path, '/', 2), path, digest, source, relation, train, eval, family,
       description, CAST(spec::JSON->'$.tags' AS VARCHAR[]), {_LINEAGE_FIELDS},
       from_json(parents, '["VARCHAR"]')
FROM spec_fields WHERE path LIKE 'models/%'"""

INSERT_DATASET_SPEC_ROWS = """
INSERT INTO raw.dataset_specs
SELECT split_part(path, '/', 2), path, digest, source, description,
       CAST(spec::JSON->'$.tags' AS VARCHAR[])
FROM spec_fields WHERE path LIKE 'datasets/%'"""

# Lineage edges, declared by specs (so unbuilt models appear) and, for a model with no spec
# or with `source: {model: auto}`, taken from what its manifest recorded.
EDGES = """
INSERT INTO raw.edges
WITH decl AS (
    SELECT coalesce(s.name, m.name) AS name,
           CASE WHEN s.name IS NULL OR s.source = 'auto' THEN m.source ELSE s.source END
               AS source,
           CASE WHEN s.name IS NULL OR s.source = 'auto' THEN m.relation ELSE s.relation END
               AS relation,
           CASE WHEN s.name IS NULL OR s.source = 'auto' THEN m.parents ELSE s.parents END
               AS parents,
           CASE WHEN s.name IS NULL THEN m.train ELSE s.train END AS train,
           CASE WHEN s.name IS NULL THEN m.eval ELSE s.eval END AS eval
    FROM (SELECT * FROM raw.model_specs {only}) s
    FULL OUTER JOIN (SELECT * FROM raw.model_manifests {only}) m ON m.name = s.name)
SELECT name, unnest(parents), 'derived_from', relation FROM decl WHERE parents IS NOT NULL
UNION ALL SELECT name, 'hub:' || x.hub_id, 'derived_from', coalesce(x.relation, 'finetune')
    FROM (SELECT name, unnest(external) AS x FROM raw.model_manifests {only})
UNION ALL SELECT name, train, 'trained_on', NULL FROM decl WHERE train IS NOT NULL
UNION ALL SELECT name, eval, 'evaluated_on', NULL FROM decl WHERE eval IS NOT NULL
"""
# Restricts EDGES to the models whose files changed (a registered list of names).
ONLY_TOUCHED = "WHERE name IN (SELECT name FROM touched_models)"
# Of the models whose manifest changed, those whose edges come from their spec alone (see the
# CASEs of EDGES).
DECLARED_BY_SPEC = """
SELECT name FROM raw.model_specs
WHERE name IN (SELECT name FROM changed_manifests) AND source IS DISTINCT FROM 'auto'"""

MODEL_COLUMNS = (
    "name",
    "id",
    "status",
    "family",
    "source",
    "relation",
    "source_id",
    "params_total",
    "params_trainable",
    "params_transferred",
    "created",
    "duration_s",
    "weights_bytes",
    "train",
    "eval",
    "tags",
    "description",
    "gates_passed",
    "checks_passed",
    "accuracy",
    "loss",
    "metrics",
)
# `status.status` in SQL (spec `s`, manifest `m`, the declared source's manifest `p`, the
# folder's dvc.lock `lk`); tests compare the two on every case, and on a real registry with
# `status.gather` as `ls` applies it (tests/registry/test_status.py).
_DATASET_STATUS = f"""CASE WHEN m.name IS NULL THEN '{UNBUILT}'
            WHEN s.name IS NULL THEN '{REGISTERED}'
            WHEN m.spec_digest IS DISTINCT FROM s.digest THEN '{STALE}'
            ELSE '{BUILT}' END"""
_MODEL_STATUS = f"""CASE WHEN m.name IS NULL THEN '{UNBUILT}'
            WHEN s.name IS NULL THEN '{REGISTERED}'
            WHEN m.spec_digest IS DISTINCT FROM s.digest THEN '{STALE}'
            WHEN p.id IS NOT NULL AND p.id IS DISTINCT FROM m.source_id THEN '{STALE}'
            WHEN dc.name IS NOT NULL THEN '{STALE}'
            WHEN lk.md5 IS NOT NULL AND m.weights_md5 IS NOT NULL
                 AND lk.md5 <> m.weights_md5 THEN '{STALE}'
            ELSE '{BUILT}' END"""
# The models whose manifest records a dataset id that is not that dataset's manifest id now
# (`status.DATA_CHANGED`: rebuilt since, or gone).
_DATA_CHANGED = """(SELECT DISTINCT x.name
    FROM (SELECT name, unnest(datasets) AS d FROM raw.model_manifests) x
    LEFT JOIN raw.dataset_manifests dm ON dm.name = x.d.name
    WHERE dm.id IS DISTINCT FROM x.d.id)"""
# The declared parents' current manifest ids as one (`parents.combined_id`): a single
# parent's own id, several digested in order, NULL while one has no manifest. A model of one
# parent (nearly all) is a plain join: an ordered aggregate for each of them held ~25 MiB
# more while `lineage` or an audit read 30,000 models' status.
_PARENT_IDS = """(SELECT s1.name, pm.id FROM raw.model_specs s1
    LEFT JOIN raw.model_manifests pm ON pm.name = s1.parents[1] WHERE len(s1.parents) = 1
  UNION ALL
  SELECT x.name, CASE WHEN count(pm.id) < count(*) THEN NULL
                 ELSE 'sha256:' || sha256(string_agg(pm.id, ' ' ORDER BY x.pos)) END AS id
    FROM (SELECT name, unnest(parents) AS parent, generate_subscripts(parents, 1) AS pos
          FROM raw.model_specs WHERE len(parents) > 1) x
    LEFT JOIN raw.model_manifests pm ON pm.name = x.parent GROUP BY x.name)"""
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MAX_METRIC_COLUMNS = 100


def models_view(metric_keys: list[str]) -> str:
    """The `models` view: one row per model, with a column for every metric name."""
    extra = [k for k in sorted(set(metric_keys)) if _IDENT.fullmatch(k) and k not in MODEL_COLUMNS][
        :MAX_METRIC_COLUMNS
    ]
    metric_cols = "".join(f",\n       m.metrics['{k}'] AS {k}" for k in extra)
    return f"""
CREATE OR REPLACE VIEW main.models AS
SELECT coalesce(s.name, m.name) AS name,
       m.id,
       {_MODEL_STATUS} AS status,
       coalesce(m.family, s.family) AS family,
       CASE WHEN s.name IS NULL OR s.source = 'auto' THEN m.source ELSE s.source END AS source,
       CASE WHEN s.name IS NULL OR s.source = 'auto' THEN m.relation ELSE s.relation END
           AS relation,
       m.source_id, m.params_total, m.params_trainable, m.params_transferred,
       timezone('UTC', m.created) AS created,
       m.duration_s, m.weights_bytes,
       CASE WHEN s.name IS NULL THEN m.train ELSE s.train END AS train,
       CASE WHEN s.name IS NULL THEN m.eval ELSE s.eval END AS eval,
       coalesce(s.tags, []::VARCHAR[]) AS tags, s.description,
       m.gates_passed, m.checks_passed,
       m.metrics['accuracy'] AS accuracy, m.metrics['loss'] AS loss,
       m.metrics{metric_cols}
FROM raw.model_specs s
FULL OUTER JOIN raw.model_manifests m ON m.name = s.name
LEFT JOIN {_PARENT_IDS} p ON p.name = s.name
LEFT JOIN {_DATA_CHANGED} dc ON dc.name = m.name
LEFT JOIN raw.model_locks lk ON lk.name = m.name"""


def _walk(macro: str, near: str, far: str) -> str:
    """A lineage macro: the models reached from `model_name` by following `derived_from`
    edges from their `near` end to their `far` end, each with its shortest depth (a trail
    keeps cycles from looping)."""
    return f"""
CREATE OR REPLACE MACRO main.{macro}(model_name) AS TABLE
WITH RECURSIVE walk(name, depth, trail) AS (
    SELECT {far}, 1, [model_name, {far}] FROM raw.edges
    WHERE kind = 'derived_from' AND {near} = model_name
    UNION ALL
    SELECT e.{far}, w.depth + 1, list_append(w.trail, e.{far})
    FROM walk w JOIN raw.edges e ON e.kind = 'derived_from' AND e.{near} = w.name
    WHERE NOT list_contains(w.trail, e.{far}))
SELECT name, min(depth) AS depth FROM walk GROUP BY name ORDER BY depth, name;
"""


VIEWS = f"""
CREATE OR REPLACE VIEW main.datasets AS
SELECT coalesce(s.name, m.name) AS name,
       m.id,
       {_DATASET_STATUS} AS status,
       s.source, m.samples, m.splits, m.classes, len(m.classes) AS n_classes, m.task,
       m.class_names, m.shape,
       m.dtype, m.data_bytes, timezone('UTC', m.created) AS created,
       coalesce(s.tags, []::VARCHAR[]) AS tags,
       s.description
FROM raw.dataset_specs s FULL OUTER JOIN raw.dataset_manifests m ON m.name = s.name;

CREATE OR REPLACE VIEW main.edges AS SELECT src, dst, kind, relation FROM raw.edges;

CREATE OR REPLACE VIEW main.layers AS
SELECT name, tensor, shape, dtype, origin, frozen, source_name,
       coalesce(list_aggregate(shape, 'product'), 1)::BIGINT AS numel, position
FROM raw.layers;

CREATE OR REPLACE VIEW main.metrics AS
SELECT name, unnest(map_keys(metrics)) AS key, unnest(map_values(metrics)) AS value
FROM raw.model_manifests;

{_walk("ancestors", near="src", far="dst")}
{_walk("descendants", near="dst", far="src")}"""

PUBLIC_VIEWS = ("models", "datasets", "edges", "layers", "metrics")
HISTORY_VIEW = "versions"
MACROS = ("ancestors", "descendants")

VERSIONS_TABLE = """
CREATE TEMP TABLE versions AS
SELECT name, id, commit, TRY_CAST(date AS TIMESTAMPTZ) AS date, author,
       source_id, CAST(CAST(metrics AS JSON) AS MAP(VARCHAR, DOUBLE)) AS metrics, status
FROM version_rows"""


def quote_literal(text: str) -> str:
    """A SQL string literal (for statements that take no parameters, such as COPY)."""
    return "'" + text.replace("'", "''") + "'"
