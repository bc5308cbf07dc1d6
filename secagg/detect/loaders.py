"""Loaders for real IoT intrusion data: CICIDS2017 flow CSVs, IoT-23 Zeek conn.log, N-BaIoT.

Each loader accepts a file or a directory (``.gz`` is read transparently) and returns a
validated :class:`~secagg.detect.dataset.Dataset` whose features are all finite float32.
With ``path=None`` it reads the shipped samples under :func:`default_data_dir`.

Bad input raises :class:`~secagg.errors.DataError` naming the file and the problem: missing
path, empty file, no data rows, no label column, a non-numeric value in a feature column,
a Zeek line with the wrong number of fields, an unknown label.

Choices (documented because they change results)
------------------------------------------------
CICIDS2017 (Sharafaldin et al., ICISSP 2018; CICFlowMeter features):
  * Column names are stripped (the MachineLearningCVE files have leading spaces). The
    duplicated ``Fwd Header Length`` column is kept as ``Fwd Header Length.1`` (pandas'
    de-duplication; the cleaned sample uses the same name).
  * Identifier columns (``Flow ID``, IPs, ``Source Port``, ``Timestamp``) are dropped.
    Several files are aligned on their *common* feature columns (the shipped Friday file
    has an extra ``Destination Port`` which the mixed sample lacks, so it is dropped and
    listed in ``meta['dropped_columns']``).
  * Non-finite cells (``Infinity``/``NaN``/empty in ``Flow Bytes/s``, ``Flow Packets/s``;
    they come from zero-duration flows) are replaced per column: ``+Inf`` by the column's
    largest finite value, ``-Inf`` by its smallest, NaN by 0 (0/0 rate). The counts per
    column are in ``meta['nonfinite_replaced']``. The max is taken over the loaded rows
    (a single per-column statistic; not a per-row label leak).
  * ``BENIGN`` -> 0, every other label -> 1.
  * Natural partition key: the samples carry no IPs, so there is no host column. We use
    ``<file>|win=<Init_Win_bytes_forward>``: the originator's initial TCP window is set by
    its OS TCP stack (the field p0f-style passive fingerprinting uses), so a group
    approximates "hosts with the same network stack". It is a proxy, not a host id; it
    yields strongly skewed, label-correlated groups (e.g. most Bot flows share win=8192).
    Files without that column get ``groups=None`` (natural partitioning then raises).

IoT-23 (Garcia, Parmisano, Erquiaga 2020), labeled Zeek ``conn.log``:
  * Header from the ``#fields`` line; fields are split on TAB *or* three spaces (the
    labeled files join ``tunnel_parents   label   detailed-label`` with three spaces).
  * Features: numeric ``duration, orig_bytes, resp_bytes, missed_bytes, orig_pkts,
    orig_ip_bytes, resp_pkts, resp_ip_bytes`` (unset ``-`` -> 0, plus the 0/1 column
    ``duration_unset``); one-hot ``proto``, ``service`` (``-`` is its own category),
    ``conn_state``; each port as a 3-way one-hot bucket (well-known < 1024, registered
    < 49152, dynamic). Raw IPs, ports, ``uid`` and ``ts`` are identifiers, not features.
  * ``Malicious`` -> 1, ``Benign`` -> 0; the detailed label (``DDoS``, ``C&C``, ...) or
    ``Benign`` goes to ``labels``.
  * Natural partition key: the responder host ``id.resp_h`` by default (a capture has a
    single infected originator, so the responder is the attribute that varies; pass
    ``group_by="orig"`` for multi-device captures).

N-BaIoT (Meidan et al., IEEE Pervasive Computing 2018): one CSV per (device, traffic
type), no label column: the label is the file (a name containing ``benign`` -> 0, else
1). Group = the device: the parent folder for the original per-device layout, else a
device word in the file name (``doorbell``, ``thermostat``, ...), else the file stem.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from secagg.detect.dataset import Dataset, default_data_dir
from secagg.errors import ConfigError, DataError

DATASETS = ("cicids2017", "iot23", "nbaiot")

_CIC_ID_COLUMNS = {
    "flow id", "source ip", "src ip", "destination ip", "dst ip", "source port", "src port",
    "timestamp", "simillarhttp", "unnamed: 0",
}


# ----------------------------------------------------------------------------- helpers

def _resolve(path: str | Path | None, default_sub: str) -> Path:
    p = default_data_dir() / default_sub if path is None else Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    return p


def _files_in(p: Path, patterns: Iterable[str], what: str) -> list[Path]:
    if p.is_file():
        return [p]
    files = sorted({f for pat in patterns for f in p.rglob(pat) if f.is_file()})
    if not files:
        raise DataError(f"{p}: directory contains no {what} files (looked for {', '.join(patterns)})")
    return files


def _read_text(f: Path) -> str:
    try:
        if f.suffix == ".gz":
            with gzip.open(f, "rt", encoding="utf-8", errors="replace") as fh:
                return fh.read()
        return f.read_text(encoding="utf-8", errors="replace")
    except (OSError, EOFError) as e:
        raise DataError(f"{f}: cannot read ({e})") from e


def _read_csv(f: Path) -> pd.DataFrame:
    """CSV (optionally gzip) -> DataFrame with stripped, unique column names."""
    try:
        df = pd.read_csv(f, low_memory=False, encoding_errors="replace")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{f}: file is empty") from e
    except pd.errors.ParserError as e:
        raise DataError(f"{f}: malformed CSV ({e})") from e
    except (OSError, EOFError, UnicodeError) as e:
        raise DataError(f"{f}: cannot read ({e})") from e
    names: list[str] = []
    for c in (str(c).strip() for c in df.columns):
        base, k = c, 0
        while c in names:  # ' X' and 'X' collide after stripping: keep both as X, X.1
            k += 1
            c = f"{base}.{k}"
        names.append(c)
    df.columns = names
    if len(df) == 0:
        raise DataError(f"{f}: header but no data rows")
    return df


def _numeric_block(df: pd.DataFrame, cols: list[str], f: Path | str) -> np.ndarray:
    """Columns -> float64 matrix; any cell that is not a number (or NaN/Inf/empty) is an error."""
    out = np.empty((len(df), len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            out[:, j] = s.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        conv = pd.to_numeric(s, errors="coerce")
        bad = conv.isna() & s.notna() & (s.astype(str).str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{f}: non-numeric value {str(s.iloc[i])!r} in feature column {c!r} "
                f"(data row {i + 1}; {int(bad.sum())} such cells)"
            )
        out[:, j] = conv.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _replace_nonfinite(X: np.ndarray, names: list[str]) -> dict[str, int]:
    """In place: +Inf -> column finite max, -Inf -> finite min, NaN -> 0. Returns counts."""
    counts: dict[str, int] = {}
    bad_cols = np.flatnonzero(~np.isfinite(X).all(axis=0))
    for j in bad_cols:
        col = X[:, j]
        fin = np.isfinite(col)
        hi = col[fin].max() if fin.any() else 0.0
        lo = col[fin].min() if fin.any() else 0.0
        counts[names[j]] = int((~fin).sum())
        col[np.isposinf(col)] = hi
        col[np.isneginf(col)] = lo
        col[np.isnan(col)] = 0.0
    return counts


def _check_float32_range(X: np.ndarray, names: list[str], where: str) -> None:
    big = np.abs(X) > np.finfo(np.float32).max
    if big.any():
        j = int(np.flatnonzero(big.any(axis=0))[0])
        raise DataError(f"{where}: value out of float32 range in feature column {names[j]!r}")


# ----------------------------------------------------------------------------- CICIDS2017

def load_cicids2017(path: str | Path | None = None) -> Dataset:
    """CICFlowMeter flow CSV(s) -> Dataset (see module docstring for every choice).

    ``path``: a CSV (``.csv`` or ``.csv.gz``) or a directory of them; default: both shipped
    CICIDS2017 samples merged (6,311 mixed rows + 9,998 benign Friday rows = 16,309 rows,
    77 common features).
    """
    p = _resolve(path, "cicids2017")
    files = _files_in(p, ("*.csv", "*.csv.gz"), "CSV")
    frames: list[tuple[Path, pd.DataFrame, str]] = []
    for f in files:
        df = _read_csv(f)
        label_cols = [c for c in df.columns if c.lower() == "label"]
        if not label_cols:
            raise DataError(f"{f}: no label column (expected a column named 'Label')")
        frames.append((f, df, label_cols[0]))

    feature_sets = []
    for f, df, lab in frames:
        feats = [c for c in df.columns if c != lab and c.lower() not in _CIC_ID_COLUMNS]
        if not feats:
            raise DataError(f"{f}: no feature columns besides the label")
        feature_sets.append(feats)
    common = [c for c in feature_sets[0] if all(c in fs for fs in feature_sets[1:])]
    if not common:
        raise DataError(f"{p}: the CSV files share no feature columns")
    dropped = sorted({c for fs in feature_sets for c in fs} - set(common))

    Xs, labels, groups = [], [], []
    for f, df, lab in frames:
        Xs.append(_numeric_block(df, common, f))
        lab_s = df[lab].astype(str).str.strip()
        if (lab_s == "").any() or df[lab].isna().any():
            i = int(np.flatnonzero((lab_s == "").to_numpy() | df[lab].isna().to_numpy())[0])
            raise DataError(f"{f}: empty label in data row {i + 1}")
        labels.append(lab_s.to_numpy(dtype=object))
        stem = f.name.split(".")[0]
        if "Init_Win_bytes_forward" in df.columns:
            win = pd.to_numeric(df["Init_Win_bytes_forward"], errors="coerce").fillna(-1).astype(np.int64)
            groups.append(np.array([f"{stem}|win={w}" for w in win], dtype=object))
        else:
            groups.append(None)
    X = np.concatenate(Xs, axis=0)
    nonfinite = _replace_nonfinite(X, common)
    _check_float32_range(X, common, str(p))
    lab_all = np.concatenate(labels)
    y = (np.char.upper(lab_all.astype(str)) != "BENIGN").astype(np.int64)
    g = None if any(x is None for x in groups) else np.concatenate(groups)
    return Dataset(
        name="cicids2017",
        X=X.astype(np.float32),
        y=y,
        labels=lab_all,
        groups=g,
        feature_names=tuple(common),
        source=tuple(str(f) for f in files),
        meta={
            "nonfinite_replaced": nonfinite,
            "dropped_columns": dropped,
            "group_key": "file|Init_Win_bytes_forward" if g is not None else None,
        },
    )


# ----------------------------------------------------------------------------- IoT-23

IOT23_NUMERIC = (
    "duration", "orig_bytes", "resp_bytes", "missed_bytes",
    "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
)
IOT23_CATEGORICAL = ("proto", "service", "conn_state")
_ZEEK_SPLIT = re.compile(r"\t| {3}")


def _port_bucket(p: pd.Series) -> pd.Series:
    v = pd.to_numeric(p, errors="coerce")
    return pd.Series(
        np.select([v < 1024, v < 49152, v >= 49152], ["wellknown", "registered", "dynamic"], "unset"),
        index=p.index,
    )


def _read_zeek(f: Path) -> pd.DataFrame:
    text = _read_text(f)
    if not text.strip():
        raise DataError(f"{f}: file is empty")
    fields: list[str] | None = None
    rows: list[list[str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("#fields"):
                fields = _ZEEK_SPLIT.split(line.rstrip("\n"))[1:]
            continue
        if fields is None:
            raise DataError(f"{f}: data before the '#fields' header line (line {lineno}); not a Zeek log")
        parts = _ZEEK_SPLIT.split(line)
        if len(parts) != len(fields):
            raise DataError(
                f"{f}: line {lineno} has {len(parts)} fields, the #fields header has {len(fields)}"
            )
        rows.append(parts)
    if fields is None:
        raise DataError(f"{f}: no '#fields' header line; not a Zeek conn.log")
    if not rows:
        raise DataError(f"{f}: header but no data rows")
    return pd.DataFrame(rows, columns=fields)


def load_iot23(path: str | Path | None = None, *, group_by: str = "resp") -> Dataset:
    """Labeled Zeek conn.log(s) -> Dataset (see module docstring).

    ``path``: a ``conn.log.labeled`` (optionally ``.gz``) or a directory of them; default the
    shipped capture (23,145 flows: 1,923 benign, 21,222 malicious).
    ``group_by``: ``"resp"`` (responder host, default) or ``"orig"`` (originator host).
    """
    if group_by not in ("resp", "orig"):
        raise ConfigError(f"group_by must be 'resp' or 'orig', got {group_by!r}")
    p = _resolve(path, "iot23")
    files = _files_in(p, ("*conn.log.labeled", "*conn.log.labeled.gz", "*.log", "*.log.gz"), "Zeek conn.log")
    frames = []
    for f in files:
        df = _read_zeek(f)
        if "label" not in df.columns:
            raise DataError(f"{f}: no label column (expected 'label' in the #fields header)")
        missing = [c for c in (*IOT23_NUMERIC, *IOT23_CATEGORICAL, "id.orig_h", "id.resp_h", "id.orig_p", "id.resp_p")
                   if c not in df.columns]
        if missing:
            raise DataError(f"{f}: missing conn.log columns {missing}")
        lab = df["label"].str.strip().str.lower()
        bad = ~lab.isin(["benign", "malicious"])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{f}: unknown label {df['label'].iloc[i]!r} in data row {i + 1} (expected Benign/Malicious)")
        num = df[list(IOT23_NUMERIC)].replace("-", np.nan)
        block = _numeric_block(num, list(IOT23_NUMERIC), f)
        df = df.assign(**{f"__num_{c}": block[:, j] for j, c in enumerate(IOT23_NUMERIC)})
        df["__file"] = str(f)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)

    numeric = np.stack([df[f"__num_{c}"].to_numpy() for c in IOT23_NUMERIC], axis=1)
    unset = np.isnan(numeric[:, 0]).astype(np.float64)[:, None]
    numeric = np.nan_to_num(numeric, nan=0.0)
    names = [*IOT23_NUMERIC, "duration_unset"]
    blocks = [numeric, unset]
    for c in IOT23_CATEGORICAL:
        vals = df[c].str.strip()
        cats = sorted(vals.unique())
        blocks.append((vals.to_numpy()[:, None] == np.array(cats, dtype=object)[None, :]).astype(np.float64))
        names += [f"{c}={v}" for v in cats]
    for c, short in (("id.orig_p", "orig_port"), ("id.resp_p", "resp_port")):
        b = _port_bucket(df[c])
        cats = ["wellknown", "registered", "dynamic", "unset"]
        blocks.append((b.to_numpy()[:, None] == np.array(cats, dtype=object)[None, :]).astype(np.float64))
        names += [f"{short}={v}" for v in cats]
    X = np.concatenate(blocks, axis=1)
    keep = X.std(axis=0) > 0  # drop all-constant one-hot columns such as an unused port bucket
    keep[: len(IOT23_NUMERIC) + 1] = True  # numeric columns stay even if constant in this file
    X = X[:, keep]
    names = [n for n, k in zip(names, keep) if k]
    _check_float32_range(X, names, str(p))

    y = (df["label"].str.strip().str.lower() == "malicious").to_numpy().astype(np.int64)
    detailed = df["detailed-label"].str.strip() if "detailed-label" in df.columns else pd.Series("-", index=df.index)
    labels = np.where((detailed == "-") | (detailed == ""), df["label"].str.strip(), detailed).astype(object)
    groups = df["id.resp_h" if group_by == "resp" else "id.orig_h"].to_numpy(dtype=object)
    return Dataset(
        name="iot23",
        X=X.astype(np.float32),
        y=y,
        labels=labels,
        groups=groups,
        feature_names=tuple(names),
        source=tuple(str(f) for f in files),
        meta={"group_key": f"id.{group_by}_h", "unset_duration_rows": int(unset.sum())},
    )


# ----------------------------------------------------------------------------- N-BaIoT

_NBAIOT_DEVICES = (
    "doorbell", "thermostat", "baby_monitor", "babymonitor", "security_camera", "webcam", "camera",
)


def _nbaiot_group(f: Path, root: Path) -> str:
    rel = f.relative_to(root) if root.is_dir() else Path(f.name)
    if len(rel.parts) > 1:
        return rel.parts[0]
    stem = f.name.split(".")[0].lower()
    for dev in _NBAIOT_DEVICES:
        if dev in stem:
            return dev
    return stem


def load_nbaiot(path: str | Path | None = None) -> Dataset:
    """N-BaIoT CSVs (one per device x traffic type) -> Dataset; label and group from the file.

    Default: the four shipped 299-row files (benign_traffic -> 0; doorbell_udp, scan,
    thermostat_udp -> 1), 1,196 rows x 115 features. Tiny: smoke tests only.
    """
    p = _resolve(path, "nbaiot")
    files = _files_in(p, ("*.csv", "*.csv.gz"), "CSV")
    Xs, ys, labels, groups = [], [], [], []
    names: list[str] | None = None
    for f in files:
        df = _read_csv(f)
        cols = list(df.columns)
        if names is None:
            names = cols
        elif cols != names:
            raise DataError(f"{f}: columns differ from {files[0]} (N-BaIoT files must share the 115-feature header)")
        X = _numeric_block(df, cols, f)
        if not np.isfinite(X).all():
            j = int(np.flatnonzero(~np.isfinite(X).all(axis=0))[0])
            raise DataError(f"{f}: missing or non-finite value in feature column {cols[j]!r}")
        stem = f.name.split(".")[0]
        Xs.append(X)
        ys.append(np.full(len(df), 0 if "benign" in stem.lower() else 1, dtype=np.int64))
        labels.append(np.full(len(df), stem, dtype=object))
        groups.append(np.full(len(df), _nbaiot_group(f, p), dtype=object))
    assert names is not None
    X = np.concatenate(Xs)
    _check_float32_range(X, names, str(p))
    return Dataset(
        name="nbaiot",
        X=X.astype(np.float32),
        y=np.concatenate(ys),
        labels=np.concatenate(labels),
        groups=np.concatenate(groups),
        feature_names=tuple(names),
        source=tuple(str(f) for f in files),
        meta={"group_key": "device (folder or file-name word)"},
    )


_LOADERS = {"cicids2017": load_cicids2017, "iot23": load_iot23, "nbaiot": load_nbaiot}


def load_dataset(name: str, path: str | Path | None = None) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) from ``path`` or the shipped default data."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ConfigError(f"dataset must be one of {DATASETS}, got {name!r}") from None
    return loader(path)
