"""One process per data dir: an exclusive lock a service (or a command working on its files) holds while it runs.

Taken before anything in the dir is opened or cleaned up, so a second `serve`, or a command
run while the service's socket does not answer, stops with one clear line instead of DuckDB's
lock error, and never deletes a file the running service is writing (a rewrite in progress).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from protocol.errors import LiberationError
from protocol.files import PRIVATE_FILE_MODE, make_private_dir

LOCK_NAME = "lock"
POLL_SECONDS = 0.1
SERVICE_WAIT_SECONDS = 5.0
"""How long a starting service waits for a command on its files to finish (an offline `node budget`)."""

T = TypeVar("T")


class DataDirInUse(LiberationError):
    """Another process holds the data dir (a running service, or a command working on its files)."""


class DataDirLock:
    """The exclusive lock of one data dir, held from `acquire` until `release` (or the process ends)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path, service: str, *, wait_seconds: float = 0.0) -> DataDirLock:
        """Lock `data_dir` (made 0700 if missing) for this process; DataDirInUse if another holds it
        for longer than `wait_seconds` (a service waits out a command that opened the files a moment ago)."""
        path = data_dir / LOCK_NAME
        try:
            make_private_dir(data_dir)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
        except OSError as exc:
            raise LiberationError(f"cannot open the {service}'s data dir {data_dir}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd, path)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(POLL_SECONDS)
                    continue
                os.close(fd)
                raise DataDirInUse(f"the {service}'s data dir {data_dir} is in use by another process") from None
            except BaseException:
                os.close(fd)
                raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def open_locked(data_dir: Path, service: str, opener: Callable[[DataDirLock], T], *, wait_seconds: float = 0.0) -> T:
    """`opener(lock)` under the data dir's lock, taken first: nothing in the dir is opened or cleaned up while
    another process holds it. What is opened keeps the lock (and releases it when closed); if opening fails,
    the lock is released here."""
    lock = DataDirLock.acquire(data_dir, service, wait_seconds=wait_seconds)
    try:
        return opener(lock)
    except BaseException:
        lock.release()
        raise
