"""Masked secure aggregation: Bonawitz et al. (CCS 2017) with dropout recovery, and SecAgg+
sparse Harary graphs (Bell et al., CCS 2020). Flat numpy vectors only; no torch.

Threat models: an honest-but-curious server (``mode='honest'``) or an active server that
may deviate (``mode='active'``: Ed25519-signed keys and survivor-set consistency check).
The server learns only the sum mod 2**k of the surviving clients' inputs, provided, in
honest mode, the server follows the protocol and fewer than t share holders of any client
collude with it; in active mode (which requires 3t > 2m, m = closed neighbourhood size),
at most 2t - m - 1 share holders of any client collude with the deviating server. Honest
mode gives no guarantee against a server that deviates. See docs/smpc.md.

Public API (stable)
-------------------
Round parameters
    :class:`SessionConfig`          public parameters (ids, threshold t, vector length, ring, mode, graph)
    :func:`new_session_id`          16 random bytes
    :func:`derive_params`           SecAgg+ degree/threshold from n, dropout and corruption rates
                                    (:class:`SecAggPlusParams` has ``explain()``; ``mode='active'`` for 3t > 2m)
    :func:`plan_session`            (degree, t) for n clients: the one rule of the FedAvg aggregator and Flower
    :func:`default_threshold`       SecAgg's default t: honest floor(m/2)+1, active floor(2m/3)+1
State machines (transport-agnostic, bytes in / bytes out)
    :class:`SecAggClient`           ``start() -> bytes``, ``set_input(uint vector)``, ``handle(bytes) -> bytes``,
                                    ``export_state() -> bytes`` / ``SecAggClient.from_state(cfg, blob)`` to resume
                                    in another process (the blob is SECRET; :class:`ClientStateError`,
                                    format version :data:`STATE_FORMAT_VERSION`)
    :class:`SecAggServer`           ``receive(bytes)``, ``close_stage() -> {client_id: bytes}``,
                                    ``result() -> SecureSumResult``, ``stage``, ``participants``
    :class:`Stage`                  stage enum; :func:`decode` parses any message (``.header.stage``)
In-process simulation
    :func:`run_round`               one whole round with a :class:`DropoutSchedule` -> :class:`RoundReport`
                                    (sum, survivors, per-client bytes, per-phase time and bytes)
Identity keys (active mode)
    :func:`generate_identity`, :func:`identity_public_bytes`
Errors (all ProtocolError except NotEnoughClientsError)
    MalformedMessageError, WrongSessionError, StageError, ReplayError, TamperedMessageError,
    SignatureError, UnmaskRefusedError, ClientAbortError, VectorLengthError, ClientStateError (also a
    DataError), NotEnoughClientsError

Typical transport loop (what :func:`run_round` does)::

    server = SecAggServer(cfg)
    for c in clients: server.receive(c.start())
    out = server.close_stage()
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        for cid, msg in out.items(): server.receive(clients[cid].handle(msg))   # skip dropped clients
        out = server.close_stage()
    total = server.result().total      # uint ring vector; decode with secagg.encoding

Primitives live in submodules: :mod:`.shamir`, :mod:`.prg`, :mod:`.keys`, :mod:`.messages`, :mod:`.graph`.
"""

from secagg.errors import NotEnoughClientsError
from secagg.smpc.client import STATE_FORMAT_VERSION, ClientStateError, SecAggClient
from secagg.smpc.config import SessionConfig, new_session_id
from secagg.smpc.driver import PHASES, DropoutSchedule, PhaseStats, RoundReport, run_round
from secagg.smpc.errors import (
    ClientAbortError,
    MalformedMessageError,
    ReplayError,
    SignatureError,
    StageError,
    TamperedMessageError,
    UnmaskRefusedError,
    VectorLengthError,
    WrongSessionError,
)
from secagg.smpc.graph import SecAggPlusParams, default_threshold, derive_params, plan_session
from secagg.smpc.keys import generate_identity, identity_public_bytes
from secagg.smpc.messages import Stage, decode
from secagg.smpc.server import SecAggServer, SecureSumResult

__all__ = [
    "SessionConfig",
    "new_session_id",
    "derive_params",
    "plan_session",
    "default_threshold",
    "SecAggPlusParams",
    "SecAggClient",
    "ClientStateError",
    "STATE_FORMAT_VERSION",
    "SecAggServer",
    "SecureSumResult",
    "Stage",
    "decode",
    "run_round",
    "DropoutSchedule",
    "PhaseStats",
    "RoundReport",
    "PHASES",
    "generate_identity",
    "identity_public_bytes",
    "NotEnoughClientsError",
    "MalformedMessageError",
    "WrongSessionError",
    "StageError",
    "ReplayError",
    "TamperedMessageError",
    "SignatureError",
    "UnmaskRefusedError",
    "ClientAbortError",
    "VectorLengthError",
]
