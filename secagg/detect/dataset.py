"""The :class:`Dataset` container shared by every loader, and where the shipped data lives.

A ``Dataset`` is a dense float32 feature matrix with binary labels (0 benign, 1 attack),
the detailed label strings, optional natural-partition keys (host/device) and the paths it
was read from. It is validated on construction: shapes agree and every feature is finite,
so nothing downstream needs to re-check for NaN/Inf.

Threat model / guarantees: none (plain data container). Costs: O(n * d) memory, float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secagg.errors import DataError

DATA_ENV_VAR = "SECAGG_DATA"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features and labels of one intrusion-detection data set.

    Attributes
    ----------
    name: data set name (``cicids2017``, ``iot23``, ``nbaiot`` or a user label).
    X: ``float32`` array of shape ``(n, d)``, all finite (not yet scaled).
    y: ``int64`` array of shape ``(n,)``: 0 benign, 1 attack.
    labels: ``(n,)`` object array of the detailed label strings (e.g. ``"DDoS"``, ``"BENIGN"``).
    groups: ``(n,)`` object array of natural-partition keys (host, device, ...) or ``None``
        when the data has no meaningful one.
    feature_names: ``d`` column names, in the order of ``X``'s columns.
    source: the files the rows were read from.
    meta: loader notes (e.g. how many non-finite cells were replaced, dropped columns).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    feature_names: tuple[str, ...]
    source: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        X = np.ascontiguousarray(self.X, dtype=np.float32)
        y = np.asarray(self.y).astype(np.int64, copy=False)
        labels = np.asarray(self.labels, dtype=object)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        object.__setattr__(self, "source", tuple(str(s) for s in self.source))
        where = f"{self.name} ({', '.join(self.source) or 'in memory'})"
        if X.ndim != 2:
            raise DataError(f"{where}: X must be 2-D (n, d), got shape {X.shape}")
        n, d = X.shape
        if n == 0 or d == 0:
            raise DataError(f"{where}: no rows or no feature columns (shape {X.shape})")
        if y.shape != (n,) or labels.shape != (n,):
            raise DataError(f"{where}: y {y.shape} / labels {labels.shape} do not match X rows {n}")
        if not np.isin(y, (0, 1)).all():
            raise DataError(f"{where}: y must contain only 0 (benign) and 1 (attack)")
        if len(self.feature_names) != d:
            raise DataError(f"{where}: {len(self.feature_names)} feature names for {d} columns")
        if not np.isfinite(X).all():
            bad = sorted({self.feature_names[j] for j in np.nonzero(~np.isfinite(X))[1]})
            raise DataError(f"{where}: non-finite feature values in {bad}")
        if self.groups is not None:
            g = np.asarray(self.groups, dtype=object)
            if g.shape != (n,):
                raise DataError(f"{where}: groups shape {g.shape} does not match {n} rows")
            object.__setattr__(self, "groups", g)

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def label_counts(self) -> dict[str, int]:
        """Detailed label -> number of rows."""
        keys, counts = np.unique(self.labels.astype(str), return_counts=True)
        return {str(k): int(c) for k, c in zip(keys, counts)}

    def subset(self, idx: np.ndarray) -> "Dataset":
        """Rows ``idx`` (in the given order) as a new Dataset sharing names and sources."""
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(
            name=self.name,
            X=self.X[idx],
            y=self.y[idx],
            labels=self.labels[idx],
            groups=None if self.groups is None else self.groups[idx],
            feature_names=self.feature_names,
            source=self.source,
            meta=dict(self.meta),
        )


def default_data_dir() -> Path:
    """Directory holding the shipped samples (``cicids2017/``, ``iot23/``, ``nbaiot/``).

    Order: ``$SECAGG_DATA`` if set; else the first ``shared/data`` found beside an ancestor
    of this source file or of the current directory (a checkout at ``X/main`` finds
    ``X/shared/data``; a fresh clone anywhere with ``shared/`` beside it works too).
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise DataError(f"{DATA_ENV_VAR}={env!r} is not a directory")
        return p
    starts = [Path(__file__).resolve().parent, Path.cwd().resolve()]
    tried: list[str] = []
    for start in starts:
        for anc in (start, *start.parents):
            for cand in (anc / "shared" / "data", anc.parent / "shared" / "data"):
                if cand.is_dir():
                    return cand
            tried.append(str(anc))
    raise DataError(
        "could not find the shipped data directory 'shared/data' beside the checkout "
        f"(searched upward from {starts[0]} and {starts[1]}); set the environment variable "
        f"{DATA_ENV_VAR}=/path/to/shared/data or pass --data PATH"
    )
