"""Bad input and malicious behaviour: every case raises a specific error and leaves state usable."""

import numpy as np
import pytest

from secagg.errors import DataError, NotEnoughClientsError
from secagg.smpc import (
    ClientAbortError,
    MalformedMessageError,
    ReplayError,
    SecAggClient,
    SecAggServer,
    SessionConfig,
    SignatureError,
    Stage,
    StageError,
    TamperedMessageError,
    UnmaskRefusedError,
    VectorLengthError,
    WrongSessionError,
    decode,
    default_threshold,
    generate_identity,
    identity_public_bytes,
    new_session_id,
)
from secagg.smpc import keys
from secagg.smpc import messages as M
from secagg.smpc.client import advertise_signed_bytes, consistency_signed_bytes

L = 16


class Round:
    """A manually stepped round so tests can intercept and alter messages."""

    def __init__(self, n=5, t=None, mode="honest", session_id=None):
        ids = tuple(range(1, n + 1))
        t = default_threshold(n, mode) if t is None else t  # honest 3 of 5, active 4 of 5
        self.idk = {u: generate_identity() for u in ids}
        self.cfg = SessionConfig(session_id or new_session_id(), 1, ids, t, L, mode=mode,
                                 identity_keys={u: identity_public_bytes(k) for u, k in self.idk.items()})
        rng = np.random.default_rng(0)
        self.inputs = {u: rng.integers(0, 2**32, L, dtype=np.uint64).astype(np.uint32) for u in ids}
        self.clients = {u: SecAggClient(self.cfg, u, identity_key=self.idk[u] if mode == "active" else None,
                                        input_vector=self.inputs[u]) for u in ids}
        self.server = SecAggServer(self.cfg)
        self.out = None

    def advertise(self, skip=()):
        for u, c in self.clients.items():
            if u not in skip:
                self.server.receive(c.start())
        self.out = self.server.close_stage()
        return self.out

    def step(self, skip=()):
        for u, m in self.out.items():
            if u not in skip:
                self.server.receive(self.clients[u].handle(m))
        self.out = self.server.close_stage()
        return self.out

    def server_msg(self, kind, payload, to):
        return M.encode(kind, payload, session_id=self.cfg.session_id, round_id=self.cfg.round_id, sender=0, receiver=to)

    def expected(self, ids):
        return sum(self.inputs[u].astype(np.uint64) for u in ids) % 2**32


def flip(b: bytes, pos: int) -> bytes:
    return b[:pos] + bytes([b[pos] ^ 1]) + b[pos + 1 :]


# ---------------------------------------------------------------- tampering
def test_tampered_share_ciphertext_rejected_and_client_state_kept():
    r = Round()
    r.advertise()
    fwd = r.step()  # SHARES_FORWARD to each client
    good = fwd[2]
    msg = decode(good)
    (sender, ct), *rest = msg.payload.entries
    bad_ct = flip(ct, len(ct) - 1)
    bad = r.server_msg(M.Kind.SHARES_FORWARD, M.ShareCiphertexts(((sender, bad_ct), *rest)), 2)
    with pytest.raises(TamperedMessageError) as ei:
        r.clients[2].handle(bad)
    assert r.clients[2].stage == Stage.MASKED_INPUT
    assert b"TamperedMessageError" in ei.value.abort_message
    # the server sees the abort
    with pytest.raises(ClientAbortError, match="client 2 aborted"):
        r.server.receive(ei.value.abort_message)
    # the genuine message is still accepted afterwards
    r.clients[2].handle(good)


def test_ciphertext_redirected_to_other_sender_fails_aad():
    r = Round()
    r.advertise()
    fwd = r.step()
    ents = decode(fwd[3]).payload.entries
    (a, ca), (b, cb), *rest = ents
    swapped = r.server_msg(M.Kind.SHARES_FORWARD, M.ShareCiphertexts(((a, cb), (b, ca), *rest)), 3)
    with pytest.raises(TamperedMessageError):
        r.clients[3].handle(swapped)


def test_key_list_with_replaced_own_key_rejected():
    r = Round()
    out = r.advertise()
    ents = list(decode(out[1]).payload.entries)
    me = ents[0]
    ents[0] = M.KeyEntry(me.client_id, me.c_pk, ents[1].s_pk, me.signature)
    with pytest.raises(TamperedMessageError):
        r.clients[1].handle(r.server_msg(M.Kind.KEY_LIST, M.KeyList(tuple(ents)), 1))


def test_malformed_bytes_rejected():
    r = Round()
    msg = r.clients[1].start()
    with pytest.raises(MalformedMessageError):
        r.server.receive(msg[:-1])
    with pytest.raises(MalformedMessageError):
        r.server.receive(msg + b"\0")
    with pytest.raises(MalformedMessageError, match="version"):
        r.server.receive(msg[:2] + bytes([9]) + msg[3:])
    with pytest.raises(MalformedMessageError):
        r.server.receive(b"XX" + msg[2:])
    with pytest.raises(MalformedMessageError):
        decode("not bytes")
    r.server.receive(msg)  # the intact message still works


# ---------------------------------------------------------------- replay / order / wrong round
def test_replayed_and_stale_messages_rejected_at_server_without_changing_sum():
    r = Round()
    adv = {u: c.start() for u, c in r.clients.items()}
    for m in adv.values():
        r.server.receive(m)
    with pytest.raises(ReplayError):
        r.server.receive(adv[1])
    r.out = r.server.close_stage()
    with pytest.raises(ReplayError, match="closed stage"):
        r.server.receive(adv[2])
    fwd = r.step()
    masked = {u: r.clients[u].handle(m) for u, m in fwd.items()}
    for m in masked.values():
        r.server.receive(m)
    with pytest.raises(ReplayError):
        r.server.receive(masked[4])
    r.out = r.server.close_stage()
    r.step()
    assert np.array_equal(r.server.result().total.astype(np.uint64), r.expected(r.cfg.client_ids))


def test_replayed_server_message_rejected_by_client():
    r = Round()
    out = r.advertise()
    r.clients[1].handle(out[1])
    with pytest.raises(ReplayError):
        r.clients[1].handle(out[1])


def test_out_of_order_message_rejected():
    r = Round()
    r.advertise()
    early = r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest((1, 2, 3), ()), 1)
    with pytest.raises(StageError):
        r.clients[1].handle(early)
    assert r.clients[1].stage == Stage.SHARE_KEYS
    # a client message for a later stage at the server
    masked = M.encode(M.Kind.MASKED, M.MaskedInput(np.zeros(L, np.uint32)), session_id=r.cfg.session_id,
                      round_id=1, sender=1, receiver=0)
    with pytest.raises(StageError):
        r.server.receive(masked)


def test_wrong_round_or_session_rejected():
    r = Round()
    out = r.advertise()
    other = SessionConfig(r.cfg.session_id, 2, r.cfg.client_ids, 3, L)  # same session, next round
    c_other = SecAggClient(other, 1, input_vector=r.inputs[1])
    with pytest.raises(WrongSessionError):
        r.server.receive(c_other.start())
    with pytest.raises(WrongSessionError):
        c_other.handle(out[1])
    r2 = Round(session_id=new_session_id())
    with pytest.raises(WrongSessionError):
        r2.server.receive(SecAggClient(r.cfg, 2, input_vector=r.inputs[2]).start())


# ---------------------------------------------------------------- signatures (active)
def test_forged_advertisement_signature_rejected_by_server():
    r = Round(mode="active")
    msg = decode(r.clients[1].start())
    forged = keys.sign(generate_identity(), advertise_signed_bytes(r.cfg, 1, msg.payload.c_pk, msg.payload.s_pk))
    bad = M.encode(M.Kind.ADVERTISE, M.AdvertiseKeys(msg.payload.c_pk, msg.payload.s_pk, forged),
                   session_id=r.cfg.session_id, round_id=1, sender=1, receiver=0)
    with pytest.raises(SignatureError):
        r.server.receive(bad)
    unsigned = M.encode(M.Kind.ADVERTISE, M.AdvertiseKeys(msg.payload.c_pk, msg.payload.s_pk, b""),
                        session_id=r.cfg.session_id, round_id=1, sender=1, receiver=0)
    with pytest.raises(SignatureError):
        r.server.receive(unsigned)


def test_server_substituting_a_public_key_detected_by_client_in_active_mode():
    r = Round(mode="active")
    out = r.advertise()
    ents = list(decode(out[1]).payload.entries)
    e = ents[2]
    mitm = keys.x25519_public_bytes(keys.generate_x25519())
    ents[2] = M.KeyEntry(e.client_id, mitm, e.s_pk, e.signature)
    with pytest.raises(SignatureError, match=f"client {e.client_id}"):
        r.clients[1].handle(r.server_msg(M.Kind.KEY_LIST, M.KeyList(tuple(ents)), 1))


def test_forged_consistency_signature_rejected_by_client_and_server():
    r = Round(mode="active")
    r.advertise()
    r.step()
    cons = r.step()  # consistency requests
    sigs = {u: r.clients[u].handle(m) for u, m in cons.items()}
    forged = keys.sign(generate_identity(), consistency_signed_bytes(r.cfg, r.cfg.client_ids))
    bad = M.encode(M.Kind.CONSISTENCY_SIGNATURE, M.ConsistencySignature(forged), session_id=r.cfg.session_id,
                   round_id=1, sender=1, receiver=0)
    with pytest.raises(SignatureError):
        r.server.receive(bad)
    real = {u: decode(s).payload.signature for u, s in sigs.items()}
    real[2] = forged
    req = r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(r.cfg.client_ids, (), tuple(sorted(real.items()))), 1)
    with pytest.raises(SignatureError):
        r.clients[1].handle(req)
    too_few = r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(r.cfg.client_ids, (), tuple(sorted(real.items()))[2:4]), 1)
    with pytest.raises(SignatureError, match="only 2 valid"):
        r.clients[1].handle(too_few)


def test_active_client_refuses_survivor_set_other_than_signed():
    r = Round(mode="active")
    r.advertise()
    r.step()
    cons = r.step()
    sigs = {u: decode(r.clients[u].handle(m)).payload.signature for u, m in cons.items()}
    req = r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest((1, 2, 3, 4), (5,), tuple(sorted(sigs.items()))), 1)
    with pytest.raises(UnmaskRefusedError, match="differs from the one I signed"):
        r.clients[1].handle(req)


# ---------------------------------------------------------------- unmasking refusal
@pytest.mark.parametrize("mode", ["honest", "active"])
def test_client_refuses_request_revealing_both_secrets_and_server_sees_it(mode):
    r = Round(n=6, mode=mode)  # t = 4 honest, 5 active
    r.advertise()
    r.step()
    out = r.step()
    if mode == "active":
        sigs = {u: decode(r.clients[u].handle(m)).payload.signature for u, m in out.items()}
        sig_t = tuple(sorted(sigs.items()))
    else:
        sig_t = ()
    # client 3 is named both survivor and dropped
    req = r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(r.cfg.client_ids, (3,), sig_t), 1)
    with pytest.raises(UnmaskRefusedError, match=r"clients \[3\] are named both survivor and dropped") as ei:
        r.clients[1].handle(req)
    assert r.clients[1].stage == Stage.ABORTED
    with pytest.raises(ClientAbortError, match="client 1 aborted.*both survivor and dropped"):
        r.server.receive(ei.value.abort_message)
    assert "both survivor and dropped" in r.server.aborted_clients[1]
    # an aborted client stays silent
    with pytest.raises(ReplayError):
        r.clients[1].handle(r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(r.cfg.client_ids, (), sig_t), 1))


def test_client_answers_only_one_unmask_request():
    r = Round()
    r.advertise()
    r.step()
    out = r.step()
    r.clients[1].handle(out[1])
    second = r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest((1, 2, 3), (4, 5)), 1)
    with pytest.raises(ReplayError):
        r.clients[1].handle(second)


def test_client_refuses_request_omitting_itself():
    r = Round()
    r.advertise()
    r.step()
    r.step()
    req = r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest((2, 3, 4, 5), (1,)), 1)
    with pytest.raises(UnmaskRefusedError, match="omits me"):
        r.clients[1].handle(req)


def test_server_rejects_wrong_share_kind():
    r = Round()
    r.advertise()
    r.step(skip=())
    r.step(skip=(5,))  # 5 dropped after sharing keys
    resp = decode(r.clients[1].handle(r.out[1])).payload
    bad = tuple(M.ShareEntry(e.owner, 1 - e.share_kind, e.share) for e in resp.entries)
    with pytest.raises(StageError, match="wrong kind of share"):
        r.server.receive(M.encode(M.Kind.UNMASK_RESPONSE, M.UnmaskResponse(bad), session_id=r.cfg.session_id,
                                  round_id=1, sender=1, receiver=0))


def test_corrupted_mask_key_share_detected():
    r = Round(n=5, t=3)
    r.advertise()
    r.step()
    r.step(skip=(5,))
    for u in (1, 2, 3):
        resp = decode(r.clients[u].handle(r.out[u])).payload
        ents = tuple(M.ShareEntry(e.owner, e.share_kind, (int.from_bytes(e.share, "big") + (u == 1)).to_bytes(33, "big"))
                     for e in resp.entries)
        r.server.receive(M.encode(M.Kind.UNMASK_RESPONSE, M.UnmaskResponse(ents), session_id=r.cfg.session_id,
                                  round_id=1, sender=u, receiver=0))
    with pytest.raises(TamperedMessageError, match="does not match its public key"):
        r.server.close_stage()
    assert r.server.stage == Stage.ABORTED


# ---------------------------------------------------------------- inputs
def test_wrong_vector_length_and_non_finite_inputs():
    r = Round()
    with pytest.raises(VectorLengthError):
        r.clients[1].set_input(np.zeros(L + 1, np.uint32))
    with pytest.raises(DataError, match="NaN/Inf"):
        r.clients[1].set_input(np.full(L, np.nan))
    with pytest.raises(DataError, match="encode floats"):
        r.clients[1].set_input(np.zeros(L))
    with pytest.raises(VectorLengthError):
        r.clients[1].set_input(np.full(L, 2**33, dtype=np.int64))
    r.advertise()
    r.step()
    short = M.encode(M.Kind.MASKED, M.MaskedInput(np.zeros(L - 1, np.uint32)), session_id=r.cfg.session_id,
                     round_id=1, sender=1, receiver=0)
    with pytest.raises(VectorLengthError):
        r.server.receive(short)
    wide = M.encode(M.Kind.MASKED, M.MaskedInput(np.zeros(L, np.uint64)), session_id=r.cfg.session_id,
                    round_id=1, sender=1, receiver=0)
    with pytest.raises(VectorLengthError):
        r.server.receive(wide)
    assert isinstance(VectorLengthError("x"), DataError)


def test_client_aborts_when_too_few_neighbours_shared():
    r = Round(n=5, t=3)
    r.advertise()
    fwd = r.step()
    few = r.server_msg(M.Kind.SHARES_FORWARD, M.ShareCiphertexts(decode(fwd[1]).payload.entries[:1]), 1)
    with pytest.raises(NotEnoughClientsError):
        r.clients[1].handle(few)


def test_bad_configs():
    ids = (1, 2, 3, 4)
    from secagg.errors import ConfigError

    with pytest.raises(ConfigError, match="threshold"):
        SessionConfig(new_session_id(), 0, ids, 2, 4)  # t must exceed n/2
    with pytest.raises(ConfigError, match="client_ids"):
        SessionConfig(new_session_id(), 0, (0, 1, 2), 2, 4)
    with pytest.raises(ConfigError, match="identity key"):
        SessionConfig(new_session_id(), 0, ids, 3, 4, mode="active")
    with pytest.raises(ConfigError, match="degree"):
        SessionConfig(new_session_id(), 0, ids, 3, 4, degree=3)


def test_driver_surfaces_refusal_of_a_malicious_server(monkeypatch):
    from secagg.smpc import driver
    from secagg.smpc import run_round

    class GreedyServer(SecAggServer):
        """Asks for both secrets of client 2 by listing it as survivor and dropped."""

        def _close_masked_input(self):
            out = super()._close_masked_input()
            req = M.UnmaskRequest(self._U3, (2,))
            return {u: self._send(M.Kind.UNMASK_REQUEST, req, u) for u in out}

    monkeypatch.setattr(driver, "SecAggServer", GreedyServer)
    r = Round(n=5, t=3)
    with pytest.raises(ClientAbortError, match="both survivor and dropped") as ei:
        run_round(r.cfg, r.inputs)
    assert isinstance(ei.value.__cause__, UnmaskRefusedError)


# ------------------------------------------------------------------ reviewer's attacks (regressions)
# Each reproduces one of the verified attacks on a deviating server and asserts that it now fails.
from secagg.errors import ConfigError  # noqa: E402
from secagg.smpc import derive_params, plan_session  # noqa: E402
from secagg.smpc import shamir  # noqa: E402


def _identities(ids):
    idk = {u: generate_identity() for u in ids}
    return idk, {u: identity_public_bytes(k) for u, k in idk.items()}


def _to_masked_input(cfg, idk, *, forward=None):
    """Honest stages 0-1; returns (clients, server, SHARES_FORWARD messages), optionally rewritten
    by ``forward(v, ShareCiphertexts) -> entries`` (the server choosing what v receives)."""
    rng = np.random.default_rng(4)
    x = {u: rng.integers(0, 2**32, cfg.vector_length, dtype=np.uint64).astype(np.uint32) for u in cfg.client_ids}
    cl = {u: SecAggClient(cfg, u, identity_key=idk.get(u), input_vector=x[u]) for u in cfg.client_ids}
    srv = SecAggServer(cfg)
    for c in cl.values():
        srv.receive(c.start())
    out = srv.close_stage()
    for u, m in out.items():
        srv.receive(cl[u].handle(m))
    out = srv.close_stage()
    if forward is not None:
        for v in list(out):
            ents = forward(v, decode(out[v]).payload)
            if ents is not None:
                out[v] = _srv_msg(cfg, M.Kind.SHARES_FORWARD, M.ShareCiphertexts(tuple(ents)), v)
    return cl, srv, out


def _srv_msg(cfg, kind, payload, to):
    return M.encode(kind, payload, session_id=cfg.session_id, round_id=cfg.round_id, sender=0, receiver=to)


def _ask(client, msg):
    """A client's reply payload, or None when it refuses (any ProtocolError / NotEnoughClientsError)."""
    try:
        return decode(client.handle(msg)).payload
    except (UnmaskRefusedError, SignatureError, StageError, NotEnoughClientsError):
        return None


def test_active_mode_requires_3t_greater_than_2m_naming_t_m_and_the_bound():
    ids = tuple(range(1, 41))
    _, pub = _identities(ids)
    # attack_plus_active.py's parameters: n=40, k=20 (m=21), t=11 = m/2+1 -> refused
    with pytest.raises(ConfigError, match=r"3t > 2m.*floor\(2m/3\)\+1 = 15.*m=21.*t=11"):
        SessionConfig(new_session_id(), 0, ids, 11, 8, mode="active", degree=20, identity_keys=pub)
    with pytest.raises(ConfigError, match="3t > 2m"):
        SessionConfig(new_session_id(), 0, ids, 14, 8, mode="active", degree=20, identity_keys=pub)
    SessionConfig(new_session_id(), 0, ids, 15, 8, mode="active", degree=20, identity_keys=pub)
    SessionConfig(new_session_id(), 0, ids, 11, 8, mode="honest", degree=20)  # honest mode: t > m/2 suffices
    with pytest.raises(ConfigError, match=r"m=10.*t=6"):  # complete graph: m = n
        SessionConfig(new_session_id(), 0, ids[:10], 6, 8, mode="active", identity_keys=pub)
    assert default_threshold(10, "active") == 7 and default_threshold(10, "honest") == 6


@pytest.mark.parametrize("n", [40, 100])
def test_derive_params_active_mode_gives_valid_active_thresholds_even_with_zero_corruption(n):
    ids = tuple(range(1, n + 1))
    _, pub = _identities(ids)
    honest = derive_params(n, dropout_rate=0.05, corruption_rate=0.0)
    m = honest.neighbourhood_size
    if not honest.complete:  # e.g. n=100: k=18, t=10 -- valid in honest mode only
        assert 3 * honest.threshold <= 2 * m
        with pytest.raises(ConfigError, match="3t > 2m"):
            SessionConfig(new_session_id(), 0, ids, honest.threshold, 4, mode="active", degree=honest.session_degree,
                          identity_keys=pub)
    p = derive_params(n, dropout_rate=0.05, corruption_rate=0.0, mode="active")
    assert 3 * p.threshold > 2 * p.neighbourhood_size
    assert "active mode" in p.explain() and f"2t-m-1 = {2 * p.threshold - p.neighbourhood_size - 1}" in p.explain()
    SessionConfig(new_session_id(), 0, ids, p.threshold, 4, mode="active", degree=p.session_degree, identity_keys=pub)
    d, t = plan_session(n, mode="active", secagg_plus=True, dropout_rate=0.05, corruption_rate=0.0)
    SessionConfig(new_session_id(), 0, ids, t, 4, mode="active", degree=d, identity_keys=pub)
    with pytest.raises(ConfigError, match="3t > 2m"):
        plan_session(n, mode="active", threshold=n // 2 + 1)


def test_attack_plus_active_hidden_neighbours_fails_with_a_valid_threshold():
    """attack_plus_active.py with the smallest valid t=15 (m=21): the server shows v only the
    shares of 14 neighbours F (so v still masks), gets S = ids - F signed and declares F dropped.
    v itself refuses the request, and the other holders cannot supply t shares of b_v."""
    n, k, t = 40, 20, 15
    ids = tuple(range(1, n + 1))
    idk, pub = _identities(ids)
    cfg = SessionConfig(new_session_id(), 0, ids, t, 8, mode="active", degree=k, identity_keys=pub)
    v = 1
    F = set(sorted(cfg.graph[v])[: t - 1])
    cl, srv, out = _to_masked_input(cfg, idk, forward=lambda u, p: [e for e in p.entries if e[0] in F] if u == v else None)
    for u, mm in out.items():
        decode(cl[u].handle(mm))  # v accepts: |U2(v)| = 15 >= t
    S = tuple(sorted(set(ids) - F))
    sigs = tuple((u, decode(cl[u].handle(_srv_msg(cfg, M.Kind.CONSISTENCY_REQUEST, M.SurvivorList(S), u))).payload.signature)
                 for u in S)
    b_v = 0
    for w in S:
        r = _ask(cl[w], _srv_msg(cfg, M.Kind.UNMASK_REQUEST, M.UnmaskRequest(S, tuple(sorted(F)), sigs), w))
        if w == v:
            assert r is None and cl[v].stage == Stage.ABORTED  # v: survivors that never sent it shares
        elif r is not None:
            b_v += sum(e.owner == v for e in r.entries)
    assert b_v < t  # at most |N(v) - F| = 6 honest holders could answer


def test_attack_active_two_signed_survivor_sets_fails_within_the_collusion_bound():
    """attack_active.py (n=10, t=7) with c = 2t - m - 1 = 3 colluders, the corrected bound: the
    server cannot get two survivor sets with t signatures each, so the second half refuses."""
    n, t = 10, 7
    ids = tuple(range(1, n + 1))
    idk, pub = _identities(ids)
    cfg = SessionConfig(new_session_id(), 0, ids, t, 8, mode="active", identity_keys=pub)
    cl, srv, out = _to_masked_input(cfg, idk)
    for u, mm in out.items():
        cl[u].handle(mm)
    corrupt = (8, 9, 10)
    assert len(corrupt) == 2 * t - n - 1
    # v=1 survivor in A, "dropped" in B; client 4 is named in both but can sign only one of them
    A, B = (1, 2, 3, 4) + corrupt, (4, 5, 6, 7) + corrupt
    sig = {}
    for S, signers in ((A, (1, 2, 3, 4)), (B, (5, 6, 7))):
        sig[S] = {u: decode(cl[u].handle(_srv_msg(cfg, M.Kind.CONSISTENCY_REQUEST, M.SurvivorList(S), u))).payload.signature
                  for u in signers}
        sig[S].update({u: keys.sign(idk[u], consistency_signed_bytes(cfg, S)) for u in corrupt})  # colluders sign both
    assert len(sig[A]) == t and len(sig[B]) == t - 1  # 2t <= m + c fails: one set is short
    D_B = tuple(sorted(set(ids) - set(B)))
    for w in (5, 6, 7):
        req = _srv_msg(cfg, M.Kind.UNMASK_REQUEST, M.UnmaskRequest(B, D_B, tuple(sorted(sig[B].items()))), w)
        with pytest.raises(SignatureError, match=f"only {t - 1} valid consistency signatures"):
            cl[w].handle(req)
        mixed = tuple(sorted({**sig[B], **{u: sig[A][u] for u in (1, 2)}}.items()))  # A's signatures do not count for B
        with pytest.raises(SignatureError):
            cl[w].handle(_srv_msg(cfg, M.Kind.UNMASK_REQUEST, M.UnmaskRequest(B, D_B, mixed), w))


def test_attack_honest_pairs_refused_by_the_new_client_checks():
    """attack_honest.py: S={v,w}, D=everyone else to each holder w -> every holder refuses (|S| < t)."""
    r = Round(n=5, t=3)
    r.advertise()
    r.step()
    r.step()
    for w in r.cfg.client_ids:
        S = tuple(sorted({1, w}))
        D = tuple(sorted(set(r.cfg.client_ids) - set(S)))
        with pytest.raises(UnmaskRefusedError, match=r"survivors in my neighbourhood < threshold t=3"):
            r.clients[w].handle(r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(S, D), w))
        assert r.clients[w].stage == Stage.ABORTED


def _honest_round_at_unmasking(n=6, t=4, drop_after_shares=()):
    r = Round(n=n, t=t)
    r.advertise()
    r.step()
    r.step(skip=drop_after_shares)
    return r


def _round_where_6_hides_from_1():
    """Honest stages, except that the server does not forward client 6's shares to client 1."""
    r = Round(n=6, t=4)
    r.advertise()
    fwd = r.step()
    fwd[1] = r.server_msg(M.Kind.SHARES_FORWARD, M.ShareCiphertexts(tuple(e for e in decode(fwd[1]).payload.entries
                                                                            if e[0] != 6)), 1)
    r.step()
    assert r.clients[1]._U2 == {1, 2, 3, 4, 5}
    return r


@pytest.mark.parametrize("S,D,why", [((1, 2, 3, 4, 6), (5,), r"survivors \[6\] did not send me shares"),
                                     ((1, 2, 3, 4), (5, 6), r"dropped clients \[6\] did not send me shares")])
def test_client_refuses_survivor_or_dropped_client_outside_its_u2(S, D, why):
    r = _round_where_6_hides_from_1()
    with pytest.raises(UnmaskRefusedError, match=why):
        r.clients[1].handle(r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(S, D), 1))
    assert r.clients[1].stage == Stage.ABORTED


def test_client_refuses_request_leaving_part_of_its_u2_unnamed_and_answers_the_honest_one():
    r = _honest_round_at_unmasking()
    with pytest.raises(UnmaskRefusedError, match=r"clients \[6\] sent me shares but are named neither"):
        r.clients[1].handle(r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest((1, 2, 3, 4), (5,)), 1))
    with pytest.raises(UnmaskRefusedError, match=r"only 3 survivors in my neighbourhood < threshold t=4"):
        r.clients[2].handle(r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest((1, 2, 3), (4, 5, 6)), 2))
    ok = decode(r.clients[3].handle(r.server_msg(M.Kind.UNMASK_REQUEST, M.UnmaskRequest((1, 2, 3, 4), (5, 6)), 3))).payload
    assert {(e.owner, e.share_kind) for e in ok.entries} == {(1, M.SHARE_SELF_MASK), (2, M.SHARE_SELF_MASK), (3, M.SHARE_SELF_MASK),
                                                           (4, M.SHARE_SELF_MASK), (5, M.SHARE_MASK_KEY), (6, M.SHARE_MASK_KEY)}


def test_honest2_pattern_refused_in_active_mode():
    """attack_honest2.py sends each holder its own plausible (S, D) (honest mode cannot detect it:
    docs/smpc.md). In active mode every holder signs only its own S, which never gathers t signatures."""
    n, t = 10, 7
    ids = tuple(range(1, n + 1))
    idk, pub = _identities(ids)
    cfg = SessionConfig(new_session_id(), 0, ids, t, 8, mode="active", identity_keys=pub)
    v, P, others = 1, (2, 3, 4, 5, 6, 7), (8, 9, 10)
    cl, srv, out = _to_masked_input(cfg, idk, forward=lambda u, p: [e for e in p.entries if e[0] in P] if u == v else None)
    for u, mm in out.items():
        cl[u].handle(mm)
    req = {v: set(range(1, 8))}
    for i, w in enumerate(others):
        req[w] = {v, *others, P[i]}
    for w in P:
        req[w] = {v, w, *others}
    sigs = {}
    for w, S in req.items():
        S = tuple(sorted(S))
        s = _ask(cl[w], _srv_msg(cfg, M.Kind.CONSISTENCY_REQUEST, M.SurvivorList(S), w))
        if s is not None:
            sigs.setdefault(S, {})[w] = s.signature
    assert max(len(s) for s in sigs.values()) < t
    answered = 0
    for w, S in req.items():
        S = tuple(sorted(S))
        D = tuple(sorted(set(P) - set(S)))
        answered += _ask(cl[w], _srv_msg(cfg, M.Kind.UNMASK_REQUEST, M.UnmaskRequest(S, D, tuple(sorted(sigs.get(S, {}).items()))), w)) is not None
    assert answered == 0
