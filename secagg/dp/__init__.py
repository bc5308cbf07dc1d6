"""Differential privacy for federated learning: mechanisms, accountants, privacy ledger.

numpy only (no torch). See docs/dp.md. Modules:
``events`` (mechanisms as data), ``accountants`` (Opacus / dp-accounting behind one
interface), ``calibrate`` (noise for a target epsilon), ``ledger`` (append-only hash-chained
privacy ledger with a budget guard), ``mechanisms`` (clipping, Gaussian noise, adaptive
clipping), ``discrete`` (exact discrete Gaussian, distributed DP for secure aggregation),
``cli`` (``secagg privacy audit|calibrate``).
"""

from secagg.dp.events import DistributedDiscreteGaussianEvent, Neighbouring, SampledGaussianEvent, Sampling
from secagg.dp.ledger import PrivacyBudget, PrivacyBudgetExceeded, PrivacyLedger, read_ledger

__all__ = ["SampledGaussianEvent", "DistributedDiscreteGaussianEvent", "Neighbouring", "Sampling",
           "PrivacyLedger", "PrivacyBudget", "PrivacyBudgetExceeded", "read_ledger"]
