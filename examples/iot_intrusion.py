"""IoT intrusion detection across devices, with the protection layer chosen by a flag.

Clients are the natural partition of the real data (IoT-23: one client per group of
responder hosts; CICIDS2017: by file and TCP-stack fingerprint, see docs/detect.md), each
training the shared detector; the server aggregates with the layer you pick:

    python examples/iot_intrusion.py --dataset iot23 --layer secagg+      # the default
    python examples/iot_intrusion.py --dataset cicids2017 --model mlp --layer dp --epsilon 8

Layers: none (plaintext FedAvg), secagg, secagg+ (masked sums, Bonawitz/Bell et al.),
ckks (TenSEAL), paillier (packed phe; slow: minutes per round), dp (central DP-FedAvg with a
privacy ledger and budget guard), ddp (distributed discrete Gaussian inside SecAgg).
With dp/ddp the noise is calibrated to --epsilon at --delta for the planned rounds, the
ledger is written to --out/privacy_ledger.jsonl, and `secagg privacy audit` re-checks it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from secagg.cli import format_table
from secagg.dp import PrivacyBudget, PrivacyLedger
from secagg.dp.calibrate import calibrate_noise_multiplier
from secagg.dp.discrete import DistributedDPConfig
from secagg.experiment import ExperimentConfig, detector_factory, prepare_experiment
from secagg.reporting import write_json
from secagg.fl.core import run_federated
from secagg.fl.dp_aggregators import CentralDPAggregator, DistributedDPAggregator
from secagg.fl.registry import make_aggregator


def build_aggregator(args, n_clients: int, out: Path):
    if args.layer in ("dp", "ddp"):
        ledger_path = out / "privacy_ledger.jsonl"
        ledger_path.unlink(missing_ok=True)  # a fresh run; keep old ledgers with another --out
        ledger = PrivacyLedger.create(ledger_path, PrivacyBudget(args.epsilon, args.delta))
        z = calibrate_noise_multiplier(args.epsilon, args.delta, rounds=args.rounds, sampling_rate=1.0).noise_multiplier
        print(f"noise multiplier {z:.3f} for epsilon={args.epsilon} delta={args.delta} over {args.rounds} rounds")
        if args.layer == "dp":
            return CentralDPAggregator(noise_multiplier=z, clip_norm=args.clip, ledger=ledger), ledger
        # SecAgg's threshold is max(min_survivors, n//2 + 1): with a few natural clients one
        # dropout too many aborts the round (recorded as failed; the model is unchanged).
        cfg = DistributedDPConfig(clip_norm=args.clip, noise_multiplier=z, min_survivors=max(1, n_clients // 2),
                                  max_clients=n_clients)
        return DistributedDPAggregator(cfg, ledger=ledger, dropout=args.protocol_dropout, seed=args.seed), ledger
    name = {"none": "plaintext"}.get(args.layer, args.layer)
    kw = {"dropout": args.protocol_dropout, "seed": args.seed} if name in ("secagg", "secagg+") else {}
    return make_aggregator(name, **kw), None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="iot23", choices=["iot23", "cicids2017"])
    p.add_argument("--model", default="mlp", choices=["ae", "mlp", "cnn", "lstm"])
    p.add_argument("--layer", default="secagg+", choices=["none", "secagg", "secagg+", "ckks", "paillier", "dp", "ddp"])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--protocol-dropout", type=float, default=0.1, help="in-protocol dropout for secagg/secagg+/ddp")
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--clip", type=float, default=1.0, help="L2 clip of each update for dp/ddp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/iot_intrusion"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    cfg = ExperimentConfig(dataset=args.dataset, model=args.model, clients=args.clients, rounds=args.rounds,
                           local_epochs=args.local_epochs, partition="natural", seed=args.seed)
    ds, data, clients = prepare_experiment(cfg)
    fed = replace(cfg.fed_config(), skip_failed_rounds=True)
    print(f"{ds.name}: {ds.n_samples} flows, {ds.n_features} features; {len(clients)} clients by natural partition, "
          f"sizes {[len(c.y) for c in clients]}, benign rows {[int((c.y == 0).sum()) for c in clients]}")
    args.out.mkdir(parents=True, exist_ok=True)
    agg, ledger = build_aggregator(args, len(clients), args.out)
    res = run_federated(detector_factory(args.model, ds.n_features, args.seed), clients, agg, fed,
                        X_val=data.X_val, y_val=data.y_val, X_test=data.X_test, y_test=data.y_test, progress=True)
    print(format_table([(f"{args.dataset}/{args.model}/{args.layer}", res.final_metrics)]))
    if res.failed_rounds:
        print(f"rounds aborted by the protocol (too few survivors; model unchanged): {res.failed_rounds}")
    up = sum(r.mean_upload_bytes for r in res.rounds) / len(res.rounds)
    print(f"upload per client per round: {up:.0f} bytes ({res.final_params.size} parameters)")
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, **res.to_dict()}
    if ledger is not None:
        summary["epsilon"] = ledger.spent_epsilon()
        print(f"epsilon spent: {summary['epsilon']:.3f} (delta={args.delta:g}); ledger {ledger.path}; "
              f"check it with: secagg privacy audit {ledger.path}")
    print(f"results written to {write_json(summary, args.out / 'results.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
