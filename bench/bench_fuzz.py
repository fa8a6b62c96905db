"""Fuzz the wire decoder, the privacy filter and the ingest body decoder at length.

The targets, their inputs and their invariants are tests/test_fuzz.py's (a few
hundred examples each in `make test`); here each runs FUZZ_EXAMPLES examples
(default 20,000) or FUZZ_SECONDS seconds (default 300), whichever comes first,
in batches, counting every failure instead of stopping at the first:

    crashes      an exception the target may not raise (anything but EnvelopeError / Problem)
    violations   an invariant broken (a kept value outside the catalog's domain, ...)

Both must be 0. One sample input per distinct failure is printed.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.test_fuzz import TARGETS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20000"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "300"))
BATCH = 1000
ROOT = Path(__file__).resolve().parents[1]


def _where(exc: BaseException) -> str:
    """The exception's type and the innermost frame in the project's code: one line per distinct failure."""
    ours = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().is_relative_to(ROOT)]
    place = f"{Path(ours[-1].filename).resolve().relative_to(ROOT)}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {place}"


def fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any], None], *, examples: int, seconds: float) -> dict[str, Any]:
    """Run `check` on up to `examples` inputs from `strategy` for at most `seconds`; count failures."""
    ran = 0
    crashes: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    samples: dict[str, str] = {}

    def one(value: Any) -> None:
        nonlocal ran
        ran += 1
        try:
            check(value)
        except AssertionError as exc:
            key = f"{exc}"[:120] or _where(exc)
            violations[key] += 1
            samples.setdefault(key, repr(value)[:300])
        except Exception as exc:  # noqa: BLE001 - counting them is the point
            key = _where(exc)
            crashes[key] += 1
            samples.setdefault(key, repr(value)[:300])

    deadline = time.monotonic() + seconds
    while ran < examples and time.monotonic() < deadline:
        before = ran
        batch = settings(
            max_examples=min(BATCH, examples - ran), deadline=None, database=None,
            suppress_health_check=list(HealthCheck), phases=[Phase.generate],
        )(given(strategy)(one))
        batch()
        if ran == before:
            break  # the strategy has nothing new to give
    return {"examples": ran, "crashes": crashes, "violations": violations, "samples": samples}


def main() -> None:
    failures = 0
    for name, (strategy, check) in TARGETS.items():
        started = time.perf_counter()
        result = fuzz(strategy, check, examples=EXAMPLES, seconds=SECONDS)
        elapsed = time.perf_counter() - started
        crashes, violations = sum(result["crashes"].values()), sum(result["violations"].values())
        failures += crashes + violations
        print(f"{name:8} {result['examples']:>7,} examples in {elapsed:5.1f} s  "
              f"({result['examples'] / elapsed:,.0f}/s): {crashes} crashes, {violations} violations")
        for key, count in (result["crashes"] + result["violations"]).most_common():
            print(f"    {count:>6,} x {key}\n             e.g. {result['samples'][key]}")
    print("PASS" if failures == 0 else "FAIL", "(0 crashes and 0 invariant violations over every target)")


if __name__ == "__main__":
    main()
