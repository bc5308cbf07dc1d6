"""Small torch anomaly/intrusion detectors for IoT flows, all behind one :class:`Detector` interface.

Detectors (``make_detector(name, n_features, seed=..., **hparams)``):

* ``ae``   :class:`AutoencoderDetector`, dense ``d -> 64 -> 16 -> 64 -> d`` (ReLU), trained on
  **benign rows only** (``y == 0``; unsupervised/one-class). Score = per-row mean squared
  reconstruction error. Threshold = a percentile (default 95) of the scores of benign
  *validation* rows, so the expected false-positive rate is about 100 - percentile %.
  (Mirsky et al., Kitsune, NDSS 2018; Meidan et al., N-BaIoT 2018.)
* ``mlp``  :class:`MLPDetector`, supervised ``d -> 64 -> 32 -> 1`` classifier, BCE loss.
* ``cnn``  :class:`CNNDetector`, supervised 1-D CNN over the feature vector (2 conv layers,
  8 and 16 channels, kernel 5, adaptive max-pool to 8, dense 128 -> 32 -> 1).
* ``lstm`` :class:`LSTMDetector`, supervised LSTM (hidden 32) over a window of ``window``
  consecutive flows; the score of flow ``i`` uses rows ``i-window+1 .. i`` of the array
  passed in, in the order given (keep rows in capture order: the split and partition
  helpers return sorted indices). The first ``window-1`` rows are padded with zero rows
  (= the training mean after standardisation).

Classifier scores are P(attack); their threshold is 0.5 unless ``decision_threshold`` is
given. Parameter counts for d = 77 (defaults): ae 12,125; mlp 7,105; cnn 4,865; lstm 14,241.

Training (:meth:`Detector.train_epochs`) uses Adam (a fresh optimiser per call, as a
federated client does each round), mini-batches shuffled by a ``torch.Generator`` seeded
from ``seed`` and a per-detector call counter, so two detectors built with the same seed and
fed the same calls produce bit-identical weights on CPU. Module weights are initialised
under ``torch.random.fork_rng`` seeded with ``seed`` (global RNG state is untouched).
FedProx (Li et al., MLSys 2020): with ``prox_mu > 0`` the loss gets
``(mu/2) * ||w - w_center||^2`` (``prox_center``: tensors in ``module.parameters()`` order).

Threat model: none (plain models). Costs: O(epochs * n * params) time on CPU.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from secagg.detect.metrics import detection_metrics, threshold_at_percentile
from secagg.errors import ConfigError, DataError

_SCORE_BATCH = 4096


class Detector(abc.ABC):
    """Common train / score / calibrate / predict / evaluate interface."""

    name: ClassVar[str]
    supervised: ClassVar[bool]

    def __init__(self, n_features: int, *, seed: int = 0, decision_threshold: float | None = None) -> None:
        if not isinstance(n_features, (int, np.integer)) or n_features < 1:
            raise ConfigError(f"n_features must be an integer >= 1, got {n_features!r}")
        self.n_features = int(n_features)
        self.seed = int(seed)
        self._calls = 0
        self.threshold: float | None = None if decision_threshold is None else float(decision_threshold)
        self._fixed_threshold = self.threshold
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.module: nn.Module = self._build()

    # --- subclass hooks ---------------------------------------------------------------
    @abc.abstractmethod
    def _build(self) -> nn.Module: ...

    def _inputs(self, X: torch.Tensor) -> torch.Tensor:
        """Model inputs for every row of X (LSTM: windows). Row i of the result scores flow i."""
        return X

    @abc.abstractmethod
    def _batch_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _batch_score(self, xb: torch.Tensor) -> torch.Tensor: ...

    # --- validation ---------------------------------------------------------------------
    def _check_X(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise DataError(f"X must have shape (n, {self.n_features}), got {X.shape}")
        if not np.isfinite(X).all():
            raise DataError("X contains NaN or Inf")
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))

    @staticmethod
    def _check_y(y: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise DataError(f"y shape {y.shape} does not match X rows ({n},)")
        if not np.isin(y, (0, 1)).all():
            raise DataError("y must contain only 0 (benign) and 1 (attack)")
        return y.astype(np.int64)

    def n_training_rows(self, y: np.ndarray) -> int:
        """Rows :meth:`train_epochs` would train on (AE: benign rows only) - the FedAvg weight."""
        y = np.asarray(y)
        return int(len(y) if self.supervised else (y == 0).sum())

    # --- public API ---------------------------------------------------------------------
    def train_epochs(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 1,
        batch_size: int = 64,
        lr: float = 1e-3,
        prox_mu: float = 0.0,
        prox_center: Sequence[torch.Tensor] | None = None,
    ) -> float:
        """Train in place; return the mean data loss (without the prox term) of the last epoch."""
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        if not (lr > 0):
            raise ConfigError(f"lr must be > 0, got {lr}")
        if prox_mu < 0:
            raise ConfigError(f"prox_mu must be >= 0, got {prox_mu}")
        params = list(self.module.parameters())
        center: list[torch.Tensor] | None = None
        if prox_mu > 0:
            if prox_center is None:
                raise ConfigError("prox_mu > 0 needs prox_center (the global model's parameters)")
            center = [torch.as_tensor(c, dtype=torch.float32).detach() for c in prox_center]
            if len(center) != len(params) or any(c.shape != p.shape for c, p in zip(center, params)):
                raise ConfigError("prox_center must match module.parameters() in number and shapes")
        Xt = self._check_X(X)
        yn = self._check_y(y, Xt.shape[0])
        rows = np.arange(len(yn)) if self.supervised else np.flatnonzero(yn == 0)
        if len(rows) == 0:
            raise DataError(f"{self.name}: no training rows (the autoencoder trains on benign rows only)")
        inputs = self._inputs(Xt)
        rows_t = torch.from_numpy(rows)
        yt = torch.from_numpy(yn.astype(np.float32))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
        self._calls += 1
        opt = torch.optim.Adam(params, lr=lr)
        self.module.train()
        last = float("nan")
        for _ in range(epochs):
            perm = rows_t[torch.randperm(len(rows_t), generator=gen)]
            total, count = 0.0, 0
            for start in range(0, len(perm), batch_size):
                b = perm[start:start + batch_size]
                loss = self._batch_loss(inputs[b], yt[b])
                full = loss
                if center is not None:
                    full = loss + 0.5 * prox_mu * sum(((p - c) ** 2).sum() for p, c in zip(params, center))
                opt.zero_grad(set_to_none=True)
                full.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                count += len(b)
            last = total / count
        self.module.eval()
        return last

    @torch.no_grad()
    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row, higher = more anomalous (float64)."""
        Xt = self._check_X(X)
        inputs = self._inputs(Xt)
        self.module.eval()
        out = [self._batch_score(inputs[i:i + _SCORE_BATCH]) for i in range(0, len(inputs), _SCORE_BATCH)]
        s = torch.cat(out).double().numpy() if out else np.zeros(0)
        if not np.isfinite(s).all():
            raise DataError(f"{self.name}: model produced non-finite scores (diverged training?)")
        return s

    def calibrate(self, X_val: np.ndarray, y_val: np.ndarray, *, percentile: float = 95.0) -> float:
        """Set and return :attr:`threshold` (classifiers: ``decision_threshold`` or 0.5)."""
        self.threshold = 0.5 if self._fixed_threshold is None else self._fixed_threshold
        return self.threshold

    def predict(self, X: np.ndarray) -> np.ndarray:
        """0/1 per row: ``score > threshold``."""
        if self.threshold is None:
            raise ConfigError(f"{self.name}: no threshold; call calibrate() first")
        return (self.score(X) > self.threshold).astype(np.int64)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict:
        """:func:`~secagg.detect.metrics.detection_metrics` on (X, y) at the current threshold."""
        if self.threshold is None:
            raise ConfigError(f"{self.name}: no threshold; call calibrate() first")
        s = self.score(X)
        y = self._check_y(y, len(s))
        return detection_metrics(y, (s > self.threshold).astype(np.int64), s)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


class AutoencoderDetector(Detector):
    """Dense autoencoder trained on benign rows; score = reconstruction MSE per row."""

    name = "ae"
    supervised = False

    def __init__(self, n_features: int, *, seed: int = 0, hidden: Sequence[int] = (64, 16),
                 decision_threshold: float | None = None) -> None:
        self.hidden = tuple(int(h) for h in hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden sizes must be >= 1, got {hidden}")
        super().__init__(n_features, seed=seed, decision_threshold=decision_threshold)

    def _build(self) -> nn.Module:
        sizes = [self.n_features, *self.hidden, *reversed(self.hidden[:-1]), self.n_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def _batch_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return ((self.module(xb) - xb) ** 2).mean()

    def _batch_score(self, xb: torch.Tensor) -> torch.Tensor:
        return ((self.module(xb) - xb) ** 2).mean(dim=1)

    def calibrate(self, X_val: np.ndarray, y_val: np.ndarray, *, percentile: float = 95.0) -> float:
        if self._fixed_threshold is not None:
            self.threshold = self._fixed_threshold
            return self.threshold
        s = self.score(X_val)
        y = self._check_y(y_val, len(s))
        benign = s[y == 0]
        if len(benign) == 0:
            raise DataError("autoencoder calibration needs benign validation rows (y == 0), got none")
        self.threshold = threshold_at_percentile(benign, percentile)
        return self.threshold


class _Classifier(Detector):
    supervised = True

    def _logits(self, xb: torch.Tensor) -> torch.Tensor:
        return self.module(xb).squeeze(-1)

    def _batch_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self._logits(xb), yb)

    def _batch_score(self, xb: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._logits(xb))


class MLPDetector(_Classifier):
    """Supervised dense classifier ``d -> hidden... -> 1``; score = P(attack)."""

    name = "mlp"

    def __init__(self, n_features: int, *, seed: int = 0, hidden: Sequence[int] = (64, 32),
                 decision_threshold: float | None = None) -> None:
        self.hidden = tuple(int(h) for h in hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden sizes must be >= 1, got {hidden}")
        super().__init__(n_features, seed=seed, decision_threshold=decision_threshold)

    def _build(self) -> nn.Module:
        sizes = [self.n_features, *self.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        return nn.Sequential(*layers)


class _CNN(nn.Module):
    def __init__(self, channels: tuple[int, int], kernel: int, pooled: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv1d(1, c1, kernel, padding=kernel // 2), nn.ReLU(),
            nn.Conv1d(c1, c2, kernel, padding=kernel // 2), nn.ReLU(),
            nn.AdaptiveMaxPool1d(pooled),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * pooled, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.unsqueeze(1)))


class CNNDetector(_Classifier):
    """Supervised 1-D CNN over the (scaled) feature vector; score = P(attack)."""

    name = "cnn"

    def __init__(self, n_features: int, *, seed: int = 0, channels: tuple[int, int] = (8, 16),
                 kernel: int = 5, pooled: int = 8, decision_threshold: float | None = None) -> None:
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"kernel must be an odd integer >= 1, got {kernel}")
        self.channels = (int(channels[0]), int(channels[1]))
        self.kernel = int(kernel)
        self.pooled = int(pooled)
        super().__init__(n_features, seed=seed, decision_threshold=decision_threshold)

    def _build(self) -> nn.Module:
        return _CNN(self.channels, self.kernel, self.pooled)


class _LSTM(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :])


class LSTMDetector(_Classifier):
    """Supervised LSTM over windows of ``window`` consecutive flows; score of flow i = P(attack)."""

    name = "lstm"

    def __init__(self, n_features: int, *, seed: int = 0, window: int = 8, hidden: int = 32,
                 decision_threshold: float | None = None) -> None:
        if window < 1 or hidden < 1:
            raise ConfigError(f"window and hidden must be >= 1, got {window}, {hidden}")
        self.window = int(window)
        self.hidden_size = int(hidden)
        super().__init__(n_features, seed=seed, decision_threshold=decision_threshold)

    def _build(self) -> nn.Module:
        return _LSTM(self.n_features, self.hidden_size)

    def _inputs(self, X: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(self.window - 1, X.shape[1], dtype=X.dtype)
        # (n, d, window) view -> (n, window, d); row i = flows i-window+1 .. i
        return torch.cat([pad, X]).unfold(0, self.window, 1).transpose(1, 2)


DETECTORS: dict[str, type[Detector]] = {
    "ae": AutoencoderDetector,
    "mlp": MLPDetector,
    "cnn": CNNDetector,
    "lstm": LSTMDetector,
}


def make_detector(name: str, n_features: int, seed: int = 0, **hparams) -> Detector:
    """Build detector ``name`` (``ae``, ``mlp``, ``cnn``, ``lstm``) with ``hparams`` for its class."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ConfigError(f"model must be one of {tuple(DETECTORS)}, got {name!r}") from None
    try:
        return cls(n_features, seed=seed, **hparams)
    except TypeError as e:
        raise ConfigError(f"bad hyperparameters for model {name!r}: {e}") from e
