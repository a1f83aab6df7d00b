"""helpers.identify.resampling: stratified replicate weights and the weighted stats accumulator (pure tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.identify.resampling import ResampledStatsAccumulator, identification_resamples, stratified_weights
from helpers.log.stats import StatsAccumulator

LABELS = ["a", "b", "c"]
L, N, B = 2, 5, 7


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.rand(3, B, N, generator=g, dtype=torch.float64) for _ in range(L)]
    n_tokens = torch.randint(1, 5, (B,), generator=g)
    classes = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    return rows, n_tokens, classes


def test_stratified_weights_keep_class_sizes():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    w = stratified_weights(y, 50, seed=1)
    assert w.shape == (50, 9) and w.dtype == np.int64
    for c in (0, 1, 2):
        assert (w[:, y == c].sum(1) == (y == c).sum()).all()
    assert (w != 1).any() and np.array_equal(w, stratified_weights(y, 50, seed=1))
    with pytest.raises(ValueError, match="n_resamples"):
        stratified_weights(y, 0)


def test_weighted_replicates_equal_duplicated_items():
    rows, n_tokens, classes = _batch()
    keep = torch.tensor([True, True, False, True, True, True, True])
    weights = np.array([[1] * B, [2, 0, 1, 3, 0, 1, 0]])
    acc = ResampledStatsAccumulator(L, N, LABELS, weights)
    acc.update_rows(rows, n_tokens, classes, np.arange(B), keep)
    ones, dup = acc.results()
    ref = StatsAccumulator(L, N, LABELS)
    ref.update_rows(rows, n_tokens, classes, keep)
    plain = ref.result()
    for name in ("tokens", "items", "active", "total", "total_sq"):
        torch.testing.assert_close(getattr(ones, name), getattr(plain, name))
    # replicate 2 == a plain accumulator over the items repeated by their weights
    rep = np.repeat(np.arange(B), weights[1])
    ref2 = StatsAccumulator(L, N, LABELS)
    ref2.update_rows([r[:, rep] for r in rows], n_tokens[rep], classes[rep], keep[rep])
    for name in ("tokens", "items", "active", "total", "total_sq"):
        torch.testing.assert_close(getattr(dup, name), getattr(ref2.result(), name))
    with pytest.raises(ValueError, match="item_index outside"):
        acc.update_rows(rows, n_tokens, classes, np.arange(B) + 1)


def test_identification_resamples_reselect_each_replicate():
    rows, n_tokens, classes = _batch(3)
    acc = ResampledStatsAccumulator(L, N, LABELS, stratified_weights(classes.numpy(), 4, seed=0))
    acc.update_rows(rows, n_tokens, classes, np.arange(B))
    reps = acc.results()
    sets = identification_resamples(reps, {"mad": {"k": 2}, "cas(mean)": {"method": "cas", "k": 1, "on": "mean"}})
    assert len(sets) == 4 and all(set(s) == {"mad", "cas(mean)"} for s in sets)
    assert all(v.shape == (2, 2) for s in sets for v in s["mad"].values())
    same = identification_resamples(lambda r: reps[r], {"mad": {"k": 2}}, n_resamples=4)
    assert all(torch.equal(a["mad"][lbl], b["mad"][lbl]) for a, b in zip(sets, same, strict=True) for lbl in LABELS)
