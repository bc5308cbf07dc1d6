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


def _central_dp(**kw: Any) -> Aggregator:
    """DP-FedAvg without a ledger (experiments); build CentralDPAggregator with a ledger for audits."""
    from secagg.fl.dp_aggregators import CentralDPAggregator

    kw.setdefault("noise_multiplier", 1.0)
    kw.setdefault("clip_norm", 1.0)
    return CentralDPAggregator(**kw)


def _robust(cls_name: str) -> Callable[..., Aggregator]:
    def make(**kw: Any) -> Aggregator:
        from secagg.fl import robust

        kw.setdefault("f", 1)
        return getattr(robust, cls_name)(**kw)

    return make


def _compressed(bits: int | None, topk: float | None) -> Callable[..., Aggregator]:
    def make(**kw: Any) -> Aggregator:
        from secagg.fl.compression import CompressedAggregator, TopK, UniformQuantizer

        q = UniformQuantizer(bits) if bits else None
        comp = TopK(topk, value_quantizer=q) if topk else q
        return CompressedAggregator(WeightedMeanAggregator(**kw), comp)

    return make


_FACTORIES: dict[str, Callable[..., Aggregator]] = {
    "plaintext": lambda **kw: WeightedMeanAggregator(**kw),
    "secagg": _secagg,
    "secagg+": _secagg_plus,
    "ckks": _ckks,
    "paillier": _paillier,
    "dp-central": _central_dp,
    "krum": _robust("Krum"),
    "multi-krum": _robust("MultiKrum"),
    "median": _robust("CoordinateMedian"),
    "trimmed-mean": _robust("TrimmedMean"),
    "bulyan": _robust("Bulyan"),
    "q8": _compressed(8, None),
    "q4": _compressed(4, None),
    "top1%": _compressed(None, 0.01),
    "top1%+q8": _compressed(8, 0.01),
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
