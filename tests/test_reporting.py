"""Atomic result writing and the shared result-table formatting helpers."""

import json
import os
import stat

import numpy as np
import pytest

from secagg.reporting import (
    library_versions,
    machine_info,
    machine_line,
    mean_std,
    save_figure,
    write_json,
    write_text,
)


def test_write_json_roundtrip_numpy_and_no_temp_left(tmp_path):
    p = write_json({"a": np.float32(1.5), "b": np.arange(3)}, tmp_path / "x" / "r.json")
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
    assert os.listdir(p.parent) == ["r.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = write_text("old", tmp_path / "t.md")
    with pytest.raises(TypeError):
        write_json({"bad": object()}, p)  # serialisation fails before anything is written
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["t.md"]


def test_save_figure_writes_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    p = save_figure(fig, tmp_path / "f.png")
    plt.close(fig)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_machine_info_names_cores_and_versions():
    info = machine_info()
    assert info["cores"] >= 1 and info["torch"].startswith("2.13")


def test_written_files_are_world_readable_not_mkstemp_private(tmp_path):
    p = write_text("x", tmp_path / "t.md")
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    p = write_text("y", tmp_path / "t.md", mode=0o600)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == "y"


def test_library_versions_names_installed_and_missing():
    v = library_versions(("numpy", "no-such-dist-xyz"))
    assert v == {"numpy": np.__version__, "no-such-dist-xyz": "not installed"}


def test_machine_line_has_cpu_cores_load_and_every_library(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (1.25, 0.5, 0.04))
    line = machine_line()
    info = machine_info()
    assert line.startswith(f"Machine: {info['cpu']}, {info['cores']} cores (")
    assert "load average 1.2/0.5/0.0 when the table was written" in line
    assert f"Python {info['python']}" in line and f"numpy {np.__version__}" in line
    for lib in ("torch", "tenseal", "cryptography", "phe", "opacus", "dp-accounting", "scipy"):
        assert f"{lib} " in line
    assert "\n" not in line  # one Markdown line

    def no_load():
        raise OSError("no loadavg")

    monkeypatch.setattr(os, "getloadavg", no_load)
    assert "load average n/a" in machine_line(("numpy",))


def test_mean_std_formats():
    assert mean_std([0.9, 0.8]) == "0.850±0.050"
    assert mean_std(np.array([1.0, 2.0]), ".1f", sep=" ± ") == "1.5 ± 0.5"
    assert mean_std([0.25]) == "0.250"  # one seed: no std
    assert mean_std([1234.5, 1234.5], ",.0f") == "1,234±0"
    assert mean_std([]) == "n/a"


def test_mean_std_missing_values():
    assert mean_std([0.5, float("nan")]) == "nan±nan"  # a failed metric stays visible by default
    assert mean_std([0.5, None, float("nan"), 0.7], skip_missing=True) == "0.600±0.100"
    assert mean_std([None, float("nan")], skip_missing=True) == "n/a"
