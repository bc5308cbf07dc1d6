"""Models travel as flat float32 vectors.

``flatten`` concatenates a module's parameters (in ``named_parameters`` order) into
one float32 vector; ``unflatten`` writes such a vector back. Buffers (e.g. batch-norm
running statistics) are not parameters and do not travel; the detectors in
:mod:`secagg.detect` have none.
"""

from __future__ import annotations

import numpy as np
import torch

from secagg.errors import DataError


def num_params(module: torch.nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def flatten(module: torch.nn.Module) -> np.ndarray:
    """Return the module's parameters as one contiguous float32 vector (a copy)."""
    with torch.no_grad():
        parts = [p.detach().reshape(-1).to(torch.float32).cpu() for p in module.parameters()]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return torch.cat(parts).numpy().copy()


def unflatten(module: torch.nn.Module, vec: np.ndarray) -> None:
    """Copy ``vec`` into the module's parameters, in place.

    Raises :class:`DataError` if the length does not match or ``vec`` is not finite;
    the module is unchanged in that case.
    """
    v = np.asarray(vec)
    expected = num_params(module)
    if v.ndim != 1 or v.shape[0] != expected:
        raise DataError(f"unflatten: vector of shape {v.shape} does not fit a model with {expected} parameters")
    if not np.all(np.isfinite(v)):
        raise DataError("unflatten: vector contains NaN or Inf")
    t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for p in module.parameters():
            n = p.numel()
            p.copy_(t[offset : offset + n].view_as(p).to(p.dtype))
            offset += n


def to_tensors(module: torch.nn.Module, vec: np.ndarray) -> list[torch.Tensor]:
    """Split ``vec`` into detached tensors shaped like the module's parameters (FedProx centre)."""
    v = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32))
    out, offset = [], 0
    for p in module.parameters():
        n = p.numel()
        out.append(v[offset : offset + n].view_as(p).clone())
        offset += n
    if offset != v.numel():
        raise DataError(f"to_tensors: vector has {v.numel()} values, model has {offset} parameters")
    return out
