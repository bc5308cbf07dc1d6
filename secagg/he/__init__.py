"""Homomorphic aggregation of flat float vectors (no torch).

Two schemes behind the same three roles (key holder, client, server):

* :mod:`secagg.he.ckks` -- CKKS with TenSEAL: approximate arithmetic on floats
  (error ~1e-9), ~15x ciphertext expansion, fast (SIMD over N/2 slots per ciphertext).
* :mod:`secagg.he.paillier` -- BatchCrypt-style packed Paillier with phe + gmpy2:
  exact integer sums of fixed-point values, 60-90 values per 2048/3072-bit plaintext,
  ~2x expansion, slow to encrypt (~15 s per 100k values at 2048 bits).

In both, the key holder (a client) creates the keys, all clients share the secret
key, and the server holds only public material (CKKS: the parameters; Paillier: the
modulus n): it adds and scales ciphertexts and cannot decrypt. A client colluding with
the server could decrypt every individual update; prefer :mod:`secagg.smpc` then. Wire format and validation: :mod:`secagg.he.messages`. See
``docs/he.md`` for the threat model and measured costs.
"""

from secagg.he.ckks import (
    CKKS_8192,
    CKKS_16384,
    CKKS_PRESETS,
    CKKSAggregate,
    CKKSClient,
    CKKSKeyHolder,
    CKKSPreset,
    CKKSRound,
    CKKSServer,
    choose_ckks_preset,
)
from secagg.he.messages import ChunkManifest, HEMessage
from secagg.he.paillier import (
    PaillierAggregate,
    PaillierClient,
    PaillierConfig,
    PaillierKeyHolder,
    PaillierRound,
    PaillierServer,
    pack_slots,
    quantize,
    unpack_slots,
)

__all__ = [
    "CKKS_8192",
    "CKKS_16384",
    "CKKS_PRESETS",
    "CKKSAggregate",
    "CKKSClient",
    "CKKSKeyHolder",
    "CKKSPreset",
    "CKKSRound",
    "CKKSServer",
    "choose_ckks_preset",
    "ChunkManifest",
    "HEMessage",
    "PaillierAggregate",
    "PaillierClient",
    "PaillierConfig",
    "PaillierKeyHolder",
    "PaillierRound",
    "PaillierServer",
    "pack_slots",
    "quantize",
    "unpack_slots",
]
