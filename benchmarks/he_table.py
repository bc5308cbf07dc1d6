"""Cost table of homomorphic aggregation: CKKS-8192, CKKS-16384, packed Paillier, naive Paillier, plaintext.

One run, side by side, for one update length (default 100,000 values) and two client
counts (default 10 and 100). For each scheme and client count it measures:

* encrypt / client: time one client needs to turn its float vector into the upload message
  (for plaintext: ``serialize_vector``); "encrypt all": the sum over all clients (what one
  machine simulating every client pays);
* aggregate: server time to parse and validate every upload and compute the weighted sum;
* decrypt: one client's time to decrypt/decode the aggregate (every client does the same);
* latency = encrypt / client + aggregate + decrypt (clients encrypt in parallel);
  sequential = encrypt all + aggregate + decrypt;
* upload / download bytes per client (serialized messages) and expansion vs float32;
* max abs error of the decrypted mean vs the float64 plaintext weighted mean.

How each row is obtained (also printed under the table):

* plaintext, CKKS: every client really encrypts its own random update; all measured.
* packed Paillier: ``--paillier-clients`` (default 2) clients really encrypt; the other
  clients re-send those ciphertexts under their own ids (cyclically), so aggregation and
  decryption are real and checked for correctness, and "encrypt all" is the measured
  per-client time x n (extrapolated).
* naive Paillier (phe ``encrypt`` per value, 2048-bit): a sample of ``--naive-sample``
  values of each of the ``--paillier-clients`` clients is encrypted (interleaved with their
  packed encryptions, so both see the same machine load), aggregated and decrypted, and
  times are scaled by length / sample (extrapolated); bytes are exact per value
  (512-byte ciphertext + 4-byte exponent).

Writes ``results/he_table.md`` atomically (tmp file + os.replace). ``--quick`` runs a
small configuration (10,000 values, 5 and 10 clients) for smoke testing.

``--precision`` instead measures the CKKS error of the weighted mean against client count
(1..1000) and input magnitude, the evidence for the presets' stated bounds
(``results/he_precision.md``).

Usage: ``python benchmarks/he_table.py [--quick] [--length N] [--clients 10 100] [--out PATH] [--precision]``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from secagg.fl.aggregator import deserialize_vector, serialize_vector
from secagg.he.ckks import CKKS_8192, CKKS_16384, CKKSClient, CKKSKeyHolder, CKKSPreset, CKKSServer
from secagg.he.paillier import PaillierClient, PaillierConfig, PaillierKeyHolder, PaillierServer
from secagg.reporting import machine_line, write_text

MAX_WEIGHT = 100  # client weights (example counts) are drawn from [1, MAX_WEIGHT]
HE_LIBRARIES = ("numpy", "tenseal", "phe", "gmpy2")  # what secagg.he runs on (named in the machine line)


@dataclass
class Row:
    scheme: str
    clients: int
    enc_client_s: float
    enc_all_s: float
    agg_s: float
    dec_s: float
    up_bytes: float
    down_bytes: float
    length: int
    max_err: float
    how: str

    @property
    def latency_s(self) -> float:
        return self.enc_client_s + self.agg_s + self.dec_s

    @property
    def sequential_s(self) -> float:
        return self.enc_all_s + self.agg_s + self.dec_s

    @property
    def expansion(self) -> float:
        return self.up_bytes / (4.0 * self.length)


class Workload:
    """Deterministic per-client updates and weights, and the plaintext weighted means."""

    def __init__(self, length: int, clients: list[int], seed: int = 0) -> None:
        self.length = length
        self.clients = sorted(clients)
        rng = np.random.default_rng(seed)
        self.n_max = max(clients)
        self.weights = [int(w) for w in rng.integers(1, MAX_WEIGHT + 1, self.n_max)]
        self.seeds = [int(s) for s in rng.integers(0, 2**63 - 1, self.n_max)]

    def update(self, i: int) -> np.ndarray:
        return np.random.default_rng(self.seeds[i]).uniform(-1.0, 1.0, self.length)

    def reference(self, n: int, source=None) -> np.ndarray:
        """Weighted mean of clients 0..n-1; ``source(i)`` gives the update client i sends."""
        src = source or self.update
        acc = np.zeros(self.length)
        for i in range(n):
            acc += self.weights[i] * src(i)
        return acc / sum(self.weights[:n])


def bench_plaintext(wl: Workload, bar) -> list[Row]:
    rows = []
    for n in wl.clients:
        enc, msgs = [], []
        for i in range(n):
            x = wl.update(i).astype(np.float32)
            t0 = time.perf_counter()
            msgs.append(serialize_vector(x))
            enc.append(time.perf_counter() - t0)
            bar.update(1)
        t0 = time.perf_counter()
        acc = np.zeros(wl.length)
        for i, m in enumerate(msgs):
            acc += wl.weights[i] * deserialize_vector(m).astype(np.float64)
        mean = acc / sum(wl.weights[:n])
        down = serialize_vector(mean.astype(np.float32))
        agg = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = deserialize_vector(down)
        dec = time.perf_counter() - t0
        err = float(np.max(np.abs(out - wl.reference(n))))
        rows.append(Row("plaintext numpy (float32)", n, float(np.mean(enc)), float(np.sum(enc)), agg, dec, float(np.mean([len(m) for m in msgs])), len(down), wl.length, err, "all measured"))
    return rows


def bench_ckks(wl: Workload, preset: CKKSPreset, bar) -> tuple[list[Row], float]:
    t0 = time.perf_counter()
    kh = CKKSKeyHolder(preset)
    pub, sec = kh.public_bundle(), kh.secret_bundle()
    keygen = time.perf_counter() - t0
    client = CKKSClient(sec, value_bound=1.0)
    rounds = {n: CKKSServer(pub).open_round(0, {i: wl.weights[i] for i in range(n)}, wl.length) for n in wl.clients}
    enc, up = [], []
    agg = dict.fromkeys(wl.clients, 0.0)
    for i in range(wl.n_max):
        x = wl.update(i)
        t0 = time.perf_counter()
        msg = client.encrypt(x, round_index=0, client_id=i)
        enc.append(time.perf_counter() - t0)
        up.append(len(msg))
        for n, rnd in rounds.items():
            if i < n:
                t0 = time.perf_counter()
                rnd.add(msg)
                agg[n] += time.perf_counter() - t0
        bar.update(1)
    rows = []
    for n, rnd in rounds.items():
        t0 = time.perf_counter()
        down = rnd.finish()
        agg[n] += time.perf_counter() - t0
        t0 = time.perf_counter()
        res = client.decrypt(down, round_index=0)
        dec = time.perf_counter() - t0
        err = float(np.max(np.abs(res.mean - wl.reference(n))))
        rows.append(Row(preset.name, n, float(np.mean(enc[:n])), float(np.sum(enc[:n])), agg[n], dec, float(np.mean(up[:n])), len(down), wl.length, err, "all measured"))
    return rows, keygen


def bench_packed_paillier(wl: Workload, cfg: PaillierConfig, measured_clients: int, bar, between=None) -> tuple[list[Row], float]:
    t0 = time.perf_counter()
    kh = PaillierKeyHolder(cfg)
    pub, sec = kh.public_bundle(), kh.secret_bundle()
    keygen = time.perf_counter() - t0
    client = PaillierClient(sec)
    m = max(1, min(measured_clients, wl.n_max))
    enc, msgs = [], []
    for i in range(m):
        x = wl.update(i)
        t0 = time.perf_counter()
        msgs.append(client.encrypt(x, round_index=0, client_id=i))
        enc.append(time.perf_counter() - t0)
        bar.update(1)
        if between is not None:
            between(i)
    from secagg.he.messages import HEMessage
    import dataclasses

    parsed = [HEMessage.from_bytes(b) for b in msgs]
    rows = []
    for n in wl.clients:
        rnd = PaillierServer(pub).open_round(0, {i: wl.weights[i] for i in range(n)}, wl.length)
        # client i re-sends the ciphertexts of measured client i % m under its own id (relabelling is not timed)
        uploads = [dataclasses.replace(parsed[i % m], sender=i).to_bytes() for i in range(n)]
        t0 = time.perf_counter()
        for u in uploads:
            rnd.add(u)
        down = rnd.finish()
        agg = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = client.decrypt(down, round_index=0)
        dec = time.perf_counter() - t0
        bar.update(1)
        err = float(np.max(np.abs(res.mean - wl.reference(n, source=lambda i: wl.update(i % m)))))
        how = (f"{m} client(s) really encrypted; the other clients re-send those ciphertexts under their own ids, so aggregate "
               "and decrypt are real and checked against the matching plaintext mean; encrypt all = per-client time x n (extrapolated)")
        rows.append(Row(f"packed Paillier-{cfg.key_bits} ({cfg.slots_per_ciphertext} values/ct)", n, float(np.mean(enc)), float(np.mean(enc)) * n, agg, dec, float(np.mean([len(b) for b in msgs])), len(down), wl.length, err, how))
    return rows, keygen


class NaivePaillier:
    """Per-value phe Paillier on a sample; client encryptions are timed one at a time so the
    caller can interleave them with the packed-Paillier encryptions (same machine load)."""

    def __init__(self, wl: Workload, key_bits: int, sample: int) -> None:
        from phe import paillier

        self.wl, self.key_bits = wl, key_bits
        self.pk, self.sk = paillier.generate_paillier_keypair(n_length=key_bits)
        self.s = min(sample, wl.length)
        self.enc_t: list[float] = []
        self.encs: list[list] = []
        self.per_value_bytes = 0.0

    def encrypt_client(self, i: int) -> None:
        ct_bytes = 2 * self.key_bits // 8
        x = self.wl.update(i)[: self.s]
        t0 = time.perf_counter()
        e = [self.pk.encrypt(float(v)) for v in x]
        blob = b"".join(c.ciphertext(be_secure=False).to_bytes(ct_bytes, "big") + int(c.exponent).to_bytes(4, "big", signed=True) for c in e)
        self.enc_t.append(time.perf_counter() - t0)
        self.encs.append(e)
        self.per_value_bytes = len(blob) / self.s

    def rows(self, bar) -> list[Row]:
        wl, s, m = self.wl, self.s, len(self.encs)
        scale = wl.length / s
        rows = []
        for n in wl.clients:
            t0 = time.perf_counter()
            acc = None
            for i in range(n):
                w = wl.weights[i]
                terms = [c * w for c in self.encs[i % m]]
                acc = terms if acc is None else [a + t for a, t in zip(acc, terms)]
            agg = time.perf_counter() - t0
            W = sum(wl.weights[:n])
            t0 = time.perf_counter()
            mean = np.array([self.sk.decrypt(a) for a in acc]) / W
            dec = time.perf_counter() - t0
            ref = np.zeros(s)
            for i in range(n):
                ref += wl.weights[i] * wl.update(i % m)[:s]
            err = float(np.max(np.abs(mean - ref / W)))
            bar.update(1)
            how = (f"sample of {s} values x {m} client(s) timed (interleaved with the packed-Paillier encryptions), "
                   f"scaled x {scale:.0f} to the full length (extrapolated); clients beyond {m} re-send those ciphertexts")
            enc_client = float(np.mean(self.enc_t)) * scale
            total_bytes = self.per_value_bytes * wl.length
            rows.append(Row(f"naive Paillier-{self.key_bits} (1 value/ct)", n, enc_client, enc_client * n, agg * scale, dec * scale, total_bytes, total_bytes, wl.length, err, how))
        return rows


def _fmt_s(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def _fmt_b(v: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= div:
            return f"{v / div:.3g} {unit}"
    return f"{v:.0f} B"


def render(rows: list[Row], notes: list[str], header: str) -> str:
    cols = ["scheme", "clients", "encrypt / client (s)", "encrypt all clients (s)", "aggregate (s)", "decrypt (s)",
            "latency enc+agg+dec (s)", "sequential total (s)", "upload / client", "download / client", "expansion vs float32", "max abs error"]
    out = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join([
            r.scheme, str(r.clients), _fmt_s(r.enc_client_s), _fmt_s(r.enc_all_s), _fmt_s(r.agg_s), _fmt_s(r.dec_s),
            _fmt_s(r.latency_s), _fmt_s(r.sequential_s), _fmt_b(r.up_bytes), _fmt_b(r.down_bytes), f"{r.expansion:.3g}x", f"{r.max_err:.2e}",
        ]) + " |")
    out.append("")
    out.append("How each row was measured:")
    seen = set()
    for r in rows:
        if (r.scheme, r.how) not in seen:
            seen.add((r.scheme, r.how))
            out.append(f"- {r.scheme}: {r.how}")
    out.append("")
    out.extend(notes)
    return "\n".join(out) + "\n"


def precision_study(out: Path, counts: list[int]) -> str:
    """Worst CKKS error of the weighted mean vs client count and magnitude (one chunk of N/2 values).

    Backs the stated bounds of the presets; writes ``out`` atomically.
    """
    lines = ["# CKKS precision of the weighted mean (measured)", "",
             "| preset | clients | max abs input | max abs error | stated bound | bound / error |", "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(1)
    tasks = [(p, n, amp) for p in (CKKS_8192, CKKS_16384) for n in counts for amp in (1e-3, 1.0, 6.5e4)]
    with tqdm(total=sum(n for _, n, _ in tasks), desc="precision", unit="client") as bar:
        for preset, n, amp in tasks:
            kh = CKKSKeyHolder(preset)
            client = CKKSClient(kh.secret_bundle(), value_bound=amp)
            weights = {i: int(w) for i, w in enumerate(rng.integers(1, 1000, n))}
            rnd = CKKSServer(kh.public_bundle()).open_round(0, weights, preset.slots)
            acc = np.zeros(preset.slots)
            for i, w in weights.items():
                x = rng.uniform(-amp, amp, preset.slots)
                acc += w * x
                rnd.add(client.encrypt(x, round_index=0, client_id=i))
                bar.update(1)
            res = client.decrypt(rnd.finish())
            err = float(np.max(np.abs(res.mean - acc / sum(weights.values()))))
            lines.append(f"| {preset.name} | {n} | {amp:g} | {err:.2e} | {res.error_bound:.2e} | {res.error_bound / err:.0f}x |")
    text = "\n".join(lines) + "\n"
    write_text(text, out)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run: 10,000 values, 5 and 10 clients")
    ap.add_argument("--length", type=int, default=None, help="update length (default 100000; quick 10000)")
    ap.add_argument("--clients", type=int, nargs="+", default=None, help="client counts (default 10 100; quick 5 10)")
    ap.add_argument("--paillier-bits", type=int, default=2048, choices=(2048, 3072))
    ap.add_argument("--paillier-clients", type=int, default=None, help="clients that really encrypt under packed Paillier (default 2; quick 1)")
    ap.add_argument("--naive-sample", type=int, default=None, help="values encrypted by naive Paillier (default 200; quick 40)")
    ap.add_argument("--out", type=Path, default=Path("results/he_table.md"))
    ap.add_argument("--precision", action="store_true", help="instead: CKKS error vs client count (1, 10, 100, 1000; quick 1, 10) -> results/he_precision.md")
    args = ap.parse_args(argv)
    if args.precision:
        out = args.out if args.out != Path("results/he_table.md") else Path("results/he_precision.md")
        print(precision_study(out, [1, 10] if args.quick else [1, 10, 100, 1000]))
        return 0
    length = args.length or (10_000 if args.quick else 100_000)
    clients = sorted(set(args.clients or ([5, 10] if args.quick else [10, 100])))
    pai_m = args.paillier_clients or (1 if args.quick else 2)
    naive_s = args.naive_sample or (40 if args.quick else 200)
    wl = Workload(length, clients)
    n_max = max(clients)
    cfg = PaillierConfig(key_bits=args.paillier_bits, value_bits=16, clip=1.0, max_total_weight=MAX_WEIGHT * n_max)
    steps = sum(clients) + 2 * n_max + pai_m + len(clients) + pai_m + len(clients)
    rows: list[Row] = []
    keygen: dict[str, float] = {}
    t_start = time.perf_counter()
    with tqdm(total=steps, desc="he_table", unit="step") as bar:
        bar.set_postfix_str("plaintext")
        rows += bench_plaintext(wl, bar)
        for preset in (CKKS_8192, CKKS_16384):
            bar.set_postfix_str(preset.name)
            r, keygen[preset.name] = bench_ckks(wl, preset, bar)
            rows += r
        bar.set_postfix_str("packed Paillier")
        naive = NaivePaillier(wl, args.paillier_bits, naive_s)

        def naive_step(i: int) -> None:
            naive.encrypt_client(i)
            bar.update(1)

        r, keygen["packed Paillier"] = bench_packed_paillier(wl, cfg, pai_m, bar, between=naive_step)
        rows += r
        bar.set_postfix_str("naive Paillier")
        rows += naive.rows(bar)
    wall = time.perf_counter() - t_start

    by = {(r.scheme.split(" (")[0], r.clients): r for r in rows}
    packed_name = f"packed Paillier-{cfg.key_bits}"
    naive_name = f"naive Paillier-{cfg.key_bits}"
    notes = ["Targets (measured in this run):"]
    for n in clients:
        p, q, c = by[(packed_name, n)], by[(naive_name, n)], by[("ckks-8192", n)]
        notes.append(
            f"- {n} clients: packed vs naive Paillier: encrypt/client {q.enc_client_s / p.enc_client_s:.0f}x faster, "
            f"latency {q.latency_s / p.latency_s:.0f}x faster, sequential {q.sequential_s / p.sequential_s:.0f}x faster, "
            f"upload {q.up_bytes / p.up_bytes:.0f}x fewer bytes (target >= 20x each)"
        )
        notes.append(
            f"- {n} clients: CKKS-8192 encrypt(one client)+aggregate+decrypt = {c.latency_s:.2f} s; "
            f"all {n} encryptions on one machine + aggregate + decrypt = {c.sequential_s:.2f} s (target < 10 s)"
        )
    notes += [
        "",
        f"Setup (once, not in the table): key generation " + ", ".join(f"{k} {v:.2f} s" for k, v in keygen.items()) + ".",
        f"Packed Paillier: {cfg.key_bits}-bit key, {cfg.value_bits}-bit values, clip {cfg.clip}, slot {cfg.slot_bits} bits "
        f"(headroom for total weight <= {cfg.max_total_weight}), {cfg.slots_per_ciphertext} values per ciphertext, "
        f"quantization error bound {cfg.error_bound:.2e}.",
        f"CKKS presets: {CKKS_8192.name} coeff_mod {list(CKKS_8192.coeff_mod_bit_sizes)} scale 2^{CKKS_8192.scale_bits}; "
        f"{CKKS_16384.name} coeff_mod {list(CKKS_16384.coeff_mod_bit_sizes)} scale 2^{CKKS_16384.scale_bits}.",
        f"Workload: {length:,} values uniform in [-1, 1] per client, integer weights in [1, {MAX_WEIGHT}]; "
        f"bytes are serialized message sizes (framing included).",
        machine_line(HE_LIBRARIES) + f" Run took {wall:.0f} s" + (" (--quick)" if args.quick else "") + ".",
    ]
    header = f"# Homomorphic aggregation costs: {length:,}-value update, {' and '.join(map(str, clients))} clients"
    text = render(rows, notes, header)
    write_text(text, args.out)
    print(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
