"""CKKS aggregation (secagg.he.ckks): correctness vs the plaintext weighted mean, key roles, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigError, DataError, NotEnoughClientsError, ProtocolError
from secagg.he.ckks import (
    CKKS_8192,
    CKKS_16384,
    CKKSClient,
    CKKSKeyHolder,
    CKKSPreset,
    CKKSServer,
    choose_ckks_preset,
)
from secagg.he.messages import ChunkManifest, HEMessage
from tests._he_common import run_round as _run, weighted_mean as _ref

SLOTS = CKKS_8192.slots


@pytest.fixture(scope="module")
def keys():
    kh = CKKSKeyHolder(CKKS_8192)
    return kh, kh.public_bundle(), kh.secret_bundle()


@pytest.fixture(scope="module")
def client(keys):
    return CKKSClient(keys[2], value_bound=100.0)


def _server(keys) -> CKKSServer:
    return CKKSServer(keys[1])


@settings(deadline=None, max_examples=10)
@given(
    n=st.integers(1, 6),
    length=st.sampled_from([1, 7, SLOTS - 1, SLOTS, SLOTS + 1, 2 * SLOTS + 3]),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
)
def test_weighted_mean_within_stated_error(keys, client, n, length, seed, scale):
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-scale, scale, length) for _ in range(n)]
    weights = {int(c): int(rng.integers(1, 10_000)) for c in rng.choice(10**6, n, replace=False)}
    res = _run(_server(keys), client, xs, weights)
    err = np.max(np.abs(res.mean - _ref(xs, weights)))
    assert err <= res.error_bound
    assert res.error_bound == pytest.approx(CKKS_8192.error_bound(100.0, 1.0, n))
    assert res.included == tuple(weights)


def test_16384_preset_is_more_precise():
    kh = CKKSKeyHolder(CKKS_16384)
    srv, cl = CKKSServer(kh.public_bundle()), CKKSClient(kh.secret_bundle(), value_bound=1.0)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, 1000) for _ in range(3)]
    weights = {1: 5, 2: 1, 3: 9}
    res = _run(srv, cl, xs, weights)
    assert res.error_bound == CKKS_16384.error_bound(1.0, 1.0, 3) < CKKS_8192.error_bound(1.0, 1.0, 3) / 10
    assert np.max(np.abs(res.mean - _ref(xs, weights))) <= res.error_bound


def test_explicit_chunking_one_ciphertext_per_slot_chunk(keys, client):
    length = 2 * SLOTS + 5
    msg = HEMessage.from_bytes(client.encrypt(np.ones(length), round_index=0, client_id=1))
    assert msg.manifest == ChunkManifest.for_length(length, SLOTS)
    assert [c for _, c in msg.manifest.chunks] == [SLOTS, SLOTS, 5]
    srv = _server(keys)
    for (_, cnt), blob in zip(msg.manifest.chunks, msg.blobs):
        ct = ts.ckks_vector_from(srv.context, blob)
        assert len(ct.ciphertext()) == 1 and ct.size() == cnt


def test_dropout_mean_of_received_clients(keys, client):
    srv = _server(keys)
    rng = np.random.default_rng(2)
    xs = [rng.uniform(-1, 1, 50) for _ in range(3)]
    rnd = srv.open_round(0, {1: 3, 2: 1, 3: 4}, 50)
    rnd.add(client.encrypt(xs[0], round_index=0, client_id=1))
    rnd.add(client.encrypt(xs[2], round_index=0, client_id=3))
    res = client.decrypt(rnd.finish(), round_index=0)
    assert res.included == (1, 3)
    assert res.received_fraction == pytest.approx(7 / 8)
    assert np.max(np.abs(res.mean - (3 * xs[0] + 4 * xs[2]) / 7)) <= res.error_bound


# ---------------------------------------------------------------- key roles


def test_server_holds_no_secret_key_and_cannot_decrypt(keys, client):
    srv = _server(keys)
    assert not srv.context.is_private() and not srv.context.has_secret_key()
    with pytest.raises(ValueError, match="doesn't support encryption"):
        ts.ckks_vector(srv.context, [1.0])  # no key at all: it cannot even encrypt
    rnd = srv.open_round(0, {1: 1}, 10)
    rnd.add(client.encrypt(np.arange(10.0), round_index=0, client_id=1))
    agg = HEMessage.from_bytes(rnd.finish())
    ct = ts.ckks_vector_from(srv.context, agg.blobs[0])
    with pytest.raises(ValueError, match="secret"):
        ct.decrypt()
    # the public bundle itself carries no secret key
    pub_ctx = ts.context_from(HEMessage.from_bytes(keys[1]).blobs[0])
    assert not pub_ctx.is_private()
    # ... while the clients' key does decrypt the same ciphertext
    assert np.allclose(client.decrypt(HEMessage.to_bytes(agg)).mean, np.arange(10.0), atol=1e-4)


def test_server_refuses_the_secret_bundle(keys):
    with pytest.raises(ConfigError, match="never hold the secret key"):
        CKKSServer(keys[2])
    # a public_key bundle that smuggles a secret context is refused too
    sec_blob = HEMessage.from_bytes(keys[2]).blobs[0]
    pub = HEMessage.from_bytes(keys[1])
    from secagg.he.ckks import _ckks_context_id

    key_id = bytes.fromhex(pub.params["key_id"])
    forged = dataclasses.replace(pub, blobs=(sec_blob,), context_id=_ckks_context_id(key_id, sec_blob)).to_bytes()
    with pytest.raises(ConfigError, match="secret key"):
        CKKSServer(forged)


def test_client_needs_the_secret_bundle(keys):
    with pytest.raises(ProtocolError, match="kind"):
        CKKSClient(keys[1])


# ---------------------------------------------------------------- bad input


def test_nan_inf_and_oversized_values_rejected(client):
    for bad, match in [([1.0, np.nan], "NaN or Inf"), ([np.inf], "NaN or Inf"), ([101.0], "exceeds")]:
        with pytest.raises(DataError, match=match):
            client.encrypt(np.array(bad), round_index=0, client_id=1)
    with pytest.raises(DataError, match="1-D"):
        client.encrypt(np.ones((2, 3)), round_index=0, client_id=1)


def test_ciphertext_from_another_context_rejected(keys, client):
    other = CKKSKeyHolder(CKKS_8192)
    other_client = CKKSClient(other.secret_bundle())
    rnd = _server(keys).open_round(0, {1: 1}, 8)
    with pytest.raises(ProtocolError, match="another context"):
        rnd.add(other_client.encrypt(np.ones(8), round_index=0, client_id=1))
    # and a client refuses an aggregate made under another context
    osrv = CKKSServer(other.public_bundle())
    ornd = osrv.open_round(0, {1: 1}, 8)
    ornd.add(other_client.encrypt(np.ones(8), round_index=0, client_id=1))
    with pytest.raises(ProtocolError, match="another context"):
        client.decrypt(ornd.finish())


def test_foreign_ciphertext_relabelled_with_our_context_id_is_caught(keys, client):
    other_client = CKKSClient(CKKSKeyHolder(CKKS_8192).secret_bundle())
    m = HEMessage.from_bytes(other_client.encrypt(np.full(8, 0.5), round_index=0, client_id=1))
    forged = dataclasses.replace(m, context_id=client.context_id).to_bytes()
    rnd = _server(keys).open_round(0, {1: 1}, 8)
    rnd.add(forged)  # the server cannot tell: it has no secret key ...
    with pytest.raises(ProtocolError, match="out of range"):
        client.decrypt(rnd.finish())  # ... but decryption yields garbage, which is refused


def test_wrong_length_and_mismatched_manifest_rejected(keys, client):
    srv = _server(keys)
    rnd = srv.open_round(0, {1: 1, 2: 1}, 100)
    with pytest.raises(ProtocolError, match="vector length 101 != expected 100"):
        rnd.add(client.encrypt(np.ones(101), round_index=0, client_id=1))
    m = HEMessage.from_bytes(client.encrypt(np.ones(100), round_index=0, client_id=1))
    other_man = ChunkManifest(100, SLOTS, ((0, 60), (60, 40)))
    forged = dataclasses.replace(m, manifest=other_man, blobs=(m.blobs[0], m.blobs[0])).to_bytes()
    with pytest.raises(ProtocolError, match="manifest mismatch"):
        rnd.add(forged)
    # manifest says 100 values but the ciphertext holds 50
    short = HEMessage.from_bytes(client.encrypt(np.ones(50), round_index=0, client_id=1))
    forged = dataclasses.replace(m, blobs=short.blobs).to_bytes()
    with pytest.raises(ProtocolError, match="holds 50 values"):
        rnd.add(forged)
    # nothing above changed the round: the valid updates still aggregate correctly
    rnd.add(client.encrypt(np.ones(100), round_index=0, client_id=1))
    rnd.add(client.encrypt(-np.ones(100), round_index=0, client_id=2))
    assert np.max(np.abs(client.decrypt(rnd.finish()).mean)) < 1e-4


def test_tampered_bytes_rejected(keys, client):
    rnd = _server(keys).open_round(0, {1: 1}, 10)
    data = bytearray(client.encrypt(np.ones(10), round_index=0, client_id=1))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ProtocolError, match="digest"):
        rnd.add(bytes(data))
    # tampering that also recomputes the digest: garbage ciphertext bytes fail to parse
    m = HEMessage.from_bytes(client.encrypt(np.ones(10), round_index=0, client_id=1))
    forged = dataclasses.replace(m, blobs=(b"\x00" * 64,)).to_bytes()
    with pytest.raises(ProtocolError, match="not a valid CKKS ciphertext"):
        rnd.add(forged)


def test_non_fresh_ciphertext_rejected(keys, client):
    srv = _server(keys)
    rnd = srv.open_round(0, {1: 1}, 10)
    rnd.add(client.encrypt(np.ones(10), round_index=0, client_id=1))
    agg = HEMessage.from_bytes(rnd.finish())
    rnd2 = srv.open_round(1, {1: 1}, 10)
    as_update = HEMessage("ckks", "update", agg.context_id, 1, 1, agg.manifest, blobs=agg.blobs).to_bytes()
    with pytest.raises(ProtocolError, match="not a fresh ciphertext"):
        rnd2.add(as_update)


def test_replays_and_unannounced_senders_rejected(keys, client):
    srv = _server(keys)
    rnd = srv.open_round(0, {1: 1, 2: 1}, 4)
    msg = client.encrypt(np.ones(4), round_index=0, client_id=1)
    rnd.add(msg)
    with pytest.raises(ProtocolError, match="already contributed"):
        rnd.add(msg)
    with pytest.raises(ProtocolError, match="not announced"):
        rnd.add(client.encrypt(np.ones(4), round_index=0, client_id=9))
    with pytest.raises(ProtocolError, match="round 5"):
        rnd.add(client.encrypt(np.ones(4), round_index=5, client_id=2))
    agg = rnd.finish()
    with pytest.raises(ProtocolError, match="already finished"):
        rnd.add(client.encrypt(np.ones(4), round_index=0, client_id=2))
    with pytest.raises(ProtocolError, match="replay"):
        srv.open_round(0, {1: 1}, 4)
    with pytest.raises(ProtocolError, match="round 0, expected 1"):
        client.decrypt(agg, round_index=1)


def test_round_parameters_validated(keys):
    srv = _server(keys)
    with pytest.raises(NotEnoughClientsError):
        srv.open_round(0, {}, 4)
    with pytest.raises(ConfigError, match="weight of client 1"):
        srv.open_round(0, {1: 0.0}, 4)
    with pytest.raises(ConfigError, match="weight of client 1"):
        srv.open_round(0, {1: float("nan")}, 4)
    with pytest.raises(ConfigError, match="length"):
        srv.open_round(0, {1: 1}, 0)
    with pytest.raises(ConfigError, match="max_clients"):
        srv.open_round(0, {i: 1 for i in range(1001)}, 4)
    with pytest.raises(NotEnoughClientsError):
        srv.open_round(0, {1: 1}, 4).finish()


# ---------------------------------------------------------------- presets


def test_presets_state_128_bit_security_and_reject_insecure_moduli():
    for p in (CKKS_8192, CKKS_16384):
        assert p.security_bits == 128 and p.max_clients >= 1000
    assert sum(CKKS_8192.coeff_mod_bit_sizes) <= 218 and sum(CKKS_16384.coeff_mod_bit_sizes) <= 438
    with pytest.raises(ConfigError, match="exceeds 218 bits"):
        CKKSPreset("bad", 8192, (60, 60, 60, 60), 40, abs_error_bound=1e-7, rel_error_bound=1e-11)
    with pytest.raises(ConfigError, match="poly_modulus_degree"):
        CKKSPreset("bad", 3000, (60, 40, 60), 40, abs_error_bound=1e-7, rel_error_bound=1e-11)
    # the weighted product (scale 2^80, never rescaled) must fit the data modulus
    with pytest.raises(ConfigError, match="needs 98 bits of data modulus, only 80"):
        CKKSPreset("bad", 8192, (40, 40, 60), 40, abs_error_bound=1e-7, rel_error_bound=1e-11, max_abs_value=2.0**16)


def test_choose_preset():
    assert choose_ckks_preset(10, 5) is CKKS_8192
    assert choose_ckks_preset(100_000, 100) is CKKS_8192  # fewer bytes per value
    assert choose_ckks_preset(100_000, 1000, tolerance=1e-8) is CKKS_16384
    assert choose_ckks_preset(100_000, 1000, tolerance=2e-8) is CKKS_8192
    assert choose_ckks_preset(100_000, 10, tolerance=1.01e-8) is CKKS_8192  # the bound grows with clients
    assert choose_ckks_preset(100_000, 1000, tolerance=1.01e-8) is CKKS_16384
    with pytest.raises(ConfigError, match="no preset supports 1001 clients"):
        choose_ckks_preset(10, 1001)
    with pytest.raises(ConfigError, match="no preset"):
        choose_ckks_preset(10, 5, tolerance=1e-12)
    with pytest.raises(ConfigError, match="length"):
        choose_ckks_preset(0, 5)


def test_large_values_many_clients_within_bound(keys):
    # exercises the weight-rounding term of the bound: |x| near max, 20 clients, uneven weights
    cl = CKKSClient(keys[2], value_bound=65_000.0)
    rng = np.random.default_rng(11)
    xs = [rng.uniform(-65_000, 65_000, 64) for _ in range(20)]
    weights = {i: int(w) for i, w in enumerate(rng.integers(1, 1000, 20))}
    res = _run(_server(keys), cl, xs, weights)
    assert np.max(np.abs(res.mean - _ref(xs, weights))) <= res.error_bound
    assert res.error_bound == pytest.approx(CKKS_8192.error_bound(65_000.0, 1.0, 20))


def test_each_key_has_its_own_context_id():
    a, b = CKKSKeyHolder(CKKS_8192), CKKSKeyHolder(CKKS_8192)
    assert a.context_id != b.context_id  # same parameters, different keys
    pub = HEMessage.from_bytes(a.public_bundle())
    assert len(pub.blobs[0]) < 1000  # parameters only: no public, relin or Galois key
    forged = dataclasses.replace(pub, params={**pub.params, "key_id": "00" * 16}).to_bytes()
    with pytest.raises(ProtocolError, match="does not match its context_id"):
        CKKSServer(forged)
