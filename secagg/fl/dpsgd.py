"""Example-level DP-SGD for one client's local training, through Opacus.

Abadi et al. 2016 ("Deep Learning with Differential Privacy"): per-example gradient
clipping to ``max_grad_norm`` and Gaussian noise ``noise_multiplier * max_grad_norm`` on the
summed batch gradient, batches drawn by Poisson sampling. Everything DP here is done by
``opacus.PrivacyEngine.make_private`` (the one obvious entry point); this module only
adapts our inputs (arrays or a DataLoader, an unsupervised autoencoder target), validates
the model with ``opacus.validators.ModuleValidator`` (failing fast with the fix), trains,
and returns Opacus's own epsilon.

Unit of privacy: one training *example* of this client (add/remove), not a client. Client-
level guarantees come from :mod:`secagg.fl.dp_aggregators`; the two compose but are
different statements. Noise comes from torch's generator unless ``secure_mode=True``
(Opacus then needs the ``torchcsprng`` package, not installed by default).
Cost: ~2-3x plain SGD (per-sample gradients), O(batch x params) memory.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secagg.dp.events import SampledGaussianEvent, check_delta, check_count, check_noise_multiplier
from secagg.errors import ConfigError, DataError

__all__ = ["DPSGDResult", "train_dpsgd"]


@dataclass
class DPSGDResult:
    """Outcome of :func:`train_dpsgd`; ``epsilon`` is Opacus's at ``delta``."""

    epsilon: float
    delta: float
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    epoch_losses: list[float] = field(default_factory=list)

    def event(self) -> SampledGaussianEvent:
        """The example-level history as one event (for re-accounting with secagg.dp.accountants)."""
        return SampledGaussianEvent(self.noise_multiplier, self.sample_rate, max(self.steps, 1))


def _loader(data, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, np.ndarray):
        data = (data,)
    if not isinstance(data, (tuple, list)) or not data:
        raise DataError("data must be a DataLoader, an array, or a tuple of arrays (X[, y])")
    tensors = []
    for a in data:
        a = np.asarray(a)
        if a.ndim < 1 or a.shape[0] != np.asarray(data[0]).shape[0]:
            raise DataError("data arrays must share their first dimension")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise DataError("data contains NaN or Inf")
        tensors.append(torch.as_tensor(a, dtype=torch.float32 if np.issubdtype(a.dtype, np.floating) else None))
    if tensors[0].shape[0] == 0:
        raise DataError("data is empty")
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True)


def train_dpsgd(model: nn.Module, data, *, noise_multiplier: float, max_grad_norm: float, epochs: int = 1,
                lr: float = 1e-3, batch_size: int = 64, delta: float = 1e-5, optimizer: str = "adam",
                loss_fn: Callable | None = None, accountant: str = "rdp", secure_mode: bool = False) -> DPSGDResult:
    """Train ``model`` in place with DP-SGD (Opacus) and return the spent example-level epsilon.

    ``data``: a DataLoader or arrays. With a single array (or a batch of one tensor) the
    target is the input itself (autoencoder reconstruction, MSE); with (X, y) the loss is
    ``loss_fn(model(X), y)`` (default MSE). ``accountant``: 'rdp', 'prv' or 'gdp' (Opacus).
    Raises :class:`ConfigError` naming a bad parameter, or listing what Opacus cannot
    privatize in ``model`` (e.g. BatchNorm; fix with ``opacus.validators.ModuleValidator.fix``).
    """
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    check_noise_multiplier(noise_multiplier)
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigError(f"max_grad_norm must be finite and > 0, got {max_grad_norm!r}")
    check_count(epochs, "epochs")
    check_count(batch_size, "batch_size")
    delta = check_delta(delta)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be finite and > 0, got {lr!r}")
    if accountant not in ("rdp", "prv", "gdp"):
        raise ConfigError(f"accountant must be 'rdp', 'prv' or 'gdp', got {accountant!r}")
    if optimizer not in ("adam", "sgd"):
        raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError("model cannot be trained with DP-SGD: " + "; ".join(str(e) for e in errors)
                          + " (opacus.validators.ModuleValidator.fix(model) replaces such layers)")
    loader = _loader(data, batch_size)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure_mode=False and GDP; documented above
        engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
        pmodel, popt, ploader = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                                    noise_multiplier=float(noise_multiplier),
                                                    max_grad_norm=float(max_grad_norm), poisson_sampling=True)
    loss_fn = loss_fn or nn.MSELoss()
    pmodel.train()
    losses = []
    steps = 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in ploader:
            batch = batch if isinstance(batch, (tuple, list)) else (batch,)
            x = batch[0]
            if x.shape[0] == 0:  # Poisson sampling can draw an empty batch; it is still a step
                popt.zero_grad()
                popt.step()
                steps += 1
                continue
            target = x if len(batch) == 1 else batch[1]
            popt.zero_grad()
            loss = loss_fn(pmodel(x), target)
            loss.backward()
            popt.step()
            steps += 1
            total += loss.item() * x.shape[0]
            count += x.shape[0]
        losses.append(total / max(count, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = float(engine.get_epsilon(delta))
    # Report the sampling rate Opacus itself accounted (1 / batches per epoch, not
    # batch_size / n), so that DPSGDResult.event() re-accounts to the same epsilon.
    rates = {float(q) for _, q, _ in getattr(engine.accountant, "history", [])}
    sample_rate = rates.pop() if len(rates) == 1 else 1.0 / len(ploader)
    return DPSGDResult(eps, delta, steps, sample_rate, float(noise_multiplier), float(max_grad_norm), accountant, losses)
