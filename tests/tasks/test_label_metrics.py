"""Task metrics against values worked out by hand and against direct textbook formulas."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt1cli.tasks.label_metrics import (
    classification_report,
    confusion_matrix,
    macro_f1,
    matthews,
    pearson,
    regression_report,
    spearman,
)

# A 3-class case, worked out by hand:
#   truth 0 0 1 1 2 2 2
#   pred  0 1 1 1 2 0 2
TRUTH3 = [0, 0, 1, 1, 2, 2, 2]
PRED3 = [0, 1, 1, 1, 2, 0, 2]
CONF3 = [[1, 1, 0],
         [0, 2, 0],
         [1, 0, 2]]


def test_confusion_matrix_rows_are_truth_columns_predictions():
    matrix = confusion_matrix(np.array(TRUTH3), np.array(PRED3), 3)
    assert matrix.tolist() == CONF3
    assert confusion_matrix(np.array([1]), np.array([0]), 2).tolist() == [[0, 0], [1, 0]]


def test_macro_f1_by_hand():
    # F1: class 0 = 2*1/(2+2) = 0.5; class 1 = 2*2/(2+3) = 0.8; class 2 = 2*2/(3+2) = 0.8
    assert macro_f1(np.array(CONF3)) == pytest.approx((0.5 + 0.8 + 0.8) / 3)


def test_macro_f1_skips_classes_absent_from_truth_and_predictions():
    # class 2 never occurs, neither in truth nor in predictions: the mean runs over classes 0 and 1
    matrix = confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)
    # class 0: tp 2, support 2, predicted 3 -> 4/5; class 1: tp 0 -> 0
    assert macro_f1(matrix) == pytest.approx((0.8 + 0.0) / 2)
    assert macro_f1(confusion_matrix(np.array([1, 1]), np.array([1, 1]), 3)) == 1.0


def test_mcc_multiclass_by_hand():
    # Gorodkin's R_K: c = 5 correct of s = 7; t = (2, 2, 3), p = (2, 3, 2)
    # (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (35 - 16) / sqrt((49 - 17)(49 - 17)) = 19/32
    assert matthews(np.array(CONF3)) == pytest.approx(19 / 32)


def test_mcc_binary_by_hand():
    truth = [1, 1, 1, 0, 0, 0, 1, 0]
    pred = [1, 1, 0, 0, 0, 1, 1, 0]
    # TP 3, FN 1, TN 3, FP 1: (3*3 - 1*1) / sqrt(4*4*4*4) = 0.5
    report = classification_report(truth, pred, 2)
    assert report["mcc"] == pytest.approx(0.5)
    assert report["confusion"] == [[3, 1], [1, 3]]
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["examples"] == 8


def binary_mcc(truth, pred) -> float:
    tp = sum(t == 1 and p == 1 for t, p in zip(truth, pred))
    tn = sum(t == 0 and p == 0 for t, p in zip(truth, pred))
    fp = sum(t == 0 and p == 1 for t, p in zip(truth, pred))
    fn = sum(t == 1 and p == 0 for t, p in zip(truth, pred))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


def multiclass_mcc(truth, pred, k) -> float:
    """Gorodkin's formula written with covariances of one-hot indicators."""
    x = np.eye(k)[truth]
    y = np.eye(k)[pred]
    def cov(a, b):
        return float(((a - a.mean(0)) * (b - b.mean(0))).sum())
    den = math.sqrt(cov(x, x) * cov(y, y))
    return cov(x, y) / den if den else 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40))
def test_mcc_binary_matches_the_direct_formula(pairs):
    truth, pred = [t for t, _ in pairs], [p for _, p in pairs]
    assert classification_report(truth, pred, 2)["mcc"] == pytest.approx(binary_mcc(truth, pred), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=40))))
def test_mcc_multiclass_matches_the_covariance_form(case):
    k, pairs = case
    truth, pred = [t for t, _ in pairs], [p for _, p in pairs]
    assert matthews(confusion_matrix(np.array(truth), np.array(pred), k)) == pytest.approx(
        multiclass_mcc(truth, pred, k), abs=1e-12)


def test_report_accuracy_and_perfect_and_inverted_scores():
    perfect = classification_report([0, 1, 2, 1], [0, 1, 2, 1], 3)
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0 and perfect["mcc"] == pytest.approx(1.0)
    inverted = classification_report([0, 1, 0, 1], [1, 0, 1, 0], 2)
    assert inverted["accuracy"] == 0.0 and inverted["mcc"] == pytest.approx(-1.0) and inverted["macro_f1"] == 0.0
    constant = classification_report([0, 1, 0, 1], [0, 0, 0, 0], 2)
    assert constant["mcc"] == 0.0  # undefined -> 0
    assert constant["accuracy"] == 0.5
    report = classification_report(TRUTH3, PRED3, 3)
    assert report["accuracy"] == pytest.approx(5 / 7)
    assert report["confusion"] == CONF3


# ---------------------------------------------------------------------------------------------
# Regression metrics


def test_pearson_and_spearman_with_ties_by_hand():
    x = [1, 2, 2, 10]
    y = [1, 3, 2, 4]
    # Pearson: dx = (-2.75, -1.75, -1.75, 6.25), dy = (-1.5, .5, -.5, 1.5): 13.5 / sqrt(52.75 * 5)
    assert pearson(x, y) == pytest.approx(13.5 / math.sqrt(52.75 * 5))
    # Spearman: average ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman(y, x) == pytest.approx(spearman(x, y))
    # all tied on one side: undefined
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(pearson([5, 5], [1, 2]))


def average_ranks(values) -> list[float]:
    ranks = [0.0] * len(values)
    for i, v in enumerate(values):
        below = sum(w < v for w in values)
        equal = sum(w == v for w in values)
        ranks[i] = below + (equal + 1) / 2
    return ranks


def direct_pearson(x, y) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def test_spearman_with_many_ties_matches_ranked_pearson():
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(3, 25)
        x = [rng.randint(0, 4) for _ in range(n)]
        y = [rng.randint(0, 4) + 0.5 * v for v in x]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        assert spearman(x, y) == pytest.approx(direct_pearson(average_ranks(x), average_ranks(y)), abs=1e-12)
        assert pearson(x, y) == pytest.approx(direct_pearson(x, y), abs=1e-12)


def test_regression_report():
    truth = [0.0, 1.0, 2.0, 3.0]
    pred = [0.5, 1.0, 1.5, 4.0]
    report = regression_report(truth, pred)
    assert report["mse"] == pytest.approx((0.25 + 0 + 0.25 + 1.0) / 4)
    assert report["pearson"] == pytest.approx(direct_pearson(truth, pred))
    assert report["spearman"] == pytest.approx(1.0)  # same order
    assert report["examples"] == 4


def test_classification_report_gives_the_positive_class_f1_when_asked():
    from gpt1cli.tasks.label_metrics import classification_report, positive_class

    truth, pred = [1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0]
    report = classification_report(truth, pred, 2, positive=1)
    # class 1: tp 2, fp 1, fn 1 -> F1 = 2*2 / (3 + 3)
    assert report["f1"] == pytest.approx(4 / 6) and report["accuracy"] == pytest.approx(4 / 6)
    assert "f1" not in classification_report(truth, pred, 2)
    assert positive_class("similar", 2) == 1 and positive_class("mcq", 2) is None and positive_class("entail", 3) is None
