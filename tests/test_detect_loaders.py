"""Loaders on the real shared samples (counts from shared/data/SOURCES.md) and on malformed files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from secagg.detect import default_data_dir, load_cicids2017, load_dataset, load_iot23, load_nbaiot
from secagg.detect.dataset import Dataset
from secagg.errors import ConfigError, DataError

DATA = default_data_dir()
CIC_MIXED = DATA / "cicids2017" / "cicids2017_sample_westernoc2_mergedlabels.csv.gz"
CIC_FRIDAY = DATA / "cicids2017" / "Friday-WorkingHours-Afternoon-DDos_first9998rows_BENIGNonly.csv.gz"


@pytest.fixture(scope="module")
def cic() -> Dataset:
    return load_dataset("cicids2017")


@pytest.fixture(scope="module")
def iot() -> Dataset:
    return load_dataset("iot23")


# ----------------------------------------------------------------------------- real samples

def test_cicids_default_merges_both_files(cic: Dataset) -> None:
    assert cic.X.shape == (6311 + 9998, 77)
    assert cic.X.dtype == np.float32 and np.isfinite(cic.X).all()
    assert cic.label_counts() == {
        "BENIGN": 227 + 9998, "WebAttack": 2180, "Bot": 1966, "DoS": 952,
        "BruteForce": 553, "PortScan": 397, "Infiltration": 36,
    }
    assert int(cic.y.sum()) == 6311 - 227
    assert np.array_equal(cic.y, (cic.labels != "BENIGN").astype(np.int64))
    assert len(cic.source) == 2


def test_cicids_column_alignment(cic: Dataset) -> None:
    names = cic.feature_names
    assert all(n == n.strip() for n in names)
    assert "Destination Port" not in names and cic.meta["dropped_columns"] == ["Destination Port"]
    assert "Fwd Header Length" in names and "Fwd Header Length.1" in names
    assert "Label" not in names
    # same columns in the same order as the cleaned sample's header
    header = gzip.open(CIC_MIXED, "rt").readline().strip().split(",")
    assert list(names) == header[:-1]


def test_cicids_nonfinite_cells_replaced_and_counted(cic: Dataset) -> None:
    # SOURCES.md: 28 non-finite cells in the mixed sample, 14 in the Friday file
    assert sum(cic.meta["nonfinite_replaced"].values()) == 28 + 14
    assert set(cic.meta["nonfinite_replaced"]) == {"Flow Bytes/s", "Flow Packets/s"}


def test_cicids_single_files() -> None:
    mixed = load_cicids2017(CIC_MIXED)
    assert mixed.X.shape == (6311, 77) and mixed.label_counts()["BENIGN"] == 227
    assert sum(mixed.meta["nonfinite_replaced"].values()) == 28
    friday = load_cicids2017(CIC_FRIDAY)
    assert friday.X.shape == (9998, 78) and friday.feature_names[0] == "Destination Port"
    assert friday.y.sum() == 0
    assert sum(friday.meta["nonfinite_replaced"].values()) == 14


def test_cicids_inf_nan_rule(tmp_path: Path) -> None:
    f = tmp_path / "flows.csv"
    f.write_text(
        " Flow Duration, Flow Bytes/s, Init_Win_bytes_forward, Label\n"
        "10,100.0,8192,BENIGN\n0,Infinity,8192,DoS\n0,NaN,-1,BENIGN\n5,,29200,Bot\n3,-Infinity,8192,BENIGN\n"
    )
    ds = load_cicids2017(f)
    assert ds.feature_names == ("Flow Duration", "Flow Bytes/s", "Init_Win_bytes_forward")
    assert ds.X[:, 1].tolist() == [100.0, 100.0, 0.0, 0.0, 100.0]  # +Inf -> finite max, NaN -> 0, -Inf -> min
    assert ds.meta["nonfinite_replaced"] == {"Flow Bytes/s": 4}
    assert ds.y.tolist() == [0, 1, 0, 1, 0]
    assert ds.groups.tolist() == ["flows|win=8192", "flows|win=8192", "flows|win=-1", "flows|win=29200", "flows|win=8192"]


def test_iot23(iot: Dataset) -> None:
    assert iot.n_samples == 23145
    assert iot.label_counts() == {"Benign": 1923, "C&C": 6706, "DDoS": 14394, "PartOfAHorizontalPortScan": 122}
    assert int(iot.y.sum()) == 21222
    assert np.isfinite(iot.X).all()
    names = set(iot.feature_names)
    assert {"duration", "orig_bytes", "resp_ip_bytes", "duration_unset", "proto=tcp", "proto=udp",
            "service=irc", "service=-", "conn_state=S0", "conn_state=OTH"} <= names
    assert not names & {"ts", "uid", "id.orig_h", "id.resp_h", "label", "detailed-label", "tunnel_parents"}
    # one-hot blocks: exactly one category per row
    for prefix in ("proto=", "service=", "conn_state="):
        cols = [i for i, n in enumerate(iot.feature_names) if n.startswith(prefix)]
        assert np.all(iot.X[:, cols].sum(axis=1) == 1)
    assert int(iot.X[:, iot.feature_names.index("duration_unset")].sum()) == iot.meta["unset_duration_rows"] > 0
    assert len(np.unique(iot.groups)) == 49 and "185.244.25.235" in set(iot.groups)


ZEEK_HEADER = (
    "#separator \\x09\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration"
    "\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts"
    "\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents{sep}label{sep}detailed-label\n"
)
ZEEK_ROWS = [
    "1.0\tC1\t10.0.0.2\t41040\t1.2.3.4\t80\ttcp\t-\t3.1\t0\t0\tS0\t-\t-\t0\tS\t3\t180\t0\t0\t-{sep}Benign{sep}-",
    "2.0\tC2\t10.0.0.2\t41041\t1.2.3.5\t6667\ttcp\tirc\t-\t-\t-\tSF\t-\t-\t0\tS\t1\t60\t0\t0\t-{sep}Malicious{sep}C&C",
]


def _zeek(tmp_path: Path, sep: str, rows=ZEEK_ROWS, name="conn.log.labeled") -> Path:
    f = tmp_path / name
    f.write_text(ZEEK_HEADER.format(sep=sep) + "".join(r.format(sep=sep) + "\n" for r in rows))
    return f


def test_iot23_three_space_and_tab_separators_parse_the_same(tmp_path: Path) -> None:
    a = load_iot23(_zeek(tmp_path, "   ", name="a.conn.log.labeled"))
    b = load_iot23(_zeek(tmp_path, "\t", name="b.conn.log.labeled"))
    assert a.feature_names == b.feature_names and np.array_equal(a.X, b.X)
    assert a.y.tolist() == [0, 1] and a.labels.tolist() == ["Benign", "C&C"]
    i = a.feature_names.index("duration")
    assert a.X[:, i].tolist() == pytest.approx([3.1, 0.0])  # '-' -> 0 with the unset flag
    assert a.X[:, a.feature_names.index("duration_unset")].tolist() == [0.0, 1.0]


def test_nbaiot() -> None:
    ds = load_nbaiot()
    assert ds.X.shape == (4 * 299, 115) and np.isfinite(ds.X).all()
    assert ds.label_counts() == {"benign_traffic": 299, "doorbell_udp": 299, "scan": 299, "thermostat_udp": 299}
    assert int((ds.y == 0).sum()) == 299
    assert np.all(ds.y[ds.labels == "benign_traffic"] == 0)
    assert set(ds.groups) == {"benign_traffic", "doorbell", "scan", "thermostat"}


def test_nbaiot_device_folders(tmp_path: Path) -> None:
    for dev, kind, v in (("Danmini_Doorbell", "benign_traffic", 1.0), ("Danmini_Doorbell", "udp", 2.0),
                         ("Ecobee_Thermostat", "benign_traffic", 3.0)):
        (tmp_path / dev).mkdir(exist_ok=True)
        (tmp_path / dev / f"{kind}.csv").write_text(f"a,b\n{v},1\n{v},2\n")
    ds = load_nbaiot(tmp_path)
    assert ds.n_samples == 6
    assert sorted(set(zip(ds.groups, ds.y.tolist()))) == [
        ("Danmini_Doorbell", 0), ("Danmini_Doorbell", 1), ("Ecobee_Thermostat", 0)]


# ----------------------------------------------------------------------------- data location

def test_default_data_dir_env_and_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cicids2017").mkdir()
    (tmp_path / "cicids2017" / "mine.csv").write_text("Flow Duration,Label\n1,BENIGN\n2,DDoS\n")
    monkeypatch.setenv("SECAGG_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    ds = load_dataset("cicids2017")
    assert ds.n_samples == 2 and ds.source == (str(tmp_path / "cicids2017" / "mine.csv"),)
    monkeypatch.setenv("SECAGG_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="SECAGG_DATA"):
        default_data_dir()
    # without the variable, found from the package location even when cwd is elsewhere
    monkeypatch.delenv("SECAGG_DATA")
    monkeypatch.chdir(tmp_path)
    assert (default_data_dir() / "cicids2017").is_dir()


# ----------------------------------------------------------------------------- malformed input

def test_missing_path_names_it(tmp_path: Path) -> None:
    for name in ("cicids2017", "iot23", "nbaiot"):
        with pytest.raises(DataError, match="no_such.csv: no such file"):
            load_dataset(name, tmp_path / "no_such.csv")


def test_unknown_dataset_name() -> None:
    with pytest.raises(ConfigError, match="dataset must be one of"):
        load_dataset("kdd99")


@pytest.mark.parametrize("loader", [load_cicids2017, load_iot23, load_nbaiot])
def test_empty_file(tmp_path: Path, loader) -> None:
    f = tmp_path / "empty.csv"
    f.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        loader(f)
    g = tmp_path / "empty.csv.gz"
    with gzip.open(g, "wt") as fh:
        fh.write("")
    with pytest.raises(DataError, match=r"empty\.csv\.gz: file is empty"):
        loader(g)


def test_header_only_csv(tmp_path: Path) -> None:
    f = tmp_path / "hdr.csv"
    f.write_text("Flow Duration,Label\n")
    with pytest.raises(DataError, match=r"hdr\.csv: header but no data rows"):
        load_cicids2017(f)


def test_missing_label_column(tmp_path: Path) -> None:
    f = tmp_path / "nolabel.csv"
    f.write_text("Flow Duration,Flow Bytes/s\n1,2\n3,4\n")
    with pytest.raises(DataError, match=r"nolabel\.csv: no label column"):
        load_cicids2017(f)
    z = tmp_path / "nolabel.conn.log.labeled"
    z.write_text("#fields\tts\tuid\tproto\n1.0\tC1\ttcp\n")
    with pytest.raises(DataError, match=r"nolabel\.conn\.log\.labeled: no label column"):
        load_iot23(z)


def test_non_numeric_feature(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("Flow Duration,Flow Bytes/s,Label\n1,2,BENIGN\n3,fast,DoS\n")
    with pytest.raises(DataError, match=r"bad\.csv: non-numeric value 'fast' in feature column 'Flow Bytes/s' \(data row 2"):
        load_cicids2017(f)
    rows = [ZEEK_ROWS[0], ZEEK_ROWS[1].replace("\t60\t", "\tsixty\t")]
    with pytest.raises(DataError, match=r"conn\.log\.labeled: non-numeric value 'sixty' in feature column 'orig_ip_bytes'"):
        load_iot23(_zeek(tmp_path, "   ", rows=rows))
    n = tmp_path / "scan.csv"
    n.write_text("MI_dir_L5_weight,MI_dir_L5_mean\n1.0,x\n")
    with pytest.raises(DataError, match=r"scan\.csv: non-numeric value 'x' in feature column 'MI_dir_L5_mean'"):
        load_nbaiot(n)


def test_zeek_field_count_and_label_errors(tmp_path: Path) -> None:
    rows = [ZEEK_ROWS[0], ZEEK_ROWS[1].replace("\tirc\t", "\t")]
    with pytest.raises(DataError, match=r"conn\.log\.labeled: line 4 has 22 fields, the #fields header has 23"):
        load_iot23(_zeek(tmp_path, "   ", rows=rows))
    rows = [ZEEK_ROWS[0].replace("Benign", "Maybe")]
    with pytest.raises(DataError, match="unknown label 'Maybe'"):
        load_iot23(_zeek(tmp_path, "   ", rows=rows))
    f = tmp_path / "plain.log"
    f.write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match=r"plain\.log: data before the '#fields' header"):
        load_iot23(f)


def test_directory_without_data_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="contains no CSV files"):
        load_cicids2017(tmp_path)


def test_cicflowmeter_quirks_duplicate_names_and_cp1252_labels(tmp_path: Path) -> None:
    # the original MachineLearningCVE files spell 'Web Attack \x96 Brute Force' in cp1252
    f = tmp_path / "quirks.csv"
    f.write_bytes(b" Flow Duration,Flow Duration, Label\n1,2,BENIGN\n3,4,Web Attack \x96 Brute Force\n")
    ds = load_cicids2017(f)
    assert ds.feature_names == ("Flow Duration", "Flow Duration.1")
    assert ds.y.tolist() == [0, 1] and ds.labels[1].startswith("Web Attack")
