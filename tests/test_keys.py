"""Ed25519 keys: key ids, encodings, and key files that are never readable by others."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import LiberationError
from protocol.keys import (
    KEY_ID_PREFIX,
    KeyFileError,
    KeyFormatError,
    PublicKey,
    SigningKey,
    key_id_of,
    load_or_create,
    public_key_path,
)

SEED = bytes(range(32))
# Fixed by the test vectors (tests/vectors/*.json): changing them breaks every enrolled node.
SEED_PUBLIC_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
SEED_KEY_ID = "b75f710e19bedca25c57f1dae38c7701"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --- public keys ------------------------------------------------------------


def test_key_id_of_the_vector_seed_is_stable() -> None:
    key = SigningKey.from_seed(SEED)
    assert key.public.raw.hex() == SEED_PUBLIC_HEX
    assert key.public.key_id == SEED_KEY_ID


def test_key_id_is_truncated_domain_separated_sha256() -> None:
    raw = bytes.fromhex(SEED_PUBLIC_HEX)
    expected = hashlib.sha256(b"liberation-key-id/v1\x00" + raw).hexdigest()[:32]
    assert KEY_ID_PREFIX == b"liberation-key-id/v1\x00"
    assert key_id_of(raw) == expected == PublicKey.from_raw(raw).key_id
    assert len(expected) == 32


def test_public_key_round_trips_through_b64_and_pem() -> None:
    public = SigningKey.generate().public
    assert PublicKey.from_b64(public.b64) == public
    assert PublicKey.from_pem(public.pem) == public
    assert PublicKey.parse(public.b64) == public
    assert PublicKey.parse(public.pem) == public
    assert PublicKey.parse(f"  {public.b64}\n") == public
    assert PublicKey.parse(public.pem.encode()) == public
    assert public.pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert base64.b64decode(public.b64) == public.raw


def test_public_keys_compare_and_hash_by_raw_bytes() -> None:
    raw = bytes.fromhex(SEED_PUBLIC_HEX)
    assert PublicKey(raw) == PublicKey.from_raw(raw)
    assert hash(PublicKey(raw)) == hash(PublicKey(raw))
    assert PublicKey(raw) != SigningKey.generate().public
    assert SEED_KEY_ID in repr(PublicKey(raw))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param(base64.b64encode(bytes(31)).decode(), id="31-bytes"),
        pytest.param(base64.b64encode(bytes(33)).decode(), id="33-bytes"),
        pytest.param("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", id="bad-pem"),
        pytest.param(
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode(),
            id="ec-pem",
        ),
    ],
)
def test_parse_rejects_what_is_not_an_ed25519_public_key(text: str) -> None:
    with pytest.raises(KeyFormatError):
        PublicKey.parse(text)


def test_raw_public_key_must_be_32_bytes() -> None:
    with pytest.raises(KeyFormatError):
        PublicKey(bytes(31))
    with pytest.raises(KeyFormatError):
        PublicKey.from_raw(bytes(33))
    with pytest.raises(KeyFormatError):
        PublicKey.from_raw("0" * 32)  # type: ignore[arg-type]
    assert PublicKey.from_raw(bytearray(bytes.fromhex(SEED_PUBLIC_HEX))).key_id == SEED_KEY_ID


def test_key_errors_belong_to_the_project_hierarchy() -> None:
    assert issubclass(KeyFormatError, LiberationError)
    assert issubclass(KeyFormatError, ValueError)
    assert issubclass(KeyFileError, LiberationError)


def test_signatures_are_deterministic_and_verify() -> None:
    key = SigningKey.from_seed(SEED)
    signature = key.sign(b"message")
    assert len(signature) == 64
    assert key.sign(b"message") == signature
    assert key.public.verify(signature, b"message")
    assert not key.public.verify(signature, b"messagE")
    assert not key.public.verify(signature[:-1], b"message")
    assert not SigningKey.generate().public.verify(signature, b"message")


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(KeyFormatError):
        SigningKey.from_seed(bytes(31))


def test_signing_key_repr_shows_the_key_id_only() -> None:
    key = SigningKey.from_seed(SEED)
    assert repr(key) == f"SigningKey(key_id={SEED_KEY_ID!r})"


# --- key files --------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277])
def test_saved_key_is_0600_and_pub_is_0644_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    key = SigningKey.generate()
    path = tmp_path / "node.key"
    old = os.umask(mask)
    try:
        key.save(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    pub = public_key_path(path)
    assert pub == tmp_path / "node.pub"
    assert _mode(pub) == 0o644
    assert pub.read_text() == key.public.b64 + "\n"
    assert PublicKey.parse(pub.read_text()) == key.public
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key", "node.pub"]  # no temporary left
    assert SigningKey.load(path).public == key.public


def test_save_creates_missing_directories_private(tmp_path: Path, umask: None) -> None:
    path = tmp_path / "state" / "keys" / "hub.key"
    SigningKey.generate().save(path)
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o600


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = SigningKey.generate()
    first.save(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        SigningKey.generate().save(path)
    assert path.read_bytes() == before
    assert SigningKey.load(path).public == first.public


def test_save_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(KeyFileError, match="already exists"):
        SigningKey.generate().save(path)
    assert not (tmp_path / "elsewhere.key").exists()


def test_save_refuses_a_pub_name(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        SigningKey.generate().save(tmp_path / "node.pub")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601, 0o610])
def test_load_refuses_a_key_readable_beyond_its_owner(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    SigningKey.generate().save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as caught:
        SigningKey.load(path)
    assert f"{mode:04o}" in str(caught.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    key = SigningKey.generate()
    key.save(path)
    path.chmod(mode)
    assert SigningKey.load(path).public == key.public


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return path


EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = Ed25519PrivateKey.from_private_bytes(SEED)


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(b"", "not a PKCS#8 PEM", id="empty"),
        pytest.param(b"hello", "not a PKCS#8 PEM", id="garbage"),
        pytest.param(
            ED_KEY.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            "not a PKCS#8 PEM",
            id="openssh",
        ),
        pytest.param(
            EC_KEY.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "not Ed25519",
            id="ec-pkcs8",
        ),
        pytest.param(
            ED_KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
            "encrypted",
            id="encrypted",
        ),
        pytest.param(
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhsc\n"
            b"-----END PRIVATE KEY-----\n",
            "not a valid PKCS#8",
            id="truncated-der",
        ),
        pytest.param(b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 20000, "too large", id="huge"),
    ],
)
def test_load_refuses_what_is_not_a_pkcs8_ed25519_pem(tmp_path: Path, data: bytes, message: str) -> None:
    path = _write_private(tmp_path / "node.key", data)
    with pytest.raises(KeyFileError, match=message) as caught:
        SigningKey.load(path)
    # Error messages never carry key material.
    text = str(caught.value)
    for line in data.splitlines():
        if len(line) > 16 and not line.startswith(b"-----"):
            assert line.decode(errors="replace") not in text
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_load_reports_a_missing_file_and_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        SigningKey.load(tmp_path / "absent.key")
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        SigningKey.load(directory)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    created = load_or_create(path)
    assert _mode(path) == 0o600
    assert load_or_create(path).public == created.public
    assert SigningKey.load_or_create(path).public == created.public


def test_load_or_create_uses_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    existing = SigningKey.from_seed(SEED)
    existing.save(path)
    assert load_or_create(path).public.key_id == SEED_KEY_ID


def test_load_or_create_still_refuses_an_unsafe_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    SigningKey.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError):
        load_or_create(path)


def test_public_key_path_convention() -> None:
    assert public_key_path("keys/node.key") == Path("keys/node.pub")
    assert public_key_path("node") == Path("node.pub")
    assert public_key_path("a.b.key") == Path("a.b.pub")
