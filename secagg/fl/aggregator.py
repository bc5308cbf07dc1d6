"""The aggregation seam of the FedAvg core.

Each round the core hands the surviving clients' updates to an :class:`Aggregator`
and applies the vector it returns to the global model::

    global_params += server_lr * result.delta

An update is a *delta* (local params minus the global params the client started
from), a flat ``float32`` vector. Plaintext, secure (smpc, he), private (dp) and
robust aggregators all implement this one interface; the core never needs to know
which it has.

Contract for implementers
-------------------------
* ``aggregate`` receives at least one update, all of the same length, finite.
* It returns the (weighted) mean delta of the updates it accepted, as float32, in
  ``AggregateResult.delta``; ``AggregateResult.included`` lists whose updates are in it
  (a secure protocol may lose clients to dropout inside the protocol; a robust
  aggregator may exclude suspected attackers).
* ``upload_bytes`` / ``download_bytes`` count, per client, the serialized bytes that
  client actually sent to / received from the server *during aggregation* (the global
  model broadcast is counted by the core, not here; set ``delivers_model`` when the
  download already gives the included clients the new model).
* If it cannot produce an aggregate (too few clients, protocol abort), it raises an
  exception and must not have changed any state that a retry depends on.
* ``needs_individual_updates`` is True for aggregators that must see each update in the
  clear (Krum, median, ...); ``hides_individual_updates`` is True for aggregators whose
  server learns only the sum (secure aggregation, HE). The two cannot be combined:
  :func:`secagg.fl.robust.check_compatible` (called by the core) refuses such a chain.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Sequence

import numpy as np

from secagg.errors import DataError

HEADER_BYTES = 16  # magic(4) + dtype code(4) + length(8) of serialize_vector


def serialize_vector(vec: np.ndarray) -> bytes:
    """Serialize a 1-D float32 vector as sent on the wire: 16-byte header + raw little-endian data."""
    v = np.ascontiguousarray(vec, dtype="<f4").ravel()
    return b"SGV1" + (1).to_bytes(4, "little") + len(v).to_bytes(8, "little") + v.tobytes()


def deserialize_vector(payload: bytes) -> np.ndarray:
    """Inverse of :func:`serialize_vector`; raises :class:`DataError` on a malformed payload."""
    if len(payload) < HEADER_BYTES or payload[:4] != b"SGV1":
        raise DataError("vector payload: bad magic or truncated header")
    n = int.from_bytes(payload[8:16], "little")
    if len(payload) != HEADER_BYTES + 4 * n:
        raise DataError(f"vector payload: header says {n} values but body has {len(payload) - HEADER_BYTES} bytes")
    return np.frombuffer(payload, dtype="<f4", offset=HEADER_BYTES).astype(np.float32)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution to a round.

    ``delta``: flat float32 vector (local params - global params).
    ``num_examples``: local training examples, the FedAvg weight.
    """

    client_id: int
    delta: np.ndarray
    num_examples: int

    def __post_init__(self) -> None:
        d = np.asarray(self.delta)
        if d.ndim != 1:
            raise DataError(f"client {self.client_id}: update must be a 1-D vector, got shape {d.shape}")
        if not np.all(np.isfinite(d)):
            raise DataError(f"client {self.client_id}: update contains NaN or Inf")
        if int(self.num_examples) <= 0:
            raise DataError(f"client {self.client_id}: num_examples must be > 0, got {self.num_examples}")


@dataclass
class AggregateResult:
    """What an aggregator returns for one round."""

    delta: np.ndarray
    included: tuple[int, ...]
    upload_bytes: dict[int, int] = field(default_factory=dict)
    download_bytes: dict[int, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # True when what each included client downloaded (``download_bytes``) lets it rebuild the
    # new global model itself (e.g. a compressed aggregate it adds to the model it trained
    # from); the core then skips the full-model broadcast to those clients next round.
    delivers_model: bool = False


def check_updates(updates: Sequence[ClientUpdate]) -> int:
    """Validate a round's updates (non-empty, equal lengths, unique ids); return the vector length."""
    if not updates:
        raise DataError("aggregate: no client updates")
    n = updates[0].delta.shape[0]
    for u in updates:
        if u.delta.shape[0] != n:
            raise DataError(f"client {u.client_id}: update length {u.delta.shape[0]} != {n} of client {updates[0].client_id}")
    ids = [u.client_id for u in updates]
    if len(set(ids)) != len(ids):
        raise DataError(f"aggregate: duplicate client ids in {sorted(ids)}")
    return n


class Aggregator(abc.ABC):
    """Combines a round's client updates into one delta. See the module docstring."""

    name: ClassVar[str] = "aggregator"
    needs_individual_updates: ClassVar[bool] = False
    hides_individual_updates: ClassVar[bool] = False

    @abc.abstractmethod
    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        """Return the aggregate of ``updates`` for round ``round_index`` (0-based)."""


class WeightedMeanAggregator(Aggregator):
    """Plaintext FedAvg: the example-count weighted mean of the deltas.

    Threat model: none; the server sees every update in the clear. This is the
    reference every secure aggregator is tested against.
    With ``weighted=False`` every client gets weight 1.
    """

    name = "plaintext"

    def __init__(self, weighted: bool = True) -> None:
        self.weighted = weighted

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        w = np.array([u.num_examples if self.weighted else 1 for u in updates], dtype=np.float64)
        stacked = np.stack([np.asarray(u.delta, dtype=np.float64) for u in updates])
        mean = (w[:, None] * stacked).sum(axis=0) / w.sum()
        up = {u.client_id: len(serialize_vector(u.delta)) for u in updates}
        return AggregateResult(
            delta=mean.astype(np.float32),
            included=tuple(u.client_id for u in updates),
            upload_bytes=up,
            download_bytes={u.client_id: 0 for u in updates},
        )


def weights_of(updates: Sequence[ClientUpdate]) -> Mapping[int, int]:
    """Example counts by client id."""
    return {u.client_id: int(u.num_examples) for u in updates}
