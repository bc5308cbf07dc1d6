"""Binary detection metrics (attack = positive class 1): accuracy, precision, recall, F1, FPR, ROC-AUC.

* ROC-AUC is the Mann-Whitney U statistic: ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``
  with ``R_pos`` the sum of the (average, tie-corrected) ranks of the positive scores; it
  equals P(score_pos > score_neg) + 0.5 P(tie). O(n log n).
* Zero denominators follow the common ``zero_division=0`` convention: precision is 0 when
  nothing is predicted positive, recall is 0 without positives, FPR is 0 without negatives.
  ROC-AUC is undefined with a single class: :func:`roc_auc` raises, :func:`detection_metrics`
  reports ``nan`` for it (so a benign-only evaluation still gives FPR/accuracy).
* Bad input (shape mismatch, NaN/Inf scores, labels or predictions outside {0, 1}) raises
  :class:`~secagg.errors.DataError`.

Threshold helpers: :func:`threshold_at_percentile` (the autoencoder's calibration rule) and
:func:`best_f1_threshold` (an oracle on labelled data: for reporting/diagnosis only, never
for calibrating a deployed detector on its test set).
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError, DataError


def _binary(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{name} contains NaN or Inf")
    if not np.isin(a, (0, 1)).all():
        raise DataError(f"{name} must contain only 0 and 1, got values {np.unique(a)[:5].tolist()}")
    return a.astype(np.int64)


def _scores(s: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (n,):
        raise DataError(f"scores shape {s.shape} does not match y_true shape ({n},)")
    if not np.isfinite(s).all():
        raise DataError("scores contain NaN or Inf")
    return s


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values get the mean of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count 1/2); needs both classes."""
    y = _binary(y_true, "y_true")
    s = _scores(scores, len(y))
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"ROC-AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    r = average_ranks(s)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_metrics(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """Confusion-matrix metrics of ``y_pred`` and, with ``scores``, the ROC-AUC.

    Returns ``{accuracy, precision, recall, f1, fpr, roc_auc, tp, fp, tn, fn, n}``
    (floats; counts as ints; ``roc_auc`` is ``nan`` if scores are absent or one class is).
    """
    y = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred")
    if p.shape != y.shape:
        raise DataError(f"y_pred shape {p.shape} does not match y_true shape {y.shape}")
    if len(y) == 0:
        raise DataError("cannot compute metrics on zero rows")
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    tn = int(((p == 0) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = float("nan")
    if scores is not None:
        s = _scores(scores, len(y))
        if 0 < tp + fn < len(y):
            auc = roc_auc(y, s)
    return {
        "accuracy": (tp + tn) / len(y),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "roc_auc": auc,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(y),
    }


def threshold_at_percentile(scores: np.ndarray, percentile: float = 95.0) -> float:
    """The ``percentile``-th percentile (linear interpolation) of finite ``scores``."""
    if not (0.0 <= percentile <= 100.0):
        raise ConfigError(f"percentile must be in [0, 100], got {percentile}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise DataError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise DataError("scores contain NaN or Inf")
    return float(np.percentile(s, percentile))


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores > threshold``; oracle, for reporting only."""
    y = _binary(y_true, "y_true")
    s = _scores(scores, len(y))
    n_pos = int(y.sum())
    if n_pos == 0:
        raise DataError("best_f1_threshold needs at least one positive")
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]  # last index of each distinct score
    tp = np.cumsum(yy)[last]
    pred = last + 1
    f1 = 2 * tp / (pred + n_pos)
    k = int(np.argmax(f1))
    # predicting "score > t" with t just below ss[last[k]] == the next distinct score (or -inf)
    thr = float(ss[last[k] + 1]) if last[k] + 1 < len(ss) else float(np.nextafter(ss[-1], -np.inf))
    return thr, float(f1[k])
