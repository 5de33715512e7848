"""Task evaluation, prediction and zero-shot multiple choice."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.tokenizer import load_tokenizer
from ..errors import Gpt1Error
from ..model.loading import model_from_checkpoint
from ..runtime import autocast
from .data import load_examples
from .metrics import classification_report, regression_report
from .outputs import check_output, output_lines
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


def predict(ckpt: str | Path, data: str | Path, out: str | Path, device, *, overwrite: bool = False) -> int:
    """Write one JSON line per example to ``out`` (``-``: standard output): the predicted label and
    the probabilities. An existing ``out`` is replaced only with ``overwrite``. Returns the count."""
    check_output(out, overwrite)
    model, checkpoint = load_task_model(ckpt, device)
    info = checkpoint.task
    task = info["name"]
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    examples = load_examples(data, task, regression=info["regression"], require_label=False)
    _check_choices(examples, info, data)
    encoded = encode_examples(examples, task, tokenizer, checkpoint.config.n_ctx)
    logits = infer(model, encoded, tokenizer.pad_id, device, regression=info["regression"])
    preds, probs = predictions(logits, info["regression"])
    with output_lines(out, total=len(examples), unit="predictions") as writer:
        for i, example in enumerate(examples):
            if info["regression"]:
                record = {"value": preds[i]}
            elif task == "mcq":
                record = {"label": preds[i], "probs": [round(p, 6) for p in probs[i].tolist()]}
            else:
                record = {"label": info["labels"][preds[i]],
                          "probs": {str(label): round(p, 6) for label, p in zip(info["labels"], probs[i].tolist())}}
            writer.write(record)
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


def lm_text_eval(ckpt: str | Path, text_file: str | Path, device, *, max_tokens: int | None = None,
                 show_progress: bool = False) -> dict:
    """Loss, perplexity and bits per byte of a checkpoint on a raw text corpus, streamed.

    The text is encoded as ``gpt1 tokenize`` encodes it and evaluated in the same
    non-overlapping windows as a shard split, chunk by chunk: memory does not grow with the
    file or with any one document. ``max_tokens`` stops after that many predicted tokens.
    """
    from ..data.corpus import expand_inputs
    from ..data.stream import iter_token_chunks
    from ..progress import progress_bar
    from ..train.evaluate import lm_report, stream_windows, window_losses

    model, checkpoint = model_from_checkpoint(ckpt, device)
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    paths = expand_inputs([str(text_file)])
    n_ctx = model.config.n_ctx
    seen = {"tokens": 0, "bytes": 0.0}
    with progress_bar(f"evaluating {text_file}", sum(path.stat().st_size for path in paths),
                      enabled=show_progress, status="") as bar:
        def counted(chunks):
            for chunk in chunks:
                seen["tokens"] += len(chunk.tokens)
                seen["bytes"] += chunk.text_bytes
                yield chunk.tokens

        def moved(tokens: int, input_bytes: int) -> None:
            bar.update(completed=input_bytes, status=f"{tokens:,} tokens")

        chunks = iter_token_chunks(paths, tokenizer, max_tokens=None if max_tokens is None else max_tokens + 1,
                                   chunk_tokens=8 * n_ctx, progress=moved)
        total_loss, total_tokens = window_losses(model, stream_windows(counted(chunks), n_ctx), device=device)
    if total_tokens < 1:
        raise Gpt1Error(f"{text_file} holds too little text to evaluate")
    return lm_report(total_loss, total_tokens, seen["tokens"] / seen["bytes"] if seen["bytes"] else math.nan)
