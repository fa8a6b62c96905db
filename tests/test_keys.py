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


# The 8 points of order dividing 8, by y coordinate (x's sign in bit 255), and the two
# non-canonical encodings y = p and y = p + 1 of y = 0 and y = 1: libsodium's blocklist.
SMALL_ORDER_HEX = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
    "0000000000000000000000000000000000000000000000000000000000000000",  # all zero (order 4)
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4, other x
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p - 1 (order 2)
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8, other x
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8, other x
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, x = -0
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, x = -0
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p (= 0)
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1 (= 1)
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
]
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def _times_8(raw: bytes) -> tuple[int, int] | None:
    """[8]A of an encoded point, read leniently (y mod p, x = 0 whatever the sign), or None off the curve.

    A textbook edwards25519 oracle, independent of the key module's list.
    """
    n = int.from_bytes(raw, "little")
    y, sign = (n & ((1 << 255) - 1)) % _P, n >> 255
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if (x * x - x2) % _P:
        return None
    if x and x & 1 != sign:
        x = _P - x
    point = (x, y)
    for _ in range(3):
        (x1, y1) = point
        t = _D * x1 * x1 * y1 * y1
        point = (2 * x1 * y1 * pow(1 + t, -1, _P) % _P, (y1 * y1 + x1 * x1) * pow(1 - t, -1, _P) % _P)
    return point


@pytest.mark.parametrize("raw_hex", SMALL_ORDER_HEX, ids=[f"{i:02d}-{h[:4]}..{h[-2:]}" for i, h in enumerate(SMALL_ORDER_HEX)])
def test_small_order_public_keys_are_refused_in_every_encoding(raw_hex: str) -> None:
    """Review L1: OpenSSL takes these keys, and under the identity key (R = identity, S = 0) verifies for any message."""
    raw = bytes.fromhex(raw_hex)
    assert _times_8(raw) == (0, 1)  # the oracle agrees: [8]A is the identity
    der = bytes.fromhex("302a300506032b6570032100") + raw
    pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der).decode() + "\n-----END PUBLIC KEY-----\n"
    for parse in (
        lambda: PublicKey(raw),
        lambda: PublicKey.from_raw(raw),
        lambda: PublicKey.from_b64(base64.b64encode(raw)),
        lambda: PublicKey.parse(base64.b64encode(raw).decode()),
        lambda: PublicKey.from_pem(pem),
        lambda: PublicKey.parse(pem),
    ):
        with pytest.raises(KeyFormatError) as caught:
            parse()
        assert raw_hex not in str(caught.value) and base64.b64encode(raw).decode() not in str(caught.value)


def test_the_blocklist_is_every_small_order_encoding() -> None:
    """Every 32-byte string whose low 255 bits are a small-order y (or y + p) is listed, and nothing else is refused."""
    listed = {bytes.fromhex(h) for h in SMALL_ORDER_HEX}
    small_y = {int.from_bytes(raw, "little") & ((1 << 255) - 1) for raw in listed}
    assert len(listed) == 14 and len(small_y) == 7
    for _ in range(200):
        public = SigningKey.generate().public
        assert _times_8(public.raw) != (0, 1)
        assert PublicKey.from_raw(public.raw) == public
    # Other non-canonical encodings (y = p + 2 ... 2^255 - 1) are refused too: RFC 8032 requires y < p.
    with pytest.raises(KeyFormatError, match="canonical"):
        PublicKey.from_raw((_P + 2).to_bytes(32, "little"))


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
