"""An in-process Flower Grid: ServerApp workflows talk to ClientApps without any engine.

:class:`LoopbackGrid` implements :class:`flwr.serverapp.Grid` by calling a
:class:`flwr.clientapp.ClientApp` directly, with one persistent
:class:`flwr.app.Context` per virtual node (exactly what a SuperNode keeps between
messages). The Context's ``state`` is round-tripped through Flower's own RecordDict
serialization after every message, as a deployment would, so a mod that keeps
anything outside ``context.state`` fails here too.

It exists for fast, deterministic tests and for isolating protocol cost in benchmarks;
the deployment tests use real SuperLink/SuperNode processes (:mod:`.deploy`) and the
example app also runs in Flower's simulation engine (:func:`.app.run_in_simulation`).

Dropout injection: ``drop(node_id, message) -> bool``; a dropped node gets the message
but never answers (the server sees a timeout), and stays dead for the rest of the run.
A ClientApp exception becomes an error reply, as in Flower.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping, Sequence
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid

_CLIENT_APP_RAISED = 2  # flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class LoopbackGrid(Grid):
    """See the module docstring. ``node_configs[i]`` becomes node ``first_id + i``'s node config."""

    def __init__(self, client_app: ClientApp, node_configs: Sequence[Mapping[str, Any]], *,
                 drop: Callable[[int, Message], bool] | None = None, first_id: int = 1001, run_id: int = 1) -> None:
        self._app = client_app
        self._run_id = run_id
        # a ServerApp process knows its task identity; messages it creates read it
        if TaskIdentity._run_id is None:
            TaskIdentity.run_id = run_id
            TaskIdentity.node_id = SUPERLINK_NODE_ID
            TaskIdentity.task_id = 0
        self.contexts: dict[int, Context] = {}
        for i, nc in enumerate(node_configs):
            nid = first_id + i
            self.contexts[nid] = Context(run_id=run_id, node_id=nid, node_config=dict(nc), state=RecordDict(), run_config={})
        self._drop = drop
        self.dead: set[int] = set()
        self._replies: dict[str, Message] = {}
        self.errors: list[str] = []
        self._counter = itertools.count()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return getattr(self, "_run", None) or Run.create_empty(self._run_id)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.dead]

    def _deliver(self, msg: Message) -> Message | None:
        nid = msg.metadata.dst_node_id
        if nid not in self.contexts or nid in self.dead:
            return None
        if self._drop is not None and self._drop(nid, msg):
            self.dead.add(nid)
            return None
        ctx = self.contexts[nid]
        # the node receives a deserialized copy, as over the network
        inbound = Message(recorddict_from_proto(recorddict_to_proto(msg.content)), dst_node_id=nid, message_type=msg.metadata.message_type,
                          group_id=msg.metadata.group_id)
        inbound.metadata.__dict__["_message_id"] = msg.metadata.message_id
        inbound.metadata.__dict__["_src_node_id"] = 0
        try:
            reply = self._app(inbound, ctx)
        except Exception as exc:  # noqa: BLE001 - Flower turns ClientApp exceptions into error replies
            self.errors.append(f"node {nid}: {type(exc).__name__}: {exc}")
            return Message(Error(code=_CLIENT_APP_RAISED, reason=f"{type(exc).__name__}: {exc}"), reply_to=inbound)
        # persist the node state the way a SuperNode does: through protobuf serialization
        ctx.state = recorddict_from_proto(recorddict_to_proto(ctx.state))
        return Message(recorddict_from_proto(recorddict_to_proto(reply.content)), reply_to=inbound) if not reply.has_error() else reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"{next(self._counter)}-{uuid4().hex[:8]}"
            msg.metadata.__dict__["_message_id"] = mid
            reply = self._deliver(msg)
            if reply is not None:
                self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in message_ids:
            r = self._replies.pop(mid, None)
            if r is not None:
                out.append(r)
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))
