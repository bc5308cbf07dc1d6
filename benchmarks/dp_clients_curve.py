"""How many clients does client-level DP need? F1 / ROC-AUC vs epsilon for 10 and 100 clients (CICIDS2017).

Complements ``benchmarks/dp_curve.py`` (the dp layer's curve: autoencoder, 50 clients, central
and distributed DP): here the detector is the supervised MLP by default (its no-DP F1 is ~0.9, so
the cost of DP is visible above seed noise), and the client count varies, because with every
client in every round the noise on the averaged update is z C / n.

For each target epsilon (delta = 1e-5, all ``--rounds`` rounds, every client every round so
q = 1 and no amplification by sampling) and seed, FedAvg trains the detector (default the
supervised MLP; ``--models ae mlp`` adds the autoencoder) on IID clients with

* central DP-FedAvg (:class:`secagg.fl.dp_aggregators.CentralDPAggregator`; trusted server adds
  Gaussian noise), noise multiplier from :func:`secagg.dp.calibrate.calibrate_noise_multiplier`,
  for each client count in ``--clients`` (10 and 100 by default: the noise on the *mean*
  update shrinks as 1/n, which is the lever that makes client-level DP usable);
* distributed DP + SecAgg (:class:`secagg.fl.dp_aggregators.DistributedDPAggregator`, the
  distributed discrete Gaussian inside a full secagg.smpc round, ``secure=True``), noise
  calibrated to the same epsilon by ``table1.calibrate_distributed_dp``, for the client counts
  in ``--ddp-clients`` (10 by default: the full SecAgg round with 100 clients costs minutes per
  FedAvg round on this 2-core machine);
* "none": plain FedAvg, the no-DP reference (drawn as a dashed line).

Every DP run writes a real write-ahead privacy ledger (temp dir); the certified epsilon it
reports (dp-accounting RDP) is in the JSON next to the target.

Writes ``results/dp_clients_curve.md``, ``.png`` and ``.json``
atomically. ``--quick``: 1 seed, epsilon {1, 8, none}, 4 clients, 2 rounds, 1,500 rows.

Usage: ``python benchmarks/dp_clients_curve.py [--quick] [--models mlp] [--epsilons 0.5 1 2 4 8 32 128]
[--clients 10 100] [--ddp-clients 10] [--seeds 0 1 2] [--jobs 1] [--out results/dp_clients_curve.md]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import args_dict, run_tasks  # noqa: E402  (benchmarks/ is not a package)
from table1 import DELTA, MODEL_SETTINGS, calibrate_distributed_dp, split_and_partition  # noqa: E402

from secagg.reporting import (  # noqa: E402
    library_versions,
    machine_info,
    machine_line,
    mean_std,
    save_figure,
    write_json,
    write_text,
)


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    from secagg.detect import make_detector
    from secagg.dp import PrivacyBudget, PrivacyLedger
    from secagg.dp.calibrate import calibrate_noise_multiplier
    from secagg.fl.aggregator import WeightedMeanAggregator
    from secagg.fl.core import FedConfig, run_federated
    from secagg.fl.dp_aggregators import CentralDPAggregator, DistributedDPAggregator

    model, seed, n, mech, eps = task["model"], task["seed"], task["clients"], task["mechanism"], task["epsilon_target"]
    rounds = task["rounds"]
    n_feat, data, _, _, cl = split_and_partition(task["dataset"], seed, n, "iid", 0.5, task["max_train_rows"])
    factory = (lambda: make_detector(model, n_feat, seed=seed))
    n_params = factory().n_parameters()
    torch.manual_seed(seed)
    out: dict[str, Any] = {**task, "epsilon": None, "noise_multiplier": None}
    with tempfile.TemporaryDirectory(prefix="dpclients-") as tmp:
        if mech == "none":
            agg = WeightedMeanAggregator()
            ledger = None
        else:
            ledger = PrivacyLedger.create(Path(tmp) / "ledger.jsonl", PrivacyBudget(epsilon=eps * 1.01, delta=DELTA))
            if mech == "central":
                z = calibrate_noise_multiplier(eps, DELTA, rounds, 1.0).noise_multiplier
                agg = CentralDPAggregator(noise_multiplier=z, clip_norm=task["clip"], sampling_rate=1.0, ledger=ledger)
            else:
                cfg, _ = calibrate_distributed_dp(eps, DELTA, rounds, n_params, task["clip"], n, n)
                z = cfg.noise_multiplier
                agg = DistributedDPAggregator(cfg, ledger=ledger, secure=True)
            out["noise_multiplier"] = z
        ms = MODEL_SETTINGS[model]
        fc = FedConfig(rounds=rounds, local_epochs=task["local_epochs"] or ms["local_epochs"], batch_size=64,
                       lr=ms["lr"], seed=seed, eval_every=rounds)
        t0 = time.perf_counter()
        res = run_federated(factory, cl, agg, fc, X_val=data.X_val, y_val=data.y_val, X_test=data.X_test,
                            y_test=data.y_test)
        out["seconds"] = time.perf_counter() - t0
        out["metrics"] = res.final_metrics
        if ledger is not None:
            out["epsilon"] = float(ledger.spent_epsilon())
            last = res.rounds[-1].aggregator_metrics
            if "ddp_noise_std_of_mean" in last:
                out["noise_std_of_mean"] = float(last["ddp_noise_std_of_mean"])
            else:
                out["noise_std_of_mean"] = float(out["noise_multiplier"] * task["clip"] / n)
    return out


def series_key(r: dict) -> tuple[str, str, int]:
    return (r["model"], r["mechanism"], r["clients"])


def summarise(results: list[dict]) -> dict[tuple, dict[float, dict[str, list[float]]]]:
    out: dict[tuple, dict[float, dict[str, list[float]]]] = {}
    for r in results:
        e = r["epsilon_target"] if r["mechanism"] != "none" else math.inf
        d = out.setdefault(series_key(r), {}).setdefault(e, {"f1": [], "roc_auc": [], "eps": [], "acc": []})
        d["f1"].append(r["metrics"]["f1"])
        d["roc_auc"].append(r["metrics"]["roc_auc"])
        d["acc"].append(r["metrics"]["accuracy"])
        if r["epsilon"] is not None:
            d["eps"].append(r["epsilon"])
    return out


MECH_LABEL = {"central": "central DP-FedAvg", "ddp": "distributed DP + SecAgg", "none": "no DP (FedAvg)"}


def plot(summary, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.models), 2, figsize=(11, 4.2 * len(args.models)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, model in enumerate(args.models):
        for j, (metric, name) in enumerate((("f1", "F1"), ("roc_auc", "ROC-AUC"))):
            ax = axes[i][j]
            c = 0
            for (m, mech, n), pts in sorted(summary.items()):
                if m != model:
                    continue
                if mech == "none":
                    v = np.array(pts[math.inf][metric])
                    ax.axhline(v.mean(), ls="--", color="grey" if n == min(args.clients) else "black", lw=1,
                               label=f"no DP, {n} clients ({v.mean():.3f})")
                    continue
                eps = sorted(pts)
                mean = np.array([np.mean(pts[e][metric]) for e in eps])
                std = np.array([np.std(pts[e][metric]) for e in eps])
                ax.errorbar(eps, mean, yerr=std, marker="o", capsize=3, color=colors[c % len(colors)],
                            label=f"{MECH_LABEL[mech]}, {n} clients")
                c += 1
            ax.set_xscale("log", base=2)
            ax.set_xlabel("epsilon (delta = 1e-5, whole run)")
            ax.set_ylabel(f"test {name}")
            ax.set_title(f"CICIDS2017, {model.upper()}: {name} vs epsilon")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def fmt(v: list[float], d: int = 3) -> str:
    return mean_std(v, f".{d}f", sep=" ± ")


def render(results, summary, args, elapsed: float, png: Path) -> str:
    seeds = sorted({r["seed"] for r in results})
    noise = {}
    for r in results:
        if r["mechanism"] != "none":
            noise.setdefault((r["model"], r["mechanism"], r["clients"], r["epsilon_target"]), []).append(
                (r["noise_multiplier"], r["noise_std_of_mean"]))
    L = [
        "# Client-level DP needs clients: F1 / ROC-AUC vs epsilon for 10 and 100 clients (CICIDS2017)",
        "",
        f"![F1 and ROC-AUC vs epsilon]({png.name})",
        "",
        f"Setup: real CICIDS2017 sample, stratified 60/15/25 split per seed, IID clients, {args.rounds} FedAvg "
        f"rounds, every client in every round (q = 1, no amplification by sampling), L2 clip {args.clip:g}, "
        f"delta = {DELTA:g}, seeds {seeds} (mean ± std). MLP: {MODEL_SETTINGS['mlp']['local_epochs']} local "
        f"epoch, lr {MODEL_SETTINGS['mlp']['lr']:g}; AE: {MODEL_SETTINGS['ae']['local_epochs']} local epochs, lr "
        f"{MODEL_SETTINGS['ae']['lr']:g}. Noise calibrated to each target epsilon (central: "
        f"`calibrate_noise_multiplier`; distributed: the discrete mechanism's own accounting, "
        f"`table1.calibrate_distributed_dp`); 'epsilon certified' is what the run's privacy ledger reports "
        f"(dp-accounting RDP). 'noise std of mean' = per-coordinate std of the noise on the averaged update "
        f"(central: z C / n; distributed: from the decoded discrete noise)."
        + (f" Training rows capped at {args.max_train_rows}." if args.max_train_rows else ""),
        "Distributed DP + SecAgg runs only for the client counts listed: with 100 clients one full SecAgg "
        "round plus 100 discrete-Gaussian encodings takes minutes per FedAvg round on this machine. The same "
        "training rows spread over more clients give each client fewer rows and optimizer steps per round, so "
        "the no-DP baseline itself differs by client count: compare each DP curve with its own dashed line.",
        "",
        machine_line(),
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed / 60:.1f} min"
        + (" (--quick: smoke settings, not results)" if args.quick else "") + ".",
        "",
        "| model | mechanism | clients | target epsilon | epsilon certified | noise multiplier z | noise std of mean | F1 | ROC-AUC | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, mech, n), pts in sorted(summary.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1], kv[0][2])):
        for e in sorted(pts):
            d = pts[e]
            nz = noise.get((model, mech, n, e), [])
            L.append(f"| {model.upper()} | {MECH_LABEL[mech]} | {n} | {'∞' if math.isinf(e) else f'{e:g}'} | "
                     f"{fmt(d['eps'], 2) if d['eps'] else '∞'} | "
                     f"{np.mean([a for a, _ in nz]):.3g} | " if nz else
                     f"| {model.upper()} | {MECH_LABEL[mech]} | {n} | ∞ | ∞ | — | — | ")
            if nz:
                L[-1] += f"{np.mean([b for _, b in nz]):.3g} | "
            L[-1] += f"{fmt(d['f1'])} | {fmt(d['roc_auc'])} | {fmt(d['acc'])} |"
    L += ["", "Regenerate: `python benchmarks/dp_clients_curve.py` (see results/README.md); per-seed numbers in "
          "`results/dp_clients_curve.json`.", ""]
    return "\n".join(L)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="+", default=["mlp"], choices=sorted(MODEL_SETTINGS))
    ap.add_argument("--dataset", default="cicids2017", choices=["cicids2017", "iot23"])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 32, 128])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100], help="client counts for central DP")
    ap.add_argument("--ddp-clients", type=int, nargs="*", default=[10], help="client counts for distributed DP")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--local-epochs", type=int, default=None)
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--max-train-rows", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/dp_clients_curve.md"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epsilons, args.rounds, args.local_epochs = args.seeds[:1], [1, 8], 2, 1
        args.clients, args.ddp_clients = [4], [4]
        args.max_train_rows = args.max_train_rows or 1500
    return args


def build_tasks(args) -> list[dict]:
    base = dict(dataset=args.dataset, rounds=args.rounds, local_epochs=args.local_epochs, clip=args.clip,
                max_train_rows=args.max_train_rows)
    tasks = []
    for model in args.models:
        for seed in args.seeds:
            for n in sorted(set(args.clients) | set(args.ddp_clients)):
                tasks.append(dict(base, model=model, seed=seed, clients=n, mechanism="none", epsilon_target=None))
                for e in args.epsilons:
                    if n in args.clients:
                        tasks.append(dict(base, model=model, seed=seed, clients=n, mechanism="central", epsilon_target=e))
                    if n in args.ddp_clients:
                        tasks.append(dict(base, model=model, seed=seed, clients=n, mechanism="ddp", epsilon_target=e))
    tasks.sort(key=lambda t: -(5 if t["mechanism"] == "ddp" else 1) * (3 if t["model"] == "ae" else 1))
    return tasks


def main(argv: Optional[list[str]] = None) -> int:
    torch.set_num_threads(1)
    args = parse_args(argv)
    tasks = build_tasks(args)
    t0 = time.perf_counter()
    bar = tqdm(total=len(tasks), desc="dp_clients_curve", unit="run")
    results = run_tasks(run_one, tasks, args.jobs, bar, describe=lambda t: (
        f"{t['model']} {t['mechanism']} n={t['clients']} eps={t['epsilon_target']} s{t['seed']}"))
    bar.close()
    elapsed = time.perf_counter() - t0
    summary = summarise(results)
    png = args.out.with_suffix(".png")
    plot(summary, args, png)
    write_json({"args": args_dict(args), "machine": machine_info(), "libraries": library_versions(),
                "elapsed_s": elapsed, "runs": results},
               args.out.with_suffix(".json"))
    text = render(results, summary, args, elapsed, png)
    write_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
