"""CKKS aggregation of float vectors with TenSEAL (Cheon, Kim, Kim, Song, ASIACRYPT 2017).

Roles and threat model
----------------------
* A designated **key holder** (one of the clients) creates a TenSEAL context with the
  secret key (:class:`CKKSKeyHolder`). It hands the *secret bundle* to every client over
  an authenticated, confidential client-to-client channel (never through the server)
  and the *public bundle* to the server: the encryption parameters only, with no
  secret, public, relinearization or Galois key.
* Because every client holds the secret key anyway, clients encrypt with TenSEAL's
  **symmetric** (secret-key) RLWE encryption: same security assumption, 1.7x faster
  than public-key encryption, ~10x less noise, and the server, holding no key at all,
  cannot create fresh encryptions (TenSEAL refuses: "context doesn't support encryption").
* **Clients** (:class:`CKKSClient`) encrypt their update in slot-sized chunks cut by
  this module and decrypt the aggregate the server sends back.
* The **server** (:class:`CKKSServer`) holds a public context (``is_private()`` is
  False; constructing a server from a secret bundle raises :class:`ConfigError`). It can
  multiply ciphertexts by plaintext weights and add them, and cannot decrypt anything.

Against an honest-but-curious server the scheme is IND-CPA secure (RLWE, ~128-bit for
the presets below): the server learns the number of clients, their announced weights
and the vector length, nothing about any value. All clients share one secret key, so a
client that colludes with the server can decrypt every *individual* update the server
saw; use :mod:`secagg.smpc` masking if clients must be protected from each other.

Releasing decryptions: the server holds the aggregate ciphertext, so the exact decoded
values (message + noise) must not be handed back to it (Li & Micciancio, EUROCRYPT 2021,
key recovery from CKKS decryptions). Release the mean rounded to float32, as the FedAvg
adapter does; see ``docs/he.md``.

Guarantees
----------
* Weighted mean: the server computes ``sum_i (w_i / W) * Enc(x_i)`` (ciphertext x
  plaintext scalar) where ``W`` is the announced total weight; the aggregate message
  carries ``received_fraction = sum_received w_i / W`` so decryptors divide it out when
  clients dropped. The server does not rescale (``auto_rescale`` off): products stay at
  scale ``2**(2*scale_bits)`` on the fresh modulus, which the presets size to hold
  ``2**(2*scale_bits) * max_abs_value`` with margin. Skipping the rescale makes the
  scalar multiplication ~4x cheaper and removes the rescaling noise, which dominated the
  error (measured 1e-7 with a rescale vs 8e-9 without, N=8192, public-key encryption;
  8e-10 with symmetric encryption).
* Precision: CKKS is approximate. For inputs with ``|x| <= value_bound`` (a public bound
  the clients agree on, at most ``preset.max_abs_value``) and at most
  ``preset.max_clients`` clients, the absolute error of every coordinate of the mean is
  at most ``(abs_error_bound + (rel_error_bound + n * 2**-(scale_bits+1)) * value_bound)
  / received_fraction`` for n included clients (:meth:`CKKSPreset.error_bound`). The
  encryption-noise part does not grow with n (weights sum to 1, so the weighted noise is
  at most one client's); the ``n * 2**-(scale_bits+1)`` term is the worst case of
  rounding each weight ``w_i / W`` to the encoding scale. The constants are >= 8x above the
  worst errors measured for 1..1000 clients and |x| from 1e-3 to 65,000
  (``python benchmarks/he_table.py --precision``, table in ``docs/he.md``).
* Explicit packing: a vector of length L is cut by us into ``ceil(L / slots)`` chunks of
  at most ``slots = N/2`` values, one ciphertext each, described by the chunk manifest in
  the message; TenSEAL never splits anything itself (checked on every ciphertext).
* Bad input raises: NaN/Inf or oversized values (:class:`DataError`); ciphertexts from
  another context, a mismatched manifest or length, ciphertexts at the wrong
  level/scale/degree, tampered or malformed bytes, replays (:class:`ProtocolError`).

Costs (N = poly_modulus_degree, L = vector length, n = clients)
--------------------------------------------------------------
* Ciphertexts per client: ``ceil(2L/N)``; bytes per ciphertext about
  ``2 * N * (len(coeff_mod_bit_sizes) - 1) * 8`` before TenSEAL's compression
  (measured: 235 kB for N=8192, 524 kB for N=16384), i.e. 14-16x a float32 vector;
  the aggregate has the same size.
* Time: client encrypt O(L log N), server O(n L log N), decrypt O(L log N).

Security: parameters follow the HomomorphicEncryption.org standard (ternary secret,
classical 128-bit): total coefficient modulus <= 218 bits for N=8192, <= 438 bits for
N=16384 (checked in :class:`CKKSPreset`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import tenseal as ts

from secagg.errors import ConfigError, ProtocolError
from secagg.he.messages import ChunkManifest, HEMessage, check_plain_vector, context_id_of
from secagg.he.rounds import ReplayGuard, RoundBook

__all__ = [
    "CKKSPreset",
    "CKKS_8192",
    "CKKS_16384",
    "CKKS_PRESETS",
    "choose_ckks_preset",
    "CKKSKeyHolder",
    "CKKSClient",
    "CKKSServer",
    "CKKSRound",
    "CKKSAggregate",
]

# Largest total coefficient modulus (bits) for 128-bit classical security, ternary secret
# (HomomorphicEncryption.org security standard, as enforced by Microsoft SEAL).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CKKSPreset:
    """CKKS parameters with their stated security, capacity and precision.

    ``coeff_mod_bit_sizes``: the data primes (their product must hold a value of
    ``max_abs_value`` at scale ``2**(2*scale_bits)``, the scale after the weight
    multiplication, which is never rescaled) and a last, special prime (key switching).
    ``scale_bits``: log2 of the encoding scale. ``max_abs_value``: largest |input|
    accepted. ``max_clients``: clients per sum. Stated error of each coordinate of the
    mean for inputs bounded by ``B``: ``abs_error_bound + rel_error_bound * B``.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    abs_error_bound: float
    rel_error_bound: float
    max_abs_value: float = 2.0**16
    max_clients: int = 1000
    security_bits: int = 128

    def __post_init__(self) -> None:
        if self.poly_modulus_degree not in MAX_COEFF_BITS_128:
            raise ConfigError(f"CKKS preset {self.name}: poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, got {self.poly_modulus_degree}")
        total = sum(self.coeff_mod_bit_sizes)
        limit = MAX_COEFF_BITS_128[self.poly_modulus_degree]
        if self.security_bits != 128:
            raise ConfigError(f"CKKS preset {self.name}: only 128-bit security presets are supported, got {self.security_bits}")
        if total > limit:
            raise ConfigError(f"CKKS preset {self.name}: coefficient modulus {total} bits exceeds {limit} bits allowed for 128-bit security at N={self.poly_modulus_degree}")
        if len(self.coeff_mod_bit_sizes) < 2 or not all(20 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise ConfigError(f"CKKS preset {self.name}: need >= 2 primes (data + special) of 20..60 bits, got {self.coeff_mod_bit_sizes}")
        if not 20 <= self.scale_bits <= 60:
            raise ConfigError(f"CKKS preset {self.name}: scale_bits must be in [20, 60], got {self.scale_bits}")
        if not (self.max_abs_value >= 1 and math.isfinite(self.max_abs_value)):
            raise ConfigError(f"CKKS preset {self.name}: max_abs_value must be finite and >= 1, got {self.max_abs_value}")
        # headroom: |x| * 2**(2*scale_bits) (weighted, not rescaled) must stay below q/2 with a bit to spare
        need = math.log2(self.max_abs_value) + 2 * self.scale_bits + 2
        have = sum(self.coeff_mod_bit_sizes[:-1])
        if need > have:
            raise ConfigError(f"CKKS preset {self.name}: max_abs_value {self.max_abs_value:g} at scale 2^{2 * self.scale_bits} needs {need:.0f} bits of data modulus, only {have} available")
        if not 1 <= self.max_clients <= 1_000_000:
            raise ConfigError(f"CKKS preset {self.name}: max_clients must be in [1, 1e6], got {self.max_clients}")
        if not (0 < self.abs_error_bound < 1 and 0 <= self.rel_error_bound < 1):
            raise ConfigError(f"CKKS preset {self.name}: abs_error_bound must be in (0, 1) and rel_error_bound in [0, 1), got {self.abs_error_bound}, {self.rel_error_bound}")

    @property
    def slots(self) -> int:
        """Values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def fresh_level_primes(self) -> int:
        """Number of primes in a fresh ciphertext (all but the special prime)."""
        return len(self.coeff_mod_bit_sizes) - 1

    def num_chunks(self, length: int) -> int:
        return math.ceil(length / self.slots)

    def estimated_ciphertext_bytes(self) -> int:
        """Upper estimate of one fresh serialized ciphertext: 2 polynomials x N x primes x 8 bytes."""
        return 2 * self.poly_modulus_degree * self.fresh_level_primes * 8

    def error_bound(self, max_abs: float, received_fraction: float = 1.0, n_clients: int = 1) -> float:
        """Stated max absolute error per coordinate of the decrypted weighted mean.

        ``max_abs``: bound on |inputs|; ``n_clients``: clients in the sum (each weight
        ``w_i/W`` is rounded to ``2**-scale_bits``, at most ``2**-(scale_bits+1)`` off).
        """
        weight_rounding = n_clients * 2.0 ** -(self.scale_bits + 1)
        return (self.abs_error_bound + (self.rel_error_bound + weight_rounding) * float(max_abs)) / received_fraction


# Measured worst errors of the weighted mean, symmetric encryption (1..1000 clients,
# |x| <= 1e-3, 1, 6.5e4; results/he_precision.md):
#   N=8192:  7.9e-10 absolute (|x| <= 1)  -> stated 1e-8  + (1e-11 + n 2^-41) * B
#   N=16384: 1.1e-12 absolute (|x| <= 1)  -> stated 1e-11 + (1e-13 + n 2^-51) * B
# (at |x| = 6.5e4 the weight-rounding term dominates; the bound holds there with >= 8x margin).
# Data modulus: 100 bits (8192) / 120 bits (16384) >= 2*scale + 16 + 2; total 160 / 180 bits.
CKKS_8192 = CKKSPreset("ckks-8192", 8192, (60, 40, 60), 40, abs_error_bound=1e-8, rel_error_bound=1e-11)
CKKS_16384 = CKKSPreset("ckks-16384", 16384, (60, 60, 60), 50, abs_error_bound=1e-11, rel_error_bound=1e-13)
CKKS_PRESETS: dict[str, CKKSPreset] = {p.name: p for p in (CKKS_8192, CKKS_16384)}


def choose_ckks_preset(length: int, n_clients: int, *, tolerance: float | None = None) -> CKKSPreset:
    """Pick the cheapest preset (fewest upload bytes, then smaller N) for a round.

    ``tolerance``: required max abs error for inputs with |x| <= 1
    (``preset.error_bound(1.0, n_clients=n_clients)``); presets that cannot meet it, or whose ``max_clients``
    is below ``n_clients``, are excluded.
    """
    if not isinstance(length, int) or length < 1:
        raise ConfigError(f"choose_ckks_preset: length must be an int >= 1, got {length!r}")
    if not isinstance(n_clients, int) or n_clients < 1:
        raise ConfigError(f"choose_ckks_preset: n_clients must be an int >= 1, got {n_clients!r}")
    if tolerance is not None and not (tolerance > 0 and math.isfinite(tolerance)):
        raise ConfigError(f"choose_ckks_preset: tolerance must be finite and > 0, got {tolerance!r}")
    ok = [
        p
        for p in CKKS_PRESETS.values()
        if p.max_clients >= n_clients and (tolerance is None or p.error_bound(1.0, n_clients=n_clients) <= tolerance)
    ]
    if not ok:
        raise ConfigError(
            f"choose_ckks_preset: no preset supports {n_clients} clients with tolerance {tolerance}; "
            f"available: " + ", ".join(f"{p.name} (<= {p.max_clients} clients, error {p.error_bound(1.0):g})" for p in CKKS_PRESETS.values())
        )
    return min(ok, key=lambda p: (p.num_chunks(length) * p.estimated_ciphertext_bytes(), p.poly_modulus_degree))


def _preset_from(obj: CKKSPreset | str) -> CKKSPreset:
    if isinstance(obj, CKKSPreset):
        return obj
    try:
        return CKKS_PRESETS[obj]
    except KeyError:
        raise ConfigError(f"unknown CKKS preset {obj!r}; choose one of {sorted(CKKS_PRESETS)}") from None


def _preset_json(p: CKKSPreset) -> dict:
    return {
        "name": p.name,
        "poly_modulus_degree": p.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
        "scale_bits": p.scale_bits,
        "abs_error_bound": p.abs_error_bound,
        "rel_error_bound": p.rel_error_bound,
        "max_abs_value": p.max_abs_value,
        "max_clients": p.max_clients,
    }


def _preset_from_json(obj: dict) -> CKKSPreset:
    try:
        return CKKSPreset(
            str(obj["name"]),
            int(obj["poly_modulus_degree"]),
            tuple(int(b) for b in obj["coeff_mod_bit_sizes"]),
            int(obj["scale_bits"]),
            abs_error_bound=float(obj["abs_error_bound"]),
            rel_error_bound=float(obj["rel_error_bound"]),
            max_abs_value=float(obj["max_abs_value"]),
            max_clients=int(obj["max_clients"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise ProtocolError(f"CKKS key bundle: invalid preset ({exc})") from None
        raise ProtocolError(f"CKKS key bundle: malformed preset ({exc})") from None


def _public_blob(ctx: ts.Context) -> bytes:
    return ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def _ckks_context_id(key_id: bytes, public_blob: bytes) -> bytes:
    return context_id_of(b"secagg-ckks-v1" + key_id + public_blob)


def _key_id_from(msg: HEMessage, *, who: str) -> bytes:
    try:
        key_id = bytes.fromhex(msg.params["key_id"])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"{who}: key bundle lacks a valid key_id") from None
    if len(key_id) != 16:
        raise ProtocolError(f"{who}: key_id must be 16 bytes")
    return key_id


def _load_context(blob: bytes, *, who: str) -> ts.Context:
    try:
        return ts.context_from(blob)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on bad streams
        raise ProtocolError(f"{who}: cannot load TenSEAL context ({exc})") from None


class CKKSKeyHolder:
    """The client that creates the key pair and hands out the bundles. Keep it client-side."""

    def __init__(self, preset: CKKSPreset | str = CKKS_8192) -> None:
        self.preset = _preset_from(preset)
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS, self.preset.poly_modulus_degree,
            coeff_mod_bit_sizes=list(self.preset.coeff_mod_bit_sizes), encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        ctx.global_scale = 2.0**self.preset.scale_bits
        self._ctx = ctx
        # the parameters-only context is the same for every key of a preset: a random key id
        # (OS CSPRNG) makes the context id unique per key
        self._key_id = os.urandom(16)
        self._public_blob = _public_blob(ctx)
        self.context_id = _ckks_context_id(self._key_id, self._public_blob)

    def _params(self) -> dict:
        return {"preset": _preset_json(self.preset), "key_id": self._key_id.hex()}

    def public_bundle(self) -> bytes:
        """What the server gets: the parameters-only context (no secret, public, relin or Galois key)."""
        return HEMessage("ckks", "public_key", self.context_id, params=self._params(), blobs=(self._public_blob,)).to_bytes()

    def secret_bundle(self) -> bytes:
        """What every client gets (over a confidential client-to-client channel): the secret context."""
        blob = self._ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        return HEMessage("ckks", "secret_key", self.context_id, params=self._params(), blobs=(blob,)).to_bytes()


@dataclass(frozen=True)
class CKKSAggregate:
    """A decrypted aggregate: the weighted mean (float64) and its stated error bound."""

    mean: np.ndarray
    round_index: int
    included: tuple[int, ...]
    received_fraction: float
    error_bound: float


class CKKSClient:
    """Encrypts this client's update and decrypts aggregates. Holds the shared secret key."""

    def __init__(self, secret_bundle: bytes, *, value_bound: float | None = None) -> None:
        """``value_bound``: public bound on |update values| agreed by all clients (default: the
        preset's ``max_abs_value``); updates beyond it are rejected and it sets the stated error."""
        msg = HEMessage.from_bytes(secret_bundle, expect_scheme="ckks", expect_kind="secret_key")
        if len(msg.blobs) != 1:
            raise ProtocolError("CKKS secret bundle: expected exactly one context blob")
        self.preset = _preset_from_json(msg.params.get("preset", {}))
        ctx = _load_context(msg.blobs[0], who="CKKS client")
        if not ctx.is_private():
            raise ConfigError("CKKS client: the bundle holds no secret key; clients need the secret bundle from the key holder")
        if _ckks_context_id(_key_id_from(msg, who="CKKS client"), _public_blob(ctx)) != msg.context_id:
            raise ProtocolError("CKKS secret bundle: context does not match its context_id")
        vb = self.preset.max_abs_value if value_bound is None else float(value_bound)
        if not (0 < vb <= self.preset.max_abs_value):
            raise ConfigError(f"CKKS client: value_bound must be in (0, {self.preset.max_abs_value}], got {value_bound!r}")
        self.value_bound = vb
        self._ctx = ctx
        self.context_id = msg.context_id

    def encrypt(self, vector: np.ndarray, *, round_index: int, client_id: int) -> bytes:
        """Encrypt ``vector`` chunk by chunk; return the serialized update message."""
        p = self.preset
        x = check_plain_vector(vector, name=f"client {client_id} update", max_abs=self.value_bound)
        manifest = ChunkManifest.for_length(x.shape[0], p.slots)
        blobs = tuple(ts.ckks_vector(self._ctx, x[off : off + cnt].tolist()).serialize() for off, cnt in manifest.chunks)
        return HEMessage(
            "ckks", "update", self.context_id, round_index, client_id, manifest, blobs=blobs
        ).to_bytes()

    def decrypt(self, aggregate: bytes, *, round_index: int | None = None) -> CKKSAggregate:
        """Decrypt the server's aggregate message into the weighted mean."""
        msg = HEMessage.from_bytes(aggregate, expect_scheme="ckks", expect_kind="aggregate")
        msg.require_context(self.context_id, who="CKKS client")
        if round_index is not None and msg.round_index != round_index:
            raise ProtocolError(f"CKKS client: aggregate is for round {msg.round_index}, expected {round_index}")
        man = msg.manifest
        if man is None or man.chunk_size != self.preset.slots:
            raise ProtocolError(f"CKKS client: aggregate chunk manifest missing or chunk_size != {self.preset.slots} slots")
        try:
            frac = float(msg.params["received_fraction"])
            included = tuple(int(c) for c in msg.params["included"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("CKKS client: aggregate lacks received_fraction/included") from None
        if not (0 < frac <= 1 + 1e-12) or not included:
            raise ProtocolError(f"CKKS client: implausible aggregate parameters (received_fraction={frac}, included={included})")
        out = np.empty(man.total_length, dtype=np.float64)
        for i, ((off, cnt), blob) in enumerate(zip(man.chunks, msg.blobs)):
            try:
                ct = ts.ckks_vector_from(self._ctx, blob)
                vals = np.asarray(ct.decrypt(), dtype=np.float64)
            except Exception as exc:
                raise ProtocolError(f"CKKS client: chunk {i} does not decrypt ({exc})") from None
            if vals.shape[0] != cnt:
                raise ProtocolError(f"CKKS client: chunk {i} decrypts to {vals.shape[0]} values, manifest says {cnt}")
            out[off : off + cnt] = vals
        mean = out / frac
        bound = self.preset.error_bound(self.value_bound, frac, len(included))
        if not np.all(np.isfinite(mean)) or float(np.max(np.abs(mean))) > self.value_bound + bound:
            raise ProtocolError(
                f"CKKS client: decrypted aggregate is out of range (|mean| > value_bound {self.value_bound:g}): "
                "ciphertexts under another key, or corrupted"
            )
        return CKKSAggregate(mean, msg.round_index, included, frac, bound)


class CKKSServer:
    """Aggregates encrypted updates. Holds only the public context: it cannot decrypt."""

    def __init__(self, public_bundle: bytes) -> None:
        msg = HEMessage.from_bytes(public_bundle, expect_scheme="ckks")
        if msg.kind != "public_key":
            raise ConfigError(f"CKKS server: expected the public bundle, got a {msg.kind!r} bundle (the server must never hold the secret key)")
        if len(msg.blobs) != 1:
            raise ProtocolError("CKKS public bundle: expected exactly one context blob")
        if _ckks_context_id(_key_id_from(msg, who="CKKS server"), msg.blobs[0]) != msg.context_id:
            raise ProtocolError("CKKS public bundle: context does not match its context_id")
        ctx = _load_context(msg.blobs[0], who="CKKS server")
        if ctx.is_private():
            raise ConfigError("CKKS server: the context holds a secret key; give the server the public bundle only")
        ctx.auto_rescale = False  # products stay at scale 2**(2*scale_bits); see the module docstring
        self.preset = _preset_from_json(msg.params.get("preset", {}))
        self._ctx = ctx
        self.context_id = msg.context_id
        self._replay = ReplayGuard()

    @property
    def context(self) -> ts.Context:
        """The server's (public) TenSEAL context."""
        return self._ctx

    def open_round(self, round_index: int, weights: Mapping[int, float], length: int) -> "CKKSRound":
        """Start aggregating round ``round_index`` of ``length``-value updates with FedAvg ``weights``."""
        self._replay.check_open(round_index, who="CKKS server")
        if len(weights) > self.preset.max_clients:
            raise ConfigError(f"CKKS server: {len(weights)} clients exceed the preset's max_clients {self.preset.max_clients}")
        if not isinstance(length, int) or length < 1:
            raise ConfigError(f"CKKS server: length must be an int >= 1, got {length!r}")
        book = RoundBook.open(round_index, weights, who="CKKS server")
        return CKKSRound(self, book, ChunkManifest.for_length(length, self.preset.slots))


class CKKSRound:
    """One round on the server: ``add`` each client's message, then ``finish``.

    Memory is O(L) (a running sum), whatever the number of clients.
    """

    def __init__(self, server: CKKSServer, book: RoundBook, manifest: ChunkManifest) -> None:
        self._server = server
        self._book = book
        self._manifest = manifest
        self._acc: list[ts.CKKSVector] | None = None
        self._received_weight = 0.0
        self._finished = False

    def _check_fresh(self, ct: ts.CKKSVector, i: int, cnt: int, sender: int) -> None:
        p = self._server.preset
        parts = ct.ciphertext()
        if len(parts) != 1:
            raise ProtocolError(f"CKKS server: client {sender} chunk {i} is split into {len(parts)} ciphertexts")
        c = parts[0]
        if c.poly_modulus_degree() != p.poly_modulus_degree or c.coeff_modulus_size() != p.fresh_level_primes or c.size() != 2:
            raise ProtocolError(f"CKKS server: client {sender} chunk {i} is not a fresh ciphertext of {p.name} (wrong degree, level or size)")
        if c.scale != 2.0**p.scale_bits:
            raise ProtocolError(f"CKKS server: client {sender} chunk {i} is not a fresh ciphertext of {p.name} (scale 2^{math.log2(c.scale):.2f}, expected 2^{p.scale_bits})")
        if ct.size() != cnt:
            raise ProtocolError(f"CKKS server: client {sender} chunk {i} holds {ct.size()} values, manifest says {cnt}")

    def add(self, update: bytes) -> None:
        """Validate one client's update message and add ``(w_i / W) * ciphertext`` to the sum (all or nothing)."""
        if self._finished:
            raise ProtocolError("CKKS server: round already finished")
        msg = HEMessage.from_bytes(update, expect_scheme="ckks", expect_kind="update")
        msg.require_context(self._server.context_id, who="CKKS server")
        self._book.check(msg.round_index, msg.sender)
        if msg.manifest is None:
            raise ProtocolError(f"CKKS server: client {msg.sender} update has no chunk manifest")
        msg.manifest.require_equal(self._manifest, who=f"CKKS server, client {msg.sender}")
        ctx = self._server.context
        cts = []
        for i, ((_, cnt), blob) in enumerate(zip(msg.manifest.chunks, msg.blobs)):
            try:
                ct = ts.ckks_vector_from(ctx, blob)
            except Exception as exc:
                raise ProtocolError(f"CKKS server: client {msg.sender} chunk {i} is not a valid CKKS ciphertext ({exc})") from None
            self._check_fresh(ct, i, cnt, msg.sender)
            cts.append(ct)
        scale = self._book.weights[msg.sender] / self._book.total_weight
        try:
            for ct in cts:
                ct.mul_(scale)
        except Exception as exc:
            raise ProtocolError(f"CKKS server: homomorphic operation failed on client {msg.sender}'s update ({exc})") from None
        if self._acc is None:
            self._acc = cts
        else:
            # validated fresh ciphertexts of this context, multiplied alike: the in-place adds cannot fail
            for a, c in zip(self._acc, cts):
                a.add_(c)
        self._book.record(msg.sender)
        self._received_weight += self._book.weights[msg.sender]

    @property
    def received(self) -> tuple[int, ...]:
        return tuple(self._book.received)

    def finish(self) -> bytes:
        """Close the round; return the aggregate message for the clients to decrypt."""
        if self._finished:
            raise ProtocolError("CKKS server: round already finished")
        self._book.require_nonempty()
        assert self._acc is not None
        blobs = tuple(a.serialize() for a in self._acc)
        frac = self._received_weight / self._book.total_weight
        msg = HEMessage(
            "ckks", "aggregate", self._server.context_id, self._book.round_index, -1, self._manifest,
            params={"received_fraction": frac, "included": list(self._book.received)},
            blobs=blobs,
        ).to_bytes()
        self._finished = True
        self._server._replay.mark_finished(self._book.round_index)
        return msg
