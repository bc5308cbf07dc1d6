"""Masked secure aggregation (Bonawitz et al. 2017 / SecAgg+) as a FedAvg :class:`Aggregator`.

:class:`SecAggAggregator` runs, inside one process, a full :mod:`secagg.smpc` round per
FedAvg round: every client fixed-point encodes its example-weighted delta, masks it and
takes part in key sharing and unmasking; the server learns only the sum.

What is summed securely (vector of length L + 2 in Z_{2^k}):
``[w_i * q(delta_i) (L values), w_i, clipped_i]`` -- so the total weight of the survivors
(for exact de-weighting) and the number of clipped values are also computed under
masking; the server never sees an individual client's weight or clip count.
The returned delta is ``sum(w_i q_i) / (scale * sum(w_i))`` over the protocol's
survivors (``included``); clients that drop out *inside* the protocol (option
``dropout``) are excluded exactly, as the protocol guarantees.

Threat model: :mod:`secagg.smpc` (``mode='honest'``: honest-but-curious server;
``mode='active'``: signed keys + consistency check against a deviating server, with
3t > 2m and at most 2t - m - 1 colluding share holders per neighbourhood; honest mode:
fewer than t colluding clients, and only against a server that follows the protocol).
In this simulation one process plays every party; only the aggregate leaves the
protocol objects.

Accounting: ``upload_bytes`` / ``download_bytes`` are the exact serialized protocol
messages of each client (all stages, dropped clients included with what they sent).
Metrics: ``smpc_clipped_values``, ``smpc_total_weight``, ``smpc_survivors``,
``smpc_dropped_in_protocol``, ``smpc_modulus_bits``, ``smpc_threshold``, ``smpc_degree``,
``smpc_round_s``, ``smpc_<phase>_client_s`` (sum over clients), ``smpc_<phase>_server_s``,
``smpc_expansion_vs_float32`` (mean upload / plaintext ``serialize_vector`` size).

Costs per round: client O(d L) with d = n-1 (SecAgg) or O(log n) (SecAgg+) neighbours;
server O(n L + |dropped| d L); see docs/smpc.md for measured numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from secagg.encoding import FixedPointConfig, encode, to_signed
from secagg.errors import ConfigError
from secagg.fl.aggregator import HEADER_BYTES, AggregateResult, Aggregator, ClientUpdate, check_updates
from secagg.smpc import (
    PHASES,
    DropoutSchedule,
    SessionConfig,
    generate_identity,
    identity_public_bytes,
    new_session_id,
    plan_session,
    run_round,
)

__all__ = ["SecAggOptions", "SecAggAggregator"]


def protocol_ids(client_ids: Sequence[int], mode: str, identities: dict[int, object]) -> tuple[dict[int, int], dict[int, int], dict[int, object]]:
    """Map a round's FL client ids (in the given order) to protocol ids 1..n (the Shamir
    x-coordinates) and back; in active mode also return each protocol id's long-term Ed25519
    identity, created on first use and kept in ``identities`` (keyed by FL client id) so a
    client signs with the same key in every round."""
    pid = {c: i + 1 for i, c in enumerate(client_ids)}
    back = {v: k for k, v in pid.items()}
    idk: dict[int, object] = {}
    if mode == "active":
        for c in client_ids:
            if c not in identities:
                identities[c] = generate_identity()
            idk[pid[c]] = identities[c]
    return pid, back, idk


@dataclass(frozen=True)
class SecAggOptions:
    """Options of :class:`SecAggAggregator`.

    mode: 'honest' or 'active' (Ed25519 signatures + consistency check).
    secagg_plus: use a sparse Harary graph with degree/threshold from
        :func:`secagg.smpc.derive_params` in ``mode`` (falls back to the complete graph when
        no sparse graph meets the bounds, e.g. small n). Degree and t come from
        :func:`secagg.smpc.plan_session`, the rule the Flower workflow uses too.
    threshold: Shamir threshold t; None = default: sparse SecAgg+ graph -> the derived t;
        complete graph (plain SecAgg, or the SecAgg+ fallback) -> floor(n/2)+1 honest,
        floor(2n/3)+1 active. Must satisfy m/2 < t <= m, and 3t > 2m in active mode
        (m = neighbourhood size).
    bits, clip: fixed-point quantization bits and clipping range (see secagg.encoding).
    modulus_bits: ring size k; None = 32 if the bit budget fits (upload = float32 size), else 64.
    dropout: probability that a client drops inside the protocol (simulation), at a
        phase drawn from ``dropout_phases``.
    dropout_rate_design, corruption_rate, sigma, eta: SecAgg+ parameter derivation inputs.
    weighted: weight deltas by num_examples (FedAvg) or give every client weight 1.
    seed: seed of the *simulation* generator for in-protocol dropouts (never key material).
    """

    mode: str = "honest"
    secagg_plus: bool = False
    threshold: int | None = None
    bits: int = 16
    clip: float = 1.0
    modulus_bits: int | None = None
    dropout: float = 0.0
    dropout_phases: tuple[str, ...] = PHASES
    dropout_rate_design: float = 0.1
    corruption_rate: float = 0.05
    sigma: int = 40
    eta: int = 20
    weighted: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("honest", "active"):
            raise ConfigError(f"mode must be 'honest' or 'active', got {self.mode!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not set(self.dropout_phases) <= set(PHASES) or not self.dropout_phases:
            raise ConfigError(f"dropout_phases must be a non-empty subset of {PHASES}, got {self.dropout_phases!r}")
        if self.threshold is not None and not (isinstance(self.threshold, int) and self.threshold >= 1):
            raise ConfigError(f"threshold must be None or an int >= 1, got {self.threshold!r}")
        if self.modulus_bits is not None and not (isinstance(self.modulus_bits, int) and 8 <= self.modulus_bits <= 64):
            raise ConfigError(f"modulus_bits must be None or an int in [8, 64], got {self.modulus_bits!r}")
        FixedPointConfig(clip=self.clip, bits=self.bits, modulus_bits=max(self.modulus_bits or 64, self.bits + 1))


class SecAggAggregator(Aggregator):
    """Weighted FedAvg mean through a full Bonawitz/SecAgg+ round. See the module docstring."""

    name = "secagg"
    needs_individual_updates = False
    hides_individual_updates = True  # the server learns only the masked sum

    def __init__(self, options: SecAggOptions | None = None, **kwargs) -> None:
        if options is not None and kwargs:
            raise ConfigError("pass either options or keyword arguments, not both")
        self.options = options or SecAggOptions(**kwargs)
        self._rng = np.random.default_rng(self.options.seed)
        self._identities: dict[int, object] = {}  # long-term Ed25519 keys per FL client id (active mode)
        if self.options.secagg_plus:
            self.name = "secagg+"

    def _fixed_point(self, n: int, max_w: int, L: int) -> FixedPointConfig:
        o = self.options
        k = o.modulus_bits or FixedPointConfig.smallest_modulus(o.bits, n, max_w)
        fp = FixedPointConfig(clip=o.clip, bits=o.bits, modulus_bits=k)
        fp.check_budget(n, max_w)
        if 2 * n * max(L, max_w) >= 2**k:
            raise ConfigError(f"modulus_bits={k} too small for the weight/clip counters: n={n}, L={L}, max_weight={max_w}")
        return fp

    def _graph(self, n: int) -> tuple[int | None, int]:
        o = self.options
        return plan_session(n, mode=o.mode, secagg_plus=o.secagg_plus, threshold=o.threshold,
                            dropout_rate=o.dropout_rate_design, corruption_rate=o.corruption_rate, sigma=o.sigma, eta=o.eta)

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        o = self.options
        L = check_updates(updates)
        n = len(updates)
        if n < 2:
            raise ConfigError("secure aggregation needs at least 2 clients in a round")
        ups = sorted(updates, key=lambda u: u.client_id)
        weights = [int(u.num_examples) if o.weighted else 1 for u in ups]
        fp = self._fixed_point(n, max(weights), L)
        degree, t = self._graph(n)
        pid, back, idk = protocol_ids([u.client_id for u in ups], o.mode, self._identities)
        cfg = SessionConfig(
            session_id=new_session_id(),
            round_id=int(round_index) % 2**32,
            client_ids=tuple(range(1, n + 1)),
            threshold=t,
            vector_length=L + 2,
            modulus_bits=fp.modulus_bits,
            mode=o.mode,
            degree=degree,
            identity_keys={p: identity_public_bytes(k) for p, k in idk.items()},
        )
        rr = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # rounding noise
        inputs = {}
        dt = fp.dtype
        for u, w in zip(ups, weights):
            e = encode(u.delta, fp, weight=w, rng=rr)
            vec = np.empty(L + 2, dtype=dt)
            vec[:L] = e.values
            vec[L] = w
            vec[L + 1] = e.clipped
            inputs[pid[u.client_id]] = vec
        sched = DropoutSchedule.random(cfg.client_ids, o.dropout, self._rng, o.dropout_phases) if o.dropout > 0 else DropoutSchedule()
        rep = run_round(cfg, inputs, sched, idk)
        s = to_signed(rep.total, fp.modulus_bits)
        total_w, clipped = int(s[L]), int(s[L + 1])
        mean = s[:L].astype(np.float64) / (fp.scale * total_w)
        plain = 4 * L + HEADER_BYTES
        up = {back[p]: b for p, b in rep.bytes_up.items()}
        down = {back[p]: b for p, b in rep.bytes_down.items()}
        metrics: dict[str, float] = {
            "smpc_clipped_values": float(clipped),
            "smpc_total_weight": float(total_w),
            "smpc_survivors": float(len(rep.survivors)),
            "smpc_dropped_in_protocol": float(n - len(rep.survivors)),
            "smpc_modulus_bits": float(fp.modulus_bits),
            "smpc_threshold": float(t),
            "smpc_degree": float(degree if degree is not None else n - 1),
            "smpc_round_s": rep.wall_seconds,
            "smpc_expansion_vs_float32": float(np.mean(list(up.values()))) / plain,
            "smpc_quantization_step": fp.clip / 2**fp.bits,
        }
        for ph, st in rep.phases.items():
            metrics[f"smpc_{ph}_client_s"] = st.client_seconds_total
            metrics[f"smpc_{ph}_server_s"] = st.server_seconds
        return AggregateResult(
            delta=mean.astype(np.float32),
            included=tuple(back[p] for p in rep.survivors),
            upload_bytes=up,
            download_bytes=down,
            metrics=metrics,
        )
