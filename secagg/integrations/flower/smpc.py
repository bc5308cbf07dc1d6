"""Our masked secure aggregation (secagg.smpc: Bonawitz et al. CCS 2017 / SecAgg+ Bell et al.
CCS 2020) over Flower messages: :class:`SecAggMod` (client) and :class:`SecAggWorkflow` (server).

Threat model and guarantees (those of :mod:`secagg.smpc`, honest-but-curious mode)
-----------------------------------------------------------------------------------
Protection only against an HONEST-BUT-CURIOUS ServerApp/SuperLink, i.e. one that follows
the protocol: it learns the sum (mod 2**k) of the surviving nodes' encoded,
example-weighted deltas and the sum of their weights, plus who survived each stage;
nothing about an individual delta as long as fewer than t share holders of any node
collude with it (SecAgg+: and no honest node is isolated in the Harary graph). A server
that DEVIATES (e.g. sends different nodes different survivor/dropped sets) can unmask a
node despite the client-side checks; that needs :mod:`secagg.smpc`'s active mode (signed
keys, consistency check, 3t > 2m), which this integration does not run (Flower provides
no client identity PKI to the ServerApp). The server accepts a reply only from the node
whose client id it names (a node cannot answer or send an ABORT for another).
Masks come from AES-CTR keyed by X25519+HKDF seeds (full 256-bit seeds, :mod:`secagg.smpc.prg`); every client refuses an unmasking request naming a node
as both survivor and dropped (:class:`secagg.smpc.UnmaskRefusedError`) or otherwise
inconsistent with what it saw (defence in depth, see above), and the bit
budget is checked before anything is sent, so the sum never wraps silently. See
docs/flower.md for how this differs from Flower's own SecAgg+.

Encoding: each node encodes ``w * delta`` with :func:`secagg.encoding.encode`
(clip, ``bits``, ring ``2**modulus_bits``; ``w`` = its example count, at most
``max_weight``) and appends ``w`` as one extra ring element, so the server decodes the
weighted mean as ``decode_sum(sum[:-1], total_weight=sum[-1])``. Per coordinate the mean
is within one quantization step ``clip / 2**bits`` of the exact weighted mean of the
clipped deltas.

Messages (type ``train``; ConfigRecord ``secagg.smpc``; stage names of
:class:`secagg.smpc.Stage`)
-----------------------------------------------------------------------------------
0. ``ADVERTISE_KEYS``: session config (JSON) + the node's client id -> node starts the
   client and returns its advertisement.
1. ``SHARE_KEYS``: key list -> encrypted Shamir shares.
2. ``MASKED_INPUT``: forwarded shares *plus the round's training instruction*; the mod
   runs the unchanged training function (``call_next``), encodes, masks and returns only
   the masked vector (the plaintext update and its metrics are removed from the reply).
3. ``UNMASKING``: survivor/dropped sets -> the shares that remove the masks.
A node that does not answer a stage within ``stage_timeout_s`` (or ``straggler_grace_s``
after the first answer) is dropped; the server state machine recovers its pairwise masks
from the survivors' shares, or aborts with NotEnoughClientsError below the threshold.
Client state lives in the node's ``context.state`` between messages (Flower starts a fresh
ClientApp process per message): the record ``secagg.smpc.state`` holds the blob of
:meth:`secagg.smpc.SecAggClient.export_state` (public, versioned format; it contains the
node's round secrets and never leaves the SuperNode), the round's setup JSON and the
node's client id; :meth:`~secagg.smpc.SecAggClient.from_state` rejects a blob for another
session, round, configuration or client. The record is deleted when the round ends or aborts.

Costs per round (n nodes, d neighbours, L parameters, k-bit ring): 4 message round trips;
upload per node ~ (L+1)*k/8 bytes + O(d) * ~150 bytes; client time O(d L) AES-CTR;
server O(n L + |dropped| d L).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid

from secagg.encoding import FixedPointConfig, decode_sum, encode, ring_dtype
from secagg.errors import ConfigError, NotEnoughClientsError, ProtocolError
from secagg.integrations.flower.records import update_from_reply
from secagg.integrations.flower.smpc_state import config_from_json, config_to_json
from secagg.integrations.flower.workflow import FlowerRoundResult, RoundWorkflow, train_message
from secagg.smpc import ClientAbortError, SecAggClient, SecAggServer, SessionConfig, Stage, StageError, decode, new_session_id, plan_session

log = logging.getLogger(__name__)

SMPC_RECORD = "secagg.smpc"
STATE_RECORD = "secagg.smpc.state"

#: (context, client id in the session, round id) -> generator for the stochastic rounding
RoundingRng = Callable[[Context, int, int], np.random.Generator]


def rounding_generator(seed: int, client_id: int, round_id: int) -> np.random.Generator:
    """The stochastic-rounding generator of a node with node config ``rounding-seed``."""
    return np.random.default_rng([int(seed), int(client_id), int(round_id)])


def encode_update(delta: np.ndarray, num_examples: int, fp: FixedPointConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """The ring vector a node masks: ``encode(delta, weight=num_examples)`` followed by the weight."""
    enc = encode(delta, fp, weight=int(num_examples), rng=rng)
    if enc.clipped:
        log.warning("secagg mod: %d of %d values clipped to +-%g before masking", enc.clipped, delta.shape[0], fp.clip)
    return np.concatenate([enc.values, np.array([num_examples], dtype=ring_dtype(fp.modulus_bits))])


class SecAggMod:
    """Client mod of our SecAgg/SecAgg+; passes every message without a ``secagg.smpc`` record through.

    ``rounding_rng(context, client_id, round_id)`` may supply the generator for the *stochastic rounding*
    of the fixed-point encoding (never for keys or masks, which always come from the OS
    CSPRNG inside :mod:`secagg.smpc`). Without it, a node whose node config sets
    ``rounding-seed`` rounds with ``numpy.random.default_rng([seed, client_id, round_id])``
    (reproducible runs; rounding noise is not key material, see :mod:`secagg.encoding`),
    and every other node draws the rounding from the OS CSPRNG. Tests use this to compare
    ring sums bit for bit with the in-process driver.
    """

    def __init__(self, rounding_rng: RoundingRng | None = None) -> None:
        self.rounding_rng = rounding_rng

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or SMPC_RECORD not in msg.content.config_records:
            return call_next(msg, context)
        rec = msg.content.config_records[SMPC_RECORD]
        stage = str(rec.get("stage", ""))
        try:
            if stage == Stage.ADVERTISE_KEYS.name:
                setup = json.loads(bytes(rec["setup"]).decode())
                client_id = int(rec["client-id"])
                client = SecAggClient(config_from_json(setup["session"]), client_id)
                out = client.start()
                context.state.config_records[STATE_RECORD] = ConfigRecord(
                    {"client": client.export_state(), "setup": bytes(rec["setup"]), "client-id": client_id})
                return self._reply(msg, out)
            if STATE_RECORD not in context.state.config_records:
                raise ProtocolError(f"secagg mod: stage {stage} arrived but this node has no round in progress")
            saved = context.state.config_records[STATE_RECORD]
            try:
                setup = json.loads(bytes(saved["setup"]).decode())
                cfg, client_id, blob = config_from_json(setup["session"]), int(saved["client-id"]), bytes(saved["client"])
            except (KeyError, TypeError, ValueError) as e:
                raise ProtocolError(f"secagg mod: this node's saved round state is malformed ({type(e).__name__}: {e})") from None
            client = SecAggClient.from_state(cfg, blob, client_id=client_id)  # ClientStateError if not this round's
            if stage == Stage.MASKED_INPUT.name:
                reply = call_next(msg, context)  # the unchanged training function
                delta, n_ex = update_from_reply(reply.content, where="local training")
                client.set_input(self._encode(delta, n_ex, setup, context, client.config, client.id))
            elif stage not in (Stage.SHARE_KEYS.name, Stage.UNMASKING.name):
                raise ProtocolError(f"secagg mod: unknown stage {stage!r}")
            out = client.handle(bytes(rec["msg"]))
            if client.stage == Stage.DONE:
                del context.state.config_records[STATE_RECORD]
            else:
                saved["client"] = client.export_state()
            return self._reply(msg, out)
        except (ProtocolError, NotEnoughClientsError) as e:  # NotEnoughClientsError is no ProtocolError
            abort = getattr(e, "abort_message", None)
            if STATE_RECORD in context.state.config_records:
                del context.state.config_records[STATE_RECORD]
            if abort is None:
                raise
            return self._reply(msg, abort)

    def _encode(self, delta: np.ndarray, n_ex: int, setup: dict[str, Any], context: Context, cfg: SessionConfig,
                client_id: int) -> np.ndarray:
        try:
            fp = FixedPointConfig(**{k: setup["fixed_point"][k] for k in ("clip", "bits", "modulus_bits")})
            max_weight = int(setup["max_weight"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"secagg mod: malformed fixed-point parameters from the server ({e})") from None
        if fp.modulus_bits != cfg.modulus_bits:
            raise ProtocolError(f"secagg mod: fixed-point ring 2^{fp.modulus_bits} != session ring 2^{cfg.modulus_bits}")
        # the node checks the bit budget itself: a sum that could wrap is refused, not sent
        fp.check_budget(cfg.n, max_weight, extra_count=cfg.n * max_weight)
        if n_ex > max_weight:
            raise ConfigError(f"secagg mod: this node's num-examples={n_ex} exceeds max_weight={max_weight} of the round; "
                              "raise max-weight on the server")
        if delta.shape[0] + 1 != cfg.vector_length:
            raise ProtocolError(f"secagg mod: update has {delta.shape[0]} values, the round expects {cfg.vector_length - 1}")
        rng = None
        if self.rounding_rng is not None:
            rng = self.rounding_rng(context, client_id, cfg.round_id)
        elif "rounding-seed" in context.node_config:
            rng = rounding_generator(int(context.node_config["rounding-seed"]), client_id, cfg.round_id)
        return encode_update(delta, n_ex, fp, rng)

    @staticmethod
    def _reply(msg: Message, data: bytes) -> Message:
        return Message(RecordDict({SMPC_RECORD: ConfigRecord({"msg": data})}), reply_to=msg)


#: The default instance (CSPRNG rounding) installed by :func:`secagg.integrations.flower.layers.client_mods`.
secagg_mod = SecAggMod()


class SecAggWorkflow(RoundWorkflow):
    """Server side of our SecAgg (``plus=False``, complete graph) or SecAgg+ (``plus=True``).

    Parameters (validated here, before any message is sent):
    ``threshold`` t (0 = auto, by :func:`secagg.smpc.plan_session`, the rule the FedAvg
    aggregator uses too: SecAgg+ sparse graph -> t from :func:`secagg.smpc.derive_params`;
    complete graph, also when SecAgg+ falls back to it for small n -> ``floor(n/2)+1``), ``degree`` (SecAgg+ only, even; 0 = auto), fixed point
    ``clip``/``bits``/``modulus_bits``, ``max_weight`` (largest example count a node may
    carry), ``max_clients`` (the bit budget ``log2(max_clients*max_weight*2**bits)+1 <=
    modulus_bits`` is checked for it up front and for the actual n each round),
    ``dropout_rate``/``corruption_rate`` for auto SecAgg+ parameters, ``stage_timeout_s``
    and ``straggler_grace_s`` (seconds).
    """

    def __init__(self, *, plus: bool = False, threshold: int = 0, degree: int = 0, clip: float = 1.0, bits: int = 16,
                 modulus_bits: int = 32, max_weight: int = 256, max_clients: int = 100, dropout_rate: float = 0.05,
                 corruption_rate: float = 0.05, stage_timeout_s: float | None = 60.0, straggler_grace_s: float | None = None,
                 min_clients: int = 2) -> None:
        super().__init__(stage_timeout_s, min_clients, straggler_grace_s)
        self.name = "secaggplus" if plus else "secagg"
        self.plus = bool(plus)
        if not (isinstance(threshold, int) and threshold >= 0):
            raise ConfigError(f"threshold must be an int >= 0 (0 = auto), got {threshold!r}")
        if not (isinstance(degree, int) and degree >= 0 and degree % 2 == 0):
            raise ConfigError(f"degree (neighbours) must be an even int >= 0 (0 = auto), got {degree!r}")
        if degree and not plus:
            raise ConfigError(f"degree={degree} is a SecAgg+ parameter; plain SecAgg uses the complete graph (use layer 'secaggplus')")
        if not (isinstance(max_weight, int) and max_weight >= 1):
            raise ConfigError(f"max_weight must be an int >= 1, got {max_weight!r}")
        if not (isinstance(max_clients, int) and max_clients >= 2):
            raise ConfigError(f"max_clients must be an int >= 2, got {max_clients!r}")
        if not (0 <= dropout_rate < 0.5 and 0 <= corruption_rate < 0.5 and dropout_rate + corruption_rate < 0.5):
            raise ConfigError(f"dropout_rate and corruption_rate must be in [0, 0.5) with sum < 0.5, got {dropout_rate}, {corruption_rate}")
        self.fp = FixedPointConfig(clip=clip, bits=bits, modulus_bits=modulus_bits)
        self.fp.check_budget(max_clients, max_weight, extra_count=max_clients * max_weight)
        self.threshold, self.degree = threshold, degree
        self.max_weight, self.max_clients = max_weight, max_clients
        self.dropout_rate, self.corruption_rate = dropout_rate, corruption_rate
        self._round_ids: set[int] = set()

    def session_config(self, n: int, round_index: int, vector_length: int) -> SessionConfig:
        """The public round parameters for ``n`` nodes (ConfigError if t/degree/budget do not fit)."""
        if n > self.max_clients:
            raise ConfigError(f"{self.name}: {n} nodes exceed max_clients={self.max_clients} (the validated bit budget)")
        self.fp.check_budget(n, self.max_weight, extra_count=n * self.max_weight)
        degree, t = plan_session(n, mode="honest", secagg_plus=self.plus, threshold=self.threshold or None,
                                 degree=self.degree or None, dropout_rate=self.dropout_rate,
                                 corruption_rate=self.corruption_rate)
        return SessionConfig(session_id=new_session_id(), round_id=round_index, client_ids=tuple(range(1, n + 1)),
                             threshold=t, vector_length=vector_length, modulus_bits=self.fp.modulus_bits, degree=degree)

    def _msg(self, node: int, round_index: int, rec: dict[str, Any], base: RecordDict | None = None) -> Message:
        rd = RecordDict(dict(base) if base is not None else {})
        rd[SMPC_RECORD] = ConfigRecord(rec)
        return train_message(node, rd, round_index)

    def run_round(self, grid: Grid, nodes: list[int], train_content: RecordDict, round_index: int) -> FlowerRoundResult:
        if round_index in self._round_ids:
            raise ProtocolError(f"{self.name}: round {round_index} already ran; round ids are never reused")
        length = int(train_content.array_records["global"]["vector"].shape[0])
        cfg = self.session_config(len(nodes), round_index, length + 1)
        self._round_ids.add(round_index)
        cid = {node: i + 1 for i, node in enumerate(sorted(nodes))}
        node_of = {c: n for n, c in cid.items()}
        setup = json.dumps({"session": config_to_json(cfg), "max_weight": self.max_weight,
                            "fixed_point": {"clip": self.fp.clip, "bits": self.fp.bits, "modulus_bits": self.fp.modulus_bits}}).encode()
        server = SecAggServer(cfg)
        errors: list[str] = []
        stage_s: dict[str, float] = {}
        outbox = {cid[n]: b"" for n in nodes}
        while server.stage not in (Stage.DONE, Stage.ABORTED):
            stage = server.stage
            t_stage = time.perf_counter()
            msgs = []
            for c, data in outbox.items():
                rec: dict[str, Any] = {"stage": stage.name, "msg": data}
                if stage == Stage.ADVERTISE_KEYS:
                    rec = {"stage": stage.name, "setup": setup, "client-id": c}
                msgs.append(self._msg(node_of[c], round_index, rec, train_content if stage == Stage.MASKED_INPUT else None))
            replies = self.exchange(grid, msgs)
            for r in replies:
                nid = r.metadata.src_node_id
                if r.has_error():
                    errors.append(f"node {nid} ({stage.name}): {r.error.reason}")
                    continue
                try:
                    data = bytes(r.content.config_records[SMPC_RECORD]["msg"])
                    sender = decode(data).header.sender
                    if nid not in cid or sender != cid[nid]:
                        # a node must not speak for another (e.g. a spoofed ABORT must not abort the round)
                        raise StageError(f"reply claims sender client {sender}, but node {nid} is client "
                                         f"{cid.get(nid, 'none')} of this round")
                    server.receive(data)
                except ClientAbortError:
                    raise
                except (ProtocolError, KeyError) as e:  # a bad reply is dropped, never added
                    errors.append(f"node {nid} ({stage.name}): rejected: {e}")
            outbox = server.close_stage()  # NotEnoughClientsError below the threshold: no result
            stage_s[f"stage_{stage.name.lower()}_s"] = time.perf_counter() - t_stage
        res = server.result()
        total = res.total
        total_weight = int(total[-1])
        if total_weight < 1:
            raise ProtocolError(f"{self.name}: decoded total weight {total_weight} is not positive")
        mean = decode_sum(total[:-1], self.fp, total_weight)
        included = tuple(sorted(node_of[c] for c in res.survivors))
        return FlowerRoundResult(
            delta=mean.astype(np.float32), included=included, dropped=tuple(sorted(set(nodes) - set(included))),
            metrics={"num_examples": float(total_weight), "threshold": float(cfg.threshold),
                     "degree": float(cfg.degree if cfg.degree is not None else len(nodes) - 1), **stage_s},
            errors=errors,
            ring_total=total,
        )
