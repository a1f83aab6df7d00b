"""helpers.ground: pairing, position-class patching (gates and residual), the grounding coefficient and the
conflict analysis, on hand-built tables and a tiny random Qwen2-Audio whose audio/text positions we control."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.core import hooks  # noqa: E402
from helpers.core.hooks import run_with_gate_edits, trace_gates  # noqa: E402
from helpers.core.models import gate_shape  # noqa: E402
from helpers.core.subject import Batch  # noqa: E402
from helpers.ground import (  # noqa: E402
    cluster_masks,
    coefficients,
    conflicts,
    dissociation,
    grounding_tables,
    pairing,
    patching,
    planted,
)

from tiny_models import (  # noqa: E402
    AUDIO_ID,
    MAX_SOURCE_POSITIONS,
    N_MELS,
    TEXT_HI,
    TEXT_LO,
    TinySubject,
    build_tiny,
)

LABELS = ("neutral", "happy", "angry", "sad")
N_FRAMES = 2 * MAX_SOURCE_POSITIONS
N_AUDIO = ((N_FRAMES - 1) // 2 + 1 - 2) // 2 + 1  # 8 audio tokens
N_TEXT = 4


pytestmark = pytest.mark.usefixtures("one_thread")


class FakeSubject(TinySubject):
    """A Subject over the tiny Qwen2-Audio: ``path`` "a<k>" seeds the audio features, ``text`` "t<k>" seeds 4 text
    tokens. Layout ``[p0, p1, audio x 8, text x 4, answer]`` (audio first) or with text and audio swapped."""

    labels = LABELS
    label_ids = torch.tensor([3, 4, 5, 6])

    def __init__(self, model, text_first: bool = False) -> None:
        self.model = model
        self.text_first = text_first
        audio_start = 2 + (N_TEXT if text_first else 0)
        text_start = 2 if text_first else 2 + N_AUDIO
        self.audio_slice = slice(audio_start, audio_start + N_AUDIO)
        self.text_slice = slice(text_start, text_start + N_TEXT)

    def batch_inputs(self, rows: pd.DataFrame) -> Batch:
        ids, feats = [], []
        for path, text in zip(rows["path"], rows["text"], strict=True):
            g = torch.Generator().manual_seed(1000 + int(path[1:]))
            feats.append(torch.randn(N_MELS, N_FRAMES, generator=g))
            g = torch.Generator().manual_seed(2000 + int(text[1:]))
            words = torch.randint(TEXT_LO, TEXT_HI, (N_TEXT,), generator=g).tolist()
            audio = [AUDIO_ID] * N_AUDIO
            ids.append([7, 8] + (words + audio if self.text_first else audio + words) + [9])
        ids_t = torch.tensor(ids)
        return self._batch({
            "input_ids": ids_t,
            "attention_mask": torch.ones_like(ids_t),
            "input_features": torch.stack(feats),
            "feature_attention_mask": torch.ones(len(ids), N_FRAMES, dtype=torch.long),
        })

    def _batch(self, inputs: dict[str, torch.Tensor]) -> Batch:
        text = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
        text[:, self.text_slice] = True
        return self.make_batch(inputs, text)


@pytest.fixture(scope="module")
def subject():
    return FakeSubject(build_tiny("qwen2-audio"))


@pytest.fixture(scope="module")
def subject_text_first(subject):
    return FakeSubject(subject.model, text_first=True)


def corpus_table(n_matched: int = 2) -> pd.DataFrame:
    """A miniature synthetic corpus: matched_id x 4 emotions, each clip with the none/congruent/conflict contexts."""
    rows = []
    k = 0
    for m in range(n_matched):
        for e, emo in enumerate(LABELS):
            clip = f"m{m}_{emo}"
            conflict = LABELS[(e + 1) % len(LABELS)]
            for ctx, ctx_label in (("none", "none"), ("congruent", emo), ("conflict", conflict)):
                rows.append({
                    "path": f"a{k}", "sampling_rate": 16000, "label": emo, "speaker": f"v{m}",
                    "sentence_id": f"s{m}", "split": "evaluate", "clip_id": clip, "matched_id": f"m{m}",
                    "context": ctx, "context_label": ctx_label,
                    # the neutral phrase differs per clip, as in the corpus (audio_pairs must not copy it over)
                    "text": f"t{100 + k}" if ctx == "none" else f"t{LABELS.index(ctx_label)}",
                })
            k += 1
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------ pairing
def test_audio_pairs_differ_only_in_audio():
    df = corpus_table()
    pairs = pairing.audio_pairs(df, LABELS)
    assert len(pairs) == 2 * 4 * 3  # per matched id: 4 x 3 ordered pairs of different emotions
    assert (pairs["base_matched_id"] == pairs["cf_matched_id"]).all()
    assert (pairs["base_label"] != pairs["cf_label"]).all()
    assert (pairs["base_path"] != pairs["cf_path"]).all()
    assert (pairs["base_text"] == pairs["cf_text"]).all()  # the counterfactual keeps the base's prompt text
    assert (pairs["base_context"] == "none").all() and (pairs["cf_context"] == "none").all()
    assert (pairs["cf_emotion"] == pairs["cf_label"]).all() and (pairs["kind"] == "audio").all()
    base, cf = pairing.pair_rows(pairs)
    assert list(base.columns) == list(df.columns) and len(cf) == len(pairs)
    assert (cf["text"] == base["text"]).all()
    two = pairing.audio_pairs(df, ("happy", "sad"))
    assert len(two) == 2 * 2 and set(two["base_label"]) == {"happy", "sad"}


def test_text_pairs_share_the_clip():
    df = corpus_table()
    pairs = pairing.text_pairs(df, LABELS)
    assert len(pairs) == 8
    assert (pairs["base_path"] == pairs["cf_path"]).all() and (pairs["base_clip_id"] == pairs["cf_clip_id"]).all()
    assert (pairs["base_context"] == "none").all() and (pairs["cf_context"] == "conflict").all()
    assert (pairs["base_text"] != pairs["cf_text"]).all()
    assert (pairs["cf_emotion"] == pairs["cf_context_label"]).all()
    assert (pairs["cf_emotion"] != pairs["base_label"]).all()
    both = pairing.text_pairs(df, contexts=("conflict", "congruent"))
    assert len(both) == 16 and set(both["cf_context"]) == {"conflict", "congruent"}
    with pytest.raises(ValueError, match="conflict"):
        pairing.text_pairs(df, contexts=("sarcastic",))
    conflict = pairing.conflict_items(df)
    assert len(conflict) == 8 and (conflict["label"] != conflict["context_label"]).all()


def test_missing_columns_say_what_grounding_needs():
    df = corpus_table().drop(columns=["matched_id"])
    with pytest.raises(pairing.GroundingDataError, match="matched_id") as err:
        pairing.audio_pairs(df)
    assert isinstance(err.value, ValueError) and "same sentence and voice" in str(err.value)
    with pytest.raises(pairing.GroundingDataError, match="context_label"):
        pairing.text_pairs(corpus_table().drop(columns=["context_label"]))
    with pytest.raises(pairing.GroundingDataError, match="context"):
        pairing.conflict_items(corpus_table().drop(columns=["context", "context_label"]))
    with pytest.raises(pairing.GroundingDataError, match="no audio pairs"):
        pairing.audio_pairs(corpus_table()[lambda d: d["label"] == "happy"])


def test_layer_clusters():
    assert cluster_masks.layer_clusters(6) == {"early": [0, 1], "middle": [2, 3], "late": [4, 5]}
    assert cluster_masks.layer_clusters(7) == {"early": [0, 1, 2], "middle": [3, 4], "late": [5, 6]}
    assert cluster_masks.layer_clusters(2, 2) == {"early": [0], "late": [1]}
    with pytest.raises(ValueError):
        cluster_masks.layer_clusters(2, 3)


# --------------------------------------------------------------------------------------------------- patching
def _rows(df: pd.DataFrame, n: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pairing.pair_rows(df.iloc[:n])


def _pair_batches(subject, pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, Batch, Batch]:
    """The first pairs' base and counterfactual rows, and their batches."""
    base, cf = _rows(pairs)
    return base, cf, subject.batch_inputs(base), subject.batch_inputs(cf)


def test_the_one_tracer_matches_run_with_gate_edits_and_trace_gates(subject):
    model = subject.model
    base, cf, b_batch, c_batch = _pair_batches(subject, pairing.audio_pairs(corpus_table()))
    b_in, c_in = b_batch.inputs, c_batch.inputs
    _, src = trace_gates(model, c_in, logits="none")
    L, N = gate_shape(model)
    mask = torch.rand(L, N, generator=torch.Generator().manual_seed(0)) < 0.3
    pos = subject.position_masks(b_batch)["audio"]
    ref = run_with_gate_edits(model, b_in, patch=src, patch_mask=mask, positions=pos, logits="last")
    got, gates, _ = hooks.trace(model, b_in, patch=src, patch_mask=mask, positions=pos, logits="last")
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # no edit at all: the same as the hooks' reader
    plain, plain_gates = trace_gates(model, b_in, logits="last")
    got, gates, _ = hooks.trace(model, b_in, logits="last")
    torch.testing.assert_close(got, plain, rtol=0, atol=0)
    for a, b in zip(gates, plain_gates, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("what", ["gates", "residual"])
def test_patching_a_run_into_itself_changes_nothing(subject, what):
    base, _ = _rows(pairing.audio_pairs(corpus_table()))
    for side in ("audio", "text", "all"):
        res = patching.patch_run(subject, base, base, side=side, what=what,
                                 layers=[0, 1] if what == "residual" else None)
        assert torch.equal(res.logits_after, res.logits_before)
        assert torch.equal(res.act_after["answer"], res.act_before["answer"])
        assert torch.equal(res.act_after["side"], res.act_before["side"])


def test_full_gate_patch_reproduces_counterfactual_gates_not_logits(subject):
    model = subject.model
    base, cf, b_batch, c_batch = _pair_batches(subject, pairing.audio_pairs(corpus_table()))
    b_in, c_in = b_batch.inputs, c_batch.inputs
    cf_logits, cf_gates = trace_gates(model, c_in, logits="last")
    everywhere = torch.ones_like(b_in["input_ids"], dtype=torch.bool)
    logits, gates, _ = hooks.trace(model, b_in, patch=cf_gates, positions=everywhere, logits="last")
    for got, want in zip(gates, cf_gates, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # up_proj, attention and the residual stream still read the base input: gate patching is not a full swap
    assert not torch.allclose(logits, cf_logits, atol=1e-4)

    res = patching.patch_run(subject, base, cf, side="all", direction="denoise")
    torch.testing.assert_close(res.act_after["answer"], res.act_source["answer"], rtol=0, atol=0)
    torch.testing.assert_close(res.act_after["side"], res.act_source["side"], rtol=0, atol=0)
    torch.testing.assert_close(res.logits_source, subject.label_logits(c_batch, cf_logits))
    noise = patching.patch_run(subject, base, cf, side="all", direction="noise")
    torch.testing.assert_close(noise.logits_before, res.logits_source, rtol=0, atol=0)
    # effects point towards the counterfactual in both directions: brought in (denoise), taken away (noise)
    np.testing.assert_allclose(res.pred_effect(), res.p_cf("after") - res.p_cf("before"))
    np.testing.assert_allclose(noise.pred_effect(), noise.p_cf("before") - noise.p_cf("after"))


def test_full_residual_patch_reproduces_counterfactual(subject):
    model = subject.model
    base, cf, b_batch, c_batch = _pair_batches(subject, pairing.audio_pairs(corpus_table()))
    b_in, c_in = b_batch.inputs, c_batch.inputs
    cf_logits, cf_gates = trace_gates(model, c_in, logits="last")
    _, _, hidden = hooks.trace(model, c_in, read_residual=[0], logits="last")
    logits, gates, _ = hooks.trace(model, b_in, residual=hidden, logits="last")  # every position of layer 0's output
    torch.testing.assert_close(logits, cf_logits)
    torch.testing.assert_close(gates[1], cf_gates[1])  # layer 1 computes from the patched stream
    assert not torch.allclose(gates[0], cf_gates[0])  # layer 0's gates ran before the patch

    res = patching.patch_run(subject, base, cf, side="all", what="residual", layers=[1])
    torch.testing.assert_close(res.logits_after, res.logits_source)
    assert not torch.allclose(res.logits_before, res.logits_source)


def test_patching_text_positions_of_layer0_edits_only_text_positions(subject):
    model = subject.model
    base, cf, b_batch, c_batch = _pair_batches(subject, pairing.text_pairs(corpus_table()))
    b_in, c_in = b_batch.inputs, c_batch.inputs
    _, b_gates = trace_gates(model, b_in, logits="none")
    _, c_gates = trace_gates(model, c_in, logits="none")
    text = subject.position_masks(b_batch)["text"]
    _, gates, _ = hooks.trace(model, b_in, patch={0: c_gates[0]}, positions=text, logits="last")
    changed = (gates[0] != b_gates[0]).any(-1)
    assert changed.any() and not (changed & ~text).any()  # layer 0 changes at text positions only ...
    torch.testing.assert_close(gates[0][text], c_gates[0][text], rtol=0, atol=0)  # ... to the cf's values
    # layer 1 then changes at the text positions and after them (causal attention), never before
    later = (gates[1] != b_gates[1]).any(-1)
    first_text = subject.text_slice.start
    assert later[:, first_text:].any() and not later[:, :first_text].any()


def test_position_misalignment_is_refused(subject):
    class Shifted(FakeSubject):
        def batch_inputs(self, rows):
            out = super().batch_inputs(rows)
            if rows["text"].iloc[0] == "t999":
                out = self._batch({k: (torch.cat([v[:, :1], v], 1) if k in ("input_ids", "attention_mask") else v)
                                   for k, v in out.inputs.items()})
            return out

    sub = Shifted(subject.model)
    base = pd.DataFrame({"path": ["a1"], "text": ["t1"], "label": ["happy"]})
    cf = pd.DataFrame({"path": ["a1"], "text": ["t999"], "label": ["happy"]})
    with pytest.raises(ValueError, match="align"):
        patching.patch_run(sub, base, cf, side="text")


# --------------------------------------------------------------------------------------- grounding coefficient
def test_coefficient_formula():
    c = coefficients.grounding_coefficient([2.0, 0.0, 1.0, 0.0, -3.0], [0.0, 5.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(c[[0, 1, 2, 4]], [1.0, 0.0, 0.5, 0.75])
    assert np.isnan(c[3])
    cls = coefficients.classify_grounding([0.95, 0.7, 0.5, 0.3, 0.05, np.nan])
    assert cls.tolist() == ["audio", "audio", "mixed", "text", "text", "none"]
    assert coefficients.classify_grounding([0.6], audio_min=0.6).tolist() == ["audio"]
    with pytest.raises(ValueError):
        coefficients.classify_grounding([0.5], audio_min=0.3, text_max=0.4)


def _synthetic_result(side: str, change: np.ndarray, n_layers: int = 2, n_neurons: int = 3) -> patching.PatchResult:
    """A PatchResult with prescribed per-item activation changes for read neurons (0,0), (0,1), (1,2)."""
    n, k = change.shape
    read = torch.tensor([[0, 0], [0, 1], [1, 2]])[:k]
    before = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    rows = pd.DataFrame({"path": [f"a{i}" for i in range(n)], "label": ["happy"] * n})
    logits = torch.zeros(n, len(LABELS))
    act = {"answer": before, "side": before}
    return patching.PatchResult(
        side=side, direction="denoise", what="gates", layers=[0, 1], labels=LABELS, base_rows=rows, cf_rows=rows,
        cf_emotion=["sad"] * n, read_index=read, n_patched=0, logits_before=logits, logits_after=logits,
        logits_source=logits, act_before=act, act_after={"answer": before + torch.as_tensor(change).float(),
                                                         "side": before}, act_source=act,
    )


def test_coefficient_on_constructed_neurons_and_sets():
    rng = np.random.default_rng(0)
    n = 40
    # neuron 0 moves only when the audio is patched, neuron 1 only with the text, neuron 2 with both equally
    audio_change = np.stack([rng.normal(2, 0.5, n), np.zeros(n), rng.choice([-1.0, 1.0], n)], 1)
    text_change = np.stack([np.zeros(n), rng.normal(-2, 0.5, n), rng.choice([-1.0, 1.0], n)], 1)
    audio, text = _synthetic_result("audio", audio_change), _synthetic_result("text", text_change)
    table = grounding_tables.neuron_grounding(audio, text, n_boot=200, clusters={"early": [0], "late": [1]})
    np.testing.assert_allclose(table["coefficient"], [1.0, 0.0, 0.5], atol=1e-6)
    assert table["grounding"].tolist() == ["audio", "text", "mixed"]
    assert table["cluster"].tolist() == ["early", "early", "late"]
    assert (table["ci_low"] <= table["coefficient"] + 1e-9).all()
    assert (table["ci_high"] >= table["coefficient"] - 1e-9).all()
    assert table["ci_high"].iloc[1] < 0.05 and table["ci_low"].iloc[0] > 0.95

    sets = {"audio-set": torch.tensor([[0, 0]]), "text-set": torch.tensor([[0, 1]]), "all": torch.tensor(
        [[0, 0], [0, 1], [1, 2]])}
    st = grounding_tables.set_grounding(audio, text, sets, 2, 3, n_boot=200).set_index("set")
    assert st.loc["audio-set", "coefficient"] == pytest.approx(1.0)
    assert st.loc["text-set", "coefficient"] == pytest.approx(0.0)
    assert st.loc["audio-set", "grounding"] == "audio" and st.loc["text-set", "grounding"] == "text"
    assert st.loc["all", "n_neurons"] == 3 and 0.0 < st.loc["all", "coefficient"] < 1.0
    masks = grounding_tables.grounded_sets(table, 2, 3)
    assert masks["audio-grounded"][0, 0] and masks["text-grounded"][0, 1] and masks["mixed"][1, 2]
    assert int(masks["audio-grounded"].sum()) == 1
    with pytest.raises(ValueError, match="not read"):
        grounding_tables.set_grounding(audio, text, {"x": torch.tensor([[1, 0]])}, 2, 3)
    with pytest.raises(ValueError, match="audio-side"):
        grounding_tables.neuron_grounding(text, audio)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_end_to_end_coefficient_follows_causal_order(subject, subject_text_first, direction):
    """Causal attention makes the answer known: positions before the modality that differs carry nothing."""
    df = corpus_table()
    # audio first: in a text pair the audio positions precede the change -> patching them is a no-op -> coef 0
    tp = pairing.text_pairs(df, LABELS).iloc[:4]
    a = patching.patch_pairs(subject, tp, side="audio", direction=direction)
    t = patching.patch_pairs(subject, tp, side="text", direction=direction)
    assert torch.equal(a.logits_after, a.logits_before) and torch.equal(a.act_after["answer"], a.act_before["answer"])
    assert not torch.equal(t.act_after["answer"], t.act_before["answer"])
    table = grounding_tables.neuron_grounding(a, t)
    moved = table["delta_text"] > 0
    # gate patches reach the answer's layer-l neurons only through layers < l: layer 0 cannot move (coef NaN)
    assert not moved[table["layer"] == 0].any() and moved[table["layer"] == 1].mean() > 0.9
    assert table.loc[table["layer"] == 0, "coefficient"].isna().all()
    det = moved & table["coefficient"].notna()
    assert det.mean() > 0.3 and (table.loc[det, "coefficient"] == 0.0).all()
    assert (table.loc[det, "grounding"] == "text").all() and (table.loc[~det, "grounding"] == "none").all()
    pred = grounding_tables.prediction_grounding(a, t, n_boot=50)
    assert pred["coefficient_raw"].iloc[0] == 0.0 and pred["delta_audio"].iloc[0] == 0.0
    # calibrated: 0, or undetermined where the gate patch carries under 5 % of the text's total effect
    c, r = pred["coefficient"].iloc[0], pred["ratio_text"].iloc[0]
    assert c == 0.0 if r >= 0.05 else (np.isnan(c) and "less than" in pred["undetermined"].iloc[0])

    # text first: in an audio pair the text positions precede the change -> coef 1
    ap = pairing.audio_pairs(df, LABELS).iloc[:4]
    a = patching.patch_pairs(subject_text_first, ap, side="audio", direction=direction)
    t = patching.patch_pairs(subject_text_first, ap, side="text", direction=direction)
    assert torch.equal(t.logits_after, t.logits_before)
    table = grounding_tables.neuron_grounding(a, t)
    moved = table["delta_audio"] > 0
    det = moved & table["coefficient"].notna()  # the rest move less than the floor times their layer's mean
    assert moved[table["layer"] == 1].mean() > 0.9 and det.mean() > 0.3
    assert (table.loc[det, "coefficient"] == 1.0).all()
    assert table.loc[moved & ~det, "undetermined"].str.contains("less than").all()
    sets = {"layer1": cluster_masks.restrict_to_layers(torch.ones(*gate_shape(subject.model), dtype=torch.bool), [1])}
    st = grounding_tables.set_grounding(a, t, sets, *gate_shape(subject.model), group_by="base_emotion", n_boot=50)
    assert (st["coefficient"] == 1.0).all() and set(st["group"]) <= set(LABELS)


def test_neuron_set_patch_and_readout(subject):
    """Patching a neuron set at the audio side: only that set's audio-position values change in its layer."""
    L, N = gate_shape(subject.model)
    neurons = torch.tensor([[0, 5], [0, 9], [1, 3]])
    base, cf = _rows(pairing.audio_pairs(corpus_table()))
    res = patching.patch_run(subject, base, cf, side="audio", neuron_mask=neurons, layers=[0])
    assert res.layers == [0] and res.n_patched == 2 and res.read_index.tolist() == neurons.tolist()
    # layer-0 set neurons at the audio positions are the counterfactual's; layer 1 was not patched
    torch.testing.assert_close(res.act_after["side"][:, :2], res.act_source["side"][:, :2], rtol=0, atol=0)
    assert not torch.allclose(res.act_after["side"][:, 2], res.act_source["side"][:, 2])
    items = res.item_table({"set": neurons}, n_layers=L, n_neurons=N)
    assert len(items) == 3 and {"set:before", "set:after", "p_cf_before", "pred_effect"} <= set(items.columns)
    np.testing.assert_allclose(items["p_cf_after"] - items["p_cf_before"], res.pred_effect(), atol=1e-7)


def test_clusters_and_random_controls():
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, :3] = True
    mask[3, 5] = True
    parts = cluster_masks.split_by_cluster({"s": mask}, cluster_masks.layer_clusters(4, 2), 4, 10)
    assert set(parts) == {"s/early", "s/late"} and int(parts["s/early"].sum()) == 3
    r = cluster_masks.random_mask_like(mask, seed=1, exclude=mask)
    assert r.sum(1).tolist() == mask.sum(1).tolist() and not (r & mask).any()
    assert torch.equal(cluster_masks.union_mask({"a": mask, "b": r}, 4, 10), mask | r)


# ------------------------------------------------------------------------------------------- conflict analysis
def test_conflict_analysis(subject):
    model = subject.model
    L, N = gate_shape(model)
    items = pairing.conflict_items(corpus_table())
    all_neurons = torch.ones(L, N, dtype=torch.bool)
    res = conflicts.conflict_analysis(subject, items,
                                      {"all": all_neurons, "empty": torch.zeros(L, N, dtype=torch.bool)},
                                      n_boot=100, batch_size=5)
    t = res.table.set_index("condition")
    assert list(t.index) == ["baseline", "all", "empty"] and (t["n_items"] == len(items)).all()
    batch = subject.batch_inputs(items)
    inputs = batch.inputs
    base_pred = subject.label_logits(batch, model(**inputs).logits).argmax(-1).numpy()
    zero_pred = subject.label_logits(batch, run_with_gate_edits(model, inputs, scale=torch.zeros(1, L, N))).argmax(-1)
    lab = np.array(LABELS)
    assert res.predictions["baseline"].tolist() == lab[base_pred].tolist()
    assert res.predictions["all"].tolist() == lab[zero_pred.numpy()].tolist()
    assert res.predictions["empty"].tolist() == res.predictions["baseline"].tolist()
    y = np.array([LABELS.index(x) for x in items["label"]])
    ctx = np.array([LABELS.index(x) for x in items["context_label"]])
    assert t.loc["baseline", "follows_audio"] == pytest.approx((base_pred == y).mean())
    assert t.loc["baseline", "follows_text"] == pytest.approx((base_pred == ctx).mean())
    assert t.loc["all", "shift_audio"] == pytest.approx((zero_pred.numpy() == y).mean() - (base_pred == y).mean())
    assert t.loc["empty", "shift_audio"] == 0.0 and t.loc["empty", "shift_text"] == 0.0
    fr = t[["follows_audio", "follows_text", "follows_neither"]].sum(1)
    np.testing.assert_allclose(fr, 1.0)  # conflict items: audio and text emotions differ
    assert (t["follows_audio_ci_low"] <= t["follows_audio"]).all()
    with pytest.raises(ValueError, match="reserved"):
        conflicts.conflict_analysis(subject, items, {"baseline": all_neurons}, n_boot=0)


# ------------------------------------------------------------------------------- calibrated coefficient, known answers
def test_calibrated_coefficient_is_invariant_to_each_sides_perturbation_size():
    rng = np.random.default_rng(3)
    n, k = 30, 3
    audio_change = np.abs(rng.normal(0, 1, (n, k))) * np.array([2.0, 0.2, 1.0])
    text_change = np.abs(rng.normal(0, 1, (n, k))) * np.array([0.2, 2.0, 1.0])
    big = grounding_tables.neuron_grounding(_synthetic_result("audio", audio_change),
                                            _synthetic_result("text", text_change))
    weak = grounding_tables.neuron_grounding(_synthetic_result("audio", audio_change),
                                             _synthetic_result("text", 0.05 * text_change))
    np.testing.assert_allclose(weak["coefficient"], big["coefficient"], rtol=1e-5)  # text 20x weaker: same g
    assert (weak["coefficient_raw"] - big["coefficient_raw"]).abs().max() > 0.2  # the raw ratio is not
    assert big["coefficient"].iloc[0] > 0.7 and big["coefficient"].iloc[1] < 0.3
    np.testing.assert_allclose(big["null_audio"].iloc[:2], audio_change[:, :2].mean(), rtol=1e-6)  # layer-0 mean
    g, ra, rt, why = coefficients.calibrated_coefficient([1.0, 0.1, 0.0, 2.0], [1.0, 0.1, 0.0, 0.0], [1.0] * 4,
                                                         [1.0, 1, 1, 0])
    np.testing.assert_allclose(g[[0, 3]], [0.5, 1.0])
    assert np.isnan(g[1]) and "less than 0.25x" in why[1] and np.isnan(g[2]) and "neither side" in why[2]
    assert why[0] == "" and rt[3] == 0.0
    with pytest.raises(ValueError, match="text_max"):
        coefficients.GroundingThresholds(audio_min=0.3, text_max=0.4)
    with pytest.raises(ValueError, match="null"):
        coefficients.GroundingThresholds(null="median")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_known_answer_planted_neurons(subject):
    df = corpus_table(6)
    ap, tp = pairing.audio_pairs(df, LABELS), pairing.text_pairs(df, LABELS)
    before = _state(subject.model)
    table = planted.known_answer_table(subject, ap, tp, layer=1)
    after = _state(subject.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # planted weights restored
    g = table.set_index("kind")["coefficient"]
    assert g["text"] <= 0.3 and g["audio"] >= 0.7
    assert np.isnan(g["random"]) or 0.3 <= g["random"] <= 0.7
    assert planted.known_answer_check(subject, ap, tp, 1) == pytest.approx(
        {"text": g["text"], "audio": g["audio"], "random": g["random"]})


class WeakText(FakeSubject):
    """Every text is the same 3 words plus one last word; the emotion words' embeddings are the neutral word's
    plus 5 % noise (set on a copy of the model), so text pairs move the MLP input ~25x less than audio pairs."""

    def batch_inputs(self, rows):
        b = super().batch_inputs(rows)
        ids = b.inputs["input_ids"].clone()
        k = torch.tensor([int(t[1:]) for t in rows["text"]])
        ids[:, self.text_slice] = torch.tensor([30, 31, 32, 0])
        ids[:, self.text_slice.stop - 1] = torch.where(k >= 100, torch.tensor(100), 101 + k)
        return self._batch({**b.inputs, "input_ids": ids})


@pytest.fixture(scope="module")
def weak_text_subject(subject):
    import copy

    model = copy.deepcopy(subject.model)
    emb = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        scale = 0.05 * emb[100].norm() / emb.shape[1] ** 0.5
        for j in range(4):
            emb[101 + j] = emb[100] + scale * torch.randn(emb.shape[1], generator=g)
    return WeakText(model)


def test_known_answer_when_one_perturbation_is_much_smaller(weak_text_subject):
    df = corpus_table(6)
    ap, tp = pairing.audio_pairs(df, LABELS), pairing.text_pairs(df, LABELS)
    table = planted.known_answer_table(weak_text_subject, ap, tp, layer=1).set_index("kind")
    assert table["shift_rms_audio"].iloc[0] > 10 * table["shift_rms_text"].iloc[0]
    # the raw ratio fails here (a text reader looks mixed, a random neuron audio-grounded) ...
    assert table.loc["text", "coefficient_raw"] > 0.3 and table.loc["random", "coefficient_raw"] > 0.8
    # ... the calibrated coefficient does not
    assert table.loc["text", "coefficient"] <= 0.3 and table.loc["audio", "coefficient"] >= 0.7
    assert 0.3 <= table.loc["random", "coefficient"] <= 0.7


def test_dissociation_structure_and_controls(subject):
    model = subject.model
    L, N = gate_shape(model)
    items = pairing.conflict_items(corpus_table(2))
    text_set = torch.zeros(L, N, dtype=torch.bool)
    text_set[1, :20] = True
    res = dissociation.dissociation(subject, items, text_set, {"a": [[0, 1], [0, 2]], "b": [[1, 40]]},
                                    random_seeds=(0, 1),
                                    n_boot=100, batch_size=4, progress=False)
    t = res.table.set_index("condition")
    assert list(res.predictions.shape) == [1 + 2 * 3, len(items)]
    assert t.loc["text_sets", "n_neurons"] == 20 and t.loc["audio_sets", "n_neurons"] == 3
    assert (t.loc["random(text_sets)#0", "n_neurons"], t.loc["random(audio_sets)#1", "n_neurons"]) == (20, 3)
    y_text = np.array([LABELS.index(x) for x in items["context_label"]])
    y_audio = np.array([LABELS.index(x) for x in items["label"]])
    p = res.predictions
    s = res.summary["text_sets"]
    assert s["text_following"] == pytest.approx((p[1] == y_text).mean() - (p[0] == y_text).mean())
    assert s["audio_following"] == pytest.approx((p[1] == y_audio).mean() - (p[0] == y_audio).mean())
    assert s["random_text_following"] == pytest.approx(((p[2:4] == y_text).mean(1) - (p[0] == y_text).mean()).mean())
    assert len(s["text_following_ci"]) == 2 and s["n_neurons"] == 20
    assert isinstance(res.summary["double_dissociation"], bool)
    level = np.where(np.arange(len(items)) % 2 == 0, "clear", "none")
    by = dissociation.dissociation_by_group(res, items.assign(reliability=level), LABELS, "reliability")
    assert set(by) == {"clear", "none"} and by["clear"]["n_items"] + by["none"]["n_items"] == len(items)
    odd = level == "none"
    assert by["none"]["text_sets"]["text_following"] == pytest.approx(
        (p[1, odd] == y_text[odd]).mean() - (p[0, odd] == y_text[odd]).mean())
    assert by["clear"]["baseline"]["follows_audio"] == pytest.approx((p[0, ~odd] == y_audio[~odd]).mean())
    assert by["none"]["audio_sets"]["random_audio_following"] == pytest.approx(
        ((p[5:7][:, odd] == y_audio[odd]).mean(1) - (p[0, odd] == y_audio[odd]).mean()).mean())
    with pytest.raises(ValueError, match="not a column"):
        dissociation.dissociation_by_group(res, items, LABELS, "reliability")
    base = dissociation.dissociation(subject, items, torch.zeros(L, N, dtype=torch.bool), [[0, 1]], random_seeds=(),
                                     n_boot=0, progress=False)
    assert base.summary["text_sets"]["text_following"] == 0.0 and "random_text_following" not in base.summary[
        "text_sets"]


def test_extreme_sets_pick_the_most_text_and_audio_grounded_neurons():
    import pandas as pd

    from helpers.ground.grounding_tables import extreme_sets

    table = pd.DataFrame({
        "layer": [0, 0, 1, 1, 1, 2], "neuron": [0, 1, 0, 1, 2, 0],
        "coefficient": [0.1, 0.9, float("nan"), 0.2, 0.95, 0.5],
        "delta_audio": [1.0, 2.0, 0.0, 1.0, 3.0, 1.0], "delta_text": [5.0, 1.0, 0.0, 4.0, 0.5, 1.0],
    })
    s = extreme_sets(table, 2, 3, 4)
    assert s["text_sets"].nonzero().tolist() == [[0, 0], [1, 1]]
    assert s["audio_sets"].nonzero().tolist() == [[0, 1], [1, 2]]
    within = torch.zeros(3, 4, dtype=torch.bool)
    within[0, :2] = within[2, 0] = True  # only three determined candidates: one each, never shared
    s = extreme_sets(table, 5, 3, 4, within=within)
    assert s["text_sets"].nonzero().tolist() == [[0, 0]] and s["audio_sets"].nonzero().tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="k must be"):
        extreme_sets(table, 0, 3, 4)
