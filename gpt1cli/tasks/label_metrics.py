"""Classification and regression metrics, in numpy."""

from __future__ import annotations

import math

import numpy as np


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over classes that occur in the truth or the predictions."""
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    scores = []
    for c in range(len(tp)):
        if support[c] == 0 and predicted[c] == 0:
            continue
        denom = support[c] + predicted[c]
        scores.append(2 * tp[c] / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def matthews(matrix: np.ndarray) -> float:
    """Matthews correlation (the multi-class form; the binary MCC for two classes), 0 if undefined."""
    matrix = matrix.astype(float)
    total = matrix.sum()
    correct = np.trace(matrix)
    truth = matrix.sum(axis=1)
    pred = matrix.sum(axis=0)
    numerator = correct * total - truth @ pred
    denominator = math.sqrt((total**2 - pred @ pred) * (total**2 - truth @ truth))
    return float(numerator / denominator) if denominator else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float)))


def classification_report(truth: list[int], pred: list[int], n_classes: int, *, positive: int | None = None) -> dict:
    """Accuracy, macro-F1, MCC and the confusion matrix; with ``positive`` (a class index) also
    ``f1``, that class's F1 (as GLUE reports for MRPC and QQP)."""
    truth_a, pred_a = np.asarray(truth, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    matrix = confusion_matrix(truth_a, pred_a, n_classes)
    report = {
        "accuracy": float((truth_a == pred_a).mean()) if len(truth_a) else float("nan"),
        "macro_f1": macro_f1(matrix),
        "mcc": matthews(matrix),
    }
    if positive is not None:
        report["f1"] = class_f1(matrix, positive)
    return {**report, "confusion": matrix.tolist(), "examples": int(len(truth_a))}


def positive_class(task: str, n_classes: int) -> int | None:
    """The class whose F1 a two-label task reports: the second label in sorted order (1, true,
    pos, ...); None for more labels and for multiple choice."""
    return 1 if n_classes == 2 and task != "mcq" else None


def regression_report(truth: list[float], pred: list[float]) -> dict:
    t, p = np.asarray(truth, float), np.asarray(pred, float)
    return {
        "pearson": pearson(t, p),
        "spearman": spearman(t, p),
        "mse": float(((t - p) ** 2).mean()) if len(t) else float("nan"),
        "examples": int(len(t)),
    }


def class_f1(matrix: np.ndarray, positive: int) -> float:
    """F1 of one class (the paper's F1 for MRPC and QQP: of the positive class), 0 if undefined."""
    matrix = np.asarray(matrix)
    tp = float(matrix[positive, positive])
    denom = float(matrix[positive, :].sum() + matrix[:, positive].sum())
    return 2 * tp / denom if denom else 0.0
