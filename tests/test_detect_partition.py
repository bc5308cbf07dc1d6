"""Split, scaler (fitted on training rows only) and client partitioning schemes."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.detect import Dataset, StandardScaler, load_dataset, partition, prepare, train_val_test_split
from secagg.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def iot() -> Dataset:
    return load_dataset("iot23")


def _is_disjoint_cover(parts: list[np.ndarray], n: int) -> bool:
    allidx = np.concatenate(parts)
    return len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


# ----------------------------------------------------------------------------- split

def test_split_stratified_disjoint_deterministic() -> None:
    y = np.r_[np.zeros(700, int), np.ones(300, int)]
    sp = train_val_test_split(y, seed=3, val=0.1, test=0.2)
    assert _is_disjoint_cover([sp.train, sp.val, sp.test], 1000)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (700, 100, 200)
    assert y[sp.test].sum() == 60 and y[sp.val].sum() == 30  # 30 % attacks in every part
    assert all(np.all(np.diff(p) > 0) for p in (sp.train, sp.val, sp.test))  # sorted (flow order kept)
    again = train_val_test_split(y, seed=3, val=0.1, test=0.2)
    assert np.array_equal(again.test, sp.test)
    assert not np.array_equal(train_val_test_split(y, seed=4, val=0.1, test=0.2).test, sp.test)


@pytest.mark.parametrize("kw", [dict(val=-0.1), dict(test=1.0), dict(val=0.5, test=0.5)])
def test_split_rejects_bad_fractions(kw) -> None:
    with pytest.raises(ConfigError):
        train_val_test_split(np.zeros(10, int), 0, **kw)


# ----------------------------------------------------------------------------- scaler

def test_scaler_uses_training_rows_only(iot: Dataset) -> None:
    d = prepare(iot, seed=0)
    ref = StandardScaler().fit(iot.X[d.split.train])
    assert np.allclose(d.scaler.mean_, ref.mean_) and np.allclose(d.scaler.scale_, ref.scale_)
    full = StandardScaler().fit(iot.X)
    assert not np.allclose(full.mean_, d.scaler.mean_)  # including test rows would change it
    # train columns standardised; test columns are not exactly (they were not used to fit)
    std = d.X_train.std(axis=0)
    assert np.allclose(d.X_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(std[std > 0], 1, atol=1e-3)
    assert d.X_test.shape == (len(d.split.test), iot.n_features) and d.X_test.dtype == np.float32


def test_scaler_constant_column_and_log1p() -> None:
    X = np.array([[0.0, 5.0, -3.0], [np.e - 1, 5.0, 3.0]])
    sc = StandardScaler(log1p=True).fit(X)
    Z = sc.transform(X)
    assert np.isfinite(Z).all() and np.all(Z[:, 1] == 0)  # constant column -> 0, no division by 0
    assert sc.mean_[0] == pytest.approx(0.5) and sc.mean_[2] == pytest.approx(0.0)  # log1p(e-1) = 1
    assert Z[:, 0].tolist() == pytest.approx([-1.0, 1.0])
    lin = StandardScaler(log1p=False).fit(X)
    assert lin.mean_[0] == pytest.approx((np.e - 1) / 2)
    # unseen huge test values stay finite and are not clipped
    assert StandardScaler().fit(X).transform(np.array([[1e30, 5.0, 0.0]]))[0, 0] > 10


def test_scaler_errors() -> None:
    with pytest.raises(ConfigError, match="before fit"):
        StandardScaler().transform(np.zeros((2, 2)))
    with pytest.raises(DataError, match="NaN or Inf"):
        StandardScaler().fit(np.array([[1.0], [np.nan]]))
    sc = StandardScaler().fit(np.zeros((3, 2)))
    with pytest.raises(DataError, match="fitted on 2 columns"):
        sc.transform(np.zeros((3, 3)))


# ----------------------------------------------------------------------------- partition

def test_iid_partition() -> None:
    y = np.r_[np.zeros(95, int), np.ones(8, int)]
    parts = partition(y, 10, "iid", seed=1)
    assert _is_disjoint_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(y, 10, "iid", seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, partition(y, 10, "iid", seed=2)))


def test_natural_partition_keeps_groups_whole(iot: Dataset) -> None:
    parts = partition(iot.y, 8, "natural", groups=iot.groups, seed=0)
    assert _is_disjoint_cover(parts, iot.n_samples) and all(len(p) for p in parts)
    owners: dict[str, set[int]] = {}
    for c, p in enumerate(parts):
        for g in np.unique(iot.groups[p]):
            owners.setdefault(g, set()).add(c)
    assert len(owners) == 49 and all(len(s) == 1 for s in owners.values())
    # greedy largest-first: the biggest host (14,260 flows) is one client on its own
    assert max(len(p) for p in parts) == 14260


def test_natural_partition_errors() -> None:
    y = np.zeros(6, int)
    with pytest.raises(ConfigError, match="needs per-row groups"):
        partition(y, 2, "natural")
    with pytest.raises(ConfigError, match="at least n_clients=4 groups, the data has 3"):
        partition(y, 4, "natural", groups=np.array(list("aabbcc"), dtype=object))


def _label_skew(y: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label mix and the global mix."""
    glob = np.bincount(y, minlength=2) / len(y)
    return float(np.mean([0.5 * np.abs(np.bincount(y[p], minlength=2) / len(p) - glob).sum() for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    y = np.r_[np.zeros(3000, int), np.ones(3000, int)]
    skewed = partition(y, 10, "dirichlet", alpha=0.05, seed=0, min_size=5)
    even = partition(y, 10, "dirichlet", alpha=1000.0, seed=0)
    iid = partition(y, 10, "iid", seed=0)
    for parts in (skewed, even):
        assert _is_disjoint_cover(parts, len(y))
    assert min(len(p) for p in skewed) >= 5
    assert _label_skew(y, skewed) > 0.3
    assert _label_skew(y, even) < 0.05 and _label_skew(y, iid) < 0.05


def test_partition_errors() -> None:
    y = np.zeros(5, int)
    with pytest.raises(ConfigError, match="scheme must be one of"):
        partition(y, 2, "random")
    with pytest.raises(ConfigError, match="n_clients"):
        partition(y, 0)
    with pytest.raises(ConfigError, match="5 rows cannot give 6 clients"):
        partition(y, 6)
    with pytest.raises(ConfigError, match="alpha"):
        partition(y, 2, "dirichlet", alpha=0.0)


def test_dedup_removes_every_test_row_that_copies_a_training_row():
    from secagg.detect import load_dataset
    from secagg.detect.preprocess import duplicate_rows, prepare

    ds = load_dataset("iot23")
    plain = prepare(ds, seed=0)
    dedup = prepare(ds, seed=0, dedup=True)

    def copies(p):
        train = {r.tobytes() for r in p.X_train}
        return sum(r.tobytes() in train for r in p.X_test)

    assert copies(plain) > 0.5 * len(plain.y_test)  # measured: ~80 % of IoT-23 test rows repeat a training row
    assert copies(dedup) == 0
    assert dedup.duplicates_dropped == int(duplicate_rows(ds.X).sum()) == ds.n_samples - (
        len(dedup.y_train) + len(dedup.y_val) + len(dedup.y_test))
    X = np.array([[1, 2], [3, 4], [1, 2], [1, 2]], dtype=np.float32)
    assert duplicate_rows(X).tolist() == [False, False, True, True]
