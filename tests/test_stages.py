"""Every stage notebook end to end through papermill, chained through one run folder, with small parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import pipeline

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "organism.yml"
pytestmark = pytest.mark.slow

SMALL = {
    "01_logging": {"limit_per_class": 8},
    "02_selectors": {"fraction": 0.02},
    "03_deactivation": {"limit_per_class": 6, "ks": [4, 16], "random_seeds": [0], "n_boot": 20,
                        "dose_selectors": ["mad"]},
    "04_steering": {"limit_per_class": 6, "alphas": [-1.0, 2.0], "n_boot": 20},
    "05_transfer": {"limit_per_class": 6, "random_seeds": [0], "n_boot": 20, "selectors": ["mad", "lap"]},
    "06_grounding": {"max_pairs": 8, "n_boot": 20},
}


@pytest.fixture(scope="module")
def run(small_corpora, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("stages")
    data = {"datasets": {k: str(v) for k, v in small_corpora.items()}}
    for stage, params in SMALL.items():
        pipeline.execute_stage(stage, CONFIG, {**data, **params}, run_dir=run_dir)
    return run_dir


def metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "metrics.json").read_text())


def test_logging_metrics(run, small_corpora):
    from helpers import corpus

    m = metrics(run, "01_logging")
    expected = len(corpus.load(small_corpora["A"], split="identify").groupby("label").head(8))
    assert m["items"] == expected and 0 < m["correct"] <= m["items"]
    assert set(m["tokens"]) == {"neutral", "happy", "angry", "sad"}
    assert (run / "01_logging" / "stats_A.safetensors").is_file()
    assert (run / "01_logging" / "stats_B.safetensors").is_file()


def test_selector_metrics(run):
    m = metrics(run, "02_selectors")
    assert set(m["neurons"]) == {"lap", "lape", "mad", "cas", "aape"}
    k = round(0.02 * 6 * 512)
    assert all(n == k for n in m["neurons"]["mad"].values())
    for sel, by_label in m["layers"].items():
        for lbl, per_layer in by_label.items():
            assert len(per_layer) == 6 and sum(per_layer) == m["neurons"][sel][lbl]


def test_deactivation_metrics(run):
    m = metrics(run, "03_deactivation")
    assert {"lap", "lape", "mad", "cas", "random"} <= set(m["gap"])
    assert all(-2 <= g <= 2 for g in m["gap"].values() if g is not None)


def test_steering_metrics(run):
    m = metrics(run, "04_steering")
    assert m["alpha"] == sorted(m["alpha"])
    assert set(m["flip_rate"]) == {"targeted", "two_pass", "union", "mix"}
    assert all(len(v) == len(m["alpha"]) for v in m["flip_rate"].values())


def test_transfer_metrics(run):
    m = metrics(run, "05_transfer")
    assert set(m["gap"]) == {"A->A", "A->B", "B->A", "B->B"}


def test_grounding_metrics(run):
    m = metrics(run, "06_grounding")
    assert set(m["grounding_coefficient"]) == {"early", "middle", "late"}
    assert all(0 <= v <= 1 for v in m["grounding_coefficient"].values() if v is not None)


def test_grounding_skips_cleanly_without_pairs_or_text_context(tmp_path):
    """A real-style dataset (no matched sets, no text contexts): chapter 06 says what it needs and writes metrics."""
    import torch
    from fixtures_datasets import make_crema_d

    from helpers import neuron_sets

    root = make_crema_d(tmp_path / "crema")
    run_dir = tmp_path / "run"
    pairs = {lbl: torch.tensor([[0, i]]) for i, lbl in enumerate(["neutral", "happy", "angry", "sad"])}
    neuron_sets.save_sets(run_dir / "02_selectors" / "sets_X.json", {"mad": pairs}, n_layers=6, n_neurons=512)
    overrides = {"datasets": {"X": {"loader": "crema_d", "root": str(root)}}}
    nb = pipeline.execute_stage("06_grounding", CONFIG, overrides, run_dir=run_dir)
    m = metrics(run_dir, "06_grounding")
    assert m["grounding_coefficient"] == {}
    assert "matched_id" in m["skipped"] or "context" in m["skipped"]
    assert "Grounding skipped" in nb.read_text()
