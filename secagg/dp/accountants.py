"""One accountant interface over real engines: Opacus (RDP, PRV, GDP) and dp-accounting (RDP, PLD).

Threat model / guarantee: an accountant turns a history of :mod:`secagg.dp.events` into the
smallest epsilon its engine can certify at a target delta, for client-level DP under the
stated neighbouring relation (:class:`~secagg.dp.events.Neighbouring`). Nothing here
re-derives what the engines compute; this module only

* translates our events into each engine's input (Opacus ``history`` triples,
  ``dp_accounting.DpEvent`` trees),
* says honestly which histories each engine supports (``unsupported_reason``) instead of
  returning a wrong number,
* adds what the engines lack: the distributed discrete Gaussian of Kairouz et al. 2021
  (RDP of its Prop. 14, composed with dp-accounting's RDP-to-(eps, delta) conversion), and
  per-client ("participation-aware") composition over only the rounds a client joined.

Supported histories (``Neighbouring.ADD_REMOVE`` unless noted)

==============  ==============================================================================
name            supports
==============  ==============================================================================
opacus-rdp      Poisson sampled Gaussian, heterogeneous rounds; distributed DP via its
                zCDP-equivalent Gaussian (q=1, exact same RDP curve)
opacus-prv      Poisson sampled Gaussian, heterogeneous rounds (Gopi et al. 2021)
opacus-gdp      Poisson sampled Gaussian with ONE constant (z, q); CLT approximation that can
                *underestimate* epsilon (Opacus warns): shown for comparison only
dpa-rdp         Poisson sampled Gaussian; fixed-size sampling without replacement
                (``REPLACE_ONE`` relation); distributed DP (zCDP event)
dpa-pld         Poisson sampled Gaussian (tightest; privacy-loss distributions)
==============  ==============================================================================

Replace-one with full participation (q=1) is handled by doubling the sensitivity; Poisson
subsampling with replace-one is refused (no engine here analyses it).

Costs: RDP O(rounds x orders); PLD/PRV O(rounds x grid log grid) — see benchmarks/bench_dp.py.
Units: epsilon in nats, delta a probability.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import warnings
from typing import Callable, Iterable, Mapping, Sequence

import dp_accounting
import numpy as np
from dp_accounting import pld as dpa_pld
from dp_accounting import rdp as dpa_rdp
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon as _rdp_to_eps

from secagg.dp.events import (
    DistributedDiscreteGaussianEvent,
    Neighbouring,
    RoundEvent,
    SampledGaussianEvent,
    Sampling,
    check_delta,
    to_dp_accounting,
)
from secagg.errors import ConfigError, SecaggError

#: RDP orders used for the per-client composition (those of dp-accounting's RdpAccountant).
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in dpa_rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)


@contextlib.contextmanager
def quiet_engines():
    """Silence the engines' convergence chatter (dp-accounting logs a warning per skipped RDP
    order via the root logger; Opacus warns about the order range). Results are unaffected."""
    loggers = [logging.getLogger(), logging.getLogger("absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


class UnsupportedHistoryError(SecaggError):
    """The chosen engine cannot account this history; the message says why."""


class Accountant(abc.ABC):
    """Epsilon of a history of events at a target delta, by one engine."""

    name: str = ""
    engine: str = ""
    description: str = ""

    def unsupported_reason(self, events: Sequence[RoundEvent], neighbouring: Neighbouring) -> str | None:
        """``None`` when the history is supported, else a sentence saying why not."""
        return None

    @abc.abstractmethod
    def _epsilon(self, events: Sequence[RoundEvent], delta: float, neighbouring: Neighbouring) -> float:
        ...

    def epsilon(self, events: Iterable[RoundEvent], delta: float,
                neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE) -> float:
        """Spent epsilon of ``events`` at ``delta``; 0.0 for an empty history.

        Raises :class:`UnsupportedHistoryError` when the engine cannot account the history and
        :class:`ConfigError` on an invalid delta.
        """
        delta = check_delta(delta)
        events = list(events)
        try:
            neighbouring = Neighbouring(neighbouring)
        except ValueError:
            raise ConfigError(f"neighbouring must be one of {[n.value for n in Neighbouring]}, got {neighbouring!r}") from None
        if not events:
            return 0.0
        reason = self.unsupported_reason(events, neighbouring)
        if reason:
            raise UnsupportedHistoryError(f"{self.name}: {reason}")
        with quiet_engines():
            return float(self._epsilon(events, delta, neighbouring))


def _common_reason(events: Sequence[RoundEvent], neighbouring: Neighbouring) -> str | None:
    if neighbouring is Neighbouring.REPLACE_ONE:
        for e in events:
            if isinstance(e, SampledGaussianEvent) and e.sampling is Sampling.POISSON and e.sampling_rate < 1.0:
                return "Poisson subsampling under the replace-one relation is not analysed by this engine"
    return None


#: Numerical-range guard for grid-based engines (PLD, PRV): above this RDP epsilon their
#: discretization grids need gigabytes (measured: z=4, q=1, 10,000 rounds ran out of memory
#: in Opacus PRV), and such an epsilon means "no meaningful privacy" anyway.
GRID_ENGINE_MAX_EPSILON = 50.0


def _grid_guard(name: str, events, delta: float, neighbouring) -> None:
    rdp_eps = DpaRdp().epsilon(events, delta, neighbouring) if DpaRdp().unsupported_reason(events, neighbouring) is None \
        else OpacusRdp().epsilon(events, delta, neighbouring)
    if rdp_eps > GRID_ENGINE_MAX_EPSILON:
        raise UnsupportedHistoryError(
            f"{name}: epsilon is beyond this engine's numerical range (RDP upper bound {rdp_eps:.4g} > "
            f"{GRID_ENGINE_MAX_EPSILON}); use an RDP accountant")


class _OpacusAccountant(Accountant):
    engine = "opacus"
    mechanism = ""

    def _triples(self, events: Sequence[RoundEvent], neighbouring: Neighbouring) -> list[tuple[float, float, int]]:
        hist: list[tuple[float, float, int]] = []
        for e in events:
            if isinstance(e, SampledGaussianEvent):
                z = e.noise_multiplier / (2.0 if neighbouring is Neighbouring.REPLACE_ONE else 1.0)
                t = (z, e.sampling_rate, e.count)
            else:
                t = (e.equivalent_noise_multiplier(neighbouring), 1.0, e.count)
            if hist and hist[-1][:2] == t[:2]:
                hist[-1] = (t[0], t[1], hist[-1][2] + t[2])
            else:
                hist.append(t)
        return hist

    def unsupported_reason(self, events, neighbouring):
        for e in events:
            if isinstance(e, SampledGaussianEvent) and e.sampling is Sampling.FIXED_SIZE:
                return "Opacus analyses Poisson sampling only (fixed-size sampling given)"
        return _common_reason(events, neighbouring)

    def _new(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GDP's "experimental" warning is in our docs
            # imported lazily: opacus imports torch, which secagg.dp itself never needs
            from opacus.accountants import create_accountant
            return create_accountant(self.mechanism)

    def _epsilon(self, events, delta, neighbouring):
        if self.mechanism in ("prv", "gdp"):
            _grid_guard(self.name, events, delta, neighbouring)
        acc = self._new()
        acc.history = self._triples(events, neighbouring)
        return acc.get_epsilon(delta=delta)


class OpacusRdp(_OpacusAccountant):
    name, mechanism = "opacus-rdp", "rdp"
    description = "Opacus RDP (Mironov 2017; sampled Gaussian RDP)"


class OpacusPrv(_OpacusAccountant):
    name, mechanism = "opacus-prv", "prv"
    description = "Opacus PRV (Gopi, Lee, Wutschitz 2021), upper bound"

    def unsupported_reason(self, events, neighbouring):
        if any(isinstance(e, DistributedDiscreteGaussianEvent) for e in events):
            return "the distributed discrete Gaussian has an RDP bound only, not a Gaussian privacy profile"
        return super().unsupported_reason(events, neighbouring)


class OpacusGdp(_OpacusAccountant):
    name, mechanism = "opacus-gdp", "gdp"
    description = "Opacus GDP (Dong, Roth, Su 2019; CLT approximation, may underestimate)"

    def unsupported_reason(self, events, neighbouring):
        if any(isinstance(e, DistributedDiscreteGaussianEvent) for e in events):
            return "the distributed discrete Gaussian has an RDP bound only, not a Gaussian privacy profile"
        r = super().unsupported_reason(events, neighbouring)
        if r:
            return r
        if len(self._triples(events, neighbouring)) > 1:
            return "GDP needs one constant noise multiplier and sampling rate for all rounds"
        return None


class _DpaAccountant(Accountant):
    engine = "dp-accounting"

    def _relation(self, events) -> NeighboringRelation:
        if any(isinstance(e, SampledGaussianEvent) and e.sampling is Sampling.FIXED_SIZE for e in events):
            return NeighboringRelation.REPLACE_ONE
        return NeighboringRelation.ADD_OR_REMOVE_ONE

    @abc.abstractmethod
    def _make(self, relation: NeighboringRelation):
        """A fresh dp-accounting accountant for ``relation``."""

    def unsupported_reason(self, events, neighbouring):
        r = _common_reason(events, neighbouring)
        if r:
            return r
        fixed = [isinstance(e, SampledGaussianEvent) and e.sampling is Sampling.FIXED_SIZE for e in events]
        if any(fixed):
            if neighbouring is not Neighbouring.REPLACE_ONE:
                return "fixed-size sampling is analysed under the replace-one relation only (pass neighbouring='replace_one')"
            if not all(fixed):
                return "a history mixing fixed-size and Poisson sampling has no common neighbouring relation here"
        acc = self._make(self._relation(events))
        if not acc.supports(to_dp_accounting(events, neighbouring)):
            return "dp-accounting does not support this event type with this accountant"
        return None

    def _epsilon(self, events, delta, neighbouring):
        if self.name == "dpa-pld":
            _grid_guard(self.name, events, delta, neighbouring)
        acc = self._make(self._relation(events))
        acc.compose(to_dp_accounting(events, neighbouring))
        return acc.get_epsilon(delta)


class DpaRdp(_DpaAccountant):
    name = "dpa-rdp"
    description = "dp-accounting RDP (Mironov 2017; Zhu & Wang 2019 for sampling w/o replacement)"

    def _make(self, relation):
        return dpa_rdp.RdpAccountant(neighboring_relation=relation)

    def _epsilon(self, events, delta, neighbouring):
        if not any(isinstance(e, SampledGaussianEvent) and e.sampling is Sampling.FIXED_SIZE for e in events):
            return super()._epsilon(events, delta, neighbouring)
        # Fixed-size sampling: the Wang-Balle-Kasiviswanathan bound dp-accounting implements is
        # looser than the unsampled Gaussian for samples close to the population (measured: 9 of
        # 10 clients, z=2, 50 rounds -> 64 vs 57 for all 10). Subsampling never costs more than
        # full participation (Renyi divergence is jointly quasi-convex), so each event's RDP is
        # the per-order minimum of both engine curves; the sum is converted like dp-accounting does.
        total = np.zeros(len(RDP_ORDERS))
        for e in events:
            acc = dpa_rdp.RdpAccountant(orders=list(RDP_ORDERS), neighboring_relation=NeighboringRelation.REPLACE_ONE)
            acc.compose(e.to_dp_event(neighbouring))
            total += np.minimum(np.asarray(acc._rdp, dtype=np.float64), participant_rdp(e, neighbouring))
        return rdp_to_epsilon(total, delta)


class DpaPld(_DpaAccountant):
    name = "dpa-pld"
    description = "dp-accounting PLD (Meiser & Mohammadi 2018; Koskela et al. 2020), pessimistic"

    def _make(self, relation):
        return dpa_pld.PLDAccountant(neighboring_relation=relation)

    def unsupported_reason(self, events, neighbouring):
        if any(isinstance(e, DistributedDiscreteGaussianEvent) for e in events):
            return "the distributed discrete Gaussian has an RDP bound only, not a privacy-loss distribution"
        return super().unsupported_reason(events, neighbouring)


_REGISTRY: dict[str, Callable[[], Accountant]] = {}


def register_accountant(name: str, factory: Callable[[], Accountant]) -> None:
    """Add an accountant under ``name`` (raises :class:`ConfigError` if the name is taken)."""
    if name in _REGISTRY:
        raise ConfigError(f"accountant {name!r} is already registered")
    _REGISTRY[name] = factory


for _cls in (OpacusRdp, OpacusPrv, OpacusGdp, DpaRdp, DpaPld):
    register_accountant(_cls.name, _cls)

#: The accountant the budget guard and calibration use by default (fast; PLD is tighter but ~100x slower).
DEFAULT_ACCOUNTANT = "dpa-rdp"


def accountant_names() -> list[str]:
    return list(_REGISTRY)


def get_accountant(name: str) -> Accountant:
    """The accountant registered as ``name``; :class:`ConfigError` lists the known names."""
    if name not in _REGISTRY:
        raise ConfigError(f"accountant must be one of {accountant_names()}, got {name!r}")
    return _REGISTRY[name]()


def epsilon_table(events: Sequence[RoundEvent], delta: float,
                  neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE,
                  names: Sequence[str] | None = None) -> dict[str, float | str]:
    """Every accountant's epsilon for the same history, side by side; unsupported -> the reason."""
    out: dict[str, float | str] = {}
    for n in names or accountant_names():
        try:
            out[n] = get_accountant(n).epsilon(events, delta, neighbouring)
        except UnsupportedHistoryError as e:
            out[n] = f"n/a: {e}"
    return out


# ---------------------------------------------------------------- per-client composition

def participant_rdp(event: RoundEvent, neighbouring: Neighbouring = Neighbouring.ADD_REMOVE,
                    orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """RDP curve a round costs a client *known to have participated* (no sampling amplification).

    Gaussian: alpha / (2 z^2) per round (dp-accounting's own Gaussian RDP), z halved for
    replace-one; distributed discrete Gaussian: Kairouz et al. 2021 Prop. 14.
    """
    if isinstance(event, SampledGaussianEvent):
        z = event.noise_multiplier / (2.0 if Neighbouring(neighbouring) is Neighbouring.REPLACE_ONE else 1.0)
        acc = dpa_rdp.RdpAccountant(orders=list(orders))
        with quiet_engines():
            acc.compose(dp_accounting.GaussianDpEvent(z), event.count)
        return np.asarray(acc._rdp, dtype=np.float64)  # the engine's own RDP vector
    return np.asarray(event.rdp(orders, neighbouring), dtype=np.float64)


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    """dp-accounting's RDP -> (eps, delta) conversion (Canonne, Kamath, Steinke 2020 bound)."""
    if not np.any(rdp):
        return 0.0
    with quiet_engines():
        eps, _ = _rdp_to_eps(list(orders), list(rdp), check_delta(delta))
    return float(eps)


def client_epsilons(events: Sequence[RoundEvent], participants: Sequence[Iterable[int]], delta: float,
                    neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE,
                    population_epsilon: float | None = None) -> dict[int, float]:
    """Participation-aware epsilon of each client (RDP composition over the rounds it joined).

    ``participants[r]`` lists the clients whose data entered round ``r``. A round a client
    did not join costs it nothing; a round it joined is charged without amplification by
    subsampling (its participation is treated as public). If ``population_epsilon`` (the
    amplified guarantee every client has) is given, each figure is capped by it, since both
    bounds hold. Cost: O(rounds x orders + clients x orders).
    """
    if len(participants) != len(events):
        raise ConfigError(f"participants: {len(participants)} rounds given for {len(events)} events")
    nb = Neighbouring(neighbouring)
    curves = [participant_rdp(e, nb) for e in events]
    per_client: dict[int, np.ndarray] = {}
    for curve, who in zip(curves, participants):
        for c in who:
            c = int(c)
            per_client[c] = per_client.get(c, 0.0) + curve
    out = {}
    for c, rdp in per_client.items():
        eps = rdp_to_epsilon(rdp, delta)
        out[c] = min(eps, population_epsilon) if population_epsilon is not None else eps
    return out


def population_epsilon(events: Sequence[RoundEvent], delta: float,
                       neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE,
                       accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """The run's client-level guarantee (with sampling amplification) by ``accountant``,
    falling back to ``dpa-rdp`` when that engine does not support the history."""
    try:
        return get_accountant(accountant).epsilon(events, delta, neighbouring)
    except UnsupportedHistoryError:
        if accountant == "dpa-rdp":
            raise
        return get_accountant("dpa-rdp").epsilon(events, delta, neighbouring)


def percentiles(values: Mapping[int, float], qs: Sequence[float] = (0, 50, 90, 99, 100)) -> dict[str, float]:
    """Percentiles of per-client epsilons (empty mapping -> empty dict)."""
    if not values:
        return {}
    arr = np.fromiter(values.values(), dtype=np.float64)
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}


__all__ = [
    "Accountant", "UnsupportedHistoryError", "register_accountant", "get_accountant", "accountant_names",
    "epsilon_table", "client_epsilons", "population_epsilon", "participant_rdp", "rdp_to_epsilon",
    "percentiles", "DEFAULT_ACCOUNTANT", "RDP_ORDERS", "quiet_engines",
]
