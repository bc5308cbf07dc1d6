"""Robust aggregators: known answers, honest-cluster selection, breakdown checks, compatibility rule."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import ConfigError, DataError
from secagg.fl.aggregator import Aggregator, AggregateResult, ClientUpdate, WeightedMeanAggregator, serialize_vector
from secagg.fl.robust import (
    Bulyan,
    ClientClipping,
    CoordinateMedian,
    Krum,
    MultiKrum,
    NormBounding,
    TrimmedMean,
    check_combination,
    check_compatible,
    clip_update,
    krum_scores,
)


def ups(rows, weights=None):
    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    weights = weights or [1] * len(rows)
    return [ClientUpdate(i, r, w) for i, (r, w) in enumerate(zip(rows, weights))]


def honest_and_bad(n_honest, n_bad, d=20, seed=0, bad_value=50.0):
    rng = np.random.default_rng(seed)
    center = rng.normal(0, 1, d)
    honest = center + 0.1 * rng.normal(0, 1, (n_honest, d))
    bad = np.full((n_bad, d), bad_value) + rng.normal(0, 1, (n_bad, d))
    return honest, bad


class FakeSecure(Aggregator):
    """Stands in for a secure-aggregation aggregator: only the class flag matters here."""

    name = "fake_secagg"
    hides_individual_updates = True

    def aggregate(self, updates, *, round_index):
        return WeightedMeanAggregator().aggregate(updates, round_index=round_index)


# -- known answers ------------------------------------------------------------------------
def test_median_known_answer():
    u = ups([[1, 10, -3], [2, 20, -1], [100, -5, 0]])
    r = CoordinateMedian().aggregate(u, round_index=0)
    np.testing.assert_array_equal(r.delta, np.array([2, 10, -1], dtype=np.float32))
    assert r.included == (0, 1, 2)
    assert r.upload_bytes == {i: len(serialize_vector(x.delta)) for i, x in enumerate(u)}


def test_trimmed_mean_known_answer():
    u = ups([[1, 0], [2, 0], [3, 3], [4, 6], [1000, -1000]])
    r = TrimmedMean(f=1).aggregate(u, round_index=0)
    # coordinate 0: sorted 1,2,3,4,1000 -> mean(2,3,4)=3 ; coordinate 1: -1000,0,0,3,6 -> mean(0,0,3)=1
    np.testing.assert_allclose(r.delta, [3.0, 1.0])


def test_trimmed_mean_f0_is_mean():
    rows = np.random.default_rng(1).normal(size=(6, 5))
    r = TrimmedMean(f=0).aggregate(ups(rows), round_index=0)
    np.testing.assert_allclose(r.delta, rows.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_krum_known_answer_and_scores():
    # 5 points on a line; n=5, f=1 -> each score sums n-f-2=2 nearest squared distances
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    s = krum_scores(x, 1)
    np.testing.assert_allclose(s, [1 + 4, 1 + 1, 1 + 1, 1 + 4, 49 + 64])
    r = Krum(f=1).aggregate(ups(x), round_index=0)
    assert r.included == (1,)  # tie between 1 and 2 -> first
    np.testing.assert_array_equal(r.delta, [1.0])


def test_krum_picks_honest_cluster():
    honest, bad = honest_and_bad(8, 3)
    rows = np.vstack([bad[:2], honest, bad[2:]])
    u = ups(rows)
    r = Krum(f=3).aggregate(u, round_index=0)
    (picked,) = r.included
    assert 2 <= picked < 10, "Krum must select an honest update"
    assert np.linalg.norm(r.delta - honest.mean(axis=0)) < 1.0


def test_multikrum_selects_only_honest():
    honest, bad = honest_and_bad(8, 3, seed=3)
    rows = np.vstack([honest, bad])
    r = MultiKrum(f=3, m=6).aggregate(ups(rows), round_index=0)
    assert set(r.included) <= set(range(8)) and len(r.included) == 6
    r2 = MultiKrum(f=3).aggregate(ups(rows), round_index=0)  # m = n - f = 8
    assert set(r2.included) == set(range(8))
    np.testing.assert_allclose(r2.delta, honest.mean(axis=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="m=9"):
        MultiKrum(f=3, m=9).aggregate(ups(rows), round_index=0)


@pytest.mark.parametrize("f", [1, 2, 4])
def test_median_and_trimmed_mean_stay_in_honest_range(f):
    n_honest = 2 * f + 1
    rng = np.random.default_rng(f)
    honest = rng.normal(0, 1, (n_honest, 30))
    for bad_value in (1e6, -1e6):
        rows = np.vstack([honest, np.full((f, 30), bad_value)])
        for agg in (CoordinateMedian(f), TrimmedMean(f)):
            r = agg.aggregate(ups(rows), round_index=0)
            assert np.all(r.delta >= honest.min(axis=0) - 1e-5), agg.name
            assert np.all(r.delta <= honest.max(axis=0) + 1e-5), agg.name
    # plain mean is dragged far away by the same attackers
    mean = WeightedMeanAggregator(weighted=False).aggregate(ups(rows), round_index=0).delta
    assert np.abs(mean).max() > 1e4


def test_bulyan_known_answer_and_robustness():
    # n = 4f + 3 with f = 1: 7 updates, 1 attacker
    honest, bad = honest_and_bad(6, 1, d=10, seed=5, bad_value=1e3)
    rows = np.vstack([honest, bad])
    r = Bulyan(f=1).aggregate(ups(rows), round_index=0)
    assert 6 not in r.included and len(r.included) == 5  # theta = n - 2f
    assert np.all(r.delta >= honest.min(axis=0) - 1e-5) and np.all(r.delta <= honest.max(axis=0) + 1e-5)
    # identical honest updates -> exactly that value
    same = np.vstack([np.tile([1.0, -2.0], (6, 1)), [[500.0, 500.0]]])
    np.testing.assert_allclose(Bulyan(f=1).aggregate(ups(same), round_index=0).delta, [1.0, -2.0])


# -- breakdown points ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,f,need",
    [(Krum, 2, 7), (MultiKrum, 2, 7), (CoordinateMedian, 2, 5), (TrimmedMean, 2, 5), (Bulyan, 1, 7), (Bulyan, 2, 11)],
)
def test_too_few_clients_raise(cls, f, need):
    assert cls.min_clients(f) == need
    assert cls.breakdown_point(need) == f and cls.breakdown_point(need - 1) == f - 1
    rows = np.random.default_rng(0).normal(size=(need, 4))
    cls(f).aggregate(ups(rows), round_index=0)  # exactly enough: fine
    with pytest.raises(ConfigError, match=rf"f={f}.*n={need - 1}"):
        cls(f).aggregate(ups(rows[:-1]), round_index=0)


def test_bulyan_requires_4f_plus_3():
    rows = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ConfigError, match=r"4f\+3 = 11"):
        Bulyan(f=2).aggregate(ups(rows), round_index=0)


@pytest.mark.parametrize("bad_f", [-1, 1.5, "2", True])
def test_invalid_f_rejected(bad_f):
    with pytest.raises(ConfigError, match="f "):
        Krum(bad_f)


def test_inputs_validated():
    with pytest.raises(DataError, match="no client updates"):
        CoordinateMedian().aggregate([], round_index=0)
    with pytest.raises(DataError, match="length"):
        TrimmedMean(0).aggregate([ClientUpdate(0, np.zeros(3, np.float32), 1), ClientUpdate(1, np.zeros(4, np.float32), 1)],
                                 round_index=0)


# -- norm bounding ------------------------------------------------------------------------
def test_clip_update():
    v = np.array([3.0, 4.0], dtype=np.float32)
    np.testing.assert_allclose(clip_update(v, 1.0), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(clip_update(v, 10.0), v)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="bound"):
            clip_update(v, bad)


def test_norm_bounding_known_answer_and_influence():
    u = ups([[3, 4], [0, 1], [300, 400]], weights=[1, 1, 2])
    r = NormBounding(bound=2.0).aggregate(u, round_index=0)
    expect = (np.array([1.2, 1.6]) + np.array([0.0, 1.0]) + 2 * np.array([1.2, 1.6])) / 4
    np.testing.assert_allclose(r.delta, expect, rtol=1e-6)
    assert r.metrics["clipped"] == 2
    # the attacker's influence is bounded by bound * w_i / sum(w)
    honest = NormBounding(2.0).aggregate(u[:2], round_index=0).delta
    assert NormBounding.breakdown_point(10) == 0
    assert np.linalg.norm(r.delta - (honest * 2 / 4)) <= 2.0 * 2 / 4 + 1e-6


def test_client_clipping_composes_with_secure():
    u = ups([[3, 4], [0, 1]])
    agg = ClientClipping(FakeSecure(), bound=1.0)
    assert agg.hides_individual_updates and not agg.needs_individual_updates
    r = agg.aggregate(u, round_index=0)
    np.testing.assert_allclose(r.delta, [(0.6 + 0) / 2, (0.8 + 1) / 2], rtol=1e-6)
    check_compatible(agg)


# -- compatibility rule -------------------------------------------------------------------
def test_flags():
    for agg in (Krum(1), MultiKrum(1), CoordinateMedian(), TrimmedMean(1), Bulyan(1), NormBounding(1.0)):
        assert agg.needs_individual_updates
    assert not WeightedMeanAggregator.needs_individual_updates


@pytest.mark.parametrize("defence", [Krum(1), CoordinateMedian(1), Bulyan(1), TrimmedMean(1), NormBounding(1.0)])
def test_needs_individual_refused_with_secure(defence):
    with pytest.raises(ConfigError, match="needs every client's update in the clear"):
        check_combination(defence, FakeSecure())
    with pytest.raises(ConfigError, match="fake_secagg"):
        ClientClipping(_Wrap(defence, FakeSecure()), 1.0)


class _Wrap(Aggregator):
    """A composite: robust rule and secure protocol as components."""

    def __init__(self, a, b):
        self.components = (a, b)

    def aggregate(self, updates, *, round_index):  # pragma: no cover - never reached
        return AggregateResult(np.zeros(1, np.float32), ())


def test_compatible_combinations_pass():
    check_compatible(FakeSecure())
    check_compatible(Krum(1))
    check_combination(ClientClipping(WeightedMeanAggregator(), 1.0), FakeSecure())
    check_combination(WeightedMeanAggregator(), FakeSecure())
