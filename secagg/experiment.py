"""One federated (or centralized) anomaly-detection experiment on real IoT data.

This is the job behind ``secagg run`` / ``secagg demo`` and the benchmark scripts:
load a data set (:mod:`secagg.detect`), split it (stratified; scaler fitted on the
training rows only), partition the training rows across simulated clients, train a
detector with the FedAvg core (:mod:`secagg.fl.core`) behind the chosen aggregator,
calibrate the threshold on validation data and report test metrics and bytes.

Results are plain dicts (JSON-serialisable); write them with :func:`secagg.reporting.write_json`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from secagg.errors import ConfigError
from secagg.fl.core import ClientData, FedConfig, run_federated, train_centralized
from secagg.fl.registry import make_aggregator
from secagg.reporting import machine_info


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one run; validated by the components it configures.

    Defaults (20 rounds x 2 local epochs, lr 1e-3, batch 64, 95th-percentile threshold) are
    the autoencoder settings chosen on validation data in docs/detect.md; the centralized
    baseline trains ``rounds * local_epochs`` epochs, the same number of passes over the data.
    """

    dataset: str = "cicids2017"
    data_path: Optional[str] = None
    model: str = "ae"
    clients: int = 10
    rounds: int = 20
    local_epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    client_fraction: float = 1.0
    client_sampling: str = "fixed"
    dropout: float = 0.0
    min_clients: int = 1
    partition: str = "iid"
    alpha: float = 0.5
    prox_mu: float = 0.0
    seed: int = 0
    aggregator: str = "plaintext"
    aggregator_options: dict = field(default_factory=dict)
    threshold_percentile: float = 95.0
    centralized: bool = False
    dedup: bool = False

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ConfigError(f"clients must be >= 1, got {self.clients}")

    def fed_config(self) -> FedConfig:
        return FedConfig(
            rounds=self.rounds, client_fraction=self.client_fraction, client_sampling=self.client_sampling,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size, lr=self.lr, prox_mu=self.prox_mu, dropout=self.dropout,
            min_clients=self.min_clients, seed=self.seed, threshold_percentile=self.threshold_percentile,
        )


def prepare_experiment(cfg: ExperimentConfig):
    """Load, split, scale and partition; returns ``(dataset, prepared, clients)``."""
    from secagg.detect import load_dataset, partition, prepare

    ds = load_dataset(cfg.dataset, cfg.data_path)
    data = prepare(ds, seed=cfg.seed, dedup=cfg.dedup)
    parts = partition(data.y_train, cfg.clients, cfg.partition, alpha=cfg.alpha, groups=data.groups_train, seed=cfg.seed)
    clients = [ClientData(i, data.X_train[idx], data.y_train[idx]) for i, idx in enumerate(parts)]
    return ds, data, clients


def detector_factory(model: str, n_features: int, seed: int) -> Callable[[], Any]:
    from secagg.detect import make_detector

    return lambda: make_detector(model, n_features, seed=seed)


def run_experiment(cfg: ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the experiment and return a result dict (config, metrics, bytes, timing)."""
    torch.manual_seed(cfg.seed)
    ds, data, clients = prepare_experiment(cfg)
    factory = detector_factory(cfg.model, ds.n_features, cfg.seed)
    out: dict[str, Any] = {
        "config": asdict(cfg),
        "data": {"name": ds.name, "rows": ds.n_samples, "duplicates_dropped": data.duplicates_dropped, "features": ds.n_features, "label_counts": ds.label_counts(),
                 "train_rows": int(len(data.y_train)), "test_rows": int(len(data.y_test)),
                 "client_sizes": [int(len(c.y)) for c in clients]},
        "machine": machine_info(),
    }
    t0 = time.perf_counter()
    if cfg.centralized:
        det, metrics = train_centralized(
            factory, data.X_train, data.y_train, epochs=cfg.rounds * cfg.local_epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, X_val=data.X_val, y_val=data.y_val, X_test=data.X_test, y_test=data.y_test,
            threshold_percentile=cfg.threshold_percentile,
        )
        out.update(mode="centralized", metrics=metrics, seconds=time.perf_counter() - t0)
        return out
    agg = make_aggregator(cfg.aggregator, **cfg.aggregator_options)
    res = run_federated(factory, clients, agg, cfg.fed_config(), X_val=data.X_val, y_val=data.y_val,
                        X_test=data.X_test, y_test=data.y_test, progress=progress)
    hist = res.to_dict()
    rounds = [r for r in res.rounds if not r.failed] or res.rounds
    out.update(
        mode="federated",
        metrics=res.final_metrics,
        seconds=time.perf_counter() - t0,
        seconds_per_round=float(np.mean([r.seconds for r in rounds])),
        upload_bytes_per_client_round=float(np.mean([r.mean_upload_bytes for r in rounds])),
        download_bytes_per_client_round=float(np.mean([r.mean_download_bytes for r in rounds])),
        model_parameters=int(res.final_params.size),
        failed_rounds=res.failed_rounds,
        rounds=hist["rounds"],
    )
    return out
