"""Snapshot export: bound, noise, sign, and commit each closed window exactly once.

Noise is committed once: the signed envelope is stored with its ledger rows
and outbox entry in one transaction, and every later export of the window
returns those same bytes (fresh noise for the same data could be averaged
away). After export the window's per-session state and its salt are destroyed
(node/windows.py); raw rows follow retention.

A node that takes part in federation rounds (its settings pin share keepers) builds its
contribution in the same pass and transaction, from the same bounded tables: the federation
metrics' true counts, masked by one CSPRNG seed per keeper (protocol/rounds.py), signed and
committed like the snapshot, pushed by the same outbox. The seeds are sealed to the keepers and
never stored: nothing the node keeps could unmask its contribution.

The commitment also holds across a restore of the store: each export is recorded
outside it (node/published.py) before it commits, a window recorded but not stored
is never noised again, and its lost copy can be adopted back byte for byte
(`Publisher.adopt`, from the hub or a file).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from node.aggregate import true_tables
from node.keepers import KeeperDirectory
from node.noising import build_snapshot
from node.published import Publication, PublishedLog
from node.store import Store
from node.windows import Windows
from protocol.catalog import Catalog
from protocol.codec import EnvelopeError
from protocol.envelope import Envelope, sign_snapshot, verify_envelope
from protocol.errors import LiberationError
from protocol.keys import SigningKey
from protocol.rounds import KeeperKey, build_contribution, federation_vector, verify_contribution
from protocol.snapshot import Snapshot
from protocol.windows import DAY, is_window_start
from runtime.dp import NoiseSampler, opendp_laplace, privacy_loss

log = logging.getLogger("liberation.node.export")


class ExportError(LiberationError):
    """A window that cannot be exported now."""


class WindowNotClosed(ExportError):
    """The window has not ended, or its grace period has not passed."""


class BudgetExceeded(ExportError):
    """The export would spend more epsilon in its day than the configured cap."""


class PublishedCopyMissing(ExportError):
    """The record says the window was published, the store has no copy: noising it again would be a second release."""


class AdoptionRefused(ExportError):
    """An envelope offered as the lost copy of a published window is not the one the node recorded."""


class KeepersUnknown(ExportError):
    """The node takes part in rounds but has not learned its keepers' keys yet: the window waits (a while)."""


ROUND_METRIC_PREFIX = "round:"
"""Ledger rows of a contribution name their metric `round:<metric>`."""


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the privacy ledger."""

    window_start: int
    metric: str
    epsilon: float
    scale: float
    threshold: int
    catalog: str
    digest: str
    recorded: int


class Publisher:
    """Exports windows of one node: the only code that creates snapshots and spends budget."""

    def __init__(
        self,
        *,
        store: Store,
        catalog: Catalog,
        key: SigningKey,
        windows: Windows,
        epsilon_cap_per_day: float,
        record: PublishedLog,
        sampler: NoiseSampler = opendp_laplace,
        keepers: KeeperDirectory | None = None,
        keeper_wait_seconds: int = 86_400,
        seed_source: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        """`record`: the node's record of published windows (node/published.py); `windows` must know its windows.

        `keepers`: the share keepers this node contributes to rounds through (none: no contributions);
        a closed window waits `keeper_wait_seconds` for their keys before it goes out without one.
        """
        self.store = store
        self.catalog = catalog
        self.key = key
        self.windows = windows
        self.cap = epsilon_cap_per_day
        self.record = record
        self._sampler = sampler
        self.keepers = keepers if keepers is not None and keepers.enabled and catalog.federation is not None else None
        self._keeper_wait = keeper_wait_seconds
        self._seed_source = seed_source
        self._check_certified_epsilon()
        window_epsilon = catalog.epsilon_community + (catalog.epsilon_federation if self.keepers else 0.0)
        if epsilon_cap_per_day < window_epsilon * (1 - 1e-9):
            raise ExportError(
                f"epsilon_cap_per_day {epsilon_cap_per_day:g} is below one window's epsilon "
                f"({window_epsilon:g}): no window could ever be exported"
            )
        self._record_stored()

    def _record_stored(self) -> None:
        """Record every stored snapshot the record lacks: a store from before the record, or a record restored older."""
        con = self.store.cursor()
        rows = con.execute("SELECT window_start, seq, digest FROM snapshots ORDER BY window_start").fetchall()
        missing = []
        for window, seq, digest in rows:
            held = self.record.get(int(window))
            if held is None:
                envelope, epsilons = con.execute(
                    "SELECT envelope, (SELECT coalesce(list(epsilon), []) FROM ledger WHERE window_start = $1) "
                    "FROM snapshots WHERE window_start = $1", [window]
                ).fetchall()[0]
                try:  # the key that signed it (an older one after a rotation), from the headers only
                    key_id = Envelope.from_bytes(bytes(envelope)).public_key.key_id
                except EnvelopeError:
                    key_id = self.key.public.key_id
                # Summed as the export sums it, so the line is the one the export would have written.
                missing.append(Publication(int(window), int(seq), str(digest), key_id, math.fsum(epsilons)))
            elif held.digest != digest:
                log.error("the store holds another snapshot of a window than the record: both may be out",
                          extra={"window_start": int(window), "stored": digest, "recorded": held.digest})
        self.record.append(missing)

    def _check_certified_epsilon(self) -> None:
        # OpenDP's own privacy map must agree with the catalog: epsilon_j = k_j c_j / b_j.
        for metric in self.catalog.metrics:
            certified = privacy_loss(self.catalog.scale(metric), metric.sensitivity)
            if certified > self.catalog.epsilon(metric) * (1 + 1e-9):
                raise ExportError(f"metric {metric.name}: OpenDP certifies epsilon {certified}")

    def contribution(self, window_start: int) -> bytes | None:
        """The committed contribution of a window to its federation round, if the node made one."""
        rows = self.store.cursor().execute(
            "SELECT envelope FROM contributions WHERE window_start = ?", [window_start]
        ).fetchall()
        return bytes(rows[0][0]) if rows else None

    def _keepers_for(self, window_start: int) -> list[KeeperKey] | None:
        """The keepers to seal this window's seeds to; None: no contribution; KeepersUnknown: wait for their keys."""
        if self.keepers is None:
            return None
        known = self.keepers.known()
        if known is not None:
            return known
        if window_start + self.windows.seconds + self._keeper_wait > self.windows.now():
            raise KeepersUnknown(
                f"the keys of keepers {', '.join(self.keepers.missing())} are not learned from the hub yet: "
                "the window waits for them"
            )
        log.error("exporting without a contribution: the keepers' keys were never learned",
                  extra={"window_start": window_start, "keepers": self.keepers.missing()})
        return None

    def stored(self, window_start: int) -> bytes | None:
        """The committed envelope of a window, if it was exported."""
        rows = self.store.cursor().execute(
            "SELECT envelope FROM snapshots WHERE window_start = ?", [window_start]
        ).fetchall()
        return bytes(rows[0][0]) if rows else None

    def spent(self, day_start: int) -> float:
        """Epsilon spent on the windows of one UTC day: the ledger's, and the record's for published windows the ledger lost."""
        con = self.store.cursor()
        rows = con.execute(
            "SELECT window_start, sum(epsilon) FROM ledger WHERE window_start >= ? AND window_start < ? GROUP BY 1",
            [day_start, day_start + DAY],
        ).fetchall()
        ledger = {int(w): float(e) for w, e in rows}
        lost = sum(e.epsilon for e in self.record.entries()
                   if day_start <= e.window_start < day_start + DAY and e.window_start not in ledger)
        return sum(ledger.values()) + lost

    def missing(self) -> list[Publication]:
        """Published windows whose snapshot the store does not hold (a backup restored from before their export)."""
        held = {int(w) for (w,) in self.store.cursor().execute("SELECT window_start FROM snapshots").fetchall()}
        return [e for e in self.record.entries() if e.window_start not in held]

    def drop_state(self, window_start: int) -> None:
        """Drop a published window's per-session state (a restored store has it again), as its export did."""
        with self.store.transaction() as tx:
            self.store.drop_session_state(tx, window_start)
        self.windows.destroy_salts()

    def adopt(self, envelope: bytes) -> int:
        """Store the lost copy of a published window (from the hub, or a file) as its committed snapshot; its window.

        A recorded window takes only the envelope the record names: signed by the
        recorded key, with the recorded body digest (so, as Ed25519 is
        deterministic, the same bytes). A window the record lacks (the record
        itself was lost or rolled back) takes an envelope signed by the node's
        own key, and is recorded. Ledger rows come from the envelope's own
        metrics; its outbox entry is marked sent (a hub has it, or the operator carried it).
        """
        try:
            verified = verify_envelope(envelope)
        except EnvelopeError as exc:
            raise AdoptionRefused(f"the envelope does not verify: {exc.reason}") from None
        snapshot, window, key_id = verified.snapshot, verified.snapshot.window_start, verified.public_key.key_id
        entry, unrecorded = self.record.get(window), None
        if entry is None:
            if key_id != self.key.public.key_id:
                raise AdoptionRefused("this node has no record of that window, and the envelope is not signed by its key")
            if snapshot.window_end - window != self.windows.seconds or not self.windows.is_closed(window):
                raise AdoptionRefused("the envelope is not of a closed window of this node's length")
            epsilon = math.fsum(cells.epsilon for cells in snapshot.metrics.values())
            unrecorded = Publication(window, snapshot.seq, verified.digest, key_id, epsilon)
        elif key_id != entry.key_id or verified.digest != entry.digest:
            raise AdoptionRefused("the envelope is not the one this node recorded for that window (key or digest differ)")
        stored = self.stored(window)
        if stored is not None:
            if stored != verified.envelope:
                raise AdoptionRefused("the store already holds another snapshot of that window")
            return window
        now = self.windows.now()
        with self.store.transaction() as tx:
            taken = tx.execute(
                "SELECT (SELECT count(*) FROM snapshots WHERE seq = $1) + (SELECT count(*) FROM outbox WHERE seq = $1)",
                [snapshot.seq],
            ).fetchall()[0][0]
            if taken:
                raise AdoptionRefused(f"sequence number {snapshot.seq} is another window's in the store")
            ledgered = tx.execute("SELECT count(*) FROM ledger WHERE window_start = ?", [window]).fetchall()[0][0]
            _insert_snapshot(tx, snapshot, verified.digest, verified.envelope, now, outbox="sent", ledger=not ledgered)
            self.store.drop_session_state(tx, window)
            if unrecorded is not None:
                self.record.append([unrecorded])  # before the commit, as an export's line
        self.windows.mark_exported(window)
        self.windows.destroy_salts()
        return window

    def export(self, window_start: int) -> bytes:
        """The signed envelope of a window: built and committed once, then the same bytes forever."""
        windows = self.windows
        if not is_window_start(window_start, windows.seconds):
            raise ExportError("a window starts on a window boundary (a UTC day, or an ISO week's Monday)")
        existing = self.stored(window_start)
        if existing is not None:
            return existing
        if self.record.get(window_start) is not None:
            # Checked before anything is noised: new noise for a window that went out once is a second release.
            raise PublishedCopyMissing(
                "the window was published, but the store has no copy of it (restored from a backup taken "
                "before its export?): it is never noised again; its copy comes back with `liberation node "
                "adopt` or from the hub (docs/operations.md, restore)"
            )
        if not windows.is_closed(window_start):
            raise WindowNotClosed("the window is still open (or in its grace period)")
        if window_start in windows.abandoned:
            raise ExportError("the window expired before it was exported: its rows are gone, it is never published")
        keepers = self._keepers_for(window_start)
        cost = self.catalog.epsilon_community + (self.catalog.epsilon_federation if keepers else 0.0)
        day = window_start - window_start % DAY
        spent = self.spent(day)
        if spent + cost > self.cap * (1 + 1e-9):
            raise BudgetExceeded(
                f"exporting would spend epsilon {spent + cost:g} "
                f"on {datetime.fromtimestamp(day, UTC):%Y-%m-%d}, over the cap of {self.cap:g}"
            )
        # No row of the window is appended after this; the drain moves every row already staged.
        windows.close(window_start)
        self.store.drain()
        self.store.fold_sessions(window=window_start)
        tables = true_tables(self.store.cursor(), self.catalog, window_start)
        with self.store.transaction() as tx:
            # After the highest ever published, not only the highest stored: a lost copy keeps its number.
            stored_seq = int(tx.execute("SELECT coalesce(max(seq), 0) FROM snapshots").fetchall()[0][0])
            seq = max(stored_seq, self.record.max_seq()) + 1
            now = windows.now()
            snapshot = build_snapshot(
                self.catalog,
                tables,
                node=self.key.public.key_id,
                window_start=window_start,
                window_end=window_start + windows.seconds,
                seq=seq,
                created=now - now % 60,
                sampler=self._sampler,
            )
            envelope = sign_snapshot(snapshot, self.key)
            digest = verify_envelope(envelope).digest
            _insert_snapshot(tx, snapshot, digest, envelope, now, outbox="pending")
            epsilon = math.fsum(cells.epsilon for cells in snapshot.metrics.values())
            if keepers:
                epsilon += self._contribute(tx, tables, keepers, window_start, snapshot.window_end, snapshot.created, now)
            # The per-session minutes and app order live only until export.
            self.store.drop_session_state(tx, window_start)
            # Last, before the commit: synced before the envelope can be served or pushed (which
            # follow the commit), so no copy ever leaves without its line outside the store.
            self.record.append([Publication(window_start, seq, digest, self.key.public.key_id, epsilon)])
        windows.mark_exported(window_start)
        windows.destroy_salts()
        return envelope

    def _contribute(
        self, tx: duckdb.DuckDBPyConnection, tables: dict[str, list[int]], keepers: list[KeeperKey],
        window_start: int, window_end: int, created: int, now: int,
    ) -> float:
        """Build, commit and ledger the window's contribution (inside the export's transaction); the epsilon spent."""
        catalog = self.catalog
        envelope = build_contribution(
            catalog, federation_vector(catalog, tables), key=self.key, keepers=keepers,
            window_start=window_start, window_end=window_end, created=created, seed_source=self._seed_source,
        )
        digest = verify_contribution(envelope, max_size=len(envelope)).digest
        tx.execute(
            "INSERT INTO contributions VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, 0, NULL, NULL)",
            [window_start, window_end, catalog.hash, digest, envelope, created],
        )
        rows = [[window_start, ROUND_METRIC_PREFIX + m.name, catalog.federation_epsilon(m), catalog.federation_scale(m),
                 0, catalog.hash, digest, now] for m in catalog.federation_metrics]
        tx.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return math.fsum(catalog.federation_epsilon(m) for m in catalog.federation_metrics)

    def verified(self, window_start: int) -> bytes | None:
        """The stored envelope only if it still verifies: a damaged one is never served or pushed."""
        envelope = self.stored(window_start)
        if envelope is None:
            return None
        try:
            verify_envelope(envelope)
        except EnvelopeError:
            return None
        return envelope

    def last_export(self) -> int:
        """When the newest snapshot in the store was made (unix seconds, to the minute; 0 = none yet)."""
        rows = self.store.cursor().execute("SELECT coalesce(max(created), 0) FROM snapshots").fetchall()
        return int(rows[0][0])

    def ledger(self) -> list[LedgerEntry]:
        """Every ledger row, in order."""
        rows = self.store.cursor().execute(
            "SELECT * FROM ledger ORDER BY window_start, metric"
        ).fetchall()
        return [
            LedgerEntry(*(int(r[0]), str(r[1]), float(r[2]), float(r[3]), int(r[4]), str(r[5]), str(r[6]), int(r[7])))
            for r in rows
        ]


def _insert_snapshot(
    tx: duckdb.DuckDBPyConnection, snapshot: Snapshot, digest: str, envelope: bytes, now: int, *, outbox: str,
    ledger: bool = True,
) -> None:
    """A committed snapshot's rows: its envelope, its ledger rows (with `ledger`), its outbox entry in state `outbox`."""
    window = snapshot.window_start
    tx.execute(
        "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
        [window, snapshot.window_end, snapshot.seq, snapshot.catalog, digest, envelope, snapshot.created],
    )
    if ledger:
        tx.executemany(
            "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [[window, name, cells.epsilon, cells.scale, cells.threshold, snapshot.catalog, digest, now]
             for name, cells in snapshot.metrics.items()],
        )
    tx.execute("INSERT INTO outbox VALUES (?, ?, ?, 0, 0, NULL, NULL)", [snapshot.seq, window, outbox])


def epsilon_cap_default(catalog: Catalog) -> float:
    """Default cap per UTC day: one window's epsilon (a window is a day or a week, so at most one starts a day)."""
    return catalog.epsilon_per_window * math.ceil(DAY / catalog.window_seconds)
