"""The benchmarks' timing and ratio arithmetic (no timing is asserted: the figures are made up)."""

import json

import pytest
from bench_helpers import import_benchmarks

timing, report = import_benchmarks("timing", "report")


def test_paired_ratio_is_the_median_of_per_repeat_ratios():
    # repeat 2 is a slow spell for both; repeat 3 for ours alone: the paired median ignores both
    times = timing.Timings({"ours": [1.0, 4.0, 9.0, 1.1, 1.0], "torch": [2.0, 8.0, 2.0, 2.0, 2.0]})
    assert times["ours"] == 1.1 and times["torch"] == 2.0  # the medians
    assert times.paired("ours", "torch") == pytest.approx(0.5)
    assert times.paired("ours", "absent") is None


def test_seconds_per_call_keeps_every_repeat():
    calls = []
    times = timing.seconds_per_call({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    calls=2, repeats=3, sync=lambda: None)
    assert calls == ["a", "a", "b", "b"] * 3  # the functions take turns within each repeat
    assert [len(v) for v in times.samples.values()] == [3, 3]
    assert times.paired("a", "b") > 0


def test_a_row_reads_its_paired_ratio(tmp_path):
    row = report.Row("job", "us", 10.0, {"torch": 40.0}, reference="torch", target=("<=", 0.3),
                     paired_ratio=0.28)
    assert row.ratio == 0.28 and row.passed  # not 10 / 40 = 0.25 from the medians
    plain = report.Row("job", "us", 10.0, {"torch": 40.0}, reference="torch", target=("<=", 0.3))
    assert plain.ratio == 0.25
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": [row.as_dict()]}))
    assert "0.28x torch" in report.markdown_table(str(path))
