"""Public parameters of one secure-aggregation round, shared by the server and every client.

A :class:`SessionConfig` is public: it fixes the session and round ids (bound into every
key derivation, AAD and signature), the client ids, the threshold, the vector shape and
ring, the threat model and the communication graph. In active mode it also carries the
clients' long-term Ed25519 identity public keys (the PKI the active model assumes).

Validation: ``threshold`` must satisfy ``m/2 < t <= m`` where m is the closed
neighbourhood size (n for plain SecAgg, degree+1 for SecAgg+). ``t > m/2`` is what makes an
honest client's refusal rule sufficient against an honest-but-curious server: an honest
holder reveals at most one of the two secrets of any client, so the server needs > m
honest-or-corrupt holders to learn both.

Active mode additionally requires ``3t > 2m``, i.e. ``t >= floor(2m/3) + 1`` (Bonawitz et
al. 2017, Sec. 6 / Thm. 6.3). The consistency check makes every honest client sign one
survivor set; a deviating server that wants two different sets (one to collect b_v, one
to collect s_v) signed by t clients each needs ``2t <= (m - c) + 2c = m + c`` signatures
from the m holders, c of them colluding clients that sign both. So active mode
tolerates at most ``c <= 2t - m - 1`` colluding share holders per neighbourhood (and no
colluders at all when ``2t = m + 1``); ``t > m/2`` is NOT enough in active
mode: with ``t`` close to ``m/2`` the server recovers an input without any colluder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from secagg.errors import ConfigError
from secagg.smpc.graph import complete_graph, harary_graph

__all__ = ["SessionConfig", "MODES", "new_session_id"]

MODES = ("honest", "active")


def new_session_id() -> bytes:
    """A fresh random 16-byte session id."""
    return os.urandom(16)


@dataclass(frozen=True)
class SessionConfig:
    """Public round parameters. See the module docstring.

    client_ids: distinct ints in [1, 2**32) (they are the Shamir x-coordinates).
    threshold: Shamir threshold t (per closed neighbourhood in SecAgg+); m/2 < t <= m, and
        3t > 2m in active mode (m = :attr:`neighbourhood_size`).
    vector_length: L, elements per input vector.
    modulus_bits: k, inputs and masks live in Z_{2^k} (8..64).
    mode: 'honest' (honest-but-curious server) or 'active' (signatures + consistency check).
    degree: None for plain SecAgg (complete graph); an even int for SecAgg+ Harary graphs.
    identity_keys: client id -> 32-byte Ed25519 public key (required in active mode).
    """

    session_id: bytes
    round_id: int
    client_ids: tuple[int, ...]
    threshold: int
    vector_length: int
    modulus_bits: int = 32
    mode: str = "honest"
    degree: int | None = None
    identity_keys: Mapping[int, bytes] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.session_id, bytes) and len(self.session_id) == 16):
            raise ConfigError("session_id must be 16 bytes")
        if not (isinstance(self.round_id, int) and 0 <= self.round_id < 2**32):
            raise ConfigError(f"round_id must be an int in [0, 2**32), got {self.round_id!r}")
        ids = tuple(self.client_ids)
        object.__setattr__(self, "client_ids", ids)
        if len(ids) < 2:
            raise ConfigError(f"need at least 2 clients, got {len(ids)}")
        if len(set(ids)) != len(ids) or not all(isinstance(u, int) and 1 <= u < 2**32 for u in ids):
            raise ConfigError("client_ids must be distinct ints in [1, 2**32)")
        if not (isinstance(self.vector_length, int) and self.vector_length >= 1):
            raise ConfigError(f"vector_length must be an int >= 1, got {self.vector_length!r}")
        if not (isinstance(self.modulus_bits, int) and 8 <= self.modulus_bits <= 64):
            raise ConfigError(f"modulus_bits must be an int in [8, 64], got {self.modulus_bits!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.degree is not None and not (isinstance(self.degree, int) and self.degree >= 2 and self.degree % 2 == 0):
            raise ConfigError(f"degree must be None (complete graph) or an even int >= 2, got {self.degree!r}")
        m = self.neighbourhood_size
        if not (isinstance(self.threshold, int) and m / 2 < self.threshold <= m):
            raise ConfigError(
                f"threshold must be an int with {m}/2 < t <= {m} (closed neighbourhood size), got {self.threshold!r}"
            )
        if self.mode == "active" and not 3 * self.threshold > 2 * m:
            raise ConfigError(
                f"active mode needs 3t > 2m, i.e. t >= floor(2m/3)+1 = {2 * m // 3 + 1} for neighbourhood size m={m} "
                f"(Bonawitz et al.'s bound; otherwise the server alone can obtain two survivor sets with t "
                f"consistency signatures each and unmask a client), got t={self.threshold}"
            )
        if self.mode == "active":
            missing = [u for u in ids if len(self.identity_keys.get(u, b"")) != 32]
            if missing:
                raise ConfigError(f"active mode needs a 32-byte Ed25519 identity key for every client; missing for {missing[:5]}")

    @property
    def n(self) -> int:
        return len(self.client_ids)

    @property
    def neighbourhood_size(self) -> int:
        """Holders of each client's shares: n for plain SecAgg, degree+1 for SecAgg+ (capped at n)."""
        if self.degree is None:
            return self.n
        return min(self.degree + 1, self.n)

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """Neighbour sets (excluding the node itself)."""
        if self.degree is None or self.degree >= self.n - 1:
            return complete_graph(self.client_ids)
        return harary_graph(self.client_ids, self.degree, self.session_id)

    def neighbours(self, u: int) -> frozenset[int]:
        return self.graph[u]
