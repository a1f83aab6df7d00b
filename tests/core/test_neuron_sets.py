"""helpers.core.neuron_sets: the one pairs <-> mask converter and the one seeded random-set generator."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from helpers.core.neuron_sets import as_mask, as_pairs, random_sets, selection_masks, stable_seed

L, N = 4, 16


def test_pairs_and_masks_round_trip():
    pairs = torch.tensor([[0, 1], [3, 15], [0, 1]])
    mask = as_mask(pairs, L, N)
    assert mask.shape == (L, N) and int(mask.sum()) == 2 and mask[3, 15]
    assert as_pairs(mask, L, N).tolist() == [[0, 1], [3, 15]]
    assert as_pairs([[1, 2]], L, N).dtype == torch.long
    assert as_pairs(np.array([[1, 2]], dtype=np.int32), L, N).tolist() == [[1, 2]]
    for empty in ([], torch.zeros(0, 2, dtype=torch.long), np.zeros(0)):
        assert as_pairs(empty, L, N).shape == (0, 2)
    m = selection_masks({"b": [[1, 1]], "a": []}, L, N, labels=["a", "b", "c"])
    assert m.shape == (3, L, N) and m[1, 1, 1] and int(m.sum()) == 1


def test_converter_names_the_bad_pair_and_the_model_shape():
    with pytest.raises(ValueError, match=r"1 \(layer, neuron\) pair\(s\) out of range, first \(4, 0\).*4 x 16"):
        as_mask([[0, 0], [4, 0]], L, N)
    with pytest.raises(ValueError, match=r"first \(0, -1\)"):
        as_pairs([[0, -1]], L, N, what="set 'happy'")
    with pytest.raises(TypeError, match="must be integers, got dtype torch.float"):
        as_pairs(torch.tensor([[0.0, 1.0]]), L, N)
    with pytest.raises(TypeError, match="must be integers"):
        as_pairs([[0.0, 1.5]], L, N)
    with pytest.raises(ValueError, match=r"shape \[m, 2\]"):
        as_pairs([1, 2, 3], L, N)
    with pytest.raises(ValueError, match="mask has shape \\(3, 16\\).*4 x 16"):
        as_mask(torch.zeros(3, N, dtype=torch.bool), L, N)


def test_stable_seed_is_sha256_based():
    expected = int.from_bytes(hashlib.sha256(b"0\x1fmad\x1fhappy").digest()[:8], "little") & ((1 << 63) - 1)
    assert stable_seed(0, "mad", "happy") == expected
    assert stable_seed(0, "mad", "happy") != stable_seed(0, "lap", "happy")


def test_random_sets_match_sizes_layers_and_are_independent():
    reference = {"happy": [[0, 1], [0, 2], [0, 3], [2, 5]], "sad": [[1, 1]], "none": []}
    a = random_sets(reference, (L, N), seed=0, salt="mad")
    assert {k: v.shape[0] for k, v in a.items()} == {"happy": 4, "sad": 1, "none": 0}
    for v in a.values():
        assert len({tuple(x) for x in v.tolist()}) == v.shape[0]  # without replacement
    again = random_sets(reference, (L, N), seed=0, salt="mad")
    assert all(torch.equal(a[k], again[k]) for k in a)
    other_salt = random_sets(reference, (L, N), seed=0, salt="lap")
    assert not torch.equal(a["happy"], other_salt["happy"])
    # adding a label does not change another label's draw
    more = random_sets({**reference, "angry": [[3, 3]]}, (L, N), seed=0, salt="mad")
    assert torch.equal(more["happy"], a["happy"])
    matched = random_sets(reference, (L, N), seed=1, salt="mad", match_layers=True)
    assert torch.bincount(matched["happy"][:, 0], minlength=L).tolist() == [3, 0, 1, 0]
    excl = as_mask(reference["happy"], L, N)
    avoid = random_sets(reference, (L, N), seed=2, salt="mad", match_layers=True, exclude=excl)
    assert not as_mask(avoid["happy"], L, N)[excl].any()
    with pytest.raises(ValueError, match="cannot draw"):
        random_sets({"x": torch.ones(L, N, dtype=torch.bool)}, (L, N), seed=0, salt="s", exclude=[[0, 0]])
    sized = random_sets({"x": 7}, (L, N), seed=0, salt="s")
    assert sized["x"].shape == (7, 2)


def test_sets_file_keeps_its_meta(tmp_path):
    from helpers.core.neuron_sets import load_meta, load_sets, save_sets

    sets = {"mad": {"happy": torch.tensor([[0, 1], [2, 3]])}}
    meta = {"fraction": 0.05, "specs": {"mad": {"fraction": 0.05}}}
    path = save_sets(tmp_path / "sets.json", sets, n_layers=L, n_neurons=N, meta=meta)
    assert load_meta(path) == meta
    assert torch.equal(load_sets(path)["mad"]["happy"], sets["mad"]["happy"])
    with pytest.raises(FileNotFoundError, match="02_selectors"):
        load_meta(tmp_path / "missing.json")


def test_all_gates_is_every_neuron_once_per_label():
    from helpers.core.neuron_sets import all_gates, as_mask

    sets = all_gates(["a", "b"], 3, 5)
    assert sorted(sets) == ["a", "b"]
    for pairs in sets.values():
        assert pairs.shape == (15, 2) and bool(as_mask(pairs, 3, 5).all())
