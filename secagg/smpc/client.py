"""Client state machine of Bonawitz et al. secure aggregation (CCS 2017, Fig. 4) with SecAgg+ graphs.

Transport-agnostic: :meth:`SecAggClient.start` returns the first message and
:meth:`SecAggClient.handle` consumes one server message (bytes) and returns the reply
(bytes). Nothing here does I/O.

Threat models
-------------
* ``honest``: the server follows the protocol but tries to learn individual inputs from
  what it sees (honest-but-curious), possibly colluding with fewer than t clients.
* ``active``: the server may deviate (drop, reorder, forge, send inconsistent survivor
  sets). Public keys are signed with long-term Ed25519 identity keys and verified; before
  unmasking, every client signs the survivor set U3 and requires t valid signatures on the
  same set (the consistency check).

Refusal rule (both modes): a client answers at most one unmasking request per round, and
refuses (:class:`UnmaskRefusedError`, with an ABORT message for the server in
``exc.abort_message``) any request that names a client in both the survivor set and the
dropped set, i.e. would reveal both the self-mask seed b_v and the mask key s_v of v.

Errors and state: on any error :meth:`handle` raises a specific ProtocolError subclass
and leaves the state unchanged (a correct retransmission is still accepted), except for
a refused unmasking request, after which the client stays ABORTED. Every raised
ProtocolError carries ``abort_message`` (bytes) that a transport should forward.

Costs per client with d neighbours (d = n-1 for SecAgg, O(log n) for SecAgg+) and vector
length L: 2d X25519 agreements, Shamir split O(d t), d AES-GCM share encryptions and
decryptions, d+1 AES-CTR mask expansions of L * k/8 bytes and d+1 in-place adds (O(d L));
upload L * k/8 bytes for the masked vector plus O(d) * ~150 bytes of ciphertexts.
"""

from __future__ import annotations

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

__all__ = ["SecAggClient", "advertise_signed_bytes", "consistency_signed_bytes", "mask_sign"]

_PT = struct.Struct(">II")  # sender, receiver inside the share plaintext


def advertise_signed_bytes(cfg: SessionConfig, client_id: int, c_pk: bytes, s_pk: bytes) -> bytes:
    return b"secagg/v1/advertise" + cfg.session_id + struct.pack(">II", cfg.round_id, client_id) + c_pk + s_pk


def consistency_signed_bytes(cfg: SessionConfig, survivors) -> bytes:
    ids = sorted(survivors)
    return b"secagg/v1/consistency" + cfg.session_id + struct.pack(f">II{len(ids)}I", cfg.round_id, len(ids), *ids)


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
