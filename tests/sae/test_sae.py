"""The TopK SAEs of chapter 07: determinism, SAELens layout, the exact empty edit, a planted feature recovered."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers.core import hooks
from helpers.core.models import gate_shape
from helpers.identify import selection as sel
from helpers.sae import collect, features, saelens_io, training

from tiny_models import build_tiny, tiny_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 200, d: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + 0.5).relu()


def test_training_is_deterministic_from_the_seed():
    x = _data()
    cfg = training.SAEConfig(d_in=32, expansion=4, k=4, aux_k=8, steps=30, batch_size=16, seed=3)
    a, ha = training.train_sae(x, cfg)
    b, hb = training.train_sae(x, cfg)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert ha == hb
    c, _ = training.train_sae(x, training.SAEConfig(d_in=32, expansion=4, k=4, aux_k=8, steps=30, batch_size=16,
                                                    seed=4))
    assert not torch.equal(a.W_dec, c.W_dec)  # the seed matters
    assert ha["mse"][-1] < ha["mse"][0]  # and it learns


def test_saelens_layout_round_trip(tmp_path):
    sae, _ = training.train_sae(_data(), training.SAEConfig(d_in=32, expansion=4, k=4, steps=5, batch_size=8))
    saelens_io.save_sae(sae, tmp_path / "layer_0", hook_name="layers.0.mlp.act_fn")
    cfg = json.loads((tmp_path / "layer_0" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 32, 128, 4)
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "layer_0" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {"W_enc": (32, 128), "b_enc": (128,), "W_dec": (128, 32),
                                                          "b_dec": (32,)}
    back = saelens_io.load_saes(tmp_path)[0]
    x = _data(10)
    assert torch.equal(back(x), sae(x))


def test_empty_feature_edit_is_exact_and_a_real_one_is_not():
    model = build_tiny("qwen2-audio")
    inputs = tiny_inputs("qwen2-audio", model, batch=2)
    n_layers, n_neurons = gate_shape(model)
    _, gates = hooks.trace_gates(model, inputs, logits="none")
    saes = [training.train_sae(g.reshape(-1, n_neurons), training.SAEConfig(d_in=n_neurons, expansion=4, k=4, steps=20,
                                                                 batch_size=16, seed=i))[0]
            for i, g in enumerate(gates)]
    clean = hooks.run_with_gate_edits(model, inputs)
    rows = 2
    empty = {i: features.feature_edit_fn(s, remove=torch.zeros(rows, s.cfg.d_sae)) for i, s in enumerate(saes)}
    assert torch.equal(hooks.run_with_gate_edits(model, inputs, gate_fns=empty), clean)
    # removing every feature of layer 0 at the last position only: the logits there change, the earlier ones don't
    T = inputs["input_ids"].shape[1]
    last = torch.zeros(rows, T, dtype=torch.bool)
    last[:, -1] = True
    full = {0: features.feature_edit_fn(saes[0], remove=torch.ones(rows, saes[0].cfg.d_sae))}
    edited = hooks.run_with_gate_edits(model, inputs, gate_fns=full, positions=last)
    assert torch.equal(edited[:, :-1], clean[:, :-1])
    assert not torch.allclose(edited[:, -1], clean[:, -1])


def test_feature_edit_follows_the_rule():
    sae, _ = training.train_sae(_data(), training.SAEConfig(d_in=32, expansion=4, k=4, steps=10, batch_size=8))
    gate = _data(6).reshape(2, 3, 32)
    pos = torch.tensor([[False, False, True], [True, False, True]])
    rm = torch.zeros(2, sae.cfg.d_sae)
    rm[0, :64] = 1.0
    out = features.feature_edit_fn(sae, remove=rm)(gate, pos)
    z = sae.encode(gate)
    want = gate - (z * rm[:, None, :]) @ sae.W_dec
    assert torch.allclose(out[pos], want[pos], atol=1e-6)
    assert torch.equal(out[~pos], gate[~pos])
    spliced = features.feature_edit_fn(sae, splice=torch.tensor([True, False]))(gate, pos)
    assert torch.allclose(spliced[0, 2], sae(gate[0, 2]), atol=1e-6) and torch.equal(spliced[1], gate[1])


def test_planted_sparse_feature_is_learned_and_selected():
    """Rows from 24 sparse random directions; one more direction fires only on class 0. The SAE must learn a
    latent aligned with it, and MAD on the feature statistics must pick that latent for class 0."""
    g = torch.Generator().manual_seed(0)
    d, n, n_dirs = 32, 800, 24
    dirs = torch.randn(n_dirs + 1, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    y = torch.randint(0, 4, (n,), generator=g)
    coef = (torch.rand(n, n_dirs, generator=g) < 0.08).float() * (1 + torch.rand(n, n_dirs, generator=g))
    planted = ((y == 0) & (torch.rand(n, generator=g) < 0.9)).float() * (2 + torch.rand(n, generator=g))
    x = coef @ dirs[:n_dirs] + planted[:, None] * dirs[n_dirs]
    sae, _ = training.train_sae(x, training.SAEConfig(d_in=d, expansion=4, k=4, aux_k=16, steps=400, batch_size=64,
                                                      lr=5e-3))
    cos = sae.W_dec.detach() @ dirs[n_dirs]
    best = int(cos.argmax())
    assert float(cos[best]) > 0.9
    stats = features.feature_stats([sae], x[:, None, :], y, ["a", "b", "c", "d"])
    assert tuple(stats.active.shape) == (1, sae.cfg.d_sae, 4)
    picked = sel.select(stats, "mad", k=1)["a"]
    assert picked.tolist() == [[0, best]]


def test_reservoir_is_bounded_uniform_and_seeded():
    rows = torch.arange(100.0)[:, None]
    labels = torch.arange(100) % 4
    keep_all = collect.Reservoir(200, (1,))
    keep_all.add(rows, labels)
    assert torch.equal(keep_all.data()[0], rows) and len(keep_all) == 100
    a, b = collect.Reservoir(10, (1,), seed=1), collect.Reservoir(10, (1,), seed=1)
    for r in (a, b):
        for i in range(0, 100, 7):
            r.add(rows[i : i + 7], labels[i : i + 7])
    assert len(a) == 10 and a.seen == 100 and torch.equal(a.data()[0], b.data()[0])
    assert float(a.data()[0].max()) >= 10  # later rows do get in
    with pytest.raises(ValueError, match="capacity"):
        collect.Reservoir(0, (1,))


def test_decoder_mass_and_accuracy_recovered():
    sae, _ = training.train_sae(_data(), training.SAEConfig(d_in=32, expansion=4, k=4, steps=5, batch_size=8))
    f = torch.tensor([[0, 3]])
    with torch.no_grad():
        sae.W_dec[3] = 0.0
        sae.W_dec[3, 5] = 1.0  # feature 3 writes only onto neuron 5
    mass = features.decoder_mass([sae], {"a": f}, {"a": torch.tensor([[0, 5]])}).iloc[0]
    assert math.isclose(mass["mass"], 1.0) and math.isclose(mass["chance"], 1 / 32)
    r = features.accuracy_recovered(0.9, 0.9, 0.5)
    assert r == {"ratio": 1.0, "vs_zero": 1.0}
    assert math.isnan(features.accuracy_recovered(0.9, 0.8, 0.9)["vs_zero"])


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("d_in", 0, "d_in"), ("d_in", 2.5, "d_in"), ("expansion", 0, "expansion"), ("k", 0, "k must"),
    ("k", 10_000, "lower k"), ("aux_k", -1, "aux_k"), ("aux_k", 10_000, "lower aux_k"), ("aux_coef", -1.0, "aux_coef"),
    ("aux_coef", math.nan, "aux_coef"), ("dead_steps", 0, "dead_steps"), ("lr", 0.0, "lr"), ("lr", "fast", "lr"),
    ("steps", 0, "steps"), ("batch_size", 0, "batch_size"), ("seed", -1, "seed"), ("expansion", True, "expansion"),
])
def test_bad_config_is_refused_with_the_fix(field, value, needle):
    kw = {"d_in": 32, field: value}
    with pytest.raises(ValueError, match=needle) as err:
        training.SAEConfig(**kw)
    assert "SAEConfig." in str(err.value) and ";" in str(err.value)  # names the field, then the fix


def test_bad_training_rows():
    cfg = training.SAEConfig(d_in=8, aux_k=8, steps=1)
    with pytest.raises(ValueError, match="d_in=8"):
        training.train_sae(torch.zeros(10, 9), cfg)
    with pytest.raises(ValueError, match="finite"):
        training.train_sae(torch.full((10, 8), math.nan), cfg)


# ---------------------------------------------------------------------------------------------- on the organism
@pytest.fixture(scope="module")
def few_items(small_corpora):
    from helpers.data import corpus

    return corpus.load(small_corpora["A"], split="identify").groupby("label", group_keys=False).head(3)


def test_answer_gates_are_the_gates_at_the_last_position(organism, few_items):
    from helpers.core.hooks import hook_gates
    from helpers.intervene import evaluation

    got = collect.answer_gates(organism, few_items, capacity=64, batch_size=5)
    batch = organism.batch_inputs(few_items)
    logits, gates = hook_gates(organism.model, batch.inputs)
    pred = organism.label_logits(batch, logits).argmax(-1)
    y = torch.from_numpy(evaluation.label_indices(few_items.label, organism.labels))
    last = organism.position_masks(batch)["last"]
    want = torch.stack([g[last] for g in gates], dim=1)[pred == y]  # [counted items, L, N]
    rows, labels = got.reservoir.data()
    assert torch.allclose(rows, want, atol=1e-5) and torch.equal(labels, y[pred == y])
    assert (got.y_pred == pred.numpy()).all()


def test_empty_edit_on_the_organism_gives_the_clean_logits(organism, few_items):
    from helpers.intervene import conditions, runner

    n_layers, n_neurons = gate_shape(organism.model)
    saes = [_untrained_sae(n_neurons, seed=i) for i in range(n_layers)]
    edits = [features.FeatureEdit("clean"), features.removal(torch.zeros(0, 2), name="empty"),
             features.removal(torch.tensor([[1, int(j)] for j in range(0, 2048, 4)]), name="many")]
    ll = features.run_feature_edits(organism, few_items, saes, edits, batch_size=5)
    ref = runner.run_conditions(organism, few_items, [conditions.identity()], batch_size=5, progress=False)[0]
    assert np.array_equal(ll[0], ref) and np.array_equal(ll[1], ref)
    assert not np.allclose(ll[2], ref)  # a real removal does change the answer logits


def _untrained_sae(d_in: int, seed: int) -> training.TopKSAE:
    """An untrained SAE whose latents fire (random unit decoder rows, encoder tied)."""
    return training.TopKSAE(training.SAEConfig(d_in=d_in, expansion=4, k=16), torch.Generator().manual_seed(seed))


def test_total_effect_runs_feed_chapter_06s_set_grounding(organism, small_corpora):
    from helpers.data import corpus
    from helpers.ground import grounding_tables, pairing

    labels = list(organism.labels)
    pool = corpus.load(small_corpora["A"], context=None, reliability=None)
    pool = pool[pool.split == "evaluate"]
    ap, tp = pairing.audio_pairs(pool, labels).head(4), pairing.text_pairs(pool, labels).head(4)
    n_layers, n_neurons = gate_shape(organism.model)
    saes = [_untrained_sae(n_neurons, seed=i) for i in range(n_layers)]
    live = torch.zeros(n_layers, saes[0].cfg.d_sae, dtype=torch.bool)
    live[:, :64] = True
    runs = {side: features.total_effect_runs(organism, p, side, saes, live=live, batch_size=3)
            for side, p in (("audio", ap), ("text", tp))}
    a = runs["audio"]
    assert a["neurons"].act_before["answer"].shape == (4, n_layers * n_neurons)
    assert a["features"].act_before["answer"].shape == (4, n_layers * 64)
    # the features are the SAE codes of the same gates
    g0 = a["neurons"].act_before["answer"][:, :n_neurons]
    assert torch.allclose(a["features"].act_before["answer"][:, :64], saes[0].encode(g0)[:, :64], atol=1e-5)
    sets = {"x": torch.tensor([[0, 1], [1, 2]])}
    t = grounding_tables.set_grounding(runs["audio"]["features"], runs["text"]["features"], sets, n_layers,
                                       saes[0].cfg.d_sae,
                                       n_boot=0)
    assert list(t.set) == ["x"] and "coefficient" in t
