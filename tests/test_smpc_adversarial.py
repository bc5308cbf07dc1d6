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
