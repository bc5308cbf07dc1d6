"""Client state machine of Bonawitz et al. secure aggregation (CCS 2017, Fig. 4) with SecAgg+ graphs.

Transport-agnostic: :meth:`SecAggClient.start` returns the first message and
:meth:`SecAggClient.handle` consumes one server message (bytes) and returns the reply
(bytes). Nothing here does I/O.

Threat models
-------------
* ``honest``: the server follows the protocol but tries to learn individual inputs from
  what it sees (honest-but-curious), possibly colluding with fewer than t clients. No
  guarantee against a server that deviates.
* ``active``: the server may deviate (drop, reorder, forge, send inconsistent survivor
  sets). Public keys are signed with long-term Ed25519 identity keys and verified; before
  unmasking, every client signs the survivor set U3 and requires t valid signatures on the
  same set (the consistency check). Secure for ``3t > 2m`` (m = closed neighbourhood size;
  SessionConfig enforces it) with at most ``c <= 2t - m - 1`` colluding share holders in
  any neighbourhood: two different signed sets need ``2t <= m + c`` signatures.

Refusal rule (both modes): a client answers at most one unmasking request per round, and
refuses (:class:`UnmaskRefusedError`, with an ABORT message for the server in
``exc.abort_message``) any request that names a client in both the survivor set and the
dropped set, i.e. would reveal both the self-mask seed b_v and the mask key s_v of v.
Restricted to its closed neighbourhood N[u] (the clients whose shares it holds), it also
refuses a request with fewer than t survivors, with survivors or dropped clients that did
not send it shares (outside its U2), or that leaves a member of its U2 unnamed
(survivors ∪ dropped must equal U2 there).

These checks are defence in depth only: in honest mode a *deviating* server can still send
different, individually plausible (S, D) pairs to different clients and unmask a client
(no client sees the others' requests). Honest mode protects against an honest-but-curious
server only; against a deviating server use active mode, whose consistency check binds
every client to one signed survivor set, with 3t > 2m (enforced by SessionConfig) and at
most 2t - m - 1 colluding share holders per neighbourhood.

Errors and state: on any error :meth:`handle` raises a specific ProtocolError subclass
and leaves the state unchanged (a correct retransmission is still accepted), except for
a refused unmasking request, after which the client stays ABORTED. Every raised
ProtocolError carries ``abort_message`` (bytes) that a transport should forward.

Persisting a client between messages
------------------------------------
:meth:`SecAggClient.export_state` / :meth:`SecAggClient.from_state` write and read the
client's committed protocol state as one versioned binary blob (format in
:meth:`~SecAggClient.export_state`), for transports that cannot keep the object alive
between messages (e.g. Flower, which starts a fresh ClientApp process per message). The
blob holds the client's SECRETS (X25519 private keys, self-mask seed b_u, the Shamir
shares it holds for its neighbours, and its plaintext input if one is set): whoever reads
it can unmask this client's input, so the store that keeps it must be protected like the
keys themselves. Restoring an *older* blob (rollback) would let the client answer a
second unmasking request and break the refusal rule: always resume from the latest blob.

Costs per client with d neighbours (d = n-1 for SecAgg, O(log n) for SecAgg+) and vector
length L: 2d X25519 agreements, Shamir split O(d t), d AES-GCM share encryptions and
decryptions, d+1 AES-CTR mask expansions of L * k/8 bytes and d+1 in-place adds (O(d L));
upload L * k/8 bytes for the masked vector plus O(d) * ~150 bytes of ciphertexts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import numpy as np

from secagg.encoding import ring_dtype
from secagg.errors import ConfigError, DataError, NotEnoughClientsError, ProtocolError
from secagg.smpc import keys, prg, shamir
from secagg.smpc import messages as M
from secagg.smpc.config import SessionConfig
from secagg.smpc.errors import (
    ReplayError,
    SignatureError,
    StageError,
    TamperedMessageError,
    UnmaskRefusedError,
    VectorLengthError,
    WrongSessionError,
)

__all__ = ["SecAggClient", "ClientStateError", "STATE_FORMAT_VERSION", "advertise_signed_bytes",
           "config_fingerprint", "consistency_signed_bytes", "mask_sign"]

_PT = struct.Struct(">II")  # sender, receiver inside the share plaintext


def advertise_signed_bytes(cfg: SessionConfig, client_id: int, c_pk: bytes, s_pk: bytes) -> bytes:
    return b"secagg/v1/advertise" + cfg.session_id + struct.pack(">II", cfg.round_id, client_id) + c_pk + s_pk


def consistency_signed_bytes(cfg: SessionConfig, survivors) -> bytes:
    ids = sorted(survivors)
    return b"secagg/v1/consistency" + cfg.session_id + struct.pack(f">II{len(ids)}I", cfg.round_id, len(ids), *ids)


class ClientStateError(ProtocolError, DataError):
    """A client-state blob (:meth:`SecAggClient.export_state`) that cannot be resumed: not a
    state blob, another format version, truncated, corrupted or tampered, for another
    session/round/client/configuration, or internally inconsistent."""


#: Version byte of the client-state blob; a reader rejects every other version.
STATE_FORMAT_VERSION = 1
_STATE_MAGIC = b"SACS"  # SecAgg Client State
_STATE_HEAD = struct.Struct(">4sBI")  # magic, version, body length
_STATE_FIXED = struct.Struct(">32s16sIIBB")  # config fingerprint, session id, round id, client id, stage, flags
_STATE_DIGEST = 32  # SHA-256 over head + body
_FLAG_INPUT = 0x01
_U32 = struct.Struct(">I")


def config_fingerprint(cfg: SessionConfig) -> bytes:
    """SHA-256 over every public parameter of ``cfg`` (ids, t, L, k, mode, degree, identity keys)."""
    h = hashlib.sha256(b"secagg/v1/session-config")
    h.update(cfg.session_id)
    h.update(struct.pack(">IIIIIIB", cfg.round_id, cfg.n, cfg.threshold, cfg.vector_length, cfg.modulus_bits,
                         cfg.degree or 0, 1 if cfg.mode == "active" else 0))
    h.update(struct.pack(f">{cfg.n}I", *cfg.client_ids))
    if cfg.mode == "active":
        for u in sorted(cfg.client_ids):
            h.update(cfg.identity_keys[u])
    return h.digest()


class _StateReader:
    """Strict cursor over a state body: every read is length-checked, counts are bounded."""

    def __init__(self, body: bytes, max_count: int) -> None:
        self.body, self.pos, self.max_count = body, 0, max_count

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.body):
            raise ClientStateError(f"client state: truncated while reading {what}")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def count(self, what: str) -> int:
        n = self.u32(f"the number of {what}")
        if n > self.max_count:
            raise ClientStateError(f"client state: {n} {what} exceed the session's {self.max_count} clients")
        return n

    def ids(self, what: str) -> list[int]:
        out = [self.u32(what) for _ in range(self.count(what))]
        if any(a >= b for a, b in zip(out, out[1:])):
            raise ClientStateError(f"client state: {what} are not strictly increasing (duplicates or reordered)")
        return out

    def increasing_id(self, what: str, so_far: dict) -> int:
        """The next id of a list written in ascending order (``so_far`` keeps insertion order)."""
        v = self.u32(what)
        if so_far and v <= next(reversed(so_far)):
            raise ClientStateError(f"client state: {what} are not strictly increasing (duplicates or reordered)")
        return v

    def end(self) -> None:
        if self.pos != len(self.body):
            raise ClientStateError(f"client state: {len(self.body) - self.pos} unexpected trailing bytes")


def _ids_bytes(ids) -> bytes:
    ids = sorted(ids)
    return _U32.pack(len(ids)) + struct.pack(f">{len(ids)}I", *ids)


def mask_sign(u: int, v: int) -> int:
    """Client u adds +PRG(s_uv) if u < v, else -PRG(s_uv), so the pair cancels in the sum."""
    return 1 if u < v else -1


# reply kind expected from the client for each server message kind
_EXPECTED = {
    M.Kind.KEY_LIST: M.Stage.SHARE_KEYS,
    M.Kind.SHARES_FORWARD: M.Stage.MASKED_INPUT,
    M.Kind.CONSISTENCY_REQUEST: M.Stage.CONSISTENCY_CHECK,
    M.Kind.UNMASK_REQUEST: M.Stage.UNMASKING,
}


class SecAggClient:
    """One client of one round. See the module docstring.

    >>> c = SecAggClient(cfg, client_id=3, identity_key=None)   # doctest: +SKIP
    >>> c.set_input(encoded_uint_vector)
    >>> first = c.start(); reply = c.handle(server_msg)
    """

    def __init__(self, config: SessionConfig, client_id: int, *, identity_key=None, input_vector: np.ndarray | None = None) -> None:
        if client_id not in config.graph:
            raise ConfigError(f"client_id {client_id} is not one of the session's client_ids")
        if config.mode == "active":
            if identity_key is None:
                raise ConfigError("active mode: identity_key (Ed25519PrivateKey) is required")
            if keys.identity_public_bytes(identity_key) != config.identity_keys[client_id]:
                raise ConfigError(f"identity_key does not match config.identity_keys[{client_id}]")
        self.config = config
        self.id = client_id
        self._identity = identity_key
        self.stage = M.Stage.ADVERTISE_KEYS
        self._started = False
        self._input: np.ndarray | None = None
        self._dtype = ring_dtype(config.modulus_bits)
        self._c_sk = self._s_sk = None
        self._c_pk = self._s_pk = b""
        self._b = b""
        self._U1: dict[int, M.KeyEntry] = {}
        self._enc_keys: dict[int, bytes] = {}
        self._shares: dict[int, tuple[int, int]] = {}  # owner -> (b share, s share) held by me
        self._U2: frozenset[int] = frozenset()
        self._signed_u3: tuple[int, ...] | None = None
        self._masked_sent = False
        if input_vector is not None:
            self.set_input(input_vector)

    # ------------------------------------------------------------------ API
    def set_input(self, vector: np.ndarray) -> None:
        """The client's private input: L integers in [0, 2**k) (use secagg.encoding for floats)."""
        if self._masked_sent:
            raise ProtocolError("input can no longer change: the masked input was already sent")
        v = np.asarray(vector)
        L, k = self.config.vector_length, self.config.modulus_bits
        if v.ndim != 1 or v.shape[0] != L:
            raise VectorLengthError(f"client {self.id}: input must have shape ({L},), got {v.shape}")
        if not np.issubdtype(v.dtype, np.integer):
            if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
                raise DataError(f"client {self.id}: input contains NaN/Inf")
            raise DataError(f"client {self.id}: input must be integers in [0, 2**{k}); encode floats with secagg.encoding first (got {v.dtype})")
        if v.size and (v.min() < 0 or (k < 64 and int(v.max()) >= 2**k)):
            raise VectorLengthError(f"client {self.id}: input values must lie in [0, 2**{k})")
        self._input = v.astype(self._dtype, copy=True)

    def start(self) -> bytes:
        """Round 0 AdvertiseKeys: make the two X25519 key pairs and return the (signed) advertisement."""
        if self._started:
            raise ReplayError(f"client {self.id}: start() called twice")
        c_sk, s_sk = keys.generate_x25519(), keys.generate_x25519()
        c_pk, s_pk = keys.x25519_public_bytes(c_sk), keys.x25519_public_bytes(s_sk)
        sig = b""
        if self.config.mode == "active":
            sig = keys.sign(self._identity, advertise_signed_bytes(self.config, self.id, c_pk, s_pk))
        self._c_sk, self._s_sk, self._c_pk, self._s_pk = c_sk, s_sk, c_pk, s_pk
        self._started = True
        self.stage = M.Stage.SHARE_KEYS
        return self._msg(M.Kind.ADVERTISE, M.AdvertiseKeys(c_pk, s_pk, sig))

    def handle(self, data: bytes) -> bytes:
        """Consume one server message and return the reply. Raises a ProtocolError subclass
        (with ``abort_message``) on anything out of order, replayed, tampered or malicious."""
        try:
            return self._handle(data)
        except (ProtocolError, NotEnoughClientsError) as e:
            e.abort_message = self._msg(M.Kind.ABORT, M.Abort(f"{type(e).__name__}: {e}"), stage=self.stage)
            raise

    # ------------------------------------------------------- persistence
    def export_state(self) -> bytes:
        """The client's committed protocol state as one blob, for :meth:`from_state`.

        .. warning::
           THE BLOB CONTAINS SECRETS: both X25519 private keys, the self-mask seed b_u, the
           Shamir shares this client holds for its neighbours and, if set and not yet sent,
           the plaintext input vector. Anyone who reads it (together with the server's
           view) can unmask this client's input and help unmask its neighbours'. Threat
           model: the node's state store must be as protected as its private keys
           (confidentiality *and* integrity); the blob is neither encrypted nor
           authenticated here. Never send it to the server or log it. Never resume from an
           older blob than the latest one (rollback lets the client answer a second
           unmasking request, defeating the refusal rule).

        Call it between messages (after :meth:`start` or :meth:`handle` returned or raised);
        any stage can be exported, including DONE and ABORTED. Not exported: the identity
        key (long-term, passed again to :meth:`from_state`) and the configuration (public,
        passed again; the blob binds to it by fingerprint).

        Format, version :data:`STATE_FORMAT_VERSION` (all integers unsigned big-endian)::

            head    "SACS" | version u8 | body_len u32
            body    config_fingerprint 32 | session_id 16 | round_id u32 | client_id u32
                    | stage u8 | flags u8 (bit 0: input present; other bits must be 0)
                    stage >= SHARE_KEYS:   c_sk 32 | s_sk 32
                    stage >= MASKED_INPUT: b_u 32
                        | n u32, n x (id u32 | c_pk 32 | s_pk 32 | sig_len u8 | sig)   U1, ids ascending
                        | n u32, n x (id u32 | share key 32)                          ids ascending
                        | n u32, n x (owner u32 | b share 33 | s share 33)            ids ascending
                    stage >= CONSISTENCY_CHECK: n u32, n x id u32                     U2, ascending
                    active mode and stage in (UNMASKING, DONE, ABORTED):
                        n u32, n x id u32                                             signed U3
                    flags bit 0: L x ring element (4 bytes for k <= 32, else 8)
            digest  SHA-256(head | body) 32

        The digest detects truncation and corruption (not a forger who can also write the
        store, who by the threat model above already holds the keys). Size: about
        350 + 180 d bytes with d neighbours (+ 64 d in active mode, + L k/8 with an input).
        """
        cfg, u = self.config, self.id
        stage = self.stage
        flags = _FLAG_INPUT if self._input is not None else 0
        parts = [_STATE_FIXED.pack(config_fingerprint(cfg), cfg.session_id, cfg.round_id, u, int(stage), flags)]
        if stage >= M.Stage.SHARE_KEYS:
            parts += [keys.x25519_private_bytes(self._c_sk), keys.x25519_private_bytes(self._s_sk)]
        if stage >= M.Stage.MASKED_INPUT:
            parts.append(self._b)
            parts.append(_U32.pack(len(self._U1)))
            for v in sorted(self._U1):
                e = self._U1[v]
                parts += [_U32.pack(v), e.c_pk, e.s_pk, bytes([len(e.signature)]), e.signature]
            parts.append(_U32.pack(len(self._enc_keys)))
            parts += [_U32.pack(v) + self._enc_keys[v] for v in sorted(self._enc_keys)]
            parts.append(_U32.pack(len(self._shares)))
            for v in sorted(self._shares):
                b_sh, s_sh = self._shares[v]
                parts.append(_U32.pack(v) + shamir.share_to_bytes(b_sh) + shamir.share_to_bytes(s_sh))
        if stage >= M.Stage.CONSISTENCY_CHECK:
            parts.append(_ids_bytes(self._U2))
        if self._u3_expected(stage):
            parts.append(_ids_bytes(self._signed_u3 or ()))
        if self._input is not None:
            parts.append(self._input.astype(self._dtype.newbyteorder(">")).tobytes())
        body = b"".join(parts)
        head = _STATE_HEAD.pack(_STATE_MAGIC, STATE_FORMAT_VERSION, len(body))
        return head + body + hashlib.sha256(head + body).digest()

    @classmethod
    def from_state(cls, config: SessionConfig, blob: bytes, *, client_id: int | None = None,
                   identity_key=None) -> "SecAggClient":
        """Rebuild the client that :meth:`export_state` wrote; it continues the round exactly
        as the original would have (same replies to the same messages from then on).

        ``config`` must be the round's :class:`SessionConfig` (the blob is rejected if it was
        exported under any other session id, round id or parameter); ``client_id``, when
        given, must be the blob's client; ``identity_key`` is the client's Ed25519 key in
        active mode. Raises :class:`ClientStateError` (a ProtocolError and DataError) for a
        blob of another format/version, truncated, corrupted, for another
        session/round/client, or internally inconsistent (e.g. stage and fields disagree,
        public keys not matching the private keys); nothing partially valid is accepted.
        See the warning in :meth:`export_state`: the blob is secret.
        """
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ClientStateError(f"client state must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        hs, need = _STATE_HEAD.size, _STATE_HEAD.size + _STATE_FIXED.size + _STATE_DIGEST
        if len(blob) < need:
            raise ClientStateError(f"client state: {len(blob)} bytes is shorter than the minimum {need} (truncated?)")
        magic, version, body_len = _STATE_HEAD.unpack_from(blob)
        if magic != _STATE_MAGIC:
            raise ClientStateError(f"client state: bad magic {magic!r}, this is not a SecAggClient state blob")
        if version != STATE_FORMAT_VERSION:
            raise ClientStateError(f"client state: format version {version} is not supported (this build reads "
                                   f"version {STATE_FORMAT_VERSION})")
        if len(blob) != hs + body_len + _STATE_DIGEST:
            raise ClientStateError(f"client state: header announces {hs + body_len + _STATE_DIGEST} bytes, got "
                                   f"{len(blob)} (truncated or padded)")
        if not hmac.compare_digest(hashlib.sha256(blob[:-_STATE_DIGEST]).digest(), blob[-_STATE_DIGEST:]):
            raise ClientStateError("client state: SHA-256 digest mismatch (corrupted or tampered blob)")
        r = _StateReader(blob[hs:-_STATE_DIGEST], config.n)
        fp, sid, rid, cid, stage_b, flags = _STATE_FIXED.unpack(r.take(_STATE_FIXED.size, "the fixed header"))
        if sid != config.session_id or rid != config.round_id:
            raise ClientStateError(f"client state: exported for session/round {sid.hex()}/{rid}, this round is "
                                   f"{config.session_id.hex()}/{config.round_id}")
        if client_id is not None and cid != client_id:
            raise ClientStateError(f"client state: exported by client {cid}, expected client {client_id}")
        if cid not in config.graph:
            raise ClientStateError(f"client state: client id {cid} is not one of the session's clients")
        if not hmac.compare_digest(fp, config_fingerprint(config)):
            raise ClientStateError("client state: exported under a different SessionConfig (same session and round "
                                   "ids, other parameters)")
        if stage_b > max(M.Stage):
            raise ClientStateError(f"client state: unknown stage {stage_b}")
        if flags & ~_FLAG_INPUT:
            raise ClientStateError(f"client state: unknown flag bits {flags:#04x}")
        stage = M.Stage(stage_b)
        c = cls(config, cid, identity_key=identity_key)
        try:
            c._restore(r, stage, bool(flags & _FLAG_INPUT))
        except ClientStateError:
            raise
        except (ProtocolError, ValueError) as e:  # bad share / key encodings inside a well-formed frame
            raise ClientStateError(f"client state: invalid field ({type(e).__name__}: {e})") from None
        r.end()
        problem = c._state_problem()
        if problem:
            raise ClientStateError(f"client state of client {cid} at stage {stage.name} is inconsistent: {problem}")
        return c

    def _u3_expected(self, stage: M.Stage) -> bool:
        return self.config.mode == "active" and stage in (M.Stage.UNMASKING, M.Stage.DONE, M.Stage.ABORTED)

    def _restore(self, r: _StateReader, stage: M.Stage, has_input: bool) -> None:
        cfg = self.config
        if stage >= M.Stage.SHARE_KEYS:
            self._c_sk = keys.x25519_from_private(r.take(32, "c_sk"))
            self._s_sk = keys.x25519_from_private(r.take(32, "s_sk"))
            self._c_pk, self._s_pk = keys.x25519_public_bytes(self._c_sk), keys.x25519_public_bytes(self._s_sk)
            self._started = True
        if stage >= M.Stage.MASKED_INPUT:
            self._b = r.take(prg.SEED_BYTES, "the self-mask seed")
            u1: dict[int, M.KeyEntry] = {}
            for _ in range(r.count("key-list entries")):
                v = r.increasing_id("key-list ids", u1)
                c_pk, s_pk = r.take(32, "c_pk"), r.take(32, "s_pk")
                sig = r.take(r.take(1, "a signature length")[0], "a signature")
                u1[v] = M.KeyEntry(v, c_pk, s_pk, sig)
            self._U1 = u1
            enc: dict[int, bytes] = {}
            for _ in range(r.count("share keys")):
                v = r.increasing_id("share-key ids", enc)
                enc[v] = r.take(32, "a share key")
            self._enc_keys = enc
            shares: dict[int, tuple[int, int]] = {}
            for _ in range(r.count("held shares")):
                v = r.increasing_id("share owner ids", shares)
                shares[v] = (shamir.share_from_bytes(r.take(shamir.SHARE_BYTES, "a b_u share")),
                             shamir.share_from_bytes(r.take(shamir.SHARE_BYTES, "an s_u share")))
            self._shares = shares
        if stage >= M.Stage.CONSISTENCY_CHECK:
            self._U2 = frozenset(r.ids("survivor ids U2"))
            self._masked_sent = True
        if self._u3_expected(stage):
            self._signed_u3 = tuple(r.ids("signed survivor ids U3"))
        self.stage = stage
        if has_input:
            width = self._dtype.itemsize
            raw = r.take(cfg.vector_length * width, "the input vector")
            vec = np.frombuffer(raw, dtype=self._dtype.newbyteorder(">"))
            if cfg.modulus_bits < 64 and vec.size and int(vec.max()) >= 2**cfg.modulus_bits:
                raise ClientStateError(f"client state: input values outside [0, 2**{cfg.modulus_bits})")
            self._input = vec.astype(self._dtype)

    def _state_problem(self) -> str | None:
        """Why the restored fields cannot belong to one honest run of this client (None if they can)."""
        cfg, u, st = self.config, self.id, self.stage
        if st == M.Stage.CONSISTENCY_CHECK and cfg.mode != "active":
            return "honest mode has no consistency-check stage"
        if self._input is not None and self._masked_sent:
            return "an input is present although the masked input was already sent"
        if st >= M.Stage.MASKED_INPUT:
            u1 = self._U1
            if u not in u1 or u1[u].c_pk != self._c_pk or u1[u].s_pk != self._s_pk:
                return "the key list does not hold this client's own public keys"
            if not set(u1) <= cfg.neighbours(u) | {u}:
                return "the key list names clients outside this client's neighbourhood"
            if len(u1) < cfg.threshold:
                return f"the key list has {len(u1)} < t={cfg.threshold} entries"
            sig_len = keys.SIG_BYTES if cfg.mode == "active" else 0
            if any(len(e.signature) != sig_len for e in u1.values()):
                return f"key-list signatures must be {sig_len} bytes in {cfg.mode} mode"
            if set(self._enc_keys) != set(u1) - {u}:
                return "share keys do not match the key list"
            want = {M.Stage.MASKED_INPUT: {u}, M.Stage.DONE: set()}.get(st, set(self._U2))
            if set(self._shares) != want:
                return f"held shares are for {sorted(self._shares)[:5]}, expected {sorted(want)[:5]}"
        if st >= M.Stage.CONSISTENCY_CHECK:
            if u not in self._U2 or not self._U2 <= set(self._U1) or len(self._U2) < cfg.threshold:
                return "the survivor set U2 must contain this client, lie within the key list and have >= t members"
        if self._signed_u3 is not None:
            s3 = set(self._signed_u3)
            if u not in s3 or not s3 <= set(cfg.client_ids) or len(s3) < cfg.threshold:
                return "the signed survivor set U3 must contain this client, name only session clients and have >= t members"
        return None

    # ------------------------------------------------------------ internals
    def _msg(self, kind: M.Kind, payload, stage: M.Stage | None = None) -> bytes:
        return M.encode(kind, payload, session_id=self.config.session_id, round_id=self.config.round_id,
                        sender=self.id, receiver=M.SERVER_ID, stage=stage)

    def _handle(self, data: bytes) -> bytes:
        msg = M.decode(data)
        h = msg.header
        cfg = self.config
        if h.session_id != cfg.session_id or h.round_id != cfg.round_id:
            raise WrongSessionError(f"client {self.id}: message for session/round {h.session_id.hex()}/{h.round_id}, "
                                    f"expected {cfg.session_id.hex()}/{cfg.round_id}")
        if h.sender != M.SERVER_ID or h.receiver != self.id:
            raise StageError(f"client {self.id}: message from {h.sender} to {h.receiver} is not server->me")
        if self.stage in (M.Stage.DONE, M.Stage.ABORTED):
            raise ReplayError(f"client {self.id}: round already {self.stage.name}; message {h.kind.name} rejected")
        if h.kind not in _EXPECTED:
            raise StageError(f"client {self.id}: {h.kind.name} is not a server-to-client message")
        want = _EXPECTED[h.kind]
        if not self._started:
            raise StageError(f"client {self.id}: call start() before handling {h.kind.name}")
        if want < self.stage or (want == M.Stage.CONSISTENCY_CHECK and self.stage == M.Stage.UNMASKING and self._signed_u3 is not None):
            raise ReplayError(f"client {self.id}: {h.kind.name} belongs to the closed stage {want.name}")
        if want == M.Stage.CONSISTENCY_CHECK and cfg.mode != "active":
            raise StageError(f"client {self.id}: consistency check requested in honest mode")
        if want != self.stage and not (want == M.Stage.UNMASKING and self.stage == M.Stage.CONSISTENCY_CHECK and cfg.mode == "honest"):
            raise StageError(f"client {self.id}: got {h.kind.name} for stage {want.name} while in stage {self.stage.name}")
        if h.kind == M.Kind.KEY_LIST:
            return self._on_key_list(msg.payload)
        if h.kind == M.Kind.SHARES_FORWARD:
            return self._on_shares(msg.payload)
        if h.kind == M.Kind.CONSISTENCY_REQUEST:
            return self._on_consistency(msg.payload)
        return self._on_unmask(msg.payload)

    def _on_key_list(self, p: M.KeyList) -> bytes:
        cfg, u = self.config, self.id
        nbrs = cfg.neighbours(u)
        ents = {e.client_id: e for e in p.entries}
        if u not in ents or ents[u].c_pk != self._c_pk or ents[u].s_pk != self._s_pk:
            raise TamperedMessageError(f"client {u}: key list does not contain my own public keys unchanged")
        extra = set(ents) - nbrs - {u}
        if extra:
            raise StageError(f"client {u}: key list names non-neighbours {sorted(extra)[:5]}")
        if len(ents) < cfg.threshold:
            raise NotEnoughClientsError(f"client {u}: only {len(ents)} clients in my neighbourhood advertised keys, threshold t={cfg.threshold}")
        pks = [e.c_pk for e in ents.values()] + [e.s_pk for e in ents.values()]
        if len(set(pks)) != len(pks):
            raise TamperedMessageError(f"client {u}: key list contains repeated public keys")
        if cfg.mode == "active":
            for v, e in ents.items():
                keys.verify(cfg.identity_keys[v], e.signature, advertise_signed_bytes(cfg, v, e.c_pk, e.s_pk), f"public keys of client {v}")
        holders = sorted(ents)
        b_u = os.urandom(prg.SEED_BYTES)
        s_raw = keys.x25519_private_bytes(self._s_sk)
        b_sh, s_sh = shamir.split([b_u, s_raw], cfg.threshold, holders)
        enc_keys, cts, own = {}, [], None
        for j, v in enumerate(holders):
            if v == u:
                own = (b_sh[j], s_sh[j])
                continue
            shared = keys.agree(self._c_sk, ents[v].c_pk)
            kk = keys.derive_share_key(shared, cfg.session_id, cfg.round_id, u, v)
            pt = _PT.pack(u, v) + shamir.share_to_bytes(b_sh[j]) + shamir.share_to_bytes(s_sh[j])
            cts.append((v, keys.encrypt_share(kk, keys.share_aad(cfg.session_id, cfg.round_id, u, v), pt)))
            enc_keys[v] = kk
        out = self._msg(M.Kind.SHARES, M.ShareCiphertexts(tuple(cts)))
        # commit
        self._U1, self._enc_keys, self._b, self._shares = ents, enc_keys, b_u, {u: own}
        self.stage = M.Stage.MASKED_INPUT
        return out

    def _on_shares(self, p: M.ShareCiphertexts) -> bytes:
        cfg, u = self.config, self.id
        if self._input is None:
            raise ProtocolError(f"client {u}: set_input() must be called before the masked-input stage")
        got: dict[int, tuple[int, int]] = {}
        for v, ct in p.entries:
            if v not in self._enc_keys:
                raise StageError(f"client {u}: share ciphertext from {v}, who is not in my advertised neighbourhood")
            pt = keys.decrypt_share(self._enc_keys[v], keys.share_aad(cfg.session_id, cfg.round_id, v, u), ct)
            if len(pt) != _PT.size + 2 * shamir.SHARE_BYTES or _PT.unpack_from(pt) != (v, u):
                raise TamperedMessageError(f"client {u}: share plaintext from {v} has wrong length or ids")
            o = _PT.size
            got[v] = (shamir.share_from_bytes(pt[o : o + 33]), shamir.share_from_bytes(pt[o + 33 : o + 66]))
        u2 = frozenset(got) | {u}
        if len(u2) < cfg.threshold:
            raise NotEnoughClientsError(f"client {u}: only {len(u2)} clients in my neighbourhood shared keys, threshold t={cfg.threshold}")
        y = self._input.copy()
        prg.add_mask(y, self._b, +1)
        for v in sorted(got):
            shared = keys.agree(self._s_sk, self._U1[v].s_pk)
            seed = keys.derive_mask_seed(shared, cfg.session_id, cfg.round_id, u, v)
            prg.add_mask(y, seed, mask_sign(u, v))
        prg.reduce_mod(y, cfg.modulus_bits)
        out = self._msg(M.Kind.MASKED, M.MaskedInput(y))
        self._shares.update(got)
        self._U2 = u2
        self._masked_sent = True
        self._input = None  # the plaintext input is no longer needed
        self.stage = M.Stage.CONSISTENCY_CHECK if cfg.mode == "active" else M.Stage.UNMASKING
        return out

    def _on_consistency(self, p: M.SurvivorList) -> bytes:
        cfg, u = self.config, self.id
        s = set(p.survivors)
        if u not in s:
            raise StageError(f"client {u}: consistency check survivor list omits me")
        if not s <= set(cfg.client_ids):
            raise StageError(f"client {u}: survivor list names unknown clients")
        if len(s) < cfg.threshold:
            raise NotEnoughClientsError(f"client {u}: {len(s)} survivors < threshold t={cfg.threshold}")
        sig = keys.sign(self._identity, consistency_signed_bytes(cfg, s))
        self._signed_u3 = tuple(sorted(s))
        self.stage = M.Stage.UNMASKING
        return self._msg(M.Kind.CONSISTENCY_SIGNATURE, M.ConsistencySignature(sig))

    def _refuse(self, why: str) -> None:
        self.stage = M.Stage.ABORTED
        raise UnmaskRefusedError(f"client {self.id} refuses to unmask: {why}")

    def _on_unmask(self, p: M.UnmaskRequest) -> bytes:
        cfg, u = self.config, self.id
        S, D = set(p.survivors), set(p.dropped)
        both = S & D
        if both:
            self._refuse(f"clients {sorted(both)[:10]} are named both survivor and dropped "
                         "(that would reveal both the self-mask seed and the mask key)")
        if u not in S:
            self._refuse("the survivor set omits me although I sent my masked input")
        unknown = (S | D) - set(cfg.client_ids)
        if unknown:
            self._refuse(f"request names unknown clients {sorted(unknown)[:5]}")
        # Defence in depth (Bonawitz et al. Fig. 4, round 4 checks), on my closed neighbourhood
        # (the only clients whose shares I hold): a protocol-following server's request has
        # S ∩ N[u] + D ∩ N[u] == U2 (everyone who sent me shares, me included), |S ∩ N[u]| >= t.
        # NOT sufficient in honest mode against a deviating server (it can still send
        # different consistent-looking sets to different clients); that needs active mode.
        closed = cfg.neighbours(u) | {u}
        S_loc, D_loc = S & closed, D & closed
        if len(S_loc) < cfg.threshold:
            self._refuse(f"only {len(S_loc)} survivors in my neighbourhood < threshold t={cfg.threshold}")
        if not S_loc <= self._U2:
            self._refuse(f"survivors {sorted(S_loc - self._U2)[:10]} did not send me shares (not in my U2)")
        if not D_loc <= self._U2 - S:
            self._refuse(f"dropped clients {sorted(D_loc - self._U2)[:10]} did not send me shares (not in my U2)")
        if S_loc | D_loc != self._U2:
            self._refuse(f"clients {sorted(self._U2 - S_loc - D_loc)[:10]} sent me shares but are named neither "
                         "survivor nor dropped")
        if cfg.mode == "active":
            if tuple(sorted(S)) != self._signed_u3:
                self._refuse("survivor set differs from the one I signed in the consistency check")
            msg = consistency_signed_bytes(cfg, S)
            signers = set()
            for v, sig in p.signatures:
                if v not in S:
                    raise SignatureError(f"client {u}: consistency signature from {v}, who is not a survivor")
                keys.verify(cfg.identity_keys[v], sig, msg, f"consistency signature of client {v}")
                signers.add(v)
            if len(signers) < cfg.threshold:
                raise SignatureError(f"client {u}: only {len(signers)} valid consistency signatures, threshold t={cfg.threshold}")
        ents = []
        for v in sorted(self._shares):
            b_sh, s_sh = self._shares[v]
            if v in S:
                ents.append(M.ShareEntry(v, M.SHARE_SELF_MASK, shamir.share_to_bytes(b_sh)))
            elif v in D:
                ents.append(M.ShareEntry(v, M.SHARE_MASK_KEY, shamir.share_to_bytes(s_sh)))
        out = self._msg(M.Kind.UNMASK_RESPONSE, M.UnmaskResponse(tuple(ents)))
        self._shares = {}
        self.stage = M.Stage.DONE
        return out
