"""The utility bench at a tiny size: it runs through the real node and hub code and its report keeps its shape."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import bench_utility

FIGURES = {
    "countries_shown", "countries_false", "countries_true_shown", "tools_shown", "tools_false",
    "sessions_err_pct", "sessions_z", "started_abs_err_pct", "rate_abs_err_pp", "top5_overlap",
    "median_err/runway_months", "median_err/real_wage_gap_pct", "hist_tvd", "rms_z",
    "regions_shown", "regions_false", "attributed_pct",
}


def test_tiny_federation_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "utility.json"
    report = bench_utility.main(
        ["--federations", "2x12", "--days", "2", "--runs", "2", "--jobs", "1",
         "--cache", str(tmp_path / "cache"), "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))  # the JSON is the returned report
    fed = report["federations"]["2x12"]
    assert fed["truth"]["nodes"] == 2 and fed["truth"]["windows"] == 2 and fed["truth"]["sessions"] > 0
    assert set(fed["designs"]) == {d.name for d in bench_utility.DESIGNS}
    for name, design in fed["designs"].items():
        assert design["runs"] == len(design["values"]) == (1 if name.startswith("bounded") else 2)
        assert FIGURES <= set(design["summary"])
        apps = {key.split("/", 1)[1] for key in design["summary"] if key.startswith("started_err_pct/")}
        assert len(apps) == 3
    # No noise: the headline sessions are exactly the session-days generated, and every shown country is true.
    exact = fed["designs"]["bounded truth (no noise)"]["summary"]
    assert exact["sessions_err_pct"]["mean"] == 0 and exact["countries_false"]["mean"] == 0
    assert exact["countries_true_shown"]["mean"] == len(fed["truth"]["countries"])
    assert exact["hist_tvd"]["mean"] == pytest.approx(0, abs=1e-9)
    targeted = {t["design"] for t in fed["targets"]}
    assert targeted == {"current", "central DP ideal"}
    assert all(isinstance(t["pass"], bool) for t in fed["targets"])
    assert "| design | runs | countries shown (true" in printed
    assert printed.count("TARGET ") == len(fed["targets"])
    assert not any(isinstance(v, float) and math.isnan(v) for v in _leaves(report))


def _leaves(node: object) -> list[object]:
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in _leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in _leaves(value)]
    return [node]


def test_tiny_weekly_federation(tmp_path: Path) -> None:
    """`--window week`: nodes with the weekly catalog, one ISO week of truth, the same report."""
    report = bench_utility.main(
        ["--federations", "2x12", "--days", "7", "--window", "week", "--runs", "1", "--jobs", "1",
         "--designs", "current,exact", "--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "week.json")]
    )
    fed = report["federations"]["2x12"]
    assert report["params"]["window"] == "week" and fed["truth"]["windows"] == 1
    exact = fed["designs"]["bounded truth (no noise)"]["summary"]
    assert exact["sessions_err_pct"]["mean"] == 0 and exact["countries_false"]["mean"] == 0
    with pytest.raises(ValueError, match="whole number of weeks"):
        bench_utility.main(["--federations", "2x12", "--days", "3", "--window", "week", "--jobs", "1",
                            "--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "bad.json")])
