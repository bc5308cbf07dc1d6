"""pytest-benchmark timings of secagg.dp (run: ``python -m pytest benchmarks/bench_dp.py --benchmark-only -q``).

Accountant query time per accountant on the same history: 1,000 rounds of the Poisson
sampled Gaussian (z = 1.1, q = 0.01, one self-composed event) and a heterogeneous
100-round history (10 distinct (z, q) phases). Each benchmark also checks the value so a
fast wrong answer cannot pass. Plus: the exact discrete Gaussian sampler (100,000 samples,
sigma^2 = 1000), one client's distributed-DP encoding (L = 10,000) and a ledger append.
Numbers from a shared 2-core machine: compare within one run only.
"""

from __future__ import annotations

import numpy as np
import pytest

from secagg.dp.accountants import accountant_names, get_accountant
from secagg.dp.discrete import DiscreteGaussianSampler, DistributedDPConfig, plan_round
from secagg.dp.events import SampledGaussianEvent
from secagg.dp.ledger import PrivacyBudget, PrivacyLedger

DELTA = 1e-5
HOMOGENEOUS = [SampledGaussianEvent(1.1, 0.01, 1000)]
HETERO = [SampledGaussianEvent(1.0 + 0.1 * i, 0.01 * (1 + i % 3), 10) for i in range(10)]
REF = get_accountant("dpa-rdp").epsilon(HOMOGENEOUS, DELTA)


@pytest.mark.parametrize("name", accountant_names())
def test_accountant_query_homogeneous(benchmark, name):
    eps = benchmark(get_accountant(name).epsilon, HOMOGENEOUS, DELTA)
    assert 0.3 * REF < eps <= 1.5 * REF


@pytest.mark.parametrize("name", [n for n in accountant_names() if n != "opacus-gdp"])
def test_accountant_query_heterogeneous(benchmark, name):
    eps = benchmark(get_accountant(name).epsilon, HETERO, DELTA)
    assert 0 < eps < 10


def test_discrete_gaussian_sampler_100k(benchmark):
    s = DiscreteGaussianSampler(1000)
    x = benchmark(s.sample, 100_000)
    assert abs(x.var() / 1000 - 1) < 0.05


def test_distributed_dp_client_encode_10k(benchmark):
    r = plan_round(DistributedDPConfig(1.0, 1.0, 10, 20, 32), 10_000)
    v = np.random.default_rng(0).normal(size=10_000).astype(np.float32) * 0.005
    out = benchmark(r.encode, v)
    assert out.dtype == np.uint64 and int(out.max()) < 2**32


def test_ledger_append_fsync(benchmark, tmp_path):
    led = PrivacyLedger.create(tmp_path / "b.jsonl", PrivacyBudget(1e9, DELTA))
    state = {"r": 0}

    def append():
        led.record_round(state["r"], SampledGaussianEvent(1.0, 0.1), range(100), clip_norm=1.0,
                         mechanism="central_gaussian", check_budget=False)
        state["r"] += 1

    benchmark(append)
    assert len(led.rounds) == state["r"]
