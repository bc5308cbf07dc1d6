"""Atomic result writing."""

import json
import os

import numpy as np
import pytest

from secagg.reporting import machine_info, save_figure, write_json, write_text


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
