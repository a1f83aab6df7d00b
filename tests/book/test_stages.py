"""Every stage notebook end to end through papermill, chained through one run folder, with small parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.book import stage_run

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "organism.yml"
pytestmark = pytest.mark.slow

SMALL = {
    "01_logging": {"limit_per_class": 8},
    "02_selectors": {"fraction": 0.02},
    # ks: 100 is larger than the 2 % sets (61 neurons): the dose-response must skip it, never clamp
    "03_deactivation": {"limit_per_class": 6, "ks": [4, 16, 100], "random_seeds": [0], "n_boot": 200,
                        "dose_selectors": ["mad"], "n_replicates": 2, "variability_selectors": ["mad"],
                        "variants": ["cas(on=mean)"]},
    "04_steering": {"limit_per_class": 6, "alphas": [1.0, 16.0], "dose_alphas": [-1.0, 2.0],
                    "additivity_alphas": [0.5, 2.0], "n_boot": 20},
    "05_transfer": {"limit_per_class": 6, "random_seeds": [0], "n_boot": 20, "selectors": ["mad", "lap"]},
    "06_grounding": {"max_pairs": 8, "n_boot": 20, "known_answer_pairs": 16, "residual_pairs": 4,
                     "dissociation_k": 4, "random_seeds": [0]},
    "07_sae": {"limit_per_class": 4, "unit_ks": [2, 4], "sae_steps": 10, "reservoir": 64, "k_active": 4, "aux_k": 8},
}


@pytest.fixture(scope="module")
def run(small_corpora, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("stages")
    data = {"datasets": {k: str(v) for k, v in small_corpora.items()}}
    for stage, params in SMALL.items():
        stage_run.execute_stage(stage, CONFIG, {**data, **params}, run_dir=run_dir)
    return run_dir


def metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "metrics.json").read_text())


def test_logging_metrics(run, small_corpora):
    from helpers.data import corpus

    m = metrics(run, "01_logging")
    expected = len(corpus.load(small_corpora["A"], split="identify").groupby("label").head(8))
    assert m["items"] == expected and 0 < m["correct"] <= m["items"]
    assert set(m["tokens"]) == {"neutral", "happy", "angry", "sad"}
    assert (run / "01_logging" / "stats_A.safetensors").is_file()
    assert (run / "01_logging" / "stats_B.safetensors").is_file()


SELECTORS = {"lap", "lape", "mad", "cas", "aape"}
N_TOTAL = 6 * 512


def test_selector_metrics(run):
    m = metrics(run, "02_selectors")
    assert set(m["neurons"]) == SELECTORS
    # every selector finds at least one neuron for every emotion at the default options (LAPE: saturation bar)
    assert all(n >= 1 for by in m["neurons"].values() for n in by.values()), m["neurons"]
    k, k_paper = round(0.02 * N_TOTAL), round(0.005 * N_TOTAL)
    assert m["budget"] == {"2%": {"fraction": 0.02, "k": k}, "0.5%": {"fraction": 0.005, "k": k_paper}}
    for sel in ("lap", "mad"):
        assert set(m["neurons"][sel].values()) == {k}
        assert set(m["neurons_by_budget"]["0.5%"][sel].values()) == {k_paper}
    # the option alternatives: each selector's other value, AAPE also at the others' budget
    assert set(m["variants"]) == {"lap(ties=random)", "lape(bar=strict)", "cas(on=mean)", "aape(budget=fraction)"}
    assert set(m["variants"]["aape(budget=fraction)"].values()) == {k}
    assert set(m["neurons_by_budget"]["0.5%"]["aape(budget=fraction)"].values()) == {k_paper}
    # an emotion that gets nothing is explained
    for budget, by_sel in m["neurons_by_budget"].items():
        for sel, by_label in by_sel.items():
            for lbl, n in by_label.items():
                if n == 0:
                    assert m["shortfall"][budget][sel][lbl]
    # the tie report counts what it says: the selected tied neurons are among the tied ones and within the budget
    for budget, by_label in m["lap_ties"].items():
        for t in by_label.values():
            assert 0 <= t["tied_selected"] <= min(t["tied_at_cut"], m["budget"][budget]["k"])
    for sel, by_label in m["layers"].items():
        for lbl, per_layer in by_label.items():
            assert len(per_layer) == 6 and sum(per_layer) == m["neurons"][sel][lbl]
    from helpers.core import neuron_sets

    for name in ("A", "B"):
        book = neuron_sets.load_meta(run / "02_selectors" / f"sets_{name}.json")
        paper = neuron_sets.load_meta(run / "02_selectors" / f"sets_{name}_paper.json")
        assert (book["budget"], paper["budget"]) == ("2%", "0.5%") and set(book["specs"]) >= SELECTORS


def test_deactivation_metrics(run):
    m = metrics(run, "03_deactivation")
    assert SELECTORS | {"random", "random(layer-matched)", "cas(on=mean)"} <= set(m["gap"])
    # the joint bootstrap interval of the mean gap brackets the mean gap
    for name, (lo, hi) in m["gap_ci"].items():
        g = m["gap"][name]
        assert lo is not None and hi is not None and lo - 1e-9 <= g <= hi + 1e-9, (name, lo, g, hi)
    # the layer-matched control zeroes as many neurons in every layer as its selector; the uniform one as many in all
    layers = m["layers_deactivated"]
    for sel in SELECTORS:
        assert layers[f"random({sel}, layer-matched)"] == layers[sel] == m_layers(run, sel)
        assert {t: sum(v) for t, v in layers[f"random({sel})"].items()} == {t: sum(v) for t, v in layers[sel].items()}
    assert set(m["gap_by_budget"]) == {"2%", "0.5%"}
    assert SELECTORS | {"random", "random(layer-matched)"} <= set(m["gap_by_budget"]["0.5%"])
    assert m["gap_by_budget"]["2%"]["mad"] == m["gap"]["mad"]
    # the dose-response never gives a set more neurons than it holds (k = 100 > 61 is skipped)
    assert set(m["dose_response"]["mad"]) == {"4", "16"}
    assert all(k <= 61 for k in m["dose_k_effective_max"]["mad"].values())
    v = m["identification_variability"]["mad"]
    assert v["n_replicates"] == 2 and v["ci_low"] <= v["mean"] <= v["ci_high"]


def m_layers(run: Path, sel: str) -> dict:
    return metrics(run, "02_selectors")["layers"][sel]


def test_steering_metrics(run):
    m = metrics(run, "04_steering")
    assert m["alpha"] == [1.0, 16.0]
    assert set(m["flip_rate"]) == {"multiply", "add", "patch_mean"}
    assert {"targeted", "oracle", "two_pass", "union", "mix"} <= set(m["corrections"])
    for key in ("corrections", "damage", "delta_uar"):
        assert all(len(v) == len(m["alpha"]) for v in m[key].values())
    assert all(len(v) == len(m["alpha"]) for v in m["flip_rate"].values())
    for v in [*m["flip_rate"].values(), *m["corrections"].values(), *m["damage"].values()]:
        assert all(x is None or 0 <= x <= 1 for x in v)
    for mode, v in m["flip_rate"].items():
        assert m["flip_rate_at_max_alpha"].get(mode) == v[-1]
        assert m["flip_rate_increasing"][mode] == all(
            b >= a - 0.02 for a, b in zip(v[:-1], v[1:], strict=True) if None not in (a, b))
    # the oracle steers each item toward its true emotion: its flip rate is its corrections
    assert m["by_mode"]["multiply"]["flip_rate_to_target"]["oracle"] == m["corrections"]["oracle"]
    assert set(m["non_additivity"]) == {"0.5", "2"}


def test_transfer_metrics(run):
    m = metrics(run, "05_transfer")
    assert set(m["gap"]) == {"A->A", "A->B", "B->A", "B->B"}
    assert set(m["gap_ci"]) == set(m["gap"]) and all(lo <= hi for lo, hi in m["gap_ci"].values())


def test_grounding_metrics(run):
    m = metrics(run, "06_grounding")
    assert set(m["grounding_coefficient"]) == {"early", "middle", "late"}
    assert set(m["known_answer"]) == {"text", "audio", "random"}
    ka = m["known_answer"]
    assert ka["text"] is not None and ka["audio"] is not None and ka["text"] < ka["audio"]
    assert set(m["grounding_by_reliability"]) == {"clear", "faint", "none"}
    # the calibrated and the raw coefficients are what their Δs and nulls say they are
    for level, d in m["grounding_deltas_by_reliability"].items():
        raw = d["delta_audio"] / (d["delta_audio"] + d["delta_text"])
        assert abs(m["grounding_by_reliability_raw"][level] - raw) < 1e-9
        g = m["grounding_by_reliability"][level]
        if g is not None:
            ra, rt = d["delta_audio"] / d["null_audio"], d["delta_text"] / d["null_text"]
            assert abs(g - ra / (ra + rt)) < 1e-9
    d = m["dissociation"]
    for name in ("text_sets", "audio_sets"):
        assert {"text_following", "audio_following", "random_text_following", "random_audio_following"} <= set(d[name])
        assert 1 <= d[name]["n_neurons"] <= 4
    assert d["double_dissociation"] == (d["text_sets"]["text_following"] < d["text_sets"]["audio_following"]
                                        and d["audio_sets"]["audio_following"] < d["audio_sets"]["text_following"])
    assert set(m["dissociation_by_reliability"]) == {"clear", "faint", "none"}


def test_sae_metrics(run):
    m = metrics(run, "07_sae")
    for key in ("l0", "fvu", "dead_fraction", "accuracy_recovered"):
        assert set(m[key]) == {str(i) for i in range(len(m["l0"]))} and len(m[key]) >= 1, key
    assert all(0 < v <= 4 for v in m["l0"].values())  # TopK with k_active = 4
    assert all(0 <= v <= 1 for v in m["dead_fraction"].values())
    assert set(m["gap"]) == {"neurons", "features"} and set(m["gap"]["features"]) == {"2", "4"}
    g = m["grounding_coefficient"]
    assert (g is None and m["grounding_coefficient_reason"]) or set(g) == {"features", "neurons"}
    if g is not None:
        assert all(v is None or 0 <= v <= 1 for part in g.values() for v in part.values())
    assert m["empty_edit_max_abs_logit_change"] == 0.0
    assert (run / "07_sae" / "saes" / "layer_0" / "cfg.json").is_file()


def test_grounding_skips_cleanly_without_pairs_or_text_context(tmp_path):
    """A real-style dataset (no matched sets, no text contexts): chapter 06 says what it needs and writes metrics."""
    import torch

    from helpers.core import neuron_sets

    from fixtures_datasets import make_crema_d

    root = make_crema_d(tmp_path / "crema")
    run_dir = tmp_path / "run"
    pairs = {lbl: torch.tensor([[0, i]]) for i, lbl in enumerate(["neutral", "happy", "angry", "sad"])}
    neuron_sets.save_sets(run_dir / "02_selectors" / "sets_X.json", {"mad": pairs}, n_layers=6, n_neurons=512)
    overrides = {"datasets": {"X": {"loader": "crema_d", "root": str(root)}}, "dataset": "X"}
    nb = stage_run.execute_stage("06_grounding", CONFIG, overrides, run_dir=run_dir)
    m = metrics(run_dir, "06_grounding")
    assert m["grounding_coefficient"] == {}
    assert "matched_id" in m["skipped"] or "context" in m["skipped"]
    assert "Grounding skipped" in nb.read_text()
