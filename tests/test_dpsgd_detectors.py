"""Example-level DP-SGD (Opacus) on the project's own detectors and real CICIDS2017 rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from secagg.detect import load_dataset, make_detector, prepare
from secagg.errors import ConfigError
from secagg.fl.dpsgd import train_dpsgd


@pytest.fixture(scope="module")
def data():
    return prepare(load_dataset("cicids2017"), seed=0)


def test_autoencoder_dpsgd_epsilon_is_opacus_and_detector_still_detects(data):
    X_benign = data.X_train[data.y_train == 0][:3000]
    det = make_detector("ae", X_benign.shape[1], seed=0)
    res = train_dpsgd(det.module, X_benign, noise_multiplier=1.0, max_grad_norm=1.0, epochs=3, lr=3e-3,
                      batch_size=64, delta=1e-5)
    acc = RDPAccountant()
    acc.history = [(res.noise_multiplier, res.sample_rate, res.steps)]
    assert res.epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert res.sample_rate == pytest.approx(1 / 47)  # Opacus: 1 / batches per epoch (3000 rows / 64)
    assert res.steps == 3 * 47
    assert 0.5 < res.epsilon < 10
    det.calibrate(data.X_val, data.y_val, percentile=95)
    m = det.evaluate(data.X_test, data.y_test)
    assert m["roc_auc"] > 0.6  # non-private AE: ~0.78 (docs/detect.md)


def test_mlp_dpsgd_supervised(data):
    idx = np.random.default_rng(0).choice(len(data.y_train), 4000, replace=False)  # split indices are sorted by source
    X, y = data.X_train[idx], data.y_train[idx].astype(np.float32)[:, None]
    det = make_detector("mlp", X.shape[1], seed=0)
    res = train_dpsgd(det.module, (X, y), noise_multiplier=0.8, max_grad_norm=1.0, epochs=3, lr=3e-3,
                      loss_fn=torch.nn.functional.binary_cross_entropy_with_logits)
    det.calibrate(data.X_val, data.y_val)
    m = det.evaluate(data.X_test, data.y_test)
    assert np.isfinite(res.epsilon) and m["roc_auc"] > 0.85  # non-private MLP: ~0.99


def test_dpsgd_refuses_bad_parameters():
    det = make_detector("ae", 4, seed=0)
    X = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        train_dpsgd(det.module, X, noise_multiplier=-1.0, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="max_grad_norm"):
        train_dpsgd(det.module, X, noise_multiplier=1.0, max_grad_norm=float("inf"))
