"""Ed25519 keys: public keys and their key ids, signing keys; private key files on disk.

    LiberationError
    ├── KeyFormatError (also a ValueError)   key text or seed that is not an Ed25519 key, or a
    │                                        small-order / non-canonical public key
    └── KeyFileError                         key file missing, unsafe (mode), or not PKCS#8 of its kind

A node or hub keeps its private key as an unencrypted PKCS#8 PEM file of mode
0600 (`SigningKey.save`), next to `<stem>.pub` holding the base64 public key; a
share keeper keeps its X25519 sealing key the same way (`save_private_key`).
Error messages name files and modes, never key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.errors import LiberationError
from protocol.files import write_file_then

KEY_ID_PREFIX = b"liberation-key-id/v1\x00"
"""Domain-separation prefix hashed before the raw public key to derive a key id."""

PUBLIC_KEY_SIZE = 32
"""Bytes in a raw Ed25519 public key."""
SIGNATURE_SIZE = 64
"""Bytes in an Ed25519 signature."""
SEED_SIZE = 32
"""Bytes in an Ed25519 private key seed."""
PRIVATE_KEY_MODE = 0o600
"""Mode of a saved private key file."""
PUBLIC_KEY_MODE = 0o644
"""Mode of the `<stem>.pub` file beside it."""
MAX_KEY_FILE_SIZE = 16 * 1024  # a PKCS#8 Ed25519 PEM is 119 bytes

PrivateKey = Ed25519PrivateKey | X25519PrivateKey
"""The private keys kept in files: a signing key (Ed25519), a share keeper's sealing key (X25519)."""
Algorithm = Literal["Ed25519", "X25519"]
_KEY_TYPES: dict[str, type[PrivateKey]] = {"Ed25519": Ed25519PrivateKey, "X25519": X25519PrivateKey}

_FIELD_PRIME = 2**255 - 19
_SMALL_ORDER_Y = frozenset(
    {
        0,  # order 4 (x = ±sqrt(-1))
        1,  # order 1: the identity
        _FIELD_PRIME - 1,  # order 2
        # order 8, two y coordinates, each with both signs of x
        int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little"),
        int.from_bytes(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"),
    }
)
"""y coordinates of the 8 Ed25519 points whose order divides the cofactor 8 (libsodium's blocklist).

Under such a key one fixed signature (R = identity, S = 0) verifies for many
messages, and OpenSSL accepts the keys: a key that proves nothing is refused.
"""

_PEM_PRIVATE_HEADER = b"-----BEGIN PRIVATE KEY-----"
_PEM_ENCRYPTED_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


class KeyFormatError(LiberationError, ValueError):
    """Key text (base64, PEM) or a seed that does not hold an Ed25519 key."""


class KeyFileError(LiberationError):
    """A key file that is missing, readable by others, already present, or not PKCS#8 of the kind expected."""


def key_id_of(raw: bytes) -> str:
    """The key id of a raw public key: hex of the first 16 bytes of SHA-256(KEY_ID_PREFIX + raw)."""
    return hashlib.sha256(KEY_ID_PREFIX + raw).digest()[:16].hex()


def _refuse_weak_encoding(raw: bytes) -> None:
    """KeyFormatError for a non-canonical encoding (y >= p) or a small-order point, whatever its sign bit."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _FIELD_PRIME:
        raise KeyFormatError("not a canonical Ed25519 public key encoding (y is not reduced mod p)")
    if y in _SMALL_ORDER_Y:
        raise KeyFormatError("a small-order Ed25519 point is not a usable public key (forged signatures verify under it)")


def public_key_path(key_path: str | os.PathLike[str]) -> Path:
    """Where `SigningKey.save` puts the public key: `<stem>.pub` beside the key file."""
    path = Path(key_path)
    return path.with_name(path.stem + ".pub")


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, compared by its 32 raw bytes."""

    raw: bytes
    key_id: str = field(init=False, compare=False)
    """Lowercase hex (32 characters) of the first 16 bytes of SHA-256(KEY_ID_PREFIX + raw)."""
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.raw) is not bytes or len(self.raw) != PUBLIC_KEY_SIZE:
            raise KeyFormatError("an Ed25519 public key is 32 raw bytes")
        _refuse_weak_encoding(self.raw)
        try:
            key = Ed25519PublicKey.from_public_bytes(self.raw)
        except ValueError:
            raise KeyFormatError("not an Ed25519 public key") from None
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "key_id", key_id_of(self.raw))

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"

    @classmethod
    def from_raw(cls, raw: bytes | bytearray | memoryview) -> PublicKey:
        """The key of 32 raw bytes (RFC 8032 encoding)."""
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise KeyFormatError("an Ed25519 public key is 32 raw bytes")
        return cls(bytes(raw))

    @classmethod
    def from_b64(cls, text: str | bytes) -> PublicKey:
        """The key of standard base64 of its 32 raw bytes (surrounding whitespace allowed)."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError("public key is not valid base64") from None
        if len(raw) != PUBLIC_KEY_SIZE:
            raise KeyFormatError("base64 public key does not decode to 32 bytes")
        return cls(raw)

    @classmethod
    def from_pem(cls, text: str | bytes) -> PublicKey:
        """The key of a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`)."""
        data = text.encode() if isinstance(text, str) else text
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyFormatError("not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError("PEM public key is not an Ed25519 key")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @classmethod
    def parse(cls, text: str | bytes) -> PublicKey:
        """The key of either a PEM or base64 text (what `--key BASE64|FILE` gives)."""
        data = text.encode() if isinstance(text, str) else text
        if b"-----BEGIN" in data:
            return cls.from_pem(data)
        return cls.from_b64(data)

    @property
    def b64(self) -> str:
        """Standard base64 of the 32 raw bytes."""
        return base64.b64encode(self.raw).decode("ascii")

    @property
    def pem(self) -> str:
        """SubjectPublicKeyInfo PEM, as OpenSSL's `-pubin -inkey` reads it."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if `signature` is this key's Ed25519 signature of `message`."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key; `repr` and errors show its key id only."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public: PublicKey = PublicKey(
            key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        """The matching public key."""

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.public.key_id!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key of a 32-byte RFC 8032 seed (test vectors; never for real keys)."""
        if type(seed) is not bytes or len(seed) != SEED_SIZE:
            raise KeyFormatError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message` (deterministic)."""
        return self._key.sign(message)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as PKCS#8 PEM of mode 0600, and its base64 public key to `<stem>.pub`.

        The key file appears complete or not at all, is never readable by
        others, and an existing file is never overwritten (KeyFileError).
        Missing parent directories are created with mode 0700. The `.pub`
        file is public and (re)written to match.
        """
        try:
            self._save(Path(path))
        except FileExistsError:
            raise KeyFileError(f"{os.fspath(path)} already exists; refusing to overwrite a key") from None

    def _save(self, path: Path) -> None:
        if path.suffix == ".pub":
            raise KeyFileError(f"{path}: a private key file must not be named *.pub")
        if os.path.lexists(path):
            raise FileExistsError(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            save_private_key(path, self._key)
            write_file_then(public_key_path(path), (self.public.b64 + "\n").encode(), PUBLIC_KEY_MODE, os.replace)
        except FileExistsError:
            raise
        except OSError as exc:
            raise KeyFileError(f"cannot write key file {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a key written by `save`: refused unless mode has no group/other bits and it is PKCS#8 Ed25519."""
        return cls(load_private_key(path, "Ed25519"))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load the key at `path`, or generate and save one there if there is none (first start)."""
        if os.path.lexists(path):
            return cls.load(path)
        key = cls.generate()
        try:
            key._save(Path(path))
        except FileExistsError:
            return cls.load(path)  # another process created it first: use theirs
        return key


def load_or_create(path: str | os.PathLike[str]) -> SigningKey:
    """Load the signing key at `path`, creating it on first start (see `SigningKey.load_or_create`)."""
    return SigningKey.load_or_create(path)


def save_private_key(path: Path, key: PrivateKey) -> None:
    """Write `key` as unencrypted PKCS#8 PEM of mode 0600; FileExistsError if `path` exists.

    link() publishes the complete temporary file under its name, or fails with
    FileExistsError: the file appears whole or not at all, and is never an overwrite.
    """
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_file_then(path, pem, PRIVATE_KEY_MODE, os.link)


@overload
def load_private_key(path: str | os.PathLike[str], algorithm: Literal["Ed25519"]) -> Ed25519PrivateKey: ...
@overload
def load_private_key(path: str | os.PathLike[str], algorithm: Literal["X25519"]) -> X25519PrivateKey: ...
def load_private_key(path: str | os.PathLike[str], algorithm: Algorithm) -> PrivateKey:
    """Read a key file written by `save_private_key`: KeyFileError unless it is a regular file without
    group/other mode bits holding a PKCS#8 PEM key of `algorithm`."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {name}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {name}: {exc.strerror or exc}") from None
    try:
        # fstat on the open file: the mode checked is the mode of the bytes read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {name} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {name} has mode {mode:04o}, readable beyond its owner; "
                f"run `chmod 600 {name}`"
            )
        data = b""
        while len(data) <= MAX_KEY_FILE_SIZE and (chunk := os.read(fd, MAX_KEY_FILE_SIZE + 1)):
            data += chunk
    finally:
        os.close(fd)
    return _parse_private_pem(data, name, algorithm)


def _parse_private_pem(data: bytes, name: str, algorithm: Algorithm) -> PrivateKey:
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyFileError(f"key file {name} is too large to be an {algorithm} key")
    text = data.lstrip()
    if text.startswith(_PEM_ENCRYPTED_HEADER):
        raise KeyFileError(f"key file {name} is encrypted; an unencrypted PKCS#8 PEM is required")
    if not text.startswith(_PEM_PRIVATE_HEADER):
        raise KeyFileError(f"key file {name} is not a PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The library's message is dropped: it is not ours to vouch that it holds no key bytes.
        raise KeyFileError(f"key file {name} is not a valid PKCS#8 private key") from None
    if not isinstance(key, _KEY_TYPES[algorithm]):
        raise KeyFileError(f"key file {name} holds a key that is not {algorithm}")
    return key
