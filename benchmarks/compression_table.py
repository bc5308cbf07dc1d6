"""Compression table: upload bytes per client per round and detection quality on real CICIDS2017.

The seed paper's "FL + Compression" row. For each compressor (none / 8-bit / 4-bit /
top-1 % / top-1 % + 8-bit; stochastic rounding; top-k with per-client error feedback) and
each seed, FedAvg trains an MLP detector for ``--rounds`` rounds with the real FedAvg core
on ``--clients`` IID clients, uploads going through
:class:`secagg.fl.compression.CompressedAggregator`. Bytes are the lengths of the payloads
actually serialized by the clients (as recorded by the core per client per round), not
formulas; the table reports the mean per client per round, the total uploaded over the run,
the reduction vs float32, and test F1 / FPR / ROC-AUC (mean +- std over seeds).
``--download`` also compresses the server's aggregate with the same compressor and reports
those bytes (the core's full-model broadcast is counted separately and not shown).

Writes ``results/compression_table.md`` atomically (tmp + os.replace).
``--quick``: 1 seed, 3 rounds, 3,000 training rows (smoke test).

Usage: ``python benchmarks/compression_table.py [--quick] [--seeds 0 1 2] [--rounds 20] [--out PATH]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from _common import iid_clients, measured_line
from secagg.detect import load_dataset, make_detector, prepare
from secagg.fl.aggregator import WeightedMeanAggregator
from secagg.fl.compression import CompressedAggregator, make_compressor
from secagg.fl.core import FedConfig, run_federated
from secagg.reporting import mean_std, write_text

SPECS = [("none (float32)", "none"), ("8-bit", "q8"), ("4-bit", "q4"), ("top-1%", "top1%"), ("top-1% + 8-bit", "top1%+q8")]


def fmt(v: np.ndarray, digits: int = 3) -> str:
    return mean_std(v, f".{digits}f")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--train-rows", type=int, default=6000)
    ap.add_argument("--detector", default="mlp")
    ap.add_argument("--download", action="store_true", help="also compress the server's aggregate")
    ap.add_argument("--out", type=Path, default=Path("results/compression_table.md"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.train_rows = args.seeds[:1], 3, 3000
    torch.set_num_threads(1)
    lr, batch = 3e-3, 64

    ds = load_dataset("cicids2017")
    rows: dict[str, dict[str, list[float]]] = {label: {} for label, _ in SPECS}
    n_params = make_detector(args.detector, ds.n_features, seed=0).n_parameters()
    t0 = time.perf_counter()
    bar = tqdm(total=len(SPECS) * len(args.seeds), desc="compression", unit="run")
    for seed in args.seeds:
        data = prepare(ds, seed=seed)
        clients, _ = iid_clients(data, args.clients, args.train_rows, seed)
        factory = (lambda seed=seed: make_detector(args.detector, ds.n_features, seed=seed))
        cfg = FedConfig(rounds=args.rounds, local_epochs=1, batch_size=batch, lr=lr, seed=seed, eval_every=args.rounds)
        for label, spec in SPECS:
            bar.set_postfix_str(f"seed {seed} {label}")
            comp = make_compressor(spec)
            agg = CompressedAggregator(WeightedMeanAggregator(), comp,
                                       download_compressor=make_compressor(spec) if args.download else None, seed=seed)
            res = run_federated(factory, clients, agg, cfg, X_val=data.X_val, y_val=data.y_val,
                                X_test=data.X_test, y_test=data.y_test)
            per_client_round = [b for r in res.rounds for b in r.upload_bytes.values()]
            assert all(b == comp.payload_bytes(n_params) for b in per_client_round), "byte accounting mismatch"
            d = rows[label]
            m = res.final_metrics
            for key, val in (("bytes", np.mean(per_client_round)), ("total", float(sum(per_client_round))),
                             ("f1", m["f1"]), ("fpr", m["fpr"]), ("auc", m.get("roc_auc", float("nan"))),
                             ("down", float(np.mean([r.aggregator_metrics.get("compressed_download_bytes", 0.0)
                                                      for r in res.rounds])))):
                d.setdefault(key, []).append(float(val))
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0

    base = np.mean(rows[SPECS[0][0]]["bytes"])
    lines = [
        "# FL + compression (CICIDS2017, real data)",
        "",
        f"Config: {args.detector.upper()} detector with {n_params:,} parameters, {args.clients} IID clients, "
        f"{args.train_rows} training rows, {args.rounds} FedAvg rounds x 1 local epoch, batch {batch}, Adam lr {lr}, "
        f"seeds {args.seeds}. Upload bytes are the serialized payload lengths per client per round recorded by "
        f"the FedAvg core (identical every round for a fixed compressor); total = all clients, all rounds. "
        f"Stochastic rounding for quantization; per-client error feedback for top-k.",
        measured_line(elapsed, args.quick),
        "",
        "| upload compression | bytes / client / round | reduction | total upload (MB) | F1 | FPR | ROC-AUC |"
        + (" download bytes / client / round |" if args.download else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if args.download else ""),
    ]
    for label, _ in SPECS:
        d = {k: np.array(v) for k, v in rows[label].items()}
        line = (f"| {label} | {d['bytes'].mean():,.0f} | {base / d['bytes'].mean():.1f}x | {d['total'].mean() / 1e6:.3f} | "
                f"{fmt(d['f1'])} | {fmt(d['fpr'])} | {fmt(d['auc'])} |")
        if args.download:
            line += f" {d['down'].mean():,.0f} |"
        lines.append(line)
    lines += ["", "Payload formats: docs/robustness.md#compression and secagg/fl/compression.py.", ""]
    text = "\n".join(lines)
    write_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
