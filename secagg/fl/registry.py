"""Aggregators by name, for the CLI and benchmark scripts.

Imports are lazy so that using the plaintext core never loads TenSEAL or phe.
"""

from __future__ import annotations

from typing import Any, Callable

from secagg.errors import ConfigError
from secagg.fl.aggregator import Aggregator, WeightedMeanAggregator



def _secagg(**kw: Any) -> Aggregator:
    from secagg.fl.secure_aggregators import SecAggAggregator

    return SecAggAggregator(**kw)


def _secagg_plus(**kw: Any) -> Aggregator:
    from secagg.fl.secure_aggregators import SecAggAggregator

    return SecAggAggregator(secagg_plus=True, **kw)


def _ckks(**kw: Any) -> Aggregator:
    from secagg.fl.he_aggregators import CKKSAggregator

    return CKKSAggregator(**kw)


def _paillier(**kw: Any) -> Aggregator:
    from secagg.fl.he_aggregators import PaillierAggregator
    from secagg.he.paillier import PaillierConfig

    weighted = kw.pop("weighted", True)
    return PaillierAggregator(PaillierConfig(**kw), weighted=weighted)


_FACTORIES: dict[str, Callable[..., Aggregator]] = {
    "plaintext": lambda **kw: WeightedMeanAggregator(**kw),
    "secagg": _secagg,
    "secagg+": _secagg_plus,
    "ckks": _ckks,
    "paillier": _paillier,
}


def register(name: str, factory: Callable[..., Aggregator]) -> None:
    """Make ``factory`` available as ``make_aggregator(name)``."""
    _FACTORIES[name] = factory


def available() -> list[str]:
    return sorted(_FACTORIES)


def make_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """Build the aggregator called ``name`` (see :func:`available`)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ConfigError(f"unknown aggregator {name!r}; choose one of {available()}") from None
    return factory(**kwargs)
