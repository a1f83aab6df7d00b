"""The benchmarks page: a table with pass/fail against each goal and a figure, from bench/results.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from helpers.book import benchpage

ROOT = Path(__file__).resolve().parents[2]
RESULTS = {
    "machine": {"date": "today", "cpu_count": 2, "torch": "x", "torch_threads": 1},
    "goals": {"logging_overhead_ratio": 1.15, "batching_speedup": 3.0},
    "logging_overhead": {"organism": {"ratio": 1.05, "goal": 1.15}},
    "memory": {"tensor_peak_ratio": 1.0, "flat": True, "factor": 10, "model": "m"},
    "batching": {"goal": 3.0, "settings": [{"batch_size": 1, "rows_per_forward": 32, "speedup": 3.4,
                                            "argmax_agreement": 1.0},
                                           {"batch_size": 16, "rows_per_forward": 32, "speedup": 1.1,
                                            "argmax_agreement": 1.0}]},
    "sharded": {"processes": 2, "counts_equal": True, "max_abs_diff": 1e-15},
}


def met(results) -> dict[str, bool]:
    return {r["measurement"].split(",")[0].split(":")[0]: r["met"] for r in benchpage.rows(results)}


def test_every_goal_met_and_each_one_can_fail():
    assert all(met(RESULTS).values())
    for path, value, name in ((("logging_overhead", "organism", "ratio"), 1.3, "logging overhead"),
                              (("memory", "flat"), False, "tensor memory peak at 10× the items (m)"),
                              (("batching", "settings", 0, "speedup"), 2.0, "batched interventions"),
                              (("sharded", "max_abs_diff"), 1e-6, "sharded sums")):
        r = copy.deepcopy(RESULTS)
        target = r
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        got = met(r)
        assert got[name] is False and sum(not v for v in got.values()) == 1, got


def test_the_page_and_figure_are_written_from_the_file(tmp_path):
    src = tmp_path / "results.json"
    src.write_text(json.dumps(RESULTS))
    benchpage.write(src, tmp_path / "out")
    page = (tmp_path / "out" / "benchmarks.md").read_text()
    assert "| logging overhead, organism (log / plain forward, median) | 1.050× | ≤ 1.15× | **yes** |" in page
    assert "6 of 6 goals met" in page
    assert (tmp_path / "out" / "benchmarks.png").stat().st_size > 1000


def test_the_committed_results_render():
    table = benchpage.rows(json.loads((ROOT / "bench" / "results.json").read_text()))
    assert len(table) >= 4 and all(isinstance(r["met"], bool) for r in table)


def test_the_sweep_the_bit_identical_shards_and_the_stage_times_are_shown(tmp_path):
    r = copy.deepcopy(RESULTS)
    r["goals"]["sweep_speedup"] = 3.0
    r["sweep"] = {"goal": 3.0, "sweep": "s", "identical": True, "max_abs_logit_diff": 0.0, "models": {
        "organism": {"speedup": 4.0, "uncached_sequential_s": 8.0, "cached_batched_s": 2.0, "input_share": 0.8,
                     "caching_bound": 5.0, "max_abs_logit_diff": 0.0},
        "wide_random": {"speedup": 1.2, "uncached_sequential_s": 6.0, "cached_batched_s": 5.0, "input_share": 0.2,
                        "caching_bound": 1.25, "max_abs_logit_diff": 0.0}}}
    r["sharded"]["identical"] = False
    table = {row["measurement"]: row["met"] for row in benchpage.rows(r)}
    assert table["full sweep, organism: audio cached + batched vs uncached one at a time"] is True
    assert table["2-process logging: every sum bit-for-bit equal to one process"] is False
    (tmp_path / "run" / "03_deactivation").mkdir(parents=True)
    (tmp_path / "run" / "03_deactivation" / "timing.json").write_text('{"seconds": 30.0}')
    (tmp_path / "run" / "01_logging").mkdir(parents=True)
    (tmp_path / "run" / "01_logging" / "timing.json").write_text('{"seconds": 10.0}')
    (tmp_path / "run" / "03_deactivation" / "usage.json").write_text('{"passes": 12, "rows": 1500, "tokens": 9}')
    page = benchpage.details(r, tmp_path / "run")
    assert "| organism | 8.0 s | 2.0 s | 4.00× | 80% | 5.00× | 0.0e+00 |" in page
    assert "| 03_deactivation | 30 | 75% | 12 | 1,500 | 50 |" in page
    assert "| 01_logging | 10 | 25% | — | — | — |" in page  # no usage.json: no forward pass counted
