"""SecAgg+ Harary graphs and parameter derivation."""

import math
import subprocess
import sys
from collections import deque

import pytest
from scipy import stats

from secagg.errors import ConfigError
from secagg.smpc import SessionConfig, derive_params, new_session_id
from secagg.smpc.graph import harary_graph


def connected(g):
    start = next(iter(g))
    seen, q = {start}, deque([start])
    while q:
        for v in g[q.popleft()]:
            if v not in seen:
                seen.add(v)
                q.append(v)
    return len(seen) == len(g)


@pytest.mark.parametrize("n,k", [(10, 2), (50, 6), (301, 20)])
def test_harary_is_k_regular_symmetric_connected_and_seeded(n, k):
    ids = list(range(1, n + 1))
    g = harary_graph(ids, k, b"s" * 16)
    assert all(len(g[u]) == k and u not in g[u] for u in ids)
    assert all(u in g[v] for u in ids for v in g[u])
    assert connected(g)
    assert g == harary_graph(ids, k, b"s" * 16)
    assert g != harary_graph(ids, k, b"t" * 16)


def test_harary_large_degree_is_complete_and_bad_degree_rejected():
    g = harary_graph([1, 2, 3, 4, 5], 4, b"x")
    assert all(len(v) == 4 for v in g.values())
    with pytest.raises(ConfigError):
        harary_graph([1, 2, 3, 4], 3, b"x")


@pytest.mark.parametrize("n,delta,gamma", [(1000, 0.05, 0.05), (500, 0.1, 0.0), (10_000, 0.2, 0.1)])
def test_derived_params_meet_their_bounds(n, delta, gamma):
    p = derive_params(n, delta, gamma, sigma=40, eta=20)
    m = p.degree + 1
    assert p.degree % 2 == 0 and p.degree < n - 1
    assert m / 2 < p.threshold <= m
    # recompute the bounds independently
    corr = math.log2(n) + stats.binom.logcdf(p.threshold - 1, m, 1 - delta) / math.log(2)
    assert corr <= -20
    need = 2 * p.threshold - m
    if gamma > 0:
        assert math.log2(n) + stats.binom.logsf(need - 1, m, gamma) / math.log(2) <= -40
        assert math.log2(n) + p.degree * math.log2(delta + gamma) <= -40
    # degree grows like log n, far below n
    assert p.degree <= 30 * math.log2(n)  # O(log n) with a constant set by delta, gamma
    text = p.explain()
    assert f"k={p.degree}" in text and f"t={p.threshold}" in text and "NOT met" not in text
    # minimality: the next smaller degree cannot satisfy all bounds with any t
    if p.degree > 2:
        k2 = p.degree - 2
        ok = False
        for t in range((k2 + 1) // 2 + 1, k2 + 2):
            c = math.log2(n) + stats.binom.logcdf(t - 1, k2 + 1, 1 - delta) / math.log(2)
            nd = 2 * t - k2 - 1
            d = math.log2(n) + (stats.binom.logsf(nd - 1, k2 + 1, gamma) / math.log(2) if gamma > 0 else -math.inf)
            i = math.log2(n) + k2 * math.log2(delta + gamma)
            ok |= c <= -20 and d <= -40 and i <= -40
        assert not ok


def test_small_n_falls_back_to_complete_graph_and_says_so():
    p = derive_params(10)
    assert p.complete and p.degree == 9
    assert "NOT met" in p.explain()


@pytest.mark.parametrize("kw", [dict(n=2), dict(n=100, dropout_rate=0.6), dict(n=100, dropout_rate=0.3, corruption_rate=0.3), dict(n=100, sigma=0)])
def test_derive_params_rejects_bad_input(kw):
    with pytest.raises(ConfigError):
        derive_params(**kw)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 10, 11, 14, 100])
def test_session_degree_is_accepted_by_session_config(n):
    p = derive_params(n, 0.1, 0.05)
    if p.complete:
        assert p.session_degree is None and p.degree == n - 1
    else:
        assert p.session_degree == p.degree and p.degree % 2 == 0 and p.degree < n - 1
    cfg = SessionConfig(session_id=new_session_id(), round_id=0, client_ids=tuple(range(1, n + 1)),
                        threshold=p.threshold, vector_length=3, degree=p.session_degree)
    assert cfg.neighbourhood_size == p.neighbourhood_size
    assert all(len(nb) == p.degree for nb in cfg.graph.values())


def test_small_n_threshold_equals_n_means_no_dropout_tolerated():
    p = derive_params(10)
    assert p.threshold == 10 and p.tolerated_dropouts == 0
    assert "any dropout aborts" in p.explain()
    q = derive_params(100, 0.1, 0.05)
    assert q.tolerated_dropouts == q.degree + 1 - q.threshold > 0
    assert "any dropout aborts" not in q.explain()


def test_importing_smpc_does_not_import_scipy_stats():
    code = "import sys, secagg.smpc; print('scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
