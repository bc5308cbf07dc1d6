"""Client-level DP-FedAvg mechanisms: L2 clipping, calibrated Gaussian noise, adaptive clipping.

Follows McMahan, Ramage, Talwar, Zhang 2018 ("Learning Differentially Private Recurrent
Language Models", DP-FedAvg) and Andrew, Thakkar, McMahan, Ramaswamy 2021 ("Differentially
Private Learning with Adaptive Clipping").

Guarantee: with every client's update clipped to L2 norm C and weight <= 1, the sum of a
round's weighted updates has L2 sensitivity C under add/remove-one-client; adding
N(0, (z C)^2 I) to it makes the round the Gaussian mechanism with noise multiplier z, which
:class:`~secagg.dp.events.SampledGaussianEvent` records for accounting.

Modes
* ``central``: a trusted server adds all the noise to the sum.
* ``local``: each client adds N(0, (z C)^2 / k) to its own clipped update (``k`` =
  ``local_noise_split``); the sum of n >= k survivors carries variance n/k (z C)^2, i.e. an
  effective noise multiplier z sqrt(n/k), which is what gets accounted (fewer survivors ->
  less noise -> more epsilon, never silently). k = 1 gives every client a full-noise
  (local-DP-like) release; k > 1 is only private against the server under secure
  aggregation.

Noise source: the OS CSPRNG (``os.urandom``) through the Box-Muller transform in float64.
Floating-point Gaussian samplers have a known least-significant-bit leakage (Mironov 2012);
use :mod:`secagg.dp.discrete` (exact discrete Gaussian) when that matters.
Costs: clipping O(L) per client, noise O(L) per release.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from secagg.errors import ConfigError, DataError

MODES = ("central", "local")


def clip_l2(vec: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``vec`` to L2 norm at most ``clip_norm``; returns (clipped float64 copy, original norm)."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"clip_norm must be finite and > 0, got {clip_norm!r}")
    v = np.asarray(vec, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise DataError("clip_l2: vector contains NaN or Inf")
    norm = float(np.linalg.norm(v))
    if norm > clip_norm:
        v = v * (clip_norm / norm)
    return v, norm


def csprng_uniform(n: int) -> np.ndarray:
    """``n`` uniform floats in (0, 1) with 53 random bits each, from ``os.urandom``."""
    words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def gaussian_noise(n: int, std: float) -> np.ndarray:
    """``n`` i.i.d. N(0, std^2) samples from the OS CSPRNG (Box-Muller, float64)."""
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"noise std must be finite and >= 0, got {std!r}")
    if n == 0 or std == 0:
        return np.zeros(n)
    m = (n + 1) // 2
    u1, u2 = csprng_uniform(m), csprng_uniform(m)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
    return std * z


@dataclass(frozen=True)
class AdaptiveClipping:
    """Quantile-tracking clip norm (Andrew et al. 2021, Alg. 1, geometric update).

    Each client also reports ``b_i = 1[||delta_i|| <= C]``; the server releases
    ``b = (sum_i (b_i - 1/2) + N(0, count_noise_std^2)) / m + 1/2`` and sets
    ``C <- C * exp(-learning_rate * (b - target_quantile))``.
    The centred count has sensitivity 1/2, so releasing it together with the update sum
    costs the same as one Gaussian release with noise multiplier z if the update noise uses
    ``z_update = (z^-2 - (2 count_noise_std)^-2)^(-1/2)`` (their Thm. 1);
    requires ``count_noise_std > z / 2``. The theorem needs both noises added once to the
    released sums; with per-client (``local``) update noise the sum's noise grows with the
    number of clients while the count noise does not, so :class:`CentralDPAggregator`
    accepts adaptive clipping in central mode only.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 1.0
    min_clip: float = 1e-6
    max_clip: float = 1e6

    def __post_init__(self) -> None:
        if not (0.0 < self.target_quantile < 1.0):
            raise ConfigError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (math.isfinite(self.count_noise_std) and self.count_noise_std > 0):
            raise ConfigError(f"count_noise_std must be > 0, got {self.count_noise_std}")
        if not (0 < self.min_clip < self.max_clip):
            raise ConfigError(f"need 0 < min_clip < max_clip, got {self.min_clip}, {self.max_clip}")

    def update_noise_multiplier(self, z: float) -> float:
        """Noise multiplier for the update sum so that (sum, count) together cost ``z``."""
        inv = z**-2 - (2.0 * self.count_noise_std) ** -2
        if inv <= 0:
            raise ConfigError(f"count_noise_std must be > noise_multiplier / 2 = {z / 2:g} for adaptive clipping, "
                              f"got {self.count_noise_std}")
        return inv**-0.5

    def next_clip(self, clip: float, unclipped: int, expected_clients: float) -> tuple[float, float]:
        """(new clip norm, released noisy unclipped fraction) after a round."""
        noisy = (unclipped - 0.5 * expected_clients + float(gaussian_noise(1, self.count_noise_std)[0]))
        frac = noisy / expected_clients + 0.5
        new = clip * math.exp(-self.learning_rate * (frac - self.target_quantile))
        return float(min(max(new, self.min_clip), self.max_clip)), float(frac)


def effective_local_noise_multiplier(z: float, survivors: int, split: int) -> float:
    """Noise multiplier of the sum when each of ``survivors`` clients added variance (zC)^2/split."""
    return z * math.sqrt(survivors / split)


__all__ = ["clip_l2", "gaussian_noise", "csprng_uniform", "AdaptiveClipping", "effective_local_noise_multiplier",
           "MODES"]
