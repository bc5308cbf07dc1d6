"""Tests of secagg.detect.smart_meters: the .ts parser on the real ItalyPowerDemand files,
malformed-file rejection, the six Jokar et al. 2016 theft attacks, fleet labels and determinism."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigError, DataError
from secagg.detect.smart_meters import (
    HOURS,
    SYNTHETIC_LEVELS_NOTE,
    SmartMeterConfig,
    TheftParams,
    build_smart_meters,
    h1_scaling,
    h2_zero_interval,
    h3_hourly_multipliers,
    h4_scaled_mean,
    h5_mean,
    h6_reverse,
    inject_theft,
    italy_day_pool,
    load_italy_power_demand,
    load_ts,
)

HEADER = "#c\n@problemName Toy\n@timeStamps false\n@missing false\n@univariate true\n@equalLength true\n@seriesLength 3\n@classLabel true 1 2\n@data\n"


@pytest.fixture(scope="module")
def real():
    return load_italy_power_demand()


@pytest.fixture(scope="module")
def pool():
    return italy_day_pool()


@pytest.fixture(scope="module")
def fleet(pool):
    return build_smart_meters(SmartMeterConfig(n_meters=200, seed=7), day_pool=pool)


# ----------------------------------------------------------------------------- parser


def test_real_files_shapes_labels_and_znorm(real):
    train, test = real
    assert train.values.shape == (67, 24)
    assert test.values.shape == (1029, 24)
    assert train.problem_name == "ItalyPowerDemand"
    assert train.class_labels == ("1", "2")
    assert set(train.labels) == {"1", "2"} and set(test.labels) == {"1", "2"}
    allv = np.concatenate([train.values, test.values])
    assert np.all(np.isfinite(allv))
    # each real day is z-normalised, the reason absolute levels must be synthesised
    np.testing.assert_allclose(allv.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(allv.std(axis=1, ddof=1), 1.0, atol=1e-3)
    # first TRAIN day, first and last value, as printed in the file
    assert train.values[0, 0] == pytest.approx(-0.71051757)
    assert train.values[0, -1] == pytest.approx(-0.26923494)
    assert train.labels[0] == "1"


def test_plain_and_gzip_parse_identically(tmp_path):
    text = HEADER + "1,2,3:1\n4.5,-6,7e-1:2\n"
    (tmp_path / "a.ts").write_text(text)
    (tmp_path / "b.ts.gz").write_bytes(gzip.compress(text.encode()))
    a, b = load_ts(tmp_path / "a.ts"), load_ts(tmp_path / "b.ts.gz")
    np.testing.assert_array_equal(a.values, [[1, 2, 3], [4.5, -6, 0.7]])
    np.testing.assert_array_equal(a.values, b.values)
    assert list(a.labels) == ["1", "2"] and a.problem_name == "Toy"


@pytest.mark.parametrize(
    "text, match",
    [
        (HEADER.replace("@data\n", ""), "no @data"),
        (HEADER, "no series"),
        (HEADER + "1,2,3:1\n1,2:1\n", r":11: series has 2 values, expected 3"),
        (HEADER + "1,abc,3:1\n", "'abc' is not a number"),
        (HEADER + "1,nan,3:1\n", "non-finite"),
        (HEADER + "1,inf,3:1\n", "non-finite"),
        (HEADER + "1,2,3\n", "no ':<class label>'"),
        (HEADER + "1,2,3:\n", "empty class label"),
        (HEADER + "1,2,3:7\n", "not declared"),
        (HEADER + "1,2,3:4,5,6:1\n", "multivariate"),
        (HEADER + "1,2,3:1\n@data\n", "after @data"),
        (HEADER.replace("@univariate true", "@univariate false"), "multivariate"),
        (HEADER.replace("@equalLength true", "@equalLength false"), "unequal-length"),
        (HEADER.replace("@missing false", "@missing maybe"), "true or false"),
        (HEADER.replace("@seriesLength 3", "@seriesLength x"), "not an integer"),
        ("garbage before header\n" + HEADER, "expected a @header"),
    ],
)
def test_malformed_ts_raises_dataerror(tmp_path, text, match):
    p = tmp_path / "bad.ts"
    p.write_text(text)
    with pytest.raises(DataError, match=match):
        load_ts(p)


def test_corrupt_gzip_and_missing_file(tmp_path):
    p = tmp_path / "bad.ts.gz"
    p.write_bytes(gzip.compress((HEADER + "1,2,3:1\n").encode())[:-10])
    with pytest.raises(DataError, match="gzip"):
        load_ts(p)
    with pytest.raises(DataError, match="cannot read"):
        load_ts(tmp_path / "nope.ts")
    with pytest.raises(DataError, match="does not exist"):
        load_italy_power_demand(tmp_path)


# ----------------------------------------------------------------------------- attacks

DAY = np.linspace(0.2, 1.4, HOURS) + 0.3 * np.sin(np.arange(HOURS))


def test_h1_scales_total_by_alpha():
    out = h1_scaling(DAY, 0.35)
    assert out.sum() == pytest.approx(0.35 * DAY.sum())
    np.testing.assert_allclose(out / DAY, 0.35)


def test_h2_zeroes_exactly_the_interval():
    out = h2_zero_interval(DAY, 5, 6)
    assert np.all(out[5:11] == 0.0)
    np.testing.assert_array_equal(out[:5], DAY[:5])
    np.testing.assert_array_equal(out[11:], DAY[11:])
    with pytest.raises(ConfigError, match="h2 interval"):
        h2_zero_interval(DAY, 20, 6)


def test_h3_h4_h5_h6_definitions():
    g = np.linspace(0.1, 0.8, HOURS)
    np.testing.assert_allclose(h3_hourly_multipliers(DAY, g), DAY * g)
    np.testing.assert_allclose(h4_scaled_mean(DAY, g), DAY.mean() * g)
    h5 = h5_mean(DAY)
    np.testing.assert_allclose(h5, DAY.mean())
    assert h5.sum() == pytest.approx(DAY.sum())  # total kept, shape flat
    h6 = h6_reverse(DAY)
    np.testing.assert_array_equal(h6, DAY[::-1])
    assert h6.sum() == pytest.approx(DAY.sum())
    assert not np.array_equal(h6, DAY)


def _check_attack(clean: np.ndarray, out: np.ndarray, t: int, p: TheftParams) -> None:
    """Assert that ``out`` is attack ``t`` applied to ``clean`` with parameters in range."""
    lo, hi = p.factor_low, p.factor_high
    if t == 1:
        r = out / clean
        np.testing.assert_allclose(r, r[0], rtol=1e-12)
        assert lo <= r[0] <= hi
        assert out.sum() == pytest.approx(r[0] * clean.sum())
    elif t == 2:
        z = np.flatnonzero(out == 0.0)
        assert len(z) >= p.min_zero_hours
        assert np.all(np.diff(z) == 1), "zeroed hours must form one interval"
        keep = np.ones(HOURS, bool)
        keep[z] = False
        np.testing.assert_array_equal(out[keep], clean[keep])
    elif t == 3:
        r = out / clean
        assert np.all((r >= lo - 1e-12) & (r <= hi + 1e-12))
        assert np.ptp(r) > 0
    elif t == 4:
        r = out / clean.mean()
        assert np.all((r >= lo - 1e-12) & (r <= hi + 1e-12))
    elif t == 5:
        np.testing.assert_allclose(out, clean.mean())
    elif t == 6:
        np.testing.assert_array_equal(out, clean[::-1])
    else:
        raise AssertionError(f"unknown type {t}")


@settings(deadline=None, max_examples=60)
@given(
    t=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    day=st.lists(st.floats(0.01, 10.0), min_size=HOURS, max_size=HOURS),
)
def test_inject_theft_matches_definition(t, seed, day):
    clean = np.asarray(day)
    p = TheftParams()
    out = inject_theft(clean, t, np.random.default_rng(seed), p)
    _check_attack(clean, out, t, p)
    assert out.sum() <= clean.sum() * (1 + 1e-12) or t in (5, 6)


def test_inject_theft_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="theft_type"):
        inject_theft(DAY, 7, rng)
    with pytest.raises(DataError, match="shape"):
        inject_theft(DAY[:10], 1, rng)
    with pytest.raises(ConfigError, match="factor_low"):
        TheftParams(factor_low=0.9, factor_high=0.5)


# ----------------------------------------------------------------------------- fleet


def test_fleet_shapes_and_labels_match_injection(fleet):
    cfg = fleet.config
    n = cfg.n_meters
    assert fleet.train.shape == (n, cfg.train_days, HOURS)
    assert fleet.test.shape == fleet.test_clean.shape == (n, cfg.test_days, HOURS)
    assert np.all(fleet.train > 0) and np.all(fleet.test_clean > 0)
    np.testing.assert_array_equal(fleet.test_labels, (fleet.test_theft_type > 0).astype(np.int8))
    # benign meters never tampered; every thief tampers exactly round(0.5 * 28) = 14 days
    assert not fleet.test_labels[~fleet.is_thief].any()
    np.testing.assert_array_equal(fleet.test_labels[fleet.is_thief].sum(axis=1), 14)
    assert 0.35 < fleet.is_thief.mean() < 0.65
    benign = fleet.test_labels == 0
    np.testing.assert_array_equal(fleet.test[benign], fleet.test_clean[benign])
    seen = set()
    for i, d in zip(*np.nonzero(fleet.test_labels)):
        t = int(fleet.test_theft_type[i, d])
        seen.add(t)
        _check_attack(fleet.test_clean[i, d], fleet.test[i, d], t, cfg.theft)
    assert seen == {1, 2, 3, 4, 5, 6}


def test_fleet_uses_real_shapes_with_per_meter_levels(fleet, pool):
    # each meter's days are distinct real days
    days = np.concatenate([fleet.train_source_day, fleet.test_source_day], axis=1)
    assert all(len(set(row)) == days.shape[1] for row in days)
    # the shape of a simulated day tracks its real source day (correlation, noise 5 %)
    corr = [np.corrcoef(fleet.train[i, 0], pool[fleet.train_source_day[i, 0]])[0, 1] for i in range(50)]
    assert np.median(corr) > 0.95
    # the level is the meter's synthetic base load (z-scores average 0 over a day)
    ratio = fleet.train.mean(axis=(1, 2)) / fleet.base_load_kwh
    assert 0.97 < np.median(ratio) < 1.05
    assert fleet.base_load_kwh.std() > 0.1  # meters differ
    assert "synthetic" in fleet.note and fleet.note == SYNTHETIC_LEVELS_NOTE


def test_fleet_deterministic_by_seed(pool):
    cfg = SmartMeterConfig(n_meters=30, train_days=10, test_days=10, seed=3)
    a, b = build_smart_meters(cfg, day_pool=pool), build_smart_meters(cfg, day_pool=pool)
    for name in ("train", "test", "test_labels", "test_theft_type", "train_source_day"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = build_smart_meters(SmartMeterConfig(n_meters=30, train_days=10, test_days=10, seed=4), day_pool=pool)
    assert not np.array_equal(a.train, c.train)


def test_default_fleet_from_real_files_is_1000_meters():
    f = build_smart_meters()
    assert f.n_meters == 1000
    train, test, labels = f.meter(999)
    assert train.shape == (28, 24) and test.shape == (28, 24) and labels.shape == (28,)
    assert 0.2 < f.test_labels.mean() < 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_meters": 0}, "n_meters"),
        ({"train_days": 0}, "train_days"),
        ({"thief_fraction": 1.5}, "thief_fraction"),
        ({"theft_day_fraction": 0.0}, "theft_day_fraction"),
        ({"theft_types": (1, 9)}, "theft_types"),
        ({"median_base_kwh": -1.0}, "median_base_kwh"),
        ({"amplitude_range": (0.5, 0.1)}, "amplitude_range"),
        ({"noise_sigma": 2.0}, "noise_sigma"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SmartMeterConfig(**kwargs)


def test_build_rejects_bad_pool_and_too_many_days(pool):
    with pytest.raises(DataError, match="shape"):
        build_smart_meters(SmartMeterConfig(n_meters=2), day_pool=pool[:, :12])
    bad = pool[:100].copy()
    bad[3, 4] = np.nan
    with pytest.raises(DataError, match="NaN"):
        build_smart_meters(SmartMeterConfig(n_meters=2), day_pool=bad)
    with pytest.raises(ConfigError, match="exceeds"):
        build_smart_meters(SmartMeterConfig(n_meters=2, train_days=60, test_days=60), day_pool=pool[:100])
    with pytest.raises(ConfigError, match="meter index"):
        build_smart_meters(SmartMeterConfig(n_meters=2), day_pool=pool).meter(2)


def test_data_dir_env_override(tmp_path, monkeypatch):
    import secagg.detect.smart_meters as sm

    monkeypatch.setenv("SECAGG_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="SECAGG_DATA"):
        sm._find_data_dir()
    monkeypatch.setenv("SECAGG_DATA", str(tmp_path))
    assert sm._find_data_dir() == Path(tmp_path)
    assert sm.data_dir() == Path(tmp_path)
    with pytest.raises(DataError, match="italy_power_demand"):
        sm.load_italy_power_demand()


def test_smart_meters_example_runs_end_to_end(tmp_path):
    """The example on a small fleet: SecAgg+ rounds with in-protocol dropout, distributed DP, ledger."""
    import json
    import subprocess
    import sys

    from secagg.dp import read_ledger

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "examples" / "smart_meters.py"), "--meters", "60", "--rounds", "2",
           "--clients-per-round", "24", "--local-epochs", "1", "--dropout", "0.1", "--no-baseline", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kWh levels are synthetic" in out.stdout
    assert "epsilon spent" in out.stdout and "chain intact" in out.stdout
    res = json.loads((tmp_path / "results.json").read_text())
    ledger = read_ledger(tmp_path / "privacy_ledger.jsonl")
    assert ledger.ok and len(ledger.rounds) == len(res["survivors_per_round"]) >= 1
    assert [len(r["participants"]) for r in ledger.rounds] == res["survivors_per_round"]
    assert all(0 <= p < 60 for r in ledger.rounds for p in r["participants"])
    assert 0 < res["epsilon"]["population"] <= 16.0  # the budget guard's default
    for key in ("f1", "roc_auc", "fpr"):
        assert 0.0 <= res["secagg_plus_ddp"][key] <= 1.0
    assert res["bytes_per_meter_per_round"]["up"] > res["bytes_per_meter_per_round"]["plaintext_up"]
