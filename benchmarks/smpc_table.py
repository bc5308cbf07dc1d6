"""Cost table of masked secure aggregation (SecAgg and SecAgg+) next to a plaintext numpy sum.

For each graph (complete = Bonawitz SecAgg; SecAgg+ = random Harary graph with degree and
threshold from :func:`secagg.smpc.derive_params`), each client count n and each dropout
fraction, one full round of :func:`secagg.smpc.run_round` is run in this process with
vectors of ``--length`` uint32 elements (k = 32, so an element is as large as a float32).
Dropped clients drop *after ShareKeys, before sending their masked input* -- the
expensive case for the server, which must reconstruct their mask keys and remove their
pairwise masks. Every sum is checked against the plaintext ring sum of the survivors.

Columns (times in seconds, sizes in bytes; "per client" = mean over clients that acted):

* ``round``: wall time of the whole simulated round (all n clients run sequentially here,
  so this is the *sequential* cost; in a deployment clients run in parallel);
* ``client/cl``: one client's total compute over all phases; ``mask/cl``: its MaskedInput
  phase (agreements + mask expansion + adds);
* ``server``: the server's total compute (receiving, summing, unmasking);
* ``plain acc``: in-place ``acc += v`` over n float32 vectors of length L (the fastest
  plaintext server sum), ``plain stack``: ``np.stack(vs).sum(0)`` as the plaintext FedAvg
  aggregator computes it; both measured in the same run;
* ``mask/acc``, ``mask/stack``: ``mask/cl`` divided by ``plain acc`` / ``plain stack`` -- the
  masking overhead of one client relative to the plaintext sum of all n updates (target <= 10);
* ``up/cl``, ``down/cl``: serialized protocol bytes, mean over the survivors (all phases); ``expansion``: ``up/cl`` / float32
  plaintext upload (``serialize_vector``: 16 + 4L bytes; target <= 1.1 at L = 100,000).

A second table gives per-phase client (mean, max) and server times and bytes.

The machine is shared (2 cores, several users): load average is printed with the table;
compare rows of one run only. Writes ``results/smpc_table.md`` atomically (tmp + os.replace).

Usage: ``python benchmarks/smpc_table.py [--quick] [--length N] [--clients 10 100 500]
[--plus-clients 10 100 500 1000] [--dropouts 0 0.1 0.3] [--out PATH]``
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from secagg.reporting import machine_line, write_text
from secagg.smpc import (
    PHASES,
    DropoutSchedule,
    SessionConfig,
    derive_params,
    generate_identity,
    identity_public_bytes,
    new_session_id,
    run_round,
)

SMPC_LIBRARIES = ("numpy", "cryptography", "scipy")  # what secagg.smpc runs on (named in the machine line)


@dataclass
class Row:
    scheme: str
    n: int
    L: int
    degree: int
    t: int
    dropout: float
    survivors: int
    round_s: float
    client_s: float
    mask_s: float
    server_s: float
    plain_s: float
    plain_stack_s: float
    up: float
    down: float
    expansion: float
    exact: bool
    phases: dict


def plaintext_sum_seconds(n: int, L: int, reps: int = 3) -> tuple[float, float]:
    """Best-of-``reps`` seconds to sum n float32 vectors of length L in the clear:
    (in-place accumulation ``acc += v``, ``np.stack`` + ``sum`` as the plaintext FedAvg aggregator does)."""
    rng = np.random.default_rng(0)
    vecs = [rng.standard_normal(L, dtype=np.float32) for _ in range(min(n, 64))]
    stack = [vecs[i % len(vecs)] for i in range(n)]
    acc_best = stk_best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        acc = np.zeros(L, dtype=np.float32)
        for v in stack:
            np.add(acc, v, out=acc)
        acc_best = min(acc_best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        np.stack(stack).sum(axis=0)
        stk_best = min(stk_best, time.perf_counter() - t0)
    return acc_best, stk_best


def one(scheme: str, n: int, L: int, dropout: float, seed: int, corruption: float = 0.0) -> Row:
    ids = tuple(range(1, n + 1))
    active = scheme.endswith("active")
    idk = {u: generate_identity() for u in ids} if active else {}
    if scheme.startswith("SecAgg+"):
        p = derive_params(n, dropout_rate=dropout + 0.05, corruption_rate=corruption)
        degree, t = (None, n // 2 + 1) if p.complete else (p.degree, p.threshold)
    else:
        degree, t = None, (2 * n // 3 + 1 if active else n // 2 + 1)
    cfg = SessionConfig(new_session_id(), 0, ids, t, L, degree=degree, mode="active" if active else "honest",
                        identity_keys={u: identity_public_bytes(k) for u, k in idk.items()})
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**32, L, dtype=np.uint64).astype(np.uint32)
    # every client gets a distinct input without n full random draws: base rolled by id
    inputs = {u: np.roll(base, u) for u in ids}
    sched = DropoutSchedule.fraction_at(ids, dropout, "masked_input", rng)
    plain, plain_stack = plaintext_sum_seconds(n, L)
    rep = run_round(cfg, inputs, sched, idk)
    ref = np.zeros(L, dtype=np.uint32)
    for u in rep.survivors:
        ref += inputs[u]
    exact = bool(np.array_equal(ref, rep.total))
    acting = list(rep.survivors)  # clients that took part in every phase they were asked to
    ph = rep.phases
    client_total = sum(ph[p].client_seconds_total for p in PHASES)
    n_act = max(1, ph["advertise"].clients)
    plain_up = 16 + 4 * L
    up = float(np.mean([rep.bytes_up[u] for u in acting]))
    return Row(
        scheme=scheme,
        n=n,
        L=L,
        degree=cfg.neighbourhood_size - 1,
        t=t,
        dropout=dropout,
        survivors=len(rep.survivors),
        round_s=rep.wall_seconds,
        client_s=client_total / n_act,
        mask_s=ph["masked_input"].client_seconds_mean,
        server_s=sum(ph[p].server_seconds for p in PHASES),
        plain_s=plain,
        plain_stack_s=plain_stack,
        up=up,
        down=float(np.mean([rep.bytes_down[u] for u in acting])),
        expansion=up / plain_up,
        exact=exact,
        phases={p: (ph[p].client_seconds_mean, ph[p].client_seconds_max, ph[p].server_seconds,
                    ph[p].bytes_up / max(1, ph[p].clients), ph[p].bytes_down / max(1, ph[p].clients)) for p in PHASES},
    )


def fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def render(rows: list[Row], L: int, elapsed: float, load0) -> str:
    out = [
        "# Masked secure aggregation cost (secagg.smpc)",
        "",
        f"Vector length L = {L:,} unless the L column says otherwise (k = 32-bit ring, 4 bytes/element); "
        "dropped clients drop after ShareKeys "
        "(before their masked input). Times in seconds on this machine; all clients are simulated "
        "sequentially in one process, so `round` is the sequential cost of the whole federation. "
        "SecAgg: complete graph, t = floor(n/2)+1. SecAgg+: degree k and t from `derive_params(n, "
        "dropout_rate=dropout+0.05, corruption_rate=0)` (sigma=40, eta=20; falls back to the complete graph "
        "when no sparser graph meets the bounds); the `SecAgg+ target` row uses corruption_rate=0.05. "
        "`SecAgg active`: active-adversary mode (Ed25519-signed keys, consistency check), t = floor(2n/3)+1.",
        "",
        machine_line(SMPC_LIBRARIES) + f" Load average at the start: {load0[0]:.2f}. "
        f"Run took {elapsed:.0f} s on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| scheme | n | L | k (nbrs) | t | dropout | survivors | round | client/cl | mask/cl | server | plain acc | plain stack | mask/acc | mask/stack | up/cl | down/cl | expansion | exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.scheme} | {r.n} | {r.L:,} | {r.degree} | {r.t} | {r.dropout:.0%} | {r.survivors} | {r.round_s:.3g} | {r.client_s:.3g} | "
            f"{r.mask_s:.3g} | {r.server_s:.3g} | {r.plain_s:.3g} | {r.plain_stack_s:.3g} | {r.mask_s / r.plain_s:.1f} | {r.mask_s / r.plain_stack_s:.1f} | {fmt_bytes(r.up)} | "
            f"{fmt_bytes(r.down)} | {r.expansion:.3f} | {'yes' if r.exact else 'NO'} |"
        )
    out += [
        "",
        "## Per phase (client mean / client max / server seconds; bytes per acting client up / down)",
        "",
        "| scheme | n | dropout | " + " | ".join(PHASES) + " |",
        "|---|---:|---:|" + "---|" * len(PHASES),
    ]
    for r in rows:
        cells = []
        for p in PHASES:
            cm, cx, sv, bu, bd = r.phases[p]
            if cm == 0 and sv == 0 and bu == 0:
                cells.append("-")
            else:
                cells.append(f"{cm:.3g} / {cx:.3g} / {sv:.3g}; {fmt_bytes(bu)} / {fmt_bytes(bd)}")
        out.append(f"| {r.scheme} | {r.n} | {r.dropout:.0%} | " + " | ".join(cells) + " |")
    out += [
        "",
        "`consistency` is empty in honest mode (it is the signed survivor-list round of active mode).",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (L=10,000; n in 10, 50; SecAgg+ 100)")
    ap.add_argument("--length", type=int, default=100_000)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 500])
    ap.add_argument("--plus-clients", type=int, nargs="+", default=[10, 100, 500, 1000])
    ap.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--active-clients", type=int, nargs="*", default=[100], help="n for active-mode SecAgg rows")
    ap.add_argument("--no-target", action="store_true", help="skip the SecAgg+ 1,000 x 10,000 target row")
    ap.add_argument("--out", type=Path, default=Path("results/smpc_table.md"))
    a = ap.parse_args(argv)
    if a.quick:
        a.length, a.clients, a.plus_clients, a.active_clients = 10_000, [10, 50], [100], [20]
    jobs = [("SecAgg", n, a.length, d, 0.0) for n in a.clients for d in a.dropouts]
    jobs += [("SecAgg+", n, a.length, d, 0.0) for n in a.plus_clients for d in a.dropouts]
    jobs += [("SecAgg active", n, a.length, d, 0.0) for n in a.active_clients for d in a.dropouts]
    if not a.no_target:  # issue target: SecAgg+ 1,000 clients x 10,000 with 5% dropout < 60 s
        jobs.append(("SecAgg+ target", 100 if a.quick else 1000, 10_000, 0.05, 0.05))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    for i, (scheme, n, L, d, g) in enumerate(tqdm(jobs, desc="smpc table", unit="round")):
        rows.append(one(scheme, n, L, d, seed=i, corruption=g))
        write_text(render(rows, a.length, time.perf_counter() - t0, load0), a.out)
    text = render(rows, a.length, time.perf_counter() - t0, load0)
    write_text(text, a.out)
    print(text)
    return 0 if all(r.exact for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
