"""Communication and time per FedAvg round vs number of clients: plaintext, SecAgg, SecAgg+, CKKS, packed Paillier.

One fixed update length (default L = 12,125, the autoencoder's parameter count) and client
counts ``--clients`` (default 10, 100, 1,000). Per scheme and n, one aggregation round is run
in this process with the project's own protocol code, configured as the FedAvg aggregators
configure it, and every result is checked against the plaintext sum/mean:

* plaintext: ``serialize_vector`` float32 upload, server deserializes and forms the weighted mean
  (``he_table.bench_plaintext``);
* SecAgg (Bonawitz et al. 2017, complete graph, t = n//2 + 1) and SecAgg+ (Bell et al. 2020,
  Harary graph with degree/threshold from ``derive_params(n, 0.1, 0.05)`` -- the
  SecAggAggregator defaults), honest-but-curious mode, 32-bit ring, vector of L + 2 elements
  (the aggregator appends the weight and clip counters): one :func:`secagg.smpc.run_round`;
* CKKS (TenSEAL, preset from ``choose_ckks_preset(L, n)``): every client really encrypts
  (``he_table.bench_ckks``);
* packed Paillier (2048-bit, 16-bit values, the PaillierAggregator default config): 2 clients
  really encrypt; the other clients re-send those ciphertexts under their own ids, so server
  aggregation and decryption are real and checked, and the per-client encryption time is
  measured (``he_table.bench_packed_paillier``).

Columns: upload / download bytes per client per round (serialized messages, all protocol
stages; download excludes the model broadcast, which is the same for every scheme); client
s = one client's compute per round (encrypt + decrypt, or all SecAgg phases); server s;
latency = client s + server s (clients in parallel); sequential = what simulating every client
on one machine costs. Where a configuration is too slow for this shared 2-core machine
(SecAgg's complete graph at n > ``--secagg-max``: O(n^2) key agreements and O(n^2 L) mask
expansion), the row is **extrapolated** by a power-law fit through the two largest measured n
(bytes: linear fit) and marked as such.

Writes ``results/comm_vs_clients.md``, ``.png`` and ``.json`` atomically.
``--quick``: L = 1,000, n in {5, 10}, SecAgg measured up to 5 (10 extrapolated).

Usage: ``python benchmarks/comm_vs_clients.py [--quick] [--length 12125] [--clients 10 100 1000]
[--secagg-max 300] [--out results/comm_vs_clients.md]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import he_table  # noqa: E402  (benchmarks/ is not a package)
from _common import args_dict  # noqa: E402

from secagg.reporting import library_versions, machine_info, machine_line, save_figure, write_json, write_text  # noqa: E402,E501

MAX_WEIGHT = 60  # client weights in [1, 60]: 1,000 clients stay under PaillierConfig's max_total_weight 2**16


class Workload(he_table.Workload):
    """he_table's deterministic workload with weights small enough for 1,000 Paillier clients."""

    def __init__(self, length: int, clients: list[int], seed: int = 0) -> None:
        super().__init__(length, clients, seed)
        rng = np.random.default_rng(seed + 1)
        self.weights = [int(w) for w in rng.integers(1, MAX_WEIGHT + 1, self.n_max)]


def secagg_round(n: int, L: int, plus: bool, seed: int = 0) -> dict[str, Any]:
    """One honest-mode SecAgg(+) round of n clients on L + 2 ring elements (k = 32), checked exactly."""
    from secagg.smpc import PHASES, DropoutSchedule, SessionConfig, derive_params, new_session_id, run_round

    ids = tuple(range(1, n + 1))
    degree, t = None, n // 2 + 1
    if plus and n >= 3:
        p = derive_params(n, 0.1, 0.05)
        if not p.complete:
            degree, t = p.degree, p.threshold
    cfg = SessionConfig(new_session_id(), 0, ids, t, L + 2, modulus_bits=32, degree=degree)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**32, L + 2, dtype=np.uint64).astype(np.uint32)
    inputs = {u: np.roll(base, u) for u in ids}
    rep = run_round(cfg, inputs, DropoutSchedule())
    ref = np.zeros(L + 2, dtype=np.uint32)
    for u in ids:
        ref += inputs[u]
    if not np.array_equal(ref, np.asarray(rep.total, dtype=np.uint32)):
        raise AssertionError(f"SecAgg{'+' if plus else ''} n={n}: masked sum differs from the plaintext sum")
    client_total = sum(rep.phases[p].client_seconds_total for p in PHASES)
    server = sum(rep.phases[p].server_seconds for p in PHASES)
    return dict(up=float(np.mean(list(rep.bytes_up.values()))), down=float(np.mean(list(rep.bytes_down.values()))),
                client_s=client_total / n, server_s=server, sequential_s=rep.wall_seconds,
                degree=cfg.neighbourhood_size - 1, threshold=t, how="measured (full round, sum checked exactly)")


def extrapolate(points: list[tuple[int, dict]], n: int) -> dict[str, Any]:
    """Bytes: linear fit in n through the two largest measured points; times: power law c n^p."""
    (n1, a), (n2, b) = sorted(points, key=lambda p: p[0])[-2:]
    out: dict[str, Any] = {}
    for k in ("up", "down"):
        slope = (b[k] - a[k]) / (n2 - n1)
        out[k] = b[k] + slope * (n - n2)
    for k in ("client_s", "server_s", "sequential_s"):
        if a[k] > 0 and b[k] > 0:
            p = math.log(b[k] / a[k]) / math.log(n2 / n1)
            out[k] = b[k] * (n / n2) ** p
        else:
            out[k] = float("nan")
    out["degree"], out["threshold"] = n - 1, n // 2 + 1
    out["how"] = (f"extrapolated from measured n={n1} and n={n2} (bytes linear in n, times power law; "
                  f"complete graph too slow here: O(n^2) agreements, O(n^2 L) mask expansion)")
    return out


def he_rows(wl: Workload, bar) -> dict[str, dict[int, dict]]:
    from secagg.he.ckks import choose_ckks_preset
    from secagg.he.paillier import PaillierConfig

    out: dict[str, dict[int, dict]] = {"plaintext": {}, "CKKS": {}, "packed Paillier": {}}
    for r in he_table.bench_plaintext(wl, bar):
        out["plaintext"][r.clients] = _he_row(r, "measured")
    # one CKKS preset per n, as CKKSAggregator would choose it
    by_preset: dict[str, list[int]] = {}
    for n in wl.clients:
        by_preset.setdefault(choose_ckks_preset(wl.length, n).name, []).append(n)
    for name, ns in by_preset.items():
        sub = Workload(wl.length, ns)
        sub.weights, sub.seeds = wl.weights[: sub.n_max], wl.seeds[: sub.n_max]
        rows, _ = he_table.bench_ckks(sub, choose_ckks_preset(wl.length, max(ns)), bar)
        for r in rows:
            out["CKKS"][r.clients] = _he_row(r, f"measured ({name}, every client encrypts)")
    rows, _ = he_table.bench_packed_paillier(wl, PaillierConfig(), 2, bar)
    for r in rows:
        out["packed Paillier"][r.clients] = _he_row(
            r, "2 clients encrypt (timed), the others re-send their ciphertexts: aggregation + decryption real; "
               "sequential = per-client encrypt x n")
    return out


def _he_row(r, how: str) -> dict[str, Any]:
    if r.max_err > 1e-3:
        raise AssertionError(f"{r.scheme} n={r.clients}: error {r.max_err} vs plaintext mean")
    return dict(up=r.up_bytes, down=r.down_bytes, client_s=r.enc_client_s + r.dec_s, server_s=r.agg_s,
                sequential_s=r.sequential_s, max_err=r.max_err, how=how)


SCHEMES = ["plaintext", "SecAgg", "SecAgg+", "CKKS", "packed Paillier"]


def plot(table: dict[str, dict[int, dict]], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in SCHEMES:
        pts = sorted(table[s].items())
        ns = [n for n, _ in pts]
        for ax, key in ((axes[0], "up"), (axes[1], "latency")):
            ys = [d["up"] if key == "up" else d["client_s"] + d["server_s"] for _, d in pts]
            line, = ax.plot(ns, ys, marker="o", label=s)
            ext = [(n, y) for (n, d), y in zip(pts, ys) if d["how"].startswith("extrapolated")]
            if ext:
                ax.plot([n for n, _ in ext], [y for _, y in ext], marker="o", ls="none", mfc="white",
                        color=line.get_color(), ms=9)
    axes[0].set_ylabel("upload bytes / client / round")
    axes[1].set_ylabel("round latency, s (client + server; clients in parallel)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients per round")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"Upload per client, L = {args.length:,}")
    axes[1].set_title("Time per round (hollow = extrapolated)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def fmt_b(b: float) -> str:
    return f"{b / 1e6:,.2f} MB" if b >= 1e6 else f"{b / 1e3:,.1f} kB"


def fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "n/a"
    return f"{s:.3g}" if s < 1000 else f"{s:,.0f}"


def render(table, args, elapsed: float, png: Path) -> str:
    plain_bytes = 16 + 4 * args.length
    L = [
        f"# Communication and time per round vs number of clients (L = {args.length:,} values)",
        "",
        f"![bytes and time vs clients]({png.name})",
        "",
        "One aggregation round per scheme and client count, with the project's protocol code configured as "
        "the FedAvg aggregators configure it; every result is checked against the plaintext sum / mean. "
        "Bytes are serialized messages per client per round (all protocol stages; download excludes the "
        "model broadcast, identical for all schemes). client s = one client's compute (SecAgg: all phases; "
        "HE: encrypt + decrypt); server s = the server's compute; latency = client + server (clients in "
        "parallel); sequential = every client simulated on one machine + server. SecAgg: complete graph, "
        "t = n//2+1; SecAgg+: `derive_params(n, dropout 0.1, corruption 0.05)` (the SecAggAggregator "
        "defaults; at n = 10 no sparse graph meets the bounds, so it is the complete graph); both honest mode, "
        "32-bit ring, L + 2 elements, no dropouts. CKKS: TenSEAL, preset from `choose_ckks_preset`. Packed "
        "Paillier: 2048-bit key, 16-bit values, BatchCrypt-style packing (PaillierConfig defaults). Client "
        f"weights are integers in [1, {MAX_WEIGHT}].",
        "",
        machine_line(),
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed / 60:.1f} min"
        + (" (--quick: smoke settings, not results)" if args.quick else "") + ".",
        "",
        "| scheme | clients | upload / client | x float32 | download / client | client s | server s | latency s | sequential s | how |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SCHEMES:
        for n, d in sorted(table[s].items()):
            extra = ""
            if s.startswith("SecAgg"):
                extra = f" (degree {d['degree']}, t = {d['threshold']})"
            L.append(f"| {s}{extra} | {n:,} | {fmt_b(d['up'])} | {d['up'] / plain_bytes:.2f} | {fmt_b(d['down'])} | "
                     f"{fmt_s(d['client_s'])} | {fmt_s(d['server_s'])} | {fmt_s(d['client_s'] + d['server_s'])} | "
                     f"{fmt_s(d['sequential_s'])} | {d['how']} |")
    L += ["", "Regenerate: `python benchmarks/comm_vs_clients.py` (see results/README.md). Numbers in "
          "`results/comm_vs_clients.json`.", ""]
    return "\n".join(L)


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--length", type=int, default=12125)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--secagg-max", type=int, default=300,
                    help="largest n for the complete-graph SecAgg round; larger n are extrapolated")
    ap.add_argument("--secagg-fit", type=int, nargs="*", default=[300],
                    help="extra measured SecAgg n used only for the extrapolation fit (shown in the table)")
    ap.add_argument("--out", type=Path, default=Path("results/comm_vs_clients.md"))
    args = ap.parse_args(argv)
    if args.quick:
        args.length, args.clients, args.secagg_max, args.secagg_fit = 1000, [3, 5, 10], 5, []
    ns = sorted(set(args.clients))
    secagg_ns = sorted({n for n in ns if n <= args.secagg_max} | {n for n in args.secagg_fit if n <= args.secagg_max})
    wl = Workload(args.length, ns)
    total = 3 * wl.n_max + 2 + 2 * len(ns) + len(ns) + len(secagg_ns)
    bar = tqdm(total=total, desc="comm_vs_clients", unit="step")
    t0 = time.perf_counter()
    table: dict[str, dict[int, dict]] = {s: {} for s in SCHEMES}
    for n in ns:
        bar.set_postfix_str(f"SecAgg+ n={n}")
        table["SecAgg+"][n] = secagg_round(n, args.length, plus=True)
        bar.update(1)
    for n in secagg_ns:
        bar.set_postfix_str(f"SecAgg n={n}")
        table["SecAgg"][n] = secagg_round(n, args.length, plus=False)
        bar.update(1)
    measured = sorted(table["SecAgg"].items())
    for n in ns:
        if n not in table["SecAgg"]:
            table["SecAgg"][n] = extrapolate(measured, n)
    bar.set_postfix_str("plaintext / CKKS / Paillier")
    table.update(he_rows(wl, bar))
    bar.close()
    elapsed = time.perf_counter() - t0
    png = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(table, args, png)
    write_json({"args": args_dict(args), "machine": machine_info(), "libraries": library_versions(),
                "elapsed_s": elapsed,
                "table": {s: {str(n): d for n, d in rows.items()} for s, rows in table.items()}},
               args.out.with_suffix(".json"))
    text = render(table, args, elapsed, png)
    write_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
