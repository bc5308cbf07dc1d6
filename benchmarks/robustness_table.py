"""Robustness table: F1 and FPR of each defence under each poisoning attack on real CICIDS2017.

For every seed the CICIDS2017 data (``secagg.detect.load_dataset('cicids2017')``) is split
(stratified train/val/test, scaler fitted on train), ``--train-rows`` training rows are
spread IID over ``--clients`` clients, and a fraction f in {0, 10 %, 20 %, 30 %} of them is
malicious (chosen with the seed). Each (defence, attack, f) cell trains FedAvg for
``--rounds`` rounds (1 local epoch; autoencoder 2) with the real FedAvg core and reports the test-set F1 and FPR (mean
over seeds; +- the standard deviation when there are several seeds).

Detectors and attacks
* MLP classifier (supervised): sign flipping (-3 x delta), scaling / model replacement
  (label-flipped local data, delta boosted by gamma = n_clients / n_malicious so that the
  attackers together replace the model, Bagdasaryan et al. 2020), Gaussian-noise updates
  (sigma = 0.5 per coordinate), label flipping (all local labels flipped).
* Autoencoder (one-class, trains on rows labelled benign): malicious clients train on their
  attack traffic labelled benign. The AE's F1 at the 95th-percentile benign threshold is low
  on this attack-heavy sample even without attack, so ROC-AUC is reported too.

Defences (each tolerating f_def = max(1, number of malicious clients); a rule that cannot
tolerate f_def with n clients shows ``n/a`` -- the ConfigError the API raises):
plain FedAvg (reference), Krum, Multi-Krum (m = n - f_def), coordinate median, trimmed mean
(f_def per side), Bulyan (needs n >= 4 f_def + 3), norm bounding (bound = median L2 norm
of the honest updates of round 0 of the clean FedAvg run, per seed), FLTrust with a
persistent reputation (decay 0.5, threshold 0.05; the server's clean root set is
``--root-rows`` training rows held out from the clients; the server trains on it for as
many steps as a typical client takes).

Writes ``results/robustness_table.md`` atomically (tmp file + os.replace).
``--quick``: 1 seed, 2 rounds, f in {0, 30 %}, 3,000 training rows (smoke test, ~1 min).

Usage: ``python benchmarks/robustness_table.py [--quick] [--seeds 0 1 2] [--rounds 4] [--out PATH]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from _common import iid_clients, measured_line
from secagg.detect import load_dataset, make_detector, prepare
from secagg.errors import ConfigError
from secagg.fl.aggregator import WeightedMeanAggregator
from secagg.fl.attacks import GaussianNoise, Scaling, SignFlip, attack_as_benign, choose_malicious, label_flip, poison_clients
from secagg.fl.core import FedConfig, run_federated
from secagg.fl.robust import Bulyan, CoordinateMedian, Krum, MultiKrum, NormBounding, TrimmedMean
from secagg.fl.trust import RootSetTrainer, TrustScoreAggregator
from secagg.reporting import mean_std, write_text

DEFENCES = ["FedAvg (no defence)", "Krum", "Multi-Krum", "Median", "Trimmed mean", "Bulyan", "Norm bounding",
            "FLTrust + reputation"]
MLP_ATTACKS = ["sign flip", "scaling (model replacement)", "Gaussian noise", "label flip"]
AE_ATTACKS = ["attack traffic labelled benign"]


class Setup:
    """Data, clients and root set of one seed."""

    def __init__(self, seed: int, n_clients: int, train_rows: int, root_rows: int) -> None:
        ds = load_dataset("cicids2017")
        self.n_features = ds.n_features
        data = prepare(ds, seed=seed)
        self.clients, root_idx = iid_clients(data, n_clients, train_rows, seed, root_rows=root_rows)
        self.X_root, self.y_root = data.X_train[root_idx], data.y_train[root_idx]
        self.data = data
        self.seed = seed


def make_defence(name: str, f_def: int, bound: float, factory: Callable, setup: Setup, lr: float, batch: int,
                 local_epochs: int = 1):
    if name.startswith("FedAvg"):
        return WeightedMeanAggregator()
    if name == "Krum":
        return Krum(f_def)
    if name == "Multi-Krum":
        return MultiKrum(f_def)
    if name == "Median":
        return CoordinateMedian(f_def)
    if name == "Trimmed mean":
        return TrimmedMean(f_def)
    if name == "Bulyan":
        return Bulyan(f_def)
    if name == "Norm bounding":
        return NormBounding(bound)
    if name.startswith("FLTrust"):
        # as many local steps on the root set as a typical client takes on its data (FLTrust, Sec. IV)
        client_rows = float(np.mean([len(c.y) for c in setup.clients]))
        epochs = max(1, round(client_rows / len(setup.y_root)))
        root = RootSetTrainer(factory, setup.X_root, setup.y_root, lr=lr, batch_size=batch, epochs=epochs * local_epochs)
        return TrustScoreAggregator(root, decay=0.5, threshold=0.05)
    raise ConfigError(f"unknown defence {name!r}")


def attack_for(name: str, clients, malicious: frozenset, n: int, seed: int):
    """Return (clients, update_hook) for an attack."""
    if not malicious:
        return clients, None
    if name == "sign flip":
        return clients, SignFlip(malicious, scale=3.0)
    if name == "scaling (model replacement)":
        return poison_clients(clients, malicious, label_flip, seed), Scaling(malicious, gamma=n / len(malicious))
    if name == "Gaussian noise":
        return clients, GaussianNoise(malicious, sigma=0.5, seed=seed)
    if name == "label flip":
        return poison_clients(clients, malicious, label_flip, seed), None
    if name == "attack traffic labelled benign":
        return poison_clients(clients, malicious, attack_as_benign, seed), None
    raise ConfigError(f"unknown attack {name!r}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--train-rows", type=int, default=5000)
    ap.add_argument("--root-rows", type=int, default=100)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument("--no-ae", action="store_true", help="skip the autoencoder section")
    ap.add_argument("--out", type=Path, default=Path("results/robustness_table.md"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.fractions, args.train_rows = args.seeds[:1], 2, [0.0, 0.3], 3000
    torch.set_num_threads(1)  # tiny models: one thread is faster and fair to a shared machine

    batch = 64
    lr_of = {"mlp": 1e-2, "ae": 3e-3}  # Adam learning rates that converge in a few rounds on this data
    sections = [("mlp", MLP_ATTACKS)] + ([] if args.no_ae else [("ae", AE_ATTACKS)])
    ae_defences = ["FedAvg (no defence)", "Median", "Trimmed mean", "Norm bounding", "FLTrust + reputation"]
    jobs = []
    for det, attacks in sections:
        defs = DEFENCES if det == "mlp" else ae_defences
        for seed in args.seeds:
            for d in defs:
                for fr in args.fractions:
                    for a in (attacks[:1] if fr == 0 else attacks):
                        jobs.append((det, seed, d, fr, a))
    # clean FedAvg first for every (detector, seed): it provides the norm bound
    jobs.sort(key=lambda j: (j[0], j[1], not (j[2].startswith("FedAvg") and j[3] == 0)))

    results: dict[tuple, list[dict]] = defaultdict(list)
    bounds: dict[tuple, float] = {}
    setups: dict[int, Setup] = {}
    t_start = time.perf_counter()
    bar = tqdm(jobs, desc="robustness", unit="run")
    for det, seed, dname, fr, aname in bar:
        bar.set_postfix_str(f"{det} s{seed} {dname[:12]} {aname[:10]} f={fr:.0%}")
        if seed not in setups:
            setups[seed] = Setup(seed, args.clients, args.train_rows, args.root_rows)
        st = setups[seed]
        n = len(st.clients)
        malicious = choose_malicious([c.client_id for c in st.clients], fr, seed=seed)
        f_def = max(1, len(malicious))
        factory = (lambda det=det: make_detector(det, st.n_features, seed=seed))
        local_epochs = 1 if det == "mlp" else 2
        lr = lr_of[det]
        cfg = FedConfig(rounds=args.rounds, local_epochs=local_epochs, batch_size=batch, lr=lr, seed=seed,
                        eval_every=args.rounds)
        clients, hook = attack_for(aname, st.clients, malicious, n, seed)
        norms: list[float] = []
        if dname.startswith("FedAvg") and fr == 0:
            def hook(cid, delta, rnd, norms=norms):  # records honest update norms of round 0
                if rnd == 0:
                    norms.append(float(np.linalg.norm(delta)))
                return delta
        try:
            agg = make_defence(dname, f_def, bounds.get((det, seed), 1.0), factory, st, lr, batch, local_epochs)
            res = run_federated(factory, clients, agg, cfg, X_val=st.data.X_val, y_val=st.data.y_val,
                                X_test=st.data.X_test, y_test=st.data.y_test, update_hook=hook)
            m = res.final_metrics
            results[(det, dname, aname if fr else "none", fr)].append(
                {"f1": m["f1"], "fpr": m["fpr"], "auc": m.get("roc_auc", float("nan"))})
        except ConfigError as e:
            results[(det, dname, aname if fr else "none", fr)].append({"na": str(e)})
        if norms:
            bounds[(det, seed)] = float(np.median(norms))
    bar.close()
    elapsed = time.perf_counter() - t_start

    def cell(det, d, a, fr, auc=False):
        rs = results.get((det, d, a if fr else "none", fr), [])
        if not rs:
            return "-"
        if any("na" in r for r in rs):
            return "n/a"
        out = []
        for key in (("f1", "fpr", "auc") if auc else ("f1", "fpr")):
            out.append(mean_std([r[key] for r in rs]))
        return " / ".join(out)

    lines = ["# Robustness of defences against poisoning (CICIDS2017, real data)", ""]
    lines += [
        f"Config: {args.clients} clients (IID), {args.train_rows} training rows, {args.rounds} FedAvg rounds x 1 local "
        f"epoch (autoencoder: 2), batch {batch}, Adam lr {lr_of['mlp']} (autoencoder: {lr_of['ae']}), seeds {args.seeds}; test set {len(setups[args.seeds[0]].data.y_test)} rows. "
        f"f = share of malicious clients; defences tolerate f_def = max(1, #malicious). "
        f"Cells: test F1 / FPR (mean±std over seeds). `n/a`: the rule cannot tolerate f_def with n clients "
        f"(Bulyan needs n >= 4f+3) and the API refuses it with ConfigError.",
        measured_line(elapsed, args.quick),
        "",
    ]
    for det, attacks in sections:
        defs = DEFENCES if det == "mlp" else ae_defences
        auc = det == "ae"
        for a in attacks:
            title = "MLP classifier" if det == "mlp" else "Autoencoder (one-class)"
            lines += [f"## {title} -- attack: {a}", ""]
            unit = "F1 / FPR / ROC-AUC" if auc else "F1 / FPR"
            lines.append("| defence | " + " | ".join(f"f = {fr:.0%} ({unit})" for fr in args.fractions) + " |")
            lines.append("|---|" + "---|" * len(args.fractions))
            for d in defs:
                lines.append(f"| {d} | " + " | ".join(cell(det, d, a, fr, auc) for fr in args.fractions) + " |")
            lines.append("")
    bound_txt = ", ".join(f"{k[0]} seed {k[1]}: {v:.4f}" for k, v in sorted(bounds.items()))
    lines += ["Norm-bounding bounds (median honest update L2 norm, round 0): " + bound_txt, ""]
    lines += ["Attacks: sign flip = -3 x delta; scaling = label-flipped data and delta x (n / #malicious); "
              "Gaussian noise = N(0, 0.5^2) per coordinate instead of the update; label flip = all local labels "
              "flipped; attack traffic labelled benign = the AE clients train on their attack rows as benign.", ""]
    text = "\n".join(lines)
    write_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
