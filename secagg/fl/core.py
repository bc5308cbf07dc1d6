"""The FedAvg / FedProx core: a simulated server driving rounds over in-process clients.

Each round (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data"; FedProx: Li et al. 2020):

1. the server samples clients: ``client_sampling="fixed"`` takes ``ceil(client_fraction * N)``
   distinct clients (at least ``min_clients``); ``"poisson"`` includes each client
   independently with probability ``client_fraction`` (the sampling that DP accountants
   assume for add/remove neighbours, e.g. ``CentralDPAggregator(sampling="poisson",
   sampling_rate=client_fraction)``; a round may then sample fewer than ``min_clients``);
2. it broadcasts the global parameters (a serialized float32 vector, counted as bytes
   downloaded by every sampled client, except clients that the last round's aggregator
   already gave the means to rebuild the model, see ``AggregateResult.delivers_model``);
3. each sampled client fails independently with probability ``dropout`` (simulated
   after the download, during local training);
4. each survivor trains ``local_epochs`` epochs from the global parameters, with the
   FedProx proximal term ``mu/2 * ||w - w_global||^2`` when ``prox_mu > 0``
   (``prox_mu == 0`` is exactly FedAvg), and uploads its delta ``w_local - w_global``;
5. the :class:`~secagg.fl.aggregator.Aggregator` combines the deltas (plaintext mean,
   secure aggregation, HE, DP or a robust rule) and the server applies
   ``w_global += server_lr * aggregate``.

If fewer than ``min_clients`` survive, or the aggregator fails, the round raises and the
global model is left exactly as it was before the round. With ``skip_failed_rounds=True``,
:func:`run_federated` instead records a round that failed for too few clients
(:class:`~secagg.errors.NotEnoughClientsError`, e.g. a secure-aggregation round that lost
more clients than its threshold allows) as failed and goes on, as deployed FL servers do.

Units: bytes are serialized payload sizes actually produced (``serialize_vector`` for
plaintext; the aggregator's own messages otherwise), per client per round.

Randomness here (client sampling, simulated dropout, weight init, shuffling) is
simulation randomness from seeded numpy/torch generators, never key material.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from secagg.errors import ConfigError, DataError, NotEnoughClientsError
from secagg.fl.aggregator import AggregateResult, Aggregator, ClientUpdate, deserialize_vector, serialize_vector
from secagg.fl.params import flatten, to_tensors, unflatten
from secagg.fl.robust import check_compatible

UpdateHook = Callable[[int, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class FedConfig:
    """Federated training configuration (validated on construction)."""

    rounds: int = 10
    client_fraction: float = 1.0
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    prox_mu: float = 0.0
    dropout: float = 0.0
    min_clients: int = 1
    server_lr: float = 1.0
    seed: int = 0
    threshold_percentile: float = 95.0
    eval_every: int = 1
    skip_failed_rounds: bool = False
    client_sampling: str = "fixed"

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.rounds, int) and self.rounds >= 1, f"rounds must be an int >= 1, got {self.rounds!r}")
        need(0.0 < self.client_fraction <= 1.0, f"client_fraction must be in (0, 1], got {self.client_fraction}")
        need(self.local_epochs >= 1, f"local_epochs must be >= 1, got {self.local_epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}")
        need(math.isfinite(self.prox_mu) and self.prox_mu >= 0, f"prox_mu must be >= 0, got {self.prox_mu}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.min_clients >= 1, f"min_clients must be >= 1, got {self.min_clients}")
        need(math.isfinite(self.server_lr) and self.server_lr > 0, f"server_lr must be > 0, got {self.server_lr}")
        need(0.0 < self.threshold_percentile < 100.0, f"threshold_percentile must be in (0, 100), got {self.threshold_percentile}")
        need(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        need(self.client_sampling in ("fixed", "poisson"),
             f"client_sampling must be 'fixed' or 'poisson', got {self.client_sampling!r}")


@dataclass
class ClientData:
    """One client's local data: features ``X`` (n, d) float32 and labels ``y`` (0 benign, 1 attack)."""

    client_id: int
    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float32)
        self.y = np.asarray(self.y).astype(np.int64)
        if self.X.ndim != 2:
            raise DataError(f"client {self.client_id}: X must be 2-D (rows, features), got shape {self.X.shape}")
        if self.y.shape != (self.X.shape[0],):
            raise DataError(f"client {self.client_id}: y shape {self.y.shape} does not match X rows {self.X.shape[0]}")
        if not np.all(np.isfinite(self.X)):
            raise DataError(f"client {self.client_id}: X contains NaN or Inf")

    def num_training_examples(self, supervised: bool) -> int:
        """Rows the detector trains on: all rows if supervised, benign rows for one-class detectors."""
        return int(self.X.shape[0] if supervised else np.count_nonzero(self.y == 0))


@dataclass
class RoundRecord:
    """What happened in one round (all byte counts per client, in bytes)."""

    round: int
    sampled: list[int]
    dropped: list[int]
    included: list[int]
    upload_bytes: dict[int, int]
    download_bytes: dict[int, int]
    train_loss: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    aggregator_metrics: dict[str, float] = field(default_factory=dict)
    failed: str = ""  # why the round produced no aggregate (skip_failed_rounds); "" if it succeeded

    @property
    def mean_upload_bytes(self) -> float:
        return float(np.mean(list(self.upload_bytes.values()))) if self.upload_bytes else 0.0

    @property
    def mean_download_bytes(self) -> float:
        return float(np.mean(list(self.download_bytes.values()))) if self.download_bytes else 0.0


@dataclass
class FederatedResult:
    """History of a federated run; ``detector`` holds the final global model."""

    rounds: list[RoundRecord]
    final_params: np.ndarray
    detector: Any
    config: FedConfig

    @property
    def final_metrics(self) -> dict[str, float]:
        for r in reversed(self.rounds):
            if r.metrics:
                return r.metrics
        return {}

    @property
    def failed_rounds(self) -> list[int]:
        return [r.round for r in self.rounds if r.failed]

    def to_dict(self) -> dict[str, Any]:
        rounds = []
        for r in self.rounds:
            d = asdict(r)
            d["upload_bytes"] = {str(k): v for k, v in r.upload_bytes.items()}
            d["download_bytes"] = {str(k): v for k, v in r.download_bytes.items()}
            d["mean_upload_bytes"] = r.mean_upload_bytes
            d["mean_download_bytes"] = r.mean_download_bytes
            rounds.append(d)
        return {"config": asdict(self.config), "final_metrics": self.final_metrics, "rounds": rounds}


class FederatedServer:
    """Holds the global model and runs rounds. State changes only when a round succeeds."""

    def __init__(
        self,
        detector_factory: Callable[[], Any],
        clients: Sequence[ClientData],
        aggregator: Aggregator,
        config: FedConfig,
        *,
        update_hook: Optional[UpdateHook] = None,
    ) -> None:
        if not clients:
            raise ConfigError("clients: need at least one client")
        ids = [c.client_id for c in clients]
        if len(set(ids)) != len(ids):
            raise ConfigError("clients: client ids must be unique")
        if config.min_clients > len(clients):
            raise ConfigError(f"min_clients={config.min_clients} exceeds the number of clients ({len(clients)})")
        check_compatible(aggregator)  # e.g. Krum inside secure aggregation is refused here
        self.clients = list(clients)
        self.aggregator = aggregator
        self.config = config
        self.update_hook = update_hook
        self.global_detector = detector_factory()
        self.worker = detector_factory()  # re-used for every client's local training
        self.global_params = flatten(self.global_detector.module)
        unflatten(self.worker.module, self.global_params)
        self.rng = np.random.default_rng(config.seed)
        self.history: list[RoundRecord] = []
        self.synced: set[int] = set()  # clients that already hold the current global model
        self.supervised = bool(getattr(self.global_detector, "supervised", False))

    # -- one round -------------------------------------------------------------------
    def sample_clients(self) -> list[ClientData]:
        n = len(self.clients)
        if self.config.client_sampling == "poisson":
            idx = np.flatnonzero(self.rng.random(n) < self.config.client_fraction)
        else:
            m = max(self.config.min_clients, math.ceil(self.config.client_fraction * n))
            idx = np.sort(self.rng.choice(n, size=min(m, n), replace=False))
        return [self.clients[i] for i in idx]

    def local_update(self, client: ClientData, round_index: int) -> tuple[ClientUpdate, float]:
        cfg = self.config
        unflatten(self.worker.module, self.global_params)
        center = to_tensors(self.worker.module, self.global_params) if cfg.prox_mu > 0 else None
        loss = self.worker.train_epochs(
            client.X, client.y, epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
            prox_mu=cfg.prox_mu, prox_center=center,
        )
        delta = flatten(self.worker.module) - self.global_params
        if self.update_hook is not None:
            delta = np.asarray(self.update_hook(client.client_id, delta, round_index), dtype=np.float32)
        n = client.num_training_examples(self.supervised)
        return ClientUpdate(client.client_id, delta.astype(np.float32), n), float(loss)

    def run_round(self, round_index: int) -> RoundRecord:
        """Run one round; on any error the global model is unchanged."""
        t0 = time.perf_counter()
        cfg = self.config
        sampled = self.sample_clients()
        broadcast = len(serialize_vector(self.global_params))
        fails = self.rng.random(len(sampled)) < cfg.dropout
        survivors = [c for c, f in zip(sampled, fails) if not f]
        trainable = [c for c in survivors if c.num_training_examples(self.supervised) > 0]
        if len(trainable) < cfg.min_clients:
            raise NotEnoughClientsError(
                f"round {round_index}: {len(trainable)} of {len(sampled)} sampled clients survived with training data, "
                f"fewer than min_clients={cfg.min_clients}; global model left unchanged"
            )
        updates, losses = [], []
        for c in trainable:
            u, loss = self.local_update(c, round_index)
            updates.append(u)
            losses.append(loss)
        res: AggregateResult = self.aggregator.aggregate(updates, round_index=round_index)
        new_params = (self.global_params + cfg.server_lr * np.asarray(res.delta, dtype=np.float32)).astype(np.float32)
        if new_params.shape != self.global_params.shape or not np.all(np.isfinite(new_params)):
            raise DataError(f"round {round_index}: aggregator returned an aggregate of wrong shape or non-finite values")
        self.global_params = new_params
        unflatten(self.global_detector.module, new_params)
        download = {c.client_id: (0 if c.client_id in self.synced else broadcast) + int(res.download_bytes.get(c.client_id, 0))
                    for c in sampled}
        self.synced = set(res.included) if res.delivers_model else set()
        rec = RoundRecord(
            round=round_index,
            sampled=[c.client_id for c in sampled],
            dropped=[c.client_id for c, f in zip(sampled, fails) if f],
            included=list(res.included),
            upload_bytes={int(k): int(v) for k, v in res.upload_bytes.items()},
            download_bytes=download,
            train_loss=float(np.average(losses, weights=[u.num_examples for u in updates])),
            seconds=time.perf_counter() - t0,
            aggregator_metrics=dict(res.metrics),
        )
        self.history.append(rec)
        return rec

    def set_global(self, params: np.ndarray) -> None:
        """Replace the global model (e.g. from a checkpoint); DataError if it does not fit."""
        unflatten(self.global_detector.module, params)  # validates length and finiteness first
        self.global_params = np.asarray(params, dtype=np.float32).copy()

    def evaluate(self, X_val, y_val, X_test, y_test) -> dict[str, float]:
        """Calibrate the global detector's threshold on validation data and score the test set."""
        self.global_detector.calibrate(X_val, y_val, percentile=self.config.threshold_percentile)
        return dict(self.global_detector.evaluate(X_test, y_test))


def run_federated(
    detector_factory: Callable[[], Any],
    clients: Sequence[ClientData],
    aggregator: Aggregator,
    config: FedConfig,
    *,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_test: Optional[np.ndarray] = None,
    y_test: Optional[np.ndarray] = None,
    update_hook: Optional[UpdateHook] = None,
    progress: bool = False,
    round_callback: Optional[Callable[[RoundRecord], None]] = None,
    checkpoint: Optional[str | os.PathLike] = None,
    start_round: int = 0,
) -> FederatedResult:
    """Train rounds ``start_round .. config.rounds - 1`` of FedAvg/FedProx; return the history.

    ``detector_factory()`` must return a fresh detector (see :mod:`secagg.detect.models`)
    with the same architecture and initial weights each call (same seed).
    Metrics are computed on ``(X_test, y_test)`` (default: the validation set) every
    ``eval_every`` rounds and after the last round.

    Resuming a killed run: with ``checkpoint=PATH`` the global model and the index of the
    last completed round are written atomically after every successful round, and a run
    that finds the file continues after that round from that model. With a privacy ledger,
    also pass ``start_round=ledger.next_round_index``: a round the ledger recorded (its
    privacy is spent) but whose model update was lost in the crash is then not re-run
    under the same index; training continues with the next one.
    The client sampling and dropout generator is re-seeded with ``(seed, first round)``.
    """
    if X_test is None:
        X_test, y_test = X_val, y_val
    server = FederatedServer(detector_factory, clients, aggregator, config, update_hook=update_hook)
    first = int(start_round)
    if checkpoint is not None and os.path.exists(checkpoint):
        done, params = load_checkpoint(checkpoint)
        server.set_global(params)
        first = max(first, done + 1)
    if not 0 <= first <= config.rounds:
        raise ConfigError(f"start_round={first} outside 0..rounds={config.rounds}")
    if first:
        server.rng = np.random.default_rng([config.seed, first])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds, initial=first, desc=f"FedAvg[{aggregator.name}]", unit="round")
    try:
        for r in range(first, config.rounds):
            try:
                rec = server.run_round(r)
            except NotEnoughClientsError as e:
                if not config.skip_failed_rounds:
                    raise
                rec = RoundRecord(r, [], [], [], {}, {}, float("nan"), 0.0, failed=str(e))
                server.history.append(rec)
            if checkpoint is not None and not rec.failed:
                save_checkpoint(checkpoint, r, server.global_params)
            if (r + 1) % config.eval_every == 0 or r == config.rounds - 1:
                rec.metrics = server.evaluate(X_val, y_val, X_test, y_test)
            if round_callback is not None:
                round_callback(rec)
            if bar is not None:
                bar.update(1)
                if rec.metrics:
                    bar.set_postfix(f1=f"{rec.metrics.get('f1', float('nan')):.3f}", up=f"{rec.mean_upload_bytes:.0f}B")
    finally:
        if bar is not None:
            bar.close()
    return FederatedResult(server.history, server.global_params.copy(), server.global_detector, config)


_CKPT_MAGIC = b"SGCK1"


def save_checkpoint(path: str | os.PathLike, round_index: int, params: np.ndarray) -> None:
    """Write ``(last completed round, global params)`` atomically: magic, round (8 bytes), vector."""
    from secagg.reporting import write_bytes

    write_bytes(_CKPT_MAGIC + int(round_index).to_bytes(8, "little", signed=True) + serialize_vector(params), path)


def load_checkpoint(path: str | os.PathLike) -> tuple[int, np.ndarray]:
    """Read a checkpoint written by :func:`save_checkpoint`; DataError naming the file if malformed."""
    blob = open(path, "rb").read()
    if not blob.startswith(_CKPT_MAGIC) or len(blob) < len(_CKPT_MAGIC) + 8:
        raise DataError(f"{path}: not a secagg checkpoint (bad magic or truncated)")
    r = int.from_bytes(blob[len(_CKPT_MAGIC):len(_CKPT_MAGIC) + 8], "little", signed=True)
    try:
        params = deserialize_vector(blob[len(_CKPT_MAGIC) + 8:])
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    return r, params


def train_centralized(
    detector_factory: Callable[[], Any],
    X_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    threshold_percentile: float = 95.0,
) -> tuple[Any, dict[str, float]]:
    """Train one detector on pooled data (the seed paper's "Centralized DL" baseline)."""
    det = detector_factory()
    det.train_epochs(np.asarray(X_train, dtype=np.float32), np.asarray(y_train), epochs=epochs, batch_size=batch_size, lr=lr)
    det.calibrate(X_val, y_val, percentile=threshold_percentile)
    return det, dict(det.evaluate(X_test, y_test))
