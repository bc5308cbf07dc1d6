"""Homomorphic-encryption aggregators for the FedAvg core (adapters over :mod:`secagg.he`).

:class:`CKKSAggregator` (TenSEAL CKKS) and :class:`PaillierAggregator` (packed Paillier)
run, inside one process, the full protocol of :mod:`secagg.he` for each round: every
client encrypts its delta and uploads the message, the server (public key only) adds the
weighted ciphertexts, and the clients decrypt the aggregate.

Threat model: as in :mod:`secagg.he` -- the server learns nothing about individual
updates or the aggregate; all clients share the secret key, so a client colluding with
the server could decrypt others' updates (use the smpc aggregators when that matters).
In this simulation all clients share one key object, and one decryption stands for the
identical decryption every client performs.

Accounting (per client, bytes actually serialized): ``upload_bytes`` is the client's
encrypted update message; ``download_bytes`` is the aggregate message each included
client receives. One-time key distribution (secret bundle, client to client; public
bundle to the server) is reported in ``metrics`` of the first round, not as round traffic.

Metrics: ``he_max_abs_error`` (measured against the plaintext weighted mean, which the
simulation can compute), ``he_error_bound`` (stated bound; exceeding it raises),
``he_encrypt_s_per_client`` / ``he_encrypt_s_total`` (client-side, clients encrypt in
parallel in a deployment, so per-client is the latency), ``he_aggregate_s`` (server),
``he_decrypt_s`` (one client), ``he_ciphertexts_per_client``, ``he_expansion_vs_float32``.

Costs: see :mod:`secagg.he.ckks` and :mod:`secagg.he.paillier`; O(n L) time, O(L) server memory.
"""

from __future__ import annotations

import abc
import time
from typing import Sequence

import numpy as np

from secagg.errors import ConfigError, ProtocolError
from secagg.fl.aggregator import AggregateResult, Aggregator, ClientUpdate, check_updates
from secagg.he.ckks import CKKSClient, CKKSKeyHolder, CKKSPreset, CKKSServer, _preset_from, choose_ckks_preset
from secagg.he.paillier import PaillierClient, PaillierConfig, PaillierKeyHolder, PaillierServer

__all__ = ["CKKSAggregator", "PaillierAggregator"]


def _plain_weighted_mean(updates: Sequence[ClientUpdate], weights: dict[int, int], included: tuple[int, ...]) -> np.ndarray:
    inc = set(included)
    sel = [u for u in updates if u.client_id in inc]
    w = np.array([weights[u.client_id] for u in sel], dtype=np.float64)
    x = np.stack([np.asarray(u.delta, dtype=np.float64) for u in sel])
    return (w[:, None] * x).sum(axis=0) / w.sum()


class _HEAggregatorBase(Aggregator):
    scheme = ""
    hides_individual_updates = True  # the server adds ciphertexts; it never decrypts one update

    def __init__(self, *, weighted: bool) -> None:
        self.weighted = bool(weighted)
        self._server = None
        self._client = None
        self._protocol_round = 0
        self._setup_metrics: dict[str, float] = {}

    @abc.abstractmethod
    def _setup(self, length: int, n_clients: int) -> None:
        """Generate keys (key holder), build the server from the public bundle and the clients' key object."""

    @abc.abstractmethod
    def _stated_bound(self, res, updates: Sequence[ClientUpdate]) -> float:
        """The scheme's stated max abs error for this round's decrypted mean."""

    @abc.abstractmethod
    def _ciphertexts(self, length: int) -> int:
        """Ciphertexts one client uploads for a ``length``-value update."""

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        length = check_updates(updates)
        if self._server is None:
            self._setup(length, len(updates))
        weights = {u.client_id: (int(u.num_examples) if self.weighted else 1) for u in updates}
        rnd = self._server.open_round(self._protocol_round, weights, length)
        up: dict[int, int] = {}
        enc_s: list[float] = []
        agg_s = 0.0
        for u in updates:
            t0 = time.perf_counter()
            msg = self._client.encrypt(u.delta, round_index=self._protocol_round, client_id=u.client_id)
            t1 = time.perf_counter()
            rnd.add(msg)
            agg_s += time.perf_counter() - t1
            enc_s.append(t1 - t0)
            up[u.client_id] = len(msg)
        t0 = time.perf_counter()
        agg = rnd.finish()
        agg_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        res = self._client.decrypt(agg, round_index=self._protocol_round)
        dec_s = time.perf_counter() - t0
        self._protocol_round += 1
        ref = _plain_weighted_mean(updates, weights, res.included)
        err = float(np.max(np.abs(res.mean - ref)))
        bound = self._stated_bound(res, updates)
        if not err <= bound:
            raise ProtocolError(f"{self.name}: decrypted mean deviates by {err:.3g} from the plaintext mean, above the stated bound {bound:.3g}")
        n_ct = self._ciphertexts(length)
        metrics = {
            "he_max_abs_error": err,
            "he_error_bound": bound,
            "he_encrypt_s_per_client": float(np.mean(enc_s)),
            "he_encrypt_s_total": float(np.sum(enc_s)),
            "he_aggregate_s": agg_s,
            "he_decrypt_s": dec_s,
            "he_ciphertexts_per_client": float(n_ct),
            "he_expansion_vs_float32": float(np.mean(list(up.values()))) / (4.0 * length),
        }
        metrics.update(self._extra_metrics())
        if self._setup_metrics:
            metrics.update(self._setup_metrics)
            self._setup_metrics = {}
        return AggregateResult(
            delta=res.mean.astype(np.float32),
            included=tuple(res.included),
            upload_bytes=up,
            download_bytes={cid: len(agg) for cid in res.included},
            metrics=metrics,
        )

    def _extra_metrics(self) -> dict[str, float]:
        return {}


class CKKSAggregator(_HEAggregatorBase):
    """FedAvg weighted mean under CKKS (TenSEAL).

    ``preset``: a :class:`CKKSPreset` or its name; None picks one with
    :func:`choose_ckks_preset` from the first round's vector length and client count.
    ``value_bound``: public bound on |delta| values (default: the preset's maximum).
    ``weighted``: weight by ``num_examples`` (True) or uniformly.
    """

    name = "ckks"

    def __init__(self, preset: CKKSPreset | str | None = None, *, weighted: bool = True, value_bound: float | None = None, tolerance: float | None = None) -> None:
        super().__init__(weighted=weighted)
        self.preset = None if preset is None else _preset_from(preset)
        self.value_bound = value_bound
        self.tolerance = tolerance

    def _setup(self, length: int, n_clients: int) -> None:
        preset = self.preset or choose_ckks_preset(length, n_clients, tolerance=self.tolerance)
        kh = CKKSKeyHolder(preset)
        pub, sec = kh.public_bundle(), kh.secret_bundle()
        self._server = CKKSServer(pub)
        self._client = CKKSClient(sec, value_bound=self.value_bound)
        self.preset = preset
        self._setup_metrics = {"he_public_bundle_bytes": float(len(pub)), "he_secret_bundle_bytes_per_client": float(len(sec))}

    def _stated_bound(self, res, updates: Sequence[ClientUpdate]) -> float:
        peak = max(float(np.max(np.abs(u.delta))) for u in updates)
        return self.preset.error_bound(peak, res.received_fraction, len(res.included))

    def _ciphertexts(self, length: int) -> int:
        return self.preset.num_chunks(length)


class PaillierAggregator(_HEAggregatorBase):
    """FedAvg weighted mean under BatchCrypt-style packed Paillier (phe + gmpy2).

    ``config``: key size, quantization (``clip``, ``value_bits``) and ``max_total_weight``
    (must bound the sum of ``num_examples`` of a round when ``weighted``, else the number
    of clients; a round above it raises :class:`ConfigError` before encrypting).
    """

    name = "paillier"

    def __init__(self, config: PaillierConfig | None = None, *, weighted: bool = True) -> None:
        super().__init__(weighted=weighted)
        self.config = PaillierConfig() if config is None else config
        if not isinstance(self.config, PaillierConfig):
            raise ConfigError(f"PaillierAggregator: config must be a PaillierConfig, got {type(config).__name__}")
        self._clipped = 0

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        check_updates(updates)
        total = sum(int(u.num_examples) if self.weighted else 1 for u in updates)
        if total > self.config.max_total_weight:
            raise ConfigError(
                f"PaillierAggregator: round total weight {total} exceeds max_total_weight={self.config.max_total_weight}; "
                "packed slots could overflow (raise PaillierConfig.max_total_weight)"
            )
        self._clipped = 0
        return super().aggregate(updates, round_index=round_index)

    def _setup(self, length: int, n_clients: int) -> None:
        kh = PaillierKeyHolder(self.config)
        pub, sec = kh.public_bundle(), kh.secret_bundle()
        self._server = PaillierServer(pub)
        self._client = _CountingPaillierClient(sec, self)
        self._setup_metrics = {"he_public_bundle_bytes": float(len(pub)), "he_secret_bundle_bytes_per_client": float(len(sec))}

    def _stated_bound(self, res, updates: Sequence[ClientUpdate]) -> float:
        if self._clipped:
            # clipping moved values by more than the quantization error; the bound covers
            # the clipped data, so measure against the plaintext of what was encoded instead
            return float("inf")
        peak = max(float(np.max(np.abs(u.delta))) for u in updates)
        return self.config.error_bound * (1 + 1e-9) + 1e-12 * max(1.0, peak)

    def _ciphertexts(self, length: int) -> int:
        k = self.config.slots_per_ciphertext
        return -(-length // k)

    def _extra_metrics(self) -> dict[str, float]:
        return {"he_clipped_values": float(self._clipped), "he_values_per_ciphertext": float(self.config.slots_per_ciphertext)}


class _CountingPaillierClient(PaillierClient):
    """Simulation helper: a PaillierClient that adds each client's clip count to the aggregator's metric."""

    def __init__(self, secret_bundle: bytes, owner: PaillierAggregator) -> None:
        super().__init__(secret_bundle)
        self._owner = owner

    def encrypt(self, vector, *, round_index: int, client_id: int) -> bytes:
        msg = super().encrypt(vector, round_index=round_index, client_id=client_id)
        self._owner._clipped += self.last_clipped
        return msg
