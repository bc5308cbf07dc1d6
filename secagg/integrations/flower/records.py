"""Flat float32 vectors inside Flower records, and how many bytes a message carries.

The example app and every layer exchange model parameters and updates as *one* flat
``float32`` vector (the convention of :mod:`secagg.fl.aggregator`). In Flower 1.42 a
message's content is a :class:`flwr.app.RecordDict`; vectors travel in an
:class:`flwr.app.ArrayRecord` under a fixed key, protocol payloads as ``bytes`` in a
:class:`flwr.app.ConfigRecord`.

Byte accounting (:func:`payload_bytes`) counts what a message *carries*: the raw data
of every array, the length of every ``bytes``/``str`` value and 8 bytes per int/float
(how protobuf would store a fixed64/double). It deliberately ignores Flower's own
envelope (metadata, object ids), which is the same for every layer, so layers can be
compared on what they add. Costs: O(size of the record).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from secagg.errors import DataError

#: RecordDict keys used by the example app (server -> client).
GLOBAL_PARAMS = "global"
TRAIN_CONFIG = "train-config"
#: RecordDict keys used by the example app (client -> server).
UPDATE = "update"
TRAIN_METRICS = "train-metrics"
#: Array key of the single flat vector inside an ArrayRecord.
VECTOR_KEY = "vector"
NUM_EXAMPLES = "num-examples"


def vector_to_record(vec: np.ndarray) -> ArrayRecord:
    """Wrap one flat float32 vector in an ArrayRecord (copy)."""
    v = np.asarray(vec)
    if v.ndim != 1:
        raise DataError(f"vector_to_record: expected a 1-D vector, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise DataError("vector_to_record: vector contains NaN or Inf")
    return ArrayRecord({VECTOR_KEY: Array(np.ascontiguousarray(v, dtype=np.float32))})


def vector_from_record(record: ArrayRecord, *, where: str = "message") -> np.ndarray:
    """The flat float32 vector stored by :func:`vector_to_record`; DataError if malformed."""
    if VECTOR_KEY not in record:
        raise DataError(f"{where}: ArrayRecord has no '{VECTOR_KEY}' array (keys: {sorted(record.keys())})")
    arr = record[VECTOR_KEY].numpy()
    if arr.ndim != 1 or arr.dtype != np.float32:
        raise DataError(f"{where}: expected a 1-D float32 vector, got {arr.dtype} of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: vector contains NaN or Inf")
    return arr


def update_from_reply(content: RecordDict, *, where: str = "reply") -> tuple[np.ndarray, int]:
    """(delta, num_examples) of a training reply of the example app's schema."""
    if UPDATE not in content.array_records:
        raise DataError(f"{where}: no '{UPDATE}' ArrayRecord in the training reply")
    if TRAIN_METRICS not in content.metric_records or NUM_EXAMPLES not in content.metric_records[TRAIN_METRICS]:
        raise DataError(f"{where}: no '{TRAIN_METRICS}.{NUM_EXAMPLES}' in the training reply")
    n = content.metric_records[TRAIN_METRICS][NUM_EXAMPLES]
    if not isinstance(n, int) or n <= 0:
        raise DataError(f"{where}: {NUM_EXAMPLES} must be an int > 0, got {n!r}")
    return vector_from_record(content.array_records[UPDATE], where=where), n


def _value_bytes(v: object) -> int:
    if isinstance(v, (bytes, str)):
        return len(v)
    if isinstance(v, (list, tuple)):
        return sum(_value_bytes(x) for x in v)
    return 8  # int, float, bool


def payload_bytes(content: RecordDict) -> int:
    """Bytes of payload a RecordDict carries (see the module docstring)."""
    total = 0
    for rec in content.array_records.values():
        total += sum(len(a.data) for a in rec.values())
    for rec in content.config_records.values():
        total += sum(len(k) + _value_bytes(v) for k, v in rec.items())
    for rec in content.metric_records.values():
        total += sum(len(k) + _value_bytes(v) for k, v in rec.items())
    return total


class CountingGrid(Grid):
    """A Grid that forwards to another Grid and counts payload bytes per node.

    ``down[node]`` / ``up[node]``: payload bytes sent to / received from ``node``
    (:func:`payload_bytes`), ``messages`` the number of messages pushed. Used by the
    benchmark to measure Flower's SecAgg+ and ours with the same ruler.
    """

    def __init__(self, inner: Grid) -> None:
        self._inner = inner
        self.down: dict[int, int] = {}
        self.up: dict[int, int] = {}
        self.messages = 0

    def reset(self) -> None:
        self.down.clear()
        self.up.clear()
        self.messages = 0

    # --- Grid API -------------------------------------------------------------------
    def set_run(self, run):  # type: ignore[no-untyped-def]
        self._inner.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def _count_out(self, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        for m in out:
            nid = m.metadata.dst_node_id
            self.down[nid] = self.down.get(nid, 0) + payload_bytes(m.content)
        self.messages += len(out)
        return out

    def _count_in(self, replies: Iterable[Message]) -> list[Message]:
        got = list(replies)
        for r in got:
            if r.has_error():
                continue
            nid = r.metadata.src_node_id
            self.up[nid] = self.up.get(nid, 0) + payload_bytes(r.content)
        return got

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(self._count_out(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._count_in(self._inner.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._count_in(self._inner.send_and_receive(self._count_out(messages), timeout=timeout))


def replies_by_node(replies: Iterable[Message]) -> Iterator[tuple[int, Message]]:
    """(src node id, reply) for every reply that is not an error."""
    for r in replies:
        if not r.has_error():
            yield r.metadata.src_node_id, r

