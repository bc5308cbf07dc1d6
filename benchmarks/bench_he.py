"""pytest-benchmark timings of the HE layer on modest sizes (run: pytest benchmarks/bench_he.py).

CKKS-8192 on 10,000 values (3 ciphertexts); packed Paillier-2048 on 1,000 values
(~13 ciphertexts) and naive per-value phe Paillier on 20 values, side by side. Each
benchmark also checks its result so a fast wrong answer cannot pass. The full
100,000-value table is ``benchmarks/he_table.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from phe import paillier

from secagg.he.ckks import CKKS_8192, CKKSClient, CKKSKeyHolder, CKKSServer
from secagg.he.paillier import PaillierClient, PaillierConfig, PaillierKeyHolder, PaillierServer

CKKS_LEN = 10_000
PAI_LEN = 1_000
NAIVE_LEN = 20
N_CLIENTS = 5
WEIGHTS = {i: i + 1 for i in range(N_CLIENTS)}


def _xs(length):
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, length) for _ in range(N_CLIENTS)]


def _ref(xs):
    w = np.array([WEIGHTS[i] for i in range(N_CLIENTS)], dtype=np.float64)
    return (w[:, None] * np.stack(xs)).sum(0) / w.sum()


@pytest.fixture(scope="module")
def ckks():
    kh = CKKSKeyHolder(CKKS_8192)
    pub = kh.public_bundle()
    client = CKKSClient(kh.secret_bundle(), value_bound=1.0)
    xs = _xs(CKKS_LEN)
    msgs = [client.encrypt(x, round_index=0, client_id=i) for i, x in enumerate(xs)]
    return pub, client, xs, msgs


@pytest.fixture(scope="module")
def packed():
    cfg = PaillierConfig(key_bits=2048, max_total_weight=100)
    kh = PaillierKeyHolder(cfg)
    pub = kh.public_bundle()
    client = PaillierClient(kh.secret_bundle())
    xs = _xs(PAI_LEN)
    msgs = [client.encrypt(x, round_index=0, client_id=i) for i, x in enumerate(xs)]
    return pub, client, xs, msgs, cfg


def _aggregate(server_cls, pub, msgs, length):
    rnd = server_cls(pub).open_round(0, WEIGHTS, length)
    for m in msgs:
        rnd.add(m)
    return rnd.finish()


def test_ckks_encrypt(benchmark, ckks):
    _, client, xs, _ = ckks
    msg = benchmark.pedantic(client.encrypt, args=(xs[0],), kwargs=dict(round_index=0, client_id=0), rounds=5, iterations=1)
    assert len(msg) > 4 * CKKS_LEN


def test_ckks_aggregate(benchmark, ckks):
    pub, client, xs, msgs = ckks
    agg = benchmark.pedantic(_aggregate, args=(CKKSServer, pub, msgs, CKKS_LEN), rounds=3, iterations=1)
    assert np.max(np.abs(client.decrypt(agg).mean - _ref(xs))) <= CKKS_8192.error_bound(1.0)


def test_ckks_decrypt(benchmark, ckks):
    pub, client, xs, msgs = ckks
    agg = _aggregate(CKKSServer, pub, msgs, CKKS_LEN)
    res = benchmark.pedantic(client.decrypt, args=(agg,), rounds=5, iterations=1)
    assert np.max(np.abs(res.mean - _ref(xs))) <= CKKS_8192.error_bound(1.0)


def test_packed_paillier_encrypt(benchmark, packed):
    _, client, xs, _, _ = packed
    msg = benchmark.pedantic(client.encrypt, args=(xs[0],), kwargs=dict(round_index=0, client_id=0), rounds=2, iterations=1)
    assert len(msg) < 4 * PAI_LEN * 3


def test_packed_paillier_aggregate(benchmark, packed):
    pub, client, xs, msgs, cfg = packed
    agg = benchmark.pedantic(_aggregate, args=(PaillierServer, pub, msgs, PAI_LEN), rounds=3, iterations=1)
    assert np.max(np.abs(client.decrypt(agg).mean - _ref(xs))) <= cfg.error_bound


def test_packed_paillier_decrypt(benchmark, packed):
    pub, client, xs, msgs, cfg = packed
    agg = _aggregate(PaillierServer, pub, msgs, PAI_LEN)
    res = benchmark.pedantic(client.decrypt, args=(agg,), rounds=3, iterations=1)
    assert np.max(np.abs(res.mean - _ref(xs))) <= cfg.error_bound


@pytest.fixture(scope="module")
def naive():
    pk, sk = paillier.generate_paillier_keypair(n_length=2048)
    xs = [x[:NAIVE_LEN] for x in _xs(NAIVE_LEN)]
    encs = [[pk.encrypt(float(v)) for v in x] for x in xs]
    return pk, sk, xs, encs


def test_naive_paillier_encrypt_per_value(benchmark, naive):
    pk, sk, xs, _ = naive
    out = benchmark.pedantic(lambda: [pk.encrypt(float(v)) for v in xs[0]], rounds=2, iterations=1)
    assert abs(sk.decrypt(out[0]) - xs[0][0]) < 1e-12


def test_naive_paillier_aggregate_per_value(benchmark, naive):
    _, sk, xs, encs = naive

    def agg():
        acc = [c * WEIGHTS[0] for c in encs[0]]
        for i in range(1, N_CLIENTS):
            acc = [a + c * WEIGHTS[i] for a, c in zip(acc, encs[i])]
        return acc

    acc = benchmark.pedantic(agg, rounds=3, iterations=1)
    W = sum(WEIGHTS.values())
    assert np.allclose([sk.decrypt(a) / W for a in acc], _ref(xs), atol=1e-9)


def test_naive_paillier_decrypt_per_value(benchmark, naive):
    _, sk, xs, encs = naive
    out = benchmark.pedantic(lambda: [sk.decrypt(c) for c in encs[0]], rounds=3, iterations=1)
    assert np.allclose(out, xs[0], atol=1e-12)
