"""The running hub: everything it owns (store, registry, catalogs, intake, archive, rounds, views), opened and closed together.

No server involved: the app factory (federation/app.py) opens it in its lifecycle, the CLI
(through `runtime.admin.offline`) on a stopped hub's files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from aiohttp import web

from federation.archive import Archive
from federation.contributions import ContributionIntake
from federation.intake import Intake, size_limit
from federation.keepers import Keepers
from federation.logwriter import LogWriter
from federation.metrics import HubMetrics
from federation.round_records import PublishedRounds
from federation.rounds import Rounds
from federation.settings import HubSettings
from federation.store import HubStore
from federation.upstream import UpstreamExporter
from protocol.catalog import Catalog, load_catalog
from protocol.keys import SigningKey, load_or_create
from protocol.snapshot import max_envelope_size
from protocol.windows import DAY
from runtime.datadir import DataDirLock, open_locked
from runtime.registry import Registry
from views.ranges import RoundRanges, StoreRanges, ViewService

log = logging.getLogger("liberation.hub")

Now = Callable[[], float]


@dataclass
class Hub:
    """Everything one running hub owns; reachable from handlers through `HUB`."""

    settings: HubSettings
    store: HubStore
    registry: Registry
    catalogs: dict[str, Catalog]
    archive: Archive
    intake: Intake
    metrics: HubMetrics
    key: SigningKey
    views: ViewService
    upstream: UpstreamExporter
    keepers: Keepers
    contributions: ContributionIntake
    rounds: Rounds
    now: Now
    lock: DataDirLock  # this process's hold on the data dir, released by close_hub
    version: list[int] = field(default_factory=lambda: [0])  # bumped on every accepted snapshot and published round


HUB = web.AppKey("hub", Hub)


def data_paths(settings: HubSettings) -> dict[str, Path]:
    """Where a hub keeps its files under its data dir."""
    root = settings.data_dir
    return {"db": root / "hub.duckdb", "key": root / "keys" / "signing.key", "archive": root / "archive"}


def load_catalogs(settings: HubSettings) -> dict[str, Catalog]:
    """The catalogs this hub merges, by hash: the federation's first (the views' default), then the built-in default."""
    catalogs = [load_catalog(settings.catalog), load_catalog()] + [load_catalog(p) for p in settings.catalogs]
    merged: dict[str, Catalog] = {}
    for catalog in catalogs:
        merged.setdefault(catalog.hash, catalog)
    return merged


def open_hub(settings: HubSettings, *, now: Now = time.time, wait_seconds: float = 0.0) -> Hub:
    """Open (creating on first start) everything a hub needs, under its data dir's lock (runtime/datadir.py).

    A service waits `wait_seconds` for a command on its files to finish. The dir is made 0700
    whatever the umask: envelopes, registry, keys.
    """
    return open_locked(settings.data_dir, "hub", lambda lock: _open(settings, now, lock), wait_seconds=wait_seconds)


def close_hub(hub: Hub) -> None:
    hub.store.close()
    hub.lock.release()


def _open(settings: HubSettings, now: Now, lock: DataDirLock) -> Hub:
    # pyarrow's first array imports pandas where it is installed (a test environment's half a second of
    # CPU): pay it while opening, not under the first snapshots' intake.
    pa.array([0])
    paths = data_paths(settings)
    key = load_or_create(paths["key"])
    store = HubStore(paths["db"], memory_limit=settings.memory_limit)
    registry = Registry(store, now=now)
    catalogs = load_catalogs(settings)
    max_bytes = size_limit(catalogs, settings.max_snapshot_bytes)
    for catalog in catalogs.values():
        if max_envelope_size(catalog) > max_bytes:
            log.warning(
                "max_snapshot_bytes is below what a catalog's snapshots can reach: raise it",
                extra={"catalog": catalog.hash, "largest_envelope": max_envelope_size(catalog), "limit": max_bytes},
            )
    archive = Archive(paths["archive"])
    archive.reconcile(store, catalogs)  # files a crash left unwritten after their commit
    metrics = HubMetrics()
    version = [int(store.cursor().execute(
        "SELECT (SELECT count(*) FROM envelopes) + (SELECT count(*) FROM rounds WHERE state = 'published')"
    ).fetchall()[0][0])]

    def bump() -> None:
        version[0] += 1

    log_writer = LogWriter(store)
    keepers = Keepers(store, registry)
    rounds = Rounds(store=store, log=log_writer, keepers=keepers, catalogs=catalogs, key=key, metrics=metrics,
                    settings=settings.rounds, now=now, on_publish=bump)
    horizon_seconds = settings.window_horizon_days * DAY
    contributions = ContributionIntake(
        store=store, registry=registry, keepers=keepers, catalogs=catalogs, log=log_writer, metrics=metrics,
        horizon_seconds=horizon_seconds, skew_seconds=settings.clock_skew_seconds, deadline=rounds.deadline, now=now,
    )
    intake = Intake(
        store=store, registry=registry, catalogs=catalogs, archive=archive, metrics=metrics, max_bytes=max_bytes,
        horizon_seconds=horizon_seconds, skew_seconds=settings.clock_skew_seconds, log=log_writer, now=now,
        on_accept=bump,
    )
    def data_version() -> int:
        return version[0]

    ranges = RoundRanges(StoreRanges(store, data_version), PublishedRounds(store), data_version)
    views = ViewService(ranges, catalogs, data_version, now=now)
    upstream = UpstreamExporter(store, key, export_after=settings.export_after_seconds, now=now)
    return Hub(settings, store, registry, catalogs, archive, intake, metrics, key, views, upstream,
               keepers, contributions, rounds, now, lock, version)
