"""Persisting a :class:`secagg.smpc.SecAggClient` in a Flower Context between messages.

Why this exists: in a Flower 1.42 deployment every message to a SuperNode is handled by a
*fresh* ``flwr-clientapp`` process; the only thing that survives between the four or
five messages of one secure-aggregation round is ``context.state`` (a RecordDict the
SuperNode stores and hands back). ``SecAggClient`` is an in-memory state machine holding
X25519 private keys as ``cryptography`` objects, which cannot be pickled and should not
be. :func:`dump_client` writes the state the client has committed after each stage as
one versioned JSON blob (raw 32-byte X25519 keys and 33-byte Shamir shares as hex);
:func:`load_client` rebuilds an equivalent client.

Trust: the blob holds the client's secrets (mask-key private key, self-mask seed, the
shares it holds for its neighbours) and lives only in the SuperNode's own state store,
exactly like the ``sk1``/``rd_seed`` that Flower's ``secaggplus_mod`` keeps in
``context.state`` (flwr/client/mod/secure_aggregation/secaggplus_mod.py:SecAggPlusState).
It never travels to the SuperLink.

Coupling: the codec reads and writes the documented private attributes of
``SecAggClient`` (secagg/smpc/client.py); ``tests/test_flower_smpc.py`` round-trips a
client through the codec after every stage and completes a round with it, so a change in
the state machine's fields fails loudly there. The input vector is never persisted: the
mod sets it and sends the masked input within the same invocation.
"""

from __future__ import annotations

import json
from typing import Any

from secagg.errors import ProtocolError
from secagg.smpc import SecAggClient, SessionConfig
from secagg.smpc import keys, shamir
from secagg.smpc import messages as M

FORMAT = "secagg.smpc.client-state/v1"


def config_to_json(cfg: SessionConfig) -> dict[str, Any]:
    if cfg.mode != "honest":
        raise ProtocolError("the Flower integration runs the honest-but-curious mode only")
    return {"session_id": cfg.session_id.hex(), "round_id": cfg.round_id, "client_ids": list(cfg.client_ids),
            "threshold": cfg.threshold, "vector_length": cfg.vector_length, "modulus_bits": cfg.modulus_bits,
            "mode": cfg.mode, "degree": cfg.degree}


def config_from_json(obj: dict[str, Any]) -> SessionConfig:
    try:
        return SessionConfig(
            session_id=bytes.fromhex(obj["session_id"]), round_id=int(obj["round_id"]),
            client_ids=tuple(int(c) for c in obj["client_ids"]), threshold=int(obj["threshold"]),
            vector_length=int(obj["vector_length"]), modulus_bits=int(obj["modulus_bits"]), mode=str(obj["mode"]),
            degree=None if obj["degree"] is None else int(obj["degree"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed session config: {e}") from None


def dump_client(c: SecAggClient) -> bytes:
    """Serialize everything ``c`` has committed (see the module docstring)."""
    if c._input is not None and c.stage <= M.Stage.MASKED_INPUT:
        raise ProtocolError("dump_client: the client holds an unsent input vector; send the masked input first")
    st: dict[str, Any] = {"format": FORMAT, "config": config_to_json(c.config), "id": c.id, "stage": int(c.stage),
                          "started": bool(c._started), "masked_sent": bool(c._masked_sent)}
    if c._started:
        st["c_sk"] = keys.x25519_private_bytes(c._c_sk).hex()
        st["s_sk"] = keys.x25519_private_bytes(c._s_sk).hex()
    if c._U1:
        st["U1"] = [[v, e.c_pk.hex(), e.s_pk.hex(), e.signature.hex()] for v, e in sorted(c._U1.items())]
        st["enc_keys"] = [[v, k.hex()] for v, k in sorted(c._enc_keys.items())]
        st["b"] = c._b.hex()
    st["shares"] = [[v, shamir.share_to_bytes(b).hex(), shamir.share_to_bytes(s).hex()] for v, (b, s) in sorted(c._shares.items())]
    st["U2"] = sorted(c._U2)
    return json.dumps(st, separators=(",", ":")).encode()


def load_client(blob: bytes) -> SecAggClient:
    """Rebuild the client :func:`dump_client` serialized; ProtocolError if the blob is malformed."""
    try:
        st = json.loads(blob.decode())
        if st.get("format") != FORMAT:
            raise ProtocolError(f"client state: unknown format {st.get('format')!r}, expected {FORMAT}")
        cfg = config_from_json(st["config"])
        c = SecAggClient(cfg, int(st["id"]))
        c.stage = M.Stage(int(st["stage"]))
        c._started = bool(st["started"])
        c._masked_sent = bool(st["masked_sent"])
        if c._started:
            c._c_sk = keys.x25519_from_private(bytes.fromhex(st["c_sk"]))
            c._s_sk = keys.x25519_from_private(bytes.fromhex(st["s_sk"]))
            c._c_pk = keys.x25519_public_bytes(c._c_sk)
            c._s_pk = keys.x25519_public_bytes(c._s_sk)
        if "U1" in st:
            c._U1 = {int(v): M.KeyEntry(int(v), bytes.fromhex(a), bytes.fromhex(b), bytes.fromhex(s)) for v, a, b, s in st["U1"]}
            c._enc_keys = {int(v): bytes.fromhex(k) for v, k in st["enc_keys"]}
            c._b = bytes.fromhex(st["b"])
        c._shares = {int(v): (shamir.share_from_bytes(bytes.fromhex(b)), shamir.share_from_bytes(bytes.fromhex(s)))
                     for v, b, s in st["shares"]}
        c._U2 = frozenset(int(v) for v in st["U2"])
        return c
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"client state: malformed blob ({type(e).__name__}: {e})") from None
