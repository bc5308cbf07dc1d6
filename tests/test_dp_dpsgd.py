"""Example-level DP-SGD through Opacus on a tiny autoencoder."""

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from secagg.dp.accountants import get_accountant
from secagg.errors import ConfigError, DataError
from secagg.fl.dpsgd import train_dpsgd


def _ae():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 8))


def test_dpsgd_trains_and_reports_opacus_epsilon():
    X = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    model = _ae()
    before = [p.detach().clone() for p in model.parameters()]
    res = train_dpsgd(model, X, noise_multiplier=1.0, max_grad_norm=1.0, epochs=3, batch_size=32, lr=1e-2)
    assert res.steps == 3 * 8 and res.sample_rate == pytest.approx(32 / 256)
    assert len(res.epoch_losses) == 3 and all(np.isfinite(res.epoch_losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # trained in place
    ref = RDPAccountant()
    ref.history = [(1.0, 32 / 256, 24)]
    assert res.epsilon == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert get_accountant("opacus-rdp").epsilon([res.event()], 1e-5) == pytest.approx(res.epsilon, rel=1e-9)
    # more noise -> less epsilon
    res2 = train_dpsgd(_ae(), X, noise_multiplier=4.0, max_grad_norm=1.0, epochs=3, batch_size=32)
    assert res2.epsilon < res.epsilon


def test_dpsgd_supervised_tuple_and_validation():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 8)).astype(np.float32), rng.normal(size=(64, 8)).astype(np.float32)
    res = train_dpsgd(_ae(), (X, y), noise_multiplier=1.0, max_grad_norm=0.5, epochs=1, batch_size=16, optimizer="sgd")
    assert res.epsilon > 0
    with pytest.raises(ConfigError, match="noise_multiplier"):
        train_dpsgd(_ae(), X, noise_multiplier=0.0, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="max_grad_norm"):
        train_dpsgd(_ae(), X, noise_multiplier=1.0, max_grad_norm=-1.0)
    with pytest.raises(ConfigError, match="delta"):
        train_dpsgd(_ae(), X, noise_multiplier=1.0, max_grad_norm=1.0, delta=2.0)
    with pytest.raises(ConfigError, match="ModuleValidator.fix"):
        train_dpsgd(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)), X, noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(DataError, match="NaN"):
        train_dpsgd(_ae(), np.full((4, 8), np.nan, np.float32), noise_multiplier=1.0, max_grad_norm=1.0)
