"""Detection metrics against hand-computed answers and a brute-force pairwise ROC-AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.detect.metrics import (
    average_ranks,
    best_f1_threshold,
    detection_metrics,
    roc_auc,
    threshold_at_percentile,
)
from secagg.errors import ConfigError, DataError


def _pairwise_auc(y, s) -> float:
    """Reference: P(score_pos > score_neg) + 0.5 P(tie), by enumerating all pairs."""
    pos = [v for v, t in zip(s, y) if t == 1]
    neg = [v for v, t in zip(s, y) if t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_confusion_metrics_known_answer() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    m = detection_metrics(y, p)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (2, 1, 4, 1, 8)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(1 / 5)
    assert math.isnan(m["roc_auc"])


def test_roc_auc_hand_computed() -> None:
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 beats 0.1 only; 0.8 beats both -> 3/4
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # a tie counts one half: pos {0.5, 0.9} vs neg {0.5, 0.2} -> (0.5 + 1 + 1 + 1) / 4
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    assert roc_auc(np.array([0, 1]), np.array([3.0, 3.0])) == pytest.approx(0.5)
    assert roc_auc(np.array([1, 1, 0]), np.array([2.0, 3.0, 1.0])) == 1.0
    m = detection_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["roc_auc"] == pytest.approx(0.75)


def test_average_ranks_ties() -> None:
    assert average_ranks(np.array([10, 20, 20, 5, 20])).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


@settings(deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40))
def test_roc_auc_matches_pairwise_reference(pairs) -> None:
    y = np.array([a for a, _ in pairs])
    s = np.array([b for _, b in pairs], dtype=float) / 3.0  # few distinct values -> many ties
    if y.min() == y.max():
        with pytest.raises(DataError, match="both classes"):
            roc_auc(y, s)
        assert math.isnan(detection_metrics(y, y, s)["roc_auc"])
    else:
        assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y.tolist(), s.tolist()), abs=1e-12)


def test_zero_division_conventions() -> None:
    m = detection_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]))
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0 and m["fpr"] == 0.0
    m = detection_metrics(np.array([1, 1]), np.array([1, 0]))
    assert m["fpr"] == 0.0 and m["recall"] == 0.5


def test_bad_inputs_rejected() -> None:
    with pytest.raises(DataError, match="does not match"):
        detection_metrics(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(DataError, match="scores shape"):
        detection_metrics(np.array([0, 1]), np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(DataError, match="NaN or Inf"):
        roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(DataError, match="only 0 and 1"):
        detection_metrics(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(DataError, match="zero rows"):
        detection_metrics(np.array([], int), np.array([], int))


def test_threshold_at_percentile() -> None:
    s = np.arange(101, dtype=float)
    assert threshold_at_percentile(s, 95) == pytest.approx(95.0)
    assert threshold_at_percentile(np.array([1.0, 2.0]), 50) == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="percentile"):
        threshold_at_percentile(s, 101)
    with pytest.raises(DataError):
        threshold_at_percentile(np.array([]), 95)


def test_best_f1_threshold_is_the_brute_force_optimum() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(y * 0.6 + rng.normal(0, 0.5, 200), 1)  # ties on purpose
    thr, f1 = best_f1_threshold(y, s)
    brute = max(detection_metrics(y, (s > t).astype(int))["f1"] for t in np.r_[np.unique(s), s.min() - 1])
    assert f1 == pytest.approx(brute)
    assert detection_metrics(y, (s > thr).astype(int))["f1"] == pytest.approx(f1)
