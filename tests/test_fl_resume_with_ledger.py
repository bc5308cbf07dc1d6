"""A DP training run killed mid-way resumes from its checkpoint and continues its privacy ledger."""

from __future__ import annotations

import numpy as np

from secagg.dp import PrivacyBudget, PrivacyLedger, read_ledger
from secagg.fl.core import FedConfig, load_checkpoint, run_federated
from secagg.fl.dp_aggregators import CentralDPAggregator
from tests.test_fl_core import TinyRegressor, make_clients


def test_resumed_dp_run_continues_ledger_chain_and_accounts_all_rounds(tmp_path):
    clients = make_clients([20, 20, 20])
    ledger_path, ck = tmp_path / "ledger.jsonl", tmp_path / "model.ckpt"
    kw = dict(X_val=clients[0].X, y_val=clients[0].y, checkpoint=ck)

    ledger = PrivacyLedger.create(ledger_path, PrivacyBudget(50.0, 1e-5))
    agg = CentralDPAggregator(noise_multiplier=2.0, clip_norm=1.0, ledger=ledger)
    run_federated(lambda: TinyRegressor(), clients, agg, FedConfig(rounds=3, lr=0.1), **kw)  # "killed" after round 2
    eps_3 = ledger.spent_epsilon()

    reopened = PrivacyLedger.open(ledger_path)
    assert reopened.next_round_index == 3 and load_checkpoint(ck)[0] == 2
    agg = CentralDPAggregator(noise_multiplier=2.0, clip_norm=1.0, ledger=reopened)
    seen = []
    run_federated(lambda: TinyRegressor(), clients, agg, FedConfig(rounds=6, lr=0.1),
                  start_round=reopened.next_round_index, round_callback=lambda r: seen.append(r.round), **kw)
    assert seen == [3, 4, 5]
    audit = read_ledger(ledger_path)
    assert audit.ok and len(audit.rounds) == 6
    fresh = PrivacyLedger.create(tmp_path / "fresh.jsonl", PrivacyBudget(50.0, 1e-5))
    agg = CentralDPAggregator(noise_multiplier=2.0, clip_norm=1.0, ledger=fresh)
    run_federated(lambda: TinyRegressor(), clients, agg, FedConfig(rounds=6, lr=0.1), X_val=clients[0].X, y_val=clients[0].y)
    assert PrivacyLedger.open(ledger_path).spent_epsilon() == np.float64(fresh.spent_epsilon()) > eps_3
