"""The results-against-the-paper page: every verdict follows its rule from the metrics, and the page holds
only numbers computed from them."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from helpers.book import claims

ROOT = Path(__file__).resolve().parents[2]

METRICS = {
    "00_organism": {"conflict_follows_audio": {"clear": 0.8, "faint": 0.4, "none": 0.03},
                    "conflict_follows_audio_monotone": True},
    "02_selectors": {"layers": {"mad": {"a": [90, 5, 5], "b": [80, 10, 10]},
                                "cas": {"a": [60, 20, 20], "b": [55, 25, 20]}}},
    "03_deactivation": {
        "gap": {"mad": -0.2, "cas": -0.25, "lap": -0.05, "lape": -0.04, "random(mad)": 0.0, "random": 0.0},
        "gap_ci": {"mad": [-0.24, -0.16], "cas": [-0.3, -0.2], "lap": [-0.08, -0.02], "lape": [-0.07, -0.01],
                   "random(mad)": [-0.01, 0.01], "random": [-0.01, 0.01]},
        "gap_by_budget": {"0.5%": {"mad": -0.1, "random": 0.0}},
        "gap_ci_by_budget": {"0.5%": {"mad": [-0.12, -0.08], "random": [-0.01, 0.01]}},
        "dose_response": {"mad": {"8": -0.05, "32": -0.1, "77": -0.2}, "random(mad)": {"8": 0, "32": 0, "77": 0}},
    },
    "04_steering": {"alpha": [0.5, 1.0, 4.0], "flip_rate": {"multiply": [0.01, 0.05, 0.2]},
                    "flip_rate_increasing": {"multiply": True},
                    "corrections": {"targeted": [0.1, 0.2, 0.4], "two_pass": [0.0, 0.1, 0.2],
                                    "mix": [0.05, 0.1, 0.3], "union": [0.1, 0.15, 0.35]},
                    "non_additivity": {"0.5": {"interaction": -0.1, "ratio": 0.8, "share_ci_excluding_0": 0.75}}},
    "05_transfer": {"gap": {"A->A": -0.2, "A->B": -0.05, "B->A": -0.15, "B->B": -0.2},
                    "gap_ci": {"A->A": [-0.25, -0.15], "A->B": [-0.08, -0.02], "B->A": [-0.2, -0.1],
                               "B->B": [-0.25, -0.15]}},
    "06_grounding": {"known_answer": {"audio": 0.9, "text": 0.1, "random": 0.5},
                     "grounding_by_reliability": {"clear": 0.8, "faint": 0.5, "none": 0.2},
                     "grounding_by_reliability_ci": {"clear": [0.75, 0.85], "faint": [0.45, 0.55],
                                                     "none": [0.15, 0.25]},
                     "dissociation_established": True,
                     "dissociation": {"text_sets": {"text_following": -0.2, "text_following_ci": [-0.3, -0.1]}}},
}


def verdicts(metrics) -> dict[str, str]:
    return {r["key"]: r["verdict"] for r in claims.evaluate(metrics)}


def test_a_run_that_shows_every_effect_reproduces_every_testable_claim():
    got = verdicts(METRICS)
    testable = {k: v for k, v in got.items() if v != claims.NOT_TESTABLE}
    assert set(testable.values()) == {claims.REPRODUCED}, testable
    assert {k for k, v in got.items() if v == claims.NOT_TESTABLE} == {"modest-data", "layer-indices",
                                                                       "reference-numbers"}


@pytest.mark.parametrize("key,path,value", [
    ("deactivation", ("03_deactivation", "gap_ci", "mad"), [-0.05, 0.02]),           # interval reaches 0 (and MAD
                                                                                      # is no longer the stronger)
    ("deactivation", ("03_deactivation", "gap_ci", "random(mad)"), [-0.2, 0.0]),      # control as strong
    ("deactivation-paper-budget", ("03_deactivation", "gap_ci_by_budget", "0.5%", "mad"), [-0.01, 0.01]),
    ("selectors", ("03_deactivation", "gap_ci", "cas"), [-0.06, -0.01]),              # CAS no stronger than LAP
    ("steering", ("04_steering", "flip_rate_increasing", "multiply"), False),
    ("dose", ("03_deactivation", "dose_response", "mad", "77"), -0.01),                # not monotone
    ("layers", ("02_selectors", "layers", "cas"), {"a": [34, 33, 33], "b": [33, 34, 33]}),  # even spread
    ("transfer-partial", ("05_transfer", "gap_ci", "A->B"), [-0.1, 0.02]),
    ("transfer-asymmetric", ("05_transfer", "gap_ci", "B->A"), [-0.09, -0.03]),       # overlaps A->B
    ("label-free", ("04_steering", "corrections", "union"), [0.1, 0.25, 0.35]),       # beats targeted once
    ("non-additive", ("04_steering", "non_additivity", "0.5", "share_ci_excluding_0"), 0.25),
    ("organism-listens", ("00_organism", "conflict_follows_audio", "none"), 0.6),
    ("known-answer", ("06_grounding", "known_answer", "text"), 0.6),
    ("grounding-reliability", ("06_grounding", "grounding_by_reliability_ci", "none"), [0.7, 0.9]),
    ("dissociation", ("06_grounding", "dissociation_established"), False),
])
def test_each_rule_turns_its_verdict_when_the_number_does(key, path, value):
    also = {"deactivation": {"selectors"}, "transfer-partial": {"transfer-asymmetric"}}.get(key, set()) \
        if path[-1] in ("mad", "A->B") else set()
    m = copy.deepcopy(METRICS)
    target = m
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    got = verdicts(m)
    assert got[key] == claims.NOT_REPRODUCED
    assert all(v != claims.NOT_REPRODUCED for k, v in got.items() if k != key and k not in also), got  # only it


def test_a_missing_stage_says_not_run_and_not_testable_claims_stay():
    m = {k: v for k, v in METRICS.items() if k != "05_transfer"}
    got = verdicts(m)
    assert got["transfer-partial"] == got["transfer-asymmetric"] == claims.NOT_RUN
    assert got["reference-numbers"] == claims.NOT_TESTABLE and got["deactivation"] == claims.REPRODUCED


def test_chi_square_helpers():
    assert claims.uniformity_chi2([10, 10, 10]) == 0
    assert claims.uniformity_chi2([30, 0, 0]) == pytest.approx(60.0)
    # exact 0.1 % critical values: df 2 -> 13.82, df 5 -> 20.52, df 10 -> 29.59
    for df, exact in ((2, 13.816), (5, 20.515), (10, 29.588)):
        assert claims.chi2_critical(df) == pytest.approx(exact, rel=0.03)


def test_the_page_shows_the_runs_numbers_and_only_them(tmp_path):
    run = tmp_path / "run"
    for stage, m in METRICS.items():
        (run / stage).mkdir(parents=True)
        (run / stage / "metrics.json").write_text(json.dumps(m))
    out = tmp_path / "results.md"
    rows = claims.write_page(run, out, shown="runs/test")
    page = out.read_text()
    assert page.count("\n| ") == len(rows) + 1 == len(claims.CLAIMS) + 1  # header + one row per claim
    assert "MAD -0.200 [-0.240, -0.160]" in page and "`runs/test/*/metrics.json`" in page
    # a changed metric changes the page: the number comes from the file
    m = copy.deepcopy(METRICS)
    m["03_deactivation"]["gap"]["mad"] = -0.123
    (run / "03_deactivation" / "metrics.json").write_text(json.dumps(m["03_deactivation"]))
    claims.write_page(run, out)
    assert "MAD -0.123" in out.read_text() and "MAD -0.200" not in out.read_text()
    for key in ("[paper]", "[notes]", "[later]", "[ours]"):
        assert key in page
    assert re.search(r"\*\*reproduced\*\*", page)


def test_the_real_run_page_is_generated_when_a_run_exists():
    run = ROOT / "runs" / "organism"
    if not (run / "03_deactivation" / "metrics.json").is_file():
        pytest.skip("no organism run in this checkout (make book makes one)")
    rows = claims.evaluate(claims.load_metrics(run))
    assert all(r["verdict"] != claims.NOT_RUN for r in rows), [r for r in rows if r["verdict"] == claims.NOT_RUN]
