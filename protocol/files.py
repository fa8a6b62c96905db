"""Private files: 0700 directories, 0600 files, atomic synced writes, whatever the umask.

Key files (protocol/keys.py) and every store's data directory are written this way.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
"""Modes of everything in a data dir: raw rows, session state and secrets are for the service's user only."""


def make_private_dir(path: os.PathLike[str] | str) -> None:
    """Create `path` and its missing parents with mode 0700, whatever the umask; existing directories keep theirs."""
    missing: list[Path] = []
    current = Path(path)
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile: mkdir(exist_ok) semantics, its creator chose the mode
        os.chmod(directory, PRIVATE_DIR_MODE)  # exactly 0700: a umask such as 0o022 is not ours to trust


def make_private_files(*paths: os.PathLike[str] | str) -> None:
    """chmod 0600 the files that exist among `paths`: for files a library (DuckDB) created with the umask's mode."""
    for path in paths:
        try:
            os.chmod(path, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            pass


def write_file_then(path: Path, data: bytes, mode: int, publish: Callable[[Path, Path], None]) -> None:
    """Write `data` to a fresh temporary file of `mode` beside `path`, synced, then `publish(tmp, path)`.

    `os.replace` for a file replaced whole, `os.link` for one that must not exist yet.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask took away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        publish(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def fsync_directory(path: os.PathLike[str] | str) -> None:
    """Make a directory's entries durable: a file created, renamed or removed there survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
