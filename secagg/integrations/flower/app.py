"""Example Flower app: federated autoencoder intrusion detector with one secagg layer on.

Run it in Flower's simulation engine (Ray)::

    from secagg.integrations.flower.app import run_in_simulation
    result = run_in_simulation({"layer": "secaggplus", "num-rounds": 3}, num_supernodes=4)

or as a real deployment (``examples/flower_app/pyproject.toml`` points at this module)::

    flower-superlink --insecure --disable-runtime-dependency-installation     # HTTP on 127.0.0.1:8000
    flower-supernode --insecure --superlink 127.0.0.1:8000 --port 9094 --node-config 'partition-id=0 num-partitions=4'
    ...                                                              (one --port per SuperNode)
    flwr run examples/flower_app <connection> -c 'layer="secagg" min-nodes=4 result-path="/tmp/r.json"'

(see docs/flower.md; :class:`secagg.integrations.flower.deploy.LocalDeployment` does all of it.)

What it does
------------
* ClientApp (``client_app``): an *unchanged* training function (``@client_app.train()``)
  trains :class:`secagg.detect.AutoencoderDetector` on the node's partition of a real IoT
  data set (benign rows only) and replies with its delta; ``@client_app.query()`` reports
  the node's partition; ``@client_app.evaluate()`` scores the node's local test rows. The
  layers are Flower *mods* (:func:`secagg.integrations.flower.client_mods`) that act only
  on messages of their own protocol, so one ClientApp serves every layer.
* ServerApp (``server_app``): waits for ``min-nodes`` SuperNodes, then runs ``num-rounds``
  FedAvg rounds through the :class:`~secagg.integrations.flower.workflow.RoundWorkflow`
  chosen by the run-config flag ``layer`` (``plaintext``, ``secagg``, ``secaggplus``,
  ``ckks``, ``paillier``) and optionally DP-FedAvg (``dp = true``), then a federated
  evaluation, and writes a JSON report to ``result-path`` (atomically).

Data: every node loads the same data set, splits/scales it with a fixed seed
(:func:`secagg.detect.prepare`; the scaler is fitted on all training rows, a
simplification a real deployment would replace by federated statistics) and keeps the
IID partition ``partition-id`` of ``num-partitions`` (node config; Flower's simulation
engine sets both). Training is deterministic given (seed, partition, round).

Fault injection (tests only): node-config ``fault-marker`` (a path) and ``fault-sleep-s``
make the train function touch the marker and sleep before training, so a test can kill
the SuperNode while it is provably inside a round.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from secagg.errors import ConfigError, DataError, NotEnoughClientsError
from secagg.integrations.flower.records import (
    GLOBAL_PARAMS,
    NUM_EXAMPLES,
    TRAIN_CONFIG,
    TRAIN_METRICS,
    UPDATE,
    replies_by_node,
    vector_from_record,
    vector_to_record,
)

LAYERS = ("plaintext", "secagg", "secaggplus", "ckks", "paillier")
DATASETS = ("nbaiot", "cicids2017", "iot23")


@dataclass(frozen=True)
class FlowerAppConfig:
    """Run configuration of the example app (run-config keys use '-' for '_')."""

    num_rounds: int = 2
    layer: str = "plaintext"
    dp: bool = False
    dp_clip: float = 1.0
    dp_noise_multiplier: float = 1.0
    dp_delta: float = 1e-5
    dp_epsilon: float = 10.0
    dp_sampling_rate: float = 1.0
    # denominator of the DP mean when dp-sampling-rate < 1 (= rate x number of nodes); 0 = unset
    dp_expected_clients: float = 0.0
    dp_ledger_path: str = ""
    dataset: str = "nbaiot"
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    min_nodes: int = 2
    wait_for_nodes_s: float = 60.0
    stage_timeout_s: float = 60.0
    straggler_grace_s: float = 0.0
    # masked secure aggregation (secagg / secaggplus)
    threshold: int = 0
    neighbours: int = 0
    clip: float = 1.0
    bits: int = 16
    modulus_bits: int = 32
    max_weight: int = 256
    # where to write the JSON report ("" = do not write)
    result_path: str = ""
    evaluate: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.num_rounds, int) and self.num_rounds >= 1, f"num-rounds must be an int >= 1, got {self.num_rounds!r}")
        need(self.layer in LAYERS, f"layer must be one of {LAYERS}, got {self.layer!r}")
        need(self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        need(isinstance(self.local_epochs, int) and self.local_epochs >= 1, f"local-epochs must be an int >= 1, got {self.local_epochs!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch-size must be an int >= 1, got {self.batch_size!r}")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr!r}")
        need(isinstance(self.min_nodes, int) and self.min_nodes >= 2, f"min-nodes must be an int >= 2, got {self.min_nodes!r}")
        need(isinstance(self.straggler_grace_s, (int, float)) and math.isfinite(self.straggler_grace_s) and self.straggler_grace_s >= 0,
             f"straggler-grace-s must be a finite number of seconds >= 0 (0 = off), got {self.straggler_grace_s!r}")
        for name in ("wait_for_nodes_s", "stage_timeout_s"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{name.replace('_', '-')} must be a finite number of seconds > 0, got {v!r}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> "FlowerAppConfig":
        """Build from Flower's run config (``num-rounds`` style keys); unknown keys are an error."""
        merged = {**dict(run_config), **dict(overrides or {})}
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in merged.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown run-config key {key!r}; known: {sorted(k.replace('_', '-') for k in known)}")
            default = known[name].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{key} must be true or false, got {value!r}")
            elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------------------
# Client side: the user's training code (unchanged by any layer)
# ----------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_partition(dataset: str, seed: int, partition_id: int, num_partitions: int):  # type: ignore[no-untyped-def]
    """(X_train, y_train, X_test, y_test) of one node: IID partition of a fixed-seed split."""
    from secagg.detect import load_dataset, partition, prepare

    if not (0 <= partition_id < num_partitions):
        raise ConfigError(f"partition-id must be in [0, num-partitions={num_partitions}), got {partition_id}")
    data = prepare(load_dataset(dataset), seed=seed)
    tr = partition(data.y_train, num_partitions, "iid", seed=seed)[partition_id]
    te = partition(data.y_test, num_partitions, "iid", seed=seed)[partition_id]
    return data.X_train[tr], data.y_train[tr], data.X_test[te], data.y_test[te]


def n_features_of(dataset: str, seed: int = 0) -> int:
    return int(load_partition(dataset, seed, 0, 1)[0].shape[1])


def make_model(n_features: int, seed: int):  # type: ignore[no-untyped-def]
    from secagg.detect import make_detector

    return make_detector("ae", n_features, seed=seed)


def initial_parameters(dataset: str, seed: int) -> np.ndarray:
    """The global model every run starts from (deterministic in ``seed``)."""
    from secagg.fl.params import flatten

    return flatten(make_model(n_features_of(dataset, seed), seed).module)


def _partition_of(node_config: Mapping[str, Any]) -> tuple[int, int]:
    try:
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as e:
        raise ConfigError(f"node config needs 'partition-id' and 'num-partitions' (missing {e})") from None
    return pid, n


def local_update(global_vec: np.ndarray, *, dataset: str, seed: int, partition_id: int, num_partitions: int,
                 round_index: int, local_epochs: int, lr: float, batch_size: int) -> tuple[np.ndarray, int, float]:
    """Train the autoencoder locally from ``global_vec``; return (delta, num_examples, loss).

    Deterministic: the detector's seed is derived from (seed, partition, round) and torch runs
    single-threaded, so tests can recompute any node's update in-process.
    """
    import torch

    from secagg.fl.params import flatten, unflatten

    torch.set_num_threads(1)
    X, y, _, _ = load_partition(dataset, seed, partition_id, num_partitions)
    det = make_model(X.shape[1], seed=seed * 1_000_003 + partition_id * 1_009 + round_index)
    unflatten(det.module, global_vec)
    loss = det.train_epochs(X, y, epochs=local_epochs, batch_size=batch_size, lr=lr)
    delta = (flatten(det.module) - global_vec).astype(np.float32)
    return delta, det.n_training_rows(y), float(loss)


def _train(msg: Message, context: Context) -> Message:
    node_cfg = context.node_config
    marker = str(node_cfg.get("fault-marker", ""))
    if marker:
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(str(os.getpid()))
        time.sleep(float(node_cfg.get("fault-sleep-s", 0.0)))
    pid, n = _partition_of(node_cfg)
    cfg = msg.content.config_records[TRAIN_CONFIG]
    global_vec = vector_from_record(msg.content.array_records[GLOBAL_PARAMS], where="global params")
    delta, n_ex, loss = local_update(
        global_vec, dataset=str(cfg["dataset"]), seed=int(cfg["seed"]), partition_id=pid, num_partitions=n,
        round_index=int(cfg["round"]), local_epochs=int(cfg["local-epochs"]), lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
    )
    content = RecordDict({UPDATE: vector_to_record(delta), TRAIN_METRICS: MetricRecord({NUM_EXAMPLES: int(n_ex), "loss": loss})})
    return Message(content, reply_to=msg)


def _query(msg: Message, context: Context) -> Message:
    pid, n = _partition_of(context.node_config)
    return Message(RecordDict({"partition": ConfigRecord({"partition-id": pid, "num-partitions": n})}), reply_to=msg)


def _evaluate(msg: Message, context: Context) -> Message:
    import torch

    from secagg.detect import roc_auc
    from secagg.fl.params import unflatten

    torch.set_num_threads(1)
    pid, n = _partition_of(context.node_config)
    cfg = msg.content.config_records[TRAIN_CONFIG]
    _, _, Xte, yte = load_partition(str(cfg["dataset"]), int(cfg["seed"]), pid, n)
    det = make_model(Xte.shape[1], seed=0)
    unflatten(det.module, vector_from_record(msg.content.array_records[GLOBAL_PARAMS], where="global params"))
    s = det.score(Xte)
    metrics: dict[str, float | int] = {"num-test": int(len(yte)), "benign-mse": float(s[yte == 0].mean()) if (yte == 0).any() else 0.0}
    metrics["auc"] = float(roc_auc(yte, s)) if 0 < yte.sum() < len(yte) else 0.5
    return Message(RecordDict({"eval": MetricRecord(metrics)}), reply_to=msg)


def make_client_app(mods: list | None = None) -> ClientApp:
    """The example ClientApp; ``mods`` default to every secagg layer's client mod (:func:`.layers.client_mods`)."""
    from secagg.integrations.flower.layers import client_mods

    app = ClientApp(mods=client_mods() if mods is None else list(mods))
    app.train()(_train)
    app.query()(_query)
    app.evaluate()(_evaluate)
    return app


client_app = make_client_app()


# ----------------------------------------------------------------------------------------
# Server side
# ----------------------------------------------------------------------------------------


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def wait_for_nodes(grid: Grid, min_nodes: int, timeout_s: float) -> list[int]:
    """Node ids once at least ``min_nodes`` are connected; NotEnoughClientsError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise NotEnoughClientsError(f"only {len(nodes)} SuperNodes connected after {timeout_s}s, min-nodes={min_nodes}")
        time.sleep(0.2)


def _ask(grid: Grid, nodes: list[int], msg_type: str, content: RecordDict, group: str, timeout: float) -> dict[int, Message]:
    msgs = [Message(RecordDict(dict(content)), dst_node_id=n, message_type=msg_type, group_id=group) for n in nodes]
    return dict(replies_by_node(grid.send_and_receive(msgs, timeout=timeout)))


def run_server(grid: Grid, context: Context, cfg: FlowerAppConfig, sink: Callable[[dict], None] | None = None) -> dict:
    """The ServerApp's main loop (see the module docstring); returns the report dict."""
    from secagg.integrations.flower.layers import build_workflow

    workflow = build_workflow(cfg)  # validates the layer configuration before any message is sent
    nodes = wait_for_nodes(grid, cfg.min_nodes, cfg.wait_for_nodes_s)
    t_query = time.perf_counter()
    parts = _ask(grid, nodes, "query", RecordDict({"q": ConfigRecord({"what": "partition"})}), "0", cfg.stage_timeout_s)
    partition_of = {nid: int(m.content.config_records["partition"]["partition-id"]) for nid, m in parts.items()}
    nodes = sorted(partition_of)
    query_s = time.perf_counter() - t_query
    global_vec = initial_parameters(cfg.dataset, cfg.seed)
    report: dict[str, Any] = {"config": cfg.to_run_config(), "partition_of": {str(k): v for k, v in partition_of.items()},
                              "initial_params_len": int(global_vec.shape[0]), "rounds": [], "query_s": query_s}
    for r in range(cfg.num_rounds):
        train_cfg = ConfigRecord({"round": r, "dataset": cfg.dataset, "seed": cfg.seed, "local-epochs": cfg.local_epochs,
                                  "lr": float(cfg.lr), "batch-size": cfg.batch_size})
        content = RecordDict({GLOBAL_PARAMS: vector_to_record(global_vec), TRAIN_CONFIG: train_cfg})
        res = workflow(grid, nodes, content, r)
        if res.delta.shape != global_vec.shape or not np.all(np.isfinite(res.delta)):
            raise DataError(f"round {r}: aggregate has shape {res.delta.shape} / non-finite values")
        global_vec = (global_vec + res.delta).astype(np.float32)
        report["rounds"].append({
            "round": r, "delta": res.delta.tolist(), "included": list(res.included), "dropped": list(res.dropped),
            "included_partitions": sorted(partition_of[n] for n in res.included if n in partition_of),
            "upload_bytes": {str(k): v for k, v in res.upload_bytes.items()},
            "download_bytes": {str(k): v for k, v in res.download_bytes.items()},
            "metrics": res.metrics, "errors": res.errors,
            "ring_total": None if res.ring_total is None else [int(x) for x in res.ring_total],
        })
        live = [n for n in nodes if n not in res.dropped]
        if len(live) >= cfg.min_nodes:
            nodes = live
    if cfg.evaluate:
        eval_cfg = ConfigRecord({"dataset": cfg.dataset, "seed": cfg.seed})
        ev = _ask(grid, nodes, "evaluate", RecordDict({GLOBAL_PARAMS: vector_to_record(global_vec), TRAIN_CONFIG: eval_cfg}),
                  str(cfg.num_rounds + 1), cfg.stage_timeout_s)
        tot = sum(int(m.content.metric_records["eval"]["num-test"]) for m in ev.values())
        if tot:
            report["evaluation"] = {
                k: sum(float(m.content.metric_records["eval"][k]) * int(m.content.metric_records["eval"]["num-test"]) for m in ev.values()) / tot
                for k in ("auc", "benign-mse")
            }
    report["final_params"] = global_vec.tolist()
    if hasattr(workflow, "report"):
        report["layer_report"] = workflow.report()
    if cfg.result_path:
        _write_json_atomic(cfg.result_path, report)
    if sink is not None:
        sink(report)
    return report


def make_server_app(overrides: Mapping[str, Any] | None = None, sink: Callable[[dict], None] | None = None) -> ServerApp:
    """A ServerApp whose config is the run config updated with ``overrides``; ``sink`` gets the report."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = FlowerAppConfig.from_run_config(context.run_config, overrides)
        run_server(grid, context, cfg, sink)

    return app


server_app = make_server_app()


def run_in_simulation(overrides: Mapping[str, Any] | None = None, num_supernodes: int = 3, *, num_cpus: int = 2,
                      client: ClientApp | None = None) -> dict:
    """Run the example app in Flower's simulation engine (Ray) and return the server's report.

    ``client`` replaces the example ClientApp (e.g. one built by :func:`make_client_app` with
    other mods). The configuration is validated here, before Ray starts.
    """
    from flwr.simulation import run_simulation

    cfg = FlowerAppConfig.from_run_config({}, overrides)
    from secagg.integrations.flower.layers import build_workflow

    build_workflow(cfg)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only; silences Ray's FutureWarning
    out: list[dict] = []
    run_simulation(
        server_app=make_server_app(cfg.to_run_config(), out.append),
        client_app=client if client is not None else client_app,
        num_supernodes=num_supernodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False, "logging_level": "error", "log_to_driver": False},
        },
    )
    if not out:
        raise NotEnoughClientsError("the simulated ServerApp did not finish (see the Flower log above)")
    return out[0]
