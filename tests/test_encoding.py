"""Fixed-point encoding: exact integer sums, bounded float error, budget validation, clipping reported."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from secagg.encoding import FixedPointConfig, decode_sum, encode, quantize, to_ring, to_signed
from secagg.errors import ConfigError, DataError


@settings(deadline=None, max_examples=40)
@given(
    k=st.sampled_from([16, 31, 32, 48, 64]),
    vals=st.lists(st.integers(-(2**14), 2**14), min_size=1, max_size=20),
)
def test_ring_round_trip_signed(k, vals):
    q = np.array(vals, dtype=np.int64)
    assert np.array_equal(to_signed(to_ring(q, k), k), q)


@settings(deadline=None, max_examples=30)
@given(
    n=st.integers(1, 12),
    bits=st.integers(4, 16),
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(st.integers(1, 50), min_size=12, max_size=12),
)
def test_weighted_sum_is_exact_in_integers_and_mean_within_one_step(n, bits, seed, weights):
    cfg = FixedPointConfig(clip=2.0, bits=bits, modulus_bits=32)
    cfg.check_budget(n, max(weights[:n]))
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-2, 2, size=(n, 7))
    total = np.zeros(7, dtype=np.uint32)
    qsum = np.zeros(7, dtype=np.int64)
    for i in range(n):
        r = np.random.default_rng(seed + i)
        e = encode(xs[i], cfg, weight=weights[i], rng=r)
        q, _ = quantize(xs[i], cfg, np.random.default_rng(seed + i))
        qsum += weights[i] * q
        total += e.values
    assert np.array_equal(to_signed(total, 32), qsum)  # exact in the integer domain
    W = sum(weights[:n])
    mean = decode_sum(total, cfg, W)
    ref = (np.array(weights[:n])[:, None] * xs).sum(0) / W
    assert np.max(np.abs(mean - ref)) <= cfg.clip / 2**bits + 1e-12


def test_stochastic_rounding_is_unbiased():
    cfg = FixedPointConfig(clip=1.0, bits=2)
    x = np.full(200_000, 0.1)  # 0.4 steps
    q, _ = quantize(x, cfg, np.random.default_rng(1))
    assert set(np.unique(q)) == {0, 1}
    assert abs(q.mean() - 0.4) < 0.01


def test_clipped_values_are_counted_not_silent():
    cfg = FixedPointConfig(clip=1.0, bits=8)
    e = encode(np.array([0.5, 3.0, -7.0, 1.0]), cfg)
    assert e.clipped == 2
    assert np.allclose(decode_sum(e.values, cfg), [0.5, 1.0, -1.0, 1.0], atol=1 / 256)


def test_budget_error_names_parameters():
    cfg = FixedPointConfig(clip=1.0, bits=20, modulus_bits=32)
    with pytest.raises(ConfigError, match=r"n_clients \* max_weight \* 2\*\*bits.*modulus_bits=32"):
        cfg.check_budget(1000, 10)
    cfg.check_budget(1000, 1)  # 2*1000*2^20 < 2^32 fits
    assert FixedPointConfig.smallest_modulus(20, 1000, 10) == 64
    with pytest.raises(ConfigError):
        FixedPointConfig.smallest_modulus(60, 1000, 10)


@pytest.mark.parametrize("kwargs", [dict(clip=0.0), dict(clip=float("nan")), dict(bits=0), dict(modulus_bits=65), dict(bits=40, modulus_bits=32)])
def test_bad_config_rejected(kwargs):
    with pytest.raises(ConfigError):
        FixedPointConfig(**kwargs)


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([np.inf]), np.zeros((2, 2))])
def test_nan_inf_and_shape_rejected(bad):
    with pytest.raises(DataError):
        encode(bad, FixedPointConfig())


def test_weight_must_be_positive_int():
    with pytest.raises(ConfigError):
        encode(np.zeros(3), FixedPointConfig(), weight=0)
