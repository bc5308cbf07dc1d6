"""secagg.integrations.flower: every layer over Flower messages, in process (LoopbackGrid).

The LoopbackGrid calls the real Flower ClientApp with mods, serializes every message and
the node Context through Flower's protobuf serde, so these tests exercise the same code
paths as a deployment, minus the processes (tests/test_flower_deployment.py has those).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg.encoding import FixedPointConfig, decode_sum
from secagg.errors import ConfigError, NotEnoughClientsError, ProtocolError
from secagg.fl.aggregator import ClientUpdate, WeightedMeanAggregator
from secagg.integrations.flower.app import FlowerAppConfig, client_app, initial_parameters, local_update, run_server
from secagg.integrations.flower.he import HEWorkflow, provision_he_keys
from secagg.integrations.flower.layers import build_workflow, client_mods
from secagg.integrations.flower.loopback import LoopbackGrid
from secagg.integrations.flower.records import GLOBAL_PARAMS, NUM_EXAMPLES, TRAIN_CONFIG, TRAIN_METRICS, UPDATE, vector_to_record
from secagg.integrations.flower.smpc import SMPC_RECORD, STATE_RECORD, SecAggWorkflow, encode_update, rounding_generator
from secagg.integrations.flower.workflow import PlaintextWorkflow
from secagg.smpc import ClientAbortError, ClientStateError, DropoutSchedule, SecAggClient, SecAggServer, SessionConfig, Stage, run_round
from secagg.smpc import messages as M

L = 64
SEED = 7


def toy_update(partition: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(1000 + partition)
    return rng.normal(0.0, 0.05, L).astype(np.float32), 10 + 7 * partition


def toy_app(extra_mods=None) -> ClientApp:
    """A ClientApp whose unchanged train function returns a fixed vector per partition."""
    app = ClientApp(mods=client_mods() + list(extra_mods or []))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        delta, n = toy_update(int(context.node_config["partition-id"]))
        return Message(RecordDict({UPDATE: vector_to_record(delta), TRAIN_METRICS: MetricRecord({NUM_EXAMPLES: n, "loss": 0.0})}),
                       reply_to=msg)

    return app


def train_content(round_index: int = 0) -> RecordDict:
    return RecordDict({GLOBAL_PARAMS: vector_to_record(np.zeros(L, np.float32)),
                       TRAIN_CONFIG: ConfigRecord({"round": round_index})})


def grid_for(n: int, *, drop=None, app=None, extra=None) -> LoopbackGrid:
    cfgs = [{"partition-id": i, "num-partitions": n, "rounding-seed": SEED, **(extra or {})} for i in range(n)]
    return LoopbackGrid(app or toy_app(), cfgs, drop=drop)


def drop_at(node_ids, stage: str):
    def drop(nid: int, msg: Message) -> bool:
        rec = msg.content.config_records.get(SMPC_RECORD)
        return nid in node_ids and rec is not None and rec["stage"] == stage
    return drop


def driver_reference(grid: LoopbackGrid, nodes_in_round: list[int], dropped_at: dict[str, set[int]], *, t: int,
                     fp: FixedPointConfig, degree=None, round_index=0):
    """Our in-process driver (secagg.smpc.run_round) on the same encoded inputs and dropouts."""
    cid = {n: i + 1 for i, n in enumerate(sorted(nodes_in_round))}
    inputs = {}
    for n in nodes_in_round:
        delta, w = toy_update(int(grid.contexts[n].node_config["partition-id"]))
        inputs[cid[n]] = encode_update(delta, w, fp, rounding_generator(SEED, cid[n], round_index))
    cfg = SessionConfig(session_id=b"\x01" * 16, round_id=round_index, client_ids=tuple(sorted(cid.values())), threshold=t,
                        vector_length=L + 1, modulus_bits=fp.modulus_bits, degree=degree)
    sched = DropoutSchedule(**{ph: frozenset(cid[n] for n in s) for ph, s in dropped_at.items()})
    rep = run_round(cfg, inputs, sched)
    return rep, cid


# ---------------------------------------------------------------------------------------- plaintext


def test_plaintext_workflow_equals_weighted_mean_aggregator():
    grid = grid_for(4)
    res = PlaintextWorkflow(stage_timeout_s=1.0)(grid, list(grid.contexts), train_content(), 0)
    ups = [ClientUpdate(n, *toy_update(int(grid.contexts[n].node_config["partition-id"]))) for n in grid.contexts]
    ref = WeightedMeanAggregator().aggregate(ups, round_index=0)
    np.testing.assert_allclose(res.delta, ref.delta, rtol=0, atol=1e-7)
    assert res.included == tuple(sorted(grid.contexts)) and res.dropped == ()
    assert grid.errors == []  # every layer's mod is installed and let the plain train message through
    # bytes: each node uploads its float32 vector (+ npy header and metrics)
    assert all(v >= 4 * L for v in res.upload_bytes.values())


# ---------------------------------------------------------------------------------------- SecAgg / SecAgg+


@pytest.mark.parametrize("plus,n,degree,t", [(False, 5, 0, 3), (True, 7, 4, 3)])
def test_secagg_over_flower_equals_in_process_driver_with_dropout(plus, n, degree, t):
    nodes = list(range(1001, 1001 + n))
    victim = nodes[2]
    grid = grid_for(n, drop=drop_at({victim}, "MASKED_INPUT"))
    wf = SecAggWorkflow(plus=plus, threshold=t, degree=degree, stage_timeout_s=0.5)
    res = wf(grid, nodes, train_content(), 0)
    assert res.dropped == (victim,) and victim not in res.included
    fp = wf.fp
    rep, cid = driver_reference(grid, nodes, {"masked_input": {victim}}, t=t, fp=fp, degree=degree or None)
    # the ring sums are identical, element for element, and so are the decoded means
    np.testing.assert_array_equal(res.ring_total, rep.total)
    assert set(rep.survivors) == {cid[v] for v in res.included}
    ref_mean = decode_sum(rep.total[:-1], fp, int(rep.total[-1])).astype(np.float32)
    np.testing.assert_array_equal(res.delta, ref_mean)
    # and both are within one quantization step of the exact weighted mean of the survivors
    ups = [toy_update(int(grid.contexts[v].node_config["partition-id"])) for v in res.included]
    w = np.array([u[1] for u in ups], float)
    exact = (w[:, None] * np.stack([u[0] for u in ups])).sum(0) / w.sum()
    assert np.abs(res.delta - exact).max() <= fp.clip / 2**fp.bits
    assert res.metrics["num_examples"] == w.sum()


def test_secagg_recovers_dropouts_in_every_stage():
    nodes = list(range(1001, 1008))
    drops = {1002: "SHARE_KEYS", 1004: "MASKED_INPUT", 1006: "UNMASKING"}

    def drop(nid, msg):
        rec = msg.content.config_records.get(SMPC_RECORD)
        return rec is not None and drops.get(nid) == rec["stage"]

    grid = grid_for(7, drop=drop)
    wf = SecAggWorkflow(threshold=4, stage_timeout_s=0.5)
    res = wf(grid, nodes, train_content(), 0)
    # a node lost during unmasking already sent its masked input: it stays in the sum
    assert res.included == (1001, 1003, 1005, 1006, 1007)
    rep, _ = driver_reference(grid, nodes, {"share_keys": {1002}, "masked_input": {1004}, "unmasking": {1006}}, t=4, fp=wf.fp)
    np.testing.assert_array_equal(res.ring_total, rep.total)


def test_secagg_below_threshold_aborts_without_result():
    nodes = list(range(1001, 1006))
    grid = grid_for(5, drop=drop_at({1001, 1002, 1003}, "MASKED_INPUT"))
    with pytest.raises(NotEnoughClientsError):
        SecAggWorkflow(threshold=3, stage_timeout_s=0.3)(grid, nodes, train_content(), 0)


def test_secagg_round_ids_are_never_reused():
    grid = grid_for(3)
    wf = SecAggWorkflow(stage_timeout_s=0.5)
    wf(grid, list(grid.contexts), train_content(0), 0)
    with pytest.raises(ProtocolError, match="already ran"):
        wf(grid, list(grid.contexts), train_content(0), 0)


def _run_until_unmasking(grid: LoopbackGrid, cfg: SessionConfig, max_weight: int = 256):
    """Drive stages 0-2 by hand (an honest server so far); return the server."""
    nodes = sorted(grid.contexts)
    node_of = {i + 1: n for i, n in enumerate(nodes)}
    setup = json.dumps({"session": {"session_id": cfg.session_id.hex(), "round_id": cfg.round_id, "client_ids": list(cfg.client_ids),
                                    "threshold": cfg.threshold, "vector_length": cfg.vector_length, "modulus_bits": cfg.modulus_bits,
                                    "mode": "honest", "degree": None},
                        "max_weight": max_weight, "fixed_point": {"clip": 1.0, "bits": 16, "modulus_bits": 32}}).encode()
    server = SecAggServer(cfg)
    outbox = {c: b"" for c in node_of}
    while server.stage != Stage.UNMASKING:
        msgs = []
        for c, data in outbox.items():
            rec = {"stage": server.stage.name, "msg": data} if server.stage != Stage.ADVERTISE_KEYS else \
                {"stage": server.stage.name, "setup": setup, "client-id": c}
            rd = train_content() if server.stage == Stage.MASKED_INPUT else RecordDict()
            rd[SMPC_RECORD] = ConfigRecord(rec)
            msgs.append(Message(rd, dst_node_id=node_of[c], message_type=MessageType.TRAIN, group_id="1"))
        for r in grid.send_and_receive(msgs):
            if not r.has_error():
                server.receive(bytes(r.content.config_records[SMPC_RECORD]["msg"]))
        outbox = server.close_stage()
    return server, node_of


def test_client_refuses_unmask_request_naming_a_node_survivor_and_dropped():
    """Flower's secaggplus_mod._unmask answers such a request; our mod refuses and aborts."""
    grid = grid_for(4)
    cfg = SessionConfig(session_id=b"\x02" * 16, round_id=0, client_ids=(1, 2, 3, 4), threshold=3, vector_length=L + 1)
    server, node_of = _run_until_unmasking(grid, cfg)
    forged = M.encode(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(survivors=(1, 2, 3, 4), dropped=(4,)),
                      session_id=cfg.session_id, round_id=0, sender=M.SERVER_ID, receiver=1)
    rd = RecordDict({SMPC_RECORD: ConfigRecord({"stage": "UNMASKING", "msg": forged})})
    (reply,) = grid.send_and_receive([Message(rd, dst_node_id=node_of[1], message_type=MessageType.TRAIN, group_id="1")])
    data = bytes(reply.content.config_records[SMPC_RECORD]["msg"])
    assert M.decode(data).header.kind == M.Kind.ABORT
    assert "both survivor and dropped" in M.decode(data).payload.reason
    assert STATE_RECORD not in grid.contexts[node_of[1]].state.config_records  # the node's round state is gone
    with pytest.raises(ClientAbortError):
        server.receive(data)


def test_node_refuses_to_mask_when_the_servers_parameters_could_overflow():
    """A server announcing max_weight 2^20 with 16-bit values in a 2^32 ring: the sum could wrap."""
    grid = grid_for(3)
    cfg = SessionConfig(session_id=b"\x06" * 16, round_id=0, client_ids=(1, 2, 3), threshold=2, vector_length=L + 1)
    with pytest.raises(NotEnoughClientsError):  # nobody sends a masked input
        _run_until_unmasking(grid, cfg, max_weight=2**20)
    assert len(grid.errors) == 3 and all("bit budget" in e for e in grid.errors)


def test_client_state_blob_round_trips_through_every_stage():
    """What the mod does: every message is handled by a client rebuilt from the previous blob."""
    cfg = SessionConfig(session_id=b"\x03" * 16, round_id=5, client_ids=(1, 2, 3), threshold=2, vector_length=4)
    clients = {u: SecAggClient(cfg, u) for u in cfg.client_ids}
    server = SecAggServer(cfg)
    for u, c in list(clients.items()):
        server.receive(c.start())
        clients[u] = SecAggClient.from_state(cfg, c.export_state(), client_id=u)
    out = server.close_stage()
    inputs = {u: np.array([u, 2 * u, 3, 2**32 - u], dtype=np.uint32) for u in cfg.client_ids}
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        for u, msg in out.items():
            c = SecAggClient.from_state(cfg, clients[u].export_state(), client_id=u)  # a fresh process per message
            if server.stage == Stage.MASKED_INPUT:
                c.set_input(inputs[u])
            server.receive(c.handle(msg))
            clients[u] = c
        out = server.close_stage()
    expected = sum(v.astype(np.uint64) for v in inputs.values()) % 2**32
    np.testing.assert_array_equal(server.result().total, expected.astype(np.uint32))
    blob = clients[1].export_state()
    with pytest.raises(ClientStateError, match="expected client 2"):
        SecAggClient.from_state(cfg, blob, client_id=2)
    with pytest.raises(ClientStateError, match="truncated"):
        SecAggClient.from_state(cfg, blob[:-1])
    with pytest.raises(ProtocolError):
        SecAggClient.from_state(cfg, b'{"format": "secagg.smpc.client-state/v1", "config": {}}')


def test_mod_rejects_a_tampered_saved_state_and_forgets_the_round():
    """A corrupted blob in a node's context.state: that node errors out instead of resuming; an intact node answers."""
    grid = grid_for(4)
    cfg = SessionConfig(session_id=b"\x07" * 16, round_id=0, client_ids=(1, 2, 3, 4), threshold=3, vector_length=L + 1)
    server, node_of = _run_until_unmasking(grid, cfg)
    saved = grid.contexts[node_of[1]].state.config_records[STATE_RECORD]
    blob = bytearray(bytes(saved["client"]))
    blob[100] ^= 0x10
    saved["client"] = bytes(blob)
    msgs = []
    for c in (1, 2):
        req = M.encode(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(survivors=(1, 2, 3, 4), dropped=()),
                       session_id=cfg.session_id, round_id=0, sender=M.SERVER_ID, receiver=c)
        rd = RecordDict({SMPC_RECORD: ConfigRecord({"stage": "UNMASKING", "msg": req})})
        msgs.append(Message(rd, dst_node_id=node_of[c], message_type=MessageType.TRAIN, group_id="1"))
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs)}
    assert replies[node_of[1]].has_error() and "digest mismatch" in replies[node_of[1]].error.reason
    assert STATE_RECORD not in grid.contexts[node_of[1]].state.config_records
    ok = M.decode(bytes(replies[node_of[2]].content.config_records[SMPC_RECORD]["msg"]))
    assert ok.header.kind == M.Kind.UNMASK_RESPONSE and len(ok.payload.entries) == 4


def test_example_app_secagg_aggregate_equals_driver_and_recovers_a_dropped_node():
    """The real example app (autoencoder on N-BaIoT) with our SecAgg, one node lost mid-round."""
    n = 4
    grid = LoopbackGrid(client_app, [{"partition-id": i, "num-partitions": n, "rounding-seed": SEED} for i in range(n)],
                        drop=drop_at({1004}, "MASKED_INPUT"))
    cfg = FlowerAppConfig(layer="secagg", num_rounds=1, threshold=3, stage_timeout_s=1.0, evaluate=False)
    rep = run_server(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}), cfg)
    r = rep["rounds"][0]
    assert r["dropped"] == [1004] and r["included_partitions"] == [0, 1, 2]
    g = initial_parameters("nbaiot", 0)
    fp = FixedPointConfig(clip=cfg.clip, bits=cfg.bits, modulus_bits=cfg.modulus_bits)
    nodes = sorted(grid.contexts)
    cid = {node: i + 1 for i, node in enumerate(nodes)}
    inputs = {}
    for node in nodes:
        p = int(grid.contexts[node].node_config["partition-id"])
        delta, w, _ = local_update(g, dataset="nbaiot", seed=0, partition_id=p, num_partitions=n, round_index=0,
                                   local_epochs=1, lr=cfg.lr, batch_size=cfg.batch_size)
        inputs[cid[node]] = encode_update(delta, w, fp, rounding_generator(SEED, cid[node], 0))
    scfg = SessionConfig(session_id=b"\x04" * 16, round_id=0, client_ids=(1, 2, 3, 4), threshold=3, vector_length=g.shape[0] + 1)
    ref = run_round(scfg, inputs, DropoutSchedule(masked_input=frozenset({cid[1004]})))
    assert r["ring_total"] == [int(x) for x in ref.total]
    np.testing.assert_array_equal(np.asarray(r["delta"], np.float32),
                                  decode_sum(ref.total[:-1], fp, int(ref.total[-1])).astype(np.float32))


# ---------------------------------------------------------------------------------------- HE


@pytest.mark.parametrize("scheme", ["ckks", "paillier"])
def test_he_layer_mean_within_stated_bound_with_a_dropout(scheme, tmp_path):
    provision_he_keys(scheme, tmp_path / "keys")

    def drop(nid, msg):
        rec = msg.content.config_records.get("secagg.he")
        return nid == 1002 and rec is not None and rec["stage"] == "encrypt"

    grid = grid_for(4, drop=drop, extra={"he-key-dir": str(tmp_path / "keys")})
    wf = HEWorkflow(scheme, value_bound=1.0, stage_timeout_s=0.5)
    res = wf(grid, list(grid.contexts), train_content(), 0)
    assert res.dropped == (1002,)
    ups = [toy_update(int(grid.contexts[v].node_config["partition-id"])) for v in res.included]
    w = np.array([u[1] for u in ups], float)
    exact = (w[:, None] * np.stack([u[0] for u in ups])).sum(0) / w.sum()
    err = np.abs(res.delta - exact).max()
    assert err <= res.metrics["he_error_bound"] + 1e-7, (err, res.metrics)
    # the server only ever held the public bundle
    if scheme == "ckks":
        assert not wf._server.context.is_private()
    else:
        assert not hasattr(wf._server, "_sk")


def test_he_refuses_nodes_provisioned_with_different_keys(tmp_path):
    provision_he_keys("ckks", tmp_path / "a")
    provision_he_keys("ckks", tmp_path / "b")
    cfgs = [{"partition-id": i, "num-partitions": 3, "he-key-dir": str(tmp_path / ("a" if i else "b"))} for i in range(3)]
    grid = LoopbackGrid(toy_app(), cfgs)
    with pytest.raises(ConfigError, match="different keys"):
        HEWorkflow("ckks", stage_timeout_s=0.5)(grid, list(grid.contexts), train_content(), 0)


def test_he_node_without_keys_fails_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SECAGG_HE_KEY_DIR", raising=False)
    grid = grid_for(2)
    with pytest.raises(NotEnoughClientsError):
        HEWorkflow("ckks", stage_timeout_s=0.5)(grid, list(grid.contexts), train_content(), 0)
    assert any("he-key-dir" in e for e in grid.errors)


# ---------------------------------------------------------------------------------------- misconfiguration


def test_app_config_rejects_bad_values_with_the_parameter_name():
    with pytest.raises(ConfigError, match="layer must be one of"):
        FlowerAppConfig.from_run_config({"layer": "rot13"})
    with pytest.raises(ConfigError, match="unknown run-config key 'nmu-rounds'"):
        FlowerAppConfig.from_run_config({"nmu-rounds": 3})
    with pytest.raises(ConfigError, match="dp must be true or false"):
        FlowerAppConfig.from_run_config({"dp": 1})
    with pytest.raises(ConfigError, match="min-nodes"):
        FlowerAppConfig(min_nodes=1)
    with pytest.raises(ConfigError, match="stage-timeout-s"):
        FlowerAppConfig(stage_timeout_s=float("inf"))
    assert FlowerAppConfig.from_run_config({"num-rounds": 3, "lr": 1}).lr == 1.0


def test_secagg_workflow_validates_bit_budget_and_graph_up_front():
    with pytest.raises(ConfigError, match="bit budget"):
        SecAggWorkflow(bits=20, max_weight=1024, max_clients=100)
    with pytest.raises(ConfigError, match="SecAgg\\+ parameter"):
        SecAggWorkflow(plus=False, degree=2)
    with pytest.raises(ConfigError, match="even"):
        SecAggWorkflow(plus=True, degree=3)
    with pytest.raises(ConfigError, match="straggler_grace_s"):
        SecAggWorkflow(straggler_grace_s=-1.0)
    with pytest.raises(ConfigError, match="bit budget"):
        build_workflow(FlowerAppConfig(layer="secagg", bits=24))


def test_threshold_that_does_not_fit_the_round_fails_before_any_message():
    grid = grid_for(3)
    sent = []
    push = grid.push_messages
    grid.push_messages = lambda msgs: (sent.extend(msgs), push(msgs))[1]  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="threshold"):
        SecAggWorkflow(threshold=5)(grid, list(grid.contexts), train_content(), 0)
    assert sent == []
    with pytest.raises(ConfigError, match="max_clients"):
        SecAggWorkflow(max_clients=2)(grid, list(grid.contexts), train_content(), 0)



# ---------------------------------------------------------------------------------------- DP-FedAvg + ledger


def _dp(inner, tmp_path, *, z: float, c: float, eps: float = 50.0):
    from secagg.integrations.flower.dp import DPFedAvgWorkflow, open_ledger

    return DPFedAvgWorkflow(inner, clip_norm=c, noise_multiplier=z, ledger=open_ledger(str(tmp_path / "ledger.jsonl"), eps, 1e-5))


@pytest.mark.parametrize("inner", ["secagg", "plaintext"])
def test_dp_fedavg_clips_on_the_client_adds_calibrated_noise_and_ledgers_the_round(inner, tmp_path):
    from secagg.dp import read_ledger

    c, z = 0.1, 1.0
    grid = grid_for(4)
    base = SecAggWorkflow(threshold=3, stage_timeout_s=0.5) if inner == "secagg" else PlaintextWorkflow(stage_timeout_s=0.5)
    wf = _dp(base, tmp_path, z=z, c=c)
    res = wf(grid, list(grid.contexts), train_content(), 0)
    ups = [toy_update(int(grid.contexts[v].node_config["partition-id"]))[0].astype(np.float64) for v in res.included]
    assert all(np.linalg.norm(u) > c for u in ups)  # clipping is active for every node
    clipped_mean = np.mean([u * (c / np.linalg.norm(u)) for u in ups], axis=0)
    noise = res.delta - clipped_mean
    expected_std = z * c / len(ups)
    assert res.metrics["dp_noise_std_on_mean"] == pytest.approx(expected_std)
    assert 0.6 * expected_std < noise.std() < 1.4 * expected_std  # L=64 draws; 4+ sigma margins
    led = read_ledger(tmp_path / "ledger.jsonl")
    assert led.ok and len(led.rounds) == 1
    assert led.rounds[0]["participants"] == sorted(res.included) and led.rounds[0]["clip_norm"] == c
    assert led.rounds[0]["noise_multiplier"] == z and res.metrics["dp_epsilon_spent"] == led.rounds[0]["epsilon_after"] > 0


def test_dp_budget_guard_stops_before_any_message(tmp_path):
    from secagg.dp import PrivacyBudgetExceeded

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(PrivacyBudgetExceeded):  # not even one round fits: refused at construction
        _dp(PlaintextWorkflow(), tmp_path / "a", z=0.5, c=0.1, eps=0.05)
    grid = grid_for(3)
    wf = _dp(PlaintextWorkflow(stage_timeout_s=0.5), tmp_path / "b", z=3.0, c=0.1, eps=4.0)
    spent = []
    r = 0
    with pytest.raises(PrivacyBudgetExceeded):
        while r < 50:
            wf(grid, list(grid.contexts), train_content(r), r)
            spent.append(wf.ledger.spent_epsilon())
            r += 1
    assert 2 <= len(spent) < 50 and spent[-1] <= 4.0
    pushed = []
    push = grid.push_messages
    grid.push_messages = lambda msgs: (pushed.extend(msgs), push(msgs))[1]  # type: ignore[method-assign]
    with pytest.raises(PrivacyBudgetExceeded):
        wf(grid, list(grid.contexts), train_content(r + 1), r + 1)
    assert pushed == []


def test_dp_requires_a_ledger_and_valid_parameters(tmp_path):
    with pytest.raises(ConfigError, match="dp-ledger-path"):
        build_workflow(FlowerAppConfig(dp=True))
    with pytest.raises(ConfigError, match="noise_multiplier"):
        build_workflow(FlowerAppConfig(dp=True, dp_noise_multiplier=0.0, dp_ledger_path=str(tmp_path / "l1")))
    with pytest.raises(ConfigError, match="clip_norm"):
        build_workflow(FlowerAppConfig(dp=True, dp_clip=-1.0, dp_ledger_path=str(tmp_path / "l2")))
    build_workflow(FlowerAppConfig(dp=True, dp_ledger_path=str(tmp_path / "l3")))
    with pytest.raises(ConfigError, match="budget"):
        build_workflow(FlowerAppConfig(dp=True, dp_epsilon=3.0, dp_ledger_path=str(tmp_path / "l3")))


@pytest.mark.parametrize("n", [2, 3])
def test_secaggplus_with_automatic_parameters_on_very_few_nodes(n):
    """Two or three nodes admit no sparse graph: SecAgg+ runs on the complete graph with a
    valid automatic threshold (t <= n) instead of failing in SessionConfig."""
    wf = SecAggWorkflow(plus=True, stage_timeout_s=0.5)
    cfg = wf.session_config(n, 0, 10)
    assert cfg.degree is None and n // 2 < cfg.threshold <= n
    nodes = list(range(1001, 1001 + n))
    res = wf(grid_for(n), nodes, train_content(), 0)
    assert res.included == tuple(nodes)


# ------------------------------------------------------------- reviewer findings 4-6 (regressions)


class _SpoofAbortMod:
    """Outermost mod on one partition: at SHARE_KEYS it lets the node answer, then replaces the
    reply by an ABORT that claims to come from client 1 (another node)."""

    def __init__(self, partition: int) -> None:
        self.partition = partition

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        rec = msg.content.config_records.get(SMPC_RECORD)
        if int(context.node_config["partition-id"]) != self.partition or rec is None or rec["stage"] != "SHARE_KEYS":
            return reply
        h = M.decode(bytes(rec["msg"])).header
        spoof = M.encode(M.Kind.ABORT, M.Abort("spoofed"), session_id=h.session_id, round_id=h.round_id,
                         sender=1, receiver=M.SERVER_ID, stage=Stage.SHARE_KEYS)
        return Message(RecordDict({SMPC_RECORD: ConfigRecord({"msg": spoof})}), reply_to=msg)


def test_server_rejects_a_reply_whose_sender_is_another_nodes_client_id():
    """A node must not speak for another: a spoofed ABORT in client 1's name does not abort the
    round; the spoofing node is treated as dropped at SHARE_KEYS and client 1 stays in the sum."""
    app = ClientApp(mods=[_SpoofAbortMod(partition=2)] + client_mods())

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        delta, n = toy_update(int(context.node_config["partition-id"]))
        return Message(RecordDict({UPDATE: vector_to_record(delta), TRAIN_METRICS: MetricRecord({NUM_EXAMPLES: n, "loss": 0.0})}),
                       reply_to=msg)

    grid = grid_for(5, app=app)
    nodes = sorted(grid.contexts)
    spoofer = next(nd for nd in nodes if int(grid.contexts[nd].node_config["partition-id"]) == 2)
    res = SecAggWorkflow(threshold=3, stage_timeout_s=0.5)(grid, nodes, train_content(), 0)
    assert spoofer in res.dropped and nodes[0] in res.included and len(res.included) == 4
    assert any("claims sender client 1" in e for e in res.errors), res.errors


def test_mod_answers_not_enough_clients_with_an_abort_and_forgets_the_round():
    """client.handle raises NotEnoughClientsError (not a ProtocolError) for a key list with fewer
    than t entries: the mod still replies ABORT and deletes the node's round state."""
    grid = grid_for(4)
    cfg = SessionConfig(session_id=b"\x08" * 16, round_id=0, client_ids=(1, 2, 3, 4), threshold=3, vector_length=L + 1)
    nodes = sorted(grid.contexts)
    setup = json.dumps({"session": {"session_id": cfg.session_id.hex(), "round_id": 0, "client_ids": list(cfg.client_ids),
                                    "threshold": 3, "vector_length": cfg.vector_length, "modulus_bits": 32,
                                    "mode": "honest", "degree": None},
                        "max_weight": 256, "fixed_point": {"clip": 1.0, "bits": 16, "modulus_bits": 32}}).encode()

    def send(rec):
        rd = RecordDict({SMPC_RECORD: ConfigRecord(rec)})
        (reply,) = grid.send_and_receive([Message(rd, dst_node_id=nodes[0], message_type=MessageType.TRAIN, group_id="1")])
        return reply

    adv = M.decode(bytes(send({"stage": "ADVERTISE_KEYS", "setup": setup, "client-id": 1}).content.config_records[SMPC_RECORD]["msg"]))
    assert STATE_RECORD in grid.contexts[nodes[0]].state.config_records
    only_me = M.encode(M.Kind.KEY_LIST, M.KeyList((M.KeyEntry(1, adv.payload.c_pk, adv.payload.s_pk, b""),)),
                       session_id=cfg.session_id, round_id=0, sender=M.SERVER_ID, receiver=1)
    reply = send({"stage": "SHARE_KEYS", "msg": only_me})
    assert not reply.has_error()
    data = M.decode(bytes(reply.content.config_records[SMPC_RECORD]["msg"]))
    assert data.header.kind == M.Kind.ABORT and "NotEnoughClientsError" in data.payload.reason
    assert STATE_RECORD not in grid.contexts[nodes[0]].state.config_records


@pytest.mark.parametrize("n", [5, 10])
def test_flower_and_fedavg_aggregator_choose_the_same_degree_and_threshold(n):
    """One rule (secagg.smpc.plan_session): SecAgg+ falling back to the complete graph uses SecAgg's
    default floor(n/2)+1, not derive_params' t = n (which would abort on any dropout)."""
    from secagg.fl.secure_aggregators import SecAggAggregator, SecAggOptions

    wf = SecAggWorkflow(plus=True, dropout_rate=0.1, corruption_rate=0.05)
    cfg = wf.session_config(n, 0, 10)
    agg = SecAggAggregator(SecAggOptions(secagg_plus=True, dropout_rate_design=0.1, corruption_rate=0.05))
    assert (cfg.degree, cfg.threshold) == agg._graph(n) == (None, n // 2 + 1)


def test_dp_workflow_with_sampling_needs_a_fixed_denominator(tmp_path):
    """Under Poisson sampling (q < 1) the number of participants is private: the mean must be
    divided by q * N, not by the realized count."""
    from secagg.integrations.flower.dp import DPFedAvgWorkflow, open_ledger

    ledger = open_ledger(str(tmp_path / "l.jsonl"), 10.0, 1e-5)
    with pytest.raises(ConfigError, match="expected_clients"):
        DPFedAvgWorkflow(PlaintextWorkflow(stage_timeout_s=0.5), clip_norm=1.0, noise_multiplier=1.0, ledger=ledger,
                         sampling_rate=0.5)
    wf = DPFedAvgWorkflow(PlaintextWorkflow(stage_timeout_s=0.5), clip_norm=1.0, noise_multiplier=1.0, ledger=ledger,
                          sampling_rate=0.5, expected_clients=2.5)
    assert wf.expected_clients == 2.5
