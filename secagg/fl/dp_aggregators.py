"""Differentially private aggregators for the FedAvg core (client-level DP).

:class:`CentralDPAggregator` -- DP-FedAvg of McMahan et al. 2018: every update is clipped
to L2 norm C, weighted by a weight <= 1 (uniform, or ``min(1, n_i / weight_cap)``), summed,
and Gaussian noise N(0, (z C)^2) is added by the trusted server (``mode='central'``) or
split across the clients (``mode='local'``, see :mod:`secagg.dp.mechanisms`). Optional
adaptive clipping (Andrew et al. 2021) with the count noise accounted.

:class:`DistributedDPAggregator` -- the distributed discrete Gaussian (Kairouz et al. 2021)
composed with masked secure aggregation (:mod:`secagg.smpc`): each client encodes its
update to Z_{2^k} with its own discrete Gaussian noise, the SecAgg protocol reveals only
the modular sum of the survivors, the server decodes it. The SecAgg threshold is
``max(min_survivors, n // 2 + 1)`` (SecAgg needs a majority; active mode
``max(min_survivors, 2n // 3 + 1)``, its 3t > 2n bound), so a released sum always
carries the noise of at least ``min_survivors`` clients, i.e. at least the target noise;
the actual survivors' noise is what the ledger records.

Both are *write-ahead* with a :class:`~secagg.dp.ledger.PrivacyLedger`: the budget guard
runs before any client data is touched (refusing the round with
:class:`~secagg.dp.ledger.PrivacyBudgetExceeded`), and the round's event is appended and
fsynced before the aggregate is returned.

Threat model: central -- honest server that must not leak the model beyond (eps, delta);
distributed -- honest-but-curious server seeing only the SecAgg sum, clients add their own
noise. Sampling: the ledger records the ``sampling_rate`` you pass; the FedAvg core's
default ``max(min_clients, ceil(client_fraction * N))`` sampling is *fixed-size* sampling, which is
accounted with ``sampling='fixed_size'``, ``population=N``, ``sample_size=`` that number and a
ledger in ``replace_one`` mode (more updates than ``sample_size`` in a round raise ConfigError);
with ``FedConfig(client_sampling='poisson')`` record ``sampling='poisson'``,
``sampling_rate=client_fraction`` and ``expected_weight=client_fraction * N`` (uniform weights).
``mode='local'`` entries assume the server sees only the sum of the noisy updates.
Costs: central O(n L); distributed O(n D log D) client work plus the SecAgg round.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from secagg.dp.discrete import DistributedDPConfig, modular_sum, plan_round
from secagg.dp.events import SampledGaussianEvent, check_count, check_noise_multiplier, check_sampling_rate
from secagg.dp.ledger import PrivacyLedger
from secagg.dp.mechanisms import MODES, AdaptiveClipping, clip_l2, effective_local_noise_multiplier, gaussian_noise
from secagg.errors import ConfigError, NotEnoughClientsError
from secagg.fl.aggregator import AggregateResult, Aggregator, ClientUpdate, check_updates, serialize_vector

__all__ = ["CentralDPOptions", "CentralDPAggregator", "DistributedDPAggregator"]


@dataclass(frozen=True)
class CentralDPOptions:
    """Options of :class:`CentralDPAggregator`.

    noise_multiplier: z (noise std / clip norm on the sum).
    clip_norm: initial C (L2, update units).
    sampling_rate: q recorded for accounting (Poisson probability, or sample/population).
    sampling: 'poisson' or 'fixed_size' (then ``population`` is required).
    weighting: 'uniform' (w=1) or 'capped' (w = min(1, num_examples / weight_cap)).
    expected_weight: denominator of the mean; None = the round's actual total weight.
      Required with ``sampling='poisson'`` and ``sampling_rate < 1``: there the realized
      total weight reveals how many clients were sampled, which add/remove DP must hide; pass
      q * (sum of all clients' weights), e.g. ``sampling_rate * population`` with uniform weights.
    mode: 'central' or 'local'; local_noise_split: k (see secagg.dp.mechanisms). With 'local'
      the ledger records the noise of the *sum* of the clients' noisy updates, which assumes
      the server (and anyone else) sees only that sum (e.g. behind secure aggregation); a
      server seeing individual noisy updates gets far weaker per-client protection.
    adaptive: AdaptiveClipping or None (central mode only, see ``__post_init__``; with Poisson
      q < 1 it needs ``population`` and normalises the noisy count by q * population).
    sample_size: for ``sampling='fixed_size'``, the exact number of clients drawn per round
      (the FedAvg core draws ``max(min_clients, ceil(client_fraction * N))``); default
      ``ceil(sampling_rate * population)``. A round with more updates raises ConfigError.
    allow_nonprivate_denominator: opt-out of the ``expected_weight`` requirement above. The
      mean then divides by the realized total weight, which is NOT covered by the ledger's
      (epsilon, delta): use it only for experiments.
    """

    noise_multiplier: float
    clip_norm: float
    sampling_rate: float = 1.0
    sampling: str = "poisson"
    population: int | None = None
    weighting: str = "uniform"
    weight_cap: float | None = None
    expected_weight: float | None = None
    mode: str = "central"
    local_noise_split: int = 1
    adaptive: AdaptiveClipping | None = None
    sample_size: int | None = None
    allow_nonprivate_denominator: bool = False

    def __post_init__(self) -> None:
        check_noise_multiplier(self.noise_multiplier)
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"clip_norm must be finite and > 0, got {self.clip_norm!r}")
        check_sampling_rate(self.sampling_rate)
        SampledGaussianEvent(self.noise_multiplier, self.sampling_rate, 1, self.sampling, self.population,
                             self.sample_size)
        if not isinstance(self.allow_nonprivate_denominator, bool):
            raise ConfigError(f"allow_nonprivate_denominator must be a bool, got {self.allow_nonprivate_denominator!r}")
        if (self.sampling == "poisson" and self.sampling_rate < 1.0 and self.expected_weight is None
                and not self.allow_nonprivate_denominator):
            raise ConfigError(
                f"expected_weight is required with sampling='poisson' and sampling_rate={self.sampling_rate:g} < 1: "
                "dividing by the realized total weight reveals how many clients were sampled, which add/remove DP "
                "must hide. Pass expected_weight=sampling_rate * (total weight of all clients), e.g. "
                "sampling_rate * population with weighting='uniform' (or allow_nonprivate_denominator=True for "
                "experiments that the ledger's epsilon does not cover)")
        if self.weighting not in ("uniform", "capped"):
            raise ConfigError(f"weighting must be 'uniform' or 'capped', got {self.weighting!r}")
        if self.weighting == "capped" and not (self.weight_cap and self.weight_cap > 0):
            raise ConfigError(f"weight_cap must be > 0 with weighting='capped', got {self.weight_cap!r}")
        if self.expected_weight is not None and not (math.isfinite(self.expected_weight) and self.expected_weight > 0):
            raise ConfigError(f"expected_weight must be > 0, got {self.expected_weight!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_count(self.local_noise_split, "local_noise_split")
        if self.adaptive is not None:
            if not isinstance(self.adaptive, AdaptiveClipping):
                raise ConfigError("adaptive must be an AdaptiveClipping or None")
            if self.sampling == "poisson" and self.sampling_rate < 1.0 and self.population is None:
                raise ConfigError(
                    "population is required for adaptive clipping with sampling='poisson' and sampling_rate < 1: the "
                    "noisy clipped count is normalised by the expected number of clients sampling_rate * population "
                    "(Andrew et al. 2021); the realized number of clients is not private under add/remove")
            if self.mode == "local":
                # Andrew et al.'s Thm. 1 splits one budget z between the update sum and the count only
                # when both get their noise once, centrally: in local mode the sum's noise is
                # z * sqrt(n / k) while the count noise is not scaled, so the recorded z is wrong for n != k.
                raise ConfigError(
                    "adaptive clipping requires mode='central': with mode='local' the update-sum noise scales "
                    "with sqrt(n / local_noise_split) but the clipped-count noise (count_noise_std) is added once "
                    "centrally, so the recorded noise multiplier would not bound the released (sum, count) pair; "
                    "use mode='central' with adaptive, or a fixed clip_norm with mode='local'")
            self.adaptive.update_noise_multiplier(self.noise_multiplier)  # validates count noise vs z


class CentralDPAggregator(Aggregator):
    """DP-FedAvg aggregator (see module docstring). ``ledger`` may be None only for experiments."""

    name = "central_dp"

    def __init__(self, options: CentralDPOptions | None = None, *, ledger: PrivacyLedger | None = None,
                 **kwargs) -> None:
        self.options = options or CentralDPOptions(**kwargs)
        self.ledger = ledger
        self.clip_norm = float(self.options.clip_norm)

    def _event(self, n: int) -> SampledGaussianEvent:
        o = self.options
        z = o.noise_multiplier
        if o.mode == "local":
            z = effective_local_noise_multiplier(z, n, o.local_noise_split)
        return SampledGaussianEvent(z, o.sampling_rate, 1, o.sampling, o.population, o.sample_size)

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        o = self.options
        L = check_updates(updates)
        n = len(updates)
        event = self._event(n)
        if event.sample_size is not None and n > event.sample_size:
            raise ConfigError(
                f"round {round_index}: {n} updates but the fixed-size sample recorded for accounting is "
                f"sample_size={event.sample_size} of population={event.population}; set sample_size to the number of "
                f"clients the training loop really draws (the FedAvg core draws max(min_clients, "
                f"ceil(client_fraction * N)))")
        if self.ledger is not None:
            eps_after = self.ledger.check_round(event)  # refuse before touching any update
        C = self.clip_norm
        z_upd = o.adaptive.update_noise_multiplier(o.noise_multiplier) if o.adaptive else o.noise_multiplier
        total = np.zeros(L)
        weights = []
        unclipped = 0
        for u in updates:
            x, norm = clip_l2(u.delta, C)
            unclipped += int(norm <= C)
            w = 1.0 if o.weighting == "uniform" else min(1.0, u.num_examples / o.weight_cap)
            weights.append(w)
            contrib = w * x
            if o.mode == "local":
                contrib = contrib + gaussian_noise(L, z_upd * C / math.sqrt(o.local_noise_split))
            total += contrib
        if o.mode == "central":
            total += gaussian_noise(L, z_upd * C)
        denom = o.expected_weight if o.expected_weight is not None else float(sum(weights))
        mean = total / denom
        next_clip, noisy_frac = C, float("nan")
        if o.adaptive is not None:
            expected_clients = (o.sampling_rate * o.population if o.sampling == "poisson" and o.sampling_rate < 1.0
                                else n)  # Poisson q < 1: the realized n must not enter the released value
            next_clip, noisy_frac = o.adaptive.next_clip(C, unclipped, expected_clients)
        extra = {"mode": o.mode, "weighting": o.weighting, "update_noise_multiplier": z_upd,
                 "adaptive": o.adaptive is not None, "next_clip_norm": next_clip}
        if o.adaptive is not None:
            extra["count_noise_std"] = o.adaptive.count_noise_std
            extra["noisy_unclipped_fraction"] = noisy_frac
        metrics = {"dp_clip_norm": C, "dp_noise_multiplier": event.noise_multiplier,
                   "dp_unclipped_fraction": unclipped / n}
        if self.ledger is not None:
            self.ledger.record_round(round_index, event, [u.client_id for u in updates], clip_norm=C,
                                     mechanism=f"{o.mode}_gaussian", extra=extra, check_budget=False)
            metrics["dp_epsilon"] = eps_after
        self.clip_norm = next_clip
        up = {u.client_id: len(serialize_vector(u.delta)) for u in updates}
        return AggregateResult(delta=mean.astype(np.float32), included=tuple(u.client_id for u in updates),
                               upload_bytes=up, download_bytes={u.client_id: 0 for u in updates}, metrics=metrics)


class DistributedDPAggregator(Aggregator):
    """Distributed discrete Gaussian + secure aggregation (see module docstring).

    ``secure=True`` runs a full :mod:`secagg.smpc` round (``secagg_mode`` honest or active; threshold
    ``max(min_survivors, n // 2 + 1)``, active ``max(min_survivors, 2n // 3 + 1)``,
    ``dropout`` simulates clients failing inside the protocol); ``secure=False`` computes the
    same modular sum in the clear (for testing the DP math alone).
    The mean is the decoded sum divided by the number of survivors.
    """

    name = "distributed_dp"
    # The server sees only the masked sum (``secure=False`` is a test mode of the DP math and is
    # treated the same way, so a composition valid in tests is valid in deployment).
    hides_individual_updates = True

    def __init__(self, config: DistributedDPConfig, *, ledger: PrivacyLedger | None = None,
                 sampling_rate: float = 1.0, secure: bool = True, secagg_mode: str = "honest",
                 dropout: float = 0.0, seed: int | None = None) -> None:
        if not isinstance(config, DistributedDPConfig):
            raise ConfigError("config must be a DistributedDPConfig")
        self.config = config
        self.ledger = ledger
        self.sampling_rate = check_sampling_rate(sampling_rate)
        if not (0.0 <= dropout < 1.0):
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if secagg_mode not in ("honest", "active"):
            raise ConfigError(f"secagg_mode must be 'honest' or 'active', got {secagg_mode!r}")
        self.secure, self.secagg_mode, self.dropout = secure, secagg_mode, dropout
        self._rng = np.random.default_rng(seed)  # simulated dropout only
        self._identities: dict[int, object] = {}  # Ed25519 identity per client (active mode)

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        cfg = self.config
        L = check_updates(updates)
        n = len(updates)
        if n < cfg.min_survivors:
            raise NotEnoughClientsError(f"distributed DP needs >= min_survivors={cfg.min_survivors} clients, got {n}")
        if n > cfg.max_clients:
            raise ConfigError(f"{n} clients exceed max_clients={cfg.max_clients} (the modular range is sized for it)")
        rnd = plan_round(cfg, L)
        if self.ledger is not None:  # worst case: only min_survivors clients' noise in the sum
            self.ledger.check_round(rnd.event(cfg.min_survivors, self.sampling_rate))
        ups = sorted(updates, key=lambda u: u.client_id)
        # each client's own noise; drawn in one vectorised call because all clients are simulated here
        encoded = dict(zip((u.client_id for u in ups), rnd.encode_many(u.delta for u in ups)))
        metrics: dict[str, float] = {}
        if self.secure:
            from secagg.fl.secure_aggregators import protocol_ids
            from secagg.smpc import (DropoutSchedule, SessionConfig, default_threshold, identity_public_bytes,
                                     new_session_id, run_round)

            pid, back, idk = protocol_ids([u.client_id for u in ups], self.secagg_mode, self._identities)
            # SecAgg's default t: honest floor(n/2)+1, active floor(2n/3)+1 (3t > 2n, SessionConfig's rule)
            scfg = SessionConfig(session_id=new_session_id(), round_id=int(round_index) % 2**32,
                                 client_ids=tuple(range(1, n + 1)),
                                 threshold=max(cfg.min_survivors, default_threshold(n, self.secagg_mode)),
                                 vector_length=rnd.padded_dim, modulus_bits=cfg.modulus_bits, mode=self.secagg_mode,
                                 identity_keys={p: identity_public_bytes(k) for p, k in idk.items()})
            sched = (DropoutSchedule.random(scfg.client_ids, self.dropout, self._rng) if self.dropout > 0
                     else DropoutSchedule())
            rep = run_round(scfg, {pid[c]: v for c, v in encoded.items()}, sched, idk)
            total = rep.total
            survivors = tuple(back[p] for p in rep.survivors)
            up = {back[p]: b for p, b in rep.bytes_up.items()}
            down = {back[p]: b for p, b in rep.bytes_down.items()}
            metrics["smpc_round_s"] = rep.wall_seconds
        else:
            survivors = tuple(u.client_id for u in ups)
            total = modular_sum(encoded.values(), cfg.modulus_bits)
            nbytes = (cfg.modulus_bits + 7) // 8 * rnd.padded_dim
            up = {c: nbytes for c in survivors}
            down = {c: 0 for c in survivors}
        s = len(survivors)
        if s < cfg.min_survivors:  # the SecAgg threshold already enforces this; never release otherwise
            raise NotEnoughClientsError(f"only {s} survivors < min_survivors={cfg.min_survivors}")
        event = rnd.event(s, self.sampling_rate)
        if self.ledger is not None:
            self.ledger.record_round(round_index, event, survivors, clip_norm=cfg.clip_norm,
                                     mechanism="distributed_discrete_gaussian" + ("+secagg" if self.secure else ""),
                                     extra={"granularity": rnd.granularity, "modulus_bits": cfg.modulus_bits,
                                            "rotation_seed": rnd.seed.hex(), "min_survivors": cfg.min_survivors},
                                     check_budget=False)
            metrics["dp_epsilon"] = self.ledger.spent_epsilon()
        mean = rnd.decode_sum(total) / s
        metrics.update({"ddp_granularity": rnd.granularity, "ddp_local_sigma": math.sqrt(rnd.local_variance),
                        "ddp_l2_bound": rnd.l2_bound, "ddp_survivors": float(s),
                        "ddp_noise_std_of_mean": math.sqrt(s * rnd.local_variance) * rnd.granularity / s})
        return AggregateResult(delta=mean.astype(np.float32), included=survivors, upload_bytes=up,
                               download_bytes=down, metrics=metrics)
