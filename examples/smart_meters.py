"""1,000 smart meters learn one tiny energy-theft detector together, privately.

Scenario
--------
Every meter (a household) keeps its hourly readings. The utility wants an autoencoder that
flags tampered days (the six false-data-injection attacks of Jokar et al. 2016, see
:mod:`secagg.detect.smart_meters`) without ever seeing a household's readings or even a
household's model update:

* **FedAvg** (McMahan et al. 2017): each round ``--clients-per-round`` meters are sampled;
  each trains the shared ``24 -> 8 -> 24`` autoencoder (416 parameters) on its own benign
  days, normalised by its own mean load, and sends only a model delta.
* **SecAgg+** (:mod:`secagg.smpc`; Bell et al. 2020): the deltas are summed under pairwise
  masks on a sparse Harary graph; meters drop out *inside* the protocol (``--dropout``, at a
  random phase) and the survivors' sum is still recovered exactly.
* **Distributed DP** (:mod:`secagg.dp`; Kairouz et al. 2021, distributed discrete
  Gaussian): each meter clips its delta, discretises it and adds its share of integer
  Gaussian noise before masking, so the server only ever sees a noisy sum; the privacy
  ledger records every round and epsilon (client level) is computed by ``secagg.dp``.

Detection: each meter scores its days by reconstruction error and sets its own threshold
at the ``--percentile`` of its benign training days (no labels leave the meter).

Data: real daily load *shapes* from ItalyPowerDemand (UCR; Italian grid demand, so smoother
than a household's load), per-meter synthetic kWh levels (the data is z-normalised per day;
see ``secagg.detect.smart_meters``).

Run:  python examples/smart_meters.py            (defaults: 1,000 meters, ~1-3 min on 2 cores)
      python examples/smart_meters.py --help
Writes ``runs/smart_meters/privacy_ledger.json`` and ``runs/smart_meters/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from secagg.detect.metrics import detection_metrics, roc_auc
from secagg.detect.models import AutoencoderDetector
from secagg.detect.smart_meters import THEFT_TYPES, SmartMeterConfig, build_smart_meters
from secagg.fl.aggregator import serialize_vector
from secagg.fl.params import flatten, unflatten
from secagg.dp import PrivacyBudget, PrivacyBudgetExceeded, PrivacyLedger, read_ledger
from secagg.dp.discrete import DistributedDPConfig, next_pow2, plan_round
from secagg.smpc import DropoutSchedule, NotEnoughClientsError, SessionConfig, new_session_id, plan_session, run_round


MODULUS_BITS = 32  # SecAgg+ ring Z_{2^32}: a masked coordinate costs as much as a float32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--meters", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--clients-per-round", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.05, help="P(a sampled meter drops inside the SecAgg+ protocol)")
    p.add_argument("--local-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=0.5, help="L2 clip of each meter's delta")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="std of the summed noise / clip")
    p.add_argument("--delta", type=float, default=1e-4, help="target delta (< 1/meters)")
    p.add_argument("--epsilon-budget", type=float, default=16.0, help="ledger budget guard: stop before a round could exceed it")
    p.add_argument("--percentile", type=float, default=95.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/smart_meters"))
    p.add_argument("--no-baseline", action="store_true", help="skip the plaintext FedAvg reference run")
    return p.parse_args()


def local_delta(worker: AutoencoderDetector, global_params: np.ndarray, X: np.ndarray, args) -> np.ndarray:
    unflatten(worker.module, global_params)
    worker.train_epochs(X, np.zeros(len(X), dtype=np.int64), epochs=args.local_epochs, batch_size=7, lr=args.lr)
    return flatten(worker.module) - global_params


def secagg_session(ids: tuple[int, ...], vector_length: int, dropout: float, round_id: int) -> SessionConfig:
    """SecAgg+ public parameters for this round's meters (protocol ids = meter index + 1)."""
    degree, t = plan_session(len(ids), secagg_plus=True, dropout_rate=max(dropout, 0.05), corruption_rate=0.05)
    return SessionConfig(new_session_id(), round_id=round_id, client_ids=ids, threshold=t,
                         vector_length=vector_length, modulus_bits=MODULUS_BITS, degree=degree)


def evaluate(global_params: np.ndarray, model: AutoencoderDetector, Xtr: np.ndarray, Xte: np.ndarray, fleet, percentile: float) -> dict:
    """Per-meter thresholds (own benign days), pooled day-level metrics, per-type recall, meter-level AUC."""
    unflatten(model.module, global_params)
    n, dtr, h = Xtr.shape
    s_tr = model.score(Xtr.reshape(-1, h)).reshape(n, dtr)
    s_te = model.score(Xte.reshape(-1, h)).reshape(n, -1)
    thr = np.percentile(s_tr, percentile, axis=1, keepdims=True)
    pred = (s_te > thr).astype(np.int64)
    y = fleet.test_labels.astype(np.int64)
    rel = s_te / np.median(s_tr, axis=1, keepdims=True)  # scale-free score for a pooled ROC-AUC
    m = detection_metrics(y.ravel(), pred.ravel(), rel.ravel())
    tt = fleet.test_theft_type
    m["recall_by_type"] = {THEFT_TYPES[k - 1]: float(pred[tt == k].mean()) for k in range(1, 7) if (tt == k).any()}
    m["meter_auc_thief"] = roc_auc(fleet.is_thief.astype(np.int64), pred.mean(axis=1)) if 0 < fleet.is_thief.sum() < n else float("nan")
    return m


def fmt(m: dict) -> str:
    return (f"acc {m['accuracy']:.3f}  prec {m['precision']:.3f}  rec {m['recall']:.3f}  F1 {m['f1']:.3f}  "
            f"FPR {m['fpr']:.3f}  ROC-AUC {m['roc_auc']:.3f}  thief-meter AUC {m['meter_auc_thief']:.3f}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # tiny model: threads only add overhead on 2 shared cores
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)  # simulation choices only (sampling, dropout)

    fleet = build_smart_meters(SmartMeterConfig(n_meters=args.meters, seed=args.seed))
    print(f"{fleet.n_meters} meters x ({fleet.config.train_days} benign train + {fleet.config.test_days} test days) x 24 h; "
          f"{int(fleet.is_thief.sum())} thieves, {fleet.test_labels.mean():.1%} of test days tampered (Jokar et al. h1-h6)")
    print(f"NOTE: {fleet.note}")
    # each meter normalises by its own mean benign load (local statistic, never sent)
    scale = fleet.train.mean(axis=(1, 2), keepdims=True)
    Xtr = (fleet.train / scale).astype(np.float32)
    Xte = (fleet.test / scale).astype(np.float32)

    model = AutoencoderDetector(24, hidden=(8,), seed=args.seed)
    worker = AutoencoderDetector(24, hidden=(8,), seed=args.seed)
    init = flatten(model.module)
    dim = init.size
    print(f"model: autoencoder 24-8-24, {dim} parameters; {args.rounds} rounds x {args.clients_per_round} sampled meters, "
          f"in-protocol dropout {args.dropout:.0%}")

    N, m = fleet.n_meters, min(args.clients_per_round, fleet.n_meters)
    q = m / N
    broadcast = len(serialize_vector(init))  # global model download per sampled meter
    plain_upload = len(serialize_vector(np.zeros(dim, np.float32)))
    padded = next_pow2(dim)  # the DDG rotation pads to a power of two: 416 -> 512 coordinates

    # ---------------------------------------------------------------- plaintext reference
    baseline = None
    if not args.no_baseline:
        t0 = time.perf_counter()
        params, srng = init.copy(), np.random.default_rng(args.seed + 1)
        for r in range(args.rounds):
            chosen = np.sort(srng.choice(N, m, replace=False))
            params = params + np.mean([local_delta(worker, params, Xtr[i], args) for i in chosen], axis=0).astype(np.float32)
        baseline = evaluate(params, model, Xtr, Xte, fleet, args.percentile)
        baseline["seconds"] = time.perf_counter() - t0
        print(f"\n[plaintext FedAvg, no SecAgg, no DP] {baseline['seconds']:.0f}s\n  {fmt(baseline)}")
        print("  recall by theft type: " + ", ".join(f"{k} {v:.2f}" for k, v in baseline["recall_by_type"].items()))

    # ---------------------------------------------------------------- SecAgg+ + distributed DP
    args.out.mkdir(parents=True, exist_ok=True)
    ledger_path = args.out / "privacy_ledger.jsonl"
    if ledger_path.exists():
        ledger_path.unlink()  # a fresh run; keep old ledgers by passing another --out
    ledger = PrivacyLedger.create(
        ledger_path, PrivacyBudget(args.epsilon_budget, args.delta),
        metadata={"example": "smart_meters", "meters": N, "clients_per_round": m, "rounds": args.rounds,
                  "dropout": args.dropout, "clip": args.clip, "noise_multiplier": args.noise_multiplier},
    )
    t0 = time.perf_counter()
    params, srng = init.copy(), np.random.default_rng(args.seed + 1)  # same meter sampling as the reference
    ups, downs, survivors_per_round, eff_z, aborted = [], [], [], [], []
    for r in tqdm(range(args.rounds), desc="SecAgg+ rounds", unit="round"):
        chosen = np.sort(srng.choice(N, m, replace=False))
        pids = tuple(int(i) + 1 for i in chosen)  # Shamir x-coordinates must be >= 1
        session = secagg_session(pids, padded, args.dropout, r)
        ddp = plan_round(DistributedDPConfig(clip_norm=args.clip, noise_multiplier=args.noise_multiplier,
                                             min_survivors=session.threshold, max_clients=m,
                                             modulus_bits=MODULUS_BITS), dim)
        try:
            ledger.check_round(ddp.event(session.threshold, q))  # budget guard, worst case: only t survivors
        except PrivacyBudgetExceeded as exc:
            print(f"\n  budget guard stopped training before round {r}: {exc}")
            break
        drops = DropoutSchedule.random(pids, args.dropout, rng)
        inputs = {}
        for pid in pids:
            if pid in drops.advertise:  # gone before the round starts: never trains
                inputs[pid] = np.zeros(padded, dtype=np.uint32)
                continue
            delta = local_delta(worker, params, Xtr[pid - 1], args)
            inputs[pid] = ddp.encode(delta).astype(np.uint32)  # clip, rotate, round, + N_Z noise, mod 2^32
        try:
            rep = run_round(session, inputs, drops)
        except NotEnoughClientsError as exc:  # fewer than t survivors: the server learns nothing, no release
            aborted.append(f"round {r}: {exc}")
            continue
        event = ddp.event(len(rep.survivors), q)
        ledger.record_round(r, event, [pid - 1 for pid in rep.survivors], clip_norm=args.clip,
                            mechanism="distributed_discrete_gaussian+secagg+",
                            extra={"secagg_threshold": session.threshold, "secagg_degree": session.neighbourhood_size - 1,
                                   "sampled": m, "dropped_in_protocol": m - len(rep.survivors),
                                   "granularity": ddp.granularity, "local_variance": ddp.local_variance})
        # released only after the ledger entry is on disk (write-ahead)
        params = (params + ddp.decode_sum(rep.total) / len(rep.survivors)).astype(np.float32)
        ups += [rep.bytes_up[p] for p in rep.survivors]
        downs += [rep.bytes_down[p] + broadcast for p in rep.survivors]
        survivors_per_round.append(len(rep.survivors))
        eff_z.append(event.equivalent_noise_multiplier())
    private = evaluate(params, model, Xtr, Xte, fleet, args.percentile)
    private["seconds"] = time.perf_counter() - t0
    eps_pop = ledger.spent_epsilon()
    eps_clients = ledger.client_epsilons()
    audit = read_ledger(ledger_path)

    # ---------------------------------------------------------------- report
    part = np.array(sorted(eps_clients.values())) if eps_clients else np.zeros(1)
    print(f"\n[FedAvg + SecAgg+ (dropout {args.dropout:.0%}) + distributed discrete Gaussian DP] {private['seconds']:.0f}s")
    print(f"  {fmt(private)}")
    if baseline is not None:
        print(f"  F1 lost to privacy: {baseline['f1'] - private['f1']:.3f} (plaintext {baseline['f1']:.3f} -> private {private['f1']:.3f})")
    print("  recall by theft type: " + ", ".join(f"{k} {v:.2f}" for k, v in private["recall_by_type"].items()))
    if not survivors_per_round:
        raise SystemExit("no round completed; see the messages above")
    print(f"  rounds completed {len(survivors_per_round)}, aborted (fewer than t survivors, nothing released) "
          f"{len(aborted)}; survivors per round: mean {np.mean(survivors_per_round):.1f} of {m} (min {min(survivors_per_round)})")
    print(f"  bytes per meter per round: up {np.mean(ups):,.0f}, down {np.mean(downs):,.0f} "
          f"(plaintext FedAvg: up {plain_upload:,}, down {broadcast:,}; x{np.mean(ups) / plain_upload:.1f} upload)")
    print(f"  noise: clip {args.clip}, z = {args.noise_multiplier} at t survivors, effective z with actual survivors "
          f"{np.mean(eff_z):.2f}")
    print(f"  epsilon spent (client level, delta={args.delta:g}, {ledger.accountant}): {eps_pop:.2f} for any meter "
          f"(every round charged: no subsampling amplification is claimed for the discrete Gaussian)")
    print(f"  per-meter epsilon over the rounds each meter joined ({len(eps_clients)} of {N} meters took part): "
          f"median {np.median(part):.2f}, 90th pct {np.percentile(part, 90):.2f}, max {part.max():.2f}")
    print(f"  privacy ledger: {ledger_path} ({len(audit.rounds)} rounds, chain {'intact' if audit.ok else 'BROKEN'}, head {audit.head[:16]}...)")

    results = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data_note": fleet.note,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__},
        "plaintext_fedavg": baseline,
        "secagg_plus_ddp": private,
        "bytes_per_meter_per_round": {"up": float(np.mean(ups)), "down": float(np.mean(downs)),
                                      "plaintext_up": plain_upload, "plaintext_down": broadcast},
        "survivors_per_round": survivors_per_round,
        "aborted_rounds": aborted,
        "epsilon": {"delta": args.delta, "accountant": ledger.accountant, "population": eps_pop,
                    "per_meter_median": float(np.median(part)), "per_meter_max": float(part.max()),
                    "meters_participated": len(eps_clients)},
        "ledger": {"path": str(ledger_path), "head": audit.head, "ok": audit.ok},
        "seconds_total": time.perf_counter() - t_start,
    }
    tmp = args.out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=float))
    os.replace(tmp, args.out / "results.json")
    print(f"  results: {args.out / 'results.json'}  (total {results['seconds_total']:.0f}s)")


if __name__ == "__main__":
    main()
