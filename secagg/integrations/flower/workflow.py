"""Server-side round workflows: how one FedAvg round's updates reach the server.

A :class:`RoundWorkflow` is called once per round by the example ServerApp
(:mod:`secagg.integrations.flower.app`) or by a user's own ``@app.main()``. It sends the
round's training instruction to the sampled SuperNodes through a Flower
:class:`~flwr.serverapp.Grid`, runs whatever protocol the layer needs (plaintext,
masked secure aggregation, homomorphic encryption), and returns a
:class:`FlowerRoundResult`: the example-weighted mean delta of the updates it could
include, and which nodes it included or lost.

Dropout: every stage is bounded by ``stage_timeout_s`` (and, if set, ``straggler_grace_s``
after the first reply); a node that has not answered by then (crashed, killed, slow) is
treated as dropped *for this round*.
A workflow either recovers (returns without that node) or raises
:class:`~secagg.errors.NotEnoughClientsError`; it never returns a partial or wrong sum.

:class:`PlaintextWorkflow` is the reference: the server sees each update in the clear.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from secagg.errors import ConfigError, DataError, NotEnoughClientsError
from secagg.integrations.flower.records import CountingGrid, replies_by_node, update_from_reply


@dataclass
class FlowerRoundResult:
    """Outcome of one round run through Flower."""

    delta: np.ndarray
    included: tuple[int, ...]
    dropped: tuple[int, ...]
    upload_bytes: dict[int, int] = field(default_factory=dict)
    download_bytes: dict[int, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: masked-aggregation layers: the unmasked ring sum (for exactness checks)
    ring_total: np.ndarray | None = None


def check_timeout(stage_timeout_s: float | None) -> None:
    """ConfigError unless the per-stage timeout is None or a finite number > 0 (seconds)."""
    if stage_timeout_s is None:
        return
    if not (isinstance(stage_timeout_s, (int, float)) and math.isfinite(stage_timeout_s) and stage_timeout_s > 0):
        raise ConfigError(f"stage_timeout_s must be None or a finite number of seconds > 0, got {stage_timeout_s!r}")


def send_and_collect(grid: Grid, messages: Sequence[Message], timeout_s: float | None, grace_s: float | None = None) -> list[Message]:
    """Push ``messages`` and pull replies until all arrived, ``timeout_s`` passed, or -- when
    ``grace_s`` is set -- ``grace_s`` passed since the first reply (stragglers are dropped).

    Flower's own ``Grid.send_and_receive`` has only the overall timeout; the grace period
    lets a round that lost a node move on soon after the live nodes have answered.
    """
    ids = set(grid.push_messages(list(messages)))
    out: list[Message] = []
    start = time.monotonic()
    first: float | None = None
    while ids:
        got = list(grid.pull_messages(list(ids)))
        if got and first is None:
            first = time.monotonic()
        out.extend(got)
        ids.difference_update(m.metadata.reply_to_message_id for m in got)
        if not ids:
            break
        now = time.monotonic()
        if timeout_s is not None and now - start >= timeout_s:
            break
        if grace_s is not None and first is not None and now - first >= grace_s:
            break
        time.sleep(0.05)
    return out


def train_message(node_id: int, content: RecordDict, round_index: int) -> Message:
    """A TRAIN message for ``node_id`` (``group_id`` is the 1-based round, as in Flower)."""
    return Message(RecordDict(dict(content)), dst_node_id=node_id, message_type=MessageType.TRAIN, group_id=str(round_index + 1))


class RoundWorkflow(abc.ABC):
    """One aggregation layer's server side. See the module docstring."""

    name: ClassVar[str] = "workflow"

    def __init__(self, stage_timeout_s: float | None = 60.0, min_clients: int = 2, straggler_grace_s: float | None = None) -> None:
        check_timeout(stage_timeout_s)
        if not (isinstance(min_clients, int) and min_clients >= 1):
            raise ConfigError(f"min_clients must be an int >= 1, got {min_clients!r}")
        if straggler_grace_s is not None and not (isinstance(straggler_grace_s, (int, float)) and math.isfinite(straggler_grace_s)
                                                  and straggler_grace_s > 0):
            raise ConfigError(f"straggler_grace_s must be None or a finite number of seconds > 0, got {straggler_grace_s!r}")
        self.stage_timeout_s = stage_timeout_s
        self.min_clients = min_clients
        self.straggler_grace_s = straggler_grace_s

    def exchange(self, grid: Grid, messages: Sequence[Message]) -> list[Message]:
        """One stage: send ``messages`` and collect the replies within the stage timeout/grace."""
        return send_and_collect(grid, messages, self.stage_timeout_s, self.straggler_grace_s)

    def __call__(self, grid: Grid, node_ids: Sequence[int], train_content: RecordDict, round_index: int) -> FlowerRoundResult:
        nodes = [int(n) for n in node_ids]
        if len(set(nodes)) != len(nodes):
            raise DataError(f"{self.name}: duplicate node ids in {nodes}")
        if len(nodes) < self.min_clients:
            raise NotEnoughClientsError(f"{self.name}: {len(nodes)} nodes sampled, min_clients={self.min_clients}")
        counting = CountingGrid(grid)
        t0 = time.perf_counter()
        res = self.run_round(counting, nodes, train_content, round_index)
        res.upload_bytes = dict(counting.up)
        res.download_bytes = dict(counting.down)
        res.metrics.setdefault("round_time_s", time.perf_counter() - t0)
        res.metrics.setdefault("messages", float(counting.messages))
        return res

    @abc.abstractmethod
    def run_round(self, grid: Grid, nodes: list[int], train_content: RecordDict, round_index: int) -> FlowerRoundResult:
        """Run the round over ``grid`` (already byte-counting)."""


class PlaintextWorkflow(RoundWorkflow):
    """FedAvg in the clear: one TRAIN message per node, example-weighted mean of the replies.

    Threat model: none; the server (and the SuperLink) see every update. Costs per round:
    one message each way per node, 4*L bytes up for a vector of length L; O(n*L) server time.
    """

    name = "plaintext"

    def run_round(self, grid: Grid, nodes: list[int], train_content: RecordDict, round_index: int) -> FlowerRoundResult:
        replies = self.exchange(grid, [train_message(n, train_content, round_index) for n in nodes])
        got: dict[int, tuple[np.ndarray, int]] = {}
        for nid, r in replies_by_node(replies):
            if nid in nodes:
                got[nid] = update_from_reply(r.content, where=f"node {nid}")
        if len(got) < self.min_clients:
            raise NotEnoughClientsError(f"plaintext: {len(got)} of {len(nodes)} nodes replied, min_clients={self.min_clients}")
        included = tuple(sorted(got))
        lengths = {got[n][0].shape[0] for n in included}
        if len(lengths) != 1:
            raise DataError(f"plaintext: updates of different lengths {sorted(lengths)}")
        w = np.array([got[n][1] for n in included], dtype=np.float64)
        stacked = np.stack([got[n][0].astype(np.float64) for n in included])
        mean = (w[:, None] * stacked).sum(axis=0) / w.sum()
        return FlowerRoundResult(
            delta=mean.astype(np.float32),
            included=included,
            dropped=tuple(sorted(set(nodes) - set(included))),
            metrics={"num_examples": float(w.sum())},
        )
