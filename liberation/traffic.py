"""Synthetic movement traffic for the demo: realistic sessions of the seed's three tools.

Not a test fixture: `liberation demo` uses it to fill three communities with a
fortnight of history and a live trickle. It models what the seed describes:
runway calculations with savings bands and industries, real-wage reveals,
cognitive-debt assessments that are started and (mostly) completed,
multi-tool sessions that tend to calculate runway before the wage analysis,
and a weekly rhythm with Sunday-evening peaks. Synthetic data only, so the
standard library's seeded random generator is right here (it never touches
privacy noise, which is OpenDP's alone).
"""

from __future__ import annotations

import json
import math
import random
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any, Generic, TypeVar


@dataclass(frozen=True)
class Community:
    """One demo community: its size, where it is, and how it uses the tools."""

    name: str
    sessions_per_day: int
    countries: tuple[tuple[str, float], ...]
    utc_offset_hours: int
    tool_weights: tuple[float, float, float]  # runway, real wage, cognitive debt
    industries: tuple[tuple[str, float], ...]


COMMUNITIES = (
    Community(
        "berlin-collective", 1400,
        (("DE", 0.62), ("AT", 0.12), ("CH", 0.08), ("NL", 0.08), ("PL", 0.06), ("DK", 0.04)),
        1, (0.45, 0.35, 0.20),
        (("tech", 0.38), ("creative", 0.16), ("education", 0.1), ("nonprofit", 0.1), ("finance", 0.08),
         ("healthcare", 0.07), ("government", 0.05), ("retail", 0.03), ("manufacturing", 0.02), ("other", 0.01)),
    ),
    Community(
        "nairobi-commons", 800,
        (("KE", 0.58), ("UG", 0.14), ("TZ", 0.12), ("NG", 0.09), ("RW", 0.07)),
        3, (0.30, 0.30, 0.40),
        (("tech", 0.25), ("nonprofit", 0.2), ("education", 0.15), ("retail", 0.12), ("healthcare", 0.1),
         ("finance", 0.08), ("government", 0.05), ("manufacturing", 0.03), ("creative", 0.02)),
    ),
    Community(
        "sao-paulo-cooperative", 550,
        (("BR", 0.7), ("AR", 0.1), ("PT", 0.08), ("CL", 0.07), ("MX", 0.05)),
        -3, (0.35, 0.45, 0.20),
        (("tech", 0.22), ("finance", 0.18), ("manufacturing", 0.14), ("retail", 0.14), ("education", 0.12),
         ("healthcare", 0.1), ("creative", 0.06), ("government", 0.04)),
    ),
)

APPS = ("runway-calculator", "real-wage-calculator", "cognitive-debt-assessment")
SAVINGS = (("<1k", 0.12), ("1k-5k", 0.2), ("5k-10k", 0.2), ("10k-25k", 0.24), ("25k-50k", 0.13),
           ("50k-100k", 0.08), ("100k+", 0.03))
DEBT = (("low", 0.2), ("moderate", 0.38), ("high", 0.3), ("severe", 0.12))
# Local hour-of-day profile: evenings are for planning a way out.
HOUR_WEIGHTS = (0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.8, 0.9, 1.0, 1.0,
                1.1, 1.0, 0.9, 0.9, 1.0, 1.2, 1.6, 2.1, 2.4, 2.2, 1.4, 0.6)
# Monday .. Sunday; Sunday evening is the peak of the week.
DAY_WEIGHTS = (1.0, 0.95, 0.95, 0.9, 0.8, 0.75, 1.25)

T = TypeVar("T")


class _Weighted(Generic[T]):
    """Values drawn by weight: `rng.choices(values, weights)[0]`, draw for draw, with the sums made once.

    The same arithmetic as `random.choices` (one `random()` per draw, bisected into
    the running sums), so a seed gives the same history as ever, about twice as fast.
    """

    __slots__ = ("values", "cum", "total", "hi")

    def __init__(self, values: Sequence[T], weights: Sequence[float]) -> None:
        self.values = tuple(values)
        self.cum = list(accumulate(weights))
        self.total = self.cum[-1] + 0.0
        self.hi = len(self.values) - 1

    @classmethod
    def of(cls, weighted: Sequence[tuple[T, float]]) -> _Weighted[T]:
        return cls([v for v, _ in weighted], [w for _, w in weighted])

    def draw(self, rng: random.Random) -> T:
        return self.values[bisect_right(self.cum, rng.random() * self.total, 0, self.hi)]


_SAVINGS = _Weighted.of(SAVINGS)
_DEBT = _Weighted.of(DEBT)
_HOURS = _Weighted(range(24), HOUR_WEIGHTS)
_TOOL_COUNT = _Weighted((1, 2, 3), (0.55, 0.3, 0.15))
_CALCULATIONS = _Weighted((1, 2, 3), (0.6, 0.3, 0.1))


class Traffic:
    """A deterministic generator of one community's sessions."""

    def __init__(self, community: Community, seed: int) -> None:
        self.community = community
        self.rng = random.Random(seed)
        self._serial = 0
        self._countries = _Weighted.of(community.countries)
        self._industries = _Weighted.of(community.industries)
        self._apps = _Weighted(APPS, community.tool_weights)

    def day_volume(self, day: datetime) -> int:
        """Sessions on a UTC day: the weekly rhythm, a slow growth, a little day-to-day wobble."""
        growth = 1 + 0.01 * ((day - datetime(2026, 1, 1, tzinfo=UTC)).days % 365) / 30
        wobble = self.rng.uniform(0.92, 1.08)
        return int(self.community.sessions_per_day * DAY_WEIGHTS[day.weekday()] / 0.94 * growth * wobble)

    def _start_time(self, day: datetime) -> datetime:
        local_hour = _HOURS.draw(self.rng)
        if day.weekday() == 6 and local_hour >= 17:
            local_hour = self.rng.choice((18, 19, 20, 20, 21))  # Sunday evening planning
        utc_hour = (local_hour - self.community.utc_offset_hours) % 24
        return day + timedelta(hours=utc_hour, minutes=self.rng.randrange(60), seconds=self.rng.randrange(60))

    def _tools(self) -> list[str]:
        count = _TOOL_COUNT.draw(self.rng)
        tools = [self._apps.draw(self.rng) for _ in range(6)]
        chosen = list(dict.fromkeys(tools))[:count]
        # Runway usually comes before the wage analysis (the seed's "47%" is about this order).
        if "runway-calculator" in chosen and "real-wage-calculator" in chosen and self.rng.random() < 0.7:
            chosen.sort(key=lambda a: 0 if a == "runway-calculator" else 1 if a == "real-wage-calculator" else 2)
        return chosen

    def session(self, start: datetime) -> list[dict[str, Any]]:
        """One session's events, in order."""
        self._serial += 1
        rng = self.rng
        sid = f"demo-{self.community.name[:6]}-{start:%Y%m%d}-{self._serial:07d}-{rng.randrange(16**6):06x}"
        country = self._countries.draw(rng)
        industry = self._industries.draw(rng)
        events: list[dict[str, Any]] = []
        at = start

        def add(app: str, action: str, **attributes: Any) -> None:
            nonlocal at
            events.append({"app": app, "action": action, "attributes": attributes,
                           "timestamp": at.isoformat(), "geo_hint": country, "session_id": sid})
            at += timedelta(minutes=rng.uniform(0.3, 4.0))

        for app in self._tools():
            add(app, "start")
            if app == "runway-calculator":
                savings = _SAVINGS.draw(rng)
                expenses = max(300.0, rng.lognormvariate(math.log(2400), 0.45))
                runway = max(0.2, rng.lognormvariate(math.log(8.3), 0.7))
                for _ in range(_CALCULATIONS.draw(rng)):
                    add(app, "calculate", runway_months=round(runway, 1), savings_band=savings,
                        monthly_expenses=round(expenses), industry=industry)
                    runway *= rng.uniform(0.9, 1.3)
                if rng.random() < 0.85:
                    add(app, "complete")
            elif app == "real-wage-calculator":
                salary = max(9000.0, rng.lognormvariate(math.log(56_000), 0.5))
                gap = rng.gauss(23 + (6 if industry in ("tech", "finance") else 0), 11)
                add(app, "reveal", salary=round(salary), real_wage_gap_pct=round(gap, 1), industry=industry)
                if rng.random() < 0.7:
                    add(app, "complete")
            else:
                questions = rng.randint(6, 28)
                for _ in range(math.ceil(questions / 7)):  # one `answer` event per page of questions
                    add(app, "answer")
                if rng.random() < 0.6:
                    add(app, "complete", debt_level=_DEBT.draw(rng), questions_answered=questions)
        return events

    def day(self, day: datetime) -> Iterator[dict[str, Any]]:
        """Every event of a UTC day."""
        for _ in range(self.day_volume(day)):
            yield from self.session(self._start_time(day))

    def history(self, days: int, today: datetime) -> Iterator[dict[str, Any]]:
        """Every event of the `days` UTC days before `today`, oldest first."""
        for back in range(days, 0, -1):
            yield from self.day(today - timedelta(days=back))

    def history_lines(self, days: int, today: datetime) -> Iterator[str]:
        """`history` as JSONL lines (`liberation node import`'s format)."""
        for event in self.history(days, today):
            yield json.dumps(event)
