"""Update compression with byte-exact accounting: uniform quantization, top-k sparsification
with error feedback, and their combination.

Every compressor turns a flat float32 vector into real bytes (``compress``) and back
(``decompress``); ``payload_bytes(n)`` is the exact length of that payload for a vector of
``n`` values, and :class:`CompressedAggregator` counts upload/download bytes as
``len(payload)`` of the payloads it actually produced -- no formulas in the accounting.

Threat model: compression is a communication optimisation, not a defence; payloads are
parsed defensively (a malformed payload raises :class:`~secagg.errors.DataError`).
Randomness (stochastic rounding) is simulation randomness from seeded numpy generators.

Formats (little-endian; ``n`` values, ``b`` bits, ``k`` kept coordinates)
------------------------------------------------------------------------
* :class:`NoCompression` -- :func:`~secagg.fl.aggregator.serialize_vector`: 16 + 4n bytes.
* :class:`UniformQuantizer` (``b`` in {1, 2, 4, 8}) -- ``"SGQ1"`` | bits u8 | stochastic u8 |
  2 reserved | n u64 | lo f32 | step f32 (24-byte header), then ``ceil(n b / 8)`` bytes of
  packed level indices (low bits first). Levels ``lo + q * step``, ``q in [0, 2^b - 1]``,
  ``step = (max - min) / (2^b - 1)``. Deterministic rounding: error <= step / 2 per
  coordinate. Stochastic rounding (Alistarh et al. 2017, QSGD; Suresh et al. 2017): error
  < step, and unbiased, E[decode(encode(x))] = x. Cost O(n).
* :class:`TopK` -- ``"SGK1"`` | value codec u32 (0: float32, b: b-bit quantized) | n u64 |
  k u64 (24-byte header), then k u32 indices (ascending), then the k values: 4k bytes as
  float32, or a nested :class:`UniformQuantizer` payload of k values. Keeps the k
  largest-magnitude coordinates, ``k = max(1, ceil(fraction * n))``. Biased; use with error
  feedback (Stich et al. 2018, "Sparsified SGD with memory"; Karimireddy et al. 2019,
  EF-SGD). Cost O(n) (argpartition).

Byte counts: e.g. a 10,000-value update is 40,016 B plain, 10,024 B at 8 bit, 5,024 B at
4 bit, 824 B as top-1 % (k = 100), 524 B as top-1 % + 8-bit.
"""

from __future__ import annotations

import abc
import math
import struct
from typing import Optional, Sequence

import numpy as np

from secagg.errors import ConfigError, DataError
from secagg.fl.aggregator import (
    AggregateResult,
    Aggregator,
    ClientUpdate,
    HEADER_BYTES,
    check_updates,
    deserialize_vector,
    serialize_vector,
)
from secagg.fl.robust import check_compatible, hides_individual_updates, needs_individual_updates

__all__ = [
    "CompressedAggregator",
    "Compressor",
    "NoCompression",
    "TopK",
    "UniformQuantizer",
    "make_compressor",
]

_Q_HEADER = struct.Struct("<4sBBHQff")  # 24 bytes
_K_HEADER = struct.Struct("<4sIQQ")  # 24 bytes


def _as_vector(vec: np.ndarray) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float32)
    if v.ndim != 1:
        raise DataError(f"compress: expected a 1-D vector, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise DataError("compress: vector contains NaN or Inf")
    return v


class Compressor(abc.ABC):
    """Vector <-> bytes codec. ``biased`` compressors should be used with error feedback."""

    name: str = "compressor"
    biased: bool = False

    @abc.abstractmethod
    def compress(self, vec: np.ndarray, rng: Optional[np.random.Generator] = None) -> bytes:
        """Encode a finite 1-D vector; ``rng`` drives stochastic rounding (default: seeded 0)."""

    @abc.abstractmethod
    def decompress(self, payload: bytes) -> np.ndarray:
        """Decode a payload produced by :meth:`compress` into a float32 vector."""

    @abc.abstractmethod
    def payload_bytes(self, n: int) -> int:
        """Exact payload length in bytes for a vector of ``n`` values."""


class NoCompression(Compressor):
    """Dense float32 (:func:`serialize_vector`): 16 + 4n bytes."""

    name = "none"

    def compress(self, vec: np.ndarray, rng: Optional[np.random.Generator] = None) -> bytes:
        return serialize_vector(_as_vector(vec))

    def decompress(self, payload: bytes) -> np.ndarray:
        return deserialize_vector(payload)

    def payload_bytes(self, n: int) -> int:
        return HEADER_BYTES + 4 * int(n)


def _pack(q: np.ndarray, bits: int) -> bytes:
    q = q.astype(np.uint8)
    if bits == 8:
        return q.tobytes()
    per = 8 // bits
    pad = (-len(q)) % per
    if pad:
        q = np.concatenate([q, np.zeros(pad, dtype=np.uint8)])
    q = q.reshape(-1, per)
    out = np.zeros(q.shape[0], dtype=np.uint8)
    for j in range(per):
        out |= (q[:, j] << (j * bits)).astype(np.uint8)
    return out.tobytes()


def _unpack(body: bytes, bits: int, n: int) -> np.ndarray:
    raw = np.frombuffer(body, dtype=np.uint8)
    if bits == 8:
        return raw[:n].astype(np.int64)
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(raw >> (j * bits)) & mask for j in range(per)]
    return np.stack(parts, axis=1).reshape(-1)[:n].astype(np.int64)


class UniformQuantizer(Compressor):
    """Uniform ``bits``-bit quantization between the vector's min and max.

    ``stochastic=True`` (default): unbiased stochastic rounding, per-coordinate error < step.
    ``stochastic=False``: round to nearest, per-coordinate error <= step / 2
    (plus float32 rounding of the decoded value). ``step = (max - min) / (2^bits - 1)``.
    Payload: 24 + ceil(n * bits / 8) bytes.
    """

    biased = False

    def __init__(self, bits: int = 8, stochastic: bool = True) -> None:
        if bits not in (1, 2, 4, 8):
            raise ConfigError(f"bits must be one of 1, 2, 4, 8, got {bits!r}")
        self.bits = int(bits)
        self.stochastic = bool(stochastic)
        self.levels = (1 << self.bits) - 1
        self.name = f"q{self.bits}" + ("" if self.stochastic else "-det")

    def step_of(self, vec: np.ndarray) -> float:
        """The quantization step this compressor uses for ``vec``."""
        v = _as_vector(vec)
        if v.size == 0:
            return 0.0
        lo = np.float32(v.min())
        return float(np.float32((float(v.max()) - float(lo)) / self.levels))

    def payload_bytes(self, n: int) -> int:
        return _Q_HEADER.size + math.ceil(int(n) * self.bits / 8)

    def compress(self, vec: np.ndarray, rng: Optional[np.random.Generator] = None) -> bytes:
        v = _as_vector(vec)
        n = v.size
        if n == 0:
            return _Q_HEADER.pack(b"SGQ1", self.bits, int(self.stochastic), 0, 0, 0.0, 0.0)
        lo = np.float32(v.min())
        step = np.float32(self.step_of(v))
        if step > 0:
            t = (v.astype(np.float64) - float(lo)) / float(step)
            if self.stochastic:
                rng = np.random.default_rng(0) if rng is None else rng
                q = np.floor(t + rng.random(n))
            else:
                q = np.floor(t + 0.5)
            q = np.clip(q, 0, self.levels)
        else:
            q = np.zeros(n)
        header = _Q_HEADER.pack(b"SGQ1", self.bits, int(self.stochastic), 0, n, float(lo), float(step))
        return header + _pack(q, self.bits)

    def decompress(self, payload: bytes) -> np.ndarray:
        if len(payload) < _Q_HEADER.size:
            raise DataError("quantized payload: truncated header")
        magic, bits, _stoch, _res, n, lo, step = _Q_HEADER.unpack_from(payload)
        if magic != b"SGQ1":
            raise DataError("quantized payload: bad magic")
        if bits != self.bits:
            raise DataError(f"quantized payload: {bits}-bit payload given to a {self.bits}-bit decoder")
        expect = self.payload_bytes(n)
        if len(payload) != expect:
            raise DataError(f"quantized payload: {n} values at {bits} bit need {expect} bytes, got {len(payload)}")
        if not (math.isfinite(lo) and math.isfinite(step)) or step < 0:
            raise DataError("quantized payload: non-finite offset or negative step")
        q = _unpack(payload[_Q_HEADER.size:], bits, n)
        return (float(lo) + q.astype(np.float64) * float(step)).astype(np.float32)


class TopK(Compressor):
    """Keep the ``k = max(1, ceil(fraction * n))`` largest-magnitude coordinates.

    ``value_quantizer``: encode the kept values with a :class:`UniformQuantizer` (the
    "top-k + 8-bit" combination) instead of float32.
    Payload: 24 + 4k + (4k or ``value_quantizer.payload_bytes(k)``) bytes.
    """

    biased = True

    def __init__(self, fraction: float, value_quantizer: Optional[UniformQuantizer] = None) -> None:
        fr = float(fraction)
        if not (math.isfinite(fr) and 0.0 < fr <= 1.0):
            raise ConfigError(f"fraction (share of coordinates kept by top-k) must be in (0, 1], got {fraction!r}")
        if value_quantizer is not None and not isinstance(value_quantizer, UniformQuantizer):
            raise ConfigError("value_quantizer must be a UniformQuantizer or None")
        self.fraction = fr
        self.value_quantizer = value_quantizer
        pct = f"{100 * fr:g}%"
        self.name = f"top{pct}" + (f"+{value_quantizer.name}" if value_quantizer else "")

    def k_of(self, n: int) -> int:
        return 0 if n == 0 else min(int(n), max(1, math.ceil(self.fraction * int(n))))

    def payload_bytes(self, n: int) -> int:
        k = self.k_of(n)
        vals = 4 * k if self.value_quantizer is None else self.value_quantizer.payload_bytes(k)
        return _K_HEADER.size + 4 * k + vals

    def compress(self, vec: np.ndarray, rng: Optional[np.random.Generator] = None) -> bytes:
        v = _as_vector(vec)
        n = v.size
        if n >= 2**32:
            raise ConfigError(f"top-k: vectors longer than 2^32 - 1 values are not supported (got {n})")
        k = self.k_of(n)
        if k == n:
            idx = np.arange(n)
        else:
            idx = np.sort(np.argpartition(np.abs(v), n - k)[n - k:])
        vals = v[idx]
        codec = 0 if self.value_quantizer is None else self.value_quantizer.bits
        body = vals.astype("<f4").tobytes() if codec == 0 else self.value_quantizer.compress(vals, rng)
        return _K_HEADER.pack(b"SGK1", codec, n, k) + idx.astype("<u4").tobytes() + body

    def decompress(self, payload: bytes) -> np.ndarray:
        if len(payload) < _K_HEADER.size:
            raise DataError("top-k payload: truncated header")
        magic, codec, n, k = _K_HEADER.unpack_from(payload)
        if magic != b"SGK1":
            raise DataError("top-k payload: bad magic")
        want = 0 if self.value_quantizer is None else self.value_quantizer.bits
        if codec != want:
            raise DataError(f"top-k payload: value codec {codec} does not match this decoder ({want})")
        if k != self.k_of(n):
            raise DataError(f"top-k payload: k={k} inconsistent with n={n} and fraction={self.fraction}")
        if len(payload) != self.payload_bytes(n):
            raise DataError(f"top-k payload: expected {self.payload_bytes(n)} bytes, got {len(payload)}")
        off = _K_HEADER.size
        idx = np.frombuffer(payload, dtype="<u4", count=k, offset=off).astype(np.int64)
        off += 4 * k
        if k and (idx.max() >= n or np.any(np.diff(idx) <= 0)):
            raise DataError("top-k payload: indices out of range or not strictly increasing")
        if self.value_quantizer is None:
            vals = np.frombuffer(payload, dtype="<f4", count=k, offset=off)
        else:
            vals = self.value_quantizer.decompress(payload[off:])
        out = np.zeros(n, dtype=np.float32)
        out[idx] = vals
        return out


def make_compressor(spec: str) -> Compressor:
    """Build a compressor from a short spec: ``none``, ``q8``, ``q4``, ``top1%``, ``top1%+q8``."""
    s = spec.strip().lower()
    if s in ("none", "", "fp32"):
        return NoCompression()
    quant = None
    if "+" in s:
        s, qs = s.split("+", 1)
        if not qs.startswith("q"):
            raise ConfigError(f"compressor spec {spec!r}: expected 'topX%+qB'")
        quant = UniformQuantizer(int(qs[1:]))
    if s.startswith("q") and quant is None:
        return UniformQuantizer(int(s[1:]))
    if s.startswith("top") and s.endswith("%"):
        return TopK(float(s[3:-1]) / 100.0, quant)
    raise ConfigError(f"unknown compressor spec {spec!r}; use none, q8, q4, top1%, top1%+q8")


class CompressedAggregator(Aggregator):
    """Simulates clients compressing their uploads before ``inner`` aggregates them.

    Each round every client compresses ``delta + residual`` (error feedback: the residual is
    what earlier compressions dropped, kept per ``client_id``; on by default for biased
    compressors such as top-k), the payload is decompressed and the decoded updates go to
    ``inner``. ``upload_bytes[client]`` is ``len(payload)`` of the bytes that client produced.
    Residuals are committed only when ``inner`` succeeds (a failed round changes nothing).

    ``download_compressor``: the server also compresses the aggregate it returns (with its
    own error-feedback residual); ``download_bytes`` then adds that payload's length for each
    included client, the core applies the decoded (lossy) aggregate, and since an included
    client can rebuild the new model from it (``delivers_model``), the core does not count a
    full-model broadcast to that client in the next round.

    With an ``inner`` that hides individual updates (secure aggregation / HE) the decoded
    updates are what the clients would mask/encrypt; the wire bytes are that protocol's own
    messages, so ``upload_bytes`` is left as ``inner`` reports it and the compressed payload
    size appears in ``metrics['compressed_upload_bytes_mean']``.
    Cost: O(n d) on top of ``inner``; memory O(d) per client with error feedback.
    """

    def __init__(
        self,
        inner: Aggregator,
        compressor: Compressor,
        *,
        error_feedback: Optional[bool] = None,
        download_compressor: Optional[Compressor] = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(compressor, Compressor):
            raise ConfigError(f"compressor must be a Compressor, got {type(compressor).__name__}")
        if download_compressor is not None and not isinstance(download_compressor, Compressor):
            raise ConfigError("download_compressor must be a Compressor or None")
        self.inner = inner
        self.compressor = compressor
        self.download_compressor = download_compressor
        self.error_feedback = compressor.biased if error_feedback is None else bool(error_feedback)
        self.seed = int(seed)
        self.residuals: dict[int, np.ndarray] = {}
        self.server_residual: Optional[np.ndarray] = None
        check_compatible(self)
        self.needs_individual_updates = needs_individual_updates(inner)
        self.hides_individual_updates = hides_individual_updates(inner)
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}+{compressor.name}"

    def _rng(self, round_index: int, who: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(round_index), int(who) & 0xFFFFFFFF, 0 if who >= 0 else 1])

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        d = check_updates(updates)
        decoded: list[ClientUpdate] = []
        new_res: dict[int, np.ndarray] = {}
        sizes: dict[int, int] = {}
        for u in updates:
            v = np.asarray(u.delta, dtype=np.float32)
            if self.error_feedback:
                r = self.residuals.get(u.client_id)
                if r is not None and r.shape == v.shape:
                    v = (v.astype(np.float64) + r).astype(np.float32)
            payload = self.compressor.compress(v, self._rng(round_index, u.client_id))
            dec = self.compressor.decompress(payload)
            sizes[u.client_id] = len(payload)
            if self.error_feedback:
                new_res[u.client_id] = v.astype(np.float64) - dec
            decoded.append(ClientUpdate(u.client_id, dec, u.num_examples))
        res = self.inner.aggregate(decoded, round_index=round_index)
        metrics = dict(res.metrics)
        metrics["compressed_upload_bytes_mean"] = float(np.mean(list(sizes.values())))
        metrics["dense_upload_bytes"] = float(HEADER_BYTES + 4 * d)
        upload = dict(res.upload_bytes) if self.hides_individual_updates else dict(sizes)
        download = dict(res.download_bytes)
        delta = np.asarray(res.delta, dtype=np.float32)
        server_res = self.server_residual
        if self.download_compressor is not None:
            v = delta.astype(np.float64)
            if self.download_compressor.biased and server_res is not None and server_res.shape == v.shape:
                v = v + server_res
            v32 = v.astype(np.float32)
            payload = self.download_compressor.compress(v32, self._rng(round_index, -1))
            delta = self.download_compressor.decompress(payload)
            if self.download_compressor.biased:
                server_res = v32.astype(np.float64) - delta
            for u in updates:
                download[u.client_id] = int(download.get(u.client_id, 0)) + len(payload)
            metrics["compressed_download_bytes"] = float(len(payload))
        # commit state only now that the round succeeded
        self.residuals.update(new_res)
        self.server_residual = server_res
        return AggregateResult(delta=delta, included=res.included, upload_bytes=upload,
                               download_bytes=download, metrics=metrics,
                               delivers_model=self.download_compressor is not None or res.delivers_model)
