"""The fold of the session log into per-session state: in session ranges, resumable, idempotent, migrated."""

from __future__ import annotations

from pathlib import Path

from node.aggregate import true_tables
from node.schema import session_folding_table, session_log_table, session_table, session_tables
from node.sessionfold import fold_steps
from node.store import Store
from protocol.catalog import load_catalog
from tests.factories import W_DAY as W
from tests.factories import ev, filtered

CATALOG = load_catalog()


def visits(sessions: range, first_minute: int = 0) -> list[dict[str, object]]:
    """Each session: a runway start and, 9 minutes later, a wage reveal, then a runway complete."""
    out: list[dict[str, object]] = []
    for s in sessions:
        minute = first_minute + s % 50
        out += [
            ev(f"s{s}", "runway-calculator", "start", minute),
            ev(f"s{s}", "real-wage-calculator", "reveal", minute + 9, salary=50_000),
            ev(f"s{s}", "runway-calculator", "complete", minute + 20),
        ]
    return out


def state(store: Store) -> list[tuple[int, str, int, int, int]]:
    return sorted(store.cursor().execute(f"SELECT * FROM {session_table(W)}").fetchall())


def session_names(store: Store) -> set[str]:
    return {
        name for (name,) in store.cursor().execute("SELECT table_name FROM duckdb_tables()").fetchall()
        if name.startswith("session")
    }


def test_a_fold_in_many_session_ranges_keeps_what_a_fold_in_one_keeps(tmp_path: Path) -> None:
    events = filtered(CATALOG, visits(range(200)))
    one, many = Store(tmp_path / "one.duckdb", CATALOG), Store(tmp_path / "many.duckdb", CATALOG)
    for store in (one, many):
        store.commit_events(events[:300])
    assert one.fold_sessions() == 300
    assert many.fold_sessions(step_rows=16) == 300
    assert fold_steps(300, 16) == 32  # the second store did fold in 32 ranges
    for store in (one, many):
        store.commit_events(events[300:])  # sessions seen again, and new ones
    assert one.fold_sessions() == many.fold_sessions(step_rows=16) == 300
    assert state(many) == state(one)
    # One row per (session, app), with the first and last minute of that app in that session.
    assert len(state(one)) == 2 * 200
    spans = sorted({last - first for _, app, _, first, last in state(one) if app == "runway-calculator"})
    assert spans == [20]
    assert true_tables(many.cursor(), CATALOG, W) == true_tables(one.cursor(), CATALOG, W)
    assert session_names(many) == {session_table(W)}


def test_a_pass_cut_short_is_folded_again_to_the_same_state_with_the_log_written_since(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.duckdb", CATALOG)
    whole = Store(tmp_path / "whole.duckdb", CATALOG)
    first, later = filtered(CATALOG, visits(range(40))), filtered(CATALOG, visits(range(20, 60), first_minute=100))
    store.commit_events(first)
    whole.commit_events(first + later)
    whole.fold_sessions()
    # A pass that merged its log into the state and died before dropping it: the log is still
    # there, renamed for folding, and the drains go on into a new log.
    with store.transaction() as tx:
        tx.execute(f"CREATE TABLE kept AS SELECT * FROM {session_log_table(W)}")
    store.fold_sessions(step_rows=8)
    with store.transaction() as tx:
        tx.execute(f"ALTER TABLE kept RENAME TO {session_folding_table(W)}")
    store.commit_events(later)
    assert session_tables(store.cursor()) == [W]
    # Read before the next pass, the state counts each session once.
    assert true_tables(store.cursor(), CATALOG, W) == true_tables(whole.cursor(), CATALOG, W)
    assert store.fold_sessions(step_rows=8) == len(first) + len(later)
    assert state(store) == state(whole)
    assert session_names(store) == {session_table(W)}
    assert store.fold_sessions() == 0


def test_export_drops_every_session_table_of_its_window(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.duckdb", CATALOG)
    store.commit_events(filtered(CATALOG, visits(range(5))))
    store.fold_sessions()
    store.commit_events(filtered(CATALOG, visits(range(5, 10))))
    with store.transaction() as tx:
        tx.execute(f"ALTER TABLE {session_log_table(W)} RENAME TO {session_folding_table(W)}")
    store.commit_events(filtered(CATALOG, visits(range(10, 15))))
    assert len(session_names(store)) == 3
    with store.transaction() as tx:
        store.drop_session_state(tx, W)
    assert session_names(store) == set()
    assert session_tables(store.cursor()) == []


def test_a_paced_fold_runs_duckdb_on_one_thread_and_gives_the_others_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.duckdb", CATALOG)
    store.commit_events(filtered(CATALOG, visits(range(30))))
    threads = store.cursor().execute("SELECT current_setting('threads')").fetchall()[0][0]
    seen: list[int] = []
    original = store.sessions._fold_window

    def watched(window: int, **kwargs: object) -> int:
        seen.append(store.cursor().execute("SELECT current_setting('threads')").fetchall()[0][0])
        return original(window, **kwargs)  # type: ignore[arg-type]

    store.sessions._fold_window = watched  # type: ignore[method-assign]
    assert store.fold_sessions(rest=lambda elapsed: None, step_rows=16) == 90
    assert seen == [1]
    assert store.cursor().execute("SELECT current_setting('threads')").fetchall()[0][0] == threads
    store.commit_events(filtered(CATALOG, visits(range(30, 40))))
    assert store.fold_sessions() == 30
    assert seen == [1, threads]  # an unpaced fold (import, shutdown) uses every thread
