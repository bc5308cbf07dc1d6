"""FedAvg core: weighting, FedProx(mu=0) == FedAvg, dropout, min_clients, byte accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from secagg.errors import ConfigError, DataError, NotEnoughClientsError
from secagg.fl.aggregator import (
    Aggregator,
    ClientUpdate,
    WeightedMeanAggregator,
    deserialize_vector,
    serialize_vector,
)
from secagg.fl.core import ClientData, FedConfig, FederatedServer, run_federated
from secagg.fl.params import flatten, num_params, to_tensors, unflatten


class TinyRegressor:
    """A deterministic one-layer test double with the detector interface (full-batch GD)."""

    supervised = True

    def __init__(self, d: int = 3, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.module = torch.nn.Linear(d, 1)
        self.threshold = None

    def train_epochs(self, X, y, *, epochs=1, batch_size=64, lr=1e-3, prox_mu=0.0, prox_center=None):
        X = torch.as_tensor(X)
        t = torch.as_tensor(y, dtype=torch.float32)[:, None]
        opt = torch.optim.SGD(self.module.parameters(), lr=lr)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.mean((self.module(X) - t) ** 2)
            if prox_mu > 0:
                loss = loss + prox_mu / 2 * sum(((p - c) ** 2).sum() for p, c in zip(self.module.parameters(), prox_center))
            loss.backward()
            opt.step()
        return loss.item()

    def score(self, X):
        with torch.no_grad():
            return self.module(torch.as_tensor(X)).numpy().ravel()

    def calibrate(self, X_val, y_val, *, percentile=95.0):
        self.threshold = 0.5
        return self.threshold

    def evaluate(self, X, y):
        pred = (self.score(X) > self.threshold).astype(int)
        return {"accuracy": float(np.mean(pred == y))}


def make_clients(sizes, d=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(sizes):
        X = rng.normal(size=(n, d)).astype(np.float32)
        y = (X[:, 0] > 0).astype(int)
        out.append(ClientData(i, X, y))
    return out


def test_serialize_roundtrip_and_size():
    v = np.arange(10, dtype=np.float32) / 3
    b = serialize_vector(v)
    assert len(b) == 16 + 4 * 10
    np.testing.assert_array_equal(deserialize_vector(b), v)
    with pytest.raises(DataError, match="header says"):
        deserialize_vector(b[:-1])
    with pytest.raises(DataError, match="magic"):
        deserialize_vector(b"XXXX" + b[4:])


@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=8), st.integers(1, 20))
def test_weighted_mean_is_example_weighted(counts, length):
    rng = np.random.default_rng(len(counts) * 31 + length)
    ups = [ClientUpdate(i, rng.normal(size=length).astype(np.float32), n) for i, n in enumerate(counts)]
    res = WeightedMeanAggregator().aggregate(ups, round_index=0)
    expected = sum(n * u.delta.astype(np.float64) for n, u in zip(counts, ups)) / sum(counts)
    np.testing.assert_allclose(res.delta, expected, rtol=1e-5, atol=1e-6)
    assert res.included == tuple(range(len(counts)))
    assert all(b == 16 + 4 * length for b in res.upload_bytes.values())


def test_client_update_rejects_bad_input():
    with pytest.raises(DataError, match="NaN or Inf"):
        ClientUpdate(0, np.array([1.0, np.nan], dtype=np.float32), 1)
    with pytest.raises(DataError, match="1-D"):
        ClientUpdate(0, np.zeros((2, 2), dtype=np.float32), 1)
    with pytest.raises(DataError, match="num_examples"):
        ClientUpdate(0, np.zeros(2, dtype=np.float32), 0)
    agg = WeightedMeanAggregator()
    with pytest.raises(DataError, match="length"):
        agg.aggregate([ClientUpdate(0, np.zeros(2, np.float32), 1), ClientUpdate(1, np.zeros(3, np.float32), 1)], round_index=0)
    with pytest.raises(DataError, match="duplicate"):
        agg.aggregate([ClientUpdate(0, np.zeros(2, np.float32), 1), ClientUpdate(0, np.zeros(2, np.float32), 1)], round_index=0)


def test_flatten_unflatten_roundtrip():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    v = flatten(m)
    assert v.dtype == np.float32 and v.shape == (num_params(m),) == (4 * 3 + 3 + 3 * 2 + 2,)
    w = np.arange(v.size, dtype=np.float32)
    unflatten(m, w)
    np.testing.assert_array_equal(flatten(m), w)
    assert m[0].bias.detach()[0].item() == 12.0  # weight (3x4) first, then bias
    parts = to_tensors(m, w)
    assert [p.shape for p in parts] == [p.shape for p in m.parameters()]
    with pytest.raises(DataError, match="does not fit"):
        unflatten(m, w[:-1])
    with pytest.raises(DataError, match="NaN"):
        unflatten(m, np.full(v.size, np.nan, dtype=np.float32))
    np.testing.assert_array_equal(flatten(m), w)  # unchanged after the rejected writes


def test_one_round_equals_manual_weighted_fedavg():
    clients = make_clients([10, 30, 60])
    cfg = FedConfig(rounds=1, local_epochs=2, lr=0.1)
    server = FederatedServer(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), cfg)
    g0 = server.global_params.copy()
    rec = server.run_round(0)
    locals_ = []
    for c in clients:
        det = TinyRegressor()
        unflatten(det.module, g0)
        det.train_epochs(c.X, c.y, epochs=2, lr=0.1)
        locals_.append(flatten(det.module))
    expected = sum(n * w for n, w in zip([10, 30, 60], locals_)) / 100
    np.testing.assert_allclose(server.global_params, expected, rtol=1e-5, atol=1e-6)
    assert rec.included == [0, 1, 2] and rec.dropped == []
    n_bytes = 16 + 4 * g0.size
    assert rec.upload_bytes == {0: n_bytes, 1: n_bytes, 2: n_bytes}
    assert rec.download_bytes == {0: n_bytes, 1: n_bytes, 2: n_bytes}


def test_fedprox_mu_zero_equals_fedavg_and_mu_pulls_to_center():
    clients = make_clients([20, 20, 20])
    runs = {}
    for mu in (0.0, 1e-12, 50.0):
        res = run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(),
                            FedConfig(rounds=3, local_epochs=3, lr=0.05, prox_mu=mu), X_val=clients[0].X, y_val=clients[0].y)
        runs[mu] = res.final_params
    np.testing.assert_allclose(runs[0.0], runs[1e-12], atol=1e-6)
    start = flatten(TinyRegressor().module)
    assert np.linalg.norm(runs[50.0] - start) < np.linalg.norm(runs[0.0] - start)


def test_dropout_aggregates_survivors_only():
    clients = make_clients([10] * 20)
    cfg = FedConfig(rounds=1, dropout=0.5, seed=3)
    server = FederatedServer(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), cfg)
    rec = server.run_round(0)
    assert rec.dropped, "with p=0.5 over 20 clients some must drop for this seed"
    assert set(rec.included) == set(rec.sampled) - set(rec.dropped)
    assert set(rec.upload_bytes) == set(rec.included)
    assert set(rec.download_bytes) == set(rec.sampled)  # dropped clients downloaded before failing


class CountingAggregator(WeightedMeanAggregator):
    calls = 0

    def aggregate(self, updates, *, round_index):
        CountingAggregator.calls += 1
        return super().aggregate(updates, round_index=round_index)


def test_too_few_survivors_raises_and_leaves_model_untouched():
    clients = make_clients([10] * 4)
    cfg = FedConfig(rounds=1, dropout=0.9, min_clients=4, seed=0)
    agg = CountingAggregator()
    server = FederatedServer(lambda: TinyRegressor(), clients, agg, cfg)
    before = server.global_params.copy()
    with pytest.raises(NotEnoughClientsError, match="min_clients=4"):
        server.run_round(0)
    np.testing.assert_array_equal(server.global_params, before)
    np.testing.assert_array_equal(flatten(server.global_detector.module), before)
    assert server.history == [] and CountingAggregator.calls == 0


class BrokenAggregator(Aggregator):
    name = "broken"

    def aggregate(self, updates, *, round_index):
        raise RuntimeError("protocol aborted")


def test_aggregator_failure_leaves_model_untouched():
    clients = make_clients([10] * 3)
    server = FederatedServer(lambda: TinyRegressor(), clients, BrokenAggregator(), FedConfig(rounds=1))
    before = server.global_params.copy()
    with pytest.raises(RuntimeError, match="aborted"):
        server.run_round(0)
    np.testing.assert_array_equal(server.global_params, before)


def test_client_fraction_samples_expected_count_and_update_hook_applies():
    clients = make_clients([5] * 10)
    seen = []

    def hook(cid, delta, r):
        seen.append(cid)
        return np.zeros_like(delta)

    res = run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(),
                        FedConfig(rounds=2, client_fraction=0.3), X_val=clients[0].X, y_val=clients[0].y, update_hook=hook)
    assert [len(r.sampled) for r in res.rounds] == [3, 3]
    assert len(seen) == 6
    np.testing.assert_array_equal(res.final_params, flatten(TinyRegressor().module))  # all-zero deltas


@pytest.mark.parametrize(
    "kw,param",
    [({"rounds": 0}, "rounds"), ({"client_fraction": 0.0}, "client_fraction"), ({"dropout": 1.0}, "dropout"),
     ({"lr": float("nan")}, "lr"), ({"prox_mu": -1.0}, "prox_mu"), ({"min_clients": 0}, "min_clients")],
)
def test_config_validation_names_parameter(kw, param):
    with pytest.raises(ConfigError, match=param):
        FedConfig(**kw)


def test_client_data_rejects_bad_shapes():
    with pytest.raises(DataError, match="does not match"):
        ClientData(0, np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(DataError, match="NaN"):
        ClientData(0, np.array([[np.inf, 0.0]]), np.zeros(1))
    with pytest.raises(ConfigError, match="min_clients"):
        FederatedServer(lambda: TinyRegressor(), make_clients([3]), WeightedMeanAggregator(), FedConfig(min_clients=2))


def test_registry_builds_every_aggregator_and_each_aggregates():
    from secagg.fl.registry import available, make_aggregator

    names = available()
    assert {"plaintext", "secagg", "secagg+", "ckks", "paillier", "dp-central", "median", "q8", "top1%+q8"} <= set(names)
    rng = np.random.default_rng(0)
    ups = [ClientUpdate(i, (rng.normal(size=64) * 0.01).astype(np.float32), 10) for i in range(7)]
    plain = WeightedMeanAggregator().aggregate(ups, round_index=0).delta
    for name in ("plaintext", "secagg", "secagg+", "median", "trimmed-mean", "q8"):
        res = make_aggregator(name).aggregate(ups, round_index=0)
        assert res.delta.shape == plain.shape
        assert np.max(np.abs(res.delta - plain)) < 0.02, name
    with pytest.raises(ConfigError, match="unknown aggregator"):
        make_aggregator("nope")


def test_skip_failed_rounds_records_failure_and_keeps_training():
    clients = make_clients([10] * 4)
    base = dict(rounds=6, dropout=0.6, min_clients=3, seed=1, lr=0.1)
    with pytest.raises(NotEnoughClientsError):
        run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(**base),
                      X_val=clients[0].X, y_val=clients[0].y)
    res = run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(),
                        FedConfig(**base, skip_failed_rounds=True), X_val=clients[0].X, y_val=clients[0].y)
    failed = res.failed_rounds
    assert 0 < len(failed) < 6, failed
    assert all("min_clients=3" in res.rounds[i].failed and res.rounds[i].upload_bytes == {} for i in failed)
    assert not np.array_equal(res.final_params, flatten(TinyRegressor().module))  # successful rounds applied


def test_poisson_client_sampling_includes_each_client_with_probability_q():
    clients = make_clients([5] * 50)
    server = FederatedServer(lambda: TinyRegressor(), clients, WeightedMeanAggregator(),
                             FedConfig(rounds=1, client_fraction=0.2, client_sampling="poisson", seed=0))
    counts = np.zeros(50)
    sizes = []
    for _ in range(400):
        s = server.sample_clients()
        sizes.append(len(s))
        counts[[c.client_id for c in s]] += 1
    assert len(set(sizes)) > 5  # the round size varies (binomial), unlike fixed-size sampling
    assert abs(np.mean(sizes) - 10) < 0.6  # E = q N = 10; std of the mean over 400 rounds ~0.14
    assert np.all(np.abs(counts / 400 - 0.2) < 0.1)
    fixed = FederatedServer(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(rounds=1, client_fraction=0.2))
    assert {len(fixed.sample_clients()) for _ in range(20)} == {10}
    with pytest.raises(ConfigError, match="client_sampling"):
        FedConfig(client_sampling="uniform")


def test_checkpoint_resume_continues_after_the_last_completed_round(tmp_path):
    from secagg.fl.core import load_checkpoint

    clients = make_clients([10, 20, 30])
    ck = tmp_path / "ckpt.bin"
    full = run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(rounds=5, lr=0.1),
                         X_val=clients[0].X, y_val=clients[0].y)
    first = run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(rounds=3, lr=0.1),
                          X_val=clients[0].X, y_val=clients[0].y, checkpoint=ck)
    assert load_checkpoint(ck)[0] == 2
    seen = []
    resumed = run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(rounds=5, lr=0.1),
                            X_val=clients[0].X, y_val=clients[0].y, checkpoint=ck, round_callback=lambda r: seen.append(r.round))
    assert seen == [3, 4]
    # full participation and deterministic local training: resuming gives the uninterrupted result
    np.testing.assert_allclose(resumed.final_params, full.final_params, rtol=1e-6, atol=1e-7)
    assert not np.allclose(first.final_params, full.final_params)
    assert load_checkpoint(ck)[0] == 4


def test_start_round_skips_rounds_a_ledger_already_recorded_and_bad_checkpoints_are_named(tmp_path):
    clients = make_clients([10, 10])
    seen = []
    run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(rounds=4),
                  X_val=clients[0].X, y_val=clients[0].y, start_round=3, round_callback=lambda r: seen.append(r.round))
    assert seen == [3]
    with pytest.raises(ConfigError, match="start_round"):
        run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(rounds=4),
                      X_val=clients[0].X, y_val=clients[0].y, start_round=5)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"nonsense")
    with pytest.raises(DataError, match="bad.bin"):
        run_federated(lambda: TinyRegressor(), clients, WeightedMeanAggregator(), FedConfig(rounds=4),
                      X_val=clients[0].X, y_val=clients[0].y, checkpoint=bad)
