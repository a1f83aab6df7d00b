"""helpers.subjects (adapters, subject_loading, run_items, item_prompts, positions): real-model subjects, their
config loaders and the shipped configs, on tiny real architectures.

No weights, processors or datasets can be downloaded here, so the processor call is injected (``inputs_fn``) and
the whole Log -> Identify -> Intervene path runs on tiny random instances of the genuine transformers classes.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.core.families import (
    ADAPTERS,
    ModelNotAvailableError,
    RemoteCodeNotAllowedError,
    UnknownAdapterError,
    get_adapter,
)
from helpers.core.hooks import run_with_gate_edits  # noqa: E402
from helpers.core.io import ConfigError  # noqa: E402
from helpers.core.models import gate_modules
from helpers.core.subject import Subject  # noqa: E402
from helpers.data.catalog import DATASETS  # noqa: E402
from helpers.identify.selection import select  # noqa: E402
from helpers.identify.set_ops import to_mask  # noqa: E402
from helpers.log.activation_log import log_activations  # noqa: E402
from helpers.subjects import adapters, item_prompts, positions, run_items, subject_loading  # noqa: E402

from fixtures_datasets import make_iemocap  # noqa: E402
from tiny_models import (  # noqa: E402
    AUDIO_BOS_ID,
    AUDIO_EOS_ID,
    AUDIO_ID,
    FAMILIES,
    INTERMEDIATE,
    N_LAYERS,
    PAD_ID,
    build_tiny,
    tiny_inputs,
)

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("neutral", "happy", "angry", "sad")
#: Made-up answer-token ids for the tiny vocabulary (letters A-D), away from the special ids.
LETTER_IDS = {"A": 40, "B": 41, "C": 42, "D": 43}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return {fam: build_tiny(fam) for fam in FAMILIES}


def items(n: int = 8) -> pd.DataFrame:
    """``n`` items cycling through the four labels (audio content is irrelevant: inputs are injected)."""
    return pd.DataFrame({
        "path": [f"/nowhere/clip{i}.wav" for i in range(n)],
        "clip_id": [f"clip_{i}" for i in range(n)],
        "label": [LABELS[i % len(LABELS)] for i in range(n)],
        "text": [""] * n,
        "split": ["identify"] * n,
    })  # fmt: skip


def make_inputs_fn(family: str, model: torch.nn.Module):
    """An ``inputs_fn`` as a real processor path would give: tiny model inputs + per-row shuffled-letter answers."""

    def inputs_fn(rows: pd.DataFrame):
        seed = int(rows["clip_id"].iloc[0].split("_")[1])
        inputs = tiny_inputs(family, model, batch=len(rows), seed=seed, ragged=family != "voxtral")
        prompts = [item_prompts.item_prompt(LABELS, style="multiple_choice", seed=0,
                                            item_id=i) for i in rows["clip_id"]]
        return inputs, item_prompts.candidate_matrix(prompts, LETTER_IDS)

    return inputs_fn


def tiny_subject(family: str, model: torch.nn.Module) -> adapters.AdapterSubject:
    return adapters.AdapterSubject(
        model=model, labels=LABELS, adapter=get_adapter(family), inputs_fn=make_inputs_fn(family, model),
        special_ids=(PAD_ID, AUDIO_BOS_ID, AUDIO_EOS_ID), pad_token_id=PAD_ID,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Log -> Identify -> Intervene on every tiny architecture
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_log_select_deactivate_on_tiny_architecture(tiny, family):
    model = tiny[family]
    subj = tiny_subject(family, model)
    assert isinstance(subj, Subject)
    df = items(8)

    res = log_activations(subj, df, positions="all", only_correct=False, batch_size=4, progress=False)
    stats = res.stats
    assert (stats.n_layers, stats.n_neurons) == (N_LAYERS, INTERMEDIATE) and list(stats.labels) == list(LABELS)
    assert len(res.items) == 8 and set(res.items["pred"]) <= set(LABELS) and res.items["counted"].all()
    # "all" counts every attended position: the token totals are the attention-mask sums of each class's rows
    expected = dict.fromkeys(LABELS, 0)
    for start in (0, 4):
        rows = df.iloc[start : start + 4]
        inputs, _ = make_inputs_fn(family, model)(rows)
        for lbl, n in zip(rows["label"], inputs["attention_mask"].sum(1).tolist(), strict=True):
            expected[lbl] += n
    assert stats.tokens.tolist() == [float(expected[lbl]) for lbl in LABELS]
    assert stats.items.tolist() == [2.0] * 4

    sel = select(stats, "mad", k=4)
    assert set(sel) == set(LABELS) and all(tuple(v.shape) == (4, 2) for v in sel.values())

    target = "angry"
    neuron_mask = to_mask(sel, N_LAYERS, INTERMEDIATE)[LABELS.index(target)]  # [L, N]
    rows = df.head(4)
    batch = subj.batch_inputs(rows)
    inputs = batch.inputs
    with torch.no_grad():
        base = model(**inputs).logits
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, o: seen.append(o.detach().clone())) for m in gate_modules(model)]
    try:
        edited = run_with_gate_edits(model, inputs, scale=(~neuron_mask).float())
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == N_LAYERS
    for layer, gate in enumerate(seen):
        chosen = neuron_mask[layer].nonzero().flatten()
        assert (gate[..., chosen] == 0).all()
        others = (~neuron_mask[layer]).nonzero().flatten()
        assert (gate[..., others] != 0).any()
    assert edited.shape == base.shape and not torch.allclose(edited, base)
    scores = subj.label_logits(batch, edited)
    assert scores.shape == (4, len(LABELS)) and torch.isfinite(scores).all()


def test_full_omni_model_is_traced_through_its_thinker():
    from tiny_models import build_qwen25_omni_full

    full = build_qwen25_omni_full()
    subj = tiny_subject("qwen2.5-omni", full.thinker)
    res = log_activations(subj, items(4), positions="audio", only_correct=False, batch_size=4, progress=False)
    assert res.stats.n_layers == N_LAYERS and (res.stats.tokens > 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# Answers: shuffled letters come back in label order
# ---------------------------------------------------------------------------------------------------------------------


def test_item_prompt_answers_match_the_lettered_options():
    for item_id in ("a", "b", "c", 7):
        p = item_prompts.item_prompt(LABELS, style="multiple_choice", seed=3, item_id=item_id, question="Q?")
        assert sorted(p.answers) == ["A", "B", "C", "D"]
        for lbl, letter in zip(LABELS, p.answers, strict=True):
            assert f"{letter}. {lbl}" in p.text
    orders = {item_prompts.item_prompt(LABELS, seed=3, item_id=i).answers for i in range(20)}
    assert len(orders) > 1, "letters must be shuffled per item"
    words = item_prompts.item_prompt(LABELS, style="label_words", question="Q?")
    assert words.answers == LABELS and "neutral, happy, angry, sad" in words.text
    ctx = item_prompts.item_prompt(LABELS, context="I lost it.", context_format="Transcript: {text}\n", question="Q?")
    assert ctx.text.startswith("Transcript: I lost it.\nQ?")
    with pytest.raises(ValueError, match="prompt style"):
        item_prompts.item_prompt(LABELS, style="free_text")


def test_label_logits_unshuffles_letters_by_hand():
    """Row 0 shows (C, A, D, B) for (neutral, happy, angry, sad) and row 1 (B, D, A, C); the model "says" D in row 0
    and D in row 1: that is angry for row 0 and happy for row 1."""
    cand = item_prompts.candidate_matrix(
        [item_prompts.ItemPrompt("q0", ("C", "A", "D", "B")),
         item_prompts.ItemPrompt("q1", ("B", "D", "A", "C"))], LETTER_IDS
    )
    assert cand.tolist() == [[42, 40, 43, 41], [41, 43, 40, 42]]
    ids = torch.tensor([[PAD_ID, 5, AUDIO_ID, 6], [7, 8, AUDIO_ID, 9]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    subj = adapters.AdapterSubject(
        model=build_tiny("qwen2-audio"),
        labels=LABELS,
        adapter=get_adapter("qwen2-audio"),
        inputs_fn=lambda rows: ({"input_ids": ids, "attention_mask": mask}, cand),
    )
    batch = subj.batch_inputs(items(2))
    logits = torch.zeros(2, 256)
    logits[:, LETTER_IDS["D"]] = 5.0
    logits[:, LETTER_IDS["A"]] = 2.0  # runner-up: row 0 -> happy, row 1 -> angry
    scores = subj.label_logits(batch, logits)
    assert scores.shape == (2, 4)
    assert [LABELS[i] for i in scores.argmax(-1).tolist()] == ["angry", "happy"]
    assert [LABELS[i] for i in scores.argsort(-1, descending=True)[:, 1].tolist()] == ["happy", "angry"]
    torch.testing.assert_close(scores, torch.log_softmax(logits, -1).gather(-1, cand))
    # [B, T, V] is read at the last attended position; a batch tiled twice reuses the answers in tile order
    full = torch.zeros(2, 4, 256)
    full[:, -1] = logits
    torch.testing.assert_close(subj.label_logits(batch, full), scores)
    torch.testing.assert_close(subj.label_logits(batch.tile(2), torch.cat([logits, logits])),
                               torch.cat([scores, scores]))
    with pytest.raises(ValueError, match="rows"):
        subj.label_logits(batch, torch.zeros(3, 256))


def test_batches_do_not_share_answer_letters_when_interleaved(tiny):
    """The architecture review's bug: preparing a counterfactual batch before reading the base batch's answers
    re-mapped the base argmax ([3,2,3,3] -> [2,2,3,1]). With self-contained batches it cannot."""
    model = tiny["qwen2-audio"]
    subj = tiny_subject("qwen2-audio", model)
    base_rows, cf_rows = items(4), items(8).iloc[4:].reset_index(drop=True)
    base = subj.batch_inputs(base_rows)
    assert not torch.equal(base.candidates, subj.batch_inputs(cf_rows).candidates), "need different letter orders"
    with torch.no_grad():
        logits = model(**base.inputs).logits
        first = subj.label_logits(base, logits).argmax(-1)
        cf = subj.batch_inputs(cf_rows)  # the interleaving: a second batch prepared before the base is read
        model(**cf.inputs)
        again = subj.label_logits(base, logits).argmax(-1)
    assert again.tolist() == first.tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Token positions
# ---------------------------------------------------------------------------------------------------------------------


def test_position_masks_from_hand_made_batch():
    """Left-padded rows: [pad, sys, <bos>, AUD, AUD, <eos>, \\n, w, w, <end>, hdr] with after_audio=2 and suffix=2."""
    SYS, BOS, AUD, EOS, NL, W, END, HDR = 3, 90, 91, 92, 4, 5, 93, 6
    ids = torch.tensor([
        [PAD_ID, PAD_ID, SYS, BOS, AUD, AUD, EOS, NL, W, W, END, HDR],
        [SYS, BOS, AUD, AUD, AUD, EOS, NL, W, W, W, END, HDR],
    ])  # fmt: skip
    att = (ids != PAD_ID).long()
    m = positions.position_masks_from(ids, att, audio_ids=[AUD], special_ids=[PAD_ID, BOS, EOS, END], after_audio=2,
                                      suffix=2)
    assert m["all"].tolist() == att.bool().tolist()
    assert m["audio"].nonzero().tolist() == [[0, 4], [0, 5], [1, 2], [1, 3], [1, 4]]
    assert m["text"].nonzero().tolist() == [[0, 8], [0, 9], [1, 7], [1, 8], [1, 9]]
    assert m["last"].nonzero().tolist() == [[0, 11], [1, 11]]
    # right padding: "last" follows the attention mask, not position -1
    right = torch.tensor([[SYS, W, W, PAD_ID], [SYS, W, W, W]])
    m = positions.position_masks_from(right, (right != PAD_ID).long(), special_ids=[PAD_ID])
    assert m["last"].nonzero().tolist() == [[0, 2], [1, 3]]
    assert m["text"].tolist() == (right != PAD_ID).tolist()  # no audio: every attended non-special token


@pytest.mark.parametrize("family", FAMILIES)
def test_subject_position_masks_on_tiny_inputs(tiny, family):
    model = tiny[family]
    subj = tiny_subject(family, model)
    batch = subj.batch_inputs(items(4))
    inputs = batch.inputs
    masks = subj.position_masks(batch)
    att = inputs["attention_mask"].bool()
    assert masks["all"].tolist() == att.tolist()
    assert masks["audio"].tolist() == (inputs["input_ids"] == AUDIO_ID).tolist()
    assert masks["last"].sum(1).tolist() == [1] * 4 and masks["last"][:, -1].all()  # left padding
    assert not (masks["text"] & (masks["audio"] | ~att)).any() and masks["text"].any(1).all()
    assert subj.audio_ids == (AUDIO_ID,)


AUDIO_TOKEN = {
    "qwen2-audio": "<|AUDIO|>",
    "qwen2.5-omni": "<|AUDIO|>",
    "audio-flamingo-3": "<sound>",
    "voxtral": "[AUDIO]",
}
TEMPLATE_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>", "<sound>", "<s>",
                     "[INST]", "[/INST]", "[BEGIN_AUDIO]", "[AUDIO]"]  # fmt: skip


def template_tokenizer(texts):
    """A real ``PreTrainedTokenizerFast`` whose pieces are words and newlines, with the chat-template markers as
    special tokens: enough to check that the text mask covers exactly the user text in a fully rendered prompt."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(" +"), "removed"), pre_tokenizers.Split("\n", "isolated")]
    )
    pieces = {p for t in texts for chunk in re.split("|".join(map(re.escape, TEMPLATE_SPECIALS)), t)
              for p, _ in pre.pre_tokenize_str(chunk)}  # fmt: skip
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *sorted(pieces)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": TEMPLATE_SPECIALS})
    fast.padding_side = "left"
    return fast


@pytest.mark.parametrize("family", FAMILIES)
def test_text_mask_covers_exactly_the_user_text_of_a_rendered_prompt(tiny, family):
    adapter = get_adapter(family)
    audio_tok = AUDIO_TOKEN[family]
    prompts = [item_prompts.item_prompt(LABELS, seed=0, item_id=i, context=c, context_format="Transcript: {text}\n")
               for i, c in enumerate(["I lost my keys.", ""])]  # fmt: skip
    # what the processor would tokenise: the template around each user text, the audio token repeated per frame
    rendered = [
        adapter.prompt_text(p.text).replace(audio_tok, audio_tok * n) for p, n in zip(prompts, (3, 5), strict=True)
    ]
    tok = template_tokenizer(rendered + [adapter.prompt_text("x")])
    proc = type("Proc", (), {"tokenizer": tok})()
    audio_id = tok.convert_tokens_to_ids(audio_tok)
    subj = adapters.AdapterSubject(model=tiny[family], labels=LABELS, adapter=adapter, processor=proc,
                                   audio_ids=(audio_id,))
    enc = tok(rendered, padding=True, return_tensors="pt", add_special_tokens=False)
    assert (enc["input_ids"][:, 0] == tok.pad_token_id).any(), "rows must differ in length (left padding)"
    masks = subj.masks_of(enc["input_ids"], enc["attention_mask"])
    for row, p in enumerate(prompts):
        got = enc["input_ids"][row][masks["text"][row]].tolist()
        assert got == tok.encode(p.text, add_special_tokens=False), tok.convert_ids_to_tokens(got)
        assert masks["audio"][row].sum() == (3, 5)[row]
        assert masks["last"][row, -1] and masks["last"][row].sum() == 1
    assert masks["all"].tolist() == enc["attention_mask"].bool().tolist()


# ---------------------------------------------------------------------------------------------------------------------
# The default processor path (fake processor and tokenizer, real adapter and audio decoding)
# ---------------------------------------------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character (ids 3..), plus the audio placeholder as one token: enough for template counting."""

    pad_token_id = PAD_ID
    unk_token_id = 1
    all_special_ids = [PAD_ID, 1]

    def encode(self, text, add_special_tokens=False):
        return [3 + (ord(c) % 200) for c in text]

    def convert_tokens_to_ids(self, token):
        return AUDIO_ID if token == "<|AUDIO|>" else self.unk_token_id

    def convert_ids_to_tokens(self, i):
        return "<|AUDIO|>" if i == AUDIO_ID else "?"


class FakeProcessor:
    def __init__(self, model):
        self.model = model
        self.tokenizer = CharTokenizer()
        self.feature_extractor = type("FE", (), {"sampling_rate": 16_000})()
        self.calls: list[dict] = []

    def __call__(self, **kw):
        self.calls.append(kw)
        return tiny_inputs("qwen2-audio", self.model, batch=len(kw["text"]), ragged=True)


def test_processor_path_decodes_audio_and_builds_shuffled_prompts(tiny, tmp_path):
    model = tiny["qwen2-audio"]
    df = items(3)
    for i, p in enumerate(df["path"]):
        df.loc[i, "path"] = str(tmp_path / Path(p).name)
        sf.write(df.loc[i, "path"], np.full(800 + 80 * i, 0.1, dtype=np.float32), 8000)  # 8 kHz: must be resampled
    proc = FakeProcessor(model)
    subj = adapters.AdapterSubject(model=model, labels=LABELS, adapter=get_adapter("qwen2-audio"), processor=proc,
                                   seed=5)
    assert subj.sampling_rate == 16_000 and subj.tokenizer is proc.tokenizer
    # template around the user text: "<|audio_eos|>\n" after the audio token, the assistant header after the text
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    assert subj.text_span == (len("<|audio_eos|>\n"), len(suffix))
    batch = subj.batch_inputs(df)
    call = proc.calls[-1]
    assert call["sampling_rate"] == 16_000 and [len(a) for a in call["audio"]] == [1600, 1760, 1920]
    for text, clip in zip(call["text"], df["clip_id"], strict=True):
        expected = item_prompts.item_prompt(LABELS, seed=5, item_id=clip)
        assert text.count("<|AUDIO|>") == 1 and expected.text in text and text.endswith(suffix)
    answer_ids = {ltr: CharTokenizer().encode(ltr)[0] for ltr in "ABCD"}
    want = item_prompts.candidate_matrix([item_prompts.item_prompt(LABELS, seed=5, item_id=c) for c in df["clip_id"]],
                                         answer_ids)
    logits = torch.zeros(3, 256)
    logits[torch.arange(3), want[:, LABELS.index("sad")]] = 9.0  # each row "answers" the letter that means sad
    assert subj.label_logits(batch, logits).argmax(-1).tolist() == [LABELS.index("sad")] * 3
    with torch.no_grad():
        assert subj.label_logits(batch, model(**batch.inputs).logits).shape == (3, 4)


# ---------------------------------------------------------------------------------------------------------------------
# load_subject
# ---------------------------------------------------------------------------------------------------------------------


def _params(**kw):
    return {"model": "qwen2-audio", "model_path": "x", "labels": list(LABELS), "device": "cpu", "dtype": "float32",
            **kw}  # fmt: skip


def test_load_subject_unknown_model_lists_known_names():
    with pytest.raises(UnknownAdapterError) as err:
        subject_loading.load_subject(_params(model="gpt-audio"))
    msg = str(err.value)
    assert "gpt-audio" in msg and "organism" in msg and all(name in msg for name in ADAPTERS)


def test_load_subject_missing_local_path_fails_fast(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        subject_loading.load_subject(_params(model_path=str(tmp_path / "weights" / "Qwen2-Audio-7B-Instruct")))
    with pytest.raises(FileNotFoundError, match="make organism"):
        subject_loading.load_subject(_params(model="organism", model_path=str(tmp_path / "no-organism")))
    assert time.perf_counter() - t0 < 5.0


def test_load_subject_uncached_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as err:
        subject_loading.load_subject(_params(model_path="esn-test-org/definitely-not-cached-qwen2-audio"))
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and "hf download" in msg


def test_load_subject_remote_code_and_inputs_checks_precede_loading(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(RemoteCodeNotAllowedError, match="trust_remote_code: true"):
        subject_loading.load_subject(_params(model="kimi-audio", model_path=str(tmp_path)))
    with pytest.raises(NotImplementedError, match="kimia_infer"):
        subject_loading.load_subject(_params(model="kimi-audio", model_path=str(tmp_path), trust_remote_code=True))
    with pytest.raises(ValueError, match="prompt style"):
        subject_loading.load_subject(_params(model_path=str(tmp_path), prompt_style="free_text"))
    with pytest.raises(ConfigError, match="dtype"):
        subject_loading.load_subject(_params(model_path=str(tmp_path), dtype="float8"))
    with pytest.raises(ConfigError, match="model_path"):
        subject_loading.load_subject({"model": "qwen2-audio", "labels": list(LABELS)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_load_subject_cuda_without_gpu_fails_fast(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_audio"}')
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        subject_loading.load_subject(_params(model_path=str(tmp_path), device="cuda"))


def test_config_params_picks_the_subject_keys():
    ns = {"model": "voxtral", "dtype": "bfloat16", "device": "cuda", "run_dir": "runs/x", "alpha": 0.5, "seed": 1}
    assert subject_loading.config_params(ns) == {"model": "voxtral", "dtype": "bfloat16", "device": "cuda", "seed": 1}
    assert set(subject_loading.SUBJECT_KEYS) >= {"trust_remote_code", "allow_hub", "prompt_style", "device_map",
                                                 "datasets"}


def test_load_subject_from_local_folder(tiny, tmp_path):
    tiny["qwen2-audio"].save_pretrained(tmp_path)
    fn = make_inputs_fn("qwen2-audio", tiny["qwen2-audio"])
    subj = subject_loading.load_subject(_params(model_path=str(tmp_path), seed=3), inputs_fn=fn)
    assert isinstance(subj, adapters.AdapterSubject) and subj.labels == LABELS and subj.seed == 3
    assert type(subj.model).__name__ == "Qwen2AudioForConditionalGeneration" and not subj.model.training
    inputs = subj.batch_inputs(items(2)).inputs
    att = inputs["attention_mask"].bool()  # padded positions differ between attention implementations
    with torch.no_grad():
        torch.testing.assert_close(subj.model(**inputs).logits[att], tiny["qwen2-audio"](**inputs).logits[att])


# ---------------------------------------------------------------------------------------------------------------------
# load_items
# ---------------------------------------------------------------------------------------------------------------------


def _mini_corpus(folder: Path) -> Path:
    """A synthetic-corpus folder (metadata.csv + wav/) with 2 items per label and split."""
    rows = []
    for i, (lbl, split) in enumerate((lbl, s) for s in ("identify", "evaluate") for lbl in LABELS for _ in range(2)):
        rel = f"wav/c{i}.wav"
        (folder / "wav").mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, np.zeros(160, dtype=np.float32), 16_000)
        rows.append({"path": rel, "sampling_rate": 16_000, "label": lbl, "speaker": f"s{i % 3}",
                     "sentence_id": f"t{i}", "text": "someone is talking", "split": split, "clip_id": f"c{i}",
                     "context": "none"})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


def test_load_items_synthetic_corpus_plain_folder_and_mapping(tmp_path):
    folder = _mini_corpus(tmp_path / "A")
    params = {"datasets": {"A": str(folder), "B": {"loader": "corpus", "root": str(folder)}}, "dataset": "A",
              "labels": list(LABELS)}  # fmt: skip
    df = run_items.load_items(params)
    assert len(df) == 16 and set(df["label"]) == set(LABELS) and Path(df["path"].iloc[0]).is_absolute()
    ev = run_items.load_items(params, "B", split="evaluate")
    assert len(ev) == 8 and set(ev["split"]) == {"evaluate"}
    with pytest.raises(ConfigError, match="not in the config's datasets"):
        run_items.load_items(params, "C")
    with pytest.raises(ValueError, match="no items in split"):
        run_items.load_items(params, split="train")


def test_load_items_filters_unconfigured_labels_with_a_report(tmp_path, caplog):
    folder = _mini_corpus(tmp_path / "A")
    params = {"datasets": {"A": str(folder)}, "dataset": "A", "labels": ["neutral", "sad"]}
    with caplog.at_level(logging.WARNING, logger="helpers.subjects.run_items"):
        df = run_items.load_items(params)
    assert sorted(set(df["label"])) == ["neutral", "sad"] and len(df) == 8
    assert df.attrs["dropped"]["not_in_config_labels"] == {"angry": 4, "happy": 4}
    assert "dropped 8 item(s)" in caplog.text
    with pytest.raises(ValueError, match=r"\['calm'\] have no items"):
        run_items.load_items({**params, "labels": ["neutral", "calm"]})


def test_load_items_real_loader_by_mapping_folder_and_env(tmp_path, monkeypatch):
    root = make_iemocap(tmp_path / "IEMOCAP_full_release")
    labels = list(LABELS)
    by_map = run_items.load_items({"datasets": {"iemocap": {"loader": "iemocap", "root": str(root)}},
                                   "dataset": "iemocap",
                                   "labels": labels})  # fmt: skip
    assert (
        len(by_map) == 40 and set(by_map["label"]) == set(LABELS) and set(by_map["split"]) == {"identify", "evaluate"}
    )
    by_folder = run_items.load_items({"datasets": {"iemocap": str(root)}, "dataset": "iemocap", "labels": labels})
    assert by_folder["path"].tolist() == by_map["path"].tolist()
    monkeypatch.setenv("ESN_IEMOCAP_ROOT", str(root))
    by_env = run_items.load_items({"datasets": {"ie": {"loader": "iemocap", "root": None}}, "dataset": "ie",
                                   "labels": labels})
    assert len(by_env) == 40
    by_var = run_items.load_items({"datasets": {"ie": {"loader": "iemocap", "root": "${ESN_IEMOCAP_ROOT}"}},
                                   "dataset": "ie",
                                   "labels": ["neutral", "angry"]})  # fmt: skip
    assert sorted(set(by_var["label"])) == ["angry", "neutral"]
    assert by_var.attrs["dropped"]["not_in_labels"] == {"happy": 16, "sad": 8}
    with pytest.raises(ConfigError, match="ESN_NOT_SET_ANYWHERE"):
        run_items.load_items({"datasets": {"ie": {"loader": "iemocap", "root": "$ESN_NOT_SET_ANYWHERE/x"}},
                              "dataset": "ie",
                              "labels": labels})  # fmt: skip
    with pytest.raises(ConfigError, match="unknown loader"):
        run_items.load_items(
            {"datasets": {"x": {"loader": "librispeech", "root": str(root)}}, "dataset": "x", "labels": labels}
        )


# ---------------------------------------------------------------------------------------------------------------------
# The shipped configs
# ---------------------------------------------------------------------------------------------------------------------

CONFIGS = sorted((ROOT / "configs").glob("*.yml"))
REQUIRED = ("run_name", "model", "model_path", "datasets", "dataset", "labels", "seed", "batch_size", "device", "dtype")
PAPER_SETTINGS = ("qwen2-audio-iemocap", "qwen25-omni-msp", "qwen25-omni-iemocap", "af3-meld", "af3-iemocap",
                  "kimi-audio-iemocap", "voxtral-crema-d")  # fmt: skip


def test_paper_setting_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert set(PAPER_SETTINGS) <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_complete_and_names_known_adapter_and_loaders(path):
    cfg = yaml.safe_load(path.read_text())
    assert isinstance(cfg, dict)
    missing = [k for k in REQUIRED if k not in cfg]
    assert not missing, f"{path.name} lacks {missing}"
    assert cfg["run_name"] == path.stem
    assert cfg["model"] in subject_loading.known_models()
    assert cfg["dataset"] in cfg["datasets"]
    for name, entry in cfg["datasets"].items():
        spec = run_items.dataset_spec(name, entry)
        assert spec.loader in ("corpus", *DATASETS), f"{path.name}: datasets.{name}"
    labels = cfg["labels"]
    assert len(labels) >= 2 and len(set(labels)) == len(labels)
    assert isinstance(cfg["batch_size"], int) and cfg["batch_size"] > 0
    subject_loading._dtype(cfg["dtype"])
    if cfg["model"] == "organism":
        return
    assert get_adapter(cfg["model_path"]).name == cfg["model"], "model_path must be a checkpoint of the family"
    assert cfg.get("prompt_style") in item_prompts.PROMPT_STYLES
    assert cfg.get("trust_remote_code") is False and cfg.get("allow_hub") is False
    assert cfg["fraction"] == 0.005 and cfg["alpha"] == 0.5
    assert cfg.get("positions") in ("all", "audio", "text", "last")
    for name, entry in cfg["datasets"].items():
        spec = run_items.dataset_spec(name, entry)
        assert spec.loader in DATASETS
        assert set(labels) <= set(DATASETS[spec.loader].label_map.values()), f"{name} cannot produce {labels}"
