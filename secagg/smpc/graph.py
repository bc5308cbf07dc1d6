"""SecAgg+ communication graphs and parameter derivation (Bell et al., CCS 2020).

In SecAgg+ each client shares keys and masks only with its neighbours in a random
k-regular graph instead of with all n-1 others, cutting client cost from O(n) to
O(log n) key agreements, shares and mask expansions (server: O(n log n) instead of
O(n^2)). We use a *random Harary graph* H(k, n): the clients are placed on a ring in a
random order and each is joined to the k/2 nearest on either side.

The order is derived deterministically from the public session id with AES-CTR (via
:mod:`secagg.smpc.prg`), so every party computes the same graph without extra messages
and without ``numpy.random``; the server cannot choose it freely once the session id is
fixed.

Parameters
----------
A client's secrets are t-of-(k+1) shared among its *closed* neighbourhood (its k
neighbours and itself). :func:`derive_params` picks the smallest even degree k and a
threshold t such that, with n clients, dropout fraction ``delta`` and corrupted-client
fraction ``gamma`` (each client independently, as in Bell et al.'s analysis), by a
union bound over the n clients:

* correctness: ``n * P[Bin(k+1, 1-delta) < t] <= 2**-eta`` (every neighbourhood keeps
  t surviving share holders),
* privacy, no double reveal: ``n * P[Bin(k+1, gamma) >= 2t - (k+1)] <= 2**-sigma``;
  honest holders give out only one kind of share per client, so the adversary needs
  ``2t - (k+1)`` corrupted holders to obtain both b_u and s_u,
* privacy, no isolated honest client: ``n * (delta + gamma)**k <= 2**-sigma`` (a client
  whose neighbours are all dropped or corrupted would have its input exposed).

This is a union-bound simplification of Bell et al.'s Theorem 3.6 (which also bounds
the connectivity of the honest subgraph); it is conservative for the neighbourhood
conditions and only a necessary condition for connectivity. If no k < n-1 satisfies
the bounds, the complete graph (plain SecAgg, k = n-1) is returned.

Small federations: when no k < n-1 meets the bounds, the complete graph is returned with
the smallest secure t, which for small n is t = n (at the default rates delta = gamma =
0.05 this holds for every n <= 13; ``derive_params(10)`` gives k = 9, t = 10). With t = n
*any* dropout aborts the round (:class:`~secagg.errors.NotEnoughClientsError`); a caller
that must tolerate dropouts with few clients has to choose t itself (and accept the
weaker double-reveal bound that :meth:`SecAggPlusParams.explain` then reports).
Pass :attr:`SecAggPlusParams.session_degree` (not ``degree``) to
:class:`~secagg.smpc.SessionConfig`: it is ``None`` for the complete graph, whose degree
n-1 may be odd and is not a valid Harary degree.

Threat model: ``derive_params(..., mode='honest')`` (the default) searches ``t > m/2``,
enough against an honest-but-curious server. ``mode='active'`` searches only
``t >= floor(2m/3) + 1`` (``3t > 2m``, Bonawitz et al.'s bound, which
:class:`~secagg.smpc.SessionConfig` enforces in active mode): with ``t`` near ``m/2`` a
deviating server needs no colluder at all to get two survivor sets signed by t clients
each. In active mode the tolerated colluding share holders per neighbourhood are
``c <= 2t - m - 1`` (the same count as the double-reveal bound above).

Choosing (degree, t) for a round: :func:`plan_session` is the one rule every caller uses
(the FedAvg :class:`~secagg.fl.secure_aggregators.SecAggAggregator` and the Flower
workflow): sparse graph -> the derived t; complete-graph fallback (or plain SecAgg) ->
:func:`default_threshold` (honest ``floor(n/2)+1``, active ``floor(2n/3)+1``), unless the
caller sets t.

Costs: building the graph is O(n k) time and memory; derivation is O(k^2) binomial tails.
scipy.stats (about 0.5-2 s to import) is imported inside :func:`derive_params` only, so
importing :mod:`secagg.smpc` (e.g. in every Flower ClientApp process) does not pay for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import ConfigError
from secagg.smpc import prg

__all__ = ["harary_graph", "complete_graph", "SecAggPlusParams", "derive_params", "default_threshold", "plan_session"]


def complete_graph(ids: Sequence[int]) -> dict[int, frozenset[int]]:
    s = frozenset(ids)
    return {u: s - {u} for u in ids}


def harary_graph(ids: Sequence[int], degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Random Harary graph H(degree, n) over ``ids``; neighbour sets exclude the node itself.

    ``degree`` must be even and >= 2; ``degree >= n - 1`` gives the complete graph. The
    ring order is a permutation drawn from AES-CTR keyed by HKDF(seed).
    """
    ids = list(ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ConfigError("graph node ids must be distinct")
    if not (isinstance(degree, int) and degree >= 2 and degree % 2 == 0):
        raise ConfigError(f"SecAgg+ degree must be an even int >= 2, got {degree!r}")
    if degree >= n - 1:
        return complete_graph(ids)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"secagg/v1/harary-graph").derive(seed)
    r = prg.expand(key, n, modulus_bits=64)
    order = [ids[i] for i in np.lexsort((np.arange(n), r))]
    half = degree // 2
    out: dict[int, frozenset[int]] = {}
    for pos, u in enumerate(order):
        out[u] = frozenset(order[(pos + d) % n] for d in range(-half, half + 1) if d != 0)
    return out


@dataclass(frozen=True)
class SecAggPlusParams:
    """Derived SecAgg+ parameters; :meth:`explain` says why they were chosen."""

    n: int
    degree: int
    threshold: int
    dropout_rate: float
    corruption_rate: float
    sigma: int
    eta: int
    log2_correctness_failure: float
    log2_double_reveal: float
    log2_isolation: float
    mode: str = "honest"

    @property
    def complete(self) -> bool:
        """True when no sparse graph met the bounds: every client neighbours all n-1 others."""
        return self.degree >= self.n - 1

    @property
    def session_degree(self) -> int | None:
        """The ``degree`` argument for :class:`~secagg.smpc.SessionConfig`: ``None`` for the
        complete graph (plain SecAgg; ``degree`` is then n-1, possibly odd, which SessionConfig
        rejects), else the even Harary degree k.

        >>> p = derive_params(10)
        >>> cfg = SessionConfig(session_id=new_session_id(), round_id=0, client_ids=tuple(range(1, 11)),
        ...                     threshold=p.threshold, vector_length=4, degree=p.session_degree)  # doctest: +SKIP
        """
        return None if self.complete else self.degree

    @property
    def neighbourhood_size(self) -> int:
        """m = k + 1: holders of each client's shares (its neighbours and itself)."""
        return self.degree + 1

    @property
    def tolerated_dropouts(self) -> int:
        """Share holders a closed neighbourhood may lose before the round aborts: m - t
        (0 for small n, where t = n and any dropout aborts)."""
        return self.degree + 1 - self.threshold

    def explain(self) -> str:
        kind = "complete graph (plain SecAgg)" if self.complete else f"random Harary graph H({self.degree}, {self.n})"
        m = self.degree + 1
        def ok(v: float, bound: int) -> str:
            return f"{v:.1f} <= -{bound}" if v <= -bound else f"{v:.1f} > -{bound} (NOT met: too few clients for this bound)"

        return (
            f"SecAgg+ parameters for n={self.n} clients ({self.mode} mode), dropout rate delta={self.dropout_rate:g}, "
            f"corruption rate gamma={self.corruption_rate:g}, security sigma={self.sigma}, correctness eta={self.eta}:\n"
            f"  graph: {kind}; each client has k={self.degree} neighbours, secrets shared t-of-{m} "
            f"(t={self.threshold}) over its closed neighbourhood\n"
            f"  correctness: log2(n * P[Bin({m}, 1-delta) < {self.threshold}]) = {ok(self.log2_correctness_failure, self.eta)}\n"
            f"  no double reveal: log2(n * P[Bin({m}, gamma) >= 2t-{m}={2 * self.threshold - m}]) = {ok(self.log2_double_reveal, self.sigma)}\n"
            f"  no isolated honest client: log2(n * (delta+gamma)^k) = {ok(self.log2_isolation, self.sigma)}\n"
            + (f"  active mode: t={self.threshold} >= floor(2m/3)+1={2 * m // 3 + 1} (3t > 2m, Bonawitz's bound); "
               f"tolerates c <= 2t-m-1 = {2 * self.threshold - m - 1} colluding share holders per neighbourhood\n"
               if self.mode == "active" else
               "  honest mode: t > m/2 protects against an honest-but-curious server only; "
               "an active (deviating) server needs derive_params(..., mode='active') (3t > 2m)\n")
            + f"  cost per client: {self.degree} key agreements x2, {self.degree} share ciphertexts, {self.degree + 1} mask expansions"
            + ("" if self.tolerated_dropouts else
               f"\n  WARNING: t = {self.threshold} = the whole neighbourhood: any dropout aborts the round")
        )


def _log2_n(n: int, logp: float) -> float:
    return math.log2(n) + logp / math.log(2) if logp > -math.inf else -math.inf


def derive_params(n: int, dropout_rate: float = 0.05, corruption_rate: float = 0.05, sigma: int = 40, eta: int = 20,
                  mode: str = "honest") -> SecAggPlusParams:
    """Smallest even degree k and a threshold t meeting the bounds in the module docstring.

    ``mode='active'`` searches only thresholds with ``3t > 2m`` (m = k+1), so the result is
    valid for an active-mode :class:`~secagg.smpc.SessionConfig` (also with
    ``corruption_rate=0``, where honest mode would pick t = floor(m/2)+1).

    For small n the result is the complete graph, often with t = n (no dropout tolerated;
    see :attr:`SecAggPlusParams.tolerated_dropouts`); use :attr:`SecAggPlusParams.session_degree`
    for :class:`~secagg.smpc.SessionConfig`.
    """
    from scipy import stats  # lazy: ~0.5-2 s import, needed only here (not in every ClientApp process)

    if not (isinstance(n, int) and n >= 3):
        raise ConfigError(f"n must be an int >= 3, got {n!r}")
    if not (0 <= dropout_rate < 0.5):
        raise ConfigError(f"dropout_rate must be in [0, 0.5), got {dropout_rate!r}")
    if not (0 <= corruption_rate < 0.5) or dropout_rate + corruption_rate >= 0.5:
        raise ConfigError(f"corruption_rate must be in [0, 0.5) with dropout_rate + corruption_rate < 0.5, got {corruption_rate!r}")
    if mode not in ("honest", "active"):
        raise ConfigError(f"mode must be 'honest' or 'active', got {mode!r}")
    if not (isinstance(sigma, int) and 1 <= sigma <= 128 and isinstance(eta, int) and 1 <= eta <= 128):
        raise ConfigError(f"sigma and eta must be ints in [1, 128], got sigma={sigma!r}, eta={eta!r}")

    def tails(k: int, t: int) -> tuple[float, float, float]:
        m = k + 1
        corr = _log2_n(n, stats.binom.logcdf(t - 1, m, 1 - dropout_rate))
        need = 2 * t - m
        dbl = _log2_n(n, stats.binom.logsf(need - 1, m, corruption_rate)) if need > 0 else math.log2(n)
        bad = dropout_rate + corruption_rate
        iso = math.log2(n) + k * math.log2(bad) if bad > 0 else -math.inf
        return corr, dbl, iso

    def t_min(m: int) -> int:
        return default_threshold(m, mode)

    k = 2
    while k < n - 1:
        m = k + 1
        for t in range(t_min(m), m + 1):
            corr, dbl, iso = tails(k, t)
            if dbl <= -sigma and iso <= -sigma:
                if corr <= -eta:
                    return SecAggPlusParams(n, k, t, dropout_rate, corruption_rate, sigma, eta, corr, dbl, iso, mode)
                break  # larger t only hurts correctness
        k += 2
    # complete graph: plain SecAgg with the smallest t that is secure
    k = n - 1
    m = n
    t = t_min(m)
    while t < m and tails(k, t)[1] > -sigma:
        t += 1
    corr, dbl, iso = tails(k, t)
    return SecAggPlusParams(n, k, t, dropout_rate, corruption_rate, sigma, eta, corr, dbl, iso, mode)


def default_threshold(m: int, mode: str = "honest") -> int:
    """SecAgg's default threshold for closed-neighbourhood size m: ``floor(m/2)+1`` in honest
    mode, ``floor(2m/3)+1`` in active mode (the smallest t with 3t > 2m)."""
    if mode not in ("honest", "active"):
        raise ConfigError(f"mode must be 'honest' or 'active', got {mode!r}")
    return 2 * m // 3 + 1 if mode == "active" else m // 2 + 1


def plan_session(n: int, *, mode: str = "honest", secagg_plus: bool = False, threshold: int | None = None,
                 degree: int | None = None, dropout_rate: float = 0.05, corruption_rate: float = 0.05,
                 sigma: int = 40, eta: int = 20) -> tuple[int | None, int]:
    """``(session_degree, t)`` for a round of n clients: THE rule shared by every caller.

    * ``secagg_plus`` with ``degree=None``: :func:`derive_params` (in ``mode``); if it finds a
      sparse Harary graph, that degree and (unless ``threshold`` is given) its derived t,
      which satisfies 3t > 2m in active mode.
    * ``secagg_plus`` with an explicit even ``degree``: that graph (None when it is complete,
      ``degree >= n-1``), t = ``threshold`` or :func:`default_threshold` of m = degree+1.
    * plain SecAgg, n < 3, or no sparse graph meets the bounds (complete-graph fallback):
      ``degree=None`` and t = ``threshold`` or SecAgg's :func:`default_threshold` of n
      (honest ``floor(n/2)+1``, active ``floor(2n/3)+1``), NOT derive_params' complete-graph
      t (often t = n for small n, where any dropout would abort the round).

    The result is checked against :class:`~secagg.smpc.SessionConfig`'s rules here
    (ConfigError naming t, m and the bound), before any key is made.
    """
    if not (isinstance(n, int) and n >= 2):
        raise ConfigError(f"n must be an int >= 2, got {n!r}")
    if threshold is not None and not isinstance(threshold, int):
        raise ConfigError(f"threshold must be None (default) or an int, got {threshold!r}")
    d: int | None = None
    t = threshold
    if secagg_plus:
        if degree is not None:
            if not (isinstance(degree, int) and degree >= 2 and degree % 2 == 0):
                raise ConfigError(f"degree must be None (derived) or an even int >= 2, got {degree!r}")
            d = degree if degree < n - 1 else None
        elif n >= 3:
            p = derive_params(n, dropout_rate, corruption_rate, sigma, eta, mode=mode)
            if not p.complete:
                d = p.degree
                t = threshold if threshold is not None else p.threshold
    m = n if d is None else d + 1
    if t is None:
        t = default_threshold(m, mode)
    if not m / 2 < t <= m:
        raise ConfigError(f"threshold t={t} must satisfy m/2 < t <= m for neighbourhood size m={m}")
    if mode == "active" and not 3 * t > 2 * m:
        raise ConfigError(f"active mode needs 3t > 2m, i.e. t >= floor(2m/3)+1 = {2 * m // 3 + 1} for neighbourhood "
                          f"size m={m}, got t={t}")
    return d, t
