"""SecAggAggregator against the plaintext WeightedMeanAggregator."""

import numpy as np
import pytest

from secagg.errors import ConfigError, NotEnoughClientsError
from secagg.fl.aggregator import ClientUpdate, WeightedMeanAggregator, serialize_vector
from secagg.fl.secure_aggregators import SecAggAggregator, SecAggOptions


def updates(n, L, seed=0, scale=0.05, ids=None):
    rng = np.random.default_rng(seed)
    ids = ids or list(range(n))
    return [ClientUpdate(cid, rng.normal(0, scale, L).astype(np.float32), int(rng.integers(5, 500))) for cid in ids]


@pytest.mark.parametrize(
    "opts",
    [
        SecAggOptions(),
        SecAggOptions(mode="active"),
        SecAggOptions(weighted=False, bits=20),
        SecAggOptions(modulus_bits=64, bits=24),
    ],
)
def test_matches_plaintext_weighted_mean_within_one_step(opts):
    ups = updates(7, 500, ids=[0, 3, 9, 12, 40, 41, 100])  # client ids include 0
    ref = WeightedMeanAggregator(weighted=opts.weighted).aggregate(ups, round_index=0)
    res = SecAggAggregator(opts).aggregate(ups, round_index=0)
    assert res.included == tuple(sorted(u.client_id for u in ups))
    step = opts.clip / 2**opts.bits
    assert np.max(np.abs(res.delta.astype(np.float64) - ref.delta)) <= step + 1e-7
    assert res.delta.dtype == np.float32
    assert res.metrics["smpc_clipped_values"] == 0
    assert res.metrics["smpc_total_weight"] == sum(u.num_examples if opts.weighted else 1 for u in ups)


def test_in_protocol_dropout_excludes_exactly_the_dropped_clients():
    ups = updates(12, 200, seed=1)
    agg = SecAggAggregator(SecAggOptions(dropout=0.25, seed=4))
    res = agg.aggregate(ups, round_index=3)
    assert 6 < len(res.included) < 12  # some dropped, enough survived (seeded)
    kept = [u for u in ups if u.client_id in res.included]
    ref = WeightedMeanAggregator().aggregate(kept, round_index=3)
    assert np.max(np.abs(res.delta - ref.delta)) <= 1 / 2**16 + 1e-7
    assert set(res.upload_bytes) == {u.client_id for u in ups}
    assert res.metrics["smpc_dropped_in_protocol"] == 12 - len(res.included)


def test_secagg_plus_aggregator_sparse_graph():
    ups = updates(60, 50, seed=2)
    res = SecAggAggregator(secagg_plus=True, dropout=0.05, seed=1, corruption_rate=0.0).aggregate(ups, round_index=0)
    assert res.metrics["smpc_degree"] < 59
    kept = [u for u in ups if u.client_id in res.included]
    ref = WeightedMeanAggregator().aggregate(kept, round_index=0)
    assert np.max(np.abs(res.delta - ref.delta)) <= 1 / 2**16 + 1e-7


def test_clipping_is_counted_under_masking():
    ups = [ClientUpdate(i, np.array([0.1, 2.0, -3.0, 0.0], np.float32), 10) for i in range(4)]
    res = SecAggAggregator(clip=1.0).aggregate(ups, round_index=0)
    assert res.metrics["smpc_clipped_values"] == 8
    assert np.allclose(res.delta, [0.1, 1.0, -1.0, 0.0], atol=1 / 2**16)


def test_bit_budget_error_names_parameters_and_auto_modulus():
    ups = [ClientUpdate(i, np.zeros(8, np.float32), 10**6) for i in range(5)]
    with pytest.raises(ConfigError, match=r"max_weight.*bits.*modulus_bits=32"):
        SecAggAggregator(modulus_bits=32, bits=16).aggregate(ups, round_index=0)
    res = SecAggAggregator(bits=16).aggregate(ups, round_index=0)  # auto -> 64
    assert res.metrics["smpc_modulus_bits"] == 64


def test_upload_expansion_close_to_float32():
    ups = updates(4, 50_000, seed=3)
    res = SecAggAggregator().aggregate(ups, round_index=0)
    plain = len(serialize_vector(ups[0].delta))
    assert all(b / plain <= 1.1 for b in res.upload_bytes.values())
    assert res.metrics["smpc_expansion_vs_float32"] <= 1.1


def test_too_much_dropout_aborts_without_result():
    ups = updates(6, 10, seed=5)
    agg = SecAggAggregator(dropout=0.95, seed=0)
    with pytest.raises(NotEnoughClientsError):
        agg.aggregate(ups, round_index=0)


@pytest.mark.parametrize("kw", [dict(mode="evil"), dict(dropout=1.0), dict(threshold=0), dict(clip=-1.0), dict(dropout_phases=("nope",))])
def test_bad_options(kw):
    with pytest.raises(ConfigError):
        SecAggOptions(**kw)


def test_threshold_out_of_range_rejected():
    with pytest.raises(ConfigError, match="threshold"):
        SecAggAggregator(threshold=2).aggregate(updates(6, 4), round_index=0)


def test_fedavg_core_round_with_secagg_matches_plaintext():
    import torch
    from secagg.fl.core import ClientData, FedConfig, FederatedServer

    class Tiny:
        supervised = True

        def __init__(self):
            torch.manual_seed(0)
            self.module = torch.nn.Linear(3, 1)
            self.threshold = None

        def train_epochs(self, X, y, *, epochs=1, batch_size=64, lr=1e-3, prox_mu=0.0, prox_center=None):
            opt = torch.optim.SGD(self.module.parameters(), lr=lr)
            X, t = torch.as_tensor(X), torch.as_tensor(y, dtype=torch.float32)[:, None]
            for _ in range(epochs):
                opt.zero_grad()
                loss = torch.mean((self.module(X) - t) ** 2)
                loss.backward()
                opt.step()
            return loss.item()

    rng = np.random.default_rng(0)
    clients = []
    for i, m in enumerate([10, 30, 60, 25]):
        X = rng.normal(size=(m, 3)).astype(np.float32)
        clients.append(ClientData(i, X, (X[:, 0] > 0).astype(int)))
    cfg = FedConfig(rounds=1, local_epochs=2, lr=0.1)
    plain = FederatedServer(lambda: Tiny(), clients, WeightedMeanAggregator(), cfg)
    plain.run_round(0)
    sec = FederatedServer(lambda: Tiny(), clients, SecAggAggregator(mode="active"), cfg)
    rec = sec.run_round(0)
    assert np.max(np.abs(sec.global_params - plain.global_params)) <= 2 / 2**16
    assert sorted(rec.included) == [0, 1, 2, 3]


def test_robust_rules_inside_secure_aggregation_are_refused():
    """Median/Krum need every update; SecAgg (and distributed DP over it) reveal only the sum."""
    from secagg.dp.discrete import DistributedDPConfig
    from secagg.errors import ConfigError
    from secagg.fl.dp_aggregators import DistributedDPAggregator
    from secagg.fl.robust import ClientClipping, CoordinateMedian, Krum, check_combination

    for secure in (SecAggAggregator(), DistributedDPAggregator(DistributedDPConfig(1.0, 1.0, 2, 10))):
        for rule in (Krum(1), CoordinateMedian(1)):
            with pytest.raises(ConfigError, match="incompatible"):
                check_combination(rule, secure)
    ClientClipping(SecAggAggregator(), bound=1.0)  # client-side clipping composes
