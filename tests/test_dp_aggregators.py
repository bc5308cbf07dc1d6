"""DP aggregators: central/local Gaussian DP-FedAvg, adaptive clipping, distributed DP with SecAgg."""

import math

import numpy as np
import pytest

from secagg.dp.discrete import DistributedDPConfig
from secagg.dp.events import DistributedDiscreteGaussianEvent
from secagg.dp.ledger import PrivacyBudget, PrivacyBudgetExceeded, PrivacyLedger, read_ledger
from secagg.dp.mechanisms import AdaptiveClipping, clip_l2, gaussian_noise
from secagg.errors import ConfigError, DataError, NotEnoughClientsError
from secagg.fl.aggregator import ClientUpdate
from secagg.fl.dp_aggregators import CentralDPAggregator, CentralDPOptions, DistributedDPAggregator

L = 20_000


def _updates(n, scale, rng, L=L):
    return [ClientUpdate(i, (rng.normal(size=L) * scale).astype(np.float32), 10 + i) for i in range(n)]


def test_clip_and_csprng_gaussian():
    x, norm = clip_l2(np.array([3.0, 4.0]), 1.0)
    assert norm == 5.0 and np.allclose(x, [0.6, 0.8])
    x, _ = clip_l2(np.array([0.3, 0.4]), 1.0)
    assert np.allclose(x, [0.3, 0.4])
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_l2(np.ones(2), 0.0)
    with pytest.raises(DataError):
        clip_l2(np.array([np.nan]), 1.0)
    g = gaussian_noise(200_000, 2.0)
    assert g.std() == pytest.approx(2.0, rel=0.01) and abs(g.mean()) < 0.02


def test_central_dp_noise_clipping_and_ledger(tmp_path):
    rng = np.random.default_rng(0)
    ups = _updates(5, 0.05, rng)  # norm ~ 7 > C = 1: all clipped
    led = PrivacyLedger.create(tmp_path / "c.jsonl", PrivacyBudget(20.0, 1e-5))
    agg = CentralDPAggregator(noise_multiplier=1.5, clip_norm=1.0, sampling_rate=0.5, expected_weight=5.0, ledger=led)
    res = agg.aggregate(ups, round_index=0)
    clipped = np.mean([clip_l2(u.delta, 1.0)[0] for u in ups], axis=0)
    err = res.delta - clipped
    assert err.std() == pytest.approx(1.5 * 1.0 / 5, rel=0.03)  # z C / n
    assert res.included == tuple(range(5)) and res.metrics["dp_unclipped_fraction"] == 0.0
    r = read_ledger(tmp_path / "c.jsonl")
    assert r.ok and r.rounds[0]["participants"] == [0, 1, 2, 3, 4]
    assert r.rounds[0]["noise_multiplier"] == 1.5 and r.rounds[0]["clip_norm"] == 1.0
    assert r.rounds[0]["sampling_rate"] == 0.5 and r.rounds[0]["mechanism"] == "central_gaussian"
    assert res.metrics["dp_epsilon"] == pytest.approx(led.spent_epsilon())


def test_budget_guard_refuses_round_before_aggregating(tmp_path):
    rng = np.random.default_rng(1)
    led = PrivacyLedger.create(tmp_path / "b.jsonl", PrivacyBudget(3.0, 1e-5))
    agg = CentralDPAggregator(noise_multiplier=3.0, clip_norm=1.0, sampling_rate=1.0, ledger=led)
    with pytest.raises(PrivacyBudgetExceeded, match="budget epsilon=3"):
        for r in range(100):
            agg.aggregate(_updates(3, 0.01, rng, L=10), round_index=r)
    rounds = read_ledger(tmp_path / "b.jsonl").rounds
    assert 0 < len(rounds) < 100 and led.spent_epsilon() <= 3.0


def test_local_mode_accounts_survivors_noise(tmp_path):
    rng = np.random.default_rng(2)
    led = PrivacyLedger.create(tmp_path / "l.jsonl", PrivacyBudget(50.0, 1e-5))
    agg = CentralDPAggregator(noise_multiplier=1.0, clip_norm=1.0, mode="local", local_noise_split=4, ledger=led)
    ups = _updates(3, 1e-4, rng)  # only 3 of the planned 4 noise shares arrive
    res = agg.aggregate(ups, round_index=0)
    z_eff = math.sqrt(3 / 4)
    assert read_ledger(tmp_path / "l.jsonl").rounds[0]["noise_multiplier"] == pytest.approx(z_eff)
    err = res.delta - np.mean([u.delta for u in ups], axis=0)
    assert err.std() == pytest.approx(z_eff / 3, rel=0.03)


def test_capped_weights_and_expected_weight():
    rng = np.random.default_rng(3)
    ups = [ClientUpdate(0, np.full(4, 0.1, np.float32), 5), ClientUpdate(1, np.full(4, 0.3, np.float32), 50)]
    agg = CentralDPAggregator(noise_multiplier=1e-9, clip_norm=10.0, weighting="capped", weight_cap=10.0,
                              expected_weight=1.5)
    res = agg.aggregate(ups, round_index=0)
    np.testing.assert_allclose(res.delta, (0.5 * 0.1 + 1.0 * 0.3) / 1.5, rtol=1e-5)
    del rng


def test_adaptive_clipping_tracks_quantile_and_accounts_count_noise(tmp_path):
    rng = np.random.default_rng(4)
    led = PrivacyLedger.create(tmp_path / "a.jsonl", PrivacyBudget(1e4, 1e-5))
    ad = AdaptiveClipping(target_quantile=0.5, learning_rate=0.5, count_noise_std=2.0)
    agg = CentralDPAggregator(noise_multiplier=1.0, clip_norm=0.1, adaptive=ad, ledger=led)
    for r in range(12):
        agg.aggregate(_updates(20, 1.0 / math.sqrt(1000), rng, L=1000), round_index=r)  # norms ~ 1
    assert 0.5 < agg.clip_norm < 2.0  # moved from 0.1 towards the median norm ~1
    e = read_ledger(tmp_path / "a.jsonl").rounds[0]
    z_upd = (1.0 - (2 * 2.0) ** -2) ** -0.5
    assert e["noise_multiplier"] == 1.0 and e["extra"]["update_noise_multiplier"] == pytest.approx(z_upd)
    with pytest.raises(ConfigError, match="count_noise_std"):
        CentralDPOptions(noise_multiplier=4.0, clip_norm=1.0, adaptive=AdaptiveClipping(count_noise_std=1.0))


def test_fixed_size_round_larger_than_recorded_sample_is_refused(tmp_path):
    led = PrivacyLedger.create(tmp_path / "f.jsonl", PrivacyBudget(50.0, 1e-5), neighbouring="replace_one")
    ups = [ClientUpdate(i, np.full(8, 0.1, np.float32), 5) for i in range(3)]
    # FedConfig(client_fraction=0.1, min_clients=3) over 10 clients draws 3, not ceil(0.1 * 10) = 1
    agg = CentralDPAggregator(noise_multiplier=1.0, clip_norm=1.0, sampling_rate=0.1, sampling="fixed_size",
                              population=10, ledger=led)
    with pytest.raises(ConfigError, match=r"3 updates .*sample_size=1"):
        agg.aggregate(ups, round_index=0)
    assert read_ledger(tmp_path / "f.jsonl").rounds == []  # nothing recorded, nothing released
    agg = CentralDPAggregator(noise_multiplier=1.0, clip_norm=1.0, sampling_rate=0.1, sampling="fixed_size",
                              population=10, sample_size=3, ledger=led)
    res = agg.aggregate(ups, round_index=0)
    e = read_ledger(tmp_path / "f.jsonl").rounds[0]
    assert e["event"]["sample_size"] == 3 and e["participants"] == [0, 1, 2]
    assert res.metrics["dp_epsilon"] == pytest.approx(led.spent_epsilon())
    agg.aggregate(ups[:2], round_index=1)  # a dropout leaves fewer than the sample: allowed
    with pytest.raises(ConfigError, match="sample_size"):
        CentralDPOptions(noise_multiplier=1.0, clip_norm=1.0, sampling="fixed_size", population=10, sample_size=11)


def test_adaptive_clipping_with_local_noise_is_refused():
    with pytest.raises(ConfigError, match=r"adaptive clipping requires mode='central'.*count_noise_std"):
        CentralDPOptions(noise_multiplier=1.0, clip_norm=1.0, mode="local", local_noise_split=1,
                         adaptive=AdaptiveClipping(count_noise_std=1.0))
    CentralDPOptions(noise_multiplier=1.0, clip_norm=1.0, mode="central", adaptive=AdaptiveClipping(count_noise_std=1.0))


def test_adaptive_clipping_under_poisson_normalises_by_expected_clients(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="population is required for adaptive"):
        CentralDPOptions(noise_multiplier=1.0, clip_norm=1.0, sampling_rate=0.5, expected_weight=5.0,
                         adaptive=AdaptiveClipping(count_noise_std=1.0))
    seen = []
    ad = AdaptiveClipping(count_noise_std=1.0)
    monkeypatch.setattr(AdaptiveClipping, "next_clip", lambda self, c, u, m: (seen.append(m), (c, 0.5))[1])
    agg = CentralDPAggregator(noise_multiplier=1.0, clip_norm=1.0, sampling_rate=0.5, expected_weight=5.0,
                              population=10, adaptive=ad)
    agg.aggregate([ClientUpdate(i, np.full(4, 0.1, np.float32), 5) for i in range(3)], round_index=0)
    assert seen == [5.0]  # q * population, not the 3 clients that happened to be sampled


def test_poisson_subsampling_requires_expected_weight():
    ups = [ClientUpdate(i, np.full(4, 0.5, np.float32), 5) for i in range(2)]
    with pytest.raises(ConfigError, match=r"expected_weight is required.*sampling_rate \* population"):
        CentralDPAggregator(noise_multiplier=1e-9, clip_norm=10.0, sampling_rate=0.2)
    # fixed denominator: 2 clients sampled of an expected 0.2 * 20 = 4 -> sum / 4
    agg = CentralDPAggregator(noise_multiplier=1e-9, clip_norm=10.0, sampling_rate=0.2, expected_weight=4.0)
    np.testing.assert_allclose(agg.aggregate(ups, round_index=0).delta, 0.25, rtol=1e-6)
    # documented non-private opt-out: realized weight
    agg = CentralDPAggregator(noise_multiplier=1e-9, clip_norm=10.0, sampling_rate=0.2, allow_nonprivate_denominator=True)
    np.testing.assert_allclose(agg.aggregate(ups, round_index=0).delta, 0.5, rtol=1e-6)
    # q = 1 and fixed-size sampling keep the realized denominator
    CentralDPOptions(noise_multiplier=1.0, clip_norm=1.0, sampling_rate=1.0)
    CentralDPOptions(noise_multiplier=1.0, clip_norm=1.0, sampling_rate=0.2, sampling="fixed_size", population=10)


@pytest.mark.parametrize("kw,param", [
    (dict(noise_multiplier=0.0), "noise_multiplier"), (dict(clip_norm=-1.0), "clip_norm"),
    (dict(sampling_rate=0.0), "sampling_rate"), (dict(sampling_rate=1.2), "sampling_rate"),
    (dict(mode="tee"), "mode"), (dict(weighting="capped"), "weight_cap"),
    (dict(sampling="fixed_size"), "population"),
])
def test_central_options_reject_bad_values(kw, param):
    args = dict(noise_multiplier=1.0, clip_norm=1.0)
    args.update(kw)
    with pytest.raises(ConfigError, match=param):
        CentralDPOptions(**args)


def test_distributed_dp_with_secagg_and_dropouts(tmp_path):
    rng = np.random.default_rng(5)
    led = PrivacyLedger.create(tmp_path / "d.jsonl", PrivacyBudget(100.0, 1e-5))
    cfg = DistributedDPConfig(clip_norm=1.0, noise_multiplier=1.0, min_survivors=5, max_clients=10, modulus_bits=32)
    agg = DistributedDPAggregator(cfg, ledger=led, sampling_rate=0.5, dropout=0.3, seed=7)
    ups = _updates(10, 0.005, rng, L=3000)  # norm ~ 0.27: no clipping
    seen_drop = False
    for r in range(3):
        try:
            res = agg.aggregate(ups, round_index=r)
        except NotEnoughClientsError:
            continue
        inc = set(res.included)
        seen_drop |= len(inc) < 10
        err = res.delta - np.mean([u.delta for u in ups if u.client_id in inc], axis=0)
        assert err.std() == pytest.approx(res.metrics["ddp_noise_std_of_mean"], rel=0.15)
    contents = read_ledger(tmp_path / "d.jsonl")
    assert contents.ok and contents.rounds
    for e in contents.rounds:
        ev = DistributedDiscreteGaussianEvent(**e["event"])
        assert ev.survivors == len(e["participants"]) >= 5
        assert e["mechanism"] == "distributed_discrete_gaussian+secagg"
    assert seen_drop
    with pytest.raises(NotEnoughClientsError):
        agg.aggregate(ups[:4], round_index=10)


def test_distributed_dp_active_secagg_matches_plain_modular_sum_math():
    rng = np.random.default_rng(6)
    cfg = DistributedDPConfig(clip_norm=1.0, noise_multiplier=0.5, min_survivors=4, max_clients=5, modulus_bits=32)
    ups = _updates(5, 0.01, rng, L=500)
    res = DistributedDPAggregator(cfg, secagg_mode="active").aggregate(ups, round_index=0)
    assert res.included == tuple(range(5))
    err = res.delta - np.mean([u.delta for u in ups], axis=0)
    assert err.std() == pytest.approx(res.metrics["ddp_noise_std_of_mean"], rel=0.2)
    with pytest.raises(ConfigError, match="secagg_mode"):
        DistributedDPAggregator(cfg, secagg_mode="malicious")
