"""In-process driver: runs one whole secure-aggregation round with simulated dropouts.

The driver plays the network between one :class:`~secagg.smpc.server.SecAggServer` and
n :class:`~secagg.smpc.client.SecAggClient` objects, all in this process, sequentially.
It counts every message's serialized size per client and direction, and times each
party per stage (client time is summed over clients and also reported per client), so
per-phase costs can be compared with a plaintext sum.

Dropout schedule: a client listed under a phase stops *before sending* that phase's
message (it may have received the server's message of that phase):

============================  =================================================
``advertise``                 never sends its keys (before the protocol)
``share_keys``                advertised keys, drops before ShareKeys
``masked_input``              shared keys, drops before sending its masked input
``consistency``               sent its masked input, drops before the consistency
                              signature (active mode) / before unmasking (honest)
``unmasking``                 drops during unmasking (never answers the request)
============================  =================================================

Protocol errors: if a client raises (e.g. it refuses a malicious unmasking request), the
driver forwards the client's ABORT message to the server, which raises
:class:`~secagg.smpc.errors.ClientAbortError`; that error propagates to the caller (the
client's own exception is its ``__cause__``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from secagg.errors import ConfigError, NotEnoughClientsError, ProtocolError
from secagg.smpc import messages as M
from secagg.smpc.client import SecAggClient
from secagg.smpc.config import SessionConfig
from secagg.smpc.server import SecAggServer, SecureSumResult

__all__ = ["PHASES", "DropoutSchedule", "PhaseStats", "RoundReport", "run_round"]

PHASES = ("advertise", "share_keys", "masked_input", "consistency", "unmasking")
_STAGE_PHASE = {
    M.Stage.ADVERTISE_KEYS: "advertise",
    M.Stage.SHARE_KEYS: "share_keys",
    M.Stage.MASKED_INPUT: "masked_input",
    M.Stage.CONSISTENCY_CHECK: "consistency",
    M.Stage.UNMASKING: "unmasking",
}


@dataclass(frozen=True)
class DropoutSchedule:
    """Which clients drop before sending in which phase (see the module docstring)."""

    advertise: frozenset[int] = frozenset()
    share_keys: frozenset[int] = frozenset()
    masked_input: frozenset[int] = frozenset()
    consistency: frozenset[int] = frozenset()
    unmasking: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for ph in PHASES:
            s = frozenset(getattr(self, ph))
            object.__setattr__(self, ph, s)
            if s & seen:
                raise ConfigError(f"dropout schedule: clients {sorted(s & seen)[:5]} drop in two phases")
            seen |= s

    @property
    def all_dropped(self) -> frozenset[int]:
        return frozenset().union(*(getattr(self, p) for p in PHASES))

    def drops_at(self, phase: str, u: int) -> bool:
        return u in getattr(self, phase)

    @classmethod
    def random(cls, ids: Iterable[int], rate: float, rng: np.random.Generator, phases: Iterable[str] = PHASES) -> "DropoutSchedule":
        """Each client drops independently with probability ``rate``, at a phase drawn uniformly from ``phases``.
        (Simulation randomness only; numpy.random is fine here.)"""
        if not 0 <= rate <= 1:
            raise ConfigError(f"dropout rate must be in [0, 1], got {rate!r}")
        phases = tuple(phases)
        bad = set(phases) - set(PHASES)
        if bad or not phases:
            raise ConfigError(f"phases must be a non-empty subset of {PHASES}, got {phases}")
        sets: dict[str, set[int]] = {p: set() for p in PHASES}
        for u in ids:
            if rng.random() < rate:
                sets[phases[int(rng.integers(len(phases)))]].add(u)
        return cls(**{p: frozenset(s) for p, s in sets.items()})

    @classmethod
    def fraction_at(cls, ids: Iterable[int], fraction: float, phase: str, rng: np.random.Generator) -> "DropoutSchedule":
        """Exactly round(fraction * n) random clients drop at ``phase``."""
        ids = list(ids)
        if phase not in PHASES:
            raise ConfigError(f"phase must be one of {PHASES}, got {phase!r}")
        k = int(round(fraction * len(ids)))
        chosen = rng.choice(len(ids), size=k, replace=False) if k else []
        return cls(**{phase: frozenset(ids[i] for i in chosen)})


@dataclass
class PhaseStats:
    """Per-phase cost. Times in seconds, sizes in bytes."""

    phase: str
    client_seconds_total: float = 0.0
    client_seconds_max: float = 0.0
    server_seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    clients: int = 0

    @property
    def client_seconds_mean(self) -> float:
        return self.client_seconds_total / self.clients if self.clients else 0.0


@dataclass
class RoundReport:
    """Everything a round produced: the sum, who is in it, bytes and time per phase."""

    result: SecureSumResult
    phases: dict[str, PhaseStats]
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def total(self) -> np.ndarray:
        return self.result.total

    @property
    def survivors(self) -> tuple[int, ...]:
        return self.result.survivors


def run_round(
    config: SessionConfig,
    inputs: Mapping[int, np.ndarray],
    dropout: DropoutSchedule | None = None,
    identity_keys: Mapping[int, object] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RoundReport:
    """Run one full round in process. ``inputs`` maps every client id to its encoded input
    (L ints in [0, 2**k)). ``identity_keys`` maps client id -> Ed25519PrivateKey (active mode).
    Raises NotEnoughClientsError / ProtocolError subclasses; then no result exists."""
    dropout = dropout or DropoutSchedule()
    if set(inputs) != set(config.client_ids):
        raise ConfigError("inputs must have exactly one vector per client id of the session")
    t_start = time.perf_counter()
    phases = {p: PhaseStats(p) for p in PHASES}
    up = {u: 0 for u in config.client_ids}
    down = {u: 0 for u in config.client_ids}
    ids = identity_keys or {}
    clients = {}
    for u in config.client_ids:
        c = SecAggClient(config, u, identity_key=ids.get(u))
        c.set_input(inputs[u])
        clients[u] = c
    server = SecAggServer(config)

    def timed_server(fn, *a):
        t0 = time.perf_counter()
        try:
            return fn(*a)
        finally:
            phases[_STAGE_PHASE[stage_before]].server_seconds += time.perf_counter() - t0

    def deliver(u: int, reply: bytes, ph: PhaseStats) -> None:
        up[u] += len(reply)
        ph.bytes_up += len(reply)
        timed_server(server.receive, reply)

    # stage 0: advertise
    stage_before = M.Stage.ADVERTISE_KEYS
    ph = phases["advertise"]
    for u, c in clients.items():
        if dropout.drops_at("advertise", u):
            continue
        t0 = time.perf_counter()
        msg = c.start()
        dt = time.perf_counter() - t0
        ph.client_seconds_total += dt
        ph.client_seconds_max = max(ph.client_seconds_max, dt)
        ph.clients += 1
        deliver(u, msg, ph)
    outbox = timed_server(server.close_stage)
    if progress:
        progress("advertise")
    while server.stage not in (M.Stage.DONE, M.Stage.ABORTED):
        stage_before = server.stage
        phase = _STAGE_PHASE[server.stage]
        ph = phases[phase]
        for u, msg in outbox.items():
            down[u] += len(msg)
            ph.bytes_down += len(msg)
            drop_phase = phase
            if phase == "unmasking" and config.mode == "honest" and dropout.drops_at("consistency", u):
                drop_phase = "consistency"
            if dropout.drops_at(drop_phase, u):
                continue
            t0 = time.perf_counter()
            try:
                reply = clients[u].handle(msg)
            except (ProtocolError, NotEnoughClientsError) as e:
                abort = getattr(e, "abort_message", None)
                if abort is None:
                    raise
                try:
                    deliver(u, abort, ph)
                except ProtocolError as server_err:
                    raise server_err from e
                raise
            finally:
                dt = time.perf_counter() - t0
                ph.client_seconds_total += dt
                ph.client_seconds_max = max(ph.client_seconds_max, dt)
                ph.clients += 1
            deliver(u, reply, ph)
        outbox = timed_server(server.close_stage)
        if progress:
            progress(phase)
    return RoundReport(server.result(), phases, up, down, time.perf_counter() - t_start)
