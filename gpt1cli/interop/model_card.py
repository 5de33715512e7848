"""The ``README.md`` model card an export to transformers carries.

Everything in it is read from what the run left: the checkpoint (model settings, step, task,
metrics), the run's ``metrics.jsonl`` when the checkpoint sits in a run directory (the settings
the run started with, its last evaluation) and the shard manifest the run trained on, if it is
still there. What is missing is left out, never guessed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..config import ModelConfig
from ..errors import Gpt1Error
from ..fileio import read_json

METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
_ARCH_TEXT = {
    "gpt1": "GPT-1 (post-LayerNorm decoder, as Radford et al. 2018)",
    "gpt2": "GPT-2 style (pre-LayerNorm decoder with a final LayerNorm)",
}
_TOKENIZER_TEXT = {
    "sentencepiece": "SentencePiece BPE with byte fallback (trained by `gpt1 tokenize`)",
    "openai-bpe": "the original GPT-1 BPE (lower-cased words, `</w>` word ends)",
    "hf-tokenizers": "a Hugging Face `tokenizers` tokenizer (as imported)",
}


def _records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl, skipping lines that are not JSON objects (a torn last line)."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def run_directory(checkpoint_path: Path) -> Path | None:
    """The run a checkpoint folder belongs to (``RUN/checkpoints/step_*``), if it does."""
    parent = checkpoint_path.parent
    if parent.name in ("checkpoints", "train-state") and (parent.parent / METRICS).is_file():
        return parent.parent
    return None


def _number(value, digits: int = 4) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return None


def _training(run: Path | None, step: int) -> tuple[list[str], list[str]]:
    """Lines on the training data and settings, and on the evaluation, from the run's records."""
    if run is None:
        return [], []
    records = _records(run / METRICS)
    starts = [r for r in records if r.get("kind") == "config" and isinstance(r.get("config"), dict)]
    settings = starts[-1]["config"] if starts else {}
    data, evaluation = [], []
    shards = settings.get("shards") if isinstance(settings.get("shards"), str) else None
    if shards:
        line = f"- Pre-training shards: `{shards}`"
        try:
            manifest = read_json(Path(shards) / MANIFEST, "shard manifest")
            splits = manifest.get("splits", {})
            counts = {name: splits[name].get("tokens") for name in ("train", "val")
                      if isinstance(splits.get(name), dict) and isinstance(splits[name].get("tokens"), int)}
            if counts:
                line += " (" + ", ".join(f"{name} {count:,} tokens" for name, count in counts.items()) + ")"
            inputs = manifest.get("inputs")
            if isinstance(inputs, list) and inputs:
                shown = ", ".join(f"`{i}`" for i in inputs[:5] if isinstance(i, str))
                line += f" from {shown}" + (f" and {len(inputs) - 5} more" if len(inputs) > 5 else "")
        except Gpt1Error:
            pass
        data.append(line)
    for key in ("train", "val", "task"):
        if isinstance(settings.get(key), str):
            data.append(f"- {key.capitalize()} data: `{settings[key]}`")
    trained = [r["step"] for r in records if r.get("kind") == "train" and isinstance(r.get("step"), int) and r["step"] <= step]
    shown = {k: settings[k] for k in ("preset", "steps", "epochs", "batch_size", "lr", "warmup", "weight_decay", "dropout", "seed")
             if k in settings and settings[k] is not None}
    if shown:
        data.append("- Settings: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if trained:
        data.append(f"- Optimiser steps logged: {max(trained):,}")
    evals = [r for r in records if r.get("kind") == "eval" and isinstance(r.get("step"), int) and r["step"] <= step]
    if evals:
        last = evals[-1]
        figures = [f"{name} {_number(last.get(key))}" for name, key in (("loss", "val_loss"), ("perplexity", "val_ppl"),
                                                                       ("bits per byte", "val_bpb"))
                   if _number(last.get(key)) is not None]
        if figures:
            evaluation.append(f"- Validation at step {last['step']:,}: " + ", ".join(figures))
    return data, evaluation


def model_card(*, checkpoint, config: ModelConfig, tokenizer, architecture: str, parameters: int, command: str,
               task: dict | None, notes: list[str]) -> str:
    """The README.md text for an export of ``checkpoint``."""
    run = run_directory(checkpoint.path)
    data, evaluation = _training(run, checkpoint.step)
    if not evaluation:
        val = (checkpoint.meta.get("metrics") or {}).get("val") if isinstance(checkpoint.meta.get("metrics"), dict) else None
        if isinstance(val, dict):
            figures = [f"{name} {_number(val.get(key))}" for name, key in (("loss", "loss"), ("perplexity", "ppl"),
                                                                          ("bits per byte", "bpb"))
                       if _number(val.get(key)) is not None]
            figures += [f"{k} {_number(v)}" for k, v in val.items() if k not in ("loss", "ppl", "bpb", "tokens")
                        and _number(v) is not None]
            if figures:
                evaluation.append(f"- Validation at step {checkpoint.step:,}: " + ", ".join(figures))
    model_type = "openai-gpt" if config.arch == "gpt1" else "gpt2"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [gpt1cli, {model_type}]",
        "---",
        "",
        f"# {checkpoint.path.parent.parent.name if run else checkpoint.path.name}",
        "",
        f"A {_ARCH_TEXT[config.arch]} language model trained with the `gpt1` toolkit and exported for "
        f"transformers as `{architecture}`.",
        "",
        "## Model",
        "",
        f"- Architecture: `{architecture}` (model_type `{model_type}`): {config.n_layer} layers, d_model {config.d_model}, "
        f"{config.n_head} heads, MLP width {config.d_ff}, context {config.n_ctx} tokens, tanh-form GELU, "
        f"LayerNorm epsilon {config.layer_norm_eps:g}",
        f"- Parameters: {parameters:,} (the output layer shares the token embedding)",
        f"- Vocabulary: {config.vocab_size:,} tokens",
        f"- Checkpoint: `{checkpoint.path}` (step {checkpoint.step:,}, {checkpoint.meta.get('kind') or 'unknown'} run)",
    ]
    if task:
        lines.append(f"- Task: {task.get('name')}")
    lines += ["", "## Tokenizer", "",
              f"- {_TOKENIZER_TEXT.get(tokenizer.kind, tokenizer.kind)}, in `tokenizer.json`",
              "- Special tokens (id): " + ", ".join(f"{name} {index}" for name, index in tokenizer.specials.items()),
              "- Encoding text never produces a special token (`split_special_tokens` is on); decode with "
              "`skip_special_tokens=True` to drop them, as `gpt1` does.",
              f"- `gpt1-tokenizer{tokenizer.file_suffix}` is the toolkit's own copy: "
              "`gpt1 convert --from-hf` restores the checkpoint from it bit for bit."]
    if data:
        lines += ["", "## Training", "", *data]
    if evaluation:
        lines += ["", "## Evaluation", "", *evaluation]
    lines += ["", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "",
              'tokenizer = AutoTokenizer.from_pretrained("PATH")',
              'model = AutoModelForCausalLM.from_pretrained("PATH")',
              'ids = tokenizer("Once upon a time", return_tensors="pt").input_ids',
              "out = model.generate(ids, max_new_tokens=20, do_sample=False)",
              "print(tokenizer.decode(out[0], skip_special_tokens=True))",
              "```", "",
              "Greedy decoding gives the text `gpt1 generate --temperature 0` gives.",
              "", "## Provenance", "", f"Made with `{command}`."]
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
