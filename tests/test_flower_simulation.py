"""The example Flower app in Flower's simulation engine (Ray), and its FAB configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomli

from secagg.encoding import FixedPointConfig, decode_sum
from secagg.integrations.flower.app import FlowerAppConfig, initial_parameters, local_update, make_client_app, run_in_simulation
from secagg.integrations.flower.layers import client_mods
from secagg.integrations.flower.smpc import SecAggMod, encode_update, rounding_generator
from secagg.smpc import SessionConfig, run_round

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
SEED = 23


def _seeded_rounding(context, client_id, round_id):  # module level: Ray pickles the ClientApp
    return rounding_generator(SEED, client_id, round_id)


def test_fab_config_lists_every_app_parameter_with_its_default():
    conf = tomli.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert conf["config"] == FlowerAppConfig().to_run_config()
    assert conf["components"] == {"serverapp": "secagg.integrations.flower.app:server_app",
                                  "clientapp": "secagg.integrations.flower.app:client_app"}


@pytest.mark.slow
def test_example_app_in_simulation_engine_with_secaggplus_equals_driver():
    n = 3
    mods = [SecAggMod(rounding_rng=_seeded_rounding)] + client_mods()[1:]
    rep = run_in_simulation({"layer": "secaggplus", "num-rounds": 1, "min-nodes": n, "stage-timeout-s": 120.0}, num_supernodes=n,
                            client=make_client_app(mods))
    r = rep["rounds"][0]
    assert r["included_partitions"] == [0, 1, 2] and r["dropped"] == []
    cfg = FlowerAppConfig.from_run_config(rep["config"])
    fp = FixedPointConfig(clip=cfg.clip, bits=cfg.bits, modulus_bits=cfg.modulus_bits)
    g = initial_parameters(cfg.dataset, cfg.seed)
    partition_of = {int(k): v for k, v in rep["partition_of"].items()}
    cid = {node: i + 1 for i, node in enumerate(sorted(partition_of))}
    inputs, ups = {}, []
    for node, p in partition_of.items():
        delta, w, _ = local_update(g, dataset=cfg.dataset, seed=cfg.seed, partition_id=p, num_partitions=n, round_index=0,
                                   local_epochs=cfg.local_epochs, lr=cfg.lr, batch_size=cfg.batch_size)
        inputs[cid[node]] = encode_update(delta, w, fp, rounding_generator(SEED, cid[node], 0))
        ups.append((delta, w))
    # SecAgg+ with auto parameters for n = 3 is the complete graph with SecAgg's default
    # t = floor(n/2)+1 = 2 (secagg.smpc.plan_session, the rule the FedAvg aggregator uses too)
    ref = run_round(SessionConfig(session_id=b"\x07" * 16, round_id=0, client_ids=(1, 2, 3), threshold=2,
                                  vector_length=g.shape[0] + 1), inputs)
    assert r["metrics"]["threshold"] == 2.0
    assert r["ring_total"] == [int(x) for x in ref.total]
    delta = np.asarray(r["delta"], np.float32)
    np.testing.assert_array_equal(delta, decode_sum(ref.total[:-1], fp, int(ref.total[-1])).astype(np.float32))
    w = np.array([u[1] for u in ups], float)
    exact = (w[:, None] * np.stack([u[0] for u in ups])).sum(0) / w.sum()
    assert np.abs(delta - exact).max() <= cfg.clip / 2**cfg.bits
    # per node, the whole round uploads ~4 bytes per parameter (the masked vector) plus keys and shares
    assert all(b < 4 * (g.shape[0] + 1) + 4000 for b in r["upload_bytes"].values())
    assert 0.0 <= rep["evaluation"]["auc"] <= 1.0
