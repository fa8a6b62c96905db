"""A day of 10 million events -> signed snapshot: wall time and peak RSS, next to a raw DuckDB GROUP BY.

Sessions look like real ones: 10 events, within an hour or two, a few distinct
attribute values each (a session that recalculates its runway).

Target (issue 4, 2-core machine): <= 5 s and <= 1 GiB. The data is generated
in DuckDB directly (not through HTTP): 1M sessions of 10 events across the
three default apps, with attributes, in one UTC day. Each measured step runs
in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

EVENTS = 10_000_000
PER_SESSION = 10
WINDOW = datetime(2026, 11, 20, tzinfo=UTC)


def generate(db: Path, events: int) -> None:
    """Write `events` synthetic rows of one window (and their session state) into a node store."""
    from node.schema import session_table
    from node.store import Store
    from protocol.catalog import load_catalog

    catalog = load_catalog()
    store = Store(db, catalog)
    w = int(WINDOW.timestamp())
    apps = list(catalog.apps)
    actions = [list(catalog.apps[a].actions) for a in apps]
    dom = {name: list(spec.domain) for name, spec in catalog.attributes.items()}
    countries = ["US", "DE", "BR", "IN", "KE", "FR", "GB", "MX", "NG", "JP", "ZZ"]

    def pick(values: list[str], expr: str) -> str:
        literal = "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
        return f"({literal})[1 + ({expr}) % {len(values)}]"

    app_expr = pick(apps, "s")
    action_expr = (
        f"CASE s % 3 WHEN 0 THEN {pick(actions[0], 'i')} WHEN 1 THEN {pick(actions[1], 'i')} ELSE {pick(actions[2], 'i')} END"
    )
    attr = {
        "runway_months": f"CASE WHEN s % 3 = 0 THEN {pick(dom['runway_months'], 's + i // 4')} END",
        "savings_band": f"CASE WHEN s % 3 = 0 THEN {pick(dom['savings_band'], 's')} END",
        "monthly_expenses": f"CASE WHEN s % 3 = 0 THEN {pick(dom['monthly_expenses'], 's')} END",
        "industry": f"CASE WHEN s % 3 < 2 THEN {pick(dom['industry'], 's * 13')} END",
        "salary": f"CASE WHEN s % 3 = 1 THEN {pick(dom['salary'], 's')} END",
        "real_wage_gap_pct": f"CASE WHEN s % 3 = 1 THEN {pick(dom['real_wage_gap_pct'], 's + i // 5')} END",
        "debt_level": f"CASE WHEN s % 3 = 2 THEN {pick(dom['debt_level'], 's')} END",
        "questions_answered": f"CASE WHEN s % 3 = 2 THEN {pick(dom['questions_answered'], 's + i // 3')} END",
    }
    columns = ", ".join(f'{expr} AS "a_{name}"' for name, expr in attr.items())
    with store.transaction() as con:
        con.execute(
            f"""
            INSERT INTO events (seq, window_start, hour, session, app, action, country, {", ".join(f'"a_{n}"' for n in attr)})
            SELECT i + 1, {w}, {w} + 3600 * ((s * 7 + i // 8) % 24), (hash(s) >> 1)::BIGINT, {app_expr}, {action_expr},
                   {pick(countries, "s")}, {", ".join(f'"a_{n}"' for n in attr)}
            FROM (SELECT i, i // {PER_SESSION} AS s, {columns}
                  FROM (SELECT range AS i, range // {PER_SESSION} AS s FROM range({events})))
            """
        )
        con.execute(
            f"""
            CREATE TABLE {session_table(w)} AS
            SELECT session, app, min(seq) AS first_seq, CAST(min(seq) % 1400 AS SMALLINT) AS first_minute,
                   CAST(min(seq) % 1400 + 20 AS SMALLINT) AS last_minute
            FROM events GROUP BY ALL
            """
        )
    store.close()


def export(db: Path) -> None:
    """Open the store and export the window: aggregate, noise, sign, commit."""
    from node.export import Publisher
    from node.published import PublishedLog
    from node.salts import SaltKeeper
    from node.store import Store
    from node.windows import Windows
    from protocol.catalog import load_catalog
    from protocol.keys import SigningKey

    catalog = load_catalog()
    store = Store(db, catalog)
    windows = Windows(
        store, SaltKeeper(db.parent / "salts"), window_seconds=86_400, grace_seconds=3600,
        retention_seconds=7 * 86_400, clock=lambda: WINDOW + timedelta(days=2),
    )
    publisher = Publisher(store=store, catalog=catalog, key=SigningKey.generate(), windows=windows, epsilon_cap_per_day=1.0,
                          record=PublishedLog(db.parent / "keys" / "published.log"))
    started = time.perf_counter()
    envelope = publisher.export(int(WINDOW.timestamp()))
    print(json.dumps({"seconds": time.perf_counter() - started, "bytes": len(envelope)}))
    store.close()


def group_by(db: Path) -> None:
    """The raw baseline: one GROUP BY per session and cell over the same rows, no bounding."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    started = time.perf_counter()
    con.execute("SELECT app, action, count(*) FROM events GROUP BY ALL").fetchall()
    one = time.perf_counter() - started
    started = time.perf_counter()
    con.execute("SELECT count(*) FROM (SELECT session, app, action FROM events GROUP BY ALL)").fetchall()
    per_session = time.perf_counter() - started
    print(json.dumps({"seconds": one, "per_session_seconds": per_session}))


def _child(step: str, db: Path) -> tuple[dict[str, float], float]:
    """Run one step in a fresh process: its JSON result and its own peak RSS in MiB (wait4)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_snapshot", step, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{step} failed")
    lines = out.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), usage.ru_maxrss / 1024


def main(events: int = EVENTS) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "node.duckdb"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench.bench_snapshot", "generate", str(db), str(events)], check=True)
        print(f"generated {events:,} events in {time.perf_counter() - started:.1f} s ({db.stat().st_size / 2**20:.0f} MiB)")
        baseline, _ = _child("group_by", db)
        result, peak = _child("export", db)  # the window is not exported yet: this is the real work
        print(f"{'figure':40s} {'value':>10s} {'target':>10s}")
        print(f"{'raw GROUP BY app, action (baseline)':40s} {baseline['seconds']:9.2f}s")
        print(f"{'raw GROUP BY session, app, action':40s} {baseline['per_session_seconds']:9.2f}s")
        ok_time = "PASS" if result["seconds"] <= 5 else "MISS"
        print(f"{'export: bound+noise+sign+commit':40s} {result['seconds']:9.2f}s {'<= 5 s':>10s} {ok_time}")
        ok_rss = "PASS" if peak <= 1024 else "MISS"
        print(f"{'export: peak RSS (whole process)':40s} {peak:8.0f}MiB {'<= 1 GiB':>10s} {ok_rss}")
        print(f"snapshot envelope: {result['bytes']:,} bytes")


if __name__ == "__main__":
    step, path = sys.argv[1], Path(sys.argv[2])
    if step == "generate":
        generate(path, int(sys.argv[3]))
    elif step == "export":
        export(path)
    elif step == "group_by":
        group_by(path)
