"""Aggregators by name, for the CLI and benchmark scripts.

Imports are lazy so that using the plaintext core never loads TenSEAL or phe.
"""

from __future__ import annotations

from typing import Any, Callable

from secagg.errors import ConfigError
from secagg.fl.aggregator import Aggregator, WeightedMeanAggregator

_FACTORIES: dict[str, Callable[..., Aggregator]] = {
    "plaintext": lambda **kw: WeightedMeanAggregator(**kw),
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
