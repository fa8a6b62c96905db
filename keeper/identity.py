"""A share keeper's keys: its Ed25519 identity (signs answers) and its X25519 sealing key (opens seeds).

Both live under `<data_dir>/keys/` as PKCS#8 PEM files of mode 0600 in a 0700 directory,
created on first start and never overwritten. The X25519 public key is published signed by
the identity (`protocol.rounds.KeeperKey`), so a hub cannot swap it for one of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.files import make_private_dir
from protocol.keys import KeyFileError, SigningKey, load_or_create, load_private_key, save_private_key
from protocol.rounds import KeeperKey


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
        try:
            save_private_key(path, key)  # never over an existing key
            return key
        except FileExistsError:
            pass  # created meanwhile by another process: use theirs
        except OSError as exc:
            raise KeyFileError(f"cannot write key file {path}: {exc.strerror or exc}") from None
    return load_private_key(path, "X25519")
