"""Exact discrete Gaussian sampling and the distributed discrete Gaussian mechanism.

Sampler: Canonne, Kamath, Steinke 2020 ("The Discrete Gaussian for Differential Privacy",
Algorithms 1-3): Bernoulli(exp(-gamma)) by the alternating-series trick, discrete Laplace by
rejection, discrete Gaussian by rejection from the discrete Laplace. Every decision is
made with exact integer arithmetic on a rational sigma^2 = p/q and uniform integers drawn
by rejection from ``os.urandom`` words: no floating point touches the output distribution.
We write it ourselves because no library here provides an exact, CSPRNG-driven, vectorised
sampler (the authors' reference code is scalar Python with ``fractions.Fraction``). The
loops run over numpy int64 arrays of all pending samples at once (the large squared
numerator of the final acceptance test uses Python integers), ~1e5 samples/s on one core.
Supported range: sigma^2 is rounded to the nearest rational with denominator q such that
2 p q t^2 < 2^55 (t = floor(sigma) + 1); sigma up to about 11,000. The exact sigma^2 used is
``DiscreteGaussianSampler.sigma2`` (a Fraction) and is what accounting uses.

Distributed DP: Kairouz, Liu, Steinke 2021 ("The Distributed Discrete Gaussian Mechanism
for Federated Learning with Secure Aggregation"). Each client: clip to L2 norm c, pad to a
power of two D, randomly rotate (randomized Walsh-Hadamard with a *public* per-round seed,
so the server can invert it), scale by 1/gamma, conditionally randomize-round to integers
(retry until ||x||_2 <= Delta_2), add N_Z(0, sigma^2) per coordinate, reduce mod 2^k. The
server sums modulo 2^k (in secure aggregation it learns only this sum), maps to signed,
multiplies by gamma and inverts the rotation.

Noise and dropouts: sigma^2 = (z Delta_2)^2 / m where m = ``min_survivors`` (e.g. the
secure-aggregation threshold t: the protocol aborts below it). n >= m survivors give the
sum variance n sigma^2 >= (z Delta_2)^2; the *actual* survivors' variance sum is what the
:class:`~secagg.dp.events.DistributedDiscreteGaussianEvent` records, and the budget guard
checks the worst case n = m before the round. Dropped clients' noise is simply absent.

Threat model: honest-but-curious server that sees only the modular sum (secure
aggregation); clients trust their own noise. Costs per client: O(D log D) rotation,
O(D) rounding and sampling; server O(n D) modular sum + O(D log D) inverse rotation.
Units: gamma (original units per integer step), sigma^2 in integer units^2, k bits.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from secagg.dp.events import DistributedDiscreteGaussianEvent, check_count, check_noise_multiplier, rounded_l2_bound
from secagg.dp.mechanisms import clip_l2, csprng_uniform
from secagg.errors import ConfigError, DataError

_DEN_LIMIT = 2**55
#: Largest local noise std (integer units) plan_round chooses; the exact sampler supports ~11,000.
SIGMA_MAX = 8192.0


# ------------------------------------------------------------------ exact primitives

def _bit_length(x: np.ndarray) -> np.ndarray:
    """Exact bit length of each uint64 (frexp estimate, then corrected by integer shifts)."""
    x = x.astype(np.uint64)
    k = np.frexp(x.astype(np.float64))[1].astype(np.int64)  # may be off by one near powers of two
    k = np.clip(k, 0, 64)
    too_big = (k > 0) & ((x >> np.clip(k - 1, 0, 63).astype(np.uint64)) == 0)
    k[too_big] -= 1
    too_small = (k < 64) & ((x >> np.clip(k, 0, 63).astype(np.uint64)) != 0)
    k[too_small] += 1
    return k.astype(np.uint64)


def uniform_below(m: np.ndarray) -> np.ndarray:
    """Exactly uniform integers in [0, m_i) for each m_i >= 1 (int64 < 2^63), from os.urandom."""
    m = np.asarray(m, dtype=np.int64)
    if m.size and (m.min() < 1):
        raise ConfigError("uniform_below: every bound must be >= 1")
    mu = m.astype(np.uint64)
    k = _bit_length(mu - np.uint64(1))
    shift = np.where(k == 0, np.uint64(63), np.uint64(64) - k)
    out = np.zeros(m.shape, dtype=np.int64)
    todo = np.arange(m.size)
    while todo.size:
        w = np.frombuffer(os.urandom(8 * todo.size), dtype=np.uint64)
        r = w >> shift[todo]
        r = np.where(k[todo] == 0, np.uint64(0), r)
        ok = r < mu[todo]
        out[todo[ok]] = r[ok].astype(np.int64)
        todo = todo[~ok]
    return out


def bernoulli_exp_frac(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact Bernoulli(exp(-num/den)) for 0 <= num <= den < 2^55 (CKS 2020, Alg. 1)."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    res = np.zeros(num.shape, dtype=bool)
    K = np.ones(num.shape, dtype=np.int64)
    act = np.arange(num.size)
    while act.size:
        if np.any(K[act] > (2**63 - 1) // den[act]):  # probability < 1/128!, never in practice
            raise OverflowError("bernoulli_exp_frac: counter overflow")
        a = uniform_below(den[act] * K[act]) < num[act]  # Bernoulli(gamma / K)
        stop = act[~a]
        res[stop] = (K[stop] % 2) == 1
        act = act[a]
        K[act] += 1
    return res


def bernoulli_exp(num, den) -> np.ndarray:
    """Exact Bernoulli(exp(-num/den)) for any num >= 0 (Python ints allowed), den < 2^55."""
    num = np.asarray(num, dtype=object)
    den = np.asarray(den, dtype=object)
    gint = (num // den).astype(np.int64)
    rem = (num - gint.astype(object) * den).astype(np.int64)
    den64 = den.astype(np.int64)
    res = np.ones(num.shape, dtype=bool)
    act = np.flatnonzero(gint > 0)
    j = 0
    ones = np.ones(num.size, dtype=np.int64)
    while act.size:  # gamma_int independent Bernoulli(exp(-1)), all must succeed
        b = bernoulli_exp_frac(ones[act], ones[act])
        res[act[~b]] = False
        act = act[b]
        j += 1
        act = act[gint[act] > j]
    idx = np.flatnonzero(res)
    res[idx] = bernoulli_exp_frac(rem[idx], den64[idx])
    return res


def discrete_laplace(n: int, t: int) -> np.ndarray:
    """``n`` exact samples with P(y) proportional to exp(-|y|/t), integer t >= 1 (CKS 2020, Alg. 2)."""
    out = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    tt = np.int64(t)
    while todo.size:
        m = todo.size
        u = uniform_below(np.full(m, tt))
        d = bernoulli_exp_frac(u, np.full(m, tt))
        v = np.zeros(m, dtype=np.int64)
        idx = np.flatnonzero(d)
        ones = np.ones(m, dtype=np.int64)
        while idx.size:  # V ~ geometric: count successes of Bernoulli(exp(-1))
            a = bernoulli_exp_frac(ones[idx], ones[idx])
            v[idx[a]] += 1
            idx = idx[a]
        x = u + tt * v
        b = np.frombuffer(os.urandom(m), dtype=np.uint8) & 1
        ok = d & ~((b == 1) & (x == 0))
        y = np.where(b == 1, -x, x)
        out[todo[ok]] = y[ok]
        todo = todo[~ok]
    return out


def _rational_sigma2(sigma2) -> tuple[int, int, int]:
    s = Fraction(sigma2)
    if s <= 0:
        raise ConfigError(f"sigma2 must be > 0, got {sigma2!r}")
    max_q = 2**20
    while max_q >= 1:
        f = s.limit_denominator(max_q)
        if f > 0:
            p, q = f.numerator, f.denominator
            t = math.isqrt(p // q) + 1
            if 2 * p * q * t * t < _DEN_LIMIT:
                return p, q, t
        max_q //= 4
    raise ConfigError(f"sigma2={float(s):.6g} is outside the exact sampler's range (sigma up to about 11,000)")


@dataclass(frozen=True)
class DiscreteGaussianSampler:
    """Exact sampler of N_Z(0, sigma2): P(y) proportional to exp(-y^2 / (2 sigma2)), y integer.

    ``sigma2`` may be an int, Fraction or float; it is stored as the exact rational used.
    """

    sigma2: Fraction
    _p: int = field(init=False, repr=False)
    _q: int = field(init=False, repr=False)
    _t: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            ok = math.isfinite(float(self.sigma2)) and float(self.sigma2) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"sigma2 must be a finite number > 0, got {self.sigma2!r}")
        p, q, t = _rational_sigma2(self.sigma2)
        object.__setattr__(self, "sigma2", Fraction(p, q))
        object.__setattr__(self, "_p", p)
        object.__setattr__(self, "_q", q)
        object.__setattr__(self, "_t", t)

    def sample(self, n: int) -> np.ndarray:
        """``n`` independent samples (int64), CKS 2020 Alg. 3."""
        n = check_count(n, "n", minimum=0)
        p, q, t = self._p, self._q, self._t
        den = 2 * p * q * t * t
        out = np.zeros(n, dtype=np.int64)
        todo = np.arange(n)
        while todo.size:
            y = discrete_laplace(todo.size, t)
            a = np.abs(y).astype(object) * (q * t) - p
            num = a * a  # (|y| - sigma2/t)^2 / (2 sigma2) = num / den, exact
            c = bernoulli_exp(num, np.full(todo.size, den, dtype=object))
            out[todo[c]] = y[c]
            todo = todo[~c]
        return out


def discrete_gaussian_pmf(support: np.ndarray, sigma2: float) -> np.ndarray:
    """The exact pmf of N_Z(0, sigma2) on ``support`` (normalized over a +-(60 sigma + 60) window)."""
    s = math.sqrt(float(sigma2))
    w = int(60 * s) + 60
    allk = np.arange(-w, w + 1, dtype=np.float64)
    z = np.exp(-allk**2 / (2 * float(sigma2))).sum()
    return np.exp(-np.asarray(support, dtype=np.float64) ** 2 / (2 * float(sigma2))) / z


# ------------------------------------------------------------------ rotation

def next_pow2(d: int) -> int:
    return 1 << max(0, (int(d) - 1).bit_length())


def fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh-Hadamard transform over the last axis (length a power of two), O(D log D)."""
    x = np.array(a, dtype=np.float64, copy=True)
    n = x.shape[-1]
    h = 1
    while h < n:
        x = x.reshape(-1, n // (2 * h), 2, h)
        u, v = x[:, :, 0, :], x[:, :, 1, :]
        x = np.stack([u + v, u - v], axis=2).reshape(-1, n)
        h *= 2
    return x.reshape(np.shape(a))


def rotation_signs(seed: bytes, dim: int) -> np.ndarray:
    """Public +-1 diagonal of the randomized Hadamard rotation, expanded from ``seed`` with SHAKE-256."""
    if not isinstance(seed, bytes) or len(seed) < 16:
        raise ConfigError("rotation seed must be at least 16 bytes")
    bits = np.unpackbits(np.frombuffer(hashlib.shake_256(b"secagg.dp.rotation" + seed).digest((dim + 7) // 8),
                                       dtype=np.uint8))[:dim]
    return 1.0 - 2.0 * bits.astype(np.float64)


def rotate(x: np.ndarray, seed: bytes) -> np.ndarray:
    """H D x / sqrt(D): an orthogonal map, so L2 norms are preserved (len(x) a power of two)."""
    D = x.shape[-1]
    return fwht(rotation_signs(seed, D) * x) / math.sqrt(D)


def unrotate(y: np.ndarray, seed: bytes) -> np.ndarray:
    D = y.shape[-1]
    return rotation_signs(seed, D) * fwht(y) / math.sqrt(D)


# ------------------------------------------------------------------ distributed DP

@dataclass(frozen=True)
class DistributedDPConfig:
    """Parameters of the distributed discrete Gaussian mechanism.

    clip_norm: c, L2 clip of each update (original units).
    noise_multiplier: z; the sum of ``min_survivors`` clients' noise has std z * Delta_2.
    min_survivors: m, the fewest clients whose noise may end up in a released sum
      (set it to the secure-aggregation threshold); more survivors only add noise.
    max_clients: the most clients summed in a round (sizes the modular range).
    modulus_bits: k, values live in Z_{2^k} (8..62).
    granularity: gamma; ``None`` = the finest gamma for which the sum fits in 2^k w.h.p. and
      the local noise std stays <= SIGMA_MAX integer units.
    beta: failure probability per conditional-rounding attempt (Kairouz et al. use e^-0.5).
    """

    clip_norm: float
    noise_multiplier: float
    min_survivors: int
    max_clients: int
    modulus_bits: int = 32
    granularity: float | None = None
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"clip_norm must be finite and > 0, got {self.clip_norm!r}")
        check_noise_multiplier(self.noise_multiplier)
        check_count(self.min_survivors, "min_survivors")
        check_count(self.max_clients, "max_clients")
        if self.max_clients < self.min_survivors:
            raise ConfigError(f"max_clients ({self.max_clients}) must be >= min_survivors ({self.min_survivors})")
        if not (isinstance(self.modulus_bits, int) and 8 <= self.modulus_bits <= 62):
            raise ConfigError(f"modulus_bits must be an int in [8, 62], got {self.modulus_bits!r}")
        if self.granularity is not None and not (math.isfinite(self.granularity) and self.granularity > 0):
            raise ConfigError(f"granularity must be None or > 0, got {self.granularity!r}")
        if not (0.0 <= self.beta < 1.0):
            raise ConfigError(f"beta must be in [0, 1), got {self.beta!r}")


@dataclass(frozen=True)
class DistributedDPRound:
    """Everything public about one round: rotation seed, gamma, Delta_2, sigma^2, dims."""

    config: DistributedDPConfig
    dim: int
    padded_dim: int
    seed: bytes
    granularity: float
    l2_bound: float
    sampler: DiscreteGaussianSampler

    @property
    def local_variance(self) -> float:
        return float(self.sampler.sigma2)

    @property
    def l1_bound(self) -> float:
        return min(self.l2_bound**2, math.sqrt(self.padded_dim) * self.l2_bound)

    def event(self, survivors: int, sampling_rate: float = 1.0) -> DistributedDiscreteGaussianEvent:
        """The accounting event when ``survivors`` clients' noise is in the released sum."""
        return DistributedDiscreteGaussianEvent(self.l2_bound, self.l1_bound, self.local_variance, survivors,
                                                self.padded_dim, sampling_rate)

    # -------------------------------------------------------------- client side
    def encode(self, delta: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Client: clip, rotate, scale, round, add local noise, reduce mod 2^k -> uint64 in [0, 2^k).

        ``noise`` (optional) is this client's N_Z(0, sigma^2) vector drawn in advance from
        :attr:`sampler` (see :meth:`encode_many`); by default it is drawn here."""
        v = np.asarray(delta)
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise DataError(f"update must have shape ({self.dim},), got {v.shape}")
        x, _ = clip_l2(v, self.config.clip_norm)
        xp = np.zeros(self.padded_dim)
        xp[: self.dim] = x
        y = rotate(xp, self.seed) / self.granularity
        r = conditional_round(y, self.l2_bound)
        if noise is None:
            noise = self.sampler.sample(self.padded_dim)
        elif noise.shape != (self.padded_dim,) or noise.dtype != np.int64:
            raise DataError(f"noise must be int64 of shape ({self.padded_dim},)")
        r = r + noise
        k = self.config.modulus_bits
        return np.mod(r, 2**k).astype(np.uint64)

    def encode_many(self, deltas) -> list[np.ndarray]:
        """Simulation shortcut: encode several clients' updates, drawing all their (independent)
        noise vectors in one vectorised sampler call. Same distribution as separate :meth:`encode`."""
        deltas = list(deltas)
        noise = self.sampler.sample(len(deltas) * self.padded_dim).reshape(len(deltas), self.padded_dim)
        return [self.encode(d, noise[i]) for i, d in enumerate(deltas)]

    # -------------------------------------------------------------- server side
    def decode_sum(self, modular_sum: np.ndarray) -> np.ndarray:
        """Server: signed representative of the modular sum, times gamma, rotated back, truncated."""
        k = self.config.modulus_bits
        s = np.asarray(modular_sum, dtype=np.uint64) % np.uint64(2**k)
        signed = s.astype(np.int64) - np.where(s >= np.uint64(2 ** (k - 1)), np.int64(2**k), np.int64(0))
        return unrotate(signed.astype(np.float64) * self.granularity, self.seed)[: self.dim]


def conditional_round(y: np.ndarray, l2_bound: float, max_tries: int = 1000) -> np.ndarray:
    """Unbiased randomized rounding to integers, retried until the L2 norm is <= ``l2_bound``."""
    fl = np.floor(y)
    frac = y - fl
    for _ in range(max_tries):
        r = (fl + (csprng_uniform(y.size) < frac)).astype(np.int64)
        if float(np.sum(r.astype(np.float64) ** 2)) <= l2_bound**2:
            return r
    raise DataError(f"conditional rounding failed {max_tries} times (bound {l2_bound:g}); raise beta or check the clip")


def modular_sum(vectors, modulus_bits: int) -> np.ndarray:
    """Sum of uint64 vectors modulo 2^k (what secure aggregation reveals)."""
    acc = None
    for v in vectors:
        v = np.asarray(v, dtype=np.uint64)
        acc = v.copy() if acc is None else acc + v  # uint64 wraps mod 2^64, a multiple of 2^k
    if acc is None:
        raise DataError("modular_sum: no vectors")
    return acc % np.uint64(2**modulus_bits)


def plan_round(config: DistributedDPConfig, dim: int, seed: bytes | None = None) -> DistributedDPRound:
    """Public parameters of a round for vectors of length ``dim`` (fresh CSPRNG rotation seed by default)."""
    dim = check_count(dim, "dim")
    D = next_pow2(dim)
    seed = seed if seed is not None else os.urandom(32)
    c, z, m, n, k = config.clip_norm, config.noise_multiplier, config.min_survivors, config.max_clients, config.modulus_bits

    def params(gamma: float) -> tuple[float, float]:
        l2 = rounded_l2_bound(c / gamma, D, config.beta)
        sigma_local = z * l2 / math.sqrt(m)
        return l2, sigma_local

    def fits(gamma: float) -> bool:
        # the modular range holds the sum w.h.p., and the local sigma is inside the sampler's range
        return needed_range(gamma) <= 2 ** (k - 1) and params(gamma)[1] <= SIGMA_MAX

    def needed_range(gamma: float) -> float:
        _, s = params(gamma)
        # each rotated coordinate is ~ N(0, (c/gamma)^2/D); bound the worst case over D coords and n clients
        flat = math.sqrt(2 * math.log(2 * D * n / 1e-9))
        return n * (c / gamma / math.sqrt(D) * flat + 1) + 6.0 * math.sqrt(n) * s + 1

    if config.granularity is not None:
        gamma = config.granularity
    else:
        lo, hi = 1e-12 * c, 1e6 * c  # needed_range decreases in gamma
        if not fits(hi):
            raise ConfigError(f"modulus_bits={k} is too small for {n} clients of dimension {dim}")
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            if fits(mid):
                hi = mid
            else:
                lo = mid
        gamma = hi
    l2, sigma_local = params(gamma)
    sampler = DiscreteGaussianSampler(Fraction(sigma_local**2).limit_denominator(2**20))
    return DistributedDPRound(config, dim, D, seed, gamma, l2, sampler)


__all__ = ["DiscreteGaussianSampler", "discrete_gaussian_pmf", "discrete_laplace", "bernoulli_exp",
           "bernoulli_exp_frac", "uniform_below", "fwht", "rotate", "unrotate", "rotation_signs",
           "DistributedDPConfig", "DistributedDPRound", "plan_round", "conditional_round", "modular_sum", "next_pow2"]
