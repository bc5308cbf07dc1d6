"""Over-selection, deadlines with simulated latency, partial-participation weighting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.errors import ConfigError, NotEnoughClientsError
from secagg.fl.aggregator import Aggregator, ClientUpdate, WeightedMeanAggregator
from secagg.fl.compression import CompressedAggregator, UniformQuantizer
from secagg.fl.participation import LogNormalLatency, ParticipationAggregator, over_select, over_selection_fraction
from secagg.fl.robust import CoordinateMedian


class FakeSecure(Aggregator):
    name = "fake_secagg"
    hides_individual_updates = True

    def aggregate(self, updates, *, round_index):
        return WeightedMeanAggregator().aggregate(updates, round_index=round_index)


def table_latency(t):
    return lambda cid, rnd: t[cid]


def ups(n=6, d=3, weights=None):
    weights = weights or [1] * n
    return [ClientUpdate(i, np.full(d, float(i), np.float32), weights[i]) for i in range(n)]


LAT = {0: 5.0, 1: 1.0, 2: 3.0, 3: 0.5, 4: 9.0, 5: 2.0}


def test_first_m_to_report_are_aggregated():
    agg = ParticipationAggregator(WeightedMeanAggregator(), target=3, latency=table_latency(LAT))
    r = agg.aggregate(ups(), round_index=0)
    assert set(r.included) == {3, 1, 5}  # latencies 0.5, 1, 2
    np.testing.assert_allclose(r.delta, [3.0, 3.0, 3.0])  # mean of 3, 1, 5
    assert set(r.upload_bytes) == {1, 3, 5}
    assert r.metrics["round_time_s"] == 2.0 and r.metrics["cut_by_target"] == 3


def test_deadline_drops_stragglers():
    agg = ParticipationAggregator(WeightedMeanAggregator(), deadline_s=4.0, latency=table_latency(LAT))
    r = agg.aggregate(ups(), round_index=0)
    assert set(r.included) == {1, 2, 3, 5} and r.metrics["late"] == 2
    assert r.metrics["round_time_s"] == 4.0  # the server waited for the deadline
    strict = ParticipationAggregator(WeightedMeanAggregator(), deadline_s=0.1, min_reports=1, latency=table_latency(LAT))
    with pytest.raises(NotEnoughClientsError, match="min_reports=1"):
        strict.aggregate(ups(), round_index=0)
    assert strict.selections == {}  # no state changed by the failed round


def test_selected_weighting_counts_missing_as_zero():
    w = [1, 2, 3, 4, 5, 6]
    agg = ParticipationAggregator(WeightedMeanAggregator(), target=2, latency=table_latency(LAT), weighting="selected")
    r = agg.aggregate(ups(weights=w), round_index=0)
    # reporters 3 (n=4) and 1 (n=2): sum n_i d_i / sum over all selected n = (4*3 + 2*1) / 21
    np.testing.assert_allclose(r.delta, np.full(3, 14 / 21), rtol=1e-6)


def test_inverse_probability_weighting_learns_report_rates():
    agg = ParticipationAggregator(WeightedMeanAggregator(), deadline_s=4.0, latency=table_latency(LAT),
                                  weighting="inverse_probability")
    for r in range(3):
        agg.aggregate(ups(), round_index=r)
    assert agg.report_probability(1) == pytest.approx(4 / 5)
    assert agg.report_probability(4) == pytest.approx(1 / 5)
    # make client 2 sometimes late: its weight rises relative to always-on-time clients
    lat2 = dict(LAT)
    lat2[2] = 8.0
    agg.latency = table_latency(lat2)
    agg.aggregate(ups(), round_index=3)
    agg.latency = table_latency(LAT)
    r = agg.aggregate(ups(), round_index=4)
    # expected: weights 1/p with p from the 4 earlier rounds (client 2: 3 of 4 reports -> 4/6; others 5/6)
    wts = {1: 6 / 5, 2: 6 / 4, 3: 6 / 5, 5: 6 / 5}
    expect = sum(w * c for c, w in wts.items()) / sum(wts.values())
    np.testing.assert_allclose(r.delta, np.full(3, expect), rtol=1e-6)


def test_composes_with_secure_and_refuses_robust_in_secure():
    agg = ParticipationAggregator(CompressedAggregator(FakeSecure(), UniformQuantizer(8)), target=4,
                                  latency=table_latency(LAT), weighting="inverse_probability")
    assert agg.hides_individual_updates and not agg.needs_individual_updates
    r = agg.aggregate(ups(), round_index=0)
    assert set(r.included) == {1, 2, 3, 5}

    class Both(Aggregator):
        components = (CoordinateMedian(), FakeSecure())

        def aggregate(self, updates, *, round_index):  # pragma: no cover - construction is refused
            raise AssertionError

    with pytest.raises(ConfigError, match="median needs every client's update in the clear"):
        ParticipationAggregator(Both())
    # a robust rule inside a plaintext participation wrapper is fine
    rob = ParticipationAggregator(CoordinateMedian(1), target=3, latency=table_latency(LAT))
    assert rob.needs_individual_updates
    np.testing.assert_allclose(rob.aggregate(ups(), round_index=0).delta, [3.0, 3.0, 3.0])


def test_parameters_validated():
    inner = WeightedMeanAggregator()
    for kw, msg in [({"target": 0}, "target"), ({"deadline_s": -1.0}, "deadline_s"), ({"min_reports": 0}, "min_reports"),
                    ({"target": 2, "min_reports": 3}, "exceeds target"), ({"weighting": "magic"}, "weighting")]:
        with pytest.raises(ConfigError, match=msg):
            ParticipationAggregator(inner, **kw)
    with pytest.raises(ConfigError, match="latency of client"):
        ParticipationAggregator(inner, latency=lambda c, r: float("nan")).aggregate(ups(), round_index=0)
    with pytest.raises(ConfigError, match="straggler_prob"):
        LogNormalLatency(straggler_prob=2.0)


def test_lognormal_latency_is_seeded_and_heterogeneous():
    lat = LogNormalLatency(median_s=2.0, sigma=0.3, device_sigma=1.0, straggler_prob=0.1, seed=1)
    a = [lat(c, 0) for c in range(200)]
    assert a == [lat(c, 0) for c in range(200)]
    assert a != [lat(c, 1) for c in range(200)]
    assert 1.0 < float(np.median(a)) < 4.0
    # the per-device speed persists: a device's latency correlates across rounds
    b = [lat(c, 1) for c in range(200)]
    assert np.corrcoef(np.log(a), np.log(b))[0, 1] > 0.5
    assert all(t > 0 for t in a)


def test_over_selection_helpers():
    sel = over_select(range(100), target=10, factor=0.3, rng=np.random.default_rng(0))
    assert len(sel) == 13 and len(set(sel)) == 13 and sel == sorted(sel)
    assert len(over_select(range(5), target=10)) == 5
    for target, n in [(10, 100), (7, 30), (13, 17), (3, 3)]:
        fr = over_selection_fraction(target, n, 0.3)
        assert math.ceil(fr * n) == min(n, math.ceil(target * 1.3))
    with pytest.raises(ConfigError, match="target"):
        over_selection_fraction(0, 10)


def test_wrappers_compose_with_real_secure_aggregation():
    """Over-selection + pre-mask trust weights + client clipping + 8-bit compression around the real
    Bonawitz aggregator give the same aggregate as the same chain around plaintext FedAvg."""
    from secagg.fl.robust import ClientClipping
    from secagg.fl.secure_aggregators import SecAggAggregator
    from secagg.fl.trust import PreMaskTrustWeighting

    rng = np.random.default_rng(0)
    updates = [ClientUpdate(i, rng.normal(0, 0.05, 40).astype(np.float32), 10 + i) for i in range(6)]
    updates[5] = ClientUpdate(5, np.full(40, 0.5, np.float32), 15)  # large: gets clipped
    trust = {0: 1.0, 1: 0.5, 2: 0.0, 3: 1.0, 4: 0.8, 5: 1.0}

    def chain(inner):
        return ParticipationAggregator(
            PreMaskTrustWeighting(CompressedAggregator(ClientClipping(inner, bound=0.4), UniformQuantizer(8, stochastic=False)),
                                  trust),
            target=5, latency=table_latency(LAT), weighting="inverse_probability")

    secure = chain(SecAggAggregator(clip=1.0, bits=16, seed=0))
    plain = chain(WeightedMeanAggregator())
    assert secure.hides_individual_updates is bool(getattr(SecAggAggregator, "hides_individual_updates", False))
    for rnd in range(2):
        rs = secure.aggregate(updates, round_index=rnd)
        rp = plain.aggregate(updates, round_index=rnd)
        assert set(rs.included) == set(rp.included) == {0, 1, 3, 5}  # 4 is cut by target, 2 has trust 0
        np.testing.assert_allclose(rs.delta, rp.delta, atol=1e-3)
        assert rs.metrics["smpc_survivors"] == 4
