"""Wire format of secagg.he: manifests and framed messages reject every malformed input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import DataError, ProtocolError
from secagg.he.messages import ChunkManifest, HEMessage, check_plain_vector, context_id_of

CTX = context_id_of(b"test")


def _msg(**kw) -> HEMessage:
    man = ChunkManifest.for_length(10, 4)
    base = dict(scheme="ckks", kind="update", context_id=CTX, round_index=3, sender=7, manifest=man,
                params={"a": 1}, blobs=(b"x" * 5, b"", b"zz"))
    base.update(kw)
    return HEMessage(**base)


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 10_000), st.integers(1, 5000))
def test_manifest_for_length_tiles_the_vector(length, chunk):
    m = ChunkManifest.for_length(length, chunk)
    assert m.num_chunks == -(-length // chunk)
    assert sum(c for _, c in m.chunks) == length
    assert all(c == chunk for _, c in m.chunks[:-1])
    assert ChunkManifest.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    "chunks,total,size",
    [
        (((0, 4), (5, 4)), 9, 4),  # gap
        (((0, 4), (3, 4)), 8, 4),  # overlap
        (((0, 5),), 5, 4),  # chunk larger than chunk_size
        (((0, 4), (4, 0)), 4, 4),  # empty chunk
        (((0, 4),), 5, 4),  # does not cover total
        (((1, 4),), 4, 4),  # does not start at 0
    ],
)
def test_manifest_rejects_bad_tilings(chunks, total, size):
    with pytest.raises(ProtocolError, match="chunk manifest"):
        ChunkManifest(total, size, chunks)


def test_manifest_require_equal_names_the_problem():
    a = ChunkManifest.for_length(10, 4)
    with pytest.raises(ProtocolError, match="vector length 10 != expected 11"):
        a.require_equal(ChunkManifest.for_length(11, 4), who="t")
    with pytest.raises(ProtocolError, match="manifest mismatch"):
        a.require_equal(ChunkManifest.for_length(10, 5), who="t")
    a.require_equal(ChunkManifest.for_length(10, 4), who="t")


def test_roundtrip_preserves_every_field():
    m = _msg()
    back = HEMessage.from_bytes(m.to_bytes(), expect_scheme="ckks", expect_kind="update")
    assert back == m


def test_any_flipped_byte_is_detected():
    data = bytearray(_msg().to_bytes())
    for pos in range(0, len(data), 7):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(ProtocolError):
            HEMessage.from_bytes(bytes(bad))


def test_truncated_trailing_and_foreign_bytes_rejected():
    data = _msg().to_bytes()
    with pytest.raises(ProtocolError):
        HEMessage.from_bytes(data[:-1])
    with pytest.raises(ProtocolError):
        HEMessage.from_bytes(data + b"\x00")
    with pytest.raises(ProtocolError, match="bad magic"):
        HEMessage.from_bytes(b"XXXX" + data[4:])
    with pytest.raises(ProtocolError, match="expected bytes"):
        HEMessage.from_bytes("not bytes")  # type: ignore[arg-type]


def test_wrong_scheme_or_kind_rejected():
    data = _msg().to_bytes()
    with pytest.raises(ProtocolError, match="scheme"):
        HEMessage.from_bytes(data, expect_scheme="paillier")
    with pytest.raises(ProtocolError, match="kind"):
        HEMessage.from_bytes(data, expect_kind="aggregate")


def test_blob_count_must_match_manifest():
    with pytest.raises(ProtocolError, match="blob"):
        _msg(blobs=(b"a", b"b"))


def test_other_context_rejected():
    m = _msg()
    with pytest.raises(ProtocolError, match="another context"):
        m.require_context(context_id_of(b"other"), who="t")
    m.require_context(CTX, who="t")


def test_header_rewritten_with_valid_digest_still_validated():
    # an attacker who recomputes the digest still cannot smuggle an invalid manifest
    m = _msg()
    data = m.to_bytes()
    forged = data[:-32].replace(b'"chunk_size":4', b'"chunk_size":3')
    import hashlib

    with pytest.raises(ProtocolError, match="chunk manifest"):
        HEMessage.from_bytes(forged + hashlib.sha256(forged).digest())
    assert dataclasses.replace(m, round_index=4).to_bytes() != data


@pytest.mark.parametrize(
    "vec,match",
    [
        (np.array([1.0, np.nan]), "NaN or Inf"),
        (np.array([np.inf]), "NaN or Inf"),
        (np.zeros((2, 2)), "1-D"),
        (np.array([]), "empty"),
        (np.array(["a"]), "real numbers"),
        (np.array([3.0]), "exceeds"),
    ],
)
def test_check_plain_vector_rejects(vec, match):
    with pytest.raises(DataError, match=match):
        check_plain_vector(vec, name="v", max_abs=2.0)


def test_check_plain_vector_length():
    with pytest.raises(DataError, match="length 3 != expected 4"):
        check_plain_vector(np.ones(3), name="v", length=4)
    assert check_plain_vector(np.ones(3, dtype=np.float32), name="v").dtype == np.float64
