"""FLTrust trust scores, persistent reputation, pre-mask trust weights."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import ConfigError, DataError, NotEnoughClientsError
from secagg.fl.aggregator import Aggregator, ClientUpdate, WeightedMeanAggregator
from secagg.fl.attacks import Scaling, SignFlip
from secagg.fl.robust import check_combination
from secagg.fl.trust import PreMaskTrustWeighting, TrustScoreAggregator, trust_scores


class FakeSecure(Aggregator):
    name = "fake_secagg"
    hides_individual_updates = True

    def aggregate(self, updates, *, round_index):
        return WeightedMeanAggregator().aggregate(updates, round_index=round_index)


def ups(rows, weights=None):
    weights = weights or [1] * len(rows)
    return [ClientUpdate(i, np.asarray(r, np.float32), w) for i, (r, w) in enumerate(zip(rows, weights))]


def const_root(v):
    v = np.asarray(v, dtype=np.float32)
    return lambda round_index: v


def test_trust_scores_known_answer():
    ts = trust_scores(np.array([[2.0, 0], [0, 3], [-1, 0], [1, 1], [0, 0]]), np.array([1.0, 0]))
    np.testing.assert_allclose(ts, [1.0, 0.0, 0.0, 1 / np.sqrt(2), 0.0])
    with pytest.raises(DataError, match="all zeros"):
        trust_scores(np.ones((2, 2)), np.zeros(2))


def test_fltrust_known_answer():
    agg = TrustScoreAggregator(const_root([1.0, 0.0]), decay=0.0)
    r = agg.aggregate(ups([[2, 0], [0, 3], [-1, 0], [1, 1]]), round_index=0)
    s = 1 / np.sqrt(2)
    expect = (1.0 * np.array([1.0, 0.0]) + s * np.array([s, s])) / (1 + s)
    np.testing.assert_allclose(r.delta, expect, rtol=1e-6)
    assert r.included == (0, 3)
    assert r.metrics["excluded"] == 2
    assert agg.reputation == pytest.approx({0: 1.0, 1: 0.0, 2: 0.0, 3: s})


def test_magnitude_normalisation_neutralises_scaling():
    rng = np.random.default_rng(0)
    g0 = rng.normal(size=30)
    honest = [g0 + 0.3 * rng.normal(size=30) for _ in range(7)]
    boosted = Scaling({5, 6}, gamma=1000.0)
    rows = [boosted(i, h.astype(np.float32), 0) for i, h in enumerate(honest)]
    r = TrustScoreAggregator(const_root(g0)).aggregate(ups(rows), round_index=0)
    assert np.linalg.norm(r.delta) <= np.linalg.norm(g0) * (1 + 1e-5)
    plain = WeightedMeanAggregator().aggregate(ups(rows), round_index=0).delta
    assert np.linalg.norm(plain) > 100 * np.linalg.norm(g0)
    flipped = [SignFlip({4, 5, 6})(i, h.astype(np.float32), 0) for i, h in enumerate(honest)]
    r2 = TrustScoreAggregator(const_root(g0)).aggregate(ups(flipped), round_index=0)
    assert set(r2.included) == {0, 1, 2, 3}
    assert np.dot(r2.delta, g0) / (np.linalg.norm(r2.delta) * np.linalg.norm(g0)) > 0.9


def test_reputation_persists_and_excludes():
    agg = TrustScoreAggregator(const_root([1.0, 0.0]), decay=0.5, threshold=0.3)
    good, bad, other = [1.0, 0.0], [-1.0, 0.0], [1.0, 0.2]
    r0 = agg.aggregate(ups([good, other]), round_index=0)
    assert r0.included == (0, 1) and agg.reputation[0] == pytest.approx(1.0)
    r1 = agg.aggregate(ups([bad, other]), round_index=1)  # client 0 turns: rep 0.5 >= 0.3, still in
    assert agg.reputation[0] == pytest.approx(0.5) and 0 in r1.included
    r2 = agg.aggregate(ups([bad, other]), round_index=2)  # rep 0.25 < 0.3 -> excluded
    assert agg.reputation[0] == pytest.approx(0.25) and r2.included == (1,)
    # memoryless FLTrust would have excluded it already in round 1 (cosine -1 -> weight 0)
    m = TrustScoreAggregator(const_root([1.0, 0.0]), decay=0.0, threshold=0.3)
    m.aggregate(ups([good, other]), round_index=0)
    assert m.aggregate(ups([bad, other]), round_index=1).included == (1,)


def test_all_excluded_raises_and_keeps_state():
    agg = TrustScoreAggregator(const_root([1.0, 0.0]), decay=0.5)
    agg.aggregate(ups([[1.0, 0.0], [1.0, 1.0]]), round_index=0)
    before = dict(agg.reputation)
    agg.threshold = 0.9
    with pytest.raises(NotEnoughClientsError, match="zero trust"):
        agg.aggregate(ups([[-1.0, 0.0], [0.0, 1.0]]), round_index=1)
    assert agg.reputation == before


def test_root_update_validated_and_advance_called():
    with pytest.raises(DataError, match="shape"):
        TrustScoreAggregator(const_root([1.0, 0, 0])).aggregate(ups([[1.0, 0]]), round_index=0)
    with pytest.raises(DataError, match="NaN"):
        TrustScoreAggregator(const_root([np.nan, 0])).aggregate(ups([[1.0, 0]]), round_index=0)
    with pytest.raises(ConfigError, match="decay"):
        TrustScoreAggregator(const_root([1.0]), decay=1.0)
    with pytest.raises(ConfigError, match="threshold"):
        TrustScoreAggregator(const_root([1.0]), threshold=2.0)

    class Root:
        def __init__(self):
            self.seen = []

        def __call__(self, round_index):
            return np.array([1.0, 0.0], np.float32)

        def advance(self, delta):
            self.seen.append(delta.copy())

    root = Root()
    r = TrustScoreAggregator(root).aggregate(ups([[3.0, 0.0]]), round_index=0)
    assert len(root.seen) == 1 and np.array_equal(root.seen[0], r.delta)


def test_fltrust_refused_under_secure_aggregation():
    assert TrustScoreAggregator.needs_individual_updates
    with pytest.raises(ConfigError, match="fltrust"):
        check_combination(TrustScoreAggregator(const_root([1.0])), FakeSecure())


def test_premask_trust_weighting_with_secure_inner():
    rows = [[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [9.0, 9.0]]
    n = [1, 2, 3, 4]
    weights = {0: 1.0, 1: 0.5, 2: 2.0, 3: 0.0}
    agg = PreMaskTrustWeighting(FakeSecure(), weights)
    assert agg.hides_individual_updates and not agg.needs_individual_updates
    r = agg.aggregate(ups(rows, n), round_index=0)
    num = sum(ni * weights[i] * np.array(rows[i]) for i, ni in enumerate(n))
    den = sum(ni * weights[i] for i, ni in enumerate(n))
    np.testing.assert_allclose(r.delta, num / den, rtol=1e-6)
    assert r.included == (0, 1, 2) and r.metrics["excluded_by_trust"] == 1
    # weights as a function of the round; missing clients get default_weight
    agg2 = PreMaskTrustWeighting(FakeSecure(), lambda rnd: {0: 0.0}, default_weight=1.0)
    r2 = agg2.aggregate(ups(rows, n), round_index=3)
    np.testing.assert_allclose(r2.delta, sum(ni * np.array(rows[i]) for i, ni in enumerate(n) if i) / 9, rtol=1e-6)
    with pytest.raises(NotEnoughClientsError):
        PreMaskTrustWeighting(FakeSecure(), {}, default_weight=0.0).aggregate(ups(rows), round_index=0)
    with pytest.raises(ConfigError, match="trust weight of client 0"):
        PreMaskTrustWeighting(FakeSecure(), {0: -1.0}).aggregate(ups(rows), round_index=0)


def test_end_to_end_fltrust_with_root_set_resists_sign_flip():
    """FLTrust with a 200-row clean root set in the real FedAvg loop on CICIDS2017."""
    from secagg.detect import load_dataset, make_detector, partition, prepare
    from secagg.fl.core import ClientData, FedConfig, run_federated
    from secagg.fl.trust import RootSetTrainer

    ds = load_dataset("cicids2017")
    data = prepare(ds, seed=0)
    rng = np.random.default_rng(1)
    idx = rng.choice(len(data.y_train), 3200, replace=False)
    root_idx, train_idx = idx[:200], idx[200:]
    X, y = data.X_train[train_idx], data.y_train[train_idx]
    clients = [ClientData(i, X[p], y[p]) for i, p in enumerate(partition(y, 6, "iid", seed=0))]
    factory = lambda: make_detector("mlp", ds.n_features, seed=0)  # noqa: E731
    cfg = FedConfig(rounds=3, local_epochs=1, batch_size=64, lr=3e-3, seed=0)
    hook = SignFlip({0, 1, 2}, scale=3.0)  # half the clients: beyond median's breakdown point
    common = dict(X_val=data.X_val, y_val=data.y_val, X_test=data.X_test, y_test=data.y_test, update_hook=hook)
    attacked = run_federated(factory, clients, WeightedMeanAggregator(), cfg, **common).final_metrics
    root = RootSetTrainer(factory, data.X_train[root_idx], data.y_train[root_idx], lr=3e-3)
    agg = TrustScoreAggregator(root, decay=0.5, threshold=0.05)
    res = run_federated(factory, clients, agg, cfg, **common)
    assert attacked["f1"] < 0.6
    assert res.final_metrics["f1"] > 0.7
    for rec in res.rounds:
        assert not {0, 1, 2} & set(rec.included)
    assert max(agg.reputation[c] for c in (0, 1, 2)) < 0.05 < min(agg.reputation[c] for c in (3, 4, 5))
    np.testing.assert_allclose(root.global_params, res.final_params, atol=1e-5)
