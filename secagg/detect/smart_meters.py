"""Smart-meter fleet with energy-theft injection, built on real ItalyPowerDemand day shapes.

What it provides
----------------
* :func:`load_ts` -- a strict parser of the sktime/aeon ``.ts`` text format (plain or ``.gz``),
  univariate, equal-length series; any malformed line raises :class:`~secagg.errors.DataError`
  naming the file and line.
* :func:`load_italy_power_demand` -- the real UCR *ItalyPowerDemand* files (67 TRAIN + 1,029 TEST
  days x 24 hourly values; Keogh et al., "Intelligent Icons", 2006), found under
  ``<data dir>/italy_power_demand``.
* :func:`build_smart_meters` -- ``N`` simulated meters (default 1,000). Each meter gets its own
  real day shapes (days sampled without replacement from the 1,096-day pool), its own base load
  and daily swing, and multiplicative measurement noise; a fraction of meters are *thieves* whose
  test days are tampered with one of the six false-data-injection attacks of Jokar et al. 2016.
  Each meter returns benign *train* days and mixed *test* days with per-day labels.

IMPORTANT -- absolute levels are synthetic
-----------------------------------------
ItalyPowerDemand is z-normalised **per day** (mean 0, std 1): it carries real daily load-profile
*shapes* (night trough, morning ramp, evening peak) but no kWh. A meter's hourly reading is
``base_load_kwh * (1 + amplitude * z_t) * noise_t`` (floored at 5 % of the base load), where
``base_load_kwh`` (log-normal, median 0.4 kWh per hour, i.e. ~9.6 kWh a day) and ``amplitude`` are
drawn per meter. The kWh levels, the spread between households and the noise are therefore
simulated; only the shapes are real. They are also *aggregate* shapes: ItalyPowerDemand is
Italy's electrical power demand (twelve monthly series), smoother than one household's load,
and the 1,000 meters draw their 56 days each from the same 1,096-day pool (so meters share
shapes, differing in days, level, swing and noise). :data:`SYNTHETIC_LEVELS_NOTE` says so
for printing.

Theft attacks (Jokar, Arnold, Palizban, "Electricity Theft Detection in AMI Using Customers'
Consumption Patterns", IEEE Trans. Smart Grid 7(1):216-226, 2016, Sec. III-A)
-----------------------------------------------------------------------------------------------
For a day ``x = (x_1..x_24)`` of true consumption the meter reports:

* h1 ``x_t * alpha``, one ``alpha ~ U(0.1, 0.8)`` for the day (scaling).
* h2 ``x_t * beta_t``, ``beta_t = 0`` inside a random interval ``[t_s, t_e)`` and 1 outside
  (on/off: the meter is bypassed for a while). Start and length are drawn at random; the paper's
  minimum-length constraint is reproduced here as ``min_zero_hours`` (default 4 h) -- the exact
  bound in the paper is from memory, hence a parameter.
* h3 ``x_t * gamma_t``, an independent ``gamma_t ~ U(0.1, 0.8)`` per hour (random multipliers).
* h4 ``mean(x) * gamma_t``, ``gamma_t ~ U(0.1, 0.8)`` per hour (scaled mean replacement).
* h5 ``mean(x)`` every hour (mean replacement: the daily total is kept, the shape is flattened;
  it shifts load to cheap hours under time-of-use pricing).
* h6 ``x_{25-t}`` -- the day reported in reverse order (same total, peak moved to off-peak hours).

Labels: ``test_labels`` is 1 for a tampered day, 0 otherwise; ``test_theft_type`` is 0 for a
benign day and ``k`` for attack ``h_k``.

Threat model / guarantees
-------------------------
Simulation only: no secrets, ``numpy.random.Generator`` seeded from the config drives every
choice, so the same config gives bit-identical arrays. No privacy guarantee is claimed here.

Costs
-----
Parsing: O(lines). Fleet: O(N * (train_days + test_days) * 24) float64 memory and time
(1,000 meters x 56 days: train, test and clean test arrays of ~2 M float64 values, ~16 MB;
well under a second).
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from secagg.errors import ConfigError, DataError

HOURS = 24
THEFT_TYPES: tuple[str, ...] = (
    "h1_scaling",
    "h2_zero_interval",
    "h3_random_hourly_multipliers",
    "h4_scaled_mean",
    "h5_mean",
    "h6_reverse",
)
"""Attack names; attack ``h_k`` has code ``k`` (1..6) in ``test_theft_type``."""

SYNTHETIC_LEVELS_NOTE = (
    "Load shapes are real but aggregate (ItalyPowerDemand, UCR: Italian grid demand, each day "
    "z-normalised), not household readings; kWh levels are synthetic: each meter rescales shapes "
    "to its own simulated base load and swing."
)

ITALY_DIR = "italy_power_demand"
ITALY_FILES = ("ItalyPowerDemand_TRAIN.ts", "ItalyPowerDemand_TEST.ts")


# --------------------------------------------------------------------------- data directory


def _find_data_dir() -> Path:
    """SECAGG_DATA, else the first ``shared/data`` walking up from this file, then from the cwd."""
    env = os.environ.get("SECAGG_DATA")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise DataError(f"SECAGG_DATA={env!r} is not a directory")
        return p
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for parent in (start, *start.parents):
            cand = parent / "shared" / "data"
            if cand.is_dir():
                return cand
    raise DataError(
        "no data directory: set SECAGG_DATA or place the data in a 'shared/data' folder "
        "above the repository (e.g. ../shared/data)"
    )


def data_dir() -> Path:
    """The shared data directory: ``secagg.detect``'s ``default_data_dir()`` when that module is
    present (same rules: ``$SECAGG_DATA``, else ``shared/data`` above the file or the cwd), else
    the equivalent local search :func:`_find_data_dir`."""
    for mod in ("secagg.detect.dataset", "secagg.detect.data"):
        try:
            finder = getattr(__import__(mod, fromlist=["default_data_dir"]), "default_data_dir")
        except (ImportError, AttributeError):
            continue
        return Path(finder())
    return _find_data_dir()


# --------------------------------------------------------------------------- .ts parser


@dataclass(frozen=True)
class TsDataset:
    """A parsed univariate, equal-length ``.ts`` file.

    ``values``: float64 ``(n_series, series_length)``; ``labels``: class label strings
    ``(n_series,)``; ``class_labels``: those declared by ``@classLabel``; ``problem_name``.
    """

    values: np.ndarray
    labels: np.ndarray
    class_labels: tuple[str, ...]
    problem_name: str
    source: str


def _read_text(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text at byte {exc.start}") from exc


def _bool_header(value: str, key: str, where: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise DataError(f"{where}: @{key} must be true or false, got {value!r}")
    return v == "true"


def load_ts(path: str | os.PathLike[str]) -> TsDataset:
    """Parse a univariate, equal-length, labelled sktime/aeon ``.ts`` file (plain or gzip).

    Raises :class:`DataError` (naming file and line) for: no ``@data`` section, multivariate or
    unequal-length or timestamped or missing-value data, a line without a ``:label``, a wrong
    number of values, a non-numeric or non-finite value, a label not declared by ``@classLabel``,
    or no data lines at all.
    """
    p = Path(path)
    lines = _read_text(p)
    headers: dict[str, str] = {}
    class_labels: tuple[str, ...] = ()
    in_data = False
    length: int | None = None
    rows: list[list[float]] = []
    labels: list[str] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{p}:{lineno}"
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{where}: expected a @header or #comment before @data, got {line[:40]!r}")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
                if "serieslength" in headers:
                    try:
                        length = int(headers["serieslength"])
                    except ValueError:
                        raise DataError(f"{p}: @seriesLength is not an integer: {headers['serieslength']!r}") from None
                    if length <= 0:
                        raise DataError(f"{p}: @seriesLength must be > 0, got {length}")
                continue
            headers[key] = value.strip()
            if key == "classlabel":
                parts = value.split()
                if not parts or not _bool_header(parts[0], "classLabel", where):
                    raise DataError(f"{where}: only labelled data (@classLabel true ...) is supported")
                class_labels = tuple(parts[1:])
                if not class_labels:
                    raise DataError(f"{where}: @classLabel true but no labels declared")
            elif key == "univariate" and not _bool_header(value, key, where):
                raise DataError(f"{where}: multivariate .ts files are not supported")
            elif key == "equallength" and not _bool_header(value, key, where):
                raise DataError(f"{where}: unequal-length series are not supported")
            elif key == "timestamps" and _bool_header(value, key, where):
                raise DataError(f"{where}: timestamped series are not supported")
            elif key == "missing" and _bool_header(value, key, where):
                raise DataError(f"{where}: series with missing values are not supported")
            continue
        if line.startswith("@"):
            raise DataError(f"{where}: header line {line[:40]!r} after @data")
        series, sep, label = line.rpartition(":")
        if not sep:
            raise DataError(f"{where}: data line has no ':<class label>'")
        if ":" in series:
            raise DataError(f"{where}: more than one dimension (multivariate) in a data line")
        label = label.strip()
        if not label:
            raise DataError(f"{where}: empty class label")
        if class_labels and label not in class_labels:
            raise DataError(f"{where}: class label {label!r} not declared in @classLabel {class_labels}")
        fields = series.split(",")
        try:
            vals = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_float(f))
            raise DataError(f"{where}: value {bad.strip()!r} is not a number") from None
        if not all(math.isfinite(v) for v in vals):
            raise DataError(f"{where}: non-finite value (NaN/Inf) in series")
        if length is None:
            length = len(vals)
        if len(vals) != length:
            raise DataError(f"{where}: series has {len(vals)} values, expected {length}")
        rows.append(vals)
        labels.append(label)
    if not in_data:
        raise DataError(f"{p}: no @data section")
    if not rows:
        raise DataError(f"{p}: @data section has no series")
    return TsDataset(
        values=np.asarray(rows, dtype=np.float64),
        labels=np.asarray(labels),
        class_labels=class_labels,
        problem_name=headers.get("problemname", p.name),
        source=str(p),
    )


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _locate(directory: Path, name: str) -> Path:
    for cand in (directory / name, directory / (name + ".gz")):
        if cand.is_file():
            return cand
    raise DataError(f"{name}(.gz) not found in {directory}")


def load_italy_power_demand(data_root: str | os.PathLike[str] | None = None) -> tuple[TsDataset, TsDataset]:
    """The real ItalyPowerDemand (TRAIN, TEST) sets: 67 and 1,029 z-normalised days x 24 hours.

    ``data_root`` is the shared data directory (default: :func:`data_dir`); the files are read
    from its ``italy_power_demand`` folder. Class label 1 = October-March, 2 = April-September.
    """
    root = Path(data_root) if data_root is not None else data_dir()
    folder = root / ITALY_DIR
    if not folder.is_dir():
        raise DataError(f"ItalyPowerDemand folder {folder} does not exist")
    train, test = (load_ts(_locate(folder, n)) for n in ITALY_FILES)
    for ds in (train, test):
        if ds.values.shape[1] != HOURS:
            raise DataError(f"{ds.source}: expected {HOURS} hourly values per day, got {ds.values.shape[1]}")
    return train, test


# --------------------------------------------------------------------------- theft attacks


def h1_scaling(day: np.ndarray, alpha: float) -> np.ndarray:
    """h1: every hour times one factor ``alpha`` (Jokar et al.: ``alpha ~ U(0.1, 0.8)``)."""
    return np.asarray(day, dtype=np.float64) * float(alpha)


def h2_zero_interval(day: np.ndarray, start: int, length: int) -> np.ndarray:
    """h2: readings zeroed for hours ``start .. start+length-1`` (meter bypassed), others kept."""
    d = np.array(day, dtype=np.float64)
    if not (0 <= start and length >= 1 and start + length <= d.shape[-1]):
        raise ConfigError(f"h2 interval [{start}, {start + length}) must lie inside [0, {d.shape[-1]}]")
    d[..., start : start + length] = 0.0
    return d


def h3_hourly_multipliers(day: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """h3: hour ``t`` times its own factor ``gamma_t`` (Jokar et al.: ``gamma_t ~ U(0.1, 0.8)``)."""
    return np.asarray(day, dtype=np.float64) * np.asarray(gamma, dtype=np.float64)


def h4_scaled_mean(day: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """h4: hour ``t`` reports ``gamma_t * mean(day)``."""
    d = np.asarray(day, dtype=np.float64)
    return d.mean(axis=-1, keepdims=True) * np.asarray(gamma, dtype=np.float64)


def h5_mean(day: np.ndarray) -> np.ndarray:
    """h5: every hour reports the day's mean (total kept, shape flattened)."""
    d = np.asarray(day, dtype=np.float64)
    return np.broadcast_to(d.mean(axis=-1, keepdims=True), d.shape).copy()


def h6_reverse(day: np.ndarray) -> np.ndarray:
    """h6: the day reported in reverse hour order, ``x_{25-t}``."""
    return np.asarray(day, dtype=np.float64)[..., ::-1].copy()


@dataclass(frozen=True)
class TheftParams:
    """Ranges of the random attack parameters (defaults: Jokar et al. 2016)."""

    factor_low: float = 0.1
    factor_high: float = 0.8
    min_zero_hours: int = 4

    def __post_init__(self) -> None:
        if not (0.0 <= self.factor_low < self.factor_high <= 1.0):
            raise ConfigError(
                f"theft factors need 0 <= factor_low < factor_high <= 1, got {self.factor_low}, {self.factor_high}"
            )
        if not (1 <= self.min_zero_hours <= HOURS):
            raise ConfigError(f"min_zero_hours must be in [1, {HOURS}], got {self.min_zero_hours}")


def inject_theft(day: np.ndarray, theft_type: int, rng: np.random.Generator, params: TheftParams = TheftParams()) -> np.ndarray:
    """Apply attack ``h<theft_type>`` (1..6) to one 24-hour day, drawing its random parameters from ``rng``."""
    d = np.asarray(day, dtype=np.float64)
    if d.shape != (HOURS,):
        raise DataError(f"inject_theft: day must have shape ({HOURS},), got {d.shape}")
    lo, hi = params.factor_low, params.factor_high
    if theft_type == 1:
        return h1_scaling(d, rng.uniform(lo, hi))
    if theft_type == 2:
        length = int(rng.integers(params.min_zero_hours, HOURS + 1))
        start = int(rng.integers(0, HOURS - length + 1))
        return h2_zero_interval(d, start, length)
    if theft_type == 3:
        return h3_hourly_multipliers(d, rng.uniform(lo, hi, size=HOURS))
    if theft_type == 4:
        return h4_scaled_mean(d, rng.uniform(lo, hi, size=HOURS))
    if theft_type == 5:
        return h5_mean(d)
    if theft_type == 6:
        return h6_reverse(d)
    raise ConfigError(f"theft_type must be in 1..6 (h1..h6), got {theft_type}")


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class SmartMeterConfig:
    """How to build the fleet.

    ``n_meters``; ``train_days`` benign days and ``test_days`` mixed days per meter (distinct real
    days, so ``train_days + test_days <= 1096``); ``thief_fraction`` of meters steal, each thief
    tampering ``theft_day_fraction`` of its test days (rounded, at least one) with an attack drawn
    uniformly from ``theft_types`` (codes 1..6). ``median_base_kwh``: median hourly base load in
    kWh, ``base_sigma`` its log-normal spread; ``amplitude_range``: per-meter daily swing (times
    the z-score); ``noise_sigma``: multiplicative log-normal measurement noise. ``seed`` fixes all.
    """

    n_meters: int = 1000
    train_days: int = 28
    test_days: int = 28
    thief_fraction: float = 0.5
    theft_day_fraction: float = 0.5
    theft_types: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    median_base_kwh: float = 0.4
    base_sigma: float = 0.5
    amplitude_range: tuple[float, float] = (0.2, 0.45)
    noise_sigma: float = 0.05
    theft: TheftParams = field(default_factory=TheftParams)
    seed: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.n_meters <= 10_000_000):
            raise ConfigError(f"n_meters must be in [1, 1e7], got {self.n_meters}")
        if self.train_days < 1 or self.test_days < 1:
            raise ConfigError(f"train_days and test_days must be >= 1, got {self.train_days}, {self.test_days}")
        if not (0.0 <= self.thief_fraction <= 1.0):
            raise ConfigError(f"thief_fraction must be in [0, 1], got {self.thief_fraction}")
        if not (0.0 < self.theft_day_fraction <= 1.0):
            raise ConfigError(f"theft_day_fraction must be in (0, 1], got {self.theft_day_fraction}")
        if not self.theft_types or any(t not in range(1, 7) for t in self.theft_types):
            raise ConfigError(f"theft_types must be a non-empty subset of 1..6, got {self.theft_types}")
        if not (self.median_base_kwh > 0 and math.isfinite(self.median_base_kwh)):
            raise ConfigError(f"median_base_kwh must be > 0, got {self.median_base_kwh}")
        if not (0.0 <= self.base_sigma <= 3.0):
            raise ConfigError(f"base_sigma must be in [0, 3], got {self.base_sigma}")
        lo, hi = self.amplitude_range
        if not (0.0 < lo <= hi <= 1.0):
            raise ConfigError(f"amplitude_range must satisfy 0 < low <= high <= 1, got {self.amplitude_range}")
        if not (0.0 <= self.noise_sigma <= 1.0):
            raise ConfigError(f"noise_sigma must be in [0, 1], got {self.noise_sigma}")


@dataclass(frozen=True)
class SmartMeterFleet:
    """Per-meter arrays (meter index first). kWh per hour; see the module docstring for levels.

    ``train`` ``(N, train_days, 24)`` benign days; ``test`` ``(N, test_days, 24)`` reported days
    (tampered where ``test_labels == 1``); ``test_clean`` the true consumption behind ``test``;
    ``test_labels`` ``(N, test_days)`` 0/1; ``test_theft_type`` 0 or 1..6; ``is_thief`` ``(N,)``;
    ``base_load_kwh``/``amplitude`` ``(N,)``; ``train_source_day``/``test_source_day`` index the
    real day (0..1095; TRAIN file first) behind each day; ``note`` the synthetic-levels caveat.
    """

    config: SmartMeterConfig
    train: np.ndarray
    test: np.ndarray
    test_clean: np.ndarray
    test_labels: np.ndarray
    test_theft_type: np.ndarray
    is_thief: np.ndarray
    base_load_kwh: np.ndarray
    amplitude: np.ndarray
    train_source_day: np.ndarray
    test_source_day: np.ndarray
    note: str = SYNTHETIC_LEVELS_NOTE

    @property
    def n_meters(self) -> int:
        return int(self.train.shape[0])

    def meter(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(train, test, test_labels)`` of meter ``i``."""
        if not (0 <= i < self.n_meters):
            raise ConfigError(f"meter index must be in [0, {self.n_meters}), got {i}")
        return self.train[i], self.test[i], self.test_labels[i]


def italy_day_pool(data_root: str | os.PathLike[str] | None = None) -> np.ndarray:
    """All 1,096 real z-normalised days, TRAIN then TEST, shape ``(1096, 24)``."""
    train, test = load_italy_power_demand(data_root)
    return np.concatenate([train.values, test.values], axis=0)


def build_smart_meters(
    config: SmartMeterConfig = SmartMeterConfig(),
    *,
    data_root: str | os.PathLike[str] | None = None,
    day_pool: np.ndarray | None = None,
) -> SmartMeterFleet:
    """Build the fleet from the real ItalyPowerDemand day shapes (or a given ``day_pool``).

    ``day_pool`` (``(n_days, 24)``, each day z-normalised) overrides the files, e.g. in tests.
    Deterministic in ``config.seed``. Levels are synthetic; see :data:`SYNTHETIC_LEVELS_NOTE`.
    """
    pool = italy_day_pool(data_root) if day_pool is None else np.asarray(day_pool, dtype=np.float64)
    if pool.ndim != 2 or pool.shape[1] != HOURS:
        raise DataError(f"day_pool must have shape (n_days, {HOURS}), got {pool.shape}")
    if not np.all(np.isfinite(pool)):
        raise DataError("day_pool contains NaN or Inf")
    cfg = config
    per_meter = cfg.train_days + cfg.test_days
    if per_meter > pool.shape[0]:
        raise ConfigError(f"train_days + test_days = {per_meter} exceeds the {pool.shape[0]} real days available")
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_meters

    # Distinct real days per meter: a random permutation prefix (argsort of uniforms is O(pool) each).
    days = np.argsort(rng.random((n, pool.shape[0])), axis=1)[:, :per_meter]
    base = cfg.median_base_kwh * np.exp(cfg.base_sigma * rng.standard_normal(n))
    amp = rng.uniform(*cfg.amplitude_range, size=n)
    z = pool[days]  # (n, days, 24)
    noise = np.exp(cfg.noise_sigma * rng.standard_normal(z.shape))
    load = base[:, None, None] * (1.0 + amp[:, None, None] * z) * noise
    load = np.maximum(load, 0.05 * base[:, None, None])

    train = load[:, : cfg.train_days]
    clean = load[:, cfg.train_days :]
    test = clean.copy()
    is_thief = rng.random(n) < cfg.thief_fraction
    theft_type = np.zeros((n, cfg.test_days), dtype=np.int8)
    k = max(1, int(round(cfg.theft_day_fraction * cfg.test_days)))
    types = np.asarray(cfg.theft_types, dtype=np.int8)
    for i in np.flatnonzero(is_thief):
        tampered = rng.choice(cfg.test_days, size=k, replace=False)
        for d, t in zip(tampered, rng.choice(types, size=k)):
            theft_type[i, d] = t
            test[i, d] = inject_theft(clean[i, d], int(t), rng, cfg.theft)
    return SmartMeterFleet(
        config=cfg,
        train=np.ascontiguousarray(train),
        test=test,
        test_clean=np.ascontiguousarray(clean),
        test_labels=(theft_type > 0).astype(np.int8),
        test_theft_type=theft_type,
        is_thief=is_thief,
        base_load_kwh=base,
        amplitude=amp,
        train_source_day=days[:, : cfg.train_days],
        test_source_day=days[:, cfg.train_days :],
    )
