"""HE aggregators for the FedAvg core: equal to the plaintext weighted mean within the stated error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigError, DataError
from secagg.fl.aggregator import ClientUpdate, WeightedMeanAggregator
from secagg.fl.core import ClientData, FedConfig, FederatedServer
from secagg.fl.he_aggregators import CKKSAggregator, PaillierAggregator
from secagg.he.ckks import CKKS_8192
from secagg.he.paillier import PaillierConfig

PCFG = PaillierConfig(key_bits=1024, value_bits=16, clip=1.0, max_total_weight=2000, insecure_for_testing=True)


@pytest.fixture(scope="module")
def ckks_agg():
    return CKKSAggregator(CKKS_8192, value_bound=10.0)


@pytest.fixture(scope="module")
def paillier_agg():
    return PaillierAggregator(PCFG)


def _updates(rng, n, length, scale=0.5):
    return [ClientUpdate(int(i), rng.uniform(-scale, scale, length).astype(np.float32), int(rng.integers(1, 200))) for i in rng.choice(1000, n, replace=False)]


@settings(deadline=None, max_examples=5)
@given(n=st.integers(1, 6), length=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1))
def test_ckks_equals_plaintext_weighted_mean(ckks_agg, n, length, seed):
    ups = _updates(np.random.default_rng(seed), n, length)
    ref = WeightedMeanAggregator().aggregate(ups, round_index=0)
    res = ckks_agg.aggregate(ups, round_index=0)
    m = res.metrics
    peak = max(float(np.max(np.abs(u.delta))) for u in ups)
    assert m["he_max_abs_error"] <= m["he_error_bound"] == pytest.approx(CKKS_8192.error_bound(peak, 1.0, n))
    # float32 output: bound plus one float32 rounding of the result
    assert np.max(np.abs(res.delta.astype(np.float64) - ref.delta)) <= m["he_error_bound"] + 1e-7
    assert res.delta.dtype == np.float32 and res.included == ref.included
    assert set(res.upload_bytes) == set(res.download_bytes) == {u.client_id for u in ups}
    n_ct = -(-length // CKKS_8192.slots)
    assert m["he_ciphertexts_per_client"] == n_ct
    for b in res.upload_bytes.values():  # fresh ciphertexts: ~235 kB each (compressed), well above float32
        assert 200_000 * n_ct < b < CKKS_8192.estimated_ciphertext_bytes() * n_ct + 2_000
    assert len(set(res.download_bytes.values())) == 1


@settings(deadline=None, max_examples=5)
@given(n=st.integers(1, 6), length=st.integers(1, 400), seed=st.integers(0, 2**32 - 1))
def test_paillier_equals_plaintext_weighted_mean(paillier_agg, n, length, seed):
    ups = _updates(np.random.default_rng(seed), n, length)
    ref = WeightedMeanAggregator().aggregate(ups, round_index=0)
    res = paillier_agg.aggregate(ups, round_index=0)
    m = res.metrics
    assert m["he_max_abs_error"] <= m["he_error_bound"] <= PCFG.error_bound * 1.0001
    assert np.max(np.abs(res.delta.astype(np.float64) - ref.delta)) <= PCFG.error_bound + 1e-7
    n_ct = -(-length // PCFG.slots_per_ciphertext)
    assert m["he_ciphertexts_per_client"] == n_ct and m["he_clipped_values"] == 0
    for b in res.upload_bytes.values():  # n_ct ciphertexts of 256 bytes plus framing
        assert n_ct * PCFG.ciphertext_bytes < b < n_ct * (PCFG.ciphertext_bytes + 8) + 1_000


def test_unweighted_mean(ckks_agg):
    ups = _updates(np.random.default_rng(3), 4, 100)
    agg = PaillierAggregator(PCFG, weighted=False)
    for a in (agg, CKKSAggregator(CKKS_8192, weighted=False)):
        res = a.aggregate(ups, round_index=0)
        plain = np.mean([u.delta.astype(np.float64) for u in ups], axis=0)
        assert np.max(np.abs(res.delta - plain)) <= res.metrics["he_error_bound"] + 1e-7


def test_paillier_weight_overflow_refused_before_encrypting_then_recovers():
    agg = PaillierAggregator(PCFG)
    rng = np.random.default_rng(1)
    heavy = [ClientUpdate(i, rng.uniform(-1, 1, 10).astype(np.float32), 1500) for i in range(2)]
    with pytest.raises(ConfigError, match="max_total_weight=2000"):
        agg.aggregate(heavy, round_index=0)
    ok = [ClientUpdate(i, u.delta, 1000) for i, u in enumerate(heavy)]
    res = agg.aggregate(ok, round_index=0)
    assert np.allclose(res.delta, (heavy[0].delta + heavy[1].delta) / 2, atol=PCFG.error_bound + 1e-7)


def test_out_of_range_values_error_or_clip_counted():
    ups = [ClientUpdate(0, np.array([0.5, 3.0], dtype=np.float32), 1), ClientUpdate(1, np.array([0.0, 0.0], dtype=np.float32), 1)]
    with pytest.raises(DataError, match="exceed clip=1"):
        PaillierAggregator(PCFG).aggregate(ups, round_index=0)
    from dataclasses import replace

    res = PaillierAggregator(replace(PCFG, out_of_range="clip")).aggregate(ups, round_index=0)
    assert res.metrics["he_clipped_values"] == 1
    assert np.allclose(res.delta, [0.25, 0.5], atol=PCFG.error_bound)
    with pytest.raises(DataError, match="exceeds the allowed 10"):
        CKKSAggregator(CKKS_8192, value_bound=10.0).aggregate([ClientUpdate(0, np.array([11.0], dtype=np.float32), 1)], round_index=0)


def test_mismatched_lengths_rejected(ckks_agg):
    ups = [ClientUpdate(0, np.zeros(3, np.float32), 1), ClientUpdate(1, np.zeros(4, np.float32), 1)]
    with pytest.raises(DataError, match="length"):
        ckks_agg.aggregate(ups, round_index=0)


def test_server_side_holds_public_keys_only(ckks_agg, paillier_agg):
    ups = _updates(np.random.default_rng(0), 2, 10)
    ckks_agg.aggregate(ups, round_index=0)
    paillier_agg.aggregate(ups, round_index=0)
    assert not ckks_agg._server.context.is_private()
    assert not hasattr(paillier_agg._server, "_sk") and not hasattr(paillier_agg._server.public_key, "raw_decrypt")


def test_preset_chosen_from_first_round_and_setup_bytes_reported():
    agg = CKKSAggregator()
    assert agg.aggregate(_updates(np.random.default_rng(0), 2, 10), round_index=0).metrics["he_secret_bundle_bytes_per_client"] > 0
    assert agg.preset is CKKS_8192
    assert "he_secret_bundle_bytes_per_client" not in agg.aggregate(_updates(np.random.default_rng(1), 2, 10), round_index=1).metrics
    assert CKKSAggregator.needs_individual_updates is False and PaillierAggregator.needs_individual_updates is False


class _Linear:
    """Minimal detector test double (full-batch GD on a linear model)."""

    supervised = True

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = torch.nn.Linear(4, 1)
        self.threshold = 0.5

    def train_epochs(self, X, y, *, epochs=1, batch_size=64, lr=1e-3, prox_mu=0.0, prox_center=None):
        X, t = torch.as_tensor(X), torch.as_tensor(y, dtype=torch.float32)[:, None]
        opt = torch.optim.SGD(self.module.parameters(), lr=lr)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.mean((self.module(X) - t) ** 2)
            loss.backward()
            opt.step()
        return loss.item()


def test_fedavg_rounds_with_he_match_plaintext():
    rng = np.random.default_rng(0)
    clients = []
    for i, n in enumerate([15, 40, 25]):
        X = rng.normal(size=(n, 4)).astype(np.float32)
        clients.append(ClientData(i, X, (X[:, 0] > 0).astype(int)))
    cfg = FedConfig(rounds=2, local_epochs=2, lr=0.1)
    finals = {}
    for name, agg in [("plain", WeightedMeanAggregator()), ("ckks", CKKSAggregator(CKKS_8192, value_bound=10.0)), ("paillier", PaillierAggregator(PCFG))]:
        server = FederatedServer(lambda: _Linear(), clients, agg, cfg)
        for r in range(2):
            rec = server.run_round(r)
        finals[name] = server.global_params.copy()
        if name != "plain":
            assert rec.aggregator_metrics["he_max_abs_error"] <= rec.aggregator_metrics["he_error_bound"]
    np.testing.assert_allclose(finals["ckks"], finals["plain"], atol=1e-5)
    np.testing.assert_allclose(finals["paillier"], finals["plain"], atol=1e-4)


def test_robust_rule_inside_he_is_refused():
    """Krum needs every update in the clear; under HE the server only has ciphertexts."""
    from secagg.errors import ConfigError
    from secagg.fl.aggregator import WeightedMeanAggregator
    from secagg.fl.he_aggregators import CKKSAggregator
    from secagg.fl.robust import Krum, check_combination

    with pytest.raises(ConfigError, match="incompatible"):
        check_combination(Krum(1), CKKSAggregator())
    check_combination(WeightedMeanAggregator(), CKKSAggregator())  # a plain mean is fine
