"""The Log stage on the real organism: streamed statistics equal statistics from the full activations."""

from __future__ import annotations

import pytest
import torch

from helpers.core.hooks import hook_gates
from helpers.data import corpus
from helpers.intervene import evaluation
from helpers.log import activation_log
from helpers.log.stats import StatsAccumulator


@pytest.fixture(scope="module")
def identify_items(small_corpora):
    return corpus.load(small_corpora["A"], split="identify")


@pytest.mark.parametrize("positions", ["last", "audio", "all"])
def test_streamed_stats_equal_full_activation_stats(organism, identify_items, positions):
    df = identify_items
    res = activation_log.log_activations(organism, df, positions=positions, batch_size=7, progress=False)
    # reference: keep every layer's raw activations (plain torch hooks, not nnsight) and reduce them at once
    batch = organism.batch_inputs(df)
    logits, gates = hook_gates(organism.model, batch.inputs)
    pred = organism.label_logits(batch, logits).argmax(-1)
    y = torch.from_numpy(evaluation.label_indices(df.label, organism.labels))
    mask = organism.position_masks(batch)[positions] & (pred == y)[:, None]
    ref = StatsAccumulator(len(gates), gates[0].shape[-1], list(organism.labels))
    ref.update(gates, mask, y)
    ref = ref.result()
    assert res.items.correct.sum() == int((pred == y).sum())
    for field in ("tokens", "items", "active", "total", "total_sq"):
        torch.testing.assert_close(getattr(res.stats, field), getattr(ref, field), rtol=1e-5, atol=1e-4)


def test_only_correct_off_counts_every_item(organism, identify_items):
    res = activation_log.log_activations(organism, identify_items, positions="last", only_correct=False,
                                         progress=False)
    assert int(res.stats.items.sum()) == len(identify_items)
    assert int(res.stats.tokens.sum()) == len(identify_items)  # one "last" position per item


def test_bad_position_kind_and_empty_class(organism, identify_items):
    with pytest.raises(ValueError, match="unknown token-position kind"):
        activation_log.log_activations(organism, identify_items, positions="middle", progress=False)
    only_sad = identify_items[identify_items.label == "sad"]
    with pytest.raises(ValueError, match="no counted tokens for class"):
        activation_log.log_activations(organism, only_sad, progress=False)
