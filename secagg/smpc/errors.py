"""Specific protocol exceptions of :mod:`secagg.smpc` (all are :class:`~secagg.errors.ProtocolError`)."""

from __future__ import annotations

from secagg.errors import DataError, NotEnoughClientsError, ProtocolError

__all__ = [
    "ProtocolError",
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


class MalformedMessageError(ProtocolError):
    """Bytes that do not parse as a message of this protocol version (bad magic/version/lengths)."""


class WrongSessionError(ProtocolError):
    """A message for another session or round id (stale or misrouted)."""


class StageError(ProtocolError):
    """A message that belongs to a later stage than the receiver is in, or to an unexpected party."""


class ReplayError(ProtocolError):
    """A message repeated within a stage, or one from an already closed stage."""


class TamperedMessageError(ProtocolError):
    """An AES-GCM share ciphertext failed authentication or its inner ids do not match."""


class SignatureError(ProtocolError):
    """An Ed25519 signature (active mode) is missing or does not verify."""


class UnmaskRefusedError(ProtocolError):
    """An honest client refused an unmasking request that could reveal a private input."""


class ClientAbortError(ProtocolError):
    """The server received an abort message from a client (e.g. a refused unmasking request)."""


class VectorLengthError(ProtocolError, DataError):
    """A masked or input vector has the wrong length, dtype or out-of-range values."""
