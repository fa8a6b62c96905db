"""Crash durability, a few rounds (make bench runs 20): SIGKILL under load loses and doubles nothing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.bench_crash import hub_crashes, node_crashes


@pytest.mark.slow
async def test_node_killed_three_times_under_load(tmp_path: Path) -> None:
    result = await node_crashes(3, tmp_path, rng=random.Random(1))
    assert result["acked_batches"] >= 3
    assert (result["lost"], result["duplicated"], result["partial_batches"]) == (0, 0, 0), result


@pytest.mark.slow
async def test_hub_killed_three_times_under_intake(tmp_path: Path) -> None:
    result = await hub_crashes(3, tmp_path, rng=random.Random(2), envelopes_per_round=30)
    assert result["acked_before_kill"] > 0
    assert (result["lost"], result["merged_mismatches"]) == (0, 0), result
    assert result["log_entries"] == result["stored"]
