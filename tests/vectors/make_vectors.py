"""Regenerate the snapshot wire test vectors, byte for byte: `python -m tests.vectors.make_vectors`.

Everything is derived from fixed inputs (a 32-byte seed, fixed snapshots);
Ed25519 signatures are deterministic, so a run reproduces the files exactly
(tests/test_vectors.py checks that it does).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from protocol.codec import encode_canonical
from protocol.envelope import ENVELOPE_VERSION, SIGNING_PREFIX
from protocol.keys import SigningKey
from protocol.snapshot import FORMAT, INT64_MAX, INT64_MIN, MetricCells, Snapshot

HERE = Path(__file__).parent
SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))
CATALOG = hashlib.sha256(b"liberation-analytics test catalog").hexdigest()
DAY = 86_400
JAN_23_2025 = 1_737_590_400  # 2025-01-23T00:00:00Z

FIELD_COMMENTS: dict[str, str] = {
    "expect": "`accept`: verify_envelope returns the snapshot below. `reject`: it raises EnvelopeError with `reason`.",
    "reason": "The EnvelopeError reason code a conforming verifier reports (null when accepted).",
    "error": "The EnvelopeError subclass raised: DecodeError or SignatureError (null when accepted).",
    "signature_valid": "Whether the Ed25519 signature verifies over signing_prefix + body (what OpenSSL checks).",
    "seed_hex": "RFC 8032 private key seed, 32 bytes.",
    "public_key_hex": "Raw Ed25519 public key of the seed, 32 bytes (the envelope's `pk`).",
    "public_key_b64": "Standard base64 of the raw public key (the `<key>.pub` file and CLI `--key` form).",
    "public_key_pem": "SubjectPublicKeyInfo PEM of the public key, for `openssl pkeyutl -pubin -inkey`.",
    "key_id": "Hex of the first 16 bytes of SHA-256(b'liberation-key-id/v1\\x00' + raw public key).",
    "signing_prefix_hex": "Domain-separation prefix: ASCII 'liberation-analytics/snapshot/v1' and one 0x00 byte.",
    "body_hex": "The body: canonical msgpack of the snapshot map (for reject vectors, the bytes as sent).",
    "body_sha256": "Hex SHA-256 of the body bytes (VerifiedEnvelope.digest).",
    "signature_hex": "Ed25519 signature (64 bytes) over signing_prefix + body.",
    "envelope_hex": "Canonical msgpack map {body: bin, pk: bin(32), sig: bin(64), v: 1}: the bytes on the wire.",
    "snapshot": (
        "The snapshot the body holds, as JSON. Integers are exact 64-bit values: "
        "read them with a parser that keeps int64 (not IEEE doubles)."
    ),
}


# Discrete Laplace variance 2a/(1-a)^2, a = exp(-1/scale), written out so the
# files never depend on the platform's exp() (test_vectors checks the values).
VARIANCE: dict[float, float] = {
    1.0: 1.8413471884155848,
    2.0: 7.835396178065527,
    5.0: 49.833666138305894,
    1 / 0.3: 22.05630288539704,
}


def _variance(scale: float) -> float:
    return VARIANCE[scale]


def _cells(
    epsilon: float,
    scale: float,
    threshold: int,
    idx: list[int],
    val: list[int],
    other_idx: list[int],
    other_val: list[int],
    *,
    merged_nodes: int = 1,
) -> MetricCells:
    return MetricCells(
        epsilon=epsilon,
        scale=scale,
        variance=merged_nodes * _variance(scale),
        threshold=threshold,
        idx=idx,
        val=val,
        other_idx=other_idx,
        other_val=other_val,
    )


def minimal_snapshot(node: str) -> Snapshot:
    """One metric, one cell, no `other` cell."""
    return Snapshot(
        format=FORMAT,
        node=node,
        catalog=CATALOG,
        window_start=JAN_23_2025,
        window_end=JAN_23_2025 + DAY,
        seq=1,
        created=JAN_23_2025 + DAY + 3600,
        nodes=1,
        metrics={"usage": _cells(1.0, 1.0, 10, [3], [12], [], [])},
    )


def typical_snapshot(node: str) -> Snapshot:
    """Several metrics, negative values, `other` cells, every msgpack int width up to int64's limits."""
    return Snapshot(
        format=FORMAT,
        node=node,
        catalog=CATALOG,
        window_start=JAN_23_2025,
        window_end=JAN_23_2025 + DAY,
        seq=7,
        created=JAN_23_2025 + DAY + 600,
        nodes=1,
        metrics={
            "usage": _cells(0.2, 5.0, 10, [0, 1, 4, 9], [57, 12, 230, 10], [0, 2], [-3, 14]),
            "geography": _cells(0.3, 1 / 0.3, 12, [3, 250, 4000], [128, 4096, 70000], [0], [-31]),
            "extremes": _cells(
                0.5,
                2.0,
                0,
                [0, 127, 128, 65535, 65536, 2**32, INT64_MAX - 1, INT64_MAX],
                [INT64_MIN, -(2**31) - 1, -32769, -129, -33, -32, 127, INT64_MAX],
                [0, 1, INT64_MAX],
                [-1, 0, INT64_MIN],
            ),
        },
    )


def merged_snapshot(node: str) -> Snapshot:
    """A hub's merge of 17 node snapshots over a 31-day window; one metric entirely suppressed."""
    start = JAN_23_2025 - 22 * DAY  # 2025-01-01
    return Snapshot(
        format=FORMAT,
        node=node,
        catalog=CATALOG,
        window_start=start,
        window_end=start + 31 * DAY,
        seq=2**40,
        created=start + 31 * DAY + 7200,
        nodes=17,
        metrics={
            "sessions-by-country": _cells(1.0, 1.0, 10, [0, 5, 17], [1000, 250, 12], [0], [41], merged_nodes=17),
            "session-duration": _cells(0.5, 2.0, 25, [], [], [], []),
        },
    )


def _envelope(body: bytes, public_raw: bytes, signature: bytes) -> bytes:
    return encode_canonical({"body": body, "pk": public_raw, "sig": signature, "v": ENVELOPE_VERSION})


def _vector(
    description: str,
    key: SigningKey,
    snapshot: Snapshot,
    *,
    body: bytes | None = None,
    signature: bytes | None = None,
    expect: str = "accept",
    reason: str | None = None,
    error: str | None = None,
    signature_valid: bool = True,
) -> dict[str, Any]:
    body = snapshot.to_bytes() if body is None else body
    signature = key.sign(SIGNING_PREFIX + body) if signature is None else signature
    fields: dict[str, Any] = {
        "expect": expect,
        "reason": reason,
        "error": error,
        "signature_valid": signature_valid,
        "seed_hex": SEED.hex(),
        "public_key_hex": key.public.raw.hex(),
        "public_key_b64": key.public.b64,
        "public_key_pem": key.public.pem,
        "key_id": key.public.key_id,
        "signing_prefix_hex": SIGNING_PREFIX.hex(),
        "body_hex": body.hex(),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "signature_hex": signature.hex(),
        "envelope_hex": _envelope(body, key.public.raw, signature).hex(),
        "snapshot": snapshot.model_dump(mode="json"),
    }
    vector: dict[str, Any] = {"_description": description}
    for name, value in fields.items():
        vector[name] = value
        vector[f"_{name}"] = FIELD_COMMENTS[name]
    return vector


def build_vectors() -> dict[str, dict[str, Any]]:
    """Every vector, by file stem."""
    key = SigningKey.from_seed(SEED)
    node = key.public.key_id
    minimal = minimal_snapshot(node)
    good_signature = key.sign(SIGNING_PREFIX + minimal.to_bytes())
    bad_signature = good_signature[:-1] + bytes([good_signature[-1] ^ 0x01])

    # seq 1 as uint16 (0xcd 0x00 0x01) instead of positive fixint 0x01: same
    # value, not canonical. Signed properly, so only step (6) can catch it.
    canonical_body = minimal.to_bytes()
    seq_canonical = b"\xa3seq\x01"
    assert canonical_body.count(seq_canonical) == 1
    long_seq_body = canonical_body.replace(seq_canonical, b"\xa3seq\xcd\x00\x01")

    other_node = SigningKey.from_seed(OTHER_SEED).public.key_id
    return {
        "minimal": _vector("Minimal snapshot: one metric, one cell, no other cell.", key, minimal),
        "typical": _vector(
            "Typical node snapshot: three metrics, negative values, other cells, int64 extremes.",
            key,
            typical_snapshot(node),
        ),
        "merged": _vector(
            "Hub snapshot: 17 nodes merged over the longest window (31 days); a metric with no cells.",
            key,
            merged_snapshot(node),
        ),
        "reject_bad_signature": _vector(
            "The minimal envelope with the last signature bit flipped: rejected at step (5).",
            key,
            minimal,
            signature=bad_signature,
            expect="reject",
            reason="bad-signature",
            error="SignatureError",
            signature_valid=False,
        ),
        "reject_not_canonical": _vector(
            "The minimal body with seq written as uint16 0xcd 0x0001, correctly signed: "
            "the signature verifies, the body is rejected at step (6).",
            key,
            minimal,
            body=long_seq_body,
            expect="reject",
            reason="not-canonical",
            error="DecodeError",
        ),
        "reject_key_mismatch": _vector(
            "A valid body naming another node's key id (of seed 0x01..0x20), signed by this key: "
            "rejected at step (7).",
            key,
            minimal_snapshot(other_node),
            expect="reject",
            reason="key-mismatch",
            error="SignatureError",
        ),
    }


def render(vector: dict[str, Any]) -> str:
    """A vector's file text."""
    return json.dumps(vector, indent=2, ensure_ascii=True) + "\n"


def main() -> None:
    for stem, vector in build_vectors().items():
        path = HERE / f"{stem}.json"
        path.write_text(render(vector), encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
