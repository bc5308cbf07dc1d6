"""Wire format of the homomorphic-aggregation layer: chunk manifests and framed messages.

Every object that crosses the network in :mod:`secagg.he` (key bundles, a client's
encrypted update, the server's encrypted aggregate) is one :class:`HEMessage`::

    b"SGHE" | version (1 byte) | header length (4 bytes, LE) | header (canonical JSON)
            | for each blob: length (8 bytes, LE) | blob
            | SHA-256 of everything before it (32 bytes)

The header names the scheme, the message kind, the key context it belongs to
(``context_id`` = SHA-256 of the public key material), the round, the sender, the
chunk manifest and scheme parameters. Blobs are ciphertexts (one per chunk) or keys.

Threat model and guarantees
---------------------------
* Parsing is strict: bad magic/version, truncated or trailing bytes, a header that is
  not the expected JSON, a blob count that disagrees with the manifest, or a digest
  mismatch raise :class:`~secagg.errors.ProtocolError`; nothing is partially accepted.
* The trailing SHA-256 detects corruption and any modification made without also
  recomputing the digest. It is *not* a MAC: an active network attacker who rewrites a
  message can recompute it. Against active attackers run the protocol over an
  authenticated channel (TLS, or Ed25519-signed messages); the honest-but-curious
  server of our threat model is covered by the encryption itself.
* The manifest is checked against the one the receiver expects for the round's vector
  length (:meth:`ChunkManifest.require_equal`), so a message chunked differently or for
  another length is rejected before any homomorphic operation.

Costs: O(total bytes) to frame and hash; framing overhead is ``45 + len(header)`` bytes
plus 8 bytes per blob.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg.errors import ConfigError, DataError, ProtocolError

__all__ = ["ChunkManifest", "HEMessage", "context_id_of", "check_plain_vector"]

MAGIC = b"SGHE"
VERSION = 1
_DIGEST_BYTES = 32
_KINDS = ("public_key", "secret_key", "update", "aggregate")
_SCHEMES = ("ckks", "paillier")


def context_id_of(public_key_material: bytes) -> bytes:
    """Identifier of a key context: SHA-256 of its serialized public key material (32 bytes)."""
    return hashlib.sha256(public_key_material).digest()


def check_plain_vector(vec: Any, *, name: str, max_abs: float | None = None, length: int | None = None) -> np.ndarray:
    """Validate a plaintext update: 1-D, real, finite, optional length and magnitude bound.

    Returns it as a contiguous float64 array. Raises :class:`DataError` naming ``name``.
    """
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D vector, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{name}: empty vector")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise DataError(f"{name}: {bad} value(s) are NaN or Inf")
    if length is not None and arr.shape[0] != length:
        raise DataError(f"{name}: length {arr.shape[0]} != expected {length}")
    if max_abs is not None:
        peak = float(np.max(np.abs(arr)))
        if peak > max_abs:
            raise DataError(f"{name}: max |value| {peak:.6g} exceeds the allowed {max_abs:.6g}")
    return arr


@dataclass(frozen=True)
class ChunkManifest:
    """How a vector of ``total_length`` values is cut into chunks of at most ``chunk_size``.

    ``chunks`` lists ``(offset, count)`` pairs; they must tile ``[0, total_length)`` in
    order, each with ``1 <= count <= chunk_size``. Chunk ``i`` travels as blob ``i``.
    """

    total_length: int
    chunk_size: int
    chunks: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.total_length, int) or self.total_length < 1:
            raise ProtocolError(f"chunk manifest: total_length must be an int >= 1, got {self.total_length!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ProtocolError(f"chunk manifest: chunk_size must be an int >= 1, got {self.chunk_size!r}")
        pos = 0
        for i, pair in enumerate(self.chunks):
            if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
                raise ProtocolError(f"chunk manifest: chunk {i} is not an (offset, count) pair of ints: {pair!r}")
            off, cnt = pair
            if off != pos:
                raise ProtocolError(f"chunk manifest: chunk {i} starts at {off}, expected {pos} (gap or overlap)")
            if not 1 <= cnt <= self.chunk_size:
                raise ProtocolError(f"chunk manifest: chunk {i} has {cnt} values, allowed 1..{self.chunk_size}")
            pos += cnt
        if pos != self.total_length:
            raise ProtocolError(f"chunk manifest: chunks cover {pos} values but total_length is {self.total_length}")

    @classmethod
    def for_length(cls, total_length: int, chunk_size: int) -> "ChunkManifest":
        """The canonical manifest: consecutive full chunks, the last one possibly shorter."""
        if total_length < 1 or chunk_size < 1:
            raise ConfigError(f"chunk manifest: need total_length >= 1 and chunk_size >= 1, got {total_length}, {chunk_size}")
        n = math.ceil(total_length / chunk_size)
        chunks = tuple((i * chunk_size, min(chunk_size, total_length - i * chunk_size)) for i in range(n))
        return cls(total_length, chunk_size, chunks)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    def require_equal(self, expected: "ChunkManifest", *, who: str) -> None:
        """Raise :class:`ProtocolError` unless this manifest is exactly ``expected``."""
        if self.total_length != expected.total_length:
            raise ProtocolError(f"{who}: vector length {self.total_length} != expected {expected.total_length}")
        if self != expected:
            raise ProtocolError(
                f"{who}: chunk manifest mismatch (chunk_size {self.chunk_size}, {self.num_chunks} chunks; "
                f"expected chunk_size {expected.chunk_size}, {expected.num_chunks} chunks)"
            )

    def to_json(self) -> dict[str, Any]:
        return {"total_length": self.total_length, "chunk_size": self.chunk_size, "chunks": [list(c) for c in self.chunks]}

    @classmethod
    def from_json(cls, obj: Any) -> "ChunkManifest":
        try:
            return cls(int(obj["total_length"]), int(obj["chunk_size"]), tuple((int(a), int(b)) for a, b in obj["chunks"]))
        except ProtocolError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"chunk manifest: malformed ({exc})") from None


@dataclass(frozen=True)
class HEMessage:
    """One framed message of the HE layer (see the module docstring for the layout)."""

    scheme: str
    kind: str
    context_id: bytes
    round_index: int = -1
    sender: int = -1
    manifest: ChunkManifest | None = None
    params: dict[str, Any] = field(default_factory=dict)
    blobs: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.scheme not in _SCHEMES:
            raise ProtocolError(f"message: unknown scheme {self.scheme!r}, expected one of {_SCHEMES}")
        if self.kind not in _KINDS:
            raise ProtocolError(f"message: unknown kind {self.kind!r}, expected one of {_KINDS}")
        if not isinstance(self.context_id, bytes) or len(self.context_id) != 32:
            raise ProtocolError("message: context_id must be 32 bytes")
        if self.manifest is not None and len(self.blobs) != self.manifest.num_chunks:
            raise ProtocolError(
                f"message: {len(self.blobs)} ciphertext blob(s) but the chunk manifest lists {self.manifest.num_chunks}"
            )

    def to_bytes(self) -> bytes:
        header = {
            "scheme": self.scheme,
            "kind": self.kind,
            "context_id": self.context_id.hex(),
            "round": self.round_index,
            "sender": self.sender,
            "manifest": None if self.manifest is None else self.manifest.to_json(),
            "params": self.params,
            "blobs": len(self.blobs),
        }
        hb = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        parts = [MAGIC, bytes([VERSION]), len(hb).to_bytes(4, "little"), hb]
        for b in self.blobs:
            parts.append(len(b).to_bytes(8, "little"))
            parts.append(bytes(b))
        body = b"".join(parts)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes, *, expect_scheme: str | None = None, expect_kind: str | None = None) -> "HEMessage":
        """Parse and verify ``data``; raise :class:`ProtocolError` on any inconsistency."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"message: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < 9 + _DIGEST_BYTES or data[:4] != MAGIC:
            raise ProtocolError("message: bad magic or truncated")
        if data[4] != VERSION:
            raise ProtocolError(f"message: unsupported version {data[4]}, expected {VERSION}")
        body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            raise ProtocolError("message: SHA-256 digest mismatch (tampered or corrupted bytes)")
        hlen = int.from_bytes(body[5:9], "little")
        if 9 + hlen > len(body):
            raise ProtocolError("message: header length runs past the end")
        try:
            header = json.loads(body[9 : 9 + hlen].decode())
            nblobs = int(header["blobs"])
            scheme, kind = str(header["scheme"]), str(header["kind"])
            ctx = bytes.fromhex(header["context_id"])
            rnd, sender = int(header["round"]), int(header["sender"])
            params = dict(header["params"])
            man_obj = header["manifest"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"message: malformed header ({exc})") from None
        pos = 9 + hlen
        blobs = []
        for i in range(nblobs):
            if pos + 8 > len(body):
                raise ProtocolError(f"message: truncated before blob {i}")
            blen = int.from_bytes(body[pos : pos + 8], "little")
            pos += 8
            if pos + blen > len(body):
                raise ProtocolError(f"message: blob {i} runs past the end")
            blobs.append(body[pos : pos + blen])
            pos += blen
        if pos != len(body):
            raise ProtocolError(f"message: {len(body) - pos} trailing byte(s) after the last blob")
        manifest = None if man_obj is None else ChunkManifest.from_json(man_obj)
        msg = cls(scheme, kind, ctx, rnd, sender, manifest, params, tuple(blobs))
        if expect_scheme is not None and scheme != expect_scheme:
            raise ProtocolError(f"message: scheme {scheme!r} where {expect_scheme!r} was expected")
        if expect_kind is not None and kind != expect_kind:
            raise ProtocolError(f"message: kind {kind!r} where {expect_kind!r} was expected")
        return msg

    def require_context(self, context_id: bytes, *, who: str) -> None:
        """Raise :class:`ProtocolError` if the message belongs to another key context."""
        if self.context_id != context_id:
            raise ProtocolError(
                f"{who}: message is for key context {self.context_id.hex()[:16]}..., "
                f"this party holds {context_id.hex()[:16]}... (ciphertext from another context)"
            )
