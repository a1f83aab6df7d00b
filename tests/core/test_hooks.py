"""helpers.core.hooks, gate_edits, nnsight_wrap: the nnsight read/edit path, checked against plain torch
forward hooks on the real tiny models."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.core import gate_edits, hooks, nnsight_wrap  # noqa: E402
from helpers.core.models import gate_modules, gate_shape  # noqa: E402

from tiny_models import FAMILIES, build_qwen25_omni_full, build_tiny, tiny_inputs  # noqa: E402

L, N = 2, 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return {fam: build_tiny(fam) for fam in FAMILIES}


def _record(model):
    """Forward hooks on every act_fn. A forward hook sees the module's output *after* nnsight's edit (the edit
    happens inside the module call), i.e. exactly what the MLP multiplies with up_proj. Also records down_proj's
    input to prove the edit propagates."""
    seen = {"gate": [], "down_in": [], "up": []}
    handles = []
    for layer_idx, act in enumerate(gate_modules(model)):
        mlp = [m for m in model.modules() if getattr(m, "act_fn", None) is act][0]
        handles.append(act.register_forward_hook(lambda m, a, o: seen["gate"].append(o.detach().clone())))
        handles.append(mlp.up_proj.register_forward_hook(lambda m, a, o: seen["up"].append(o.detach().clone())))
        handles.append(mlp.down_proj.register_forward_pre_hook(lambda m, a: seen["down_in"].append(a[0].clone())))
        del layer_idx
    return seen, handles


def _remove(handles):
    for h in handles:
        h.remove()


# ---------------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_equals_forward_hooks(tiny, family):
    model = tiny[family]
    inputs = tiny_inputs(family, model, batch=3, ragged=True)
    ref_logits, ref_gates = hooks.hook_gates(model, inputs)
    logits, gates = hooks.trace_gates(model, inputs)
    assert len(gates) == L
    for g, r in zip(gates, ref_gates, strict=True):
        assert g.shape == (3, inputs["input_ids"].shape[1], N)
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)


def test_trace_on_full_omni_uses_thinker():
    full = build_qwen25_omni_full()
    inputs = tiny_inputs("qwen2.5-omni", full.thinker, batch=2)
    logits, gates = hooks.trace_gates(full, inputs)
    ref_logits, ref_gates = hooks.hook_gates(full.thinker, inputs)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(gates[1], ref_gates[1])


def test_trace_accepts_nnsight_wrapper(tiny):
    import nnsight

    model = tiny["voxtral"]
    inputs = tiny_inputs("voxtral", model)
    wrapped = nnsight.NNsight(model)
    logits, gates = hooks.trace_gates(wrapped, inputs)
    torch.testing.assert_close(gates[0], hooks.hook_gates(model, inputs)[1][0])
    assert nnsight_wrap.nnsight_model(wrapped) is wrapped
    assert nnsight_wrap.nnsight_model(model) is nnsight_wrap.nnsight_model(model)  # cached, not re-instrumented


def test_reduce_streams_inside_trace(tiny):
    model = tiny["qwen2-audio"]
    inputs = tiny_inputs("qwen2-audio", model, batch=2, ragged=True)
    mask = inputs["attention_mask"].bool()
    _, raw = hooks.hook_gates(model, inputs)
    order = []

    def masked_mean(i, g):
        order.append(i)
        return (g * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    logits, means = hooks.trace_gates(model, inputs, reduce=masked_mean, logits="none")
    assert logits is None and order == [0, 1]
    for m, r in zip(means, raw, strict=True):
        torch.testing.assert_close(m, (r * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    sink = []
    _, kept = hooks.trace_gates(model, inputs, reduce=lambda i, g: sink.append(g.sum().item()))
    assert kept == [] and len(sink) == L


def test_last_logits_follow_the_attention_mask(tiny):
    model = tiny["audio-flamingo-3"]
    inputs = tiny_inputs("audio-flamingo-3", model, batch=3, ragged=True)  # left padded
    full, _ = hooks.trace_gates(model, inputs)
    last, _ = hooks.trace_gates(model, inputs, logits="last")
    torch.testing.assert_close(last, full[:, -1])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])  # right padding
    assert hooks.last_positions(mask, 4).tolist() == [1, 3]


def test_every_trace_is_counted_and_written_beside_the_metrics(tiny, tmp_path):
    from helpers.core import io

    model = tiny["audio-flamingo-3"]
    inputs = tiny_inputs("audio-flamingo-3", model, batch=3, ragged=True)
    before = hooks.forward_counts()
    hooks.trace_gates(model, inputs)
    hooks.run_with_gate_edits(model, inputs, scale=torch.ones(gate_shape(model)))
    after = hooks.forward_counts()
    assert after["passes"] - before["passes"] == 2 and after["rows"] - before["rows"] == 6
    assert after["tokens"] - before["tokens"] == 2 * int(inputs["attention_mask"].sum())  # padding not counted
    io.write_metrics(tmp_path, {"x": 1})
    assert json.loads((tmp_path / io.USAGE_FILE).read_text()) == hooks.forward_counts()


# ---------------------------------------------------------------------------------------------------------------------
# editing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroing_chosen_neurons_is_exact(tiny, family):
    model = tiny[family]
    inputs = tiny_inputs(family, model, batch=2)
    _, clean = hooks.hook_gates(model, inputs)
    clean_logits = model(**inputs).logits.detach()
    scale = torch.ones(2, L, N)
    chosen = [3, 10, 41]
    scale[:, 1, chosen] = 0.0  # layer 1 only, so layer 1's input is unchanged and other neurons must match exactly
    seen, handles = _record(model)
    try:
        logits = hooks.run_with_gate_edits(model, inputs, scale=scale)
    finally:
        _remove(handles)
    gate1 = seen["gate"][1]
    assert torch.all(gate1[..., chosen] == 0)
    others = [j for j in range(N) if j not in chosen]
    torch.testing.assert_close(gate1[..., others], clean[1][..., others], rtol=0, atol=0)
    torch.testing.assert_close(seen["gate"][0], clean[0], rtol=0, atol=0)  # untouched layer
    torch.testing.assert_close(seen["down_in"][1], gate1 * seen["up"][1])  # the edit reaches down_proj
    assert not torch.allclose(logits, clean_logits)


def test_identity_edit_is_a_no_op(tiny):
    model = tiny["qwen2.5-omni"]
    inputs = tiny_inputs("qwen2.5-omni", model, batch=2, ragged=True)
    with torch.no_grad():
        ref = model(**inputs).logits
    out = hooks.run_with_gate_edits(model, inputs, scale=torch.ones(2, L, N), add=torch.zeros(2, L, N))
    assert torch.equal(out, ref)


def test_batched_conditions_match_one_at_a_time(tiny):
    model = tiny["qwen2-audio"]
    one = tiny_inputs("qwen2-audio", model, batch=1)
    g = torch.Generator().manual_seed(1)
    conditions = torch.ones(4, L, N)
    conditions[1, :, :8] = 0.0
    conditions[2] = torch.rand(L, N, generator=g) * 3
    conditions[3, 0, 5] = 50.0
    adds = torch.zeros(4, L, N)
    adds[2, 1, 7] = 0.5
    batched = hooks.run_with_gate_edits(model, gate_edits.tile_inputs(one, 4), scale=conditions, add=adds,
                                        logits="last")
    for k in range(4):
        single = hooks.run_with_gate_edits(model, one, scale=conditions[k : k + 1], add=adds[k : k + 1], logits="last")
        torch.testing.assert_close(batched[k : k + 1], single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_add_and_positions(tiny):
    model = tiny["voxtral"]
    inputs = tiny_inputs("voxtral", model, batch=2)
    T = inputs["input_ids"].shape[1]
    _, clean = hooks.hook_gates(model, inputs)
    positions = torch.zeros(2, T, dtype=torch.bool)
    positions[:, -1] = True
    add = torch.zeros(1, L, N)
    add[0, 0, 9] = 2.0
    scale = torch.ones(1, L, N)
    scale[0, 0, 4] = 0.0
    seen, handles = _record(model)
    try:
        hooks.run_with_gate_edits(model, inputs, scale=scale, add=add, positions=positions)
    finally:
        _remove(handles)
    g0 = seen["gate"][0]
    torch.testing.assert_close(g0[:, :-1], clean[0][:, :-1], rtol=0, atol=0)  # outside positions: untouched
    torch.testing.assert_close(g0[:, -1, 9], clean[0][:, -1, 9] + 2.0)
    assert torch.all(g0[:, -1, 4] == 0)


def test_patch_from_another_run(tiny):
    model = tiny["audio-flamingo-3"]
    a = tiny_inputs("audio-flamingo-3", model, batch=2, seed=0)
    b = tiny_inputs("audio-flamingo-3", model, batch=2, seed=5)
    assert a["input_ids"].shape == b["input_ids"].shape
    _, gates_a = hooks.trace_gates(model, a)
    _, gates_b = hooks.trace_gates(model, b)
    mask = torch.zeros(1, L, N, dtype=torch.bool)
    mask[0, 0, [1, 2, 3]] = True
    seen, handles = _record(model)
    try:
        hooks.run_with_gate_edits(model, b, patch=gates_a, patch_mask=mask)
    finally:
        _remove(handles)
    g0 = seen["gate"][0]
    torch.testing.assert_close(g0[..., [1, 2, 3]], gates_a[0][..., [1, 2, 3]])
    torch.testing.assert_close(g0[..., 4:], gates_b[0][..., 4:], rtol=0, atol=0)
    # dict form, one layer only, plus a scale applied after the patch
    scale = torch.ones(1, L, N)
    scale[0, 0, 1] = 2.0
    seen, handles = _record(model)
    try:
        hooks.run_with_gate_edits(model, b, patch={0: gates_a[0]}, patch_mask=mask, scale=scale)
    finally:
        _remove(handles)
    torch.testing.assert_close(seen["gate"][0][..., 1], 2.0 * gates_a[0][..., 1])


def test_apply_gate_edit_patches_every_neuron_without_select():
    """``source`` without ``select`` patches every neuron (it used to fail inside torch.where on ``None``)."""
    gen = torch.Generator().manual_seed(0)
    gate, source = torch.randn(2, 3, 4, generator=gen), torch.randn(1, 3, 4, generator=gen)
    torch.testing.assert_close(gate_edits.apply_gate_edit(gate, source=source), source.expand(2, 3, 4), rtol=0, atol=0)
    positions = torch.tensor([[True], [False], [True]])[None]  # [1, T, 1]
    out = gate_edits.apply_gate_edit(gate, source=source, positions=positions)
    torch.testing.assert_close(out[:, 1], gate[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, [0, 2]], source[:, [0, 2]].expand(2, 2, 4), rtol=0, atol=0)
    every = torch.ones(1, 1, 4, dtype=torch.bool)
    torch.testing.assert_close(out, gate_edits.apply_gate_edit(gate, source=source, positions=positions, select=every))


def test_edit_validation_errors(tiny):
    model = tiny["qwen2-audio"]
    inputs = tiny_inputs("qwen2-audio", model, batch=2)
    with pytest.raises(ValueError, match=r"has shape \(2, 3, 64\) but the model has 2 x 64 gates.*another model"):
        hooks.run_with_gate_edits(model, inputs, scale=torch.ones(2, 3, 64))
    with pytest.raises(ValueError, match="2 x 64 gates"):
        hooks.run_with_gate_edits(model, inputs, add=torch.zeros(2, 2, 128))
    with pytest.raises(ValueError, match="batch dimension 3"):
        hooks.run_with_gate_edits(model, inputs, scale=torch.ones(3, 2, 64))
    bad = torch.ones(2, 2, 64)
    bad[1, 1, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        hooks.run_with_gate_edits(model, inputs, scale=bad)
    with pytest.raises(TypeError, match="bool"):
        hooks.run_with_gate_edits(model, inputs, add=torch.zeros(2, 2, 64), positions=torch.ones(2, 5))
    with pytest.raises(ValueError, match="T="):
        hooks.run_with_gate_edits(model, inputs, scale=bad.nan_to_num(0.0),
                                  positions=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="without `patch`"):
        hooks.run_with_gate_edits(model, inputs, patch_mask=torch.ones(1, 2, 64, dtype=torch.bool))


def test_overflowing_alpha_is_reported(tiny):
    model = tiny["qwen2-audio"]
    inputs = tiny_inputs("qwen2-audio", model, batch=1)
    huge = torch.full((1, L, N), 3.4e38)  # finite in float32, but gate * 3.4e38 + 3.4e38 overflows
    with pytest.raises(gate_edits.NonFiniteEditError, match="alpha"):
        hooks.run_with_gate_edits(model, inputs, scale=huge, add=huge)


# ---------------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------------


def test_generate_with_edits_applies_at_every_step(tiny):
    model = tiny["qwen2-audio"]
    inputs = tiny_inputs("qwen2-audio", model, batch=2)
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    same = hooks.generate_with_gate_edits(model, inputs, scale=torch.ones(1, L, N), max_new_tokens=3)
    assert torch.equal(same, ref)
    scale = torch.ones(2, L, N)
    scale[0, :, 11] = 0.0  # row 0 only
    seen, handles = _record(model)
    try:
        out = hooks.generate_with_gate_edits(model, inputs, scale=scale, max_new_tokens=3)
    finally:
        _remove(handles)
    assert out.shape == ref.shape
    steps = seen["gate"][0::L]  # layer 0 at each forward: prompt, then one token per step
    assert len(steps) == 3 and steps[1].shape[1] == 1
    for g in seen["gate"]:
        assert torch.all(g[0, :, 11] == 0) and torch.any(g[1, :, 11] != 0)


def test_gate_shape_matches_edit_convention(tiny):
    assert gate_shape(tiny["voxtral"]) == (L, N)


def test_wrapper_cache_survives_copy_and_pickle(tiny):
    import copy
    import io

    model = tiny["voxtral"]
    inputs = tiny_inputs("voxtral", model)
    hooks.trace_gates(model, inputs)  # model now carries a cached wrapper
    clone = copy.deepcopy(model)
    assert nnsight_wrap.nnsight_model(clone) is not nnsight_wrap.nnsight_model(model)
    assert nnsight_wrap.nnsight_model(clone)._module is clone
    with torch.no_grad():
        clone.model.language_model.layers[0].mlp.gate_proj.weight.zero_()
    assert torch.all(hooks.trace_gates(clone, inputs)[1][0] == 0)  # the clone's own modules are traced ...
    assert torch.any(hooks.trace_gates(model, inputs)[1][0] != 0)  # ... and the original is untouched
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=False)
    torch.testing.assert_close(hooks.trace_gates(restored, inputs)[0], hooks.trace_gates(model, inputs)[0])
