"""Fine-tune and evaluate a named benchmark of the paper from its published files.

A split is read by the task's reader, written as one of our JSONL task files (the fields
``tasks/data.py`` reads for the task's kind, plus a ``source`` naming the published file and
line), and handed to the ordinary fine-tuning and evaluation code. The conversion is
deterministic, so a run can be resumed on the same files. A fine-tuning run keeps its
converted files in ``OUT/paper-data/`` and a record of the task in ``OUT/paper-task.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ...checkpoint import CHECKPOINTS, LATEST, TRAIN_STATE
from ...errors import Gpt1Error
from ...fileio import atomic_path, atomic_write_json, file_hash
from ..label_metrics import class_f1, classification_report
from .registry import PaperTask, get_task, read_split

DATA = "paper-data"
RECORD = "paper-task.json"
# What finetune_named's keyword arguments may change (FinetuneConfig's settings but the task and its data).
OVERRIDABLE = ("lr", "batch_size", "epochs", "warmup_fraction", "weight_decay", "lm_coef", "head_dropout", "init",
               "seed", "device", "eval_every", "max_bad_steps", "resume", "overwrite", "parallel", "dist_timeout")


def write_rows(split, path: Path) -> Path:
    """The rows as our JSONL task file at ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in split.rows:
                handle.write(json.dumps(row.record(), ensure_ascii=False) + "\n")
    return path


def _run_exists(out: Path) -> bool:
    return (out / CHECKPOINTS / LATEST).is_file() or (out / TRAIN_STATE).is_dir()


def _place(split, path: Path, out: Path, replace: bool) -> None:
    """Write the converted split to ``path``; a run in ``out`` trained on other data is not touched
    unless ``replace``."""
    staged = write_rows(split, path.with_name(path.name + ".new"))
    if path.is_file() and file_hash(path) == file_hash(staged):
        staged.unlink()
        return
    if path.is_file() and _run_exists(out) and not replace:
        staged.unlink()
        raise Gpt1Error(f"{out} holds a run trained on other {path.stem} data than {split.files[0].parent} now gives: "
                        "pass --overwrite (overwrite=True) to start over, or choose another output folder")
    os.replace(staged, path)


def finetune_named(name: str, data_dir: str | Path, from_run: str | Path, out: str | Path, *,
                   show_progress: bool = False, say=None, **overrides) -> dict:
    """Fine-tune ``from_run`` on the paper task ``name`` read from ``data_dir`` (its folder in the
    published layout) into the run directory ``out``, with the paper's settings and any of
    :data:`OVERRIDABLE` changed by ``overrides``. Returns the fine-tuning summary, with the task's
    name and the example counts."""
    from ..finetune import FinetuneConfig, finetune

    task = get_task(name)
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise Gpt1Error(f"finetune_named cannot set {', '.join(unknown)}; it takes {', '.join(OVERRIDABLE)}")
    out = Path(out)
    train, val = read_split(task, data_dir, task.fit), read_split(task, data_dir, task.val)
    replace = bool(overrides.get("overwrite"))
    _place(train, out / DATA / "train.jsonl", out, replace)
    _place(val, out / DATA / "val.jsonl", out, replace)
    settings = {**task.settings(), **{k: v for k, v in overrides.items() if v is not None}}
    config = FinetuneConfig(task=task.kind, train=str(out / DATA / "train.jsonl"), val=str(out / DATA / "val.jsonl"),
                            from_run=str(from_run), out=str(out), regression=task.regression, metric=task.select,
                            **settings)
    summary = finetune(config, show_progress=show_progress, say=say)
    counts = {"train": len(train.rows), "val": len(val.rows)}
    dropped = {part: split.dropped for part, split in (("train", train), ("val", val)) if split.dropped}
    atomic_write_json(out / RECORD, {"name": task.name, "title": task.title, "kind": task.kind,
                                     "data_dir": str(Path(data_dir)), "fit": task.fit, "val": task.val,
                                     "examples": counts, "dropped": dropped,
                                     "settings": {k: settings[k] for k in sorted(settings)}})
    return {**summary, "name": task.name, "examples": counts, "dropped": dropped}


def _check_record(task: PaperTask, ckpt: Path) -> None:
    for folder in (ckpt, *list(ckpt.parents)[:3]):
        record = folder / RECORD
        if record.is_file():
            try:
                made_for = json.loads(record.read_text(encoding="utf-8")).get("name")
            except (OSError, ValueError, AttributeError):
                return
            if made_for and made_for != task.name:
                raise Gpt1Error(f"{ckpt} was fine-tuned for the paper task {made_for}, not {task.name}")
            return


def evaluate_named(name: str, data_dir: str | Path, ckpt: str | Path, split: str | None = None, *,
                   device: str = "auto") -> dict:
    """Score the fine-tuned ``ckpt`` on the paper task ``name`` read from ``data_dir``.

    Without ``split``, every row the paper reports (MNLI matched and mismatched; RACE middle,
    high and both), each on its scored split; with one, that split alone. Each row has the
    paper's metric (``score``, in [0, 1] or [-1, 1]) and the others (``metrics``)."""
    from ...runtime import pick_device
    from ..head_eval import evaluate_task

    task = get_task(name)
    ckpt = Path(ckpt)
    _check_record(task, ckpt)
    if split is None:
        wanted = [(s.row, s.parts, s.paper) for s in task.scores]
    else:
        known = next((s for s in task.scores if s.parts == (split,)), None)
        wanted = [(known.row if known else f"{task.title} {split}", (split,), known.paper if known else None)]
    dev = pick_device(device)
    reports: dict[str, tuple[dict, int]] = {}
    with tempfile.TemporaryDirectory(prefix="gpt1-paper-") as work:
        for part in dict.fromkeys(p for _, parts, _ in wanted for p in parts):
            data = read_split(task, data_dir, part)
            path = write_rows(data, Path(work) / f"{part}.jsonl")
            reports[part] = (evaluate_task(ckpt, task.kind, path, dev), len(data.rows))
    rows = [_row(task, title, parts, paper, [reports[p][0] for p in parts]) for title, parts, paper in wanted]
    return {"name": task.name, "title": task.title, "table": task.table, "ckpt": str(ckpt), "rows": rows}


def _row(task: PaperTask, title: str, parts: tuple, paper: float | None, reports: list[dict]) -> dict:
    if task.regression:
        if len(reports) != 1:
            raise Gpt1Error(f"{task.title}: regression rows are scored on one split")
        report = reports[0]
        metrics = {"pearson": report["pearson"], "spearman": report["spearman"], "mse": report["mse"]}
    else:
        matrix = np.sum([np.asarray(r["confusion"]) for r in reports], axis=0)
        pooled = classification_report_from(matrix)
        metrics = {"accuracy": pooled["accuracy"], "macro_f1": pooled["macro_f1"], "mcc": pooled["mcc"]}
        if task.positive is not None:
            labels = [str(x) for x in reports[0]["labels"]]
            if str(task.positive) not in labels:
                raise Gpt1Error(f"{task.title}: the checkpoint's labels {labels} lack the positive class {task.positive}")
            metrics["f1"] = class_f1(matrix, labels.index(str(task.positive)))
        report = {"confusion": matrix.tolist(), "labels": reports[0].get("labels")}
    primary = task.metrics[0]
    return {"row": title, "splits": list(parts), "metric": primary, "score": metrics[primary],
            "shown": {m: metrics[m] for m in task.metrics}, "metrics": metrics, "paper": paper,
            "examples": sum(int(r["examples"]) for r in reports),
            **({"confusion": report["confusion"], "labels": report["labels"]} if not task.regression else {})}


def classification_report_from(matrix: np.ndarray) -> dict:
    """The classification report of a confusion matrix (rows true, columns predicted)."""
    truth = np.repeat(np.arange(matrix.shape[0]), matrix.sum(axis=1))
    pred = np.concatenate([np.repeat(np.arange(matrix.shape[1]), row) for row in matrix]) if matrix.size else []
    return classification_report(truth.tolist(), list(pred), matrix.shape[0])

