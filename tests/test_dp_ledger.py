"""Privacy ledger: hash chain, crash tolerance (SIGKILL), resume, tamper detection, budget guard, CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import dp_accounting
import pytest
from dp_accounting import rdp

from secagg.dp.cli import audit, main
from secagg.dp.events import DistributedDiscreteGaussianEvent, SampledGaussianEvent
from secagg.dp.ledger import (
    LedgerIntegrityError,
    PrivacyBudget,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    entry_hash,
    read_ledger,
)
from secagg.errors import ConfigError, DataError

DELTA = 1e-5


def _make(path, rounds=5, eps=50.0, q=0.1):
    led = PrivacyLedger.create(path, PrivacyBudget(eps, DELTA), run_id="test")
    for r in range(rounds):
        led.record_round(r, SampledGaussianEvent(1.0, q), [r, r + 1, 100], clip_norm=1.0,
                         mechanism="central_gaussian")
    return led


def test_roundtrip_and_epsilon_matches_engine(tmp_path):
    p = tmp_path / "l.jsonl"
    led = _make(p, rounds=6)
    c = read_ledger(p)
    assert c.ok and len(c.rounds) == 6 and c.torn_tail is None and c.head == led.head
    d = rdp.RdpAccountant()
    d.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 6)
    assert led.spent_epsilon() == pytest.approx(d.get_epsilon(DELTA), rel=1e-9)
    assert c.rounds[3]["participants"] == [3, 4, 100]
    assert c.rounds[3]["noise_multiplier"] == 1.0 and c.rounds[3]["delta"] == DELTA
    ce = led.client_epsilons()
    assert set(ce) == {0, 1, 2, 3, 4, 5, 6, 100}
    assert ce[0] <= ce[100] <= led.spent_epsilon()  # capped by the amplified population figure
    # full participation (no amplification): a client in 1 of 6 rounds spent less than one in all 6
    led2 = _make(tmp_path / "full.jsonl", rounds=6, q=1.0)
    ce2 = led2.client_epsilons()
    one = rdp.RdpAccountant()
    one.compose(dp_accounting.GaussianDpEvent(1.0))
    assert ce2[0] == pytest.approx(one.get_epsilon(DELTA), rel=1e-9)
    assert ce2[0] < ce2[100] == pytest.approx(led2.spent_epsilon(), rel=1e-9)
    with pytest.raises(ConfigError, match="already exists"):
        PrivacyLedger.create(p, PrivacyBudget(1.0, DELTA))
    with pytest.raises(ConfigError, match="round_index"):
        led.record_round(3, SampledGaussianEvent(1.0, 0.1), [1], clip_norm=1.0, mechanism="x")


def test_budget_guard_refuses_and_writes_nothing(tmp_path):
    p = tmp_path / "l.jsonl"
    led = PrivacyLedger.create(p, PrivacyBudget(1.0, DELTA))
    led.record_round(0, SampledGaussianEvent(2.0, 0.05), [1], clip_norm=1.0, mechanism="central_gaussian")
    size = p.stat().st_size
    with pytest.raises(PrivacyBudgetExceeded, match=r"refusing to start round 1.*budget epsilon=1"):
        led.record_round(1, SampledGaussianEvent(0.5, 1.0), [1], clip_norm=1.0, mechanism="central_gaussian")
    assert p.stat().st_size == size and len(read_ledger(p).rounds) == 1
    with pytest.raises(PrivacyBudgetExceeded):
        led.check_round(SampledGaussianEvent(0.5, 1.0))


@pytest.mark.parametrize("eps,delta,param", [(0, 1e-5, "epsilon"), (-1, 1e-5, "epsilon"),
                                             (1, 0, "delta"), (1, 1, "delta"), (float("inf"), 1e-5, "epsilon")])
def test_budget_rejects_bad_values(eps, delta, param):
    with pytest.raises(ConfigError, match=param):
        PrivacyBudget(eps, delta)


def test_torn_last_line_is_reported_and_resume_continues_chain(tmp_path):
    p = tmp_path / "l.jsonl"
    _make(p, rounds=3)
    with open(p, "ab") as f:
        f.write(b'{"type":"round","round_index":3,"par')  # a write cut short by a crash
    c = read_ledger(p)
    assert c.ok and len(c.rounds) == 3 and c.torn_tail.startswith(b'{"type"')
    r = audit(str(p), ["dpa-rdp"])
    assert r["ok"] and r["torn_tail_bytes"] > 0
    led = PrivacyLedger.open(p)
    led.record_round(3, SampledGaussianEvent(1.0, 0.1), [7], clip_norm=1.0, mechanism="central_gaussian")
    c = read_ledger(p)
    assert c.ok and c.torn_tail is None and [e["type"] for e in c.entries][-2:] == ["recovery", "round"]
    assert [r["round_index"] for r in c.rounds] == [0, 1, 2, 3]


WRITER = textwrap.dedent("""
    import sys
    from secagg.dp.events import SampledGaussianEvent
    from secagg.dp.ledger import PrivacyBudget, PrivacyLedger
    path = sys.argv[1]
    led = PrivacyLedger.create(path, PrivacyBudget(1e6, 1e-5))
    r = 0
    while True:
        led.record_round(r, SampledGaussianEvent(1.0, 0.1), list(range(r % 50, r % 50 + 200)), clip_norm=1.0,
                         mechanism="central_gaussian", check_budget=False)
        print(r, flush=True)
        r += 1
""")


def test_ledger_survives_sigkill_of_writer_and_resumes(tmp_path):
    p = tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(p)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(30):  # let it write some rounds, then kill it without warning, mid-loop
            proc.stdout.readline()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    c = read_ledger(p)
    assert c.ok, c.problems
    assert len(c.rounds) >= 30
    led = PrivacyLedger.open(p)
    nxt = led.next_round_index
    assert nxt == len(c.rounds)
    led.record_round(nxt, SampledGaussianEvent(1.0, 0.1), [1, 2], clip_norm=1.0, mechanism="central_gaussian",
                     check_budget=False)
    c2 = read_ledger(p)
    assert c2.ok and len(c2.rounds) == len(c.rounds) + 1
    assert c2.entries[len(c.entries)]["prev"] == c.head  # the chain continued from the old head


def _lines(p):
    return p.read_bytes().splitlines(keepends=True)


def test_tampering_is_detected(tmp_path, capsys):
    p = tmp_path / "l.jsonl"
    _make(p, rounds=5)
    orig = _lines(p)

    # 1. lower the recorded noise of round 2 consistently in all its fields
    e = json.loads(orig[3])
    e["noise_multiplier"] = 5.0
    e["event"]["noise_multiplier"] = 5.0
    p.write_bytes(b"".join(orig[:3] + [json.dumps(e).encode() + b"\n"] + orig[4:]))
    c = read_ledger(p)
    assert not c.ok and any("hash mismatch" in x for x in c.problems)
    assert main(["privacy", "audit", str(p), "--accountants", "dpa-rdp"]) == 2
    assert "FAILED" in capsys.readouterr().out
    with pytest.raises(LedgerIntegrityError):
        PrivacyLedger.open(p)

    # 2. ... and recompute that entry's hash: the next entry's link breaks
    e["hash"] = entry_hash(e)
    p.write_bytes(b"".join(orig[:3] + [json.dumps(e).encode() + b"\n"] + orig[4:]))
    assert any("chain broken" in x for x in read_ledger(p).problems)

    # 3. delete a round in the middle
    p.write_bytes(b"".join(orig[:2] + orig[3:]))
    assert any("seq" in x for x in read_ledger(p).problems)

    # 4. drop the last round: the chain is intact, only an anchor or the expected count reveals it
    p.write_bytes(b"".join(orig[:-1]))
    assert read_ledger(p).ok
    last_head = json.loads(orig[-1])["hash"]
    assert main(["privacy", "audit", str(p), "--accountants", "dpa-rdp", "--anchor", last_head]) == 2
    assert main(["privacy", "audit", str(p), "--accountants", "dpa-rdp", "--rounds-expected", "5"]) == 2

    # 5. inconsistent entry: top-level field disagrees with its event, hashes recomputed
    p.write_bytes(b"".join(orig))
    led = PrivacyLedger.open(p)
    body = {"type": "round", "round_index": 9, "time": 0.0, "mechanism": "central_gaussian",
            "event": SampledGaussianEvent(1.0, 0.1).to_dict(), "sampling_rate": 0.1, "noise_multiplier": 3.0,
            "clip_norm": 1.0, "participants": [1], "delta": DELTA, "extra": {}}
    led._append(body)
    assert any("disagrees" in x for x in read_ledger(p).problems)


def test_distributed_event_consistency_checked(tmp_path):
    p = tmp_path / "l.jsonl"
    led = PrivacyLedger.create(p, PrivacyBudget(100.0, DELTA))
    ev = DistributedDiscreteGaussianEvent(50.0, 500.0, 400.0, survivors=3, dim=16)
    with pytest.raises(ConfigError, match="survivors"):
        led.record_round(0, ev, [1, 2], clip_norm=1.0, mechanism="distributed_dgauss")
    led.record_round(0, ev, [1, 2, 3], clip_norm=1.0, mechanism="distributed_dgauss")
    assert read_ledger(p).ok


def test_cli_audit_json_and_calibrate(tmp_path, capsys):
    p = tmp_path / "l.jsonl"
    _make(p, rounds=4)
    assert main(["privacy", "audit", str(p), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["rounds"] == 4 and r["clients"] == 6
    tab = r["epsilon_by_accountant"]
    assert set(tab) == {"opacus-rdp", "opacus-prv", "opacus-gdp", "dpa-rdp", "dpa-pld"}
    assert tab["dpa-pld"] <= tab["dpa-rdp"]
    assert r["remaining_epsilon"] == pytest.approx(50.0 - tab["dpa-rdp"])
    assert set(r["client_epsilon_percentiles"]) == {"p0", "p50", "p90", "p99", "p100"}
    assert main(["privacy", "audit", str(p)]) == 0
    out = capsys.readouterr().out
    assert "opacus-prv" in out and "remaining" in out and "OK" in out
    assert main(["privacy", "calibrate", "--epsilon", "1", "--delta", "1e-5", "--rounds", "50",
                 "--sampling-rate", "0.01", "--json"]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert cal["achieved_epsilon"] <= 1.0 and cal["noise_multiplier"] > 0
    assert main(["privacy", "calibrate", "--epsilon", "-1", "--delta", "1e-5", "--rounds", "50",
                 "--sampling-rate", "0.01"]) == 2
    assert "epsilon" in capsys.readouterr().err
    with pytest.raises(DataError, match="not found"):
        read_ledger(tmp_path / "missing.jsonl")
    assert main(["privacy", "audit", str(tmp_path / "missing.jsonl")]) == 2


def test_fixed_size_round_with_more_participants_than_sample_is_refused_and_flagged(tmp_path):
    p = tmp_path / "f.jsonl"
    led = PrivacyLedger.create(p, PrivacyBudget(50.0, DELTA), neighbouring="replace_one")
    ev = SampledGaussianEvent(1.0, 0.1, 1, "fixed_size", population=10)  # ceil(0.1 * 10) = 1 client
    with pytest.raises(ConfigError, match="sample_size"):
        led.record_round(0, ev, [1, 2, 3], clip_norm=1.0, mechanism="central_gaussian")
    led.record_round(0, SampledGaussianEvent(1.0, 0.1, 1, "fixed_size", 10, sample_size=3), [1, 2, 3],
                     clip_norm=1.0, mechanism="central_gaussian")
    led.record_round(1, ev, [4], clip_norm=1.0, mechanism="central_gaussian")
    assert read_ledger(p).ok
    assert main(["privacy", "audit", str(p), "--accountants", "dpa-rdp"]) == 0
    # a round written past the check (e.g. by an older version): the audit flags it
    led._append({"type": "round", "round_index": 2, "time": 0.0, "mechanism": "central_gaussian",
                 "event": ev.to_dict(), "sampling_rate": 0.1, "noise_multiplier": 1.0, "clip_norm": 1.0,
                 "participants": [1, 2, 3], "delta": DELTA, "extra": {}})
    assert any("exceed the fixed sample_size 1" in x for x in read_ledger(p).problems)
    assert main(["privacy", "audit", str(p), "--accountants", "dpa-rdp"]) == 2


def test_guard_accountant_must_be_a_certified_upper_bound(tmp_path):
    with pytest.raises(ConfigError, match=r"accountant must be one of .*dpa-rdp.*opacus-gdp"):
        PrivacyLedger.create(tmp_path / "g.jsonl", PrivacyBudget(3.0, DELTA), accountant="opacus-gdp")
    assert not (tmp_path / "g.jsonl").exists()
    p = tmp_path / "ok.jsonl"
    led = PrivacyLedger.create(p, PrivacyBudget(3.0, DELTA), accountant="dpa-pld")
    led.record_round(0, SampledGaussianEvent(1.0, 0.2), [1], clip_norm=1.0, mechanism="central_gaussian")
    with pytest.raises(ConfigError, match="opacus-gdp"):
        PrivacyLedger.open(p, accountant="opacus-gdp")
    for name in ("dpa-rdp", "dpa-pld", "opacus-rdp", "opacus-prv"):
        assert PrivacyLedger.open(p, accountant=name).accountant == name


def test_audit_fails_when_any_certified_accountant_exceeds_the_budget(tmp_path, capsys):
    # z=1, q=0.2, 5 rounds at delta 1e-5: gdp ~2.38 < 2.6 < pld ~3.88 < rdp ~4.54
    p = tmp_path / "o.jsonl"
    led = PrivacyLedger.create(p, PrivacyBudget(2.6, DELTA), accountant="dpa-pld")
    for r in range(5):
        led.record_round(r, SampledGaussianEvent(1.0, 0.2), [1, 2], clip_norm=1.0, mechanism="central_gaussian",
                         check_budget=False)
    r = audit(str(p), ["opacus-gdp", "dpa-rdp"])
    assert r["epsilon_by_accountant"]["opacus-gdp"] < 2.6 < r["epsilon_by_accountant"]["dpa-rdp"]
    assert not r["ok"] and any("dpa-rdp" in x and "exceeds the budget" in x for x in r["problems"])
    assert not any("opacus-gdp" in x for x in r["problems"])
    # a ledger whose header names opacus-gdp as guard (written before the check existed) fails the audit
    q = tmp_path / "old.jsonl"
    lines = p.read_bytes().split(b"\n")
    hdr = json.loads(lines[0])
    hdr["accountant"], hdr["budget"]["epsilon"] = "opacus-gdp", 100.0
    hdr["hash"] = entry_hash(hdr)
    entries = [hdr]
    for raw in lines[1:-1]:
        e = json.loads(raw)
        e["prev"] = entries[-1]["hash"]
        e["hash"] = entry_hash(e)
        entries.append(e)
    q.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in entries))
    assert read_ledger(q).ok
    r = audit(str(q), ["dpa-rdp"])
    assert not r["ok"] and any("not a certified upper bound" in x for x in r["problems"])
    assert r["spent_epsilon"] == pytest.approx(r["epsilon_by_accountant"]["dpa-rdp"])
    assert main(["privacy", "audit", str(q), "--accountants", "dpa-rdp"]) == 2
