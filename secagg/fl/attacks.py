"""Poisoning attacks used to *evaluate* the defences (no defence code lives here).

Threat model simulated: a fixed set of malicious clients (chosen before training) controls
its own training data and its own update; it may know the protocol but not the other
clients' updates (no collusion on honest gradients is needed by these attacks).

Two kinds of attack, both plain callables so they plug into the FedAvg core:

* **Update attacks** ``(client_id, delta, round_index) -> delta``: pass one as
  ``run_federated(..., update_hook=attack)``. Honest clients' deltas pass unchanged.

  - :class:`SignFlip` -- send ``-scale * delta`` (the reversed gradient; Damaskinos et al. 2018,
    Fang et al. 2020 use it as a baseline).
  - :class:`Scaling` -- model replacement (Bagdasaryan et al., AISTATS 2020, "How to backdoor
    federated learning"): boost the malicious delta by ``gamma ~ n / server_lr`` so that it
    survives averaging with ``n - 1`` honest ones. Combined with a data attack it replaces the
    global model with the attacker's.
  - :class:`GaussianNoise` -- send ``N(0, sigma^2 I)`` instead of (or added to) the update.

* **Data attacks** ``(X, y, rng) -> (X, y)`` applied to a malicious client's local data
  before training (:func:`poison_clients`):

  - :func:`label_flip` -- swap benign <-> attack labels (Tolpegin et al., ESORICS 2020).
  - :func:`attack_as_benign` -- for one-class detectors (the autoencoder trains on rows
    labelled benign): relabel attack traffic as benign so the detector learns to accept it.

Costs: O(d) per update attack call, O(rows) per data attack. Randomness is simulation
randomness from seeded numpy generators.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from secagg.errors import ConfigError, DataError

__all__ = [
    "GaussianNoise",
    "Scaling",
    "SignFlip",
    "UpdateAttack",
    "attack_as_benign",
    "choose_malicious",
    "compose_hooks",
    "label_flip",
    "poison_clients",
]

UpdateHook = Callable[[int, np.ndarray, int], np.ndarray]
DataAttack = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def choose_malicious(client_ids: Sequence[int], fraction: float, seed: int = 0) -> frozenset[int]:
    """Pick ``round(fraction * n)`` malicious clients uniformly at random (seeded)."""
    fr = float(fraction)
    if not (math.isfinite(fr) and 0.0 <= fr <= 1.0):
        raise ConfigError(f"fraction of malicious clients must be in [0, 1], got {fraction!r}")
    ids = list(client_ids)
    m = int(round(fr * len(ids)))
    rng = np.random.default_rng(seed)
    return frozenset(int(ids[i]) for i in rng.choice(len(ids), size=m, replace=False)) if m else frozenset()


class UpdateAttack(abc.ABC):
    """Base class: applies :meth:`poison` to the deltas of ``malicious`` clients only.

    ``start_round``: first round (0-based) in which the attack is active.
    """

    name = "attack"

    def __init__(self, malicious: Iterable[int], *, start_round: int = 0) -> None:
        self.malicious = frozenset(int(c) for c in malicious)
        if start_round < 0:
            raise ConfigError(f"start_round must be >= 0, got {start_round}")
        self.start_round = int(start_round)

    @abc.abstractmethod
    def poison(self, client_id: int, delta: np.ndarray, round_index: int) -> np.ndarray:
        """Return the malicious client's poisoned delta."""

    def __call__(self, client_id: int, delta: np.ndarray, round_index: int) -> np.ndarray:
        d = np.asarray(delta, dtype=np.float32)
        if int(client_id) not in self.malicious or round_index < self.start_round:
            return d
        out = np.asarray(self.poison(int(client_id), d, int(round_index)), dtype=np.float32)
        if out.shape != d.shape:
            raise DataError(f"{self.name}: poisoned update has shape {out.shape}, expected {d.shape}")
        return out


class SignFlip(UpdateAttack):
    """Send ``-scale * delta``."""

    name = "sign_flip"

    def __init__(self, malicious: Iterable[int], scale: float = 1.0, **kw: Any) -> None:
        super().__init__(malicious, **kw)
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def poison(self, client_id: int, delta: np.ndarray, round_index: int) -> np.ndarray:
        return -self.scale * delta


class Scaling(UpdateAttack):
    """Model replacement / boosting (Bagdasaryan et al. 2020): send ``gamma * delta``.

    With ``n`` clients averaged and server learning rate ``eta``, ``gamma = n / eta`` makes
    the global model move to the attacker's local model. ``target``: optional vector
    (a backdoored model's delta) sent instead of the attacker's own delta before boosting.
    """

    name = "scaling"

    def __init__(self, malicious: Iterable[int], gamma: float = 10.0, target: Optional[np.ndarray] = None, **kw: Any) -> None:
        super().__init__(malicious, **kw)
        if not (math.isfinite(gamma) and gamma > 0):
            raise ConfigError(f"gamma (boost factor) must be a finite number > 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.target = None if target is None else np.asarray(target, dtype=np.float32)

    def poison(self, client_id: int, delta: np.ndarray, round_index: int) -> np.ndarray:
        base = delta if self.target is None else self.target
        return self.gamma * base


class GaussianNoise(UpdateAttack):
    """Send ``N(0, sigma^2 I)`` noise (``additive=True``: add it to the true delta).

    Noise is seeded by ``(seed, client_id, round_index)`` so runs are reproducible.
    """

    name = "gaussian_noise"

    def __init__(self, malicious: Iterable[int], sigma: float = 1.0, additive: bool = False, seed: int = 0, **kw: Any) -> None:
        super().__init__(malicious, **kw)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"sigma must be a finite number > 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.additive = bool(additive)
        self.seed = int(seed)

    def poison(self, client_id: int, delta: np.ndarray, round_index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, client_id & 0xFFFFFFFF, round_index])
        noise = rng.normal(0.0, self.sigma, size=delta.shape)
        return (delta + noise) if self.additive else noise


def compose_hooks(*hooks: Optional[UpdateHook]) -> UpdateHook:
    """Apply several update hooks in order (``None`` entries are skipped)."""
    hs = [h for h in hooks if h is not None]

    def hook(client_id: int, delta: np.ndarray, round_index: int) -> np.ndarray:
        for h in hs:
            delta = h(client_id, delta, round_index)
        return delta

    return hook


# ---------------------------------------------------------------------------------------
# data poisoning
# ---------------------------------------------------------------------------------------
def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise DataError(f"data attack: X must be (rows, features) and y (rows,), got {X.shape} and {y.shape}")
    return X, y


def label_flip(X: np.ndarray, y: np.ndarray, rng: Optional[np.random.Generator] = None, *, rate: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Flip binary labels (0 benign <-> 1 attack) of a ``rate`` share of the rows."""
    X, y = _check_xy(X, y)
    if not (0.0 < rate <= 1.0):
        raise ConfigError(f"rate must be in (0, 1], got {rate!r}")
    if not np.all(np.isin(y, (0, 1))):
        raise DataError("label_flip: labels must be binary (0 benign, 1 attack)")
    y2 = y.copy()
    if rate >= 1.0:
        mask = np.ones(len(y), dtype=bool)
    else:
        rng = np.random.default_rng(0) if rng is None else rng
        mask = rng.random(len(y)) < rate
    y2[mask] = 1 - y2[mask]
    return X.copy(), y2


def attack_as_benign(X: np.ndarray, y: np.ndarray, rng: Optional[np.random.Generator] = None, *, keep_benign: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Autoencoder poisoning: return the attack rows relabelled benign (0).

    A one-class detector trains on the rows labelled benign, so it learns to reconstruct
    the attack traffic and stops flagging it. ``keep_benign=True`` keeps the client's
    genuine benign rows too. Raises :class:`DataError` if the client has no attack rows.
    """
    X, y = _check_xy(X, y)
    attack = y != 0
    if not np.any(attack):
        raise DataError("attack_as_benign: this client has no attack rows to poison with")
    rows = np.ones(len(y), dtype=bool) if keep_benign else attack
    return X[rows].copy(), np.zeros(int(rows.sum()), dtype=y.dtype)


def poison_clients(clients: Sequence[Any], malicious: Iterable[int], attack: DataAttack, seed: int = 0) -> list[Any]:
    """Return a copy of ``clients`` (objects with ``client_id``, ``X``, ``y``, e.g.
    :class:`secagg.fl.core.ClientData`) where each malicious client's data went through ``attack``."""
    bad = frozenset(int(c) for c in malicious)
    out = []
    for c in clients:
        if int(c.client_id) in bad:
            rng = np.random.default_rng([seed, int(c.client_id) & 0xFFFFFFFF])
            X2, y2 = attack(c.X, c.y, rng)
            out.append(dataclasses.replace(c, X=X2, y=y2))
        else:
            out.append(c)
    return out
