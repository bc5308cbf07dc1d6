"""pytest-benchmark micro-benchmarks of secagg.smpc primitives and protocol phases.

Run: ``python -m pytest benchmarks/bench_smpc.py --benchmark-only -q``
(a shared 2-core machine: compare numbers from the same run only).

Primitives: AES-CTR mask expansion and in-place add (L = 100,000 uint32), a plaintext
numpy add of the same vector for reference, Shamir split / combine (2 secrets to 100
holders, t = 51), X25519 agreement + HKDF, AES-GCM share encryption.
Phases (n = 20 clients, L = 10,000, honest mode, complete graph): one client's
ShareKeys and MaskedInput handling, and the server's unmasking with 2 dropped clients.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from secagg.smpc import SecAggClient, SecAggServer, SessionConfig, new_session_id
from secagg.smpc import keys, prg, shamir

L = 100_000


@pytest.fixture(scope="module")
def vec():
    return np.random.default_rng(0).integers(0, 2**32, L, dtype=np.uint64).astype(np.uint32)


def test_prg_expand_100k(benchmark):
    seed = os.urandom(32)
    out = benchmark(prg.expand, seed, L)
    assert out.shape == (L,)


def test_prg_add_mask_100k(benchmark, vec):
    acc = vec.copy()
    seed = os.urandom(32)
    benchmark(prg.add_mask, acc, seed, 1)


def test_plaintext_add_100k_reference(benchmark, vec):
    acc = vec.copy()
    benchmark(np.add, acc, vec, out=acc)


def test_shamir_split_2_secrets_100_holders_t51(benchmark):
    holders = list(range(1, 101))
    sh = benchmark(shamir.split, [os.urandom(32), os.urandom(32)], 51, holders)
    assert len(sh[0]) == 100


def test_shamir_combine_t51(benchmark):
    holders = list(range(1, 101))
    s = os.urandom(32)
    sh = shamir.split([s], 51, holders)[0]
    pts = list(zip(holders, sh))
    got = benchmark(shamir.combine, pts, 51)
    assert got.to_bytes(32, "big") == s


def test_x25519_agree_and_hkdf(benchmark):
    a = keys.generate_x25519()
    b = keys.x25519_public_bytes(keys.generate_x25519())
    sid = os.urandom(16)
    benchmark(lambda: keys.derive_mask_seed(keys.agree(a, b), sid, 0, 1, 2))


def test_aes_gcm_share_encryption(benchmark):
    k = os.urandom(32)
    aad = keys.share_aad(os.urandom(16), 0, 1, 2)
    pt = os.urandom(8 + 66)
    ct = benchmark(keys.encrypt_share, k, aad, pt)
    assert keys.decrypt_share(k, aad, ct) == pt


# ----------------------------------------------------------------- phases
N, LP = 20, 10_000


def _round_to(stage_steps: int, drop=()):
    ids = tuple(range(1, N + 1))
    cfg = SessionConfig(new_session_id(), 0, ids, N // 2 + 1, LP)
    rng = np.random.default_rng(1)
    clients = {u: SecAggClient(cfg, u, input_vector=rng.integers(0, 2**32, LP, dtype=np.uint64).astype(np.uint32)) for u in ids}
    server = SecAggServer(cfg)
    for c in clients.values():
        server.receive(c.start())
    out = server.close_stage()
    for step in range(stage_steps):
        for u, m in out.items():
            if step == 1 and u in drop:
                continue
            server.receive(clients[u].handle(m))
        out = server.close_stage()
    return clients, server, out


def test_phase_client_share_keys(benchmark):
    def setup():
        clients, _, out = _round_to(0)
        return (clients[1], out[1]), {}

    benchmark.pedantic(lambda c, m: c.handle(m), setup=setup, rounds=5)


def test_phase_client_masked_input(benchmark):
    def setup():
        clients, _, out = _round_to(1)
        return (clients[1], out[1]), {}

    benchmark.pedantic(lambda c, m: c.handle(m), setup=setup, rounds=5)


def test_phase_server_unmasking_2_dropped(benchmark):
    def setup():
        clients, server, out = _round_to(2, drop=(19, 20))
        for u, m in out.items():
            server.receive(clients[u].handle(m))
        return (server,), {}

    benchmark.pedantic(lambda s: s.close_stage(), setup=setup, rounds=5)
