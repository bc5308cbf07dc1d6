"""BatchCrypt-style packed Paillier aggregation with phe + gmpy2.

Follows Zhang et al., "BatchCrypt: Efficient Homomorphic Encryption for Cross-Silo
Federated Learning" (USENIX ATC 2020): quantize each value to a few bits, pack many
quantized values into one Paillier plaintext with headroom bits per slot so that the
sum over all clients never carries into the next slot, and encrypt the packed integer
once (Paillier, EUROCRYPT 1999, via ``phe``).

Roles and threat model
----------------------
Same as :mod:`secagg.he.ckks`: a key-holder client generates the key pair
(:class:`PaillierKeyHolder`), all clients share the private key (:class:`PaillierClient`),
the server holds only the public key (:class:`PaillierServer`; no ``PaillierPrivateKey``
is reachable from it, and giving it the secret bundle raises :class:`ConfigError`).
Paillier is IND-CPA under the decisional composite residuosity assumption: the server
learns client count, weights and vector length, nothing about values. A client
colluding with the server can decrypt every individual update (shared key); prefer
:mod:`secagg.smpc` masking when clients distrust each other.
Security level: 2048-bit modulus ~ 112-bit, 3072-bit ~ 128-bit (NIST SP 800-57);
1024-bit (~80-bit) keys exist only for fast unit tests and need ``insecure_for_testing``.

Encoding (exact integer arithmetic; the only error is quantization)
--------------------------------------------------------------------
* ``step = clip / qmax`` with ``qmax = 2**(value_bits-1) - 1``; ``q = rint(x / step)``
  in ``[-qmax, qmax]`` (|x| > clip: :class:`DataError`, or clipped and counted when
  ``out_of_range="clip"``).
* Signed values use an offset: slot value ``u = q + qmax`` in ``[0, 2*qmax]``, so no
  borrows cross slots. The server raises ciphertext ``i`` to the integer weight ``w_i``
  and multiplies: slot sum ``S = sum w_i u_i <= W_max * 2*qmax`` (``W_max =
  max_total_weight``), hence ``slot_bits = bit_length(W_max * 2 * qmax)`` and
  ``slots = (key_bits - 1) // slot_bits`` values per plaintext (always < n).
  Decryptors recover ``mean = (S - W*qmax) * step / W`` exactly up to quantization:
  absolute error <= ``step / 2`` per coordinate (:attr:`PaillierConfig.error_bound`).
* Overflow risk is computed up front: a config whose slot would not fit, or a round whose
  total weight exceeds ``max_total_weight``, raises :class:`ConfigError` before anything
  is encrypted or added.
* Packing/unpacking is vectorised with numpy bit operations (``unpackbits``/``packbits``
  over the uint64 slot values) plus one ``int.from_bytes`` per ciphertext.

Costs (L values, n clients, k = slots per plaintext, |n^2| = 2*key_bits/8 bytes)
-------------------------------------------------------------------------------
* Client: ``ceil(L/k)`` Paillier encryptions (one modular exponentiation mod n^2 each),
  upload ``ceil(L/k) * |n^2|`` bytes (k ~ 60-90 at 2048 bits vs 1 for naive Paillier).
* Server: O(n L / k) gmpy2 modular multiplications plus a small exponentiation per
  ciphertext for the weight (the same operations as phe's ``EncryptedNumber`` ``*``/``+``,
  done on gmpy2 ``mpz`` directly to avoid phe's per-call float encoding).
* Decrypt: ``ceil(L/k)`` CRT decryptions (phe ``raw_decrypt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import gmpy2
import numpy as np
from phe import paillier

from secagg.errors import ConfigError, DataError, ProtocolError
from secagg.he.messages import ChunkManifest, HEMessage, check_plain_vector, context_id_of
from secagg.he.rounds import ReplayGuard, RoundBook

__all__ = [
    "PaillierConfig",
    "quantize",
    "pack_slots",
    "unpack_slots",
    "PaillierKeyHolder",
    "PaillierClient",
    "PaillierServer",
    "PaillierRound",
    "PaillierAggregate",
]

SECURITY_BITS = {1024: 80, 2048: 112, 3072: 128}
_MAX_SLOT_BITS = 62  # slot sums and S - W*qmax stay exact in int64/uint64


@dataclass(frozen=True)
class PaillierConfig:
    """Key size, fixed-point quantization and packing headroom, validated up front.

    ``key_bits``: bits of the modulus n (2048 or 3072; 1024 only with
    ``insecure_for_testing=True``). ``value_bits``: signed bits per quantized value, in
    [2, 32]. ``clip``: largest |value| encoded. ``max_total_weight``: bound on the sum of
    the integer client weights of one round (example counts, or 1 per client for an
    unweighted mean). ``out_of_range``: "error" (default) or "clip" for |x| > clip.
    """

    key_bits: int = 2048
    value_bits: int = 16
    clip: float = 1.0
    max_total_weight: int = 2**16
    out_of_range: str = "error"
    insecure_for_testing: bool = False

    def __post_init__(self) -> None:
        if self.key_bits not in SECURITY_BITS:
            raise ConfigError(f"PaillierConfig.key_bits must be 2048 or 3072, got {self.key_bits}")
        if self.key_bits < 2048 and not self.insecure_for_testing:
            raise ConfigError(f"PaillierConfig.key_bits={self.key_bits} is insecure (~{SECURITY_BITS[self.key_bits]}-bit); use 2048 or 3072 (1024 only with insecure_for_testing=True)")
        if not isinstance(self.value_bits, int) or not 2 <= self.value_bits <= 32:
            raise ConfigError(f"PaillierConfig.value_bits must be an int in [2, 32], got {self.value_bits!r}")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"PaillierConfig.clip must be finite and > 0, got {self.clip!r}")
        if not isinstance(self.max_total_weight, int) or isinstance(self.max_total_weight, bool) or not 1 <= self.max_total_weight <= 2**32:
            raise ConfigError(f"PaillierConfig.max_total_weight must be an int in [1, 2**32], got {self.max_total_weight!r}")
        if self.out_of_range not in ("error", "clip"):
            raise ConfigError(f"PaillierConfig.out_of_range must be 'error' or 'clip', got {self.out_of_range!r}")
        if self.slot_bits > _MAX_SLOT_BITS:
            raise ConfigError(
                f"PaillierConfig: a slot needs {self.slot_bits} bits (value_bits={self.value_bits} + headroom for "
                f"max_total_weight={self.max_total_weight}); at most {_MAX_SLOT_BITS} allowed: lower one of them"
            )

    @property
    def security_bits(self) -> int:
        return SECURITY_BITS[self.key_bits]

    @property
    def qmax(self) -> int:
        """Largest quantized magnitude."""
        return 2 ** (self.value_bits - 1) - 1

    @property
    def step(self) -> float:
        """Quantization step (value units per integer)."""
        return self.clip / self.qmax

    @property
    def error_bound(self) -> float:
        """Max absolute error of each coordinate of the decrypted mean (half a step)."""
        return self.step / 2

    @property
    def slot_bits(self) -> int:
        """Bits per packed slot: the largest possible slot sum ``W_max * 2 * qmax`` must fit."""
        return (self.max_total_weight * 2 * self.qmax).bit_length()

    @property
    def slots_per_ciphertext(self) -> int:
        """Values packed into one plaintext; ``slots * slot_bits <= key_bits - 1 < log2(n)``."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def ciphertext_bytes(self) -> int:
        """Serialized size of one ciphertext (an integer mod n^2)."""
        return 2 * self.key_bits // 8

    def to_json(self) -> dict:
        return {
            "key_bits": self.key_bits,
            "value_bits": self.value_bits,
            "clip": float(self.clip),
            "max_total_weight": self.max_total_weight,
            "out_of_range": self.out_of_range,
            "insecure_for_testing": self.insecure_for_testing,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "PaillierConfig":
        try:
            return cls(
                int(obj["key_bits"]), int(obj["value_bits"]), float(obj["clip"]), int(obj["max_total_weight"]),
                str(obj["out_of_range"]), bool(obj["insecure_for_testing"]),
            )
        except ConfigError as exc:
            raise ProtocolError(f"Paillier bundle: invalid config ({exc})") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"Paillier bundle: malformed config ({exc})") from None


def quantize(x: np.ndarray, cfg: PaillierConfig, *, name: str = "update") -> tuple[np.ndarray, int]:
    """Fixed-point quantize ``x`` to int64 in ``[-qmax, qmax]``; return ``(q, clipped_count)``."""
    v = check_plain_vector(x, name=name)
    over = np.abs(v) > cfg.clip
    n_over = int(np.count_nonzero(over))
    if n_over and cfg.out_of_range == "error":
        raise DataError(f"{name}: {n_over} value(s) exceed clip={cfg.clip:g} (max |value| {float(np.max(np.abs(v))):.6g}); raise clip or use out_of_range='clip'")
    q = np.rint(np.clip(v, -cfg.clip, cfg.clip) / cfg.step).astype(np.int64)
    np.clip(q, -cfg.qmax, cfg.qmax, out=q)
    return q, n_over


def pack_slots(u: np.ndarray, slot_bits: int, slots: int) -> list[int]:
    """Pack non-negative integers ``u`` (< 2**slot_bits) little-endian into ``ceil(len/slots)`` ints.

    Value ``j`` of plaintext ``i`` occupies bits ``[j*slot_bits, (j+1)*slot_bits)``; the
    last plaintext is zero-padded. Vectorised: one ``unpackbits``/``packbits`` pass.
    """
    if not 1 <= slot_bits <= 64 or slots < 1:
        raise ConfigError(f"pack_slots: slot_bits must be in [1, 64] and slots >= 1, got {slot_bits}, {slots}")
    u = np.asarray(u)
    if u.ndim != 1 or u.size == 0:
        raise DataError(f"pack_slots: expected a non-empty 1-D array, got shape {u.shape}")
    if np.issubdtype(u.dtype, np.signedinteger) and u.size and int(u.min()) < 0:
        raise DataError("pack_slots: slot values must be non-negative (offset-encode signed values first)")
    uu = u.astype("<u8")
    if slot_bits < 64 and np.any(uu >> np.uint64(slot_bits)):
        raise DataError(f"pack_slots: a value needs more than slot_bits={slot_bits} bits")
    nct = math.ceil(uu.size / slots)
    padded = np.zeros(nct * slots, dtype="<u8")
    padded[: uu.size] = uu
    bits = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")[:, :slot_bits]
    rows = np.packbits(bits.reshape(nct, slots * slot_bits), axis=1, bitorder="little")
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


def unpack_slots(packed: list[int], slot_bits: int, slots: int) -> np.ndarray:
    """Inverse of :func:`pack_slots`: ``len(packed) * slots`` uint64 values (padding included)."""
    if not 1 <= slot_bits <= 64 or slots < 1:
        raise ConfigError(f"unpack_slots: slot_bits must be in [1, 64] and slots >= 1, got {slot_bits}, {slots}")
    width = slots * slot_bits
    nbytes = (width + 7) // 8
    for i, v in enumerate(packed):
        if v < 0 or int(v).bit_length() > width:
            raise ProtocolError(f"unpack_slots: plaintext {i} has {int(v).bit_length()} bits, more than {slots} slots x {slot_bits} bits (overflow or wrong key)")
    if not packed:
        return np.zeros(0, dtype=np.uint64)
    buf = b"".join(int(v).to_bytes(nbytes, "little") for v in packed)
    arr = np.frombuffer(buf, dtype=np.uint8).reshape(len(packed), nbytes)
    bits = np.unpackbits(arr, axis=1, bitorder="little")[:, :width].reshape(-1, slot_bits)
    full = np.zeros((bits.shape[0], 64), dtype=np.uint8)
    full[:, :slot_bits] = bits
    return np.packbits(full, axis=1, bitorder="little").view("<u8").ravel().astype(np.uint64)


def _int_bytes(v: int, size: int) -> bytes:
    return int(v).to_bytes(size, "big")


class PaillierKeyHolder:
    """The client that generates the Paillier key pair (phe, OS CSPRNG) and hands out bundles."""

    def __init__(self, config: PaillierConfig = PaillierConfig()) -> None:
        self.config = config
        pk, sk = paillier.generate_paillier_keypair(n_length=config.key_bits)
        if pk.n.bit_length() != config.key_bits:
            raise ConfigError(f"Paillier key generation returned a {pk.n.bit_length()}-bit modulus, expected {config.key_bits}")
        self._pk, self._sk = pk, sk
        self._n_blob = _int_bytes(pk.n, config.key_bits // 8)
        self.context_id = context_id_of(b"paillier-n:" + self._n_blob)

    def public_bundle(self) -> bytes:
        """For the server: the modulus n only."""
        return HEMessage("paillier", "public_key", self.context_id, params={"config": self.config.to_json()}, blobs=(self._n_blob,)).to_bytes()

    def secret_bundle(self) -> bytes:
        """For every client, over a confidential client-to-client channel: n, p, q."""
        half = self.config.key_bits // 8
        blobs = (self._n_blob, _int_bytes(self._sk.p, half), _int_bytes(self._sk.q, half))
        return HEMessage("paillier", "secret_key", self.context_id, params={"config": self.config.to_json()}, blobs=blobs).to_bytes()


def _load_public(msg: HEMessage, *, who: str) -> tuple[PaillierConfig, paillier.PaillierPublicKey]:
    cfg = PaillierConfig.from_json(msg.params.get("config", {}))
    if not msg.blobs or len(msg.blobs[0]) != cfg.key_bits // 8:
        raise ProtocolError(f"{who}: public modulus blob missing or not {cfg.key_bits // 8} bytes")
    if context_id_of(b"paillier-n:" + msg.blobs[0]) != msg.context_id:
        raise ProtocolError(f"{who}: modulus does not match its context_id")
    n = int.from_bytes(msg.blobs[0], "big")
    if n.bit_length() != cfg.key_bits or n % 2 == 0:
        raise ProtocolError(f"{who}: modulus is not a {cfg.key_bits}-bit odd integer")
    return cfg, paillier.PaillierPublicKey(n)


@dataclass(frozen=True)
class PaillierAggregate:
    """A decrypted aggregate: the weighted mean (float64) and its error bound."""

    mean: np.ndarray
    round_index: int
    included: tuple[int, ...]
    total_weight: int
    error_bound: float


class PaillierClient:
    """Encrypts this client's packed update and decrypts aggregates. Holds the shared private key."""

    def __init__(self, secret_bundle: bytes) -> None:
        msg = HEMessage.from_bytes(secret_bundle, expect_scheme="paillier", expect_kind="secret_key")
        cfg, pk = _load_public(msg, who="Paillier client")
        if len(msg.blobs) != 3:
            raise ProtocolError("Paillier secret bundle: expected n, p, q")
        p, q = (int.from_bytes(b, "big") for b in msg.blobs[1:])
        try:
            sk = paillier.PaillierPrivateKey(pk, p, q)
        except ValueError as exc:
            raise ProtocolError(f"Paillier secret bundle: p, q do not match n ({exc})") from None
        self.config, self._pk, self._sk = cfg, pk, sk
        self.context_id = msg.context_id
        self.last_clipped = 0

    def encrypt(self, vector: np.ndarray, *, round_index: int, client_id: int) -> bytes:
        """Quantize, offset, pack and encrypt ``vector``; return the update message.

        The number of clipped values (``out_of_range="clip"``) is kept client-side in
        :attr:`last_clipped`, never sent.
        """
        cfg = self.config
        q, clipped = quantize(vector, cfg, name=f"client {client_id} update")
        u = (q + cfg.qmax).astype(np.uint64)
        k = cfg.slots_per_ciphertext
        manifest = ChunkManifest.for_length(u.size, k)
        size = cfg.ciphertext_bytes
        blobs = tuple(_int_bytes(self._pk.raw_encrypt(m), size) for m in pack_slots(u, cfg.slot_bits, k))
        self.last_clipped = clipped
        return HEMessage("paillier", "update", self.context_id, round_index, client_id, manifest, blobs=blobs).to_bytes()

    def decrypt(self, aggregate: bytes, *, round_index: int | None = None) -> PaillierAggregate:
        """Decrypt the server's aggregate message into the weighted mean."""
        cfg = self.config
        msg = HEMessage.from_bytes(aggregate, expect_scheme="paillier", expect_kind="aggregate")
        msg.require_context(self.context_id, who="Paillier client")
        if round_index is not None and msg.round_index != round_index:
            raise ProtocolError(f"Paillier client: aggregate is for round {msg.round_index}, expected {round_index}")
        man = msg.manifest
        if man is None or man.chunk_size != cfg.slots_per_ciphertext:
            raise ProtocolError(f"Paillier client: aggregate chunk manifest missing or chunk_size != {cfg.slots_per_ciphertext}")
        try:
            total_w = int(msg.params["total_weight"])
            included = tuple(int(c) for c in msg.params["included"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("Paillier client: aggregate lacks total_weight/included") from None
        if not (1 <= total_w <= cfg.max_total_weight) or not included:
            raise ProtocolError(f"Paillier client: total_weight {total_w} outside [1, {cfg.max_total_weight}] or nobody included")
        nsq = self._pk.nsquare
        plains = []
        for i, blob in enumerate(msg.blobs):
            c = int.from_bytes(blob, "big")
            if len(blob) != cfg.ciphertext_bytes or not 0 < c < nsq:
                raise ProtocolError(f"Paillier client: aggregate ciphertext {i} is not an integer mod n^2")
            plains.append(self._sk.raw_decrypt(c))
        s = unpack_slots(plains, cfg.slot_bits, cfg.slots_per_ciphertext)[: man.total_length].astype(np.int64)
        centred = s - np.int64(total_w) * np.int64(cfg.qmax)
        if np.any(np.abs(centred) > np.int64(total_w) * np.int64(cfg.qmax)):
            raise ProtocolError("Paillier client: decrypted slot sums are out of range (overflow, tampering or another key)")
        mean = centred.astype(np.float64) * (cfg.step / total_w)
        return PaillierAggregate(mean, msg.round_index, included, total_w, cfg.error_bound)


class PaillierServer:
    """Aggregates packed Paillier updates. Holds only the public key: it cannot decrypt."""

    def __init__(self, public_bundle: bytes) -> None:
        msg = HEMessage.from_bytes(public_bundle, expect_scheme="paillier")
        if msg.kind != "public_key":
            raise ConfigError(f"Paillier server: expected the public bundle, got a {msg.kind!r} bundle (the server must never hold the private key)")
        if len(msg.blobs) != 1:
            raise ProtocolError("Paillier public bundle: expected exactly the modulus n")
        self.config, self.public_key = _load_public(msg, who="Paillier server")
        self.context_id = msg.context_id
        self._replay = ReplayGuard()

    def open_round(self, round_index: int, weights: Mapping[int, int], length: int) -> "PaillierRound":
        """Start round ``round_index``; integer ``weights`` must sum to <= ``max_total_weight``."""
        self._replay.check_open(round_index, who="Paillier server")
        if not isinstance(length, int) or length < 1:
            raise ConfigError(f"Paillier server: length must be an int >= 1, got {length!r}")
        book = RoundBook.open(round_index, weights, who="Paillier server", integer_weights=True)
        total = int(book.total_weight)
        if total > self.config.max_total_weight:
            raise ConfigError(
                f"Paillier server: round {round_index} total weight {total} exceeds max_total_weight="
                f"{self.config.max_total_weight}; slot sums could overflow into the next slot (raise max_total_weight in the config)"
            )
        return PaillierRound(self, book, ChunkManifest.for_length(length, self.config.slots_per_ciphertext))


class PaillierRound:
    """One round on the server: ``add`` each client's message, then ``finish``. O(L/k) memory."""

    def __init__(self, server: PaillierServer, book: RoundBook, manifest: ChunkManifest) -> None:
        self._server = server
        self._book = book
        self._manifest = manifest
        self._acc: list | None = None  # gmpy2.mpz ciphertext products
        self._received_weight = 0
        self._finished = False

    def add(self, update: bytes) -> None:
        """Validate one client's message and multiply ``c^w_i`` into the running product (all or nothing)."""
        if self._finished:
            raise ProtocolError("Paillier server: round already finished")
        srv = self._server
        msg = HEMessage.from_bytes(update, expect_scheme="paillier", expect_kind="update")
        msg.require_context(srv.context_id, who="Paillier server")
        self._book.check(msg.round_index, msg.sender)
        if msg.manifest is None:
            raise ProtocolError(f"Paillier server: client {msg.sender} update has no chunk manifest")
        msg.manifest.require_equal(self._manifest, who=f"Paillier server, client {msg.sender}")
        nsq = gmpy2.mpz(srv.public_key.nsquare)
        n = gmpy2.mpz(srv.public_key.n)
        size = srv.config.ciphertext_bytes
        w = self._book.weights[msg.sender]
        cts = []
        for i, blob in enumerate(msg.blobs):
            if len(blob) != size:
                raise ProtocolError(f"Paillier server: client {msg.sender} ciphertext {i} has {len(blob)} bytes, expected {size}")
            c = gmpy2.mpz(int.from_bytes(blob, "big"))
            if not 0 < c < nsq or gmpy2.gcd(c, n) != 1:
                raise ProtocolError(f"Paillier server: client {msg.sender} ciphertext {i} is not a unit mod n^2")
            cts.append(c if w == 1 else gmpy2.powmod(c, w, nsq))
        if self._acc is None:
            new_acc = cts
        else:
            new_acc = [gmpy2.f_mod(a * c, nsq) for a, c in zip(self._acc, cts)]
        self._acc = new_acc
        self._book.record(msg.sender)
        self._received_weight += w

    @property
    def received(self) -> tuple[int, ...]:
        return tuple(self._book.received)

    def finish(self) -> bytes:
        """Close the round; return the aggregate message for the clients to decrypt."""
        if self._finished:
            raise ProtocolError("Paillier server: round already finished")
        self._book.require_nonempty()
        assert self._acc is not None
        size = self._server.config.ciphertext_bytes
        blobs = tuple(_int_bytes(int(a), size) for a in self._acc)
        msg = HEMessage(
            "paillier", "aggregate", self._server.context_id, self._book.round_index, -1, self._manifest,
            params={"total_weight": int(self._received_weight), "included": list(self._book.received)},
            blobs=blobs,
        ).to_bytes()
        self._finished = True
        self._server._replay.mark_finished(self._book.round_index)
        return msg
