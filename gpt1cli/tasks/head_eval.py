"""Evaluation and prediction with a fine-tuned task head."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from ..errors import Gpt1Error
from ..progress import progress_bar
from ..tokenizer import load_tokenizer
from .data import load_examples, records
from .inference import check_batch_size, encode_examples, infer, label_indices, load_task_model, predictions
from .label_metrics import classification_report, positive_class, regression_report
from .outputs import check_output, output_lines

BATCH_SIZE = 32  # examples per forward pass unless told


def standard_error(p: float, n: int) -> float:
    """The binomial standard error of a proportion ``p`` (an accuracy) measured on ``n`` examples."""
    if not n or math.isnan(p):
        return float("nan")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def baselines(truth: list[int], n_classes: int, labels: list) -> dict:
    """What an accuracy is to be read against: ``chance`` (uniform guessing, 1/classes, as the
    zero-shot report gives it) and ``majority`` (always answering the most frequent true class of
    these examples, named by ``majority_label``; ties go to the first class)."""
    counts = Counter(truth)
    top = max(range(n_classes), key=lambda c: (counts.get(c, 0), -c))
    return {"chance": 1.0 / n_classes, "majority": counts.get(top, 0) / len(truth) if truth else float("nan"),
            "majority_label": labels[top]}


def with_baselines(report: dict, truth: list[int], n_classes: int, labels: list) -> dict:
    """A classification report with its accuracy's standard error and the chance baselines,
    keys in reading order."""
    out = {"accuracy": report["accuracy"], "accuracy_stderr": standard_error(report["accuracy"], report["examples"])}
    out.update({k: v for k, v in report.items() if k != "accuracy"})
    out.update(baselines(truth, n_classes, labels))
    return out


def evaluate_task(ckpt: str | Path, task: str, data: str | Path, device, *, batch_size: int = BATCH_SIZE,
                  show_progress: bool = False, fields=None) -> dict:
    """Metrics of a fine-tuned checkpoint on a labelled file; classification reports carry the
    accuracy's standard error and the chance baselines (:func:`baselines`). ``fields``: the
    ``--field NAME=COLUMN`` mapping of ``data`` (default: the one the checkpoint was trained with)."""
    check_batch_size(batch_size)
    model, checkpoint = load_task_model(ckpt, device, task)
    info = checkpoint.task
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    examples = load_examples(data, task, regression=info["regression"], fields=_fields(fields, info))
    _check_choices(examples, info, data)
    # every label is checked before any work (an unknown one is an error, not a bar then an error)
    if task == "mcq":
        truth = [e.label for e in examples]
    elif not info["regression"]:
        truth = label_indices(examples, info["labels"], False)
    encoded = encode_examples(examples, task, tokenizer, checkpoint.config.n_ctx)
    with progress_bar("evaluating", len(encoded), enabled=show_progress, count=True) as bar:
        logits = infer(model, encoded, tokenizer.pad_id, device, batch_size=batch_size, regression=info["regression"],
                       progress=bar.advance)
    preds, _ = predictions(logits, info["regression"])
    if info["regression"]:
        report = regression_report([e.label for e in examples], preds)
    else:
        labels = list(range(logits.shape[-1])) if task == "mcq" else info["labels"]
        report = with_baselines(classification_report(truth, preds, len(labels), positive=positive_class(task, len(labels))),
                                truth, len(labels), labels)
        report["labels"] = labels
    report["task"] = task
    return report


def _fields(given, info: dict):
    """The column mapping to read with: the one given, else the checkpoint's own."""
    return given if given else info.get("fields")


def _check_choices(examples, info: dict, data) -> None:
    expected = info.get("n_choices")
    if expected and len(examples[0].fields["choices"]) != expected:
        raise Gpt1Error(f"{data}: examples have {len(examples[0].fields['choices'])} choices, the checkpoint was trained with {expected}")


def example_ids(data: str | Path) -> list:
    """Each record's ``id`` field where it has one, else its row number: the example's place in
    the file counted from 1 (in JSONL its line when the file has no blank lines; in CSV the header
    is not counted), the same number whichever format holds the examples."""
    return [number if record.get("id") in (None, "") else record["id"]
            for number, (_, record) in enumerate(records(Path(data)), start=1)]


def predict(ckpt: str | Path, data: str | Path, out: str | Path, device, *, overwrite: bool = False,
            batch_size: int = BATCH_SIZE, show_progress: bool = False, fields=None) -> list[dict]:
    """Write one JSON line per example to ``out`` (``-``: standard output): the example's ``id``
    (its own ``id`` field, else its row number), its input fields, the predicted
    ``label`` and the ``probs`` (``value`` with regression). An existing ``out`` is replaced only
    with ``overwrite``. Returns the records written."""
    check_output(out, overwrite)
    check_batch_size(batch_size)
    model, checkpoint = load_task_model(ckpt, device)
    info = checkpoint.task
    task = info["name"]
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    examples = load_examples(data, task, regression=info["regression"], require_label=False,
                             fields=_fields(fields, info))
    _check_choices(examples, info, data)
    ids = example_ids(data)
    if len(ids) != len(examples):  # the file changed between the two reads
        raise Gpt1Error(f"{data} changed while it was read: run again")
    encoded = encode_examples(examples, task, tokenizer, checkpoint.config.n_ctx)
    with progress_bar("predicting", len(encoded), enabled=show_progress, count=True) as bar:
        logits = infer(model, encoded, tokenizer.pad_id, device, batch_size=batch_size, regression=info["regression"],
                       progress=bar.advance)
    preds, probs = predictions(logits, info["regression"])
    written = []
    with output_lines(out, total=len(examples), unit="predictions") as writer:
        for i, example in enumerate(examples):
            record = {"id": ids[i], **example.fields}
            if info["regression"]:
                record["value"] = preds[i]
            elif task == "mcq":
                record.update(label=preds[i], probs=[round(p, 6) for p in probs[i].tolist()])
            else:
                record.update(label=info["labels"][preds[i]],
                              probs={str(label): round(p, 6) for label, p in zip(info["labels"], probs[i].tolist())})
            writer.write(record)
            written.append(record)
    return written
