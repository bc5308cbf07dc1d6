"""The example app as a real Flower deployment: SuperLink + 3 SuperNodes as local processes.

One SuperNode is SIGKILLed while it is provably inside the round (it has received the
masked-input request with the training instruction and is training); the ServerApp's
SecAgg workflow drops it and recovers its pairwise masks from the survivors' shares. The
aggregate must equal, bit for bit, our in-process driver (secagg.smpc.run_round) on the
same encoded inputs with the same dropout.

Every process is started by the test, bounded by timeouts, and killed in a finally
(LocalDeployment.__exit__), whatever happens.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from secagg.encoding import FixedPointConfig, decode_sum
from secagg.integrations.flower.app import initial_parameters, local_update
from secagg.integrations.flower.deploy import DeploymentError, LocalDeployment
from secagg.integrations.flower.smpc import encode_update, rounding_generator
from secagg.smpc import DropoutSchedule, SessionConfig, run_round

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
N = 3
VICTIM = 2  # partition id of the SuperNode that is killed mid-round
SEED = 11


@pytest.mark.slow
def test_deployment_secagg_round_survives_a_supernode_killed_mid_round(tmp_path):
    marker = tmp_path / "victim-is-training"
    node_configs = []
    for p in range(N):
        nc = {"partition-id": p, "num-partitions": N, "rounding-seed": SEED}
        if p == VICTIM:
            nc.update({"fault-marker": str(marker), "fault-sleep-s": 600.0})
        node_configs.append(nc)
    run_config = {"layer": "secagg", "num-rounds": 1, "min-nodes": N, "threshold": 2, "evaluate": False,
                  "wait-for-nodes-s": 90.0, "stage-timeout-s": 120.0, "straggler-grace-s": 25.0}
    result = tmp_path / "result.json"
    with LocalDeployment(tmp_path / "deploy", node_configs, startup_timeout_s=60.0) as d:
        d.submit(APP_DIR, {**run_config, "result-path": str(result)}, timeout_s=90.0)
        deadline = time.monotonic() + 240.0
        while not marker.exists():
            if time.monotonic() > deadline:
                raise DeploymentError(f"victim never started training; SuperLink log:\n{d.log_tail(d.procs[0], 40)}")
            time.sleep(0.2)
        d.kill_supernode(VICTIM)
        assert d.supernodes[VICTIM].popen.poll() is not None  # really gone
        d.wait_for_file(result, timeout_s=240.0)
    import json

    rep = json.loads(result.read_text())
    r = rep["rounds"][0]
    partition_of = {int(k): v for k, v in rep["partition_of"].items()}
    assert sorted(partition_of.values()) == list(range(N))
    victim_node = next(n for n, p in partition_of.items() if p == VICTIM)
    assert r["dropped"] == [victim_node]
    assert r["included_partitions"] == [p for p in range(N) if p != VICTIM]

    # our in-process driver on the same inputs and the same dropout
    cfg = rep["config"]
    g = initial_parameters(cfg["dataset"], cfg["seed"])
    fp = FixedPointConfig(clip=cfg["clip"], bits=cfg["bits"], modulus_bits=cfg["modulus-bits"])
    cid = {node: i + 1 for i, node in enumerate(sorted(partition_of))}
    inputs = {}
    for node, p in partition_of.items():
        delta, w, _ = local_update(g, dataset=cfg["dataset"], seed=cfg["seed"], partition_id=p, num_partitions=N, round_index=0,
                                   local_epochs=cfg["local-epochs"], lr=cfg["lr"], batch_size=cfg["batch-size"])
        inputs[cid[node]] = encode_update(delta, w, fp, rounding_generator(SEED, cid[node], 0))
    scfg = SessionConfig(session_id=b"\x05" * 16, round_id=0, client_ids=tuple(range(1, N + 1)), threshold=2,
                         vector_length=g.shape[0] + 1, modulus_bits=fp.modulus_bits)
    ref = run_round(scfg, inputs, DropoutSchedule(masked_input=frozenset({cid[victim_node]})))
    assert r["ring_total"] == [int(x) for x in ref.total]
    np.testing.assert_array_equal(np.asarray(r["delta"], np.float32),
                                  decode_sum(ref.total[:-1], fp, int(ref.total[-1])).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(rep["final_params"], np.float32),
                                  (g + np.asarray(r["delta"], np.float32)).astype(np.float32))
