"""SecAggClient.export_state / from_state: resuming at every stage gives the same round; bad blobs are rejected."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from secagg.errors import ConfigError, DataError, NotEnoughClientsError, ProtocolError
from secagg.smpc import (
    PHASES,
    STATE_FORMAT_VERSION,
    ClientStateError,
    DropoutSchedule,
    ReplayError,
    SecAggClient,
    SecAggServer,
    SessionConfig,
    Stage,
    default_threshold,
    generate_identity,
    identity_public_bytes,
    new_session_id,
    run_round,
)

_PHASE_OF = {Stage.SHARE_KEYS: "share_keys", Stage.MASKED_INPUT: "masked_input",
             Stage.CONSISTENCY_CHECK: "consistency", Stage.UNMASKING: "unmasking"}
_DETERMINISTIC = (Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING)


def make(n, t, L, k=32, mode="honest", degree=None, seed=0, round_id=9):
    ids = tuple(range(1, n + 1))
    idk = {u: generate_identity() for u in ids} if mode == "active" else {}
    cfg = SessionConfig(new_session_id(), round_id, ids, t, L, modulus_bits=k, mode=mode, degree=degree,
                        identity_keys={u: identity_public_bytes(s) for u, s in idk.items()})
    rng = np.random.default_rng(seed)
    dt = np.uint32 if k <= 32 else np.uint64
    inputs = {u: rng.integers(0, 2**k if k < 64 else 2**63, L, dtype=np.uint64).astype(dt) for u in ids}
    return cfg, inputs, idk


def resumed_round(cfg, inputs, sched, idk, resume, checked):
    """The driver's round, but before each of its messages client u is exported and rebuilt
    from the blob when ``resume(u, step)``; on deterministic stages the original client
    answers the same message too and must produce the identical reply."""
    clients = {u: SecAggClient(cfg, u, identity_key=idk.get(u)) for u in cfg.client_ids}
    server = SecAggServer(cfg)

    def maybe_resume(u, step):
        if resume(u, step):
            blob = clients[u].export_state()
            return SecAggClient.from_state(cfg, blob, client_id=u, identity_key=idk.get(u))
        return clients[u]

    for u in cfg.client_ids:
        clients[u].set_input(inputs[u])
        clients[u] = maybe_resume(u, 0)  # the input travels in the blob before the masked-input stage
        if u in sched.advertise:
            continue
        server.receive(clients[u].start())
    out = server.close_stage()
    step = 1
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        stage = server.stage
        for u, msg in out.items():
            phase = _PHASE_OF[stage]
            if stage == Stage.UNMASKING and cfg.mode == "honest" and u in sched.consistency:
                phase = "consistency"
            if u in getattr(sched, phase):
                continue
            orig = clients[u]
            c = maybe_resume(u, step)
            reply = c.handle(msg)
            if c is not orig and stage in _DETERMINISTIC:
                assert orig.handle(msg) == reply  # the resumed client is the same client
                checked.append(stage)
            clients[u] = c
            server.receive(reply)
        out = server.close_stage()
        step += 1
    return server.result(), clients


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 6),
    tfrac=st.floats(0.51, 1.0),
    k=st.sampled_from([16, 32, 64]),
    mode=st.sampled_from(["honest", "active"]),
    sparse=st.booleans(),
    phases=st.lists(st.sampled_from(("none",) * 5 + PHASES), min_size=6, max_size=6),
    resume_bits=st.integers(0, 2**30 - 1),
    L=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_export_import_at_every_stage_continues_to_the_same_sum(n, tfrac, k, mode, sparse, phases, resume_bits, L, seed):
    degree = 2 if sparse and n >= 5 else None
    m = 3 if degree else n
    t = min(m, max(default_threshold(m, mode), int(np.ceil(tfrac * m))))  # active: 3t > 2m
    cfg, inputs, idk = make(n, t, L, k, mode, degree, seed)
    sched = DropoutSchedule(**{p: frozenset(u for u, ph in zip(cfg.client_ids, phases) if ph == p) for p in PHASES})
    checked: list[Stage] = []

    def resume(u, step):
        return bool((resume_bits >> ((u - 1) * 5 + step)) & 1)

    try:
        ref = run_round(cfg, inputs, sched, identity_keys=idk)
    except NotEnoughClientsError:
        with pytest.raises(NotEnoughClientsError):
            resumed_round(cfg, inputs, sched, idk, resume, checked)
        return
    res, _ = resumed_round(cfg, inputs, sched, idk, resume, checked)
    assert res.survivors == ref.survivors
    np.testing.assert_array_equal(res.total, ref.total)
    expected = sum(int(inputs[u][0]) for u in ref.survivors) % 2**k
    assert int(res.total[0]) == expected


def test_every_client_resumed_before_every_message_active_mode_sparse_graph():
    cfg, inputs, idk = make(9, 5, 5, mode="active", degree=6, seed=3)  # m = 7, 3t > 2m
    checked: list[Stage] = []
    sched = DropoutSchedule(masked_input=frozenset({4}), unmasking=frozenset({6}))
    res, clients = resumed_round(cfg, inputs, sched, idk, lambda u, s: True, checked)
    ref = run_round(cfg, inputs, sched, identity_keys=idk)
    np.testing.assert_array_equal(res.total, ref.total)
    assert set(checked) == set(_DETERMINISTIC)
    # a DONE client, resumed, still refuses a second unmasking request (no rollback of the refusal rule)
    done = SecAggClient.from_state(cfg, clients[1].export_state(), identity_key=idk[1])
    assert done.stage == Stage.DONE
    with pytest.raises(ReplayError):
        done.handle(_unmask_request_for(cfg, 1))


def _unmask_request_for(cfg, u):
    from secagg.smpc import messages as M

    return M.encode(M.Kind.UNMASK_REQUEST, M.UnmaskRequest(tuple(cfg.client_ids), (), ()), session_id=cfg.session_id,
                    round_id=cfg.round_id, sender=M.SERVER_ID, receiver=u)


# ------------------------------------------------------------------ bad blobs
def blobs_by_stage():
    """One exported blob per stage of one honest round with an input set (c1 of 4, t=3)."""
    cfg, inputs, _ = make(4, 3, 3, seed=1)
    clients = {u: SecAggClient(cfg, u) for u in cfg.client_ids}
    for u, c in clients.items():
        c.set_input(inputs[u])
    server = SecAggServer(cfg)
    out_blobs = {Stage.ADVERTISE_KEYS: clients[1].export_state()}
    for c in clients.values():
        server.receive(c.start())
    out = server.close_stage()
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        out_blobs[clients[1].stage] = clients[1].export_state()
        for u, msg in out.items():
            server.receive(clients[u].handle(msg))
        out = server.close_stage()
    out_blobs[Stage.DONE] = clients[1].export_state()
    return cfg, out_blobs


CFG, BLOBS = blobs_by_stage()


def reseal(head_and_body: bytes) -> bytes:
    """Recompute the head's length and the digest: a forgery that passes the checksum."""
    body = head_and_body[9:]
    head = head_and_body[:5] + struct.pack(">I", len(body))
    return head + body + hashlib.sha256(head + body).digest()


def test_blobs_of_all_stages_round_trip_and_carry_the_version():
    assert set(BLOBS) == {Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING, Stage.DONE}
    for stage, blob in BLOBS.items():
        assert blob[:4] == b"SACS" and blob[4] == STATE_FORMAT_VERSION
        c = SecAggClient.from_state(CFG, blob, client_id=1)
        assert c.stage == stage and c.id == 1
        assert c.export_state() == blob  # canonical: export(import(b)) == b


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING])
def test_every_truncation_every_bit_flip_and_padding_is_rejected(stage):
    blob = BLOBS[stage]
    for cut in range(len(blob)):
        with pytest.raises(ClientStateError):
            SecAggClient.from_state(CFG, blob[:cut])
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(ClientStateError):
            SecAggClient.from_state(CFG, bytes(bad))
    with pytest.raises(ClientStateError, match="truncated or padded"):
        SecAggClient.from_state(CFG, blob + b"\x00")


def test_clear_messages_for_wrong_format_session_round_client_and_config():
    blob = BLOBS[Stage.MASKED_INPUT]
    with pytest.raises(ClientStateError, match="bad magic"):
        SecAggClient.from_state(CFG, b"JSON" + blob[4:])
    with pytest.raises(ClientStateError, match="version 2 is not supported"):
        SecAggClient.from_state(CFG, blob[:4] + b"\x02" + blob[5:])
    with pytest.raises(ClientStateError, match="must be bytes"):
        SecAggClient.from_state(CFG, blob.hex())
    with pytest.raises(ClientStateError, match="digest mismatch"):
        SecAggClient.from_state(CFG, blob[:-1] + bytes([blob[-1] ^ 1]))
    other_session = SessionConfig(new_session_id(), CFG.round_id, CFG.client_ids, CFG.threshold, CFG.vector_length)
    other_round = SessionConfig(CFG.session_id, CFG.round_id + 1, CFG.client_ids, CFG.threshold, CFG.vector_length)
    other_t = SessionConfig(CFG.session_id, CFG.round_id, CFG.client_ids, 4, CFG.vector_length)
    other_ids = SessionConfig(CFG.session_id, CFG.round_id, (1, 2, 3, 5), CFG.threshold, CFG.vector_length)
    for cfg in (other_session, other_round):
        with pytest.raises(ClientStateError, match="exported for session/round"):
            SecAggClient.from_state(cfg, blob)
    for cfg in (other_t, other_ids):
        with pytest.raises(ClientStateError, match="different SessionConfig"):
            SecAggClient.from_state(cfg, blob)
    with pytest.raises(ClientStateError, match="exported by client 1, expected client 2"):
        SecAggClient.from_state(CFG, blob, client_id=2)
    # the error is both a ProtocolError and a DataError
    with pytest.raises(ClientStateError, match="shorter than the minimum") as err:
        SecAggClient.from_state(CFG, b"")
    assert isinstance(err.value, ProtocolError) and isinstance(err.value, DataError)


def test_well_sealed_but_inconsistent_blobs_are_rejected():
    """Forgeries that pass the digest (resealed) must still be consistent as a whole."""
    mi = BLOBS[Stage.MASKED_INPUT][:-32]
    stage_at = 9 + 32 + 16 + 4 + 4
    relabel = lambda b, s: b[:stage_at] + bytes([s]) + b[stage_at + 1:]  # noqa: E731
    with pytest.raises(ClientStateError, match="trailing bytes"):
        SecAggClient.from_state(CFG, reseal(relabel(mi, Stage.SHARE_KEYS)))
    with pytest.raises(ClientStateError, match="no consistency-check stage"):
        SecAggClient.from_state(CFG, reseal(relabel(BLOBS[Stage.UNMASKING][:-32], Stage.CONSISTENCY_CHECK)))
    with pytest.raises(ClientStateError, match="unknown stage"):
        SecAggClient.from_state(CFG, reseal(relabel(mi, 9)))
    with pytest.raises(ClientStateError, match="unknown flag"):
        SecAggClient.from_state(CFG, reseal(mi[: stage_at + 1] + b"\x81" + mi[stage_at + 2:]))
    # another private key c_sk: it no longer matches the public key in the key list
    c_sk_at = stage_at + 2
    with pytest.raises(ClientStateError, match="own public keys"):
        SecAggClient.from_state(CFG, reseal(mi[:c_sk_at] + bytes(32) + mi[c_sk_at + 32:]))
    # two key-list entries swapped (ids no longer ascending)
    u1_at, entry = c_sk_at + 64 + 32 + 4, 4 + 32 + 32 + 1
    first, second = mi[u1_at:u1_at + entry], mi[u1_at + entry:u1_at + 2 * entry]
    with pytest.raises(ClientStateError, match="key-list ids are not strictly increasing"):
        SecAggClient.from_state(CFG, reseal(mi[:u1_at] + second + first + mi[u1_at + 2 * entry:]))
    # a DONE blob claiming to still hold shares, and an UNMASKING blob with its masked input "unsent"
    un = BLOBS[Stage.UNMASKING][:-32]
    with pytest.raises(ClientStateError, match="held shares"):
        SecAggClient.from_state(CFG, reseal(relabel(un, Stage.DONE)))
    with pytest.raises(ClientStateError, match="input is present"):
        SecAggClient.from_state(CFG, reseal(un[: stage_at + 1] + b"\x01" + un[stage_at + 2:] + bytes(4 * CFG.vector_length)))


@settings(deadline=None, max_examples=300)
@given(stage=st.sampled_from(sorted(BLOBS)), pos=st.integers(0, 10**6), junk=st.binary(min_size=1, max_size=40),
       mode=st.sampled_from(["replace", "insert", "delete"]))
def test_resealed_random_edits_give_client_state_error_or_a_consistent_client(stage, pos, junk, mode):
    """Fuzz behind the digest: the parser never fails with anything but ClientStateError."""
    body = BLOBS[stage][:-32]
    p = 9 + pos % (len(body) - 9)
    edited = {"replace": body[:p] + junk + body[p + len(junk):], "insert": body[:p] + junk + body[p:],
              "delete": body[:p] + body[p + len(junk):]}[mode]
    try:
        c = SecAggClient.from_state(CFG, reseal(edited))
    except ClientStateError:
        return
    assert c.export_state() == reseal(edited)  # accepted only if it is a canonical, consistent state


def test_active_mode_needs_the_matching_identity_key_on_import():
    cfg, inputs, idk = make(3, 3, 2, mode="active")
    c = SecAggClient(cfg, 2, identity_key=idk[2])
    c.start()
    blob = c.export_state()
    with pytest.raises(ConfigError, match=r"identity_key \(Ed25519PrivateKey\) is required"):
        SecAggClient.from_state(cfg, blob)
    with pytest.raises(ConfigError, match="does not match"):
        SecAggClient.from_state(cfg, blob, identity_key=idk[3])
    assert SecAggClient.from_state(cfg, blob, identity_key=idk[2]).stage == Stage.SHARE_KEYS
