"""Server state machine of Bonawitz et al. secure aggregation (CCS 2017, Fig. 4) with SecAgg+ graphs.

Transport-agnostic: feed each client message to :meth:`SecAggServer.receive`; when the
transport decides a stage is over (all replies in, or a timeout), call
:meth:`SecAggServer.close_stage`, which returns ``{client_id: bytes}`` to deliver and moves
to the next stage. Clients that did not reply in a stage are treated as dropped. After
the unmasking stage is closed, :meth:`SecAggServer.result` returns the sum.

What the server learns: the sum over the survivor set U3 of the inputs mod 2**k, the
sets U1..U5 and the public keys; nothing about any individual input
* in honest mode, if it follows the protocol (honest-but-curious) and fewer than t share
  holders of any client collude with it (a deviating server is not covered: see
  :mod:`secagg.smpc.client`);
* in active mode (3t > 2m, m = closed neighbourhood size, enforced by SessionConfig), even
  if it deviates, as long as at most 2t - m - 1 share holders of any client collude with
  it (two differently signed survivor sets need 2t <= m + c signatures);
and, in SecAgg+, no honest client is isolated in the graph (see :mod:`secagg.smpc.graph`).

Aborts: whenever a stage ends with fewer than t participants (or a survivor's or needed
dropped client's secret has fewer than t shares at unmasking), the server raises
:class:`~secagg.errors.NotEnoughClientsError`, moves to ABORTED and keeps no partial
result. Protocol violations raise specific ProtocolError subclasses *before* any state
is changed, so a bad or replayed message never corrupts the running sum.

Costs (n clients, d neighbours each, L elements, dropped set D, survivors U3):
memory O(L) for the running sum plus O(n d) ciphertexts; time O(n L) to add the masked
inputs, O(|U3| L) to remove self masks, O(sum over dropped v of |N(v) ∩ U3|) key
agreements and mask expansions of length L, Shamir reconstruction O(n t) per secret set.
"""

from __future__ import annotations

import numpy as np
from dataclasses import dataclass

from secagg.encoding import ring_dtype
from secagg.errors import NotEnoughClientsError, ProtocolError
from secagg.smpc import keys, prg, shamir
from secagg.smpc import messages as M
from secagg.smpc.client import advertise_signed_bytes, consistency_signed_bytes, mask_sign
from secagg.smpc.config import SessionConfig
from secagg.smpc.errors import (
    ClientAbortError,
    ReplayError,
    StageError,
    TamperedMessageError,
    VectorLengthError,
    WrongSessionError,
)

__all__ = ["SecAggServer", "SecureSumResult"]

_CLIENT_KIND = {
    M.Stage.ADVERTISE_KEYS: M.Kind.ADVERTISE,
    M.Stage.SHARE_KEYS: M.Kind.SHARES,
    M.Stage.MASKED_INPUT: M.Kind.MASKED,
    M.Stage.CONSISTENCY_CHECK: M.Kind.CONSISTENCY_SIGNATURE,
    M.Stage.UNMASKING: M.Kind.UNMASK_RESPONSE,
}


@dataclass(frozen=True)
class SecureSumResult:
    """The unmasked sum (ring elements, dtype uint32/uint64) of the survivors' inputs."""

    total: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class SecAggServer:
    """The aggregation server of one round. See the module docstring."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.stage = M.Stage.ADVERTISE_KEYS
        self._dtype = ring_dtype(config.modulus_bits)
        self._keys: dict[int, M.AdvertiseKeys] = {}
        self._U1: frozenset[int] = frozenset()
        self._cts: dict[int, dict[int, bytes]] = {}  # sender -> receiver -> ciphertext
        self._U2: frozenset[int] = frozenset()
        self._sum = np.zeros(config.vector_length, dtype=self._dtype)
        self._masked_from: set[int] = set()
        self._U3: tuple[int, ...] = ()
        self._dropped: tuple[int, ...] = ()
        self._sigs: dict[int, bytes] = {}
        self._U4: frozenset[int] = frozenset()
        self._responses: dict[int, M.UnmaskResponse] = {}
        self._aborted_clients: dict[int, str] = {}
        self._result: SecureSumResult | None = None

    # ------------------------------------------------------------------ API
    @property
    def participants(self) -> frozenset[int]:
        """Clients expected to send in the current stage."""
        return {
            M.Stage.ADVERTISE_KEYS: frozenset(self.config.client_ids),
            M.Stage.SHARE_KEYS: self._U1,
            M.Stage.MASKED_INPUT: self._U2,
            M.Stage.CONSISTENCY_CHECK: frozenset(self._U3),
            M.Stage.UNMASKING: self._U4,
        }.get(self.stage, frozenset())

    def receive(self, data: bytes) -> None:
        """Accept one client message for the current stage; raises on anything invalid (state unchanged).

        An ABORT message from a client is recorded in :attr:`aborted_clients` and then raised as
        :class:`ClientAbortError`, so the operator sees why that client stopped."""
        msg = M.decode(data)
        h, cfg = msg.header, self.config
        if h.session_id != cfg.session_id or h.round_id != cfg.round_id:
            raise WrongSessionError(f"server: message for session/round {h.session_id.hex()}/{h.round_id}, "
                                    f"expected {cfg.session_id.hex()}/{cfg.round_id}")
        if h.receiver != M.SERVER_ID:
            raise StageError(f"server: message addressed to client {h.receiver}")
        u = h.sender
        if self.stage in (M.Stage.DONE, M.Stage.ABORTED):
            raise ReplayError(f"server: round already {self.stage.name}; {h.kind.name} from client {u} rejected")
        if h.kind == M.Kind.ABORT:
            if u not in cfg.graph:
                raise StageError(f"server: abort from unknown client {u}")
            self._aborted_clients[u] = msg.payload.reason
            raise ClientAbortError(f"client {u} aborted in stage {h.stage.name}: {msg.payload.reason}")
        want = _CLIENT_KIND[self.stage]
        if h.kind not in _CLIENT_KIND.values():
            raise StageError(f"server: {h.kind.name} is not a client-to-server message")
        if M.STAGE_OF[h.kind] < self.stage:
            raise ReplayError(f"server: {h.kind.name} from client {u} belongs to the closed stage {M.STAGE_OF[h.kind].name}")
        if h.kind != want:
            raise StageError(f"server: got {h.kind.name} from client {u} while in stage {self.stage.name}")
        if u not in self.participants:
            raise StageError(f"server: client {u} is not a participant of stage {self.stage.name}")
        if u in self._received_this_stage():
            raise ReplayError(f"server: duplicate {h.kind.name} from client {u}")
        getattr(self, f"_recv_{self.stage.name.lower()}")(u, msg.payload)

    def close_stage(self) -> dict[int, bytes]:
        """End the current stage (non-senders are dropped) and return the messages for the next one."""
        if self.stage in (M.Stage.DONE, M.Stage.ABORTED):
            raise ProtocolError(f"server: round already {self.stage.name}")
        try:
            return getattr(self, f"_close_{self.stage.name.lower()}")()
        except (NotEnoughClientsError, ProtocolError):
            self._abort()
            raise

    def result(self) -> SecureSumResult:
        if self.stage != M.Stage.DONE or self._result is None:
            raise ProtocolError(f"server: no result, round is in stage {self.stage.name}")
        return self._result

    @property
    def aborted_clients(self) -> dict[int, str]:
        """Clients that sent an ABORT, with their reason."""
        return dict(self._aborted_clients)

    # ------------------------------------------------------------ internals
    def _abort(self) -> None:
        self.stage = M.Stage.ABORTED
        self._sum = np.zeros(0, dtype=self._dtype)
        self._cts = {}
        self._responses = {}
        self._result = None

    def _send(self, kind: M.Kind, payload, to: int) -> bytes:
        return M.encode(kind, payload, session_id=self.config.session_id, round_id=self.config.round_id,
                        sender=M.SERVER_ID, receiver=to)

    def _received_this_stage(self):
        return {
            M.Stage.ADVERTISE_KEYS: self._keys,
            M.Stage.SHARE_KEYS: self._cts,
            M.Stage.MASKED_INPUT: self._masked_from,
            M.Stage.CONSISTENCY_CHECK: self._sigs,
            M.Stage.UNMASKING: self._responses,
        }[self.stage]

    def _need(self, have: int, what: str) -> None:
        if have < self.config.threshold:
            raise NotEnoughClientsError(f"server: only {have} {what}, threshold t={self.config.threshold}; round aborted, no result")

    def _prune(self, alive: set[int]) -> frozenset[int]:
        """Drop clients whose closed neighbourhood has fewer than t alive members (to a fixpoint)."""
        t, g = self.config.threshold, self.config.graph
        alive = set(alive)
        changed = True
        while changed:
            changed = False
            for u in list(alive):
                if len(g[u] & alive) + 1 < t:
                    alive.discard(u)
                    changed = True
        return frozenset(alive)

    # ---- stage 0
    def _recv_advertise_keys(self, u: int, p: M.AdvertiseKeys) -> None:
        if self.config.mode == "active":
            keys.verify(self.config.identity_keys[u], p.signature,
                        advertise_signed_bytes(self.config, u, p.c_pk, p.s_pk), f"public keys of client {u}")
        self._keys[u] = p

    def _close_advertise_keys(self) -> dict[int, bytes]:
        U1 = self._prune(set(self._keys))
        self._need(len(U1), "clients advertised keys")
        self._U1 = U1
        g = self.config.graph
        out = {}
        for u in sorted(U1):
            ents = tuple(M.KeyEntry(v, self._keys[v].c_pk, self._keys[v].s_pk, self._keys[v].signature)
                         for v in sorted((g[u] & U1) | {u}))
            out[u] = self._send(M.Kind.KEY_LIST, M.KeyList(ents), u)
        self.stage = M.Stage.SHARE_KEYS
        return out

    # ---- stage 1
    def _recv_share_keys(self, u: int, p: M.ShareCiphertexts) -> None:
        want = self.config.graph[u] & self._U1
        got = {v for v, _ in p.entries}
        if got != want:
            raise StageError(f"server: client {u} sent ciphertexts for {len(got)} clients, expected its {len(want)} neighbours in U1")
        self._cts[u] = dict(p.entries)

    def _close_share_keys(self) -> dict[int, bytes]:
        U2 = self._prune(set(self._cts))
        self._need(len(U2), "clients shared keys")
        self._U2 = U2
        g = self.config.graph
        out = {}
        for v in sorted(U2):
            ents = tuple((u, self._cts[u][v]) for u in sorted(g[v] & U2))
            out[v] = self._send(M.Kind.SHARES_FORWARD, M.ShareCiphertexts(ents), v)
        self._cts = {}  # forwarded; the server keeps no ciphertexts
        self.stage = M.Stage.MASKED_INPUT
        return out

    # ---- stage 2
    def _recv_masked_input(self, u: int, p: M.MaskedInput) -> None:
        v, L, k = p.vector, self.config.vector_length, self.config.modulus_bits
        if v.shape != (L,):
            raise VectorLengthError(f"server: masked input of client {u} has length {v.shape[0]}, expected {L}")
        if v.dtype.itemsize != self._dtype.itemsize:
            raise VectorLengthError(f"server: masked input of client {u} has {v.dtype.itemsize}-byte elements, expected {self._dtype.itemsize}")
        if k not in (32, 64) and L and int(v.max()) >= 2**k:
            raise VectorLengthError(f"server: masked input of client {u} has values >= 2**{k}")
        np.add(self._sum, v, out=self._sum)
        self._masked_from.add(u)

    def _close_masked_input(self) -> dict[int, bytes]:
        U3 = tuple(sorted(self._masked_from))
        self._need(len(U3), "clients sent masked inputs")
        g = self.config.graph
        for u in U3:  # b_u needs t shares from u's surviving closed neighbourhood; clients refuse fewer
            have = len((g[u] | {u}) & set(U3))
            if have < self.config.threshold:
                raise NotEnoughClientsError(f"server: survivor {u} has only {have} surviving share holders in its "
                                            f"neighbourhood, threshold t={self.config.threshold}; round aborted, no result")
        self._U3 = U3
        self._dropped = tuple(sorted(self._U2 - set(U3)))
        if self.config.mode == "active":
            self.stage = M.Stage.CONSISTENCY_CHECK
            return {u: self._send(M.Kind.CONSISTENCY_REQUEST, M.SurvivorList(U3), u) for u in U3}
        self._U4 = frozenset(U3)
        self.stage = M.Stage.UNMASKING
        return {u: self._send(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(U3, self._dropped), u) for u in U3}

    # ---- stage 3 (active)
    def _recv_consistency_check(self, u: int, p: M.ConsistencySignature) -> None:
        keys.verify(self.config.identity_keys[u], p.signature, consistency_signed_bytes(self.config, self._U3),
                    f"consistency signature of client {u}")
        self._sigs[u] = p.signature

    def _close_consistency_check(self) -> dict[int, bytes]:
        self._need(len(self._sigs), "clients signed the survivor list")
        self._U4 = frozenset(self._sigs)
        sigs = tuple(sorted(self._sigs.items()))
        req = M.UnmaskRequest(self._U3, self._dropped, sigs)
        self.stage = M.Stage.UNMASKING
        return {u: self._send(M.Kind.UNMASK_REQUEST, req, u) for u in sorted(self._U4)}

    # ---- stage 4
    def _recv_unmasking(self, u: int, p: M.UnmaskResponse) -> None:
        g, S, D = self.config.graph, set(self._U3), set(self._dropped)
        for e in p.entries:
            if e.owner != u and e.owner not in g[u]:
                raise StageError(f"server: client {u} sent a share of non-neighbour {e.owner}")
            if e.owner in S and e.share_kind != M.SHARE_SELF_MASK or e.owner in D and e.share_kind != M.SHARE_MASK_KEY:
                raise StageError(f"server: client {u} sent the wrong kind of share for client {e.owner}")
            if e.owner not in S and e.owner not in D:
                raise StageError(f"server: client {u} sent a share of {e.owner}, who is neither survivor nor dropped")
            shamir.share_from_bytes(e.share)
        self._responses[u] = p

    def _close_unmasking(self) -> dict[int, bytes]:
        cfg, g = self.config, self.config.graph
        self._need(len(self._responses), "clients answered the unmasking request")
        S, D = set(self._U3), set(self._dropped)
        b_pts: dict[int, list[tuple[int, int]]] = {u: [] for u in S}
        s_pts: dict[int, list[tuple[int, int]]] = {v: [] for v in D}
        for holder, resp in self._responses.items():
            for e in resp.entries:
                (b_pts if e.share_kind == M.SHARE_SELF_MASK else s_pts)[e.owner].append((holder, shamir.share_from_bytes(e.share)))
        needed_d = [v for v in sorted(D) if g[v] & S]
        for u in sorted(S):
            if len(b_pts[u]) < cfg.threshold:
                raise NotEnoughClientsError(f"server: {len(b_pts[u])} shares of survivor {u}'s self-mask seed < t={cfg.threshold}; round aborted, no result")
        for v in needed_d:
            if len(s_pts[v]) < cfg.threshold:
                raise NotEnoughClientsError(f"server: {len(s_pts[v])} shares of dropped client {v}'s mask key < t={cfg.threshold}; round aborted, no result")
        b_seeds = {u: self._reconstruct(b_pts[u]) for u in sorted(S)}
        s_keys = {}
        for v in needed_d:
            raw = self._reconstruct(s_pts[v])
            sk = keys.x25519_from_private(raw)
            if keys.x25519_public_bytes(sk) != self._keys[v].s_pk:
                raise TamperedMessageError(f"server: reconstructed mask key of dropped client {v} does not match its public key (bad shares)")
            s_keys[v] = sk
        total = self._sum.copy()
        for u in sorted(S):
            prg.add_mask(total, b_seeds[u], -1)
        for v in needed_d:
            for u in sorted(g[v] & S):
                shared = keys.agree(s_keys[v], self._keys[u].s_pk)
                seed = keys.derive_mask_seed(shared, cfg.session_id, cfg.round_id, u, v)
                prg.add_mask(total, seed, -mask_sign(u, v))
        prg.reduce_mod(total, cfg.modulus_bits)
        self._result = SecureSumResult(total, self._U3, self._dropped)
        self._sum = np.zeros(0, dtype=self._dtype)
        self.stage = M.Stage.DONE
        return {}

    def _reconstruct(self, pts: list[tuple[int, int]]) -> bytes:
        pts = sorted(pts)[: self.config.threshold]
        val = shamir.combine(pts, self.config.threshold)
        if val >= 2**256:
            raise TamperedMessageError("server: reconstructed secret is not a 32-byte value (bad shares)")
        return val.to_bytes(32, "big")
