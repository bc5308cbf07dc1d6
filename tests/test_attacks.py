"""Attacks: each must measurably hurt plain FedAvg; data attacks transform (X, y) as documented."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import ConfigError, DataError
from secagg.fl.aggregator import ClientUpdate, WeightedMeanAggregator
from secagg.fl.attacks import (
    GaussianNoise,
    Scaling,
    SignFlip,
    attack_as_benign,
    choose_malicious,
    compose_hooks,
    label_flip,
    poison_clients,
)
from secagg.fl.robust import CoordinateMedian, Krum, TrimmedMean

N, BAD, D = 10, {0, 1, 2}, 50


def honest_deltas(seed=0):
    rng = np.random.default_rng(seed)
    center = rng.normal(0.5, 0.2, D)
    return center, [(center + 0.05 * rng.normal(size=D)).astype(np.float32) for _ in range(N)]


def fedavg_under(attack, seed=0):
    center, deltas = honest_deltas(seed)
    ups = [ClientUpdate(i, attack(i, d, 0) if attack else d, 1) for i, d in enumerate(deltas)]
    return center, WeightedMeanAggregator().aggregate(ups, round_index=0).delta, ups


@pytest.mark.parametrize(
    "attack,min_shift",
    [(SignFlip(BAD, scale=1.0), 0.5), (SignFlip(BAD, scale=5.0), 1.5), (Scaling(BAD, gamma=10.0), 2.0),
     (GaussianNoise(BAD, sigma=5.0), 1.0)],
)
def test_each_update_attack_moves_fedavg_far_from_honest_mean(attack, min_shift):
    center, clean, _ = fedavg_under(None)
    _, poisoned, ups = fedavg_under(attack)
    honest_norm = np.linalg.norm(center)
    assert np.linalg.norm(clean - center) < 0.05 * honest_norm
    assert np.linalg.norm(poisoned - center) > min_shift * honest_norm
    # honest clients untouched, malicious ones changed
    _, deltas = honest_deltas()
    for u in ups:
        same = np.array_equal(u.delta, deltas[u.client_id])
        assert same == (u.client_id not in BAD)


def test_attack_values():
    d = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(SignFlip({7}, scale=2.0)(7, d, 0), [-2.0, 4.0, -6.0])
    np.testing.assert_array_equal(SignFlip({7})(8, d, 0), d)
    np.testing.assert_array_equal(Scaling({7}, gamma=4.0)(7, d, 0), [4.0, -8.0, 12.0])
    target = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(Scaling({7}, gamma=3.0, target=target)(7, d, 0), [3.0, 3.0, 3.0])
    g = GaussianNoise({7}, sigma=1.0, seed=3)
    a, b = g(7, np.zeros(20000, np.float32), 0), g(7, np.zeros(20000, np.float32), 0)
    np.testing.assert_array_equal(a, b)  # reproducible
    assert abs(a.std() - 1.0) < 0.03 and abs(a.mean()) < 0.03
    assert not np.array_equal(a, g(7, np.zeros(20000, np.float32), 1))  # fresh per round
    add = GaussianNoise({7}, sigma=0.01, additive=True)(7, d, 0)
    assert np.abs(add - d).max() < 0.1 and not np.array_equal(add, d)
    late = SignFlip({7}, start_round=2)
    np.testing.assert_array_equal(late(7, d, 1), d)
    np.testing.assert_array_equal(late(7, d, 2), -d)
    both = compose_hooks(SignFlip({7}), None, Scaling({7}, gamma=2.0))
    np.testing.assert_array_equal(both(7, d, 0), -2 * d)


def test_attack_parameters_validated():
    with pytest.raises(ConfigError, match="scale"):
        SignFlip({1}, scale=0)
    with pytest.raises(ConfigError, match="gamma"):
        Scaling({1}, gamma=float("inf"))
    with pytest.raises(ConfigError, match="sigma"):
        GaussianNoise({1}, sigma=-1)
    with pytest.raises(ConfigError, match="start_round"):
        SignFlip({1}, start_round=-1)
    with pytest.raises(DataError, match="shape"):
        Scaling({1}, target=np.zeros(2, np.float32))(1, np.zeros(3, np.float32), 0)


def test_robust_rules_resist_what_hurts_fedavg():
    center, _, ups = fedavg_under(SignFlip(BAD, scale=5.0))
    for agg in (Krum(3), CoordinateMedian(3), TrimmedMean(3)):
        r = agg.aggregate(ups, round_index=0)
        assert np.linalg.norm(r.delta - center) < 0.2 * np.linalg.norm(center), agg.name


def test_choose_malicious():
    ids = list(range(20))
    m = choose_malicious(ids, 0.3, seed=1)
    assert len(m) == 6 and m <= set(ids)
    assert m == choose_malicious(ids, 0.3, seed=1)
    assert choose_malicious(ids, 0.0) == frozenset()
    with pytest.raises(ConfigError, match="fraction"):
        choose_malicious(ids, 1.5)


# -- data attacks ---------------------------------------------------------------------------
def test_label_flip():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 0, 1, 1, 0, 1])
    X2, y2 = label_flip(X, y)
    np.testing.assert_array_equal(y2, 1 - y)
    np.testing.assert_array_equal(X2, X)
    _, y3 = label_flip(np.zeros((4000, 1)), np.zeros(4000, int), np.random.default_rng(0), rate=0.25)
    assert 0.2 < y3.mean() < 0.3
    with pytest.raises(DataError, match="binary"):
        label_flip(X, np.array([0, 1, 2, 0, 1, 0]))


def test_attack_as_benign():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 0, 1, 1, 0, 1])
    X2, y2 = attack_as_benign(X, y)
    np.testing.assert_array_equal(X2, X[[2, 3, 5]])
    assert y2.tolist() == [0, 0, 0]
    X3, y3 = attack_as_benign(X, y, keep_benign=True)
    assert X3.shape == (6, 2) and not y3.any()
    with pytest.raises(DataError, match="no attack rows"):
        attack_as_benign(X, np.zeros(6, int))


def test_poison_clients_only_touches_malicious():
    from secagg.fl.core import ClientData

    rng = np.random.default_rng(0)
    clients = [ClientData(i, rng.normal(size=(10, 3)), np.tile([0, 1], 5)) for i in range(4)]
    out = poison_clients(clients, {1, 3}, label_flip)
    for c, o in zip(clients, out):
        if c.client_id in (1, 3):
            np.testing.assert_array_equal(o.y, 1 - c.y)
        else:
            assert o is c


# -- end to end with the real FedAvg loop on CICIDS2017 ------------------------------------------
@pytest.fixture(scope="module")
def cicids_small():
    from secagg.detect import load_dataset, partition, prepare
    from secagg.fl.core import ClientData

    ds = load_dataset("cicids2017")
    data = prepare(ds, seed=0)
    idx = np.random.default_rng(0).choice(len(data.y_train), 3000, replace=False)
    X, y = data.X_train[idx], data.y_train[idx]
    clients = [ClientData(i, X[p], y[p]) for i, p in enumerate(partition(y, 6, "iid", seed=0))]
    return ds.n_features, clients, data


def _run(cicids_small, aggregator, hook=None, clients=None):
    from secagg.detect import make_detector
    from secagg.fl.core import FedConfig, run_federated

    d, default_clients, data = cicids_small
    cfg = FedConfig(rounds=3, local_epochs=1, batch_size=64, lr=3e-3, seed=0)
    res = run_federated(lambda: make_detector("mlp", d, seed=0), clients or default_clients, aggregator, cfg,
                        X_val=data.X_val, y_val=data.y_val, X_test=data.X_test, y_test=data.y_test, update_hook=hook)
    return res.final_metrics


def test_end_to_end_attacks_hurt_fedavg_and_median_defends(cicids_small):
    clean = _run(cicids_small, WeightedMeanAggregator())
    attacked = _run(cicids_small, WeightedMeanAggregator(), SignFlip({0, 1}, scale=3.0))
    defended = _run(cicids_small, CoordinateMedian(2), SignFlip({0, 1}, scale=3.0))
    assert clean["f1"] > 0.7
    assert attacked["f1"] < clean["f1"] - 0.2 and attacked["fpr"] > clean["fpr"] + 0.3
    assert defended["f1"] > clean["f1"] - 0.05
    _, clients, _ = cicids_small
    flipped = _run(cicids_small, WeightedMeanAggregator(), clients=poison_clients(clients, {0, 1, 2}, label_flip))
    assert flipped["f1"] < clean["f1"] - 0.1
