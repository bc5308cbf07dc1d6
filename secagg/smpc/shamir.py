"""Shamir t-of-m secret sharing of 256-bit secrets over the prime field GF(P), P = 2**256 + 297.

Threat model: any t-1 shares of a secret are independent of it (information-theoretic
hiding); any t shares reconstruct it. Integrity is *not* provided by Shamir itself:
callers authenticate shares (the protocol sends them inside AES-GCM ciphertexts and checks
a reconstructed key against its published public key).

Why hand-written: `cryptography` has no secret sharing, and PyCryptodome's Shamir works
on 16-byte blocks over GF(2^128) one share at a time. Here P is the smallest prime above
2**256, so any 32-byte secret is one field element (no folding, no chunking), and the
API is vectorised: many secrets are shared to the same holders in one call, and
reconstruction of many secrets from the same holder set reuses one set of Lagrange
coefficients.

Costs (m holders, threshold t, s secrets): split O(s * m * t) field multiplications by
small ints (Horner at x = holder id), combine O(t^2) once per holder set plus O(s * t).
A share is :data:`SHARE_BYTES` = 33 bytes. Holder ids (x-coordinates) are ints in
[1, 2**32). Polynomial coefficients come from the OS CSPRNG (``secrets``).

Follows Shamir, "How to share a secret", CACM 1979.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Sequence

import gmpy2

from secagg.errors import ConfigError, ProtocolError

__all__ = ["PRIME", "SHARE_BYTES", "split", "combine", "combine_many", "share_to_bytes", "share_from_bytes"]

PRIME: int = 2**256 + 297
assert gmpy2.is_prime(PRIME, 50)
SHARE_BYTES = 33
_P = gmpy2.mpz(PRIME)


def _check_holders(holders: Sequence[int], t: int) -> None:
    if not (isinstance(t, int) and t >= 1):
        raise ConfigError(f"threshold t must be an int >= 1, got {t!r}")
    if len(holders) < t:
        raise ConfigError(f"threshold t={t} exceeds the number of share holders m={len(holders)}")
    if len(set(holders)) != len(holders):
        raise ConfigError("share holder ids must be distinct")
    for x in holders:
        if not (isinstance(x, int) and 1 <= x < 2**32):
            raise ConfigError(f"share holder id must be an int in [1, 2**32), got {x!r}")


def split(secrets_: Sequence[int | bytes], t: int, holders: Sequence[int]) -> list[list[int]]:
    """Share each secret t-of-len(holders); returns ``shares[i][j]`` = share of secret i for holders[j].

    A secret is an int in [0, P) or at most 32 bytes (big-endian).
    """
    _check_holders(holders, t)
    xs = [gmpy2.mpz(x) for x in holders]
    out: list[list[int]] = []
    for s in secrets_:
        v = int.from_bytes(s, "big") if isinstance(s, (bytes, bytearray)) else int(s)
        if isinstance(s, (bytes, bytearray)) and len(s) > 32:
            raise ConfigError(f"secret must be at most 32 bytes, got {len(s)}")
        if not 0 <= v < PRIME:
            raise ConfigError("secret must lie in [0, PRIME)")
        # coefficients high -> low for Horner; constant term is the secret
        coeffs = [gmpy2.mpz(secrets.randbelow(PRIME)) for _ in range(t - 1)] + [gmpy2.mpz(v)]
        row = []
        for x in xs:
            acc = gmpy2.mpz(0)
            for c in coeffs:
                acc = acc * x + c
            row.append(int(acc % _P))
        out.append(row)
    return out


@lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    lam = []
    for j, xj in enumerate(xs):
        num = gmpy2.mpz(1)
        den = gmpy2.mpz(1)
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % _P
                den = den * (xm - xj) % _P
        lam.append(int(num * gmpy2.invert(den, _P) % _P))
    return tuple(lam)


def combine(points: Sequence[tuple[int, int]], t: int) -> int:
    """Reconstruct one secret from >= t points (x, y); uses the t points with the smallest x."""
    return combine_many([x for x, _ in points], [[y for _, y in points]], t)[0]


def combine_many(holders: Sequence[int], shares: Sequence[Sequence[int]], t: int) -> list[int]:
    """Reconstruct several secrets shared to the same ``holders``: ``shares[i][j]`` is holder j's share of
    secret i. Uses the first t holders in sorted order (deterministic). Raises ProtocolError if fewer than t."""
    if len(holders) < t:
        raise ProtocolError(f"need t={t} shares to reconstruct, got {len(holders)}")
    _check_holders(list(holders), t)
    order = sorted(range(len(holders)), key=lambda j: holders[j])[:t]
    lam = [gmpy2.mpz(c) for c in _lagrange_at_zero(tuple(holders[j] for j in order))]
    out = []
    for row in shares:
        if len(row) != len(holders):
            raise ConfigError("each share row must have one share per holder")
        acc = gmpy2.mpz(0)
        for c, j in zip(lam, order):
            y = row[j]
            if not 0 <= y < PRIME:
                raise ProtocolError("share value outside the field")
            acc += c * y
        out.append(int(acc % _P))
    return out


def share_to_bytes(y: int) -> bytes:
    return int(y).to_bytes(SHARE_BYTES, "big")


def share_from_bytes(b: bytes) -> int:
    if len(b) != SHARE_BYTES:
        raise ProtocolError(f"share must be {SHARE_BYTES} bytes, got {len(b)}")
    y = int.from_bytes(b, "big")
    if y >= PRIME:
        raise ProtocolError("share value outside the field")
    return y
