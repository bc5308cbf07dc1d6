"""Mask PRG: AES-256-CTR keystream from `cryptography`, read straight into numpy ring vectors.

Threat model: a mask is computationally indistinguishable from uniform in Z_{2^k}^L to
anyone without its 256-bit seed (AES-256 as a PRF in counter mode). The full 32-byte seed
is the AES key; nothing is folded to fewer bits (unlike Flower's SecAgg+, which reduces the
seed to a 32-bit numpy seed). Every seed is used for exactly one mask per round (pairwise
seeds are derived per session/round by HKDF, self-mask seeds are fresh from os.urandom),
so the fixed all-zero counter block never repeats under one key.

Costs: O(L) AES blocks per mask, L * itemsize bytes of keystream (~5 GB/s with AES-NI);
`add_mask` adds or subtracts in place without an extra copy of the vector.
For k < 32 (or 32 < k < 64) the caller reduces the result with `reduce_mod`; since 2^k
divides 2^32 (2^64), wrap-around arithmetic in uint32 (uint64) is exact mod 2^k.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.encoding import ring_dtype
from secagg.errors import ConfigError

__all__ = ["SEED_BYTES", "expand", "add_mask", "reduce_mod"]

SEED_BYTES = 32
_ZERO_NONCE = bytes(16)
_zeros_cache: dict[int, bytes] = {}


def _zeros(n: int) -> bytes:
    z = _zeros_cache.get(n)
    if z is None:
        if len(_zeros_cache) > 8:
            _zeros_cache.clear()
        z = _zeros_cache[n] = bytes(n)
    return z


def _keystream(seed: bytes, nbytes: int) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ConfigError(f"PRG seed must be {SEED_BYTES} bytes")
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_NONCE)).encryptor()
    return enc.update(_zeros(nbytes))


def expand(seed: bytes, length: int, modulus_bits: int = 32) -> np.ndarray:
    """The mask PRG(seed) as ``length`` elements of Z_{2^k} (uint32 for k<=32, else uint64)."""
    if not (isinstance(length, (int, np.integer)) and length >= 0):
        raise ConfigError(f"mask length must be an int >= 0, got {length!r}")
    dt = ring_dtype(modulus_bits)
    out = np.frombuffer(_keystream(seed, int(length) * dt.itemsize), dtype=dt).copy()
    return reduce_mod(out, modulus_bits)


def add_mask(acc: np.ndarray, seed: bytes, sign: int = 1) -> None:
    """acc += sign * PRG(seed) (mod 2^32 or 2^64, per acc's dtype), in place. sign is +1 or -1."""
    ks = np.frombuffer(_keystream(seed, acc.nbytes), dtype=acc.dtype)
    if sign == 1:
        np.add(acc, ks, out=acc)
    elif sign == -1:
        np.subtract(acc, ks, out=acc)
    else:
        raise ConfigError(f"sign must be +1 or -1, got {sign!r}")


def reduce_mod(v: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Reduce in place mod 2^k (no-op for k = 32/64 stored in uint32/uint64)."""
    if modulus_bits not in (32, 64):
        np.bitwise_and(v, v.dtype.type((1 << modulus_bits) - 1), out=v)
    return v
