"""FLTrust-style trust scores with a reputation that persists across rounds.

Follows Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping" (NDSS 2021), extended with a per-client reputation (exponential moving
average of the trust score over the rounds the client took part in).

Threat model: any number of clients may be malicious; the server is honest and holds a
small *clean root set* of its own, from which it computes a reference update ``g0`` each
round (a user-supplied callable). Guarantee (empirical, as in the paper): an update whose
direction disagrees with ``g0`` (cosine <= 0) gets weight 0 in that round, and no update can
contribute more than ``||g0||`` in norm, so scaling/boosting attacks are neutralised; the
result is only as good as the root set is representative.

Per round, for each client update ``g_i``:

    ts_i  = ReLU(cos(g_i, g0))                         # trust score in [0, 1]
    rep_i = decay * rep_i(previous) + (1 - decay) * ts_i   # first round: rep_i = ts_i
    w_i   = rep_i if rep_i >= threshold else 0          # excluded below the threshold
    g~_i  = g_i * ||g0|| / ||g_i||                      # magnitude normalisation
    delta = sum_i w_i g~_i / sum_i w_i

:class:`TrustScoreAggregator` needs each update in the clear (``needs_individual_updates``).
Under secure aggregation / HE only weights fixed *before* masking are possible:
:class:`PreMaskTrustWeighting` has each client multiply its own update by a weight the
server announced beforehand (e.g. reputations from earlier audited rounds), and rescales
the sum afterwards; it composes with any aggregator that returns the example-weighted mean.

Costs: O(n d) per round plus one root update; reputation memory O(number of clients).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from secagg.errors import ConfigError, DataError, NotEnoughClientsError
from secagg.fl.aggregator import AggregateResult, Aggregator, ClientUpdate, check_updates, serialize_vector
from secagg.fl.robust import check_compatible, hides_individual_updates, needs_individual_updates

__all__ = ["PreMaskTrustWeighting", "RootSetTrainer", "TrustScoreAggregator", "trust_scores"]

RootUpdateFn = Callable[[int], np.ndarray]


def trust_scores(deltas: np.ndarray, root: np.ndarray) -> np.ndarray:
    """ReLU-clipped cosine similarity of each row of ``deltas`` with ``root`` (0 for zero rows)."""
    x = np.asarray(deltas, dtype=np.float64)
    g0 = np.asarray(root, dtype=np.float64)
    n0 = float(np.linalg.norm(g0))
    if n0 == 0.0:
        raise DataError("trust_scores: the root update is all zeros; cannot measure agreement")
    norms = np.linalg.norm(x, axis=1)
    cos = np.where(norms > 0, (x @ g0) / np.maximum(norms, 1e-300) / n0, 0.0)
    return np.maximum(cos, 0.0)


class TrustScoreAggregator(Aggregator):
    """FLTrust aggregation with a persistent reputation (see the module docstring).

    ``root_update_fn(round_index) -> np.ndarray``: the server's update on its clean root set,
    computed from the current global model (e.g. :class:`RootSetTrainer`). If the callable
    has an ``advance(delta)`` method it is called with each aggregate this returns, so it can
    track the global model.
    ``decay`` in [0, 1): weight of the previous reputation (0 = memoryless, plain FLTrust).
    ``threshold`` in [0, 1]: clients whose reputation is below it are excluded.
    ``weighted``: also multiply by the client's example count.
    Raises :class:`NotEnoughClientsError` (state unchanged) if every client is excluded.
    """

    name = "fltrust"
    needs_individual_updates = True

    def __init__(self, root_update_fn: RootUpdateFn, *, decay: float = 0.5, threshold: float = 0.0,
                 weighted: bool = False) -> None:
        if not callable(root_update_fn):
            raise ConfigError("root_update_fn must be callable: round_index -> root update vector")
        if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
            raise ConfigError(f"decay (reputation memory) must be in [0, 1), got {decay!r}")
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ConfigError(f"threshold (minimum reputation) must be in [0, 1], got {threshold!r}")
        self.root_update_fn = root_update_fn
        self.decay = float(decay)
        self.threshold = float(threshold)
        self.weighted = bool(weighted)
        self.reputation: dict[int, float] = {}

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        d = check_updates(updates)
        g0 = np.asarray(self.root_update_fn(round_index), dtype=np.float64)
        if g0.shape != (d,):
            raise DataError(f"fltrust: root update has shape {g0.shape}, client updates have length {d}")
        if not np.all(np.isfinite(g0)):
            raise DataError("fltrust: root update contains NaN or Inf")
        x = np.stack([np.asarray(u.delta, dtype=np.float64) for u in updates])
        ts = trust_scores(x, g0)
        rep = np.array([
            ts[i] if u.client_id not in self.reputation
            else self.decay * self.reputation[u.client_id] + (1.0 - self.decay) * ts[i]
            for i, u in enumerate(updates)
        ])
        w = np.where(rep >= self.threshold, rep, 0.0)
        if self.weighted:
            w = w * np.array([u.num_examples for u in updates], dtype=np.float64)
        if not np.any(w > 0):
            raise NotEnoughClientsError(
                f"fltrust round {round_index}: all {len(updates)} clients have zero trust or reputation below "
                f"threshold={self.threshold}; nothing aggregated"
            )
        norms = np.linalg.norm(x, axis=1)
        n0 = float(np.linalg.norm(g0))
        scaled = x * (n0 / np.maximum(norms, 1e-300))[:, None]
        delta = (w[:, None] * scaled).sum(axis=0) / w.sum()
        included = tuple(u.client_id for u, wi in zip(updates, w) if wi > 0)
        for u, r in zip(updates, rep):
            self.reputation[u.client_id] = float(r)
        out = delta.astype(np.float32)
        advance = getattr(self.root_update_fn, "advance", None)
        if callable(advance):
            advance(out)
        return AggregateResult(
            delta=out,
            included=included,
            upload_bytes={u.client_id: len(serialize_vector(u.delta)) for u in updates},
            download_bytes={u.client_id: 0 for u in updates},
            metrics={"mean_trust": float(ts.mean()), "excluded": float(len(updates) - len(included)),
                     "mean_reputation": float(rep.mean())},
        )


class RootSetTrainer:
    """Root update for :class:`TrustScoreAggregator`: train a copy of the global model on the
    server's clean root set and return its delta.

    Tracks the global model itself: it starts from ``detector_factory()``'s parameters (the
    same initial model the core uses) and :meth:`advance` applies each aggregate with
    ``server_lr`` -- keep ``server_lr`` equal to the core's ``FedConfig.server_lr``.
    ``detector_factory()`` must return an object with ``.module`` (torch) and
    ``train_epochs(X, y, epochs=, batch_size=, lr=)``, as the detectors in :mod:`secagg.detect`.
    """

    def __init__(self, detector_factory: Callable[[], Any], X_root: np.ndarray, y_root: np.ndarray, *,
                 epochs: int = 1, batch_size: int = 64, lr: float = 1e-3, server_lr: float = 1.0) -> None:
        from secagg.fl.params import flatten

        X_root = np.asarray(X_root, dtype=np.float32)
        y_root = np.asarray(y_root)
        if X_root.ndim != 2 or y_root.shape != (X_root.shape[0],) or X_root.shape[0] == 0:
            raise DataError(f"root set: need non-empty X (rows, features) and y (rows,), got {X_root.shape}, {y_root.shape}")
        self.detector = detector_factory()
        self.X, self.y = X_root, y_root
        self.epochs, self.batch_size, self.lr, self.server_lr = int(epochs), int(batch_size), float(lr), float(server_lr)
        self.global_params = flatten(self.detector.module)

    def __call__(self, round_index: int) -> np.ndarray:
        from secagg.fl.params import flatten, unflatten

        unflatten(self.detector.module, self.global_params)
        self.detector.train_epochs(self.X, self.y, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        return flatten(self.detector.module) - self.global_params

    def advance(self, delta: np.ndarray) -> None:
        self.global_params = (self.global_params + self.server_lr * np.asarray(delta, dtype=np.float32)).astype(np.float32)


WeightSource = Union[Mapping[int, float], Callable[[int], Mapping[int, float]]]


class PreMaskTrustWeighting(Aggregator):
    """Trust weights fixed before masking, so they compose with secure aggregation / HE.

    ``weights``: a mapping client_id -> weight >= 0, or a callable ``round_index -> mapping``,
    known to the clients before the round (missing clients get ``default_weight``). Clients
    with weight 0 are left out of the round; every other client multiplies its own delta by
    its weight before masking, ``inner`` (which must return the example-weighted mean over
    its ``included`` clients, as every aggregator in secagg does) sums them, and the server
    rescales the result by ``sum(n_i) / sum(n_i w_i)`` over the included clients, giving
    ``sum n_i w_i d_i / sum n_i w_i``. The server never needs an individual update.
    """

    def __init__(self, inner: Aggregator, weights: WeightSource, *, default_weight: float = 1.0) -> None:
        if not (math.isfinite(default_weight) and default_weight >= 0):
            raise ConfigError(f"default_weight must be >= 0, got {default_weight!r}")
        self.inner = inner
        self.weights = weights
        self.default_weight = float(default_weight)
        check_compatible(self)
        self.needs_individual_updates = needs_individual_updates(inner)
        self.hides_individual_updates = hides_individual_updates(inner)
        self.name = f"premask_trust({getattr(inner, 'name', type(inner).__name__)})"

    def _weights(self, round_index: int) -> Mapping[int, float]:
        w = self.weights(round_index) if callable(self.weights) else self.weights
        return w

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        table = self._weights(round_index)
        wt: dict[int, float] = {}
        for u in updates:
            wi = float(table.get(u.client_id, self.default_weight))
            if not (math.isfinite(wi) and wi >= 0):
                raise ConfigError(f"trust weight of client {u.client_id} must be a finite number >= 0, got {wi!r}")
            wt[u.client_id] = wi
        kept = [u for u in updates if wt[u.client_id] > 0]
        if not kept:
            raise NotEnoughClientsError(f"round {round_index}: every client has trust weight 0; nothing aggregated")
        scaled = [ClientUpdate(u.client_id, (np.asarray(u.delta, np.float64) * wt[u.client_id]).astype(np.float32),
                               u.num_examples) for u in kept]
        res = self.inner.aggregate(scaled, round_index=round_index)
        inc = set(res.included)
        n_sum = sum(u.num_examples for u in kept if u.client_id in inc)
        nw_sum = sum(u.num_examples * wt[u.client_id] for u in kept if u.client_id in inc)
        if nw_sum <= 0:
            raise NotEnoughClientsError(f"round {round_index}: no weighted client survived the inner aggregation")
        delta = (np.asarray(res.delta, np.float64) * (n_sum / nw_sum)).astype(np.float32)
        metrics = dict(res.metrics)
        metrics["excluded_by_trust"] = float(len(updates) - len(kept))
        return AggregateResult(delta=delta, included=res.included, upload_bytes=dict(res.upload_bytes),
                               download_bytes=dict(res.download_bytes), metrics=metrics)
