"""Check the language-model example's committed outputs from outside stemma's loaders.

Run after building the example (`cd examples/llm && dvc repro`, its own DVC project):
`python benchmarks/check_llm_example.py`. It checks, each line printed with ok or a reason:

1. every full model, exported with `stemma export card NAME FOLDER --weights`, loads with
   `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`, and its
   perplexity and loss on its eval split, recomputed here from the dataset's data.npz with
   the tokenizer loaded that way, equal the manifest's;
2. the LoRA adapter's export loads with `PeftModel.from_pretrained` on the exported base and
   gives its recorded figures too;
3. `stemma repro --dry` plans nothing in the built example, and
   `stemma query "select * from edges"` has a derived_from row from the merge to each of its
   parents;
4. in a temporary copy (its own git repository): after one parent's spec changes, that parent
   is stale and `stemma repro --dry` plans it and then the merge; once `stemma repro` has
   rebuilt that parent, the merge itself is stale; after the base's spec changes, the plan
   builds the merge after both of its fine-tuned parents.

The recomputation runs under the builds' recorded numeric environment (portable mode: the
AVX2 code paths and the thread count of each manifest's run block) and follows the README's
definition, not stemma's code: plain text is packed (each document's tokens and the
end-of-text token, cut into blocks of the model's block size), a prompt/completion pair is
one block with its prompt unlabelled; perplexity is exp of the mean next-token NLL over every
labelled eval token, scored 16 blocks at a time in float32.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "llm"
STEMMA = str(Path(sys.executable).with_name("stemma"))
FULL = ("lm-base", "lm-builtins", "lm-topics", "lm-merged", "lm-lora-merged", "lm-int8")
ADAPTER, ADAPTER_BASE = "lm-lora", "lm-base"
MERGE, MERGE_PARENTS = "lm-merged", ("lm-builtins", "lm-topics")
IGNORE = -100
BATCH = 16


def _manifest(model: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLE / "models" / model / "manifest.json").read_text()))


def _stemma(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # DVC's stages run `stemma build`: the venv's bin folder goes first on PATH
    path = f"{Path(STEMMA).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        [STEMMA, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "PATH": path},
    )


def _records(dataset: str) -> tuple[str, list[tuple[str, str]]]:
    """The dataset's format and eval records (prompt, completion) read from data.npz."""
    with np.load(EXAMPLE / "datasets" / dataset / "data.npz", allow_pickle=False) as npz:
        fmt = str(npz["format"][0])
        raw, bounds = npz["eval_text"].tobytes(), npz["eval_bounds"].tolist()
    return fmt, [(raw[a:b].decode(), raw[b:c].decode()) for a, b, c in bounds]


def _blocks(tokenizer: Any, fmt: str, records: list[tuple[str, str]], size: int) -> Any:
    import torch

    def enc(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id or tokenizer.eos_token_id
    rows: list[tuple[list[int], list[int]]] = []
    if fmt == "text":
        stream = [t for _, doc in records for t in enc(doc) + eos]
        rows = [(stream[i : i + size], stream[i : i + size]) for i in range(0, len(stream), size)]
    else:
        for prompt, completion in records:
            p, c = enc(prompt), enc(completion) + eos
            rows.append(((p + c)[:size], ([IGNORE] * len(p) + c)[:size]))
    ids = torch.full((len(rows), size), pad, dtype=torch.int64)
    mask = torch.zeros((len(rows), size), dtype=torch.int64)
    labels = torch.full((len(rows), size), IGNORE, dtype=torch.int64)
    for i, (row, lab) in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return ids, mask, labels


def _score(model: Any, ids: Any, mask: Any, labels: Any) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    for at in range(0, len(ids), BATCH):
        part = slice(at, at + BATCH)
        with torch.no_grad():
            logits = model(input_ids=ids[part], attention_mask=mask[part]).logits.float()
        target = labels[part][:, 1:].reshape(-1)
        flat = logits[:, :-1, :].reshape(-1, logits.shape[-1])
        total += float(F.cross_entropy(flat, target, ignore_index=IGNORE, reduction="sum"))
        count += int((target != IGNORE).sum())
    loss = total / count
    return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 6)}


def _block_size(model: str) -> int:
    """The model's block size, else its first parent's (a merge or quantization has none)."""
    doc = _manifest(model)
    if "lm" in doc:
        return int(doc["lm"]["block_size"])
    return _block_size(doc["source"]["model"])


def _compare(label: str, recorded: dict[str, float], again: dict[str, float]) -> int:
    bad = 0
    for key in ("perplexity", "loss"):
        same = recorded[key] == again[key]
        bad += not same
        verdict = "ok" if same else "DIFFERS"
        print(f"{label} {key}: recorded {recorded[key]} recomputed {again[key]} {verdict}")
    return bad


def check_exports(out: Path) -> int:
    """Export each model and load it with the libraries' loaders; compare its figures."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bad = 0
    for model in (*FULL, ADAPTER):
        res = _stemma(["export", "card", model, str(out / model), "--weights"], EXAMPLE)
        if res.returncode != 0:
            print(f"{model}: export failed: {res.stderr.strip()}")
            bad += 1
    for model in FULL:
        doc = _manifest(model)
        net = AutoModelForCausalLM.from_pretrained(out / model)
        tokenizer = AutoTokenizer.from_pretrained(out / model)
        fmt, records = _records(doc["datasets"]["eval"]["name"])
        blocks = _blocks(tokenizer, fmt, records, _block_size(model))
        kind = type(net).__name__ + (" int8" if "quantize" in doc else "")
        bad += _compare(f"{model} ({kind})", doc["metrics"], _score(net, *blocks))
    doc = _manifest(ADAPTER)
    base = AutoModelForCausalLM.from_pretrained(out / ADAPTER_BASE)
    lora = PeftModel.from_pretrained(base, out / ADAPTER)
    tokenizer = AutoTokenizer.from_pretrained(out / ADAPTER)
    fmt, records = _records(doc["datasets"]["eval"]["name"])
    blocks = _blocks(tokenizer, fmt, records, _block_size(ADAPTER))
    bad += _compare(f"{ADAPTER} (PeftModel)", doc["metrics"], _score(lora, *blocks))
    return bad


def check_edges() -> int:
    """The edges view holds one derived_from row from the merge to each parent."""
    res = _stemma(["query", "select * from edges", "--json"], EXAMPLE)
    if res.returncode != 0:
        print(f"stemma query failed: {res.stderr.strip()}")
        return 1
    rows = json.loads(res.stdout)
    print(_stemma(["query", "select * from edges"], EXAMPLE).stdout.rstrip())
    parents = {r["dst"] for r in rows if r["src"] == MERGE and r["kind"] == "derived_from"}
    missing = [p for p in MERGE_PARENTS if p not in parents]
    print(f"edges of {MERGE}: derived_from {sorted(parents)}", "ok" if not missing else "MISSING")
    return len(missing)


def check_up_to_date() -> int:
    """Nothing of the built example is stale: `stemma repro --dry` plans no stage."""
    res = _stemma(["repro", "--dry", "--json"], EXAMPLE)
    plan = json.loads(res.stdout) if res.returncode == 0 else {}
    stages = plan.get("targets", ["(repro failed)"])
    print(f"stemma repro --dry in the example: {stages or 'nothing to run'}")
    return _verdict(res.returncode == 0 and not stages, "every model and dataset up to date")


def _status(repo: Path) -> dict[str, str]:
    res = _stemma(["ls", "--json"], repo)
    return {r["name"]: r["status"] for r in json.loads(res.stdout) if r.get("kind") == "model"}


def _plan(repo: Path, target: str) -> list[str]:
    res = _stemma(["repro", target, "--dry", "--json"], repo)
    if res.returncode != 0:
        raise SystemExit(f"stemma repro --dry failed: {res.stderr.strip()}")
    return list(json.loads(res.stdout)["models"])  # in the order the stages run


def _edit(spec: Path, old: str, new: str) -> None:
    text = spec.read_text()
    if old not in text:
        raise SystemExit(f"{spec}: {old!r} not found")
    spec.write_text(text.replace(old, new))


def _verdict(ok: bool, what: str) -> int:
    print(f"  {'ok' if ok else 'WRONG'}: {what}")
    return int(not ok)


def check_staleness(tmp: Path) -> int:
    """In a copy: one parent's spec changed (planned, then that parent rebuilt), then the
    base's spec changed; the statuses `stemma ls` gives and the plans of `stemma repro`."""
    repo = tmp / "llm"
    shutil.copytree(EXAMPLE, repo, symlinks=True, ignore=shutil.ignore_patterns(".stemma"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "c", "GIT_AUTHOR_EMAIL": "c@example.org"}
    env |= {"GIT_COMMITTER_NAME": "c", "GIT_COMMITTER_EMAIL": "c@example.org"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "example"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env=env, capture_output=True)
    before = _status(repo)
    print(f"copy before any edit: {before}")
    bad = _verdict(set(before.values()) == {"built"}, "every model built")
    _edit(repo / "models/lm-topics/spec.yaml", "lr: 0.002", "lr: 0.0025")
    status, plan = _status(repo), _plan(repo, MERGE)
    print(f"lm-topics's lr changed: lm-topics {status['lm-topics']}; repro --dry {MERGE}: {plan}")
    ok = status["lm-topics"] == "stale" and plan == ["lm-topics", MERGE]
    bad += _verdict(ok, "the changed parent is stale, the plan rebuilds it and then the merge")
    started = time.perf_counter()
    res = _stemma(["repro", "lm-topics"], repo)  # DVC runs that one stage
    took = time.perf_counter() - started
    status, plan = _status(repo), _plan(repo, MERGE)
    print(f"lm-topics rebuilt ({took:.0f} s): {MERGE} {status[MERGE]}; repro --dry: {plan}")
    ok = res.returncode == 0 and status[MERGE] == "stale" and plan == [MERGE]
    why = "" if res.returncode == 0 else f" (repro failed: {res.stderr.strip()[-300:]})"
    bad += _verdict(ok, "the merge is stale once its parent is rebuilt" + why)
    _edit(repo / "models/lm-base/spec.yaml", "seed: 0}", "seed: 1}")
    plan = _plan(repo, MERGE)
    print(f"lm-base's seed changed: repro --dry {MERGE}: {plan}")
    ok = plan[-1] == MERGE and plan[0] == "lm-base" and set(MERGE_PARENTS) <= set(plan[:-1])
    return bad + _verdict(ok, "the base, both fine-tunes, then the merge")


def _pin_numerics() -> None:
    """The builds' numeric environment (recorded in each manifest's run block) and thread
    count, set before torch loads: float sums over other kernels differ in the last bits."""
    run = _manifest("lm-base")["run"]
    os.environ.update(run["numerics"]["env"])
    import torch

    torch.set_num_threads(int(run["threads"]))
    torch.use_deterministic_algorithms(True)


def main() -> int:
    """Run every check; exit 1 when one fails."""
    _pin_numerics()
    with tempfile.TemporaryDirectory() as tmp:
        bad = check_exports(Path(tmp) / "export")
        bad += check_up_to_date()
        bad += check_edges()
        bad += check_staleness(Path(tmp))
    print("all checks passed" if not bad else f"{bad} check(s) failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
