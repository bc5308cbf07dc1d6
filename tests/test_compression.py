"""Compressors: error bounds, unbiasedness, exact payload sizes, error feedback, byte accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secagg.errors import ConfigError, DataError
from secagg.fl.aggregator import Aggregator, ClientUpdate, WeightedMeanAggregator, serialize_vector
from secagg.fl.compression import CompressedAggregator, NoCompression, TopK, UniformQuantizer, make_compressor
from secagg.fl.robust import Krum

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


def vec(n, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(0, scale, n)).astype(np.float32)


# -- quantization ----------------------------------------------------------------------------
@settings(deadline=None, max_examples=60)
@given(arrays(np.float32, st.integers(1, 300), elements=finite), st.sampled_from([8, 4, 2, 1]))
def test_deterministic_quantization_error_at_most_half_step(v, bits):
    q = UniformQuantizer(bits, stochastic=False)
    payload = q.compress(v)
    assert len(payload) == q.payload_bytes(v.size) == 24 + math.ceil(v.size * bits / 8)
    out = q.decompress(payload)
    step = q.step_of(v)
    tol = step / 2 + 4 * np.finfo(np.float32).eps * (np.abs(v).max() + step)
    assert out.shape == v.shape and out.dtype == np.float32
    assert np.all(np.abs(out.astype(np.float64) - v) <= tol)


@settings(deadline=None, max_examples=40)
@given(arrays(np.float32, st.integers(1, 200), elements=finite), st.sampled_from([8, 4]), st.integers(0, 2**31))
def test_stochastic_quantization_error_below_one_step(v, bits, seed):
    q = UniformQuantizer(bits)
    out = q.decompress(q.compress(v, np.random.default_rng(seed)))
    step = q.step_of(v)
    tol = step + 4 * np.finfo(np.float32).eps * (np.abs(v).max() + step)
    assert np.all(np.abs(out.astype(np.float64) - v) <= tol)


@pytest.mark.parametrize("bits", [8, 4])
def test_stochastic_rounding_is_unbiased(bits):
    v = vec(64, seed=1)
    q = UniformQuantizer(bits)
    step = q.step_of(v)
    trials = 2000
    rng = np.random.default_rng(7)
    acc = np.zeros(64)
    for _ in range(trials):
        acc += q.decompress(q.compress(v, rng))
    mean = acc / trials
    # per-coordinate variance <= step^2/4 -> std of the mean <= step / (2 sqrt(trials)); 5 sigma
    assert np.all(np.abs(mean - v) <= 5 * step / (2 * math.sqrt(trials)) + 1e-6)
    # deterministic rounding is biased on the same data (sanity check that the test can fail)
    det = UniformQuantizer(bits, stochastic=False)
    assert np.abs(det.decompress(det.compress(v)) - v).max() > 5 * step / (2 * math.sqrt(trials))


def test_quantizer_constant_vector_and_packing():
    q = UniformQuantizer(4, stochastic=False)
    c = np.full(7, 2.5, dtype=np.float32)
    np.testing.assert_array_equal(q.decompress(q.compress(c)), c)
    # levels 0..15 round-trip exactly through nibble packing (odd length)
    v = np.delete(np.arange(16, dtype=np.float32), 7)  # 15 values, min 0, max 15 -> step exactly 1
    np.testing.assert_array_equal(q.decompress(q.compress(v)), v)
    assert len(q.compress(v)) == 24 + 8


def test_quantizer_rejects_bad_input_and_payloads():
    with pytest.raises(ConfigError, match="bits"):
        UniformQuantizer(3)
    q8 = UniformQuantizer(8)
    with pytest.raises(DataError, match="NaN or Inf"):
        q8.compress(np.array([1.0, np.nan], dtype=np.float32))
    p = q8.compress(vec(10))
    with pytest.raises(DataError, match="need 34 bytes"):
        q8.decompress(p[:-1])
    with pytest.raises(DataError, match="bad magic"):
        q8.decompress(b"XXXX" + p[4:])
    with pytest.raises(DataError, match="4-bit decoder"):
        UniformQuantizer(4).decompress(p)


# -- top-k -----------------------------------------------------------------------------------
def test_topk_keeps_largest_and_exact_bytes():
    v = np.array([0.1, -5.0, 0.2, 3.0, -0.05, 0.0, 1.0, -2.0, 0.3, 0.01], dtype=np.float32)
    t = TopK(0.3)
    p = t.compress(v)
    assert len(p) == t.payload_bytes(10) == 24 + 4 * 3 + 4 * 3
    out = t.decompress(p)
    expect = np.zeros(10, np.float32)
    expect[[1, 3, 7]] = v[[1, 3, 7]]
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("n", [1, 99, 10_000, 12_345])
def test_byte_counts_of_all_compressors(n):
    v = vec(n, seed=n)
    k = max(1, math.ceil(0.01 * n))
    expected = {
        "none": 16 + 4 * n,
        "q8": 24 + n,
        "q4": 24 + math.ceil(n / 2),
        "top1%": 24 + 8 * k,
        "top1%+q8": 24 + 4 * k + 24 + k,
    }
    for spec, nbytes in expected.items():
        c = make_compressor(spec)
        payload = c.compress(v, np.random.default_rng(0))
        assert isinstance(payload, bytes)
        assert len(payload) == nbytes == c.payload_bytes(n), spec
        assert c.decompress(payload).shape == (n,)
    assert make_compressor("none").compress(v) == serialize_vector(v)


def test_topk_plus_quantization_error_bound():
    v = vec(1000, seed=3)
    c = TopK(0.05, UniformQuantizer(8, stochastic=False))
    out = c.decompress(c.compress(v))
    kept = np.flatnonzero(out)
    top = np.sort(np.argsort(-np.abs(v))[:50])
    assert set(kept) <= set(top)
    step = UniformQuantizer(8).step_of(v[top])
    assert np.abs(out[top] - v[top]).max() <= step / 2 + 1e-6


def test_topk_rejects_bad_payloads():
    t = TopK(0.1)
    p = bytearray(t.compress(vec(50)))
    with pytest.raises(ConfigError, match="fraction"):
        TopK(0.0)
    with pytest.raises(DataError, match="expected"):
        t.decompress(bytes(p[:-2]))
    p[24:28] = (10_000).to_bytes(4, "little")  # first index out of range
    with pytest.raises(DataError, match="indices"):
        t.decompress(bytes(p))
    with pytest.raises(DataError, match="value codec"):
        TopK(0.1, UniformQuantizer(8)).decompress(t.compress(vec(50)))


def test_make_compressor_specs():
    assert isinstance(make_compressor("q4"), UniformQuantizer) and make_compressor("q4").bits == 4
    t = make_compressor("top1%+q8")
    assert isinstance(t, TopK) and t.fraction == pytest.approx(0.01) and t.value_quantizer.bits == 8
    with pytest.raises(ConfigError, match="unknown compressor"):
        make_compressor("zip")


# -- error feedback and the aggregator wrapper ------------------------------------------------
def test_error_feedback_recovers_signal_over_rounds():
    """With error feedback the sum of transmitted top-k updates tracks the sum of true updates."""
    d = 200
    true = vec(d, seed=11)
    agg_ef = CompressedAggregator(WeightedMeanAggregator(), TopK(0.1))
    agg_no = CompressedAggregator(WeightedMeanAggregator(), TopK(0.1), error_feedback=False)
    assert agg_ef.error_feedback and not agg_no.error_feedback
    s_ef, s_no = np.zeros(d), np.zeros(d)
    rounds = 200
    for r in range(rounds):
        s_ef += agg_ef.aggregate([ClientUpdate(0, true, 1)], round_index=r).delta
        s_no += agg_no.aggregate([ClientUpdate(0, true, 1)], round_index=r).delta
    target = rounds * true
    err_ef = np.linalg.norm(s_ef - target) / np.linalg.norm(target)
    err_no = np.linalg.norm(s_no - target) / np.linalg.norm(target)
    # EF: total error is bounded by the residual (< ||true|| * const), so the relative error shrinks
    assert err_ef < 0.1 < err_no
    np.testing.assert_allclose(s_ef + agg_ef.residuals[0], target, rtol=1e-3, atol=1e-3)


def test_compressed_aggregator_counts_actual_payload_bytes():
    d = 1000
    updates = [ClientUpdate(i, vec(d, seed=i), 10 + i) for i in range(4)]
    for spec, per_client in [("none", 16 + 4 * d), ("q8", 24 + d), ("q4", 24 + d // 2), ("top1%", 24 + 80),
                             ("top1%+q8", 24 + 40 + 24 + 10)]:
        agg = CompressedAggregator(WeightedMeanAggregator(), make_compressor(spec))
        r = agg.aggregate(updates, round_index=0)
        assert r.upload_bytes == {i: per_client for i in range(4)}, spec
        assert r.included == (0, 1, 2, 3)
    # lossless pass-through equals the plain mean exactly
    plain = WeightedMeanAggregator().aggregate(updates, round_index=0).delta
    np.testing.assert_array_equal(CompressedAggregator(WeightedMeanAggregator(), NoCompression())
                                  .aggregate(updates, round_index=0).delta, plain)
    # 8-bit stochastic: the mean stays close (error < step, averaged over 4 clients)
    q = CompressedAggregator(WeightedMeanAggregator(), UniformQuantizer(8)).aggregate(updates, round_index=0).delta
    assert np.abs(q - plain).max() < max(UniformQuantizer(8).step_of(u.delta) for u in updates)


def test_download_compression_and_state_on_failure():
    d = 500
    updates = [ClientUpdate(i, vec(d, seed=i), 1) for i in range(3)]
    agg = CompressedAggregator(WeightedMeanAggregator(), TopK(0.1), download_compressor=UniformQuantizer(8))
    r = agg.aggregate(updates, round_index=0)
    assert r.download_bytes == {i: 24 + d for i in range(3)}
    assert r.metrics["compressed_download_bytes"] == 24 + d
    before = {k: v.copy() for k, v in agg.residuals.items()}

    class Boom(Aggregator):
        def aggregate(self, updates, *, round_index):
            raise RuntimeError("protocol abort")

    failing = CompressedAggregator(Boom(), TopK(0.1))
    failing.residuals = {k: v.copy() for k, v in before.items()}
    with pytest.raises(RuntimeError):
        failing.aggregate(updates, round_index=1)
    for k in before:
        np.testing.assert_array_equal(failing.residuals[k], before[k])


def test_compression_with_robust_and_secure_inners():
    class FakeSecure(Aggregator):
        name = "fake_secagg"
        hides_individual_updates = True

        def aggregate(self, updates, *, round_index):
            r = WeightedMeanAggregator().aggregate(updates, round_index=round_index)
            r.upload_bytes = {u.client_id: 999 for u in updates}
            return r

    updates = [ClientUpdate(i, vec(100, seed=i), 1) for i in range(5)]
    sec = CompressedAggregator(FakeSecure(), UniformQuantizer(8))
    assert sec.hides_individual_updates
    r = sec.aggregate(updates, round_index=0)
    assert r.upload_bytes == {i: 999 for i in range(5)}  # the protocol's own bytes
    assert r.metrics["compressed_upload_bytes_mean"] == 124
    rob = CompressedAggregator(Krum(1), UniformQuantizer(8))
    assert rob.needs_individual_updates
    assert len(rob.aggregate(updates, round_index=0).included) == 1


def test_end_to_end_byte_accounting_in_fedavg_loop():
    """Per-client upload bytes recorded by the core equal the compressed payload size."""
    from secagg.detect import load_dataset, make_detector, partition, prepare
    from secagg.fl.core import ClientData, FedConfig, run_federated

    ds = load_dataset("cicids2017")
    data = prepare(ds, seed=0)
    idx = np.random.default_rng(0).choice(len(data.y_train), 1500, replace=False)
    X, y = data.X_train[idx], data.y_train[idx]
    clients = [ClientData(i, X[p], y[p]) for i, p in enumerate(partition(y, 4, "iid", seed=0))]
    factory = lambda: make_detector("mlp", ds.n_features, seed=0)  # noqa: E731
    d = factory().n_parameters()
    cfg = FedConfig(rounds=2, local_epochs=1, lr=3e-3, seed=0)
    k = math.ceil(0.01 * d)
    f1 = {}
    for spec, per_client in [("none", 16 + 4 * d), ("q8", 24 + d), ("top1%+q8", 24 + 4 * k + 24 + k)]:
        agg = CompressedAggregator(WeightedMeanAggregator(), make_compressor(spec))
        res = run_federated(factory, clients, agg, cfg, X_val=data.X_val, y_val=data.y_val)
        for rec in res.rounds:
            assert rec.upload_bytes == {c: per_client for c in range(4)}, spec
        f1[spec] = res.final_metrics["f1"]
    assert f1["none"] > 0.6
    assert abs(f1["q8"] - f1["none"]) < 0.05  # 8-bit stochastic quantization barely changes the model


def test_core_counts_no_full_broadcast_for_clients_holding_the_model_after_compressed_download():
    """Round 2: a client included in round 1 received the compressed aggregate, so it needs only
    the new compressed aggregate, not the full model again; a client new to round 2 needs both."""
    import torch

    from secagg.fl.core import ClientData, FedConfig, FederatedServer

    class Lin:
        supervised = True

        def __init__(self):
            torch.manual_seed(0)
            self.module = torch.nn.Linear(4, 1)

        def train_epochs(self, X, y, **kw):
            with torch.no_grad():
                for p in self.module.parameters():
                    p.add_(0.01)
            return 0.0

    rng = np.random.default_rng(0)
    clients = [ClientData(i, rng.normal(size=(5, 4)), np.zeros(5)) for i in range(6)]
    agg = CompressedAggregator(WeightedMeanAggregator(), UniformQuantizer(8), download_compressor=UniformQuantizer(8))
    server = FederatedServer(Lin, clients, agg, FedConfig(rounds=2, client_fraction=0.5, seed=3))
    full = 16 + 4 * 5  # serialized float32 model: header + 5 parameters
    r1 = server.run_round(0)
    comp = int(r1.aggregator_metrics["compressed_download_bytes"])
    assert all(r1.download_bytes[c] == full + comp for c in r1.included)
    r2 = server.run_round(1)
    for c in r2.sampled:
        expected = (0 if c in r1.included else full) + (comp if c in r2.included else 0)
        assert r2.download_bytes[c] == expected, (c, r1.included, r2.download_bytes)
    assert set(r2.sampled) & set(r1.included) and set(r2.sampled) - set(r1.included)  # both cases exercised
