"""Smoke tests of the result scripts (benchmarks/table1.py, comm_vs_clients.py, dp_clients_curve.py)
and unit tests of their shared helpers (benchmarks/_common.py).

Each script runs in a subprocess in its ``--quick`` mode, writing into a temp dir; the test
checks that the Markdown table has every expected row and column, that the numbers are
sane (metrics in [0, 1], the DP rows carry a certified epsilon close to the target, byte
counts match the formats), and that nothing but the outputs is left behind (atomic writes).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402  (benchmarks/ is not a package)


def run_script(name: str, *args: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(md: str, first_cell: str) -> list[list[str]]:
    """Data rows (split cells) of every Markdown table whose header starts with ``first_cell``."""
    rows, inside = [], False
    for line in md.splitlines():
        if line.startswith(f"| {first_cell} |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            inside = False
    return rows


def test_table1_quick_has_every_row_and_column(tmp_path):
    out = tmp_path / "res" / "table1.md"
    run_script("table1.py", "--quick", "--datasets", "cicids2017", "--models", "mlp", "--out", str(out), cwd=tmp_path)
    md = out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["table1.json", "table1.md"]
    header = ("| setting | accuracy | precision | recall | F1 | FPR | ROC-AUC | upload B / client / round | "
              "s / round | epsilon (delta=1e-5) |")
    assert header in md
    assert "## cicids2017 — MLP" in md and "## Differences from the paper" in md
    assert "cores" in md and "torch" in md and "tenseal" in md  # machine and library versions noted
    rows = {r[0]: r for r in table_rows(md, "setting")}
    expected = ["Centralized DL", "Federated DL (FedAvg, IID)", "FDL + DP (central DP-FedAvg, target eps=8)",
                "FL + Compression (top1%+q8, upload)", "FDL + SecAgg (SecAgg+)", "FDL + CKKS",
                "FDL + distributed DP + SecAgg (target eps=8)", "FedAvg on non-IID (Dirichlet alpha=0.5)",
                "FedProx on non-IID (Dirichlet alpha=0.5, mu=0.01)"]
    assert list(rows) == expected
    for r in rows.values():
        assert len(r) == 10
        for cell in r[1:7]:
            assert 0.0 <= float(cell) <= 1.0, r
    assert rows["Centralized DL"][7] == "— (no upload)"
    assert rows["Federated DL (FedAvg, IID)"][9] == "∞ (no DP)"
    for dp in ("FDL + DP (central DP-FedAvg, target eps=8)", "FDL + distributed DP + SecAgg (target eps=8)"):
        assert 7.0 < float(rows[dp][9]) <= 8.0  # the ledger's certified epsilon meets the target
    data = json.loads(out.with_suffix(".json").read_text())
    runs = {r["row"]: r for r in data["runs"]}
    plain = runs["fedavg"]["upload_bytes"]
    assert plain == 16 + 4 * runs["fedavg"]["n_params"]  # float32 payload + header
    assert runs["compression"]["upload_bytes"] < plain / 20  # top-1 % + 8-bit
    assert runs["ckks"]["upload_bytes"] > plain  # ciphertext expansion
    assert runs["secagg+"]["metrics"]["f1"] == pytest.approx(runs["fedavg"]["metrics"]["f1"], abs=0.05)
    assert data["machine"]["cores"] >= 1 and "torch" in data["libraries"]
    assert data["machine_line"] in md and data["args"]["out"] == str(out)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.parent.iterdir())  # readable, not mkstemp's 0600


def test_comm_vs_clients_quick_has_every_scheme(tmp_path):
    out = tmp_path / "res" / "comm.md"
    run_script("comm_vs_clients.py", "--quick", "--out", str(out), cwd=tmp_path)
    md = out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["comm.json", "comm.md", "comm.png"]
    assert (out.with_suffix(".png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Machine: " in md and "load average" in md and "tenseal" in md
    rows = table_rows(md, "scheme")
    schemes = {r[0].split(" (")[0] for r in rows}
    assert schemes == {"plaintext", "SecAgg", "SecAgg+", "CKKS", "packed Paillier"}
    assert all(len(r) == 10 for r in rows)
    data = json.loads(out.with_suffix(".json").read_text())["table"]
    L = 1000
    for n in ("3", "5", "10"):
        assert data["plaintext"][n]["up"] == 16 + 4 * L
        assert data["CKKS"][n]["up"] > 10 * data["plaintext"][n]["up"]
        assert data["packed Paillier"][n]["up"] > data["plaintext"][n]["up"]
    assert data["SecAgg"]["10"]["how"].startswith("extrapolated")  # beyond --secagg-max in quick mode
    assert data["SecAgg+"]["10"]["how"].startswith("measured")
    # SecAgg bytes grow with n (key shares), and stay within 2x float32 at these sizes
    assert data["SecAgg"]["3"]["up"] < data["SecAgg"]["5"]["up"] < 2 * (16 + 4 * L)


def test_dp_clients_curve_quick_certifies_each_target(tmp_path):
    out = tmp_path / "res" / "dpc.md"
    run_script("dp_clients_curve.py", "--quick", "--out", str(out), cwd=tmp_path)
    assert sorted(p.name for p in out.parent.iterdir()) == ["dpc.json", "dpc.md", "dpc.png"]
    rows = table_rows(out.read_text(), "model")
    got = {(r[1], r[3]) for r in rows}
    assert got == {("no DP (FedAvg)", "∞"), ("central DP-FedAvg", "1"), ("central DP-FedAvg", "8"),
                   ("distributed DP + SecAgg", "1"), ("distributed DP + SecAgg", "8")}
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    for r in runs:
        if r["mechanism"] != "none":
            assert 0.9 * r["epsilon_target"] < r["epsilon"] <= r["epsilon_target"]  # ledger meets the target
            # central: z C / n exactly; distributed: the decoded discrete noise, within 5 % of it
            assert r["noise_std_of_mean"] == pytest.approx(r["noise_multiplier"] * r["clip"] / r["clients"], rel=0.05)
    # more epsilon -> less noise
    central = sorted((r["epsilon_target"], r["noise_multiplier"]) for r in runs if r["mechanism"] == "central")
    assert central[0][1] > central[1][1]


def test_iid_clients_root_rows_disjoint_and_deterministic():
    y = np.arange(100) % 2
    data = SimpleNamespace(X_train=np.arange(200, dtype=np.float32).reshape(100, 2), y_train=y)
    clients, root = _common.iid_clients(data, 4, 40, seed=3, root_rows=10)
    assert [c.client_id for c in clients] == [0, 1, 2, 3] and [len(c.y) for c in clients] == [10, 10, 10, 10]
    rows = np.concatenate([c.X[:, 0] / 2 for c in clients]).astype(int)
    assert len(set(rows)) == 40 and not set(rows) & set(root.tolist()) and len(root) == 10
    again, root2 = _common.iid_clients(data, 4, 40, seed=3, root_rows=10)
    assert np.array_equal(root, root2) and all(np.array_equal(a.X, b.X) for a, b in zip(clients, again))
    no_root, empty = _common.iid_clients(data, 4, 40, seed=3)  # without a root set: the first 40 permuted rows
    assert len(empty) == 0 and set(np.concatenate([c.X[:, 0] / 2 for c in no_root]).astype(int)) == set(
        np.random.default_rng(3).permutation(100)[:40].tolist())


def test_run_tasks_in_process_runs_every_task_and_args_dict_is_json():
    class Bar:
        def __init__(self):
            self.n, self.post = 0, []

        def update(self, k):
            self.n += k

        def set_postfix_str(self, s):
            self.post.append(s)

    bar = Bar()
    out = _common.run_tasks(lambda t: {"sq": t["x"] ** 2}, [{"x": i} for i in range(4)], 1, bar,
                            describe=lambda t: f"x={t['x']}")
    assert out == [{"sq": 0}, {"sq": 1}, {"sq": 4}, {"sq": 9}] and bar.n == 4 and bar.post[-1] == "x=3"
    args = SimpleNamespace(out=Path("results/x.md"), seeds=[0, 1], quick=True)
    assert json.loads(json.dumps(_common.args_dict(args))) == {"out": "results/x.md", "seeds": [0, 1], "quick": True}
