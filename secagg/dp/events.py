"""Privacy events: every DP mechanism applied in a run, as immutable, serializable data.

Following dp-accounting's "mechanisms as data" design (``dp_accounting.dp_event``), a
training run is described by a sequence of :class:`RoundEvent` objects. Each event says
*what* was released (a Gaussian sum of clipped client updates, or the distributed
discrete Gaussian sum of Kairouz et al. 2021), *how* the participants were sampled and
*how many times* it was repeated. Accountants (:mod:`secagg.dp.accountants`) consume
events and say which ones they support, so a ledger written today can be re-accounted by
any engine later and audited independently of the training code.

Units
-----
* ``noise_multiplier`` z: standard deviation of the Gaussian noise on the *sum* divided by
  the L2 sensitivity of one client's contribution (the clip norm), dimensionless.
* ``sampling_rate`` q in (0, 1]: probability that a given client takes part in the round
  (Poisson sampling) or ``sample_size / population`` (fixed-size sampling without
  replacement; there the integer ``sample_size`` is what is accounted).
* Distributed DP quantities are in integer (quantized) units: ``l2_sensitivity`` is the
  post-rounding bound Delta_2 on one client's integer vector, ``local_variance`` the
  variance sigma^2 of each client's discrete Gaussian noise per coordinate.

Neighbouring relation
---------------------
``ADD_REMOVE`` (default): datasets of clients differ by adding or removing one client's
entire data (client-level DP, McMahan et al. 2018). ``REPLACE_ONE``: one client's data is
replaced by arbitrary other data; this doubles the L2 sensitivity of a sum of clipped
updates (2C instead of C, so the engines get z/2 for every sampling scheme) and is the
relation under which fixed-size (without replacement) sampling is analysed (Wang, Balle,
Kasiviswanathan 2019).

Serialization: :meth:`RoundEvent.to_dict` / :func:`event_from_dict` round-trip through
plain JSON types; :meth:`to_dp_event` maps to the equivalent ``dp_accounting.DpEvent``.
Cost: O(1) per event.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Union

import dp_accounting
from dp_accounting import dp_event

from secagg.errors import ConfigError


class Sampling(str, enum.Enum):
    """How the clients of a round were selected."""

    POISSON = "poisson"  # each client independently with probability q
    FIXED_SIZE = "fixed_size"  # a uniformly random subset of fixed size, without replacement


class Neighbouring(str, enum.Enum):
    """Which pairs of client populations the guarantee protects (see module docstring)."""

    ADD_REMOVE = "add_remove"
    REPLACE_ONE = "replace_one"


def _check_positive_finite(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        rng = "[0, inf)" if allow_zero else "(0, inf)"
        raise ConfigError(f"{name} must be finite and in {rng}, got {value!r}")
    return v


def check_sampling_rate(q: float, name: str = "sampling_rate") -> float:
    """Validate a sampling probability in (0, 1]; raises :class:`ConfigError` naming ``name``."""
    try:
        v = float(q)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1], got {q!r}") from None
    if not (0.0 < v <= 1.0) or not math.isfinite(v):
        raise ConfigError(f"{name} must be in (0, 1], got {q!r}")
    return v


def check_noise_multiplier(z: float, name: str = "noise_multiplier") -> float:
    """Validate a noise multiplier in (0, inf)."""
    return _check_positive_finite(name, z)


def check_epsilon(eps: float, name: str = "epsilon") -> float:
    """Validate a target epsilon in (0, inf)."""
    return _check_positive_finite(name, eps)


def check_delta(delta: float, name: str = "delta") -> float:
    """Validate a target delta in (0, 1)."""
    try:
        v = float(delta)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1), got {delta!r}") from None
    if not (0.0 < v < 1.0):
        raise ConfigError(f"{name} must be in (0, 1), got {delta!r}")
    return v


def check_count(n: int, name: str, minimum: int = 1) -> int:
    if isinstance(n, bool) or int(n) != n or int(n) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


@dataclass(frozen=True)
class SampledGaussianEvent:
    """``count`` rounds of the (sub)sampled Gaussian mechanism on a sum of clipped updates.

    The released value is ``sum_i clip(x_i, C) + N(0, (z*C)^2 I)`` over the sampled clients.
    With ``sampling=FIXED_SIZE``, ``population`` N (the number of clients sampled from) is
    required and ``sample_size`` m is the exact number of clients drawn without replacement
    (an integer in [1, N]). Pass the sample size the training loop really draws (the FedAvg
    core draws ``max(min_clients, ceil(client_fraction * N))``); when omitted it defaults to
    ``ceil(sampling_rate * N)`` (no ``min_clients``; ledgers written before ``sample_size``
    existed are re-read this way, which is never below their old ``round``). For fixed-size
    sampling the accountants use ``(N, m)`` only; ``sampling_rate`` is the configured
    fraction, kept for the record. A round with more participants than ``sample_size`` is
    not covered by this event (the ledger refuses to record it, the audit flags it).

    Replace-one: the L2 sensitivity of the sum is ``2C``, so every engine is given ``z / 2``
    (Poisson and fixed-size alike; dp-accounting and Opacus take the ratio of the noise std
    to the sensitivity).
    """

    noise_multiplier: float
    sampling_rate: float = 1.0
    count: int = 1
    sampling: Sampling = Sampling.POISSON
    population: int | None = None
    sample_size: int | None = None
    kind: str = "sampled_gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sampling_rate", check_sampling_rate(self.sampling_rate))
        object.__setattr__(self, "count", check_count(self.count, "count"))
        try:
            object.__setattr__(self, "sampling", Sampling(self.sampling))
        except ValueError:
            raise ConfigError(f"sampling must be one of {[s.value for s in Sampling]}, got {self.sampling!r}") from None
        if self.sampling is Sampling.FIXED_SIZE:
            if self.population is None:
                raise ConfigError("population is required for fixed_size sampling")
            n = check_count(self.population, "population")
            object.__setattr__(self, "population", n)
            m = self.sample_size
            if m is None:  # the core's ceil(q * N); the tolerance absorbs float error such as 0.3 * 10
                m = max(1, math.ceil(self.sampling_rate * n - 1e-9))
            m = check_count(m, "sample_size")
            if m > n:
                raise ConfigError(f"sample_size must be an integer in [1, population={n}], got {self.sample_size!r}")
            object.__setattr__(self, "sample_size", m)
        else:
            if self.sample_size is not None:
                raise ConfigError(f"sample_size applies to fixed_size sampling only (Poisson draws a random number "
                                  f"of clients), got sample_size={self.sample_size!r} with sampling='poisson'")
            if self.population is not None:
                object.__setattr__(self, "population", check_count(self.population, "population"))
        if self.kind != "sampled_gaussian":
            raise ConfigError(f"kind must be 'sampled_gaussian', got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampling"] = self.sampling.value
        return d

    def to_dp_event(self, neighbouring: Neighbouring = Neighbouring.ADD_REMOVE) -> dp_event.DpEvent:
        z = self.noise_multiplier
        if Neighbouring(neighbouring) is Neighbouring.REPLACE_ONE:
            z = z / 2.0  # replace-one doubles the L2 sensitivity of the sum (2C), for every sampling scheme
        g = dp_accounting.GaussianDpEvent(z)
        if self.sampling is Sampling.FIXED_SIZE:
            inner: dp_event.DpEvent = dp_accounting.SampledWithoutReplacementDpEvent(
                source_dataset_size=int(self.population), sample_size=self.sample_size, event=g)
        elif self.sampling_rate == 1.0:
            inner = g
        else:
            inner = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, g)
        return inner if self.count == 1 else dp_accounting.SelfComposedDpEvent(inner, self.count)


def rounded_l2_bound(scaled_clip: float, dim: int, beta: float) -> float:
    """Delta_2 after conditional randomized rounding (Kairouz et al. 2021, Sec. 4.1).

    ``scaled_clip`` = clip norm / granularity (integer units). With probability of retry
    at most ``beta`` per attempt bound_2 holds; bound_1 holds deterministically.
    """
    bound_1 = scaled_clip + math.sqrt(dim)
    if beta <= 0:
        return bound_1
    sq = scaled_clip**2 + 0.25 * dim + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_clip + 0.5 * math.sqrt(dim))
    return min(bound_1, math.sqrt(sq))


@dataclass(frozen=True)
class DistributedDiscreteGaussianEvent:
    """``count`` rounds of the distributed discrete Gaussian mechanism (Kairouz et al. 2021).

    ``survivors`` clients each add independent N_Z(0, local_variance) noise per coordinate
    to an integer vector of L2 norm <= ``l2_sensitivity`` (and L1 norm <= ``l1_sensitivity``)
    in ``dim`` coordinates; only the modular sum is released (secure aggregation). The noise
    of the released sum is that of the *survivors* only: its variance is
    ``survivors * local_variance``.

    Accounting uses Proposition 14 of Kairouz et al. 2021 (an RDP bound for a sum of
    discrete Gaussians). ``sampling_rate`` is recorded but, because the sum of discrete
    Gaussians is not exactly a Gaussian, we claim *no* amplification by subsampling: the
    event is accounted as if every round included the client (conservative).
    """

    l2_sensitivity: float
    l1_sensitivity: float
    local_variance: float
    survivors: int
    dim: int
    sampling_rate: float = 1.0
    count: int = 1
    kind: str = "distributed_discrete_gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "l2_sensitivity", _check_positive_finite("l2_sensitivity", self.l2_sensitivity))
        object.__setattr__(self, "l1_sensitivity", _check_positive_finite("l1_sensitivity", self.l1_sensitivity))
        object.__setattr__(self, "local_variance", _check_positive_finite("local_variance", self.local_variance))
        object.__setattr__(self, "survivors", check_count(self.survivors, "survivors"))
        object.__setattr__(self, "dim", check_count(self.dim, "dim"))
        object.__setattr__(self, "sampling_rate", check_sampling_rate(self.sampling_rate))
        object.__setattr__(self, "count", check_count(self.count, "count"))
        if self.kind != "distributed_discrete_gaussian":
            raise ConfigError(f"kind must be 'distributed_discrete_gaussian', got {self.kind!r}")

    @property
    def tau(self) -> float:
        """tau of Kairouz et al. 2021 Thm. 1: distance of the noise sum from a discrete Gaussian."""
        s2 = self.local_variance
        return 10.0 * sum(math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, self.survivors))

    def rdp(self, orders, neighbouring: Neighbouring = Neighbouring.ADD_REMOVE) -> list[float]:
        """Per-round RDP at each order (Prop. 14), times ``count``."""
        factor = 2.0 if Neighbouring(neighbouring) is Neighbouring.REPLACE_ONE else 1.0
        central_sd = math.sqrt(self.survivors * self.local_variance)
        l2 = factor * self.l2_sensitivity / central_sd
        l1 = factor * self.l1_sensitivity / central_sd
        tau, d = self.tau, self.dim
        out = []
        for a in orders:
            t1 = a / 2.0 * l2**2 + tau * d
            t2 = a / 2.0 * (l2**2 + 2 * l1 * tau + tau**2 * d)
            t3 = a / 2.0 * (l2 + math.sqrt(d) * tau) ** 2
            out.append(self.count * min(t1, t2, t3))
        return out

    def zcdp_rho(self, neighbouring: Neighbouring = Neighbouring.ADD_REMOVE) -> float:
        """rho of the pure-zCDP form (third term of Prop. 14): (Delta_2/sigma_sum + sqrt(d) tau)^2 / 2."""
        factor = 2.0 if Neighbouring(neighbouring) is Neighbouring.REPLACE_ONE else 1.0
        central_sd = math.sqrt(self.survivors * self.local_variance)
        return 0.5 * (factor * self.l2_sensitivity / central_sd + math.sqrt(self.dim) * self.tau) ** 2

    def equivalent_noise_multiplier(self, neighbouring: Neighbouring = Neighbouring.ADD_REMOVE) -> float:
        """The Gaussian noise multiplier with the same RDP curve as :meth:`zcdp_rho` (1/sqrt(2 rho))."""
        return 1.0 / math.sqrt(2.0 * self.zcdp_rho(neighbouring))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dp_event(self, neighbouring: Neighbouring = Neighbouring.ADD_REMOVE) -> dp_event.DpEvent:
        ev = dp_accounting.ZCDpEvent(rho=self.zcdp_rho(neighbouring))
        return ev if self.count == 1 else dp_accounting.SelfComposedDpEvent(ev, self.count)


RoundEvent = Union[SampledGaussianEvent, DistributedDiscreteGaussianEvent]

_KINDS = {"sampled_gaussian": SampledGaussianEvent, "distributed_discrete_gaussian": DistributedDiscreteGaussianEvent}


def event_from_dict(d: Mapping[str, Any]) -> RoundEvent:
    """Inverse of ``to_dict``; raises :class:`ConfigError` on an unknown kind or bad fields."""
    if not isinstance(d, Mapping) or d.get("kind") not in _KINDS:
        raise ConfigError(f"event: unknown or missing kind in {d!r}; allowed {sorted(_KINDS)}")
    cls = _KINDS[d["kind"]]
    try:
        return cls(**dict(d))
    except TypeError as e:
        raise ConfigError(f"event {d['kind']}: bad fields ({e})") from None


def to_dp_accounting(events, neighbouring: Neighbouring = Neighbouring.ADD_REMOVE) -> dp_event.DpEvent:
    """One ``dp_accounting.ComposedDpEvent`` for a whole history."""
    return dp_accounting.ComposedDpEvent([e.to_dp_event(neighbouring) for e in events])


def compress(events) -> list[RoundEvent]:
    """Merge runs of consecutive identical events into one event with the summed ``count``.

    Accounting is unchanged (composition is associative); grid engines (PLD, PRV) get much
    faster on a self-composed event than on many separate ones.
    """
    out: list[RoundEvent] = []
    for e in events:
        if out:
            a, b = out[-1].to_dict(), e.to_dict()
            ca, cb = a.pop("count"), b.pop("count")
            if a == b:
                out[-1] = event_from_dict({**a, "count": ca + cb})
                continue
        out.append(e)
    return out
