"""Byzantine-robust aggregation rules and norm bounding, plus the secure-aggregation compatibility rule.

Threat model
------------
Up to ``f`` of the ``n`` clients whose updates reach the aggregator are malicious
(Byzantine): they may send arbitrary finite vectors, colluding and knowing the honest
updates. The server is honest and sees every update *in the clear* -- every rule here
except the client-side :func:`clip_update` / :class:`ClientClipping` needs that, so they
set ``needs_individual_updates = True`` and cannot run under secure aggregation or HE
(see :func:`check_compatible`).

Rules, guarantees (breakdown point = the largest ``f`` the rule tolerates for ``n``
clients) and costs (``n`` clients, ``d`` parameters):

=========================  ==================  =====================  =========================================
rule                       needs n >=          breakdown point        cost
=========================  ==================  =====================  =========================================
:class:`Krum`              2f + 3              f <= (n - 3) / 2       O(n^2 d)   (Blanchard et al., NeurIPS 2017)
:class:`MultiKrum`         2f + 3              f <= (n - 3) / 2       O(n^2 d)   (Blanchard et al. 2017)
:class:`CoordinateMedian`  2f + 1              f <= (n - 1) / 2       O(n d log n) (Yin et al., ICML 2018)
:class:`TrimmedMean`       2f + 1              f <= (n - 1) / 2       O(n d log n) (Yin et al. 2018)
:class:`Bulyan`            4f + 3              f <= (n - 3) / 4       O(n^2 d)   (El Mhamdi et al., ICML 2018)
:class:`NormBounding`      1                   0 (bounded influence)  O(n d)     (Sun et al. 2019, "Can you
                                                                                  really backdoor FL?")
=========================  ==================  =====================  =========================================

``f`` is the number of Byzantine clients the rule is configured to tolerate; when a round
delivers too few updates for it (e.g. clients dropped out) ``aggregate`` raises
:class:`~secagg.errors.ConfigError` naming ``f``, ``n`` and the requirement, and keeps no
state. Norm bounding has no breakdown point in the classical sense (one attacker can still
move the mean), but each client's influence on the weighted mean is at most
``bound * w_i / sum(w)`` in L2 norm.

The robust rules (Krum, median, trimmed mean, Bulyan) weight every selected update equally
(example counts are client-reported and would let an attacker buy influence); norm bounding
keeps the FedAvg example-count weights.

Secure-aggregation contract (class flags)
-----------------------------------------
* ``needs_individual_updates = True``: the aggregator must see each client's update in the
  clear (defined on :class:`~secagg.fl.aggregator.Aggregator`).
* ``hides_individual_updates = True``: the aggregator (secure aggregation, HE) lets the
  server see only the sum. Secure/HE aggregators set this **class attribute**.
* Wrappers (compression, participation, clipping, trust pre-weighting) expose the wrapped
  aggregator as ``.inner``; composite aggregators may list parts in ``.components``.

:func:`check_compatible` walks an aggregator and everything reachable through ``inner`` /
``components`` and raises :class:`~secagg.errors.ConfigError` when one part needs individual
updates and another hides them. Every wrapper in :mod:`secagg.fl` calls it in ``__init__``.
What does compose with secure aggregation: client-side clipping (:class:`ClientClipping`),
trust weights fixed before masking (:class:`secagg.fl.trust.PreMaskTrustWeighting`),
compression, over-selection and deadlines.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from secagg.errors import ConfigError
from secagg.fl.aggregator import AggregateResult, Aggregator, ClientUpdate, check_updates, serialize_vector

__all__ = [
    "Bulyan",
    "ClientClipping",
    "CoordinateMedian",
    "Krum",
    "MultiKrum",
    "NormBounding",
    "TrimmedMean",
    "check_combination",
    "check_compatible",
    "clip_update",
    "hides_individual_updates",
    "needs_individual_updates",
]


# ---------------------------------------------------------------------------------------
# compatibility rule
# ---------------------------------------------------------------------------------------
def _parts(agg: Any, seen: Optional[set[int]] = None) -> Iterator[Any]:
    """Yield ``agg`` and every aggregator reachable through ``inner`` / ``components``."""
    seen = set() if seen is None else seen
    if agg is None or id(agg) in seen:
        return
    seen.add(id(agg))
    yield agg
    inner = getattr(agg, "inner", None)
    if inner is not None:
        yield from _parts(inner, seen)
    for c in getattr(agg, "components", ()) or ():
        yield from _parts(c, seen)


def _needs_itself(p: Any) -> bool:
    # A part needs individual updates if its class says so, or (for a leaf, i.e. something
    # without ``inner``) its instance says so. Wrappers mirror their inner aggregator's flag on
    # the instance for callers, so for them only the class-level flag counts.
    if bool(getattr(type(p), "needs_individual_updates", False)):
        return True
    return getattr(p, "inner", None) is None and bool(getattr(p, "needs_individual_updates", False))


def _hides_itself(p: Any) -> bool:
    if bool(getattr(type(p), "hides_individual_updates", False)):
        return True
    return getattr(p, "inner", None) is None and bool(getattr(p, "hides_individual_updates", False))


def needs_individual_updates(agg: Any) -> bool:
    """True if ``agg`` or any part of it must see individual updates in the clear."""
    return any(_needs_itself(p) for p in _parts(agg))


def hides_individual_updates(agg: Any) -> bool:
    """True if ``agg`` or any part of it shows the server only the aggregate (secure aggregation, HE)."""
    return any(_hides_itself(p) for p in _parts(agg))


def check_compatible(aggregator: Any) -> None:
    """Refuse an aggregator composition that needs individual updates *and* hides them.

    Raises :class:`ConfigError` naming both parts, e.g. Krum wrapped around (or inside)
    a secure-aggregation or HE aggregator: under secure aggregation the server sees only
    the sum, so a rule that inspects each update cannot run.
    """
    parts = list(_parts(aggregator))
    needers = [p for p in parts if _needs_itself(p)]
    hiders = [p for p in parts if _hides_itself(p)]
    if needers and hiders:
        a = ", ".join(sorted({getattr(p, "name", type(p).__name__) for p in needers}))
        b = ", ".join(sorted({getattr(p, "name", type(p).__name__) for p in hiders}))
        raise ConfigError(
            f"incompatible aggregators: {a} needs every client's update in the clear "
            f"(needs_individual_updates=True), but {b} hides individual updates from the server "
            f"(hides_individual_updates=True: secure aggregation / HE reveal only the sum). "
            f"Under secure aggregation use client-side clipping (ClientClipping / clip_update) or "
            f"trust weights fixed before masking (PreMaskTrustWeighting) instead."
        )


def check_combination(defence: Any, secure: Any) -> None:
    """Check that ``defence`` may run together with ``secure`` (see :func:`check_compatible`)."""

    class _Pair:
        components = (defence, secure)

    check_compatible(_Pair())


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _check_f(f: int) -> int:
    if not isinstance(f, (int, np.integer)) or isinstance(f, bool) or f < 0:
        raise ConfigError(f"f (number of Byzantine clients to tolerate) must be an int >= 0, got {f!r}")
    return int(f)


def _stack(updates: Sequence[ClientUpdate]) -> np.ndarray:
    return np.stack([np.asarray(u.delta, dtype=np.float64) for u in updates])


def _bytes(updates: Sequence[ClientUpdate]) -> dict[int, int]:
    return {u.client_id: len(serialize_vector(u.delta)) for u in updates}


def _result(delta: np.ndarray, updates: Sequence[ClientUpdate], included: Sequence[int], **metrics: float) -> AggregateResult:
    return AggregateResult(
        delta=np.asarray(delta, dtype=np.float32),
        included=tuple(int(i) for i in included),
        upload_bytes=_bytes(updates),
        download_bytes={u.client_id: 0 for u in updates},
        metrics={k: float(v) for k, v in metrics.items()},
    )


def _pairwise_sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each row: sum of squared distances to its ``n - f - 2`` nearest other rows."""
    n = x.shape[0]
    k = n - f - 2
    d = _pairwise_sq_dists(x)
    np.fill_diagonal(d, np.inf)
    part = np.sort(d, axis=1)[:, :k]
    return part.sum(axis=1)


class _RobustBase(Aggregator):
    needs_individual_updates = True
    #: ``n >= min_factor * f + min_offset``
    min_factor: int = 2
    min_offset: int = 1

    def __init__(self, f: int) -> None:
        self.f = _check_f(f)

    @classmethod
    def min_clients(cls, f: int) -> int:
        """Smallest number of updates the rule needs to tolerate ``f`` Byzantine clients."""
        return cls.min_factor * _check_f(f) + cls.min_offset

    @classmethod
    def breakdown_point(cls, n: int) -> int:
        """Largest ``f`` tolerated with ``n`` updates (-1 if ``n`` is too small even for f = 0)."""
        return (int(n) - cls.min_offset) // cls.min_factor

    def _check_n(self, n: int) -> None:
        need = self.min_clients(self.f)
        if n < need:
            raise ConfigError(
                f"{self.name}: tolerating f={self.f} Byzantine clients needs n >= "
                f"{self.min_factor}f+{self.min_offset} = {need} updates, got n={n} "
                f"(with n={n} at most f={max(self.breakdown_point(n), 0)} is possible)"
            )


class Krum(_RobustBase):
    """Krum (Blanchard et al. 2017): return the single update closest to its n-f-2 neighbours.

    Breakdown point: f <= (n-3)/2 (needs n >= 2f+3). Cost O(n^2 d) time, O(n^2 + n d) memory.
    """

    name = "krum"
    min_factor, min_offset = 2, 3

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        self._check_n(len(updates))
        x = _stack(updates)
        scores = krum_scores(x, self.f)
        i = int(np.argmin(scores))
        return _result(x[i], updates, [updates[i].client_id], selected=1, excluded=len(updates) - 1)


class MultiKrum(_RobustBase):
    """Multi-Krum (Blanchard et al. 2017): average the ``m`` updates with the lowest Krum scores.

    ``m`` defaults to ``n - f``. Breakdown point: f <= (n-3)/2 (needs n >= 2f+3 and
    1 <= m <= n - f). Cost O(n^2 d).
    """

    name = "multi_krum"
    min_factor, min_offset = 2, 3

    def __init__(self, f: int, m: Optional[int] = None) -> None:
        super().__init__(f)
        if m is not None and (not isinstance(m, (int, np.integer)) or m < 1):
            raise ConfigError(f"m (updates Multi-Krum averages) must be an int >= 1, got {m!r}")
        self.m = None if m is None else int(m)

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        n = len(updates)
        self._check_n(n)
        m = n - self.f if self.m is None else self.m
        if m > n - self.f:
            raise ConfigError(f"{self.name}: m={m} must be <= n - f = {n - self.f}")
        x = _stack(updates)
        order = np.argsort(krum_scores(x, self.f), kind="stable")[:m]
        return _result(x[order].mean(axis=0), updates, [updates[i].client_id for i in sorted(order)],
                       selected=m, excluded=n - m)


class CoordinateMedian(_RobustBase):
    """Coordinate-wise median (Yin et al. 2018).

    Breakdown point: f <= (n-1)/2 (needs n >= 2f+1): with at most f attackers each
    coordinate of the result lies within [min, max] of the honest values of that coordinate.
    Cost O(n d log n). ``f`` defaults to 0 (no check beyond n >= 1).
    """

    name = "median"
    min_factor, min_offset = 2, 1

    def __init__(self, f: int = 0) -> None:
        super().__init__(f)

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        self._check_n(len(updates))
        x = _stack(updates)
        return _result(np.median(x, axis=0), updates, [u.client_id for u in updates])


class TrimmedMean(_RobustBase):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``f`` largest and ``f`` smallest
    values of every coordinate and average the remaining ``n - 2f``.

    Breakdown point: f <= (n-1)/2 (needs n >= 2f+1); the result stays within the honest
    range per coordinate. Cost O(n d log n).
    """

    name = "trimmed_mean"
    min_factor, min_offset = 2, 1

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        n = len(updates)
        self._check_n(n)
        x = np.sort(_stack(updates), axis=0)
        return _result(x[self.f: n - self.f].mean(axis=0), updates, [u.client_id for u in updates])


class Bulyan(_RobustBase):
    """Bulyan (El Mhamdi et al. 2018): Krum-select ``theta = n - 2f`` updates one at a time,
    then per coordinate average the ``beta = theta - 2f`` values closest to the median.

    Breakdown point: f <= (n-3)/4 (needs n >= 4f+3). Cost O(n^2 d) (Krum distances are
    computed once and reused).
    """

    name = "bulyan"
    min_factor, min_offset = 4, 3

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        n = len(updates)
        self._check_n(n)
        f = self.f
        x = _stack(updates)
        dist = _pairwise_sq_dists(x)
        remaining = list(range(n))
        selected: list[int] = []
        theta = n - 2 * f
        while len(selected) < theta:
            r = len(remaining)
            k = max(r - f - 2, 1)
            sub = dist[np.ix_(remaining, remaining)].copy()
            np.fill_diagonal(sub, np.inf)
            scores = np.sort(sub, axis=1)[:, :k].sum(axis=1)
            j = remaining[int(np.argmin(scores))]
            selected.append(j)
            remaining.remove(j)
        sel = x[sorted(selected)]
        beta = theta - 2 * f
        med = np.median(sel, axis=0)
        idx = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
        closest = np.take_along_axis(sel, idx, axis=0)
        return _result(closest.mean(axis=0), updates, [updates[i].client_id for i in sorted(selected)],
                       selected=theta, excluded=n - theta)


# ---------------------------------------------------------------------------------------
# norm bounding
# ---------------------------------------------------------------------------------------
def _check_bound(bound: float) -> float:
    b = float(bound)
    if not math.isfinite(b) or b <= 0:
        raise ConfigError(f"bound (max L2 norm of an update) must be a finite number > 0, got {bound!r}")
    return b


def clip_update(delta: np.ndarray, bound: float) -> np.ndarray:
    """Client-side norm bounding: scale ``delta`` so that ``||delta||_2 <= bound``.

    A client runs this on its own update *before* masking/encryption, so it composes with
    secure aggregation and HE (the server never needs to see the update). It only helps
    against attackers if clients cannot skip it (trusted client code / attestation) -- or
    combine with a server-side check. Returns float32.
    """
    b = _check_bound(bound)
    d = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    if norm > b:
        d = d * (b / norm)
    return d.astype(np.float32)


class NormBounding(Aggregator):
    """Server-side norm bounding (Sun et al. 2019): clip every update to L2 norm ``bound``,
    then take the example-weighted mean (FedAvg).

    Breakdown point: 0 in the classical sense, but each client can move the result by at
    most ``bound * w_i / sum(w)``. The server computes each update's norm, so this needs
    individual updates; under secure aggregation use :class:`ClientClipping` instead.
    Cost O(n d).
    """

    name = "norm_bounding"
    needs_individual_updates = True

    def __init__(self, bound: float, weighted: bool = True) -> None:
        self.bound = _check_bound(bound)
        self.weighted = bool(weighted)

    @staticmethod
    def breakdown_point(n: int) -> int:
        return 0

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        x = _stack(updates)
        norms = np.linalg.norm(x, axis=1)
        scale = np.minimum(1.0, self.bound / np.maximum(norms, 1e-300))
        w = np.array([u.num_examples if self.weighted else 1 for u in updates], dtype=np.float64)
        mean = (w[:, None] * (x * scale[:, None])).sum(axis=0) / w.sum()
        return _result(mean, updates, [u.client_id for u in updates], clipped=int(np.sum(norms > self.bound)))


class ClientClipping(Aggregator):
    """Simulates every client clipping its own update to ``bound`` (:func:`clip_update`)
    before handing it to ``inner`` -- which may be a secure-aggregation or HE aggregator.

    Same guarantee as :class:`NormBounding` if clients run the clip honestly; cost O(n d)
    on top of ``inner``. ``needs_individual_updates`` mirrors ``inner``.
    """

    name = "client_clipping"
    def __init__(self, inner: Aggregator, bound: float) -> None:
        self.inner = inner
        self.bound = _check_bound(bound)
        check_compatible(self)
        self.name = f"client_clipping({getattr(inner, 'name', type(inner).__name__)})"
        self.needs_individual_updates = needs_individual_updates(inner)
        self.hides_individual_updates = hides_individual_updates(inner)

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        clipped = [ClientUpdate(u.client_id, clip_update(u.delta, self.bound), u.num_examples) for u in updates]
        res = self.inner.aggregate(clipped, round_index=round_index)
        res.metrics = dict(res.metrics)
        res.metrics["clipped"] = float(sum(np.linalg.norm(np.asarray(u.delta, np.float64)) > self.bound for u in updates))
        return res
