"""Wire format of the SecAgg protocol: versioned, length-checked binary messages.

Every message is ``header || body``. Header (big-endian, :data:`HEADER_BYTES` = 37 bytes):

=========  =====  =============================================
magic      2      ``b"SA"``
version    1      :data:`VERSION` (other versions are rejected)
stage      1      :class:`Stage` the message belongs to
kind       1      :class:`Kind` (must belong to ``stage``)
session    16     session id
round      4      round id
sender     4      client id, 0 = server
receiver   4      client id, 0 = server
body_len   4      exact body length (checked)
=========  =====  =============================================

Bodies are fixed layouts of u32 counts, u32 ids and byte strings; every length is
checked while parsing and trailing bytes are rejected, so a decoder never reads past a
field or silently ignores data (:class:`~secagg.smpc.errors.MalformedMessageError`).
Masked vectors travel as ``itemsize(u8) || length(u64) || little-endian data``: with
``k = 32`` that is 4 bytes per element, the same as float32.

Threat model: the format gives no confidentiality or integrity by itself; shares are
inside AES-GCM ciphertexts, keys and survivor lists are Ed25519-signed in active mode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

import numpy as np

from secagg.smpc.errors import MalformedMessageError

__all__ = [
    "VERSION",
    "HEADER_BYTES",
    "SERVER_ID",
    "Stage",
    "Kind",
    "STAGE_OF",
    "Header",
    "Message",
    "AdvertiseKeys",
    "KeyEntry",
    "KeyList",
    "ShareCiphertexts",
    "MaskedInput",
    "SurvivorList",
    "ConsistencySignature",
    "UnmaskRequest",
    "ShareEntry",
    "UnmaskResponse",
    "Abort",
    "encode",
    "decode",
    "SHARE_SELF_MASK",
    "SHARE_MASK_KEY",
]

VERSION = 1
MAGIC = b"SA"
SERVER_ID = 0
_HDR = struct.Struct(">2sBBB16sIIII")
HEADER_BYTES = _HDR.size
SHARE_SELF_MASK = 0  # share of b_u (revealed for survivors)
SHARE_MASK_KEY = 1  # share of the mask-agreement private key s_u (revealed for dropped clients)


class Stage(IntEnum):
    """Protocol stages in order (Bonawitz et al. rounds 0-4)."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY_CHECK = 3
    UNMASKING = 4
    DONE = 5
    ABORTED = 6


class Kind(IntEnum):
    ADVERTISE = 1  # client -> server
    KEY_LIST = 2  # server -> client, opens SHARE_KEYS
    SHARES = 3  # client -> server
    SHARES_FORWARD = 4  # server -> client, opens MASKED_INPUT
    MASKED = 5  # client -> server
    CONSISTENCY_REQUEST = 6  # server -> client
    CONSISTENCY_SIGNATURE = 7  # client -> server
    UNMASK_REQUEST = 8  # server -> client
    UNMASK_RESPONSE = 9  # client -> server
    ABORT = 10  # client -> server, any stage


STAGE_OF = {
    Kind.ADVERTISE: Stage.ADVERTISE_KEYS,
    Kind.KEY_LIST: Stage.SHARE_KEYS,
    Kind.SHARES: Stage.SHARE_KEYS,
    Kind.SHARES_FORWARD: Stage.MASKED_INPUT,
    Kind.MASKED: Stage.MASKED_INPUT,
    Kind.CONSISTENCY_REQUEST: Stage.CONSISTENCY_CHECK,
    Kind.CONSISTENCY_SIGNATURE: Stage.CONSISTENCY_CHECK,
    Kind.UNMASK_REQUEST: Stage.UNMASKING,
    Kind.UNMASK_RESPONSE: Stage.UNMASKING,
}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.d = memoryview(data)
        self.i = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.d):
            raise MalformedMessageError(f"body truncated: need {n} bytes at offset {self.i}, have {len(self.d) - self.i}")
        out = bytes(self.d[self.i : self.i + n])
        self.i += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def ids(self) -> tuple[int, ...]:
        n = self.u32()
        raw = self.take(4 * n)
        out = struct.unpack(f">{n}I", raw)
        if len(set(out)) != n:
            raise MalformedMessageError("duplicate client id in an id list")
        return out

    def end(self) -> None:
        if self.i != len(self.d):
            raise MalformedMessageError(f"{len(self.d) - self.i} trailing bytes after body")


def _ids(ids) -> bytes:
    ids = tuple(ids)
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


@dataclass(frozen=True)
class AdvertiseKeys:
    c_pk: bytes
    s_pk: bytes
    signature: bytes = b""

    def body(self) -> bytes:
        return self.c_pk + self.s_pk + struct.pack(">B", len(self.signature)) + self.signature

    @classmethod
    def parse(cls, r: _Reader) -> "AdvertiseKeys":
        c, s = r.take(32), r.take(32)
        return cls(c, s, r.take(r.u8()))


@dataclass(frozen=True)
class KeyEntry:
    client_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class KeyList:
    entries: tuple[KeyEntry, ...]

    def body(self) -> bytes:
        out = [struct.pack(">I", len(self.entries))]
        for e in self.entries:
            out.append(struct.pack(">I", e.client_id) + e.c_pk + e.s_pk + struct.pack(">B", len(e.signature)) + e.signature)
        return b"".join(out)

    @classmethod
    def parse(cls, r: _Reader) -> "KeyList":
        n = r.u32()
        ents = []
        for _ in range(n):
            cid = r.u32()
            c, s = r.take(32), r.take(32)
            ents.append(KeyEntry(cid, c, s, r.take(r.u8())))
        if len({e.client_id for e in ents}) != n:
            raise MalformedMessageError("duplicate client id in key list")
        return cls(tuple(ents))


@dataclass(frozen=True)
class ShareCiphertexts:
    """(peer id, ciphertext) pairs: peer = receiver in SHARES, sender in SHARES_FORWARD."""

    entries: tuple[tuple[int, bytes], ...]

    def body(self) -> bytes:
        out = [struct.pack(">I", len(self.entries))]
        for pid, ct in self.entries:
            out.append(struct.pack(">II", pid, len(ct)) + ct)
        return b"".join(out)

    @classmethod
    def parse(cls, r: _Reader) -> "ShareCiphertexts":
        n = r.u32()
        ents = []
        for _ in range(n):
            pid = r.u32()
            ents.append((pid, r.take(r.u32())))
        if len({p for p, _ in ents}) != n:
            raise MalformedMessageError("duplicate peer id in share ciphertexts")
        return cls(tuple(ents))


@dataclass(frozen=True)
class MaskedInput:
    vector: np.ndarray

    def body(self) -> bytes:
        v = np.ascontiguousarray(self.vector)
        dt = v.dtype.newbyteorder("<")
        return struct.pack(">BQ", v.dtype.itemsize, v.shape[0]) + v.astype(dt, copy=False).tobytes()

    @classmethod
    def parse(cls, r: _Reader) -> "MaskedInput":
        size, n = r.u8(), r.u64()
        if size not in (4, 8):
            raise MalformedMessageError(f"masked vector element size must be 4 or 8 bytes, got {size}")
        raw = r.take(size * n)
        dt = np.dtype("<u4") if size == 4 else np.dtype("<u8")
        return cls(np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=False))


@dataclass(frozen=True)
class SurvivorList:
    survivors: tuple[int, ...]

    def body(self) -> bytes:
        return _ids(self.survivors)

    @classmethod
    def parse(cls, r: _Reader) -> "SurvivorList":
        return cls(r.ids())


@dataclass(frozen=True)
class ConsistencySignature:
    signature: bytes

    def body(self) -> bytes:
        return struct.pack(">B", len(self.signature)) + self.signature

    @classmethod
    def parse(cls, r: _Reader) -> "ConsistencySignature":
        return cls(r.take(r.u8()))


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def body(self) -> bytes:
        out = [_ids(self.survivors), _ids(self.dropped), struct.pack(">I", len(self.signatures))]
        for cid, sig in self.signatures:
            out.append(struct.pack(">IB", cid, len(sig)) + sig)
        return b"".join(out)

    @classmethod
    def parse(cls, r: _Reader) -> "UnmaskRequest":
        s, d = r.ids(), r.ids()
        n = r.u32()
        sigs = []
        for _ in range(n):
            cid = r.u32()
            sigs.append((cid, r.take(r.u8())))
        return cls(s, d, tuple(sigs))


@dataclass(frozen=True)
class ShareEntry:
    owner: int
    share_kind: int  # SHARE_SELF_MASK or SHARE_MASK_KEY
    share: bytes


@dataclass(frozen=True)
class UnmaskResponse:
    entries: tuple[ShareEntry, ...]

    def body(self) -> bytes:
        out = [struct.pack(">I", len(self.entries))]
        for e in self.entries:
            out.append(struct.pack(">IBB", e.owner, e.share_kind, len(e.share)) + e.share)
        return b"".join(out)

    @classmethod
    def parse(cls, r: _Reader) -> "UnmaskResponse":
        n = r.u32()
        ents = []
        for _ in range(n):
            owner, kind = r.u32(), r.u8()
            if kind not in (SHARE_SELF_MASK, SHARE_MASK_KEY):
                raise MalformedMessageError(f"unknown share kind {kind}")
            ents.append(ShareEntry(owner, kind, r.take(r.u8())))
        if len({e.owner for e in ents}) != n:
            raise MalformedMessageError("two shares for the same owner in one unmask response")
        return cls(tuple(ents))


@dataclass(frozen=True)
class Abort:
    reason: str

    def body(self) -> bytes:
        return self.reason.encode("utf-8")[:4000]

    @classmethod
    def parse(cls, r: _Reader) -> "Abort":
        return cls(r.take(len(r.d) - r.i).decode("utf-8", errors="replace"))


Payload = Union[AdvertiseKeys, KeyList, ShareCiphertexts, MaskedInput, SurvivorList, ConsistencySignature, UnmaskRequest, UnmaskResponse, Abort]

_PARSERS = {
    Kind.ADVERTISE: AdvertiseKeys,
    Kind.KEY_LIST: KeyList,
    Kind.SHARES: ShareCiphertexts,
    Kind.SHARES_FORWARD: ShareCiphertexts,
    Kind.MASKED: MaskedInput,
    Kind.CONSISTENCY_REQUEST: SurvivorList,
    Kind.CONSISTENCY_SIGNATURE: ConsistencySignature,
    Kind.UNMASK_REQUEST: UnmaskRequest,
    Kind.UNMASK_RESPONSE: UnmaskResponse,
    Kind.ABORT: Abort,
}


@dataclass(frozen=True)
class Header:
    stage: Stage
    kind: Kind
    session_id: bytes
    round_id: int
    sender: int
    receiver: int


@dataclass(frozen=True)
class Message:
    header: Header
    payload: Payload


def encode(kind: Kind, payload: Payload, *, session_id: bytes, round_id: int, sender: int, receiver: int, stage: Stage | None = None) -> bytes:
    """Serialize one message. ``stage`` defaults to the stage of ``kind`` (required for ABORT)."""
    if not isinstance(payload, _PARSERS[kind]):
        raise TypeError(f"payload {type(payload).__name__} does not match kind {kind.name}")
    st = STAGE_OF.get(kind, stage) if stage is None else stage
    if st is None:
        raise TypeError("stage is required for ABORT messages")
    body = payload.body()
    return _HDR.pack(MAGIC, VERSION, int(st), int(kind), session_id, round_id, sender, receiver, len(body)) + body


def decode(data: bytes) -> Message:
    """Parse bytes into a :class:`Message`; raise MalformedMessageError on any format violation."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessageError(f"message must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise MalformedMessageError(f"message shorter than the {HEADER_BYTES}-byte header")
    magic, ver, st, kind, sess, rnd, snd, rcv, blen = _HDR.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessageError("bad magic")
    if ver != VERSION:
        raise MalformedMessageError(f"unsupported message version {ver} (this is version {VERSION})")
    if len(data) != HEADER_BYTES + blen:
        raise MalformedMessageError(f"header says body is {blen} bytes, got {len(data) - HEADER_BYTES}")
    try:
        kind_e, st_e = Kind(kind), Stage(st)
    except ValueError as e:
        raise MalformedMessageError(f"unknown stage {st} or kind {kind}") from e
    if kind_e in STAGE_OF and STAGE_OF[kind_e] != st_e:
        raise MalformedMessageError(f"kind {kind_e.name} does not belong to stage {st_e.name}")
    r = _Reader(data[HEADER_BYTES:])
    payload = _PARSERS[kind_e].parse(r)
    r.end()
    return Message(Header(st_e, kind_e, sess, rnd, snd, rcv), payload)
