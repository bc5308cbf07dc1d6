"""Which secagg layer runs a round: the run-config flag ``layer`` (+ ``dp``) -> workflow and mods.

:func:`build_workflow` validates the whole layer configuration up front (bit budget,
thresholds, DP parameters) and raises :class:`~secagg.errors.ConfigError` naming the bad
parameter before any message is sent. :func:`client_mods` is the list of client mods to
install on a ClientApp; each mod only acts on messages of its own protocol, so installing
all of them is harmless for the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from secagg.errors import ConfigError
from secagg.integrations.flower.dp import DPFedAvgWorkflow, dp_clip_mod, open_ledger
from secagg.integrations.flower.he import HEWorkflow, he_mod
from secagg.integrations.flower.smpc import SecAggWorkflow, secagg_mod
from secagg.integrations.flower.workflow import PlaintextWorkflow, RoundWorkflow

LAYERS = ("plaintext", "secagg", "secaggplus", "ckks", "paillier")

if TYPE_CHECKING:
    from secagg.integrations.flower.app import FlowerAppConfig


def build_workflow(cfg: "FlowerAppConfig") -> RoundWorkflow:
    """The server-side workflow for ``cfg.layer`` (wrapped in DP-FedAvg when ``cfg.dp``)."""
    common = {"stage_timeout_s": cfg.stage_timeout_s, "min_clients": cfg.min_nodes, "straggler_grace_s": cfg.straggler_grace_s or None}
    if cfg.layer == "plaintext":
        inner: RoundWorkflow = PlaintextWorkflow(**common)
    elif cfg.layer in ("secagg", "secaggplus"):
        inner = SecAggWorkflow(plus=cfg.layer == "secaggplus", threshold=cfg.threshold, degree=cfg.neighbours, clip=cfg.clip,
                               bits=cfg.bits, modulus_bits=cfg.modulus_bits, max_weight=cfg.max_weight, **common)
    elif cfg.layer in ("ckks", "paillier"):
        inner = HEWorkflow(cfg.layer, value_bound=cfg.clip, **common)
    else:
        raise ConfigError(f"layer must be one of {LAYERS}, got {cfg.layer!r}")
    if cfg.dp:
        ledger = open_ledger(cfg.dp_ledger_path, cfg.dp_epsilon, cfg.dp_delta, metadata={"app": "secagg flower example", "layer": cfg.layer})
        return DPFedAvgWorkflow(inner, clip_norm=cfg.dp_clip, noise_multiplier=cfg.dp_noise_multiplier, ledger=ledger,
                                sampling_rate=cfg.dp_sampling_rate, expected_clients=cfg.dp_expected_clients or None)
    return inner


def client_mods() -> list:
    """Client mods of every layer, outermost first: the DP clipping mod is innermost (next to
    the training function) so the secure-aggregation mods mask/encrypt the clipped update."""
    return [secagg_mod, he_mod, dp_clip_mod]
