"""Shamir sharing and the AES-CTR mask PRG."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from secagg.errors import ConfigError, ProtocolError
from secagg.smpc import prg, shamir


def test_every_t_subset_reconstructs_and_fewer_do_not():
    secrets = [0, 1, 2**256 - 1, int.from_bytes(b"\x5a" * 32, "big")]
    holders = [1, 2, 3, 4, 5, 6]
    t = 3
    shares = shamir.split(secrets, t, holders)
    for sub in itertools.combinations(range(len(holders)), t):
        got = shamir.combine_many([holders[j] for j in sub], [[row[j] for j in sub] for row in shares], t)
        assert got == secrets
    # t-1 shares interpolate to something else (w.h.p.) -- and the API refuses them
    with pytest.raises(ProtocolError):
        shamir.combine([(1, shares[0][0]), (2, shares[0][1])], t)


def test_shares_of_same_secret_differ_between_calls():
    a = shamir.split([42], 2, [1, 2, 3])[0]
    b = shamir.split([42], 2, [1, 2, 3])[0]
    assert a != b


@settings(deadline=None, max_examples=25)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(1, 6), extra=st.integers(0, 4))
def test_shamir_round_trip_random(secret, t, extra):
    holders = list(range(3, 3 + t + extra))
    sh = shamir.split([secret], t, holders)[0]
    pts = list(zip(holders, sh))[::-1]
    assert shamir.combine(pts, t).to_bytes(32, "big") == secret
    assert all(shamir.share_from_bytes(shamir.share_to_bytes(y)) == y for y in sh)


def test_shamir_bad_parameters():
    with pytest.raises(ConfigError):
        shamir.split([1], 4, [1, 2, 3])
    with pytest.raises(ConfigError):
        shamir.split([1], 2, [0, 1, 2])
    with pytest.raises(ConfigError):
        shamir.split([1], 2, [1, 1, 2])
    with pytest.raises(ProtocolError):
        shamir.share_from_bytes(b"\xff" * 33)


def test_prg_deterministic_full_seed_and_known_answer():
    seed = bytes(range(32))
    a = prg.expand(seed, 1000)
    assert a.dtype == np.uint32 and np.array_equal(a, prg.expand(seed, 1000))
    # prefix property of CTR mode
    assert np.array_equal(prg.expand(seed, 10), a[:10])
    # flipping the last seed bit changes the stream: the whole 256-bit seed is used
    seed2 = seed[:-1] + bytes([seed[-1] ^ 1])
    assert not np.array_equal(a, prg.expand(seed2, 1000))
    # AES-256-CTR known answer (first block of keystream, key 00..1f, zero counter block)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ref = Cipher(algorithms.AES(seed), modes.ECB()).encryptor().update(bytes(16))
    assert a[:4].tobytes() == ref


def test_add_mask_cancels_and_reduces():
    acc = np.arange(100, dtype=np.uint32)
    s = b"\x01" * 32
    prg.add_mask(acc, s, +1)
    assert not np.array_equal(acc, np.arange(100, dtype=np.uint32))
    prg.add_mask(acc, s, -1)
    assert np.array_equal(acc, np.arange(100, dtype=np.uint32))
    v = prg.expand(s, 1000, modulus_bits=20)
    assert v.max() < 2**20
    assert prg.expand(s, 10, modulus_bits=64).dtype == np.uint64
    with pytest.raises(ConfigError):
        prg.expand(b"short", 10)


def test_mask_high_bits_uniform_chi_square():
    v = prg.expand(b"\x07" * 32, 200_000)
    counts = np.bincount(v >> np.uint32(24), minlength=256)
    p = stats.chisquare(counts).pvalue
    assert p > 1e-4
