"""DP-FedAvg (McMahan et al., ICLR 2018) with secagg's privacy ledger, around any round workflow.

What it guarantees
------------------
Client-level (epsilon, delta)-DP of the sequence of released global-model updates under
add/remove-one-client neighbouring, as accounted by :mod:`secagg.dp` from the ledger:

* client side, :func:`dp_clip_mod` (installed *inside* the secure-aggregation mods, next
  to the unchanged training function) clips each node's delta to L2 norm ``clip_norm``
  and sets its weight to 1, so one client changes the sum by at most ``clip_norm``;
* server side, :class:`DPFedAvgWorkflow` runs the inner workflow (plaintext, our
  SecAgg/SecAgg+, or HE), adds Gaussian noise ``N(0, (z * clip_norm)^2 I)`` to the *sum*
  of the clipped updates, divides by the (public, ledgered) number of participants, and
  records the round as a :class:`secagg.dp.SampledGaussianEvent` in the hash-chained
  :class:`secagg.dp.PrivacyLedger` *before* returning it (write-ahead). The budget guard
  runs before any message of the round is sent, so an exhausted budget stops training
  without touching a client (:class:`secagg.dp.PrivacyBudgetExceeded`).

Trust: this is *central* DP: the ServerApp sees the un-noised aggregate (with secure
aggregation or HE it still never sees an individual update) and is trusted to add the
noise. Distributed DP (clients add discrete Gaussian noise before masking,
:class:`secagg.dp.DistributedDiscreteGaussianEvent`) is not wired into Flower here.

Sampling: the example app asks every connected node each round; the ledger records
``sampling_rate`` (default 1.0, full participation) as configured. Units: ``clip_norm``
in the L2 norm of the flat parameter delta, ``noise_multiplier`` dimensionless (noise std
on the sum / clip_norm), epsilon/delta as in :mod:`secagg.dp.events`.

Clipping and noise are :func:`secagg.dp.mechanisms.clip_l2` and
:func:`secagg.dp.mechanisms.gaussian_noise` (OS CSPRNG, Box-Muller in float64; see that
module for the floating-point caveat). Costs: O(L) per node and per round.
"""

from __future__ import annotations

import math
import os
import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid

from secagg.dp import PrivacyLedger, SampledGaussianEvent
from secagg.dp.mechanisms import clip_l2, gaussian_noise
from secagg.errors import ConfigError, DataError
from secagg.integrations.flower.records import NUM_EXAMPLES, TRAIN_METRICS, UPDATE, update_from_reply, vector_to_record
from secagg.integrations.flower.workflow import FlowerRoundResult, RoundWorkflow

DP_RECORD = "secagg.dp"
MECHANISM = "dp-fedavg-central-gaussian"


def dp_clip_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: clip the training reply's delta to ``clip-norm`` and weight it 1 (DP-FedAvg)."""
    if msg.metadata.message_type != MessageType.TRAIN or DP_RECORD not in msg.content.config_records:
        return call_next(msg, context)
    c = msg.content.config_records[DP_RECORD].get("clip-norm")
    if not isinstance(c, float) or not (math.isfinite(c) and c > 0):
        raise ConfigError(f"dp mod: clip-norm must be a finite float > 0, got {c!r}")
    reply = call_next(msg, context)
    if reply.has_error() or UPDATE not in reply.content.array_records:
        return reply  # not a training reply (e.g. an outer protocol's stage): nothing to clip
    delta, _ = update_from_reply(reply.content, where="local training")
    clipped, _norm = clip_l2(delta, c)
    out = RecordDict({k: v for k, v in reply.content.items() if k not in (UPDATE, TRAIN_METRICS)})
    out[UPDATE] = vector_to_record(clipped.astype(np.float32))
    out[TRAIN_METRICS] = MetricRecord({NUM_EXAMPLES: 1})  # uniform weights: sensitivity clip_norm per client
    return Message(out, reply_to=msg)


class DPFedAvgWorkflow(RoundWorkflow):
    """Central-DP FedAvg around ``inner`` (see the module docstring).

    ``ledger``: an open :class:`secagg.dp.PrivacyLedger` (its budget and delta apply).
    ``sampling_rate``: the probability with which a client takes part in a round, as the
    accountant must assume it (1.0 = every client every round).
    ``expected_clients``: the denominator of the released mean, ``sampling_rate * N`` for N
    clients; required when ``sampling_rate < 1``, because dividing by the realized number
    of participants would release that (private, under add/remove) number unprotected.
    With ``sampling_rate == 1`` the realized count is used.
    """

    def __init__(self, inner: RoundWorkflow, *, clip_norm: float, noise_multiplier: float, ledger: PrivacyLedger,
                 sampling_rate: float = 1.0, expected_clients: float | None = None) -> None:
        super().__init__(inner.stage_timeout_s, inner.min_clients, inner.straggler_grace_s)
        if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
            raise ConfigError(f"dp clip_norm must be a finite number > 0, got {clip_norm!r}")
        if not isinstance(ledger, PrivacyLedger):
            raise ConfigError(f"ledger must be a secagg.dp.PrivacyLedger, got {type(ledger).__name__}")
        self.event = SampledGaussianEvent(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate)  # validates z, q
        if sampling_rate < 1.0 and expected_clients is None:
            raise ConfigError(f"dp: expected_clients (= sampling_rate * number of clients) is required with "
                              f"sampling_rate={sampling_rate} < 1: the realized participant count is not private")
        if expected_clients is not None and not (math.isfinite(expected_clients) and expected_clients > 0):
            raise ConfigError(f"dp: expected_clients must be a finite number > 0, got {expected_clients!r}")
        self.expected_clients = expected_clients
        self.inner, self.clip_norm, self.ledger = inner, float(clip_norm), ledger
        self.name = f"dp-{inner.name}"
        ledger.check_round(self.event)  # refuse up front if even one round exceeds the budget

    def run_round(self, grid: Grid, nodes: list[int], train_content: RecordDict, round_index: int) -> FlowerRoundResult:
        self.ledger.check_round(self.event)  # budget guard before any message of the round
        content = RecordDict(dict(train_content))
        content[DP_RECORD] = ConfigRecord({"clip-norm": self.clip_norm})
        res = self.inner.run_round(grid, nodes, content, round_index)
        k = len(res.included)
        if k < 1 or abs(res.metrics.get("num_examples", k) - k) > 1e-6:
            raise DataError(f"{self.name}: expected {k} unit weights in the aggregate, got num_examples={res.metrics.get('num_examples')}"
                            " (is dp_clip_mod installed on every node?)")
        total = res.delta.astype(np.float64) * k
        noisy_sum = total + gaussian_noise(total.shape[0], self.event.noise_multiplier * self.clip_norm)
        entry = self.ledger.record_round(round_index, self.event, res.included, clip_norm=self.clip_norm, mechanism=MECHANISM,
                                         extra={"inner": self.inner.name, "dropped": list(res.dropped)})
        denom = float(self.expected_clients) if self.expected_clients is not None else k
        res.delta = (noisy_sum / denom).astype(np.float32)
        res.metrics.update({"dp_epsilon_spent": float(entry["epsilon_after"]),
                            "dp_noise_std_on_mean": self.event.noise_multiplier * self.clip_norm / denom})
        return res

    def report(self) -> dict:
        return {"ledger": str(self.ledger.path), "ledger_head": self.ledger.head, "epsilon_spent": self.ledger.spent_epsilon(),
                "budget": {"epsilon": self.ledger.budget.epsilon, "delta": self.ledger.budget.delta}}


def open_ledger(path: str, epsilon: float, delta: float, *, metadata: dict | None = None) -> PrivacyLedger:
    """Resume the ledger at ``path`` if it exists (verifying its chain), else create it with the budget."""
    from secagg.dp import PrivacyBudget

    if not path:
        raise ConfigError("dp needs a ledger path (run config 'dp-ledger-path'): every noisy round is recorded there")
    if os.path.exists(path):
        led = PrivacyLedger.open(path)
        if not (math.isclose(led.budget.epsilon, epsilon) and math.isclose(led.budget.delta, delta)):
            raise ConfigError(f"ledger {path} has budget (epsilon={led.budget.epsilon}, delta={led.budget.delta}); "
                              f"the run asks for ({epsilon}, {delta}). Use a new ledger path for a new budget")
        return led
    return PrivacyLedger.create(path, PrivacyBudget(epsilon, delta), metadata=metadata)

