"""Hub of hubs: a closed window's merged cells, every one of them, signed by the hub key.

The result is a snapshot envelope in exactly the nodes' format, so a parent
hub enrolls this hub like a node and merges it with the same intake. The
export of a window is committed once (a parent treats different bytes for the
same window as equivocation), so a window is exported only once it is
`export_after_seconds` past its end: late node snapshots still merge here,
but never change what was sent upstream.
"""

from __future__ import annotations

from collections.abc import Callable

from federation.store import HubStore
from protocol.catalog import Catalog
from protocol.envelope import sign_snapshot
from protocol.errors import Conflict, NotFound, ProblemType
from protocol.keys import SigningKey
from views.merge import CellSum, Table, to_snapshot


class UpstreamExporter:
    """Builds, commits and returns the hub's signed snapshot of one window."""

    def __init__(self, store: HubStore, key: SigningKey, *, export_after: int, now: Callable[[], float]) -> None:
        self.store = store
        self.key = key
        self.export_after = export_after
        self.now = now

    def export(self, catalog: Catalog, window_start: int) -> bytes:
        """The committed envelope of a window, built on first request."""
        con = self.store.cursor()
        kept = con.execute(
            "SELECT envelope FROM hub_exports WHERE catalog = ? AND window_start = ?", [catalog.hash, window_start]
        ).fetchall()
        if kept:
            return bytes(kept[0][0])
        window = con.execute(
            "SELECT window_end, nodes FROM windows WHERE catalog = ? AND window_start = ?", [catalog.hash, window_start]
        ).fetchall()
        if not window:
            raise NotFound("no merged data for that window", slug=ProblemType.NO_WINDOW)
        window_end, nodes = int(window[0][0]), int(window[0][1])
        if window_end + self.export_after > self.now():
            raise Conflict(
                "the window is still open to late node snapshots; try after its export delay",
                slug=ProblemType.WINDOW_NOT_FINAL,
            )
        rows = con.execute(
            "SELECT metric, kind, idx, value, variance, nodes FROM merged WHERE catalog = ? AND window_start = ?",
            [catalog.hash, window_start],
        ).fetchall()
        table: Table = {(m, k, int(i)): CellSum(int(v), float(var), int(n)) for m, k, i, v, var, n in rows}
        with self.store.transaction() as tx:
            seq = int(tx.execute("SELECT count(*) + 1 FROM hub_exports").fetchall()[0][0])
            now = int(self.now())
            snapshot = to_snapshot(
                catalog,
                table,
                node=self.key.public.key_id,
                window_start=window_start,
                window_end=window_end,
                seq=seq,
                created=now - now % 60,
                nodes=nodes,
                epsilon={m.name: catalog.epsilon(m) for m in catalog.metrics},
                scale={m.name: catalog.scale(m) for m in catalog.metrics},
            )
            envelope = sign_snapshot(snapshot, self.key)
            tx.execute("INSERT INTO hub_exports VALUES (?, ?, ?, ?)", [catalog.hash, window_start, envelope, now])
        return envelope
