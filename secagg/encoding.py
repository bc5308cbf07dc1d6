"""Fixed-point encoding of float vectors into integers modulo ``2**modulus_bits``.

Used by every layer that aggregates in an integer ring (masked secure aggregation in
:mod:`secagg.smpc`, packed Paillier in :mod:`secagg.he`).

Scheme
------
A value ``x`` is clipped to ``[-clip, clip]``, scaled by ``2**bits / clip`` and rounded
*stochastically* (``floor(y + U[0,1))``, unbiased: ``E[q] = y``) to an integer
``q`` in ``[-2**bits, 2**bits]``. An optional integer weight ``w`` (example count or
trust weight) multiplies ``q`` *before* masking, so the ring sum is
``S = sum_i w_i * q_i``. Integers are stored in two's complement modulo ``2**k``
(``k = modulus_bits``) and decoded centred (values ``>= 2**(k-1)`` are negative).

Bit budget
----------
The sum of ``n`` weighted values lies in ``[-n*W*2**bits, n*W*2**bits]``, so it is
decoded exactly iff ``2 * n * W * 2**bits < 2**k``, i.e.
``log2(n * max_weight * 2**bits) + 1 <= k`` (the ``+1`` is the sign bit).
:meth:`FixedPointConfig.check_budget` validates this up front and raises
:class:`~secagg.errors.ConfigError` naming the parameters instead of wrapping around.

Guarantees and units
--------------------
* Decoding the exact integer sum and dividing by ``scale * sum(w_i)`` ("de-weighting")
  is exact in the integer domain; the float error per coordinate of a mean is at most
  ``clip / 2**bits`` (one quantization step) plus any clipping error.
* Clipping is never silent: :func:`encode` returns how many values were clipped.
* NaN/Inf input raises :class:`~secagg.errors.DataError`.
* Costs: O(L) time and memory for a vector of length L; wire size ``k/8`` bytes per
  element (``uint32`` storage for ``k <= 32``, ``uint64`` for ``k <= 64``).

Stochastic rounding uses a numpy ``Generator`` seeded from the OS CSPRNG; rounding noise
is not key material, so a fast non-cryptographic generator is acceptable here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from secagg.errors import ConfigError, DataError

__all__ = ["FixedPointConfig", "EncodedVector", "encode", "decode_sum", "ring_dtype", "to_signed"]


def ring_dtype(modulus_bits: int) -> np.dtype:
    """The unsigned numpy dtype that stores elements of Z_{2^k}: uint32 for k<=32, else uint64."""
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


@dataclass(frozen=True)
class FixedPointConfig:
    """Fixed-point parameters.

    clip: values are clipped to [-clip, clip] (> 0, finite).
    bits: quantization bits of magnitude; a step is ``clip / 2**bits`` (1..48).
    modulus_bits: ring size k, arithmetic is mod 2**k (8..64). 32 keeps the wire size
        equal to float32.
    """

    clip: float = 1.0
    bits: int = 16
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not (isinstance(self.bits, int) and 1 <= self.bits <= 48):
            raise ConfigError(f"bits must be an int in [1, 48], got {self.bits!r}")
        if not (isinstance(self.modulus_bits, int) and 8 <= self.modulus_bits <= 64):
            raise ConfigError(f"modulus_bits must be an int in [8, 64], got {self.modulus_bits!r}")
        if self.bits + 1 > self.modulus_bits:
            raise ConfigError(
                f"bits={self.bits} needs modulus_bits >= {self.bits + 1} (sign bit), got modulus_bits={self.modulus_bits}"
            )

    @property
    def scale(self) -> float:
        """Integer units per unit of the input value."""
        return float(2**self.bits) / float(self.clip)

    @property
    def dtype(self) -> np.dtype:
        return ring_dtype(self.modulus_bits)

    @property
    def element_bytes(self) -> int:
        return self.dtype.itemsize

    def required_bits(self, n_clients: int, max_weight: int = 1) -> float:
        """log2 of the range the sum needs, sign bit included: log2(n * max_weight * 2**bits) + 1."""
        return math.log2(n_clients) + math.log2(max_weight) + self.bits + 1

    def check_budget(self, n_clients: int, max_weight: int = 1, extra_count: int = 0) -> None:
        """Raise ConfigError unless the sum of ``n_clients`` values weighted by at most
        ``max_weight`` fits in ``modulus_bits`` (and counters up to ``extra_count`` fit too)."""
        if not (isinstance(n_clients, (int, np.integer)) and n_clients >= 1):
            raise ConfigError(f"n_clients must be an int >= 1, got {n_clients!r}")
        if not (isinstance(max_weight, (int, np.integer)) and max_weight >= 1):
            raise ConfigError(f"max_weight must be an int >= 1, got {max_weight!r}")
        need = 2 * int(n_clients) * int(max_weight) * 2**self.bits
        if need >= 2**self.modulus_bits or extra_count >= 2**self.modulus_bits:
            raise ConfigError(
                "fixed-point bit budget exceeded: log2(n_clients * max_weight * 2**bits) + 1 = "
                f"log2({n_clients} * {max_weight} * 2**{self.bits}) + 1 = {self.required_bits(n_clients, max_weight):.2f}"
                f" > modulus_bits={self.modulus_bits}; lower bits, cap the weights or raise modulus_bits"
            )

    @staticmethod
    def smallest_modulus(bits: int, n_clients: int, max_weight: int = 1, choices: tuple[int, ...] = (32, 64)) -> int:
        """The first of ``choices`` whose budget fits; ConfigError if none does."""
        for k in choices:
            if k > bits and 2 * n_clients * max_weight * 2**bits < 2**k:
                return k
        raise ConfigError(
            f"fixed-point bit budget: log2({n_clients} * {max_weight} * 2**{bits}) + 1 exceeds every modulus_bits in {choices}"
        )


@dataclass(frozen=True)
class EncodedVector:
    """An encoded vector in Z_{2^k} and how many inputs were clipped."""

    values: np.ndarray
    clipped: int
    weight: int


def _check_finite(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(f"encode: expected a 1-D vector, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"encode: expected a numeric vector, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise DataError(f"encode: input contains {bad} NaN/Inf value(s)")
    return arr


def quantize(x: np.ndarray, cfg: FixedPointConfig, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Clip and stochastically round to signed integers in [-2**bits, 2**bits]; return (ints, clipped count)."""
    arr = _check_finite(x)
    clipped = int(np.count_nonzero(np.abs(arr) > cfg.clip))
    y = np.clip(arr, -cfg.clip, cfg.clip) * cfg.scale
    if rng is None:
        rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    q = np.floor(y + rng.random(y.shape[0]))
    lim = float(2**cfg.bits)
    np.clip(q, -lim, lim, out=q)
    return q.astype(np.int64), clipped


def to_ring(q: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Signed int64 -> two's complement representative in Z_{2^k} with the ring dtype."""
    mask = np.uint64((1 << modulus_bits) - 1) if modulus_bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    r = q.astype(np.int64).view(np.uint64) & mask
    return r.astype(ring_dtype(modulus_bits))


def to_signed(r: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Centred lift of ring elements to signed int64 (values >= 2**(k-1) become negative)."""
    u = np.asarray(r).astype(np.uint64)
    shift = np.uint64(64 - modulus_bits)
    return (u << shift).view(np.int64) >> np.int64(64 - modulus_bits)


def encode(x: np.ndarray, cfg: FixedPointConfig, weight: int = 1, rng: np.random.Generator | None = None) -> EncodedVector:
    """Encode ``weight * quantize(x)`` into Z_{2^k}.

    ``weight`` is a positive integer (example count or integer trust weight) applied before
    masking; the caller must have validated the bit budget with the largest weight
    (:meth:`FixedPointConfig.check_budget`). A single weighted value must itself fit.
    """
    if not (isinstance(weight, (int, np.integer)) and weight >= 1):
        raise ConfigError(f"weight must be an int >= 1, got {weight!r}")
    cfg.check_budget(1, int(weight))
    q, clipped = quantize(x, cfg, rng)
    if weight != 1:
        q = q * np.int64(weight)
    return EncodedVector(values=to_ring(q, cfg.modulus_bits), clipped=clipped, weight=int(weight))


def decode_sum(total: np.ndarray, cfg: FixedPointConfig, total_weight: int = 1) -> np.ndarray:
    """Decode a ring sum of encoded vectors and de-weight: returns ``sum(w_i q_i) / (scale * total_weight)``
    as float64 (the weighted mean when ``total_weight = sum(w_i)``; the plain sum when 1)."""
    if not (isinstance(total_weight, (int, np.integer)) and total_weight >= 1):
        raise ConfigError(f"total_weight must be an int >= 1, got {total_weight!r}")
    s = to_signed(total, cfg.modulus_bits)
    return s.astype(np.float64) / (cfg.scale * float(total_weight))
