"""A share keeper's keys: its Ed25519 identity (signs answers) and its X25519 sealing key (opens seeds).

Both live under `<data_dir>/keys/` as PKCS#8 PEM files of mode 0600 in a 0700 directory,
created on first start and never overwritten. The X25519 public key is published signed by
the identity (`protocol.rounds.KeeperKey`), so a hub cannot swap it for one of its own.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.files import PRIVATE_FILE_MODE, make_private_dir, write_file_then
from protocol.keys import KeyFileError, SigningKey, load_or_create
from protocol.rounds import KeeperKey

MAX_KEY_FILE_SIZE = 16 * 1024


@dataclass(frozen=True)
class KeeperIdentity:
    """The signing key, the sealing key, and the signed statement of the sealing key's public half."""

    signing: SigningKey
    sealing: X25519PrivateKey
    statement: KeeperKey

    @property
    def key_id(self) -> str:
        return self.signing.public.key_id


def key_paths(data_dir: Path) -> dict[str, Path]:
    keys = data_dir / "keys"
    return {"signing": keys / "signing.key", "sealing": keys / "sealing.key"}


def load_or_create_identity(data_dir: Path) -> KeeperIdentity:
    """The keeper's keys under `data_dir`, generated from the OS CSPRNG on first start."""
    paths = key_paths(data_dir)
    make_private_dir(paths["signing"].parent)
    signing = load_or_create(paths["signing"])
    sealing = _load_or_create_sealing(paths["sealing"])
    public = sealing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeeperIdentity(signing, sealing, KeeperKey.issue(signing, public))


def _load_or_create_sealing(path: Path) -> X25519PrivateKey:
    if not os.path.lexists(path):
        key = X25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        try:
            write_file_then(path, pem, PRIVATE_FILE_MODE, os.link)  # never over an existing key
            return key
        except FileExistsError:
            pass  # created meanwhile by another process: use theirs
        except OSError as exc:
            raise KeyFileError(f"cannot write key file {path}: {exc.strerror or exc}") from None
    return _load_sealing(path)


def _load_sealing(path: Path) -> X25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if mode & 0o077:
            raise KeyFileError(f"key file {path} has mode {mode:04o}, readable beyond its owner; run `chmod 600 {path}`")
        data = os.read(fd, MAX_KEY_FILE_SIZE + 1)
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"key file {path} is not a valid PKCS#8 private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"key file {path} holds a key that is not X25519")
    return key
