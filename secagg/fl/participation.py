"""Partial participation: over-selection, a simulated round deadline with per-client latency,
and partial-participation weighting.

Follows the production practice of Bonawitz et al., "Towards Federated Learning at Scale:
System Design" (MLSys 2019): the server selects more clients than it needs (over-selection,
typically +30 %), aggregates the first ``m`` that report and drops stragglers that miss the
round deadline. Weighting follows Li et al., "On the Convergence of FedAvg on Non-IID Data"
(ICLR 2020) for the ``selected`` scheme, and inverse-probability weighting for the
``inverse_probability`` scheme (corrects the bias towards fast clients).

Everything here is a *wrapper* around any :class:`~secagg.fl.aggregator.Aggregator`, so it
composes with the secure aggregators: stragglers are removed before the inner protocol
starts (in a real deployment they are the protocol's dropouts), the weights used by
``inverse_probability`` are fixed before masking (each client scales its own delta), and
the other rescalings act on the aggregate only. The server never needs an individual update.

Threat model: honest-but-slow clients; latency is simulated (seeded numpy randomness,
never key material). Units: seconds of simulated time. Cost: O(n log n + n d) per round on
top of the inner aggregator; O(number of clients) state for participation statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from secagg.errors import ConfigError, NotEnoughClientsError
from secagg.fl.aggregator import AggregateResult, Aggregator, ClientUpdate, check_updates
from secagg.fl.robust import check_compatible, hides_individual_updates, needs_individual_updates

__all__ = [
    "LogNormalLatency",
    "ParticipationAggregator",
    "over_select",
    "over_selection_fraction",
]

LatencyFn = Callable[[int, int], float]
WEIGHTINGS = ("participants", "selected", "inverse_probability")


@dataclass(frozen=True)
class LogNormalLatency:
    """Simulated time (seconds) from round start until a client's upload arrives.

    ``latency = median_s * speed_c * LogNormal(0, sigma)``, where ``speed_c =
    LogNormal(0, device_sigma)`` is fixed per client (slow devices stay slow); with
    probability ``straggler_prob`` the latency is multiplied by ``straggler_factor``.
    Deterministic in ``(seed, client_id, round_index)``.
    """

    median_s: float = 1.0
    sigma: float = 0.5
    device_sigma: float = 0.5
    straggler_prob: float = 0.0
    straggler_factor: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("median_s", "straggler_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("sigma", "device_sigma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (0.0 <= self.straggler_prob <= 1.0):
            raise ConfigError(f"straggler_prob must be in [0, 1], got {self.straggler_prob!r}")

    def __call__(self, client_id: int, round_index: int) -> float:
        cid = int(client_id) & 0xFFFFFFFF
        speed = np.random.default_rng([self.seed, cid, 0xD1CE]).lognormal(0.0, self.device_sigma) if self.device_sigma else 1.0
        rng = np.random.default_rng([self.seed, cid, int(round_index)])
        t = self.median_s * speed * (rng.lognormal(0.0, self.sigma) if self.sigma else 1.0)
        if self.straggler_prob and rng.random() < self.straggler_prob:
            t *= self.straggler_factor
        return float(t)


def over_select(client_ids: Sequence[int], target: int, factor: float = 0.3,
                rng: Optional[np.random.Generator] = None) -> list[int]:
    """Sample ``min(N, ceil(target * (1 + factor)))`` distinct clients (sorted)."""
    if target < 1:
        raise ConfigError(f"target (clients to aggregate) must be >= 1, got {target}")
    if not (math.isfinite(factor) and factor >= 0):
        raise ConfigError(f"factor (over-selection) must be >= 0, got {factor!r}")
    ids = list(client_ids)
    k = min(len(ids), math.ceil(target * (1.0 + factor)))
    rng = np.random.default_rng(0) if rng is None else rng
    return sorted(int(ids[i]) for i in rng.choice(len(ids), size=k, replace=False))


def over_selection_fraction(target: int, num_clients: int, factor: float = 0.3) -> float:
    """``FedConfig.client_fraction`` that makes the core sample ``ceil(target * (1 + factor))``
    of ``num_clients`` clients (pair it with ``ParticipationAggregator(target=target)``)."""
    if not (1 <= target <= num_clients):
        raise ConfigError(f"target must be in [1, num_clients={num_clients}], got {target}")
    k = min(num_clients, math.ceil(target * (1.0 + factor)))
    # the core samples ceil(fraction * N); aim half a client below k so float rounding cannot overshoot
    return 1.0 if k == num_clients else (k - 0.5) / num_clients


class ParticipationAggregator(Aggregator):
    """Keeps the first ``target`` updates to arrive before ``deadline_s`` and aggregates them with ``inner``.

    ``latency(client_id, round_index) -> seconds`` simulates arrival times (default
    :class:`LogNormalLatency`). ``target=None``: keep every update that meets the deadline;
    ``deadline_s=None``: no deadline. Fewer than ``min_reports`` arrivals raise
    :class:`NotEnoughClientsError` (nothing aggregated, no state changed).

    ``weighting``:

    * ``participants`` -- the inner aggregate as is (renormalised over who reported; FedAvg).
    * ``selected`` -- scaled by ``sum(n_reported) / sum(n_selected)``: a selected client that
      did not report counts as a zero update (Li et al. 2020, scheme II).
    * ``inverse_probability`` -- each reporter's weight is divided by its estimated report
      probability ``p_c = (reports_c + 1) / (selections_c + 2)``, learned over rounds, so slow
      clients are not under-represented. Applied before masking, like
      :class:`secagg.fl.trust.PreMaskTrustWeighting`.
    """

    def __init__(self, inner: Aggregator, *, target: Optional[int] = None, deadline_s: Optional[float] = None,
                 latency: Optional[LatencyFn] = None, min_reports: int = 1, weighting: str = "participants") -> None:
        if target is not None and (not isinstance(target, (int, np.integer)) or target < 1):
            raise ConfigError(f"target (updates to aggregate) must be an int >= 1 or None, got {target!r}")
        if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ConfigError(f"deadline_s must be a finite number of seconds > 0 or None, got {deadline_s!r}")
        if not isinstance(min_reports, (int, np.integer)) or min_reports < 1:
            raise ConfigError(f"min_reports must be an int >= 1, got {min_reports!r}")
        if target is not None and min_reports > target:
            raise ConfigError(f"min_reports={min_reports} exceeds target={target}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.inner = inner
        self.target = None if target is None else int(target)
        self.deadline_s = None if deadline_s is None else float(deadline_s)
        self.latency = LogNormalLatency() if latency is None else latency
        self.min_reports = int(min_reports)
        self.weighting = weighting
        self.selections: dict[int, int] = {}
        self.reports: dict[int, int] = {}
        check_compatible(self)
        self.needs_individual_updates = needs_individual_updates(inner)
        self.hides_individual_updates = hides_individual_updates(inner)
        self.name = f"participation({getattr(inner, 'name', type(inner).__name__)})"

    def report_probability(self, client_id: int) -> float:
        """Laplace-smoothed share of rounds in which ``client_id`` reported in time."""
        return (self.reports.get(client_id, 0) + 1) / (self.selections.get(client_id, 0) + 2)

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        lat = {u.client_id: float(self.latency(u.client_id, round_index)) for u in updates}
        for cid, t in lat.items():
            if not (math.isfinite(t) and t >= 0):
                raise ConfigError(f"latency of client {cid} must be a finite number of seconds >= 0, got {t!r}")
        order = sorted(updates, key=lambda u: (lat[u.client_id], u.client_id))
        on_time = [u for u in order if self.deadline_s is None or lat[u.client_id] <= self.deadline_s]
        reporters = on_time if self.target is None else on_time[: self.target]
        if len(reporters) < self.min_reports:
            raise NotEnoughClientsError(
                f"round {round_index}: {len(reporters)} of {len(updates)} clients reported before the deadline "
                f"({self.deadline_s} s), fewer than min_reports={self.min_reports}; nothing aggregated"
            )
        scale_of = {u.client_id: 1.0 for u in reporters}
        if self.weighting == "inverse_probability":
            scale_of = {u.client_id: 1.0 / self.report_probability(u.client_id) for u in reporters}
            sent = [ClientUpdate(u.client_id, (np.asarray(u.delta, np.float64) * scale_of[u.client_id]).astype(np.float32),
                                 u.num_examples) for u in reporters]
        else:
            sent = list(reporters)
        res = self.inner.aggregate(sent, round_index=round_index)
        inc = set(res.included)
        delta = np.asarray(res.delta, dtype=np.float64)
        n_inc = sum(u.num_examples for u in reporters if u.client_id in inc)
        if self.weighting == "inverse_probability" and n_inc > 0:
            nw = sum(u.num_examples * scale_of[u.client_id] for u in reporters if u.client_id in inc)
            delta = delta * (n_inc / nw)
        elif self.weighting == "selected":
            delta = delta * (n_inc / sum(u.num_examples for u in updates))
        # commit participation statistics only after the inner aggregation succeeded
        rep_ids = {u.client_id for u in reporters}
        for u in updates:
            self.selections[u.client_id] = self.selections.get(u.client_id, 0) + 1
            if u.client_id in rep_ids:
                self.reports[u.client_id] = self.reports.get(u.client_id, 0) + 1
        late = sum(1 for u in updates if self.deadline_s is not None and lat[u.client_id] > self.deadline_s)
        round_time = max(lat[u.client_id] for u in reporters)
        if self.deadline_s is not None and (self.target is None or len(reporters) < self.target) and late:
            round_time = self.deadline_s  # the server waited until the deadline
        metrics = dict(res.metrics)
        metrics.update(round_time_s=float(round_time), late=float(late),
                       cut_by_target=float(len(on_time) - len(reporters)), reported=float(len(reporters)))
        upload = {cid: b for cid, b in res.upload_bytes.items() if cid in rep_ids}
        return AggregateResult(delta=delta.astype(np.float32), included=res.included, upload_bytes=upload,
                               download_bytes=dict(res.download_bytes), metrics=metrics)
