"""Train/validation/test splitting and feature scaling fitted on training data only.

* :func:`train_val_test_split` -> :class:`Split` of sorted index arrays (sorted so a subset
  keeps the original flow order, which the windowed LSTM relies on). Stratified by label
  by default. Deterministic in ``seed`` (``numpy.random.default_rng``; simulation only).
* :class:`StandardScaler`: ``z = (t(x) - mean) / std`` with ``t = sign(x) * log1p(|x|)`` when
  ``log1p=True`` (default). Flow features (bytes, packets, durations, rates) are heavy-tailed
  over 6+ orders of magnitude; without the log a handful of huge flows dominate the
  autoencoder's squared error. Constant columns get ``std = 1`` (they map to 0, no
  division by zero). Fitted on the training rows only; never refit on validation/test.
* :func:`prepare` does split + scale in one call and returns :class:`Prepared`.

Costs: O(n * d) time and memory. No privacy guarantee: in a federated deployment the
scaler statistics are a (small) aggregate of client data; compute them with the secure
aggregation layer if they must stay private.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secagg.detect.dataset import Dataset
from secagg.errors import ConfigError, DataError


@dataclass(frozen=True)
class Split:
    """Sorted, disjoint row-index arrays covering the data set."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def train_val_test_split(
    ds: Dataset | np.ndarray,
    seed: int = 0,
    *,
    val: float = 0.15,
    test: float = 0.25,
    stratify: bool = True,
) -> Split:
    """Split rows into train/val/test index arrays.

    ``ds``: a Dataset or its label vector ``y``. ``val``/``test``: fractions in [0, 1) with
    ``val + test < 1``. With ``stratify`` each label keeps its proportion in every part
    (per label: ``round(n_label * test)`` test rows, ``round(n_label * val)`` val rows).
    """
    y = ds.y if isinstance(ds, Dataset) else np.asarray(ds)
    if y.ndim != 1 or len(y) == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    for nm, v in (("val", val), ("test", test)):
        if not (0.0 <= v < 1.0):
            raise ConfigError(f"{nm} fraction must be in [0, 1), got {v}")
    if val + test >= 1.0:
        raise ConfigError(f"val + test must be < 1, got {val} + {test}")
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    tr, va, te = [], [], []
    for idx in strata:
        idx = rng.permutation(idx)
        n_te = int(round(len(idx) * test))
        n_va = int(round(len(idx) * val))
        te.append(idx[:n_te])
        va.append(idx[n_te:n_te + n_va])
        tr.append(idx[n_te + n_va:])
    out = Split(*(np.sort(np.concatenate(p)).astype(np.int64) for p in (tr, va, te)))
    if len(out.train) == 0:
        raise DataError(f"split left no training rows ({len(y)} rows, val={val}, test={test})")
    return out


class StandardScaler:
    """Per-column standardisation (optionally after a signed log1p), numpy only."""

    def __init__(self, *, log1p: bool = True) -> None:
        self.log1p = bool(log1p)
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def _t(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise DataError(f"scaler input must be 2-D (n, d), got shape {X.shape}")
        if not np.isfinite(X).all():
            raise DataError("scaler input contains NaN or Inf")
        return np.sign(X) * np.log1p(np.abs(X)) if self.log1p else X

    def fit(self, X: np.ndarray) -> "StandardScaler":
        T = self._t(X)
        if T.shape[0] == 0:
            raise DataError("cannot fit a scaler on zero rows")
        self.mean_ = T.mean(axis=0)
        std = T.std(axis=0)
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.mean_ is None or self.scale_ is None:
            raise ConfigError("StandardScaler.transform called before fit")
        T = self._t(X)
        if T.shape[1] != self.mean_.shape[0]:
            raise DataError(f"scaler was fitted on {self.mean_.shape[0]} columns, got {T.shape[1]}")
        return ((T - self.mean_) / self.scale_).astype(np.float32)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)


@dataclass(frozen=True)
class Prepared:
    """Scaled train/val/test arrays of one split (scaler fitted on ``X_train`` rows only)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    groups_train: np.ndarray | None
    split: Split
    scaler: StandardScaler
    duplicates_dropped: int = 0


def duplicate_rows(X: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose feature vector already occurred in an earlier row.

    Flow captures repeat identical feature vectors (on the IoT-23 sample 18,430 of 23,145
    flows repeat an earlier one: scans and floods produce the same short flow over and over).
    A random split then puts copies of training rows into the test set, so test metrics
    partly measure memorisation; ``prepare(..., dedup=True)`` drops them before splitting.
    """
    X = np.ascontiguousarray(X)
    rows = X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    mask = np.ones(len(rows), dtype=bool)
    mask[first] = False
    return mask


def prepare(
    ds: Dataset,
    seed: int = 0,
    *,
    val: float = 0.15,
    test: float = 0.25,
    stratify: bool = True,
    log1p: bool = True,
    dedup: bool = False,
) -> Prepared:
    """Split ``ds`` and scale all parts with a scaler fitted on the training rows only.

    ``dedup=True`` first keeps only the first row of each distinct feature vector (see
    :func:`duplicate_rows`), so no test row is a copy of a training row; the split indices
    then refer to the de-duplicated rows and ``duplicates_dropped`` says how many went.
    """
    dropped = 0
    if dedup:
        dup = duplicate_rows(ds.X)
        dropped = int(dup.sum())
        ds = ds.subset(np.flatnonzero(~dup))
    sp = train_val_test_split(ds, seed, val=val, test=test, stratify=stratify)
    sc = StandardScaler(log1p=log1p).fit(ds.X[sp.train])
    return Prepared(
        X_train=sc.transform(ds.X[sp.train]),
        y_train=ds.y[sp.train],
        X_val=sc.transform(ds.X[sp.val]),
        y_val=ds.y[sp.val],
        X_test=sc.transform(ds.X[sp.test]),
        y_test=ds.y[sp.test],
        groups_train=None if ds.groups is None else ds.groups[sp.train],
        split=sp,
        scaler=sc,
        duplicates_dropped=dropped,
    )
