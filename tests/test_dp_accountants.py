"""Accountants vs Opacus and dp-accounting called directly; calibration; parameter validation.

Stated tolerances:
* our wrapper vs the same engine called directly: relative 1e-9 (same computation);
* PLD (dp-accounting) vs PRV (Opacus), both near-tight numerical engines: within 5% or
  0.02 absolute (Opacus PRV's default eps_error is 0.01 absolute, it returns an upper bound);
* PLD <= RDP (RDP is a looser upper bound) up to 1e-6;
* Opacus RDP vs dp-accounting RDP: same RDP curve, but Opacus uses the classic RDP->DP
  conversion and orders >= 1.1 while dp-accounting uses the improved conversion of
  Canonne-Kamath-Steinke 2020: dpa-rdp <= opacus-rdp * (1 + 1e-6) and within 50%.
"""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

from secagg.dp.accountants import (
    DpaRdp,
    UnsupportedHistoryError,
    client_epsilons,
    epsilon_table,
    get_accountant,
    participant_rdp,
)
from secagg.dp.calibrate import calibrate_noise_multiplier
from secagg.dp.events import (
    DistributedDiscreteGaussianEvent,
    SampledGaussianEvent,
    Sampling,
    compress,
    event_from_dict,
)
from secagg.errors import ConfigError

DELTA = 1e-5
# corners and interior points of noise 0.5-4, sampling rate 0.001-1, steps 1-10,000
GRID = [(0.5, 0.001, 1), (4.0, 1.0, 1), (0.5, 1.0, 1), (0.5, 0.001, 10_000), (4.0, 0.001, 10_000),
        (4.0, 1.0, 10_000), (0.5, 1.0, 10_000), (1.0, 0.01, 1_000), (2.0, 0.1, 100)]


def _opacus(cls, z, q, t):
    a = cls()
    a.history = [(z, q, t)]
    return a.get_epsilon(delta=DELTA)


def _dpa(make, z, q, t):
    a = make()
    ev = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        ev = dp_accounting.PoissonSampledDpEvent(q, ev)
    a.compose(ev, t)
    return a.get_epsilon(DELTA)


@pytest.mark.parametrize("z,q,t", GRID)
def test_grid_matches_engines_called_directly(z, q, t):
    ev = [SampledGaussianEvent(z, q, t)]
    tab = epsilon_table(ev, DELTA)
    assert tab["opacus-rdp"] == pytest.approx(_opacus(RDPAccountant, z, q, t), rel=1e-9)
    assert tab["dpa-rdp"] == pytest.approx(_dpa(rdp.RdpAccountant, z, q, t), rel=1e-9)
    assert tab["dpa-rdp"] <= tab["opacus-rdp"] * (1 + 1e-6)
    assert tab["dpa-rdp"] >= 0.5 * tab["opacus-rdp"]
    if tab["dpa-rdp"] > 50:  # grid engines refuse, saying why, instead of exhausting memory
        for n in ("dpa-pld", "opacus-prv", "opacus-gdp"):
            assert isinstance(tab[n], str) and "numerical range" in tab[n]
        return
    assert tab["dpa-pld"] == pytest.approx(_dpa(pld.PLDAccountant, z, q, t), rel=1e-9)
    assert tab["opacus-prv"] == pytest.approx(_opacus(PRVAccountant, z, q, t), rel=1e-9)
    with pytest.warns(UserWarning):
        gdp = _opacus(GaussianAccountant, z, q, t)
    assert tab["opacus-gdp"] == pytest.approx(gdp, rel=1e-9)
    assert tab["dpa-pld"] <= tab["dpa-rdp"] * (1 + 1e-6)
    assert abs(tab["opacus-prv"] - tab["dpa-pld"]) <= max(0.05 * tab["dpa-pld"], 0.02)


def test_heterogeneous_rounds_match_engines():
    sched = [(1.0, 0.01, 30), (2.0, 0.05, 20), (0.8, 0.02, 10)]
    evs = [SampledGaussianEvent(z, q, t) for z, q, t in sched]
    o = RDPAccountant()
    for z, q, t in sched:
        for _ in range(t):
            o.step(noise_multiplier=z, sample_rate=q)
    assert get_accountant("opacus-rdp").epsilon(evs, DELTA) == pytest.approx(o.get_epsilon(DELTA), rel=1e-9)
    p = PRVAccountant()
    p.history = [(z, q, t) for z, q, t in sched]
    assert get_accountant("opacus-prv").epsilon(evs, DELTA) == pytest.approx(p.get_epsilon(DELTA), rel=1e-9)
    d = rdp.RdpAccountant()
    for z, q, t in sched:
        d.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), t)
    assert get_accountant("dpa-rdp").epsilon(evs, DELTA) == pytest.approx(d.get_epsilon(DELTA), rel=1e-9)
    with pytest.raises(UnsupportedHistoryError, match="constant"):
        get_accountant("opacus-gdp").epsilon(evs, DELTA)
    # composition is monotone: more rounds never cost less
    assert get_accountant("dpa-rdp").epsilon(evs[:2], DELTA) < get_accountant("dpa-rdp").epsilon(evs, DELTA)


def test_compress_merges_identical_rounds_without_changing_epsilon():
    evs = [SampledGaussianEvent(1.0, 0.1)] * 5 + [SampledGaussianEvent(2.0, 0.1)] * 3
    c = compress(evs)
    assert [e.count for e in c] == [5, 3]
    a = get_accountant("dpa-rdp")
    assert a.epsilon(c, DELTA) == pytest.approx(a.epsilon(evs, DELTA), rel=1e-12)


def test_fixed_size_sampling_replace_one():
    ev = SampledGaussianEvent(1.5, 0.1, 50, Sampling.FIXED_SIZE, population=100)
    assert ev.sample_size == 10
    # replace-one: the sum of clipped updates has L2 sensitivity 2C, so the engine gets z / 2
    d = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    d.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.75)), 50)
    assert get_accountant("dpa-rdp").epsilon([ev], DELTA, "replace_one") == pytest.approx(d.get_epsilon(DELTA), rel=1e-9)
    undoubled = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    undoubled.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(1.5)), 50)
    assert get_accountant("dpa-rdp").epsilon([ev], DELTA, "replace_one") > 1.5 * undoubled.get_epsilon(DELTA)
    with pytest.raises(UnsupportedHistoryError, match="replace-one"):
        get_accountant("dpa-rdp").epsilon([ev], DELTA, "add_remove")
    with pytest.raises(UnsupportedHistoryError, match="Poisson"):
        get_accountant("opacus-rdp").epsilon([ev], DELTA, "replace_one")
    with pytest.raises(UnsupportedHistoryError, match="replace-one"):
        get_accountant("dpa-rdp").epsilon([SampledGaussianEvent(1.0, 0.1)], DELTA, "replace_one")
    # full participation under replace-one = doubled sensitivity = half the noise multiplier
    e1 = get_accountant("dpa-rdp").epsilon([SampledGaussianEvent(2.0, 1.0, 3)], DELTA, "replace_one")
    e2 = get_accountant("dpa-rdp").epsilon([SampledGaussianEvent(1.0, 1.0, 3)], DELTA, "add_remove")
    assert e1 == pytest.approx(e2, rel=1e-12)


def test_fixed_size_full_sample_equals_full_participation_and_is_monotone_in_q():
    # all 10 of 10 clients every round is the same mechanism as Poisson with q = 1
    pois = SampledGaussianEvent(2.0, 1.0, 50)
    full = SampledGaussianEvent(2.0, 1.0, 50, Sampling.FIXED_SIZE, population=10)
    assert full.sample_size == 10
    for name in ("dpa-rdp", "dpa-pld"):
        a = get_accountant(name)
        if a.unsupported_reason([full], "replace_one") is not None:
            continue
        assert a.epsilon([full], DELTA, "replace_one") == pytest.approx(a.epsilon([pois], DELTA, "replace_one"), rel=1e-3)
    a = get_accountant("dpa-rdp")
    assert a.epsilon([full], DELTA, "replace_one") == pytest.approx(a.epsilon([pois], DELTA, "replace_one"), rel=1e-9)
    # more clients per round can only cost more, and never more than all clients (the engine's
    # without-replacement bound alone exceeds the full-participation one at 6..9 of 10)
    eps = [a.epsilon([SampledGaussianEvent(2.0, m / 10, 50, Sampling.FIXED_SIZE, 10)], DELTA, "replace_one")
           for m in range(1, 11)]
    assert all(x <= y * (1 + 1e-12) for x, y in zip(eps, eps[1:])), eps
    assert eps[0] < eps[4] < eps[9] and max(eps) == pytest.approx(eps[9], rel=1e-12)
    # heterogeneous history: the per-event minimum composes
    two = [SampledGaussianEvent(2.0, 0.9, 5, Sampling.FIXED_SIZE, 10), SampledGaussianEvent(2.0, 0.1, 5, Sampling.FIXED_SIZE, 10)]
    assert a.epsilon(two, DELTA, "replace_one") <= a.epsilon([SampledGaussianEvent(2.0, 1.0, 10)], DELTA, "replace_one")


def test_fixed_size_sample_size_is_explicit_and_validated():
    # the core draws ceil(q N) clients: 0.25 * 10 -> 3 (not round(2.5) = 2); float noise 0.3 * 10 -> 3
    assert SampledGaussianEvent(1.0, 0.25, 1, Sampling.FIXED_SIZE, 10).sample_size == 3
    assert SampledGaussianEvent(1.0, 0.3, 1, Sampling.FIXED_SIZE, 10).sample_size == 3
    ev = SampledGaussianEvent(1.0, 0.1, 1, Sampling.FIXED_SIZE, 10, sample_size=3)  # min_clients = 3
    assert ev.sample_size == 3 and event_from_dict(ev.to_dict()) == ev
    d = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    d.compose(dp_accounting.SampledWithoutReplacementDpEvent(10, 3, dp_accounting.GaussianDpEvent(0.5)), 1)
    assert get_accountant("dpa-rdp").epsilon([ev], DELTA, "replace_one") == pytest.approx(d.get_epsilon(DELTA), rel=1e-9)
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ConfigError, match="sample_size"):
            SampledGaussianEvent(1.0, 0.1, 1, Sampling.FIXED_SIZE, 10, sample_size=bad)
    with pytest.raises(ConfigError, match="sample_size"):
        SampledGaussianEvent(1.0, 0.1, 1, Sampling.POISSON, sample_size=3)


def test_distributed_discrete_gaussian_event():
    # large local noise: tau ~ 0 and Prop. 14 reduces to the Gaussian with z = sqrt(n) sigma / Delta_2
    ev = DistributedDiscreteGaussianEvent(l2_sensitivity=100.0, l1_sensitivity=1000.0, local_variance=50.0**2,
                                          survivors=16, dim=64, count=10)
    z = math.sqrt(16) * 50.0 / 100.0
    assert ev.tau < 1e-100
    gauss = participant_rdp(SampledGaussianEvent(z, 1.0, 10))
    np.testing.assert_allclose(participant_rdp(ev), gauss, rtol=1e-9)
    assert get_accountant("dpa-rdp").epsilon([ev], DELTA) == pytest.approx(
        get_accountant("dpa-rdp").epsilon([SampledGaussianEvent(z, 1.0, 10)], DELTA), rel=1e-6)
    tab = epsilon_table([ev], DELTA)
    assert tab["opacus-rdp"] == pytest.approx(_opacus(RDPAccountant, z, 1.0, 10), rel=1e-6)
    assert "RDP bound only" in tab["dpa-pld"] and "RDP bound only" in tab["opacus-prv"]
    # fewer survivors -> less total noise -> larger epsilon (noise variance is the survivors' sum)
    fewer = DistributedDiscreteGaussianEvent(100.0, 1000.0, 50.0**2, survivors=8, dim=64, count=10)
    assert get_accountant("dpa-rdp").epsilon([fewer], DELTA) > get_accountant("dpa-rdp").epsilon([ev], DELTA)
    # tiny local noise: tau is no longer negligible and only adds privacy loss
    small = DistributedDiscreteGaussianEvent(10.0, 100.0, 0.3, survivors=100, dim=64)
    assert small.tau > 1e-3
    assert all(a >= b for a, b in zip(participant_rdp(small), participant_rdp(
        SampledGaussianEvent(math.sqrt(100 * 0.3) / 10.0, 1.0))))
    assert event_from_dict(ev.to_dict()) == ev


def test_client_epsilons_compose_only_joined_rounds():
    evs = [SampledGaussianEvent(1.0, 0.1), SampledGaussianEvent(2.0, 0.1), SampledGaussianEvent(1.0, 0.1)]
    parts = [[1, 2], [2], [2, 3]]
    got = client_epsilons(evs, parts, DELTA)
    d = rdp.RdpAccountant()
    d.compose(dp_accounting.GaussianDpEvent(1.0), 2)
    d.compose(dp_accounting.GaussianDpEvent(2.0))
    assert got[2] == pytest.approx(d.get_epsilon(DELTA), rel=1e-9)
    one = rdp.RdpAccountant()
    one.compose(dp_accounting.GaussianDpEvent(1.0))
    assert got[1] == pytest.approx(one.get_epsilon(DELTA), rel=1e-9) and got[1] == got[3]
    assert 99 not in got
    capped = client_epsilons(evs, parts, DELTA, population_epsilon=1.0)
    assert max(capped.values()) == 1.0


def test_calibration_meets_target_and_is_minimal():
    for name in ("dpa-rdp", "opacus-rdp"):
        r = calibrate_noise_multiplier(2.0, DELTA, 100, 0.05, accountant=name)
        a = get_accountant(name)
        assert r.achieved_epsilon <= 2.0
        assert a.epsilon([SampledGaussianEvent(r.noise_multiplier, 0.05, 100)], DELTA) <= 2.0
        assert a.epsilon([SampledGaussianEvent(r.noise_multiplier * 0.98, 0.05, 100)], DELTA) > 2.0
    # both engines agree on the noise within a few percent
    z1 = calibrate_noise_multiplier(2.0, DELTA, 100, 0.05, "dpa-rdp").noise_multiplier
    z2 = calibrate_noise_multiplier(2.0, DELTA, 100, 0.05, "opacus-rdp").noise_multiplier
    assert z1 == pytest.approx(z2, rel=0.1)


@pytest.mark.parametrize("kwargs,param", [
    (dict(epsilon=0), "epsilon"), (dict(epsilon=-1), "epsilon"), (dict(epsilon=float("nan")), "epsilon"),
    (dict(delta=0), "delta"), (dict(delta=1.0), "delta"), (dict(delta=-1e-5), "delta"),
    (dict(rounds=0), "rounds"), (dict(sampling_rate=0), "sampling_rate"), (dict(sampling_rate=1.5), "sampling_rate"),
    (dict(accountant="nope"), "accountant"),
])
def test_calibration_rejects_bad_parameters(kwargs, param):
    args = dict(epsilon=1.0, delta=1e-5, rounds=10, sampling_rate=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=param):
        calibrate_noise_multiplier(**args)


@pytest.mark.parametrize("kwargs,param", [
    (dict(noise_multiplier=0), "noise_multiplier"), (dict(noise_multiplier=-1), "noise_multiplier"),
    (dict(noise_multiplier=float("inf")), "noise_multiplier"), (dict(sampling_rate=0.0), "sampling_rate"),
    (dict(sampling_rate=-0.1), "sampling_rate"), (dict(sampling_rate=2), "sampling_rate"), (dict(count=0), "count"),
    (dict(sampling="bernoulli"), "sampling"), (dict(sampling="fixed_size"), "population"),
])
def test_events_reject_bad_parameters(kwargs, param):
    args = dict(noise_multiplier=1.0, sampling_rate=0.1)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=param):
        SampledGaussianEvent(**args)


def test_accountant_rejects_bad_delta_and_unknown_name():
    with pytest.raises(ConfigError, match="delta"):
        DpaRdp().epsilon([SampledGaussianEvent(1.0, 0.1)], 0.0)
    with pytest.raises(ConfigError, match="accountant"):
        get_accountant("rdp2")
    assert DpaRdp().epsilon([], 1e-5) == 0.0
