"""The example Flower app in Flower's simulation engine (Ray), and its FAB configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomli

from secagg.integrations.flower.app import FlowerAppConfig, initial_parameters, local_update, run_in_simulation

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_app"


def test_fab_config_lists_every_app_parameter_with_its_default():
    conf = tomli.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert conf["config"] == FlowerAppConfig().to_run_config()
    assert conf["components"] == {"serverapp": "secagg.integrations.flower.app:server_app",
                                  "clientapp": "secagg.integrations.flower.app:client_app"}


@pytest.mark.slow
def test_example_app_in_simulation_engine_with_secaggplus():
    n = 3
    rep = run_in_simulation({"layer": "secaggplus", "num-rounds": 1, "min-nodes": n, "stage-timeout-s": 120.0}, num_supernodes=n)
    r = rep["rounds"][0]
    assert r["included_partitions"] == [0, 1, 2] and r["dropped"] == []
    cfg = FlowerAppConfig.from_run_config(rep["config"])
    g = initial_parameters(cfg.dataset, cfg.seed)
    ups = [local_update(g, dataset=cfg.dataset, seed=cfg.seed, partition_id=p, num_partitions=n, round_index=0,
                        local_epochs=cfg.local_epochs, lr=cfg.lr, batch_size=cfg.batch_size) for p in range(n)]
    w = np.array([u[1] for u in ups], float)
    exact = (w[:, None] * np.stack([u[0] for u in ups])).sum(0) / w.sum()
    delta = np.asarray(r["delta"], np.float64)
    # stochastic rounding from the OS CSPRNG: within one quantization step of the exact mean
    assert np.abs(delta - exact).max() <= cfg.clip / 2**cfg.bits
    assert r["metrics"]["num_examples"] == w.sum()
    # the masked vectors are the only per-node uploads in the masked-input stage: ~4 bytes per parameter
    assert all(b < 4 * (g.shape[0] + 1) + 4000 for b in r["upload_bytes"].values())
    assert 0.0 <= rep["evaluation"]["auc"] <= 1.0
