"""The session salts: one secret per window (a UTC day or an ISO week), kept in its own file, destroyed at export.

Each salt lives in `salts/YYYY-MM-DD.salt` (mode 0600), named by its window's
first day, rather than in DuckDB, so destroying it is an unlink of a small
file, not a row deletion that a database might keep in free pages. Once a
window's salt is gone, the stored session hashes of that window can no longer
be linked to any session id.
"""

from __future__ import annotations

import os
import secrets
import threading
from datetime import UTC, date, datetime
from pathlib import Path

from protocol.files import fsync_directory

SALT_BYTES = 32


class SaltKeeper:
    """Creates, caches and destroys the per-window salts of one node (node/windows.py decides when)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cache: dict[date, bytes] = {}
        self._lock = threading.Lock()

    def _path(self, day: date) -> Path:
        return self._dir / f"{day.isoformat()}.salt"

    def get(self, window: datetime) -> bytes:
        """The salt of the window starting at `window` (its first day names it), created on first use."""
        day = window.astimezone(UTC).date()
        salt = self._cache.get(day)
        if salt is not None:
            return salt
        with self._lock:
            path = self._path(day)
            try:
                salt = path.read_bytes()
            except FileNotFoundError:
                salt = secrets.token_bytes(SALT_BYTES)
                tmp = path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, salt)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                fsync_directory(self._dir)
            if len(salt) != SALT_BYTES:
                raise RuntimeError(f"salt file for {day} is damaged")
            self._cache[day] = salt
            return salt

    def destroy(self, window: datetime) -> None:
        """Forget the salt of the window starting at `window` for good: cache entry and file."""
        day = window.astimezone(UTC).date()
        with self._lock:
            self._cache.pop(day, None)
            self._path(day).unlink(missing_ok=True)
            fsync_directory(self._dir)

    def days(self) -> list[date]:
        """First days of the windows whose salt still exists."""
        return sorted(date.fromisoformat(p.stem) for p in self._dir.glob("*.salt"))
