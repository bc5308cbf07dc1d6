"""The runnable examples run end to end with small settings (the smart-meter one is in test_smart_meters.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import iot_intrusion  # noqa: E402


@pytest.mark.parametrize("layer", ["none", "secagg+", "dp"])
def test_iot_intrusion_example(layer, tmp_path, capsys):
    rc = iot_intrusion.main(["--layer", layer, "--rounds", "2", "--local-epochs", "1", "--clients", "4",
                             "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["rounds"]) == 2 and res["final_metrics"]["roc_auc"] > 0
    out = capsys.readouterr().out
    assert "upload per client per round" in out
    if layer == "dp":
        assert 0 < res["epsilon"] <= 8.0 + 1e-6  # calibrated to the default budget, guarded by the ledger
        audit = subprocess.run([sys.executable, "-m", "secagg.cli", "privacy", "audit", str(tmp_path / "privacy_ledger.jsonl")],
                               capture_output=True, text=True, timeout=120)
        assert audit.returncode == 0, audit.stderr
        assert "status      OK" in audit.stdout


def test_embed_layer_example_under_40_lines_and_exact():
    src = (ROOT / "examples" / "embed_layer.py").read_text().splitlines()
    assert len(src) < 40
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "embed_layer.py")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "max |secure - plaintext|" in out.stdout
