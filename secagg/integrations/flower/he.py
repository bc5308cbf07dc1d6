"""Homomorphic aggregation (secagg.he: CKKS or packed Paillier) over Flower messages.

Roles and threat model (as in :mod:`secagg.he`)
-----------------------------------------------
* Every SuperNode holds the scheme's **secret bundle**, provisioned out of band by the
  operator (:func:`provision_he_keys` writes ``secret.bundle`` and ``public.bundle`` into
  a key directory that each client site receives over its own channel, never through the
  SuperLink). A node finds it through its node config key ``he-key-dir`` or, failing
  that, the environment variable ``SECAGG_HE_KEY_DIR``.
* The ServerApp (and the SuperLink that relays messages) only ever sees the **public
  bundle**, encrypted updates, the encrypted aggregate and the decrypted *mean*, which is
  what FedAvg needs anyway. It learns the clients' weights (example counts) and the
  vector length, nothing about any individual update (IND-CPA, honest-but-curious server).
* All clients share one key: a client colluding with the server can decrypt others'
  updates. Use the masked secure aggregation layer when clients must be protected from
  each other.

Protocol per round (message type ``train``, ConfigRecord ``secagg.he``)
-----------------------------------------------------------------------
0. (first round only) ``public-key``: every node returns the context id of its bundle and
   one node the public bundle; mismatched provisioning is refused before any update
   travels (:class:`~secagg.errors.ConfigError`).
1. ``encrypt``: the train instruction goes out with the HE stage; :func:`he_mod` runs the
   unchanged training function, encrypts its delta and replaces the plaintext arrays in
   the reply by the ciphertext. Nodes that time out are dropped (weights renormalised).
2. ``decrypt``: the server adds the weighted ciphertexts (public key only) and sends the
   aggregate to one surviving node, which returns the decrypted weighted mean; if that
   node fails the next survivor is asked.

Costs: see :mod:`secagg.he.ckks` / :mod:`secagg.he.paillier` (CKKS ~20x a float32 vector
upload, Paillier ~ (key_bits*2)/(slots*slot_bits) x). Server O(n L) homomorphic ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid

from secagg.errors import ConfigError, DataError, NotEnoughClientsError, ProtocolError
from secagg.integrations.flower.records import replies_by_node, update_from_reply, vector_from_record, vector_to_record
from secagg.integrations.flower.workflow import FlowerRoundResult, RoundWorkflow, train_message

HE_RECORD = "secagg.he"
SCHEMES = ("ckks", "paillier")
SECRET_FILE = "secret.bundle"
PUBLIC_FILE = "public.bundle"
KEY_DIR_NODE_CONFIG = "he-key-dir"
KEY_DIR_ENV = "SECAGG_HE_KEY_DIR"


@dataclass(frozen=True)
class HEKeyFiles:
    secret: Path
    public: Path


def provision_he_keys(scheme: str, directory: str | Path, *, ckks_preset: str = "ckks-8192", paillier_config: Any = None) -> HEKeyFiles:
    """Create one key pair (the key holder's job) and write both bundles into ``directory``.

    ``secret.bundle`` (mode 0600) goes to every client site; ``public.bundle`` may go anywhere.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    from secagg.he import CKKSKeyHolder, PaillierConfig, PaillierKeyHolder

    kh = CKKSKeyHolder(ckks_preset) if scheme == "ckks" else PaillierKeyHolder(paillier_config or PaillierConfig())
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sec, pub = d / SECRET_FILE, d / PUBLIC_FILE
    fd = os.open(sec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(kh.secret_bundle())
    pub.write_bytes(kh.public_bundle())
    return HEKeyFiles(sec, pub)


def _key_dir(context: Context) -> Path:
    d = str(context.node_config.get(KEY_DIR_NODE_CONFIG, "")) or os.environ.get(KEY_DIR_ENV, "")
    if not d:
        raise ConfigError(f"HE layer: this node has no key directory; set node config '{KEY_DIR_NODE_CONFIG}' or ${KEY_DIR_ENV}")
    p = Path(d)
    if not (p / SECRET_FILE).is_file():
        raise ConfigError(f"HE layer: {p / SECRET_FILE} does not exist (provision keys with provision_he_keys)")
    return p


def _client(scheme: str, key_dir: Path, value_bound: float | None):  # type: ignore[no-untyped-def]
    from secagg.he import CKKSClient, PaillierClient

    data = (key_dir / SECRET_FILE).read_bytes()
    return CKKSClient(data, value_bound=value_bound) if scheme == "ckks" else PaillierClient(data)


def he_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod of the HE layer; passes every message without a ``secagg.he`` record through."""
    if msg.metadata.message_type != MessageType.TRAIN or HE_RECORD not in msg.content.config_records:
        return call_next(msg, context)
    cfg = msg.content.config_records[HE_RECORD]
    stage, scheme = str(cfg.get("stage", "")), str(cfg.get("scheme", ""))
    if scheme not in SCHEMES:
        raise ProtocolError(f"HE layer: unknown scheme {scheme!r} in the server's request")
    key_dir = _key_dir(context)
    vb = cfg.get("value-bound")
    client = _client(scheme, key_dir, float(vb) if vb is not None else None)
    if stage == "public-key":
        out = ConfigRecord({"context-id": client.context_id, "public-bundle": (key_dir / PUBLIC_FILE).read_bytes()})
        return Message(RecordDict({HE_RECORD: out}), reply_to=msg)
    if stage == "encrypt":
        reply = call_next(msg, context)  # the unchanged training function ignores the HE record
        delta, n = update_from_reply(reply.content, where="local training")
        ct = client.encrypt(delta, round_index=int(cfg["round"]), client_id=int(cfg["client-index"]))
        return Message(RecordDict({HE_RECORD: ConfigRecord({"ciphertext": ct, "num-examples": int(n)})}), reply_to=msg)
    if stage == "decrypt":
        agg = client.decrypt(bytes(cfg["aggregate"]), round_index=int(cfg["round"]))
        mean = np.asarray(agg.mean, dtype=np.float32)
        out = ConfigRecord({"included": [int(c) for c in agg.included], "error-bound": float(agg.error_bound)})
        return Message(RecordDict({HE_RECORD: out, "mean": vector_to_record(mean)}), reply_to=msg)
    raise ProtocolError(f"HE layer: unknown stage {stage!r}")


class HEWorkflow(RoundWorkflow):
    """Server side of the HE layer (see the module docstring). Holds only public key material."""

    def __init__(self, scheme: str, *, value_bound: float = 1.0, stage_timeout_s: float | None = 60.0, min_clients: int = 2,
                 straggler_grace_s: float | None = None) -> None:
        """``value_bound``: public bound on |delta values| (CKKS rejects larger values and states its
        error relative to it; Paillier uses the clip of its provisioned config)."""
        if scheme not in SCHEMES:
            raise ConfigError(f"HE scheme must be one of {SCHEMES}, got {scheme!r}")
        if not (isinstance(value_bound, (int, float)) and np.isfinite(value_bound) and value_bound > 0):
            raise ConfigError(f"value_bound must be a finite number > 0, got {value_bound!r}")
        super().__init__(stage_timeout_s, min_clients, straggler_grace_s)
        self.value_bound = float(value_bound)
        self.scheme = scheme
        self.name = f"he-{scheme}"
        self._server: Any = None

    def _request(self, node: int, content: dict[str, Any], base: RecordDict | None, round_index: int) -> Message:
        rd = RecordDict(dict(base) if base is not None else {})
        rd[HE_RECORD] = ConfigRecord({"scheme": self.scheme, "round": round_index, "value-bound": self.value_bound, **content})
        return train_message(node, rd, round_index)

    def _setup(self, grid: Grid, nodes: list[int]) -> None:
        from secagg.he import CKKSServer, PaillierServer

        replies = dict(replies_by_node(self.exchange(grid, [self._request(n, {"stage": "public-key"}, None, 0) for n in nodes])))
        if not replies:
            raise NotEnoughClientsError(f"{self.name}: no node answered the public-key request")
        ids = {n: bytes(r.content.config_records[HE_RECORD]["context-id"]) for n, r in replies.items()}
        if len(set(ids.values())) != 1:
            groups: dict[bytes, list[int]] = {}
            for n, cid in ids.items():
                groups.setdefault(cid, []).append(n)
            raise ConfigError(f"{self.name}: nodes hold different keys ({len(groups)} key sets: "
                              f"{[sorted(g) for g in groups.values()]}); provision one secret bundle to every node")
        first = replies[min(replies)]
        bundle = bytes(first.content.config_records[HE_RECORD]["public-bundle"])
        self._server = CKKSServer(bundle) if self.scheme == "ckks" else PaillierServer(bundle)
        if self._server.context_id != next(iter(ids.values())):
            raise ProtocolError(f"{self.name}: public bundle does not match the nodes' context id")

    def run_round(self, grid: Grid, nodes: list[int], train_content: RecordDict, round_index: int) -> FlowerRoundResult:
        if self._server is None:
            self._setup(grid, nodes)
        index = {n: i + 1 for i, n in enumerate(sorted(nodes))}
        replies = dict(replies_by_node(self.exchange(
            grid, [self._request(n, {"stage": "encrypt", "client-index": index[n]}, train_content, round_index) for n in nodes])))
        got = {n: r.content.config_records[HE_RECORD] for n, r in replies.items() if n in index and HE_RECORD in r.content.config_records}
        if len(got) < self.min_clients:
            raise NotEnoughClientsError(f"{self.name}: {len(got)} of {len(nodes)} nodes sent encrypted updates, min_clients={self.min_clients}")
        weights = {index[n]: int(c["num-examples"]) for n, c in got.items()}
        length = int(train_content.array_records["global"]["vector"].shape[0]) if "global" in train_content.array_records else None
        if length is None:
            raise DataError(f"{self.name}: the train instruction carries no global vector to size the round")
        rnd = self._server.open_round(round_index, weights, length)
        for n in sorted(got):
            rnd.add(bytes(got[n]["ciphertext"]))
        aggregate = rnd.finish()
        survivors = sorted(got)
        for dec in survivors:  # one decryptor; the next survivor if it fails
            r = dict(replies_by_node(self.exchange(grid, [self._request(dec, {"stage": "decrypt", "aggregate": aggregate}, None, round_index)])))
            if dec in r and "mean" in r[dec].content.array_records:
                mean = vector_from_record(r[dec].content.array_records["mean"], where=f"{self.name} decrypted mean")
                if mean.shape[0] != length:
                    raise ProtocolError(f"{self.name}: decrypted mean has {mean.shape[0]} values, expected {length}")
                bound = float(r[dec].content.config_records[HE_RECORD]["error-bound"])
                return FlowerRoundResult(
                    delta=mean, included=tuple(survivors), dropped=tuple(sorted(set(nodes) - set(survivors))),
                    metrics={"num_examples": float(sum(weights.values())), "he_error_bound": bound, "decryptor": float(index[dec])},
                )
        raise NotEnoughClientsError(f"{self.name}: no surviving node decrypted the aggregate")
