"""Packed Paillier (secagg.he.paillier): packing, quantization, exact aggregation, key roles, bad input.

Most tests use 1024-bit keys (insecure_for_testing) for speed; one uses 2048 bits.
"""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier

from secagg.errors import ConfigError, DataError, NotEnoughClientsError, ProtocolError
from secagg.he.messages import ChunkManifest, HEMessage
from secagg.he.paillier import (
    PaillierClient,
    PaillierConfig,
    PaillierKeyHolder,
    PaillierServer,
    pack_slots,
    quantize,
    unpack_slots,
)
from tests._he_common import run_round as _run, weighted_mean as _ref

CFG = PaillierConfig(key_bits=1024, value_bits=12, clip=2.0, max_total_weight=500, insecure_for_testing=True)


@pytest.fixture(scope="module")
def keys():
    kh = PaillierKeyHolder(CFG)
    return kh, kh.public_bundle(), kh.secret_bundle()


@pytest.fixture(scope="module")
def client(keys):
    return PaillierClient(keys[2])


# ---------------------------------------------------------------- packing


@settings(deadline=None, max_examples=60)
@given(slot_bits=st.integers(1, 64), slots=st.integers(1, 40), extra=st.integers(-1, 1), data=st.data())
def test_pack_unpack_roundtrip_at_slot_boundaries(slot_bits, slots, extra, data):
    n_ct = data.draw(st.integers(1, 3))
    length = max(1, n_ct * slots + extra)  # exactly full, one short, one over a ciphertext boundary
    top = 2**slot_bits - 1
    vals = data.draw(st.lists(st.sampled_from([0, 1, top, top // 2]) | st.integers(0, top), min_size=length, max_size=length))
    u = np.array(vals, dtype=np.uint64)
    packed = pack_slots(u, slot_bits, slots)
    assert len(packed) == -(-length // slots)
    # reference: value j of plaintext i sits at bits [j*slot_bits, (j+1)*slot_bits)
    for i, p in enumerate(packed):
        chunk = vals[i * slots : (i + 1) * slots]
        assert p == sum(v << (j * slot_bits) for j, v in enumerate(chunk))
        assert p.bit_length() <= slots * slot_bits
    back = unpack_slots(packed, slot_bits, slots)
    assert back.shape[0] == len(packed) * slots
    assert back[:length].tolist() == vals and not back[length:].any()


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(DataError, match="more than slot_bits=4"):
        pack_slots(np.array([16], dtype=np.uint64), 4, 3)
    with pytest.raises(DataError, match="non-negative"):
        pack_slots(np.array([-1, 2]), 4, 3)
    with pytest.raises(ProtocolError, match="overflow or wrong key"):
        unpack_slots([1 << 12], 4, 3)
    with pytest.raises(ConfigError):
        pack_slots(np.array([1], dtype=np.uint64), 65, 3)


@settings(deadline=None, max_examples=30)
@given(st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=1, max_size=50))
def test_quantize_negative_and_positive_values(vals):
    q, clipped = quantize(np.array(vals), CFG)
    assert clipped == 0 and q.dtype == np.int64
    assert np.all(np.abs(q) <= CFG.qmax)
    assert np.all(np.abs(q * CFG.step - np.array(vals)) <= CFG.error_bound + 1e-12)


def test_quantize_out_of_range():
    with pytest.raises(DataError, match="exceed clip=2"):
        quantize(np.array([0.0, -2.5]), CFG)
    q, clipped = quantize(np.array([0.0, -2.5, 3.0]), dataclasses.replace(CFG, out_of_range="clip"))
    assert clipped == 2 and q.tolist() == [0, -CFG.qmax, CFG.qmax]
    with pytest.raises(DataError, match="NaN or Inf"):
        quantize(np.array([np.nan]), CFG)


# ---------------------------------------------------------------- config / overflow up front


def test_config_derived_layout():
    c = PaillierConfig()  # 2048-bit, 16-bit values, total weight <= 2**16
    assert c.security_bits == 112 and PaillierConfig(key_bits=3072).security_bits == 128
    assert c.slot_bits == (2**16 * 2 * c.qmax).bit_length() == 32
    assert c.slots_per_ciphertext == 2047 // 32 >= 20
    assert c.error_bound == pytest.approx(1.0 / (2 * (2**15 - 1)))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(key_bits=1024), "insecure"),
        (dict(key_bits=4096), "key_bits"),
        (dict(value_bits=1), "value_bits"),
        (dict(value_bits=40), "value_bits"),
        (dict(clip=0.0), "clip"),
        (dict(clip=float("inf")), "clip"),
        (dict(max_total_weight=0), "max_total_weight"),
        (dict(value_bits=32, max_total_weight=2**32), "slot needs 64 bits"),
        (dict(out_of_range="wrap"), "out_of_range"),
    ],
)
def test_config_rejects(kw, match):
    with pytest.raises(ConfigError, match=match):
        PaillierConfig(**kw)


def test_round_weight_overflow_risk_refused_up_front(keys):
    srv = PaillierServer(keys[1])
    with pytest.raises(ConfigError, match="exceeds max_total_weight=500"):
        srv.open_round(0, {1: 300, 2: 201}, 10)
    with pytest.raises(ConfigError, match="int >= 1"):
        srv.open_round(0, {1: 1.5}, 10)
    with pytest.raises(NotEnoughClientsError):
        srv.open_round(0, {}, 10)
    srv.open_round(0, {1: 300, 2: 200}, 10)  # exactly at the bound is fine


# ---------------------------------------------------------------- aggregation


@settings(deadline=None, max_examples=5)
@given(n=st.integers(1, 5), length=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_weighted_mean_within_quantization_error(keys, client, n, length, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-2, 2, length) for _ in range(n)]
    ids = [int(c) for c in rng.choice(10**6, n, replace=False)]
    w = rng.integers(1, 500 // n + 1, n)
    weights = dict(zip(ids, (int(v) for v in w)))
    res = _run(PaillierServer(keys[1]), client, xs, weights)
    assert np.max(np.abs(res.mean - _ref(xs, weights))) <= CFG.error_bound + 1e-12
    assert res.total_weight == sum(weights.values()) and res.included == tuple(ids)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_saturated_slots_do_not_overflow(keys, client, sign):
    # every value at +-clip, weights summing to max_total_weight: the largest slot sums possible
    k = CFG.slots_per_ciphertext
    xs = [np.full(k + 1, sign * CFG.clip) for _ in range(2)]
    res = _run(PaillierServer(keys[1]), client, xs, {1: 250, 2: 250})
    assert np.array_equal(res.mean, np.full(k + 1, sign * CFG.clip))


def test_mixed_signs_at_slot_boundaries(keys, client):
    k = CFG.slots_per_ciphertext
    x1 = np.where(np.arange(2 * k) % 2 == 0, CFG.clip, -CFG.clip)
    x2 = -x1
    res = _run(PaillierServer(keys[1]), client, [x1, x2], {1: 3, 2: 1})
    assert np.allclose(res.mean, (3 * x1 + x2) / 4, atol=CFG.error_bound)


def test_2048_bit_key_end_to_end():
    cfg = PaillierConfig(key_bits=2048, max_total_weight=1000)
    kh = PaillierKeyHolder(cfg)
    srv, cl = PaillierServer(kh.public_bundle()), PaillierClient(kh.secret_bundle())
    assert srv.public_key.n.bit_length() == 2048
    rng = np.random.default_rng(5)
    xs = [rng.uniform(-1, 1, cfg.slots_per_ciphertext + 3) for _ in range(3)]
    weights = {4: 10, 8: 300, 9: 1}
    res = _run(srv, cl, xs, weights)
    assert np.max(np.abs(res.mean - _ref(xs, weights))) <= cfg.error_bound
    msg = HEMessage.from_bytes(cl.encrypt(xs[0], round_index=1, client_id=4))
    assert len(msg.blobs) == 2 and all(len(b) == 512 for b in msg.blobs)


def test_dropout_uses_received_weight(keys, client):
    srv = PaillierServer(keys[1])
    xs = [np.full(5, 1.0), np.full(5, -1.0)]
    rnd = srv.open_round(0, {1: 3, 2: 1, 3: 5}, 5)
    for cid, x in zip((1, 2), xs):
        rnd.add(client.encrypt(x, round_index=0, client_id=cid))
    res = client.decrypt(rnd.finish())
    assert res.included == (1, 2) and res.total_weight == 4
    assert np.allclose(res.mean, 0.5, atol=CFG.error_bound)


# ---------------------------------------------------------------- key roles


def _reachable(root, depth=4):
    seen, frontier, out = set(), [root], []
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            out.append(obj)
            nxt.extend(gc.get_referents(obj))
        frontier = nxt
    return out


def test_server_holds_only_the_public_key(keys, client):
    kh = keys[0]
    srv = PaillierServer(keys[1])
    srv.open_round(0, {1: 1}, 3).add(client.encrypt(np.ones(3), round_index=0, client_id=1))
    objs = _reachable(srv, depth=6)
    assert not any(isinstance(o, paillier.PaillierPrivateKey) for o in objs)
    secret_ints = {kh._sk.p, kh._sk.q}
    assert not any(isinstance(o, int) and o in secret_ints for o in objs)
    assert not hasattr(srv, "decrypt") and not hasattr(srv.public_key, "raw_decrypt")
    # the client object, built from the secret bundle, does reach the private key (the check can fail)
    assert any(isinstance(o, paillier.PaillierPrivateKey) for o in _reachable(client, depth=3))


def test_server_refuses_secret_bundle_and_client_refuses_public(keys):
    with pytest.raises(ConfigError, match="never hold the private key"):
        PaillierServer(keys[2])
    with pytest.raises(ProtocolError, match="kind"):
        PaillierClient(keys[1])


def test_secret_bundle_with_wrong_factor_rejected(keys):
    m = HEMessage.from_bytes(keys[2])
    p = int.from_bytes(m.blobs[1], "big") + 2
    forged = dataclasses.replace(m, blobs=(m.blobs[0], p.to_bytes(len(m.blobs[1]), "big"), m.blobs[2])).to_bytes()
    with pytest.raises(ProtocolError, match="do not match n"):
        PaillierClient(forged)


# ---------------------------------------------------------------- bad input


def test_nan_inf_rejected(client):
    for bad in ([np.nan, 1.0], [np.inf], [-np.inf]):
        with pytest.raises(DataError, match="NaN or Inf"):
            client.encrypt(np.array(bad), round_index=0, client_id=1)


def test_ciphertext_from_another_context_rejected(keys, client):
    other = PaillierClient(PaillierKeyHolder(CFG).secret_bundle())
    rnd = PaillierServer(keys[1]).open_round(0, {1: 1}, 4)
    with pytest.raises(ProtocolError, match="another context"):
        rnd.add(other.encrypt(np.ones(4), round_index=0, client_id=1))


def test_wrong_length_mismatched_manifest_and_tampering_rejected(keys, client):
    rnd = PaillierServer(keys[1]).open_round(0, {1: 1, 2: 1}, 50)
    with pytest.raises(ProtocolError, match="vector length 51 != expected 50"):
        rnd.add(client.encrypt(np.ones(51), round_index=0, client_id=1))
    m = HEMessage.from_bytes(client.encrypt(np.ones(50), round_index=0, client_id=1))
    k = CFG.slots_per_ciphertext
    other_man = ChunkManifest(50, k, ((0, 10), (10, 40)))
    with pytest.raises(ProtocolError, match="manifest mismatch"):
        rnd.add(dataclasses.replace(m, manifest=other_man, blobs=(m.blobs[0], m.blobs[1])).to_bytes())
    data = bytearray(m.to_bytes())
    data[-100] ^= 0x10
    with pytest.raises(ProtocolError, match="digest"):
        rnd.add(bytes(data))
    nsq = PaillierServer(keys[1]).public_key.nsquare
    for bad in (b"\x00" * 256, nsq.to_bytes(256, "big"), b"\x01" * 10):
        forged = dataclasses.replace(m, blobs=(bad,) + m.blobs[1:]).to_bytes()
        with pytest.raises(ProtocolError, match=f"client 1 ciphertext 0"):
            rnd.add(forged)
    # rejected messages left no trace: client 1 can still contribute
    rnd.add(m.to_bytes())
    rnd.add(client.encrypt(-np.ones(50), round_index=0, client_id=2))
    assert np.allclose(client.decrypt(rnd.finish()).mean, 0.0, atol=CFG.error_bound)


def test_replays_rejected(keys, client):
    srv = PaillierServer(keys[1])
    rnd = srv.open_round(3, {1: 1, 2: 1}, 4)
    msg = client.encrypt(np.ones(4), round_index=3, client_id=1)
    rnd.add(msg)
    with pytest.raises(ProtocolError, match="already contributed"):
        rnd.add(msg)
    with pytest.raises(ProtocolError, match="round 2"):
        rnd.add(client.encrypt(np.ones(4), round_index=2, client_id=2))
    agg = rnd.finish()
    with pytest.raises(ProtocolError, match="replay"):
        srv.open_round(3, {1: 1}, 4)
    with pytest.raises(ProtocolError, match="round 3, expected 4"):
        client.decrypt(agg, round_index=4)


def test_tampered_aggregate_detected_by_decryptor(keys, client):
    srv = PaillierServer(keys[1])
    rnd = srv.open_round(0, {1: 1}, 4)
    rnd.add(client.encrypt(np.ones(4), round_index=0, client_id=1))
    agg = HEMessage.from_bytes(rnd.finish())
    # a fresh encryption of an over-full plaintext, passed off as the aggregate
    big = srv.public_key.raw_encrypt((1 << (CFG.slots_per_ciphertext * CFG.slot_bits)) - 1)
    forged = dataclasses.replace(agg, blobs=(big.to_bytes(256, "big"),)).to_bytes()
    with pytest.raises(ProtocolError, match="out of range|overflow"):
        client.decrypt(forged)
    forged = dataclasses.replace(agg, params={**agg.params, "total_weight": 10**9}).to_bytes()
    with pytest.raises(ProtocolError, match="total_weight"):
        client.decrypt(forged)


def test_3072_bit_key_packs_more_values_and_aggregates():
    cfg = PaillierConfig(key_bits=3072, value_bits=16, clip=1.0, max_total_weight=64)
    assert cfg.security_bits == 128 and cfg.slots_per_ciphertext == 3071 // cfg.slot_bits
    kh = PaillierKeyHolder(cfg)
    srv, cl = PaillierServer(kh.public_bundle()), PaillierClient(kh.secret_bundle())
    assert srv.public_key.n.bit_length() == 3072
    xs = [np.linspace(-1, 1, cfg.slots_per_ciphertext), np.linspace(1, -1, cfg.slots_per_ciphertext)]
    res = _run(srv, cl, xs, {1: 40, 2: 24})
    assert np.max(np.abs(res.mean - (40 * xs[0] + 24 * xs[1]) / 64)) <= cfg.error_bound
    assert len(HEMessage.from_bytes(cl.encrypt(xs[0], round_index=1, client_id=1)).blobs[0]) == 768
