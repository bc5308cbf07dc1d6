"""Session configuration <-> JSON, for carrying a SecAgg round's public parameters in Flower records.

The client's protocol *state* (its keys, seeds and the shares it holds) is persisted between
Flower messages with :meth:`secagg.smpc.SecAggClient.export_state` /
:meth:`~secagg.smpc.SecAggClient.from_state` (see docs/smpc.md, "Persisting a client between
messages"); this module only encodes the public :class:`~secagg.smpc.SessionConfig` that the
server workflow sends to every node. The Flower integration runs the honest-but-curious mode
only (Flower 1.42 gives the ServerApp no client identity keys).
"""

from __future__ import annotations

from typing import Any

from secagg.errors import ProtocolError
from secagg.smpc import SessionConfig


def config_to_json(cfg: SessionConfig) -> dict[str, Any]:
    """The public session parameters as a JSON-able dict; honest mode only."""
    if cfg.mode != "honest":
        raise ProtocolError("the Flower integration runs the honest-but-curious mode only")
    return {"session_id": cfg.session_id.hex(), "round_id": cfg.round_id, "client_ids": list(cfg.client_ids),
            "threshold": cfg.threshold, "vector_length": cfg.vector_length, "modulus_bits": cfg.modulus_bits,
            "mode": cfg.mode, "degree": cfg.degree}


def config_from_json(obj: dict[str, Any]) -> SessionConfig:
    """Inverse of :func:`config_to_json`; :class:`ProtocolError` on a malformed dict."""
    try:
        return SessionConfig(
            session_id=bytes.fromhex(obj["session_id"]), round_id=int(obj["round_id"]),
            client_ids=tuple(int(c) for c in obj["client_ids"]), threshold=int(obj["threshold"]),
            vector_length=int(obj["vector_length"]), modulus_bits=int(obj["modulus_bits"]), mode=str(obj["mode"]),
            degree=None if obj["degree"] is None else int(obj["degree"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed session config: {e}") from None
