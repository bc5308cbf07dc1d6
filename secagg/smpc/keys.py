"""Key agreement, key derivation, share encryption and signatures for the SecAgg protocol.

All primitives come from `cryptography`:

* X25519 (RFC 7748) for the two per-round key pairs of each client: ``c`` (share
  encryption) and ``s`` (mask agreement). Private keys come from the OS CSPRNG.
* HKDF-SHA256 (RFC 5869) turns a raw X25519 output into a 256-bit key; the ``info``
  string binds the purpose, session id, round id and the (ordered) pair of client ids,
  so keys never repeat across purposes, sessions or rounds.
* AES-256-GCM encrypts Shamir shares; the associated data binds sender, receiver, round
  and session ids, so a ciphertext moved to another pair, round or session fails to
  decrypt (:class:`~secagg.smpc.errors.TamperedMessageError`).
* Ed25519 signs public keys and the survivor list in active mode; ``verify_*`` raise
  :class:`~secagg.smpc.errors.SignatureError` instead of returning a bool.

Costs: one X25519 exchange ~30 us, HKDF and AES-GCM on ~80 bytes ~ a few us each.
Per client and round: 2 * d exchanges for d neighbours (O(n) in SecAgg, O(log n) in SecAgg+).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from secagg.smpc.errors import MalformedMessageError, SignatureError, TamperedMessageError

__all__ = [
    "KEY_BYTES",
    "SIG_BYTES",
    "NONCE_BYTES",
    "generate_x25519",
    "x25519_public_bytes",
    "x25519_private_bytes",
    "x25519_from_private",
    "agree",
    "derive_mask_seed",
    "derive_share_key",
    "share_aad",
    "encrypt_share",
    "decrypt_share",
    "generate_identity",
    "identity_public_bytes",
    "sign",
    "verify",
]

KEY_BYTES = 32
SIG_BYTES = 64
NONCE_BYTES = 12
_RAW = (Encoding.Raw, PublicFormat.Raw)


def generate_x25519() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def x25519_public_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(*_RAW)


def x25519_private_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def x25519_from_private(raw: bytes) -> X25519PrivateKey:
    if len(raw) != KEY_BYTES:
        raise MalformedMessageError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def agree(sk: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret with a peer's 32-byte public key (feed it to a derive_* function)."""
    if len(peer_public) != KEY_BYTES:
        raise MalformedMessageError(f"X25519 public key must be {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        return sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:  # all-zero output: low-order point
        raise MalformedMessageError(f"invalid X25519 public key: {e}") from e


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _ctx(label: bytes, session_id: bytes, round_id: int, a: int, b: int) -> bytes:
    return label + session_id + struct.pack(">QII", round_id, a, b)


def derive_mask_seed(shared: bytes, session_id: bytes, round_id: int, u: int, v: int) -> bytes:
    """256-bit PRG seed for the pairwise mask between u and v (symmetric in u, v)."""
    return _hkdf(shared, _ctx(b"secagg/v1/pairwise-mask", session_id, round_id, min(u, v), max(u, v)))


def derive_share_key(shared: bytes, session_id: bytes, round_id: int, u: int, v: int) -> bytes:
    """256-bit AES-GCM key for share ciphertexts between u and v (symmetric; direction is in the AAD)."""
    return _hkdf(shared, _ctx(b"secagg/v1/share-encryption", session_id, round_id, min(u, v), max(u, v)))


def share_aad(session_id: bytes, round_id: int, sender: int, receiver: int) -> bytes:
    return _ctx(b"secagg/v1/share-ct", session_id, round_id, sender, receiver)


def encrypt_share(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt_share(key: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    if len(ciphertext) < NONCE_BYTES + 16:
        raise TamperedMessageError("share ciphertext too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
    except InvalidTag as e:
        raise TamperedMessageError("share ciphertext failed AES-GCM authentication (tampered, or wrong sender/receiver/round/session)") from e


def generate_identity() -> Ed25519PrivateKey:
    """A long-term Ed25519 identity key for active mode (its public half goes into SessionConfig)."""
    return Ed25519PrivateKey.generate()


def identity_public_bytes(sk: Ed25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(*_RAW)


def sign(sk: Ed25519PrivateKey, data: bytes) -> bytes:
    return sk.sign(data)


def verify(public: bytes, signature: bytes, data: bytes, what: str) -> None:
    """Raise SignatureError unless ``signature`` is a valid Ed25519 signature of ``data`` under ``public``."""
    if len(signature) != SIG_BYTES:
        raise SignatureError(f"{what}: missing or malformed signature ({len(signature)} bytes)")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except InvalidSignature as e:
        raise SignatureError(f"{what}: Ed25519 signature does not verify") from e
