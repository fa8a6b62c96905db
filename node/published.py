"""The record of published windows: one line per export, in `keys/published.log`, outside the restorable database.

`node.duckdb` holds each committed snapshot, but a copy of it restored from a
backup taken before an export would have the node (which exports every due
window at start) noise the window again: two independent releases of the
same data, 2 epsilon (audit F4). This file keeps what the node published,
whatever happens to the database; the export checks it before noising.

Crash order: an export appends its line and syncs it inside its database
transaction, before the COMMIT, and an envelope is served or pushed only
after the commit. So every snapshot that could have left the node has its
line. A crash (or a failed commit) between the two leaves a line without a
snapshot: that window counts as published with its copy missing, and is
never noised again (its copy comes back from the hub or a file, or it stays unpublished).

A line, JSON with sorted keys:

    {"digest": "<hex SHA-256 of the body>", "epsilon": 1.0, "key_id": "<32 hex>", "seq": 5, "window_start": 1795392000}

A last line cut short by a crash (no newline) was never followed by a commit:
it is dropped at open. A damaged line before it stops the node: it could no
longer tell what it published.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from protocol.errors import LiberationError
from protocol.files import (
    PRIVATE_FILE_MODE,
    fsync_directory,
    make_private_dir,
    make_private_files,
)

log = logging.getLogger("liberation.node.published")


class PublishedLogDamaged(LiberationError):
    """A line of the record that does not read: the node will not guess what it published."""


@dataclass(frozen=True)
class Publication:
    """One export as recorded: the window, its sequence number, the body digest, the signing key, the epsilon spent."""

    window_start: int
    seq: int
    digest: str
    key_id: str
    epsilon: float

    def to_line(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_line(cls, line: bytes) -> Publication:
        data = json.loads(line)
        entry = cls(
            window_start=data["window_start"], seq=data["seq"], digest=data["digest"],
            key_id=data["key_id"], epsilon=data["epsilon"],
        )
        if not (isinstance(entry.window_start, int) and isinstance(entry.seq, int)
                and isinstance(entry.digest, str) and len(entry.digest) == 64
                and isinstance(entry.key_id, str) and len(entry.key_id) == 32
                and isinstance(entry.epsilon, int | float)):
            raise ValueError("a field has the wrong type or length")
        return entry


class PublishedLog:
    """The append-only record of one node's exports, read whole at open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[int, Publication] = {}
        make_private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(path.parent)  # the file itself survives a crash, not only its lines
        make_private_files(path)
        self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # Torn by a crash before its sync returned: no commit followed it, no snapshot exists.
            keep = data.rfind(b"\n") + 1
            log.warning("dropped a published-window line cut short by a crash", extra={"bytes": len(data) - keep})
            os.truncate(self.path, keep)
            data = data[:keep]
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                entry = Publication.from_line(line)
            except (ValueError, KeyError, TypeError) as exc:
                raise PublishedLogDamaged(
                    f"{self.path} line {number} is damaged ({type(exc).__name__}): the node cannot tell what it "
                    "published; repair or restore the line (docs/operations.md, restore) before it starts again"
                ) from None
            held = self._entries.setdefault(entry.window_start, entry)
            if held.digest != entry.digest:
                log.error("two different snapshots recorded for one window; the first is kept",
                          extra={"window_start": entry.window_start, "digests": [held.digest, entry.digest]})

    def get(self, window_start: int) -> Publication | None:
        """The record of a window, if the node ever published it."""
        return self._entries.get(window_start)

    def entries(self) -> list[Publication]:
        """Every recorded export, by window."""
        return [self._entries[w] for w in sorted(self._entries)]

    def max_seq(self) -> int:
        """The highest sequence number ever published (0 before the first)."""
        return max((e.seq for e in self._entries.values()), default=0)

    def append(self, entries: Sequence[Publication]) -> None:
        """Add lines for `entries` in one write and sync it: durable on return."""
        if not entries:
            return
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                size = os.fstat(fd).st_size
                data = b"".join(e.to_line() for e in entries)
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError("short write to the record of published windows")
                    os.fsync(fd)
                except OSError:
                    # Disk full, say: the caller's export rolls back; the next line must not follow a torn one.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)
            for entry in entries:
                self._entries.setdefault(entry.window_start, entry)
