"""Evaluation and prediction with a fine-tuned task head."""

from __future__ import annotations

from pathlib import Path

from ..errors import Gpt1Error
from ..tokenizer import load_tokenizer
from .data import load_examples
from .inference import encode_examples, infer, label_indices, load_task_model, predictions
from .label_metrics import classification_report, regression_report
from .outputs import check_output, output_lines


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
