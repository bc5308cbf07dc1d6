"""Split a training set across N simulated clients: IID, natural (host/device) or Dirichlet label skew.

``partition(y, n_clients, scheme, ...)`` returns ``n_clients`` sorted, disjoint int64 index
arrays that together cover every row; every client gets at least ``min_size`` rows.
Deterministic in ``seed`` (``numpy.random.default_rng``: simulation randomness only).

* ``iid``: a random permutation cut into near-equal parts.
* ``natural``: whole groups (hosts/devices from ``Dataset.groups``) go to clients; groups are
  placed largest first onto the currently smallest client (greedy balancing; ties broken by
  a seeded shuffle of the group order), so a host's flows never straddle clients. Needs at
  least ``n_clients`` groups.
* ``dirichlet``: per label, client shares are drawn from Dirichlet(alpha) and the label's
  rows are cut in those proportions (Hsu, Qi, Brown 2019, "Measuring the effects of
  non-identical data distribution"; Yurochkin et al. 2019). Small alpha -> strong skew.
  Draws are repeated (up to 1,000 times) until every client has ``min_size`` rows.

Costs: O(n log n) time, O(n) memory.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError, DataError

SCHEMES = ("iid", "natural", "dirichlet")


def partition(
    y: np.ndarray,
    n_clients: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    groups: np.ndarray | None = None,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Row indices of each client (see module docstring)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"y must be 1-D, got shape {y.shape}")
    n = len(y)
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ConfigError(f"n_clients must be an integer >= 1, got {n_clients!r}")
    if min_size < 1:
        raise ConfigError(f"min_size must be >= 1, got {min_size}")
    if n < n_clients * min_size:
        raise ConfigError(f"{n} rows cannot give {n_clients} clients at least {min_size} rows each")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), n_clients)
    elif scheme == "natural":
        parts = _natural(groups, n, n_clients, rng)
    elif scheme == "dirichlet":
        if not (alpha > 0 and np.isfinite(alpha)):
            raise ConfigError(f"alpha must be a finite number > 0, got {alpha}")
        parts = _dirichlet(y, n_clients, alpha, min_size, rng)
    else:
        raise ConfigError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    small = [i for i, p in enumerate(out) if len(p) < min_size]
    if small:
        raise ConfigError(
            f"partition '{scheme}' gave clients {small} fewer than min_size={min_size} rows; "
            "use fewer clients or another scheme"
        )
    return out


def _natural(groups: np.ndarray | None, n: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    if groups is None:
        raise ConfigError(
            "partition 'natural' needs per-row groups (host/device); this data set has none "
            "- use 'iid' or 'dirichlet'"
        )
    g = np.asarray(groups, dtype=object)
    if g.shape != (n,):
        raise DataError(f"groups shape {g.shape} does not match {n} rows")
    keys, inv = np.unique(g.astype(str), return_inverse=True)
    if len(keys) < n_clients:
        raise ConfigError(
            f"partition 'natural' needs at least n_clients={n_clients} groups, the data has {len(keys)}"
        )
    sizes = np.bincount(inv, minlength=len(keys))
    order = rng.permutation(len(keys))
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, seeded tie-break
    load = np.zeros(n_clients, dtype=np.int64)
    owner = np.empty(len(keys), dtype=np.int64)
    for k in order:
        c = int(np.argmin(load))
        owner[k] = c
        load[c] += sizes[k]
    row_owner = owner[inv]
    return [np.flatnonzero(row_owner == c) for c in range(n_clients)]


def _dirichlet(y: np.ndarray, n_clients: int, alpha: float, min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(y)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise ConfigError(
        f"partition 'dirichlet' (alpha={alpha}) could not give all {n_clients} clients "
        f"{min_size}+ rows in 1000 draws; raise alpha or lower n_clients"
    )
