"""`node import`'s batched path (node/fastfilter.py `run_history`) against the exact one, on real stores.

The same JSONL lines go into two nodes under the same window salts: one through
`import_lines` (groups the fast pass is sure of, the others event by event), one
event by event through the exact path as it was before the fast pass existed
(pydantic `Event`, `PrivacyFilter.apply(live=False)`, `RowLayout.block`, one commit).
Both stores must hold the same rows, the same per-session state, and the summaries
must count the same.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from liberation.traffic import COMMUNITIES, Traffic
from node.importer import GROUP_EVENTS, decode, import_lines
from node.privacy import FilteredEvent
from node.schema import session_tables, tables_of
from node.service import Node, close_node, open_node
from protocol import jsontext
from protocol.events import Event
from tests.servers import node_settings

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
RETENTION_DAYS = 5


def history() -> list[str]:
    """Three days of the demo's sessions: clean lines, then a group with every kind of odd line in it."""
    profile = replace(COMMUNITIES[0], sessions_per_day=200)
    lines = list(Traffic(profile, 7).history_lines(3, TODAY))
    assert len(lines) > 2 * GROUP_EVENTS  # at least two clean groups before the odd ones
    valid = json.loads(lines[0])

    def event(**changes: Any) -> str:
        return json.dumps({**valid, **changes})

    odd = [
        "not json at all",
        "",
        json.dumps({"app": "runway-calculator"}),  # invalid: the action (first) and more missing
        event(app="unknown-tool"),
        event(action="reveal"),  # not an action of this app
        event(timestamp=(datetime.now(UTC) + timedelta(days=1)).isoformat()),  # in the future
        event(timestamp=(TODAY - timedelta(days=40)).isoformat()),  # past retention: its window takes nothing
        event(timestamp=(TODAY - timedelta(days=1)).isoformat().replace("T", " ")),  # only pydantic parses this
        # Just after midnight in India is the previous UTC day: the instant decides the window.
        event(timestamp=(TODAY - timedelta(days=1)).astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()),
        event(attributes={**valid["attributes"], "undeclared": 1, "industry": "astrology"}),
        event(geo_hint="br"),
        event(geo_hint="Narnia"),
        event(session_id="short"),
    ]
    return lines + odd + lines[:50]  # a few clean lines after: the odd group is not the last one alone


def exact_import(node: Node, lines: list[str]) -> tuple[int, Counter[str], int]:
    """The exact path, event by event, committed at once: (accepted, rejected by reason, attributes dropped)."""
    now = node.clock()
    rejected: Counter[str] = Counter()
    dropped = 0
    by_window: dict[datetime, list[FilteredEvent]] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            event = Event.model_validate(jsontext.loads(line))
        except json.JSONDecodeError:
            rejected["malformed-json"] += 1
            continue
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            rejected[f"invalid-{first['loc'][0] if first['loc'] else 'event'}"] += 1
            continue
        result = node.ingestor.privacy.apply(event, now=now, salt_for=node.windows.salt_for, live=False)
        if result.event is None:
            assert result.rejection is not None
            rejected[result.rejection.reason] += 1
            continue
        by_window.setdefault(result.event.window, []).append(result.event)
        dropped += result.dropped_attributes
    blocks = [node.ingestor.layout.block(events) for events in by_window.values()]
    closed = node.windows.commit(blocks)
    node.store.fold_sessions()
    return sum(len(b) for b in blocks) - closed, rejected, dropped


def stored(node: Node) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the store holds of events and of per-session state, table by table, in a fixed order."""
    con = node.store.cursor()
    tables = ["events"] + [t for w in session_tables(con) for t in tables_of(con, w)]
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}


def test_the_batched_import_stores_what_the_exact_path_stores(tmp_path: Path) -> None:
    lines = history()
    fast = open_node(node_settings(tmp_path / "fast", retention_days=RETENTION_DAYS))
    exact = open_node(node_settings(tmp_path / "exact", retention_days=RETENTION_DAYS))
    try:
        # The clean groups take the fast pass (a pass that always gave up would pass the rest).
        assert fast.ingestor.fast.run_history(list(decode(lines[:GROUP_EVENTS])), now=fast.clock(),
                                              salt_for=fast.windows.salt_for) is not None
        summary = import_lines(fast, lines)
        # The same salts in the other node: the session hashes can be compared.
        for salt in (tmp_path / "fast" / "salts").glob("*.salt"):
            shutil.copy(salt, tmp_path / "exact" / "salts" / salt.name)
        accepted, rejected, dropped = exact_import(exact, lines)

        assert summary.lines == sum(1 for line in lines if line.strip())
        assert (summary.accepted, Counter(summary.rejected), summary.dropped_attributes) == (accepted, rejected, dropped)
        assert set(rejected) == {"malformed-json", "invalid-action", "invalid-session_id", "undeclared-app",
                                 "undeclared-action", "timestamp-future", "window-closed"}
        assert dropped >= 1
        rows = stored(fast)
        assert len(rows["events"]) == accepted and len(rows) > 1
        assert rows == stored(exact)
    finally:
        close_node(fast)
        close_node(exact)
