"""Round bookkeeping shared by the CKKS and Paillier servers.

A server aggregates one round at a time. :class:`RoundBook` holds the announced
participants and their FedAvg weights, and rejects what an honest protocol run never
produces: a message for another round (replay of an old round), a sender that was not
announced, the same sender twice, an empty round. It holds no key material.

Costs: O(n) memory in the number of announced clients n.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping

from secagg.errors import ConfigError, NotEnoughClientsError, ProtocolError

__all__ = ["RoundBook", "ReplayGuard"]


@dataclass
class ReplayGuard:
    """Remembers the last round a server *finished*; opening that round or an older one again is a replay."""

    last_finished: int = -1

    def check_open(self, round_index: int, *, who: str) -> None:
        if not isinstance(round_index, int) or round_index < 0:
            raise ConfigError(f"{who}: round_index must be an int >= 0, got {round_index!r}")
        if round_index <= self.last_finished:
            raise ProtocolError(f"{who}: round {round_index} was already aggregated (last finished {self.last_finished}); replay refused")

    def mark_finished(self, round_index: int) -> None:
        self.last_finished = max(self.last_finished, round_index)


@dataclass
class RoundBook:
    """Participants, weights and arrivals of one round."""

    round_index: int
    weights: dict[int, float]
    who: str
    received: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, round_index: int, weights: Mapping[int, float], *, who: str, integer_weights: bool = False) -> "RoundBook":
        if not weights:
            raise NotEnoughClientsError(f"{who}: round {round_index} announced no clients")
        clean: dict[int, float] = {}
        for cid, w in weights.items():
            if not isinstance(cid, numbers.Integral) or isinstance(cid, bool):
                raise ConfigError(f"{who}: client ids must be ints, got {cid!r}")
            if integer_weights:
                if not isinstance(w, numbers.Integral) or isinstance(w, bool) or w < 1:
                    raise ConfigError(f"{who}: weight of client {cid} must be an int >= 1 (example count), got {w!r}")
                clean[int(cid)] = int(w)
            else:
                wf = float(w)
                if not math.isfinite(wf) or wf <= 0:
                    raise ConfigError(f"{who}: weight of client {cid} must be finite and > 0, got {w!r}")
                clean[int(cid)] = wf
        return cls(round_index, clean, who)

    @property
    def total_weight(self) -> float:
        return sum(self.weights.values())

    def check(self, round_index: int, sender: int) -> None:
        """Raise :class:`ProtocolError` unless ``sender`` may contribute to this round now."""
        if round_index != self.round_index:
            raise ProtocolError(f"{self.who}: message for round {round_index} received in round {self.round_index} (replay or stale)")
        if sender not in self.weights:
            raise ProtocolError(f"{self.who}: client {sender} was not announced for round {self.round_index}")
        if sender in self.received:
            raise ProtocolError(f"{self.who}: client {sender} already contributed to round {self.round_index} (duplicate/replay)")

    def record(self, sender: int) -> None:
        """Record ``sender`` after its message was fully validated and added (all-or-nothing)."""
        self.check(self.round_index, sender)
        self.received.append(sender)

    def require_nonempty(self) -> None:
        if not self.received:
            raise NotEnoughClientsError(f"{self.who}: no client update arrived in round {self.round_index}")
