"""The typed reads of a Hub export's documents (registry/publish/_hubconfig.py, and the
architecture block's record, registry/records/archconfig.py): values kept
as parsed, the transformers config written back whole with only the keys an export changes."""

from __future__ import annotations

import pytest
from stemma.registry.errors import StemmaError
from stemma.registry.publish._hubconfig import CardMetadata, TransformersConfig
from stemma.registry.publish.hubfiles import architectures
from stemma.registry.records.archconfig import ArchitectureConfig

BERT = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "id2label": {"0": "a"}}


def test_architecture_config_keeps_values_as_parsed() -> None:
    doc = {"family": "timm", "name": "resnet18", "num_classes": 0, "kwargs": {"a": 1}}
    config = ArchitectureConfig.from_dict(doc)
    assert (config.family, config.name, config.num_classes) == ("timm", "resnet18", 0)
    assert config.options == {"a": 1}  # `kwargs` where `options` is unset
    assert config.task is None and config.in_shape is None and config.library is None
    assert config.to_dict() == doc and config.to_dict() is not doc
    both = ArchitectureConfig.from_dict({"options": {"b": 2}, "kwargs": {"a": 1}})
    assert both.options == {"b": 2}
    assert ArchitectureConfig.from_dict({"options": {}}).options is None


def test_architecture_config_reads_each_familys_block() -> None:
    """The block of a spec and of a manifest alike: each family's own fields, as parsed."""
    mlp = ArchitectureConfig.from_dict({"family": "mlp", "hidden": [8, 4], "dropout": 0.1})
    assert (mlp.hidden, mlp.dropout, mlp.channels, mlp.entrypoint) == ([8, 4], 0.1, None, None)
    assert mlp.num_classes is None and mlp.in_shape is None  # a spec's block: not sized yet
    cnn = ArchitectureConfig.from_dict({"family": "cnn", "channels": [4], "in_shape": [1, 8, 8]})
    assert (cnn.channels, cnn.in_shape) == ([4], [1, 8, 8])
    code = ArchitectureConfig.from_dict({"family": "entrypoint", "entrypoint": "nets:build"})
    assert code.entrypoint == "nets:build" and code.options is None
    gray = {"channels": 1, "method": "repeat", "model_channels": 3}
    vision = ArchitectureConfig.from_dict(
        {"family": "torchvision", "name": "resnet18", "input": gray}
    )
    assert vision.repeats_channels and vision.input == gray
    for other in ({"method": "crop"}, "repeat", None):
        assert not ArchitectureConfig.from_dict({"input": other}).repeats_channels
    lm = ArchitectureConfig.from_dict(
        {"family": "transformers", "task": "causal-lm", "config": BERT}
    )
    assert (lm.task, lm.library) == ("causal-lm", BERT)


def test_transformers_config_reads_and_writes_back() -> None:
    hf = TransformersConfig.from_dict(BERT, "no config")
    assert hf.model_type == "bert" and hf.architectures == ("BertForMaskedLM",)
    assert hf.auto_sequence_classifier is None
    assert hf.to_dict() == BERT
    assert hf.to_dict(("id2label",), num_labels=3, architectures=None) == {
        "model_type": "bert",
        "num_labels": 3,
    }
    auto = {**BERT, "auto_map": {"AutoModelForSequenceClassification": "mod.Cls"}}
    assert architectures(TransformersConfig.from_dict(auto, "")) == ["Cls"]
    assert architectures(hf) == ["BertForSequenceClassification"]
    odd = TransformersConfig.from_dict({"model_type": "x", "architectures": 3, "auto_map": []}, "")
    assert odd.architectures == () and odd.auto_sequence_classifier is None
    for bad in (None, [], {"architectures": []}):
        with pytest.raises(StemmaError, match="no config"):
            TransformersConfig.from_dict(bad, "no config")


def test_card_metadata() -> None:
    card = CardMetadata.from_dict({"model_id": "org/a", "model-index": [{"name": "org/b"}]})
    assert (card.model_id, card.index_name) == ("org/a", "org/b")
    for index in ([], [3], "x", None):
        assert CardMetadata.from_dict({"model-index": index}).index_name is None
    assert CardMetadata.from_dict({}) == CardMetadata(None, None)
