"""Task evaluation, prediction and zero-shot multiple choice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..data.tokenizer import load_tokenizer
from ..errors import Gpt1Error
from ..fileio import atomic_path
from ..model.loading import model_from_checkpoint
from ..runtime import autocast
from .data import load_examples
from .metrics import classification_report, regression_report
from .runner import encode_examples, infer, label_indices, load_task_model, predictions


def evaluate_task(ckpt: str | Path, task: str, data: str | Path, device) -> dict:
    """Metrics of a fine-tuned checkpoint on a labelled file."""
    model, checkpoint = load_task_model(ckpt, device, task)
    info = checkpoint.task
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    examples = load_examples(data, task, regression=info["regression"])
    _check_choices(examples, info, data)
    encoded = encode_examples(examples, task, tokenizer, checkpoint.config.n_ctx)
    logits = infer(model, encoded, tokenizer.pad_id, device, regression=info["regression"])
    preds, _ = predictions(logits, info["regression"])
    if task == "mcq":
        truth = [e.label for e in examples]
        report = classification_report(truth, preds, logits.shape[-1])
        report["labels"] = list(range(logits.shape[-1]))
    elif info["regression"]:
        report = regression_report([e.label for e in examples], preds)
    else:
        truth = label_indices(examples, info["labels"], False)
        report = classification_report(truth, preds, len(info["labels"]))
        report["labels"] = info["labels"]
    report["task"] = task
    return report


def _check_choices(examples, info: dict, data) -> None:
    expected = info.get("n_choices")
    if expected and len(examples[0].fields["choices"]) != expected:
        raise Gpt1Error(f"{data}: examples have {len(examples[0].fields['choices'])} choices, the checkpoint was trained with {expected}")


def predict(ckpt: str | Path, data: str | Path, out: str | Path, device) -> int:
    """Write one JSON line per example: the predicted label and the probabilities. Returns the count."""
    model, checkpoint = load_task_model(ckpt, device)
    info = checkpoint.task
    task = info["name"]
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    examples = load_examples(data, task, regression=info["regression"], require_label=False)
    _check_choices(examples, info, data)
    encoded = encode_examples(examples, task, tokenizer, checkpoint.config.n_ctx)
    logits = infer(model, encoded, tokenizer.pad_id, device, regression=info["regression"])
    preds, probs = predictions(logits, info["regression"])
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for i, example in enumerate(examples):
            if info["regression"]:
                record = {"value": preds[i]}
            elif task == "mcq":
                record = {"label": preds[i], "probs": [round(p, 6) for p in probs[i].tolist()]}
            else:
                record = {"label": info["labels"][preds[i]],
                          "probs": {str(label): round(p, 6) for label, p in zip(info["labels"], probs[i].tolist())}}
            handle.write(json.dumps(record) + "\n")
    return len(examples)


@torch.no_grad()
def choice_loglik(model, context: list[int], choice: list[int], device) -> float:
    """Mean log-probability of the choice's tokens following the context."""
    n_ctx = model.config.n_ctx
    choice = choice[-(n_ctx - 1):]
    context = context[-(n_ctx - len(choice)):] if len(context) + len(choice) > n_ctx else context
    if not context:
        context = choice[:1]
        choice = choice[1:]
    tokens = torch.tensor([context + choice], device=device)
    with autocast(device):
        hidden = model(tokens[:, :-1])
        logits = model.logits(hidden[:, len(context) - 1 :]).float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = tokens[0, len(context):]
    return float(logprobs[0, torch.arange(len(choice)), targets].mean())


def zero_shot_mcq(ckpt: str | Path, data: str | Path, device) -> dict:
    """Score each choice by the LM's mean log-likelihood given the context; no head, no training."""
    model, checkpoint = model_from_checkpoint(ckpt, device)
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    examples = load_examples(data, "mcq")
    truth, preds = [], []
    for example in examples:
        context = tokenizer.encode(example.fields["context"])
        scores = [choice_loglik(model, context, tokenizer.encode(c), device) for c in example.fields["choices"]]
        preds.append(max(range(len(scores)), key=scores.__getitem__))
        truth.append(example.label)
    n_choices = len(examples[0].fields["choices"])
    report = classification_report(truth, preds, n_choices)
    report.update(task="mcq", mode="zero-shot", chance=1.0 / n_choices)
    return report


def lm_text_eval(ckpt: str | Path, text_file: str | Path, device) -> dict:
    """Loss, perplexity and bits per byte of a checkpoint on a raw text file."""
    from ..data.corpus import expand_inputs, iter_documents
    from ..train.evaluate import evaluate_lm

    model, checkpoint = model_from_checkpoint(ckpt, device)
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    tokens, n_bytes = [], 0
    for document in iter_documents(expand_inputs([str(text_file)])):
        for line in document.lines:
            tokens.extend(tokenizer.encode(line))
        tokens.append(tokenizer.eos_id)
        n_bytes += document.n_bytes
    if len(tokens) < 2:
        raise Gpt1Error(f"{text_file} holds too little text to evaluate")
    split = _ArraySplit(tokens, n_bytes)
    return evaluate_lm(model, split, device=device)


class _ArraySplit:
    """An in-memory stand-in for a shard split, for evaluating a text file."""

    name = "text"

    def __init__(self, tokens: list[int], text_bytes: int):
        import numpy as np

        self._tokens = np.asarray(tokens, dtype=np.int64)
        self.tokens = len(tokens)
        self.text_bytes = text_bytes

    def read(self, start: int, length: int):
        return self._tokens[start : start + length].copy()

    def tokens_per_byte(self) -> float:
        return self.tokens / self.text_bytes if self.text_bytes else math.nan
