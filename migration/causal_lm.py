"""Causal language models as a task: text datasets and transformers decoders built from specs.

A text dataset (`text:`, `jsonl:`, `hf-disk:` with `task: causal-lm`; textdata.py) records
`task: causal-lm`. A model trained on one is `AutoModelForCausalLM.from_config` of the
architecture's transformers config (`{family: transformers, config: {model_type: gpt2, ...}}`,
or `path:` a folder with config.json), with its tokenizer in `models/NAME/tokenizer/`
(tokenizer.py): from the spec's `tokenizer: PATH`, else the source model's, copied. The build
tokenizes both splits with that tokenizer into int64 blocks (`lm.block_size`), trains a full
fine-tune (`strategy.freeze` globs allowed) or a LoRA adapter (`strategy.mode: lora`, peft,
target modules from the spec), and records loss and perplexity on the eval split, gates on
them, forgetting as the perplexity rise on a declared dataset (`checks.forgetting`), and a
few greedy generations. The outputs are those of any model: weights.safetensors (or PEFT's
adapter files), manifest, metrics and curve, plus the tokenizer files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.checkspec import ForgettingSpec
from stemma.registry.records.core import DATASET_MANIFEST, DatasetSpec, ModelSpec
from stemma.registry.records.manifest import (
    Adapter,
    Architecture,
    Check,
    DatasetRef,
    LanguageModel,
    ModelManifest,
    ModelRef,
    Split,
    Weights,
)
from stemma.registry.rules.layout import DATA_FILE
from stemma.registry.rules.taskspec import CAUSAL_LM, spec_problems, training_task
from torch import nn

from . import lm_train
from . import tokenizer as tok
from .adapters import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    adapter_files,
    adapter_record,
    check_targets,
)
from .adapters import lora_block as resolve_lora
from .adapters import rows as adapter_rows
from .build_inputs import (
    architecture_config,
    eval_pointer,
    load_model,
    load_source,
    refuse_failed_source,
    source_name,
)
from .build_outputs import (
    blob_ref,
    blob_weights,
    commit_outputs,
    dataset_manifest,
    run_record,
    write_model,
)
from .families import require
from .gating import gate_records
from .mapping import report
from .model_manifest import Head, Trained, counted, source_block, transfer_block
from .strategy import Strategy, prepare_target
from .textdata import PROMPT_COMPLETION, TextSplits, load_text, manifest_block, materialize_text
from .textdata import npz_bytes as text_npz_bytes
from .train import Progress, TrainConfig

DEFAULT_NEW_TOKENS = 16
DEFAULT_PROMPTS = 3
DEFAULT_MAX_RISE = 0.10
SUPPORTED_TRAINING = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "seed",
    "device",
    "clip_grad_norm",
)
"""Training settings a causal-LM build reads; another is refused, not silently ignored."""


def trains_lm(reg: Registry, spec: ModelSpec) -> bool:
    """True when the model's training data is a causal-LM (text) dataset."""
    return training_task(reg, spec) == CAUSAL_LM


def build_text_dataset(
    reg: Registry, name: str, spec: DatasetSpec, started: str, begin: float
) -> dict[str, Any]:
    """Materialize a text dataset, write data.npz and its manifest; returns the manifest."""
    splits = materialize_text(spec, spec.path, lambda rel: reg.resolve(rel, "/source", spec.path))
    blob = text_npz_bytes(splits)
    manifest = dataset_manifest(
        spec,
        name,
        blob,
        shape=(),
        dtype="utf-8",
        classes=(),
        task=CAUSAL_LM,
        text=manifest_block(splits),
        splits={"train": Split.of(len(splits.train), {}), "eval": Split.of(len(splits.eval), {})},
        run=run_record(reg, started, begin),
    ).to_dict()
    commit_outputs(
        reg, reg.dataset_dir(name), "datasets", manifest, DATASET_MANIFEST, {DATA_FILE: blob}
    )
    return manifest


def _training(spec: ModelSpec, reg: Registry) -> TrainConfig:
    block = dict(spec.training)
    for key in sorted(block):
        if key not in SUPPORTED_TRAINING:
            raise BuildError(
                f"{spec.path} at /training/{key}: does not apply to a causal-lm build;"
                f" use {', '.join(SUPPORTED_TRAINING)}"
            )
    defaults = {
        k: v
        for k, v in dict(reg.settings.defaults.get("training") or {}).items()
        if k in SUPPORTED_TRAINING
    }
    cfg = TrainConfig.from_spec(block, spec.path, defaults)
    if cfg.device == "cuda":  # refused rather than trained elsewhere than asked
        raise BuildError(
            f"{spec.path} at /training/device: causal-lm builds train on the CPU (seeded and"
            " deterministic); use device: cpu or auto"
        )
    return cfg


def _tokenizer_files(
    reg: Registry, spec: ModelSpec, src_name: str | None, src_manifest: ModelManifest | None
) -> tuple[dict[str, bytes], str]:
    """The model's tokenizer files and where they came from (`spec`, or the source's name)."""
    given = spec.tokenizer
    if given is not None:
        folder = reg.resolve(given, "/tokenizer", spec.path)
        return tok.read_files(folder, given.rstrip("/"), reg.repo_root), tok.FROM_SPEC
    if src_name is None or src_manifest is None:
        raise BuildError(
            f"{spec.path} at /tokenizer: a causal-lm model without a source names its tokenizer"
            " (tokenizer: a folder written by save_pretrained)"
        )
    return _source_tokenizer(reg, spec, src_name, src_manifest), src_name


def _source_tokenizer(
    reg: Registry, spec: ModelSpec, src_name: str, src_manifest: ModelManifest
) -> dict[str, bytes]:
    """The source's tokenizer files, checked against its manifest."""
    if src_manifest.tokenizer is None:
        raise BuildError(
            f"{spec.path} at /source/model: source model {src_name!r} has no tokenizer;"
            " name one with tokenizer: PATH"
        )
    shown = reg.rel("models", src_name, tok.TOKENIZER_DIR)
    return tok.checked_files(reg.model_dir(src_name), src_manifest.tokenizer, shown, reg.repo_root)


def _texts(reg: Registry, spec: ModelSpec) -> tuple[TextSplits, TextSplits, dict[str, DatasetRef]]:
    """Train and eval records plus the manifest's datasets block, by role."""
    train = load_text(reg, spec.train, f"{spec.path} at /data/train")
    evals = load_text(reg, spec.eval, f"{spec.path} at {eval_pointer(spec)}")
    block: dict[str, DatasetRef] = {}
    for role, ds in (("train", spec.train), ("eval", spec.eval)):
        manifest = reg.dataset_manifest(ds)
        assert manifest is not None  # load_text checked it
        block[role] = DatasetRef.of(ds, manifest.id)
    return train, evals, block


def _prompts(spec: ModelSpec, evals: TextSplits) -> list[str]:
    """The spec's generation prompts, else the first eval records' prompts (or first words)."""
    given = spec.lm.prompts
    if given is not None:
        return list(given)
    picked = []
    for rec in evals.eval[:DEFAULT_PROMPTS]:
        picked.append(rec.prompt if rec.prompt else " ".join(rec.completion.split()[:4]))
    return picked


def _check_vocab(config: Mapping[str, Any], tokenizer: Any, display: str) -> None:
    vocab = (ArchitectureConfig.from_dict(config).library or {}).get("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise BuildError(
            f"{display} at /architecture/config/vocab_size: the tokenizer has {len(tokenizer)}"
            f" tokens, the model only {vocab} embeddings"
        )


def _special_ids(config: dict[str, Any], tokenizer: Any) -> None:
    """The decoder's end/begin/pad ids are the tokenizer's where the config leaves them out
    (a library default such as GPT-2's 50256 would lie outside a small vocabulary), so
    `generate` stops at the tokenizer's end-of-text in stemma and after export alike."""
    hf = dict(ArchitectureConfig.from_dict(config).library or {})
    for key, value in (
        ("eos_token_id", tokenizer.eos_token_id),
        ("bos_token_id", tokenizer.bos_token_id),
        ("pad_token_id", lm_train.pad_id(tokenizer)),
    ):
        if key not in hf and value is not None:
            hf[key] = int(value)
    config["config"] = hf


def _forgetting(
    reg: Registry,
    spec: ModelSpec,
    check: ForgettingSpec,
    module: nn.Module,
    tokenizer: Any,
    src_module: nn.Module,
    src_tokenizer: Any,
    block_size: int,
) -> tuple[Check, DatasetRef]:
    """The perplexity of the source and of this model on a declared dataset's eval split."""
    name = check.data
    data = load_text(reg, name, f"{spec.path} at /checks/forgetting/data")
    packed = data.format != PROMPT_COMPLETION
    before = lm_train.score(
        src_module, lm_train.blocks(src_tokenizer, data.eval, block_size, packed)
    )["perplexity"]
    after = lm_train.score(module, lm_train.blocks(tokenizer, data.eval, block_size, packed))[
        "perplexity"
    ]
    limit = float(DEFAULT_MAX_RISE if check.max_drop is None else check.max_drop)
    rise = (after - before) / before if before > 0 else 0.0
    passed = math.isfinite(rise) and rise <= limit
    manifest = reg.dataset_manifest(name)
    assert manifest is not None
    result = Check.of(
        passed,
        extra={
            "figures": {
                "metric": "perplexity",
                "before": before,
                "after": after,
                "relative_rise": round(rise, lm_train.DECIMALS),
            },
            "thresholds": {"max_drop": limit},
            "violations": [] if passed else [f"relative perplexity rise {rise:.4f} > {limit}"],
        },
    )
    return result, DatasetRef.of(name, manifest.id)


def _source_module(reg: Registry, spec: ModelSpec, src: str) -> nn.Module:
    """The source model, every file it is read from checked against its manifest."""
    return load_model(reg, src, spec)


def build_lm(
    reg: Registry,
    name: str,
    progress: Progress | None,
    started: str,
    begin: float,
) -> dict[str, Any]:
    """Build a causal LM from its spec: tokenize, map, train, score, write atomically."""
    spec = reg.model_spec(name)
    display = spec.path
    cfg = _training(spec, reg)
    strategy = Strategy.from_spec(spec.strategy, display)
    if strategy.mode not in ("finetune", "lora"):
        raise BuildError(f"{display} at /strategy/mode: a causal-lm build is finetune or lora")
    for pointer, message in spec_problems(CAUSAL_LM, spec.raw):
        raise BuildError(f"{display} at {pointer}: {message}")
    lm = spec.lm
    block_size = lm_train.DEFAULT_BLOCK if lm.block_size is None else int(lm.block_size)
    src_name, src_manifest, src_state, exploration = None, None, None, None
    if spec.source is not None:
        # model: auto takes the exploration's selection (explore_lm: bits per byte)
        src_name, exploration = source_name(reg, spec)
        src_manifest, src_state = load_source(reg, spec, src_name)
        refuse_failed_source(spec, src_name, src_manifest)
    if strategy.mode == "lora" and (src_name is None or not strategy.lora):
        raise BuildError(
            f"{display} at /strategy/mode: mode lora needs a source model and a lora block"
            " (source: {model: BASE, relation: adapter}, lora: {target_modules: [...]})"
        )
    files, origin = _tokenizer_files(reg, spec, src_name, src_manifest)
    tokenizer = tok.load(files, f"{display} at /tokenizer")
    train_text, eval_text, datasets = _texts(reg, spec)
    config = architecture_config(reg, spec, src_manifest, [block_size], 0)
    config["task"] = CAUSAL_LM
    if ArchitectureConfig.from_dict(config).family != "transformers":
        raise BuildError(
            f"{display} at /architecture/family: a causal-lm model is a transformers decoder"
            " ({family: transformers, config: {model_type: gpt2, ...}})"
        )
    _check_vocab(config, tokenizer, display)
    _special_ids(config, tokenizer)
    packed = train_text.format != PROMPT_COMPLETION
    train_blocks = lm_train.blocks(tokenizer, train_text.train, block_size, packed)
    eval_blocks = lm_train.blocks(
        tokenizer, eval_text.eval, block_size, eval_text.format != PROMPT_COMPLETION
    )
    if eval_blocks.labelled == 0:
        raise BuildError(f"{display} at /data/eval: the eval split has no tokens to score")
    source = None if src_state is None or src_name is None else (src_name, src_state)
    prepared = prepare_target(config, strategy, cfg.seed, source, reg.settings.entrypoints, display)
    module, tmap, reinit = prepared.module, prepared.tensor_map, prepared.reinit
    rows, unused = report(module, tmap, reinit)
    trained: nn.Module = module
    lora: dict[str, Any] | None = None
    if strategy.mode == "lora":
        lora = resolve_lora(strategy.lora or {})
        check_targets(module, lora["target_modules"], display)
        peft = require("peft")
        trained = peft.get_peft_model(
            module,
            peft.LoraConfig(
                r=int(lora["r"]),
                lora_alpha=float(lora["alpha"]),
                lora_dropout=float(lora["dropout"]),
                target_modules=list(lora["target_modules"]),
                task_type="CAUSAL_LM",
            ),
        )
        rows = adapter_rows(trained, set(tmap.pairs) - reinit if tmap else set())
    run = lm_train.train_lm(trained, train_blocks, eval_blocks, cfg, progress)
    metrics = lm_train.score(trained, eval_blocks)
    generations = lm_train.generate(
        trained,
        tokenizer,
        _prompts(spec, eval_text),
        DEFAULT_NEW_TOKENS if lm.max_new_tokens is None else int(lm.max_new_tokens),
        cfg.seed,
    )
    checks: dict[str, Check] = {}
    forgetting = spec.checks.forgetting
    if forgetting is not None and src_name is not None and src_manifest is not None:
        src_tokenizer = tok.load(
            _source_tokenizer(reg, spec, src_name, src_manifest),
            reg.rel("models", src_name, tok.TOKENIZER_DIR),
        )
        checks["forgetting"], datasets["forgetting"] = _forgetting(
            reg,
            spec,
            forgetting,
            trained,
            tokenizer,
            _source_module(reg, spec, src_name),
            src_tokenizer,
            block_size,
        )
    base = trained.get_base_model() if lora is not None else trained  # type: ignore[operator]
    moved = transfer_block(strategy, bool(tmap), unused, False, ())  # names kept: no pairs
    head = Head(
        name,
        spec.to_dict(),
        spec.digest,
        None
        if src_manifest is None or src_name is None
        else source_block(spec, src_name, src_manifest),
        datasets,
        Architecture.of(config, tuple(rows)),
        counted(dict(base.named_parameters()), rows),
    )
    shared = Trained(head, moved, metrics, {}, gate_records(spec.gates, metrics, {}, display))
    lm_block = LanguageModel(
        keys=("token_dtype", "block_size", "blocks", "eval_tokens", "generations"),
        token_dtype=str(train_blocks.ids.dtype).replace("torch.", ""),
        block_size=block_size,
        blocks={"train": len(train_blocks), "eval": len(eval_blocks)},
        eval_tokens=eval_blocks.labelled,
        generations=tuple(generations),
    )
    outputs = tok.outputs(files)
    weights: Mapping[str, torch.Tensor] | Weights = module.state_dict()
    adapter: Adapter | None = None
    if lora is not None:
        assert src_manifest is not None and src_name is not None
        written = adapter_files(trained)
        weights = blob_weights(
            f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", written[ADAPTER_WEIGHTS], "safetensors"
        )
        adapter = adapter_record(
            ModelRef.of(src_name, src_manifest.id),
            lora,
            blob_ref(f"{ADAPTER_DIR}/{ADAPTER_CONFIG}", written[ADAPTER_CONFIG], "json"),
        )
        outputs.update({f"{ADAPTER_DIR}/{n}": b for n, b in written.items()})
    run_block = run_record(
        reg,
        started,
        begin,
        device=run.device,
        seed=cfg.seed,
        deterministic=True,
        threads=torch.get_num_threads(),
        train_s=round(run.train_seconds, 3),
    )
    return write_model(
        reg,
        name,
        lambda block: shared.manifest(
            block,
            checks,
            task=CAUSAL_LM,
            tokenizer=tok.record(files, origin),
            lm=lm_block,
            exploration=exploration,
            adapter=adapter,
            run=run_block,
        ),
        weights,
        metrics,
        run.curve,
        outputs,
    )
