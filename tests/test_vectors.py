"""Byte-exact wire vectors (tests/vectors/*.json): our encoder, signer and verifier, and OpenSSL, agree."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from protocol.codec import EnvelopeError, encode_canonical
from protocol.envelope import SIGNING_PREFIX, verify_envelope
from protocol.keys import PublicKey, SigningKey
from protocol.snapshot import Snapshot
from tests.vectors import make_vectors

VECTOR_DIR = Path(__file__).parent / "vectors"
VECTOR_PATHS = sorted(VECTOR_DIR.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


ALL = [pytest.param(_load(path), id=path.stem) for path in VECTOR_PATHS]
ACCEPTED = [pytest.param(_load(path), id=path.stem) for path in VECTOR_PATHS if _load(path)["expect"] == "accept"]
REJECTED = [pytest.param(_load(path), id=path.stem) for path in VECTOR_PATHS if _load(path)["expect"] == "reject"]


def test_vectors_exist() -> None:
    assert len(ACCEPTED) >= 3
    assert {"minimal", "typical", "merged"} <= {path.stem for path in VECTOR_PATHS}


def test_make_vectors_regenerates_the_files_byte_for_byte() -> None:
    built = make_vectors.build_vectors()
    assert sorted(built) == [path.stem for path in VECTOR_PATHS]
    for stem, vector in built.items():
        assert make_vectors.render(vector) == (VECTOR_DIR / f"{stem}.json").read_text(encoding="utf-8"), stem


@pytest.mark.parametrize("scale, variance", sorted(make_vectors.VARIANCE.items()))
def test_vector_variances_follow_the_discrete_laplace_formula(scale: float, variance: float) -> None:
    a = math.exp(-1 / scale)
    assert variance == pytest.approx(2 * a / (1 - a) ** 2, rel=1e-12)


@pytest.mark.parametrize("vector", ALL)
def test_key_fields(vector: dict[str, Any]) -> None:
    key = SigningKey.from_seed(bytes.fromhex(vector["seed_hex"]))
    assert key.public.raw.hex() == vector["public_key_hex"]
    assert key.public.b64 == vector["public_key_b64"]
    assert key.public.pem == vector["public_key_pem"]
    assert key.public.key_id == vector["key_id"]
    assert PublicKey.parse(vector["public_key_pem"]) == PublicKey.parse(vector["public_key_b64"]) == key.public
    assert SIGNING_PREFIX.hex() == vector["signing_prefix_hex"]


@pytest.mark.parametrize("vector", ALL)
def test_envelope_is_the_canonical_map_of_the_fields(vector: dict[str, Any]) -> None:
    fields = {
        "body": bytes.fromhex(vector["body_hex"]),
        "pk": bytes.fromhex(vector["public_key_hex"]),
        "sig": bytes.fromhex(vector["signature_hex"]),
        "v": 1,
    }
    assert encode_canonical(fields).hex() == vector["envelope_hex"]


@pytest.mark.parametrize("vector", ALL)
def test_signature_validity(vector: dict[str, Any]) -> None:
    public = PublicKey.from_raw(bytes.fromhex(vector["public_key_hex"]))
    message = SIGNING_PREFIX + bytes.fromhex(vector["body_hex"])
    assert public.verify(bytes.fromhex(vector["signature_hex"]), message) is vector["signature_valid"]


@pytest.mark.parametrize("vector", ACCEPTED)
def test_accepted_vector(vector: dict[str, Any]) -> None:
    key = SigningKey.from_seed(bytes.fromhex(vector["seed_hex"]))
    snapshot = Snapshot.model_validate(vector["snapshot"])
    body = snapshot.to_bytes()
    assert body.hex() == vector["body_hex"]
    assert key.sign(SIGNING_PREFIX + body).hex() == vector["signature_hex"]  # Ed25519 is deterministic

    verified = verify_envelope(bytes.fromhex(vector["envelope_hex"]))
    assert verified.snapshot == snapshot
    assert verified.body.hex() == vector["body_hex"]
    assert verified.digest == vector["body_sha256"]
    assert verified.public_key.key_id == vector["key_id"] == snapshot.node


@pytest.mark.parametrize("vector", REJECTED)
def test_rejected_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as caught:
        verify_envelope(bytes.fromhex(vector["envelope_hex"]))
    assert caught.value.reason == vector["reason"]
    assert type(caught.value).__name__ == vector["error"]


# --- an independent verifier --------------------------------------------------


def _openssl() -> str:
    path = shutil.which("openssl")
    reason = "openssl is not on PATH: the vectors cannot be cross-checked with an independent verifier"
    if path is not None:
        version = subprocess.run([path, "version"], capture_output=True, text=True, check=False).stdout
        match = re.match(r"OpenSSL (\d+)\.", version)
        if match and int(match.group(1)) >= 3:
            return path
        reason = f"`pkeyutl -rawin` for Ed25519 needs OpenSSL 3, found {version.strip()!r}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run this check)")
    pytest.skip(reason)


def _openssl_verifies(openssl: str, directory: Path, pem: str, message: bytes, signature: bytes) -> bool:
    (directory / "pub.pem").write_text(pem)
    (directory / "msg.bin").write_bytes(message)
    (directory / "sig.bin").write_bytes(signature)
    result = subprocess.run(
        [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg.bin", "-sigfile", "sig.bin"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return result.returncode == 0 and "Signature Verified Successfully" in result.stdout


@pytest.mark.parametrize("vector", ALL)
def test_openssl_agrees(vector: dict[str, Any], tmp_path: Path) -> None:
    openssl = _openssl()
    message = bytes.fromhex(vector["signing_prefix_hex"] + vector["body_hex"])
    signature = bytes.fromhex(vector["signature_hex"])
    pem = vector["public_key_pem"]
    assert _openssl_verifies(openssl, tmp_path, pem, message, signature) is vector["signature_valid"]
    if vector["signature_valid"]:
        flipped = bytes([signature[0] ^ 0x80]) + signature[1:]
        assert not _openssl_verifies(openssl, tmp_path, pem, message, flipped)
        tampered = message[:-1] + bytes([message[-1] ^ 0x01])
        assert not _openssl_verifies(openssl, tmp_path, pem, tampered, signature)
