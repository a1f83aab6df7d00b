"""helpers.core.models, families, prompts: gate discovery on the real (tiny) architectures, adapters, loading failures,
prompts, scoring."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.core import families, models, prompts  # noqa: E402

from tiny_models import (  # noqa: E402  (tests/ is on sys.path under pytest)
    FAMILIES,
    build_qwen25_omni_full,
    build_tiny,
    build_tiny_moe,
    build_tiny_text_lm,
    tiny_inputs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return {fam: build_tiny(fam) for fam in FAMILIES}


# ---------------------------------------------------------------------------------------------------------------------
# gate discovery
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_modules_paths_and_classes(tiny, family):
    model = tiny[family]
    gates = models.gate_modules(model)
    assert len(gates) == model.config.get_text_config().num_hidden_layers == 2
    expected_paths = [f"model.language_model.layers.{i}.mlp.act_fn" for i in range(2)]
    assert models.gate_paths(model) == expected_paths
    for i, g in enumerate(gates):
        assert g is model.get_submodule(expected_paths[i])
        assert type(g).__name__ == "SiLUActivation"
    assert models.gate_shape(model) == (2, 64)
    assert models.find_language_model(model) is model.model.language_model
    assert models.decoder_layers(model) is model.model.language_model.layers


def test_omni_thinker_ignores_vision_mlps(tiny):
    thinker = tiny["qwen2.5-omni"]
    all_act = [n for n, _ in thinker.named_modules() if n.endswith("mlp.act_fn")]
    assert any(n.startswith("model.visual") for n in all_act)  # the trap exists ...
    assert not any(p.startswith("model.visual") for p in models.gate_paths(thinker))  # ... and is avoided


def test_full_omni_uses_thinker():
    full = build_qwen25_omni_full()
    assert models.forward_model(full) is full.thinker
    assert models.gate_paths(full) == [f"thinker.model.language_model.layers.{i}.mlp.act_fn" for i in range(2)]
    assert models.gate_modules(full)[1] is full.thinker.model.language_model.layers[1].mlp.act_fn
    assert families.get_adapter(full).name == "qwen2.5-omni"


def test_fake_thinker_wrapper(tiny):
    class Wrapper(nn.Module):
        def __init__(self, thinker):
            super().__init__()
            self.thinker = thinker

    thinker = tiny["qwen2.5-omni"]
    assert models.gate_modules(Wrapper(thinker)) == models.gate_modules(thinker)


def test_nnsight_wrapper_is_unwrapped(tiny):
    import nnsight

    model = tiny["qwen2-audio"]
    assert models.gate_modules(nnsight.NNsight(model)) == models.gate_modules(model)


def test_generic_structure_search_plain_lm():
    lm = build_tiny_text_lm()
    assert models.gate_paths(lm) == ["model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn"]
    assert families.get_adapter(lm).name == "generic"


class _SwiGLU(nn.Module):
    def __init__(self, d=4, n=6):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, n), nn.Linear(d, n), nn.Linear(n, d)
        self.act_fn = nn.SiLU()


class _Layer(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp


def _stack(mlps, extra=None):
    body = nn.Module()
    body.embed_tokens = nn.Embedding(10, 4)
    body.layers = nn.ModuleList([_Layer(m) for m in mlps])
    if extra is not None:
        body.mimo_layers = nn.ModuleList([_Layer(m) for m in extra])
    top = nn.Module()
    top.model = body
    return top


def test_kimi_like_picks_layers_not_mimo_layers():
    model = _stack([_SwiGLU() for _ in range(3)], extra=[_SwiGLU() for _ in range(4)])
    assert models.gate_paths(model) == [f"model.layers.{i}.mlp.act_fn" for i in range(3)]
    assert models.gate_shape(model) == (3, 6)


def test_moe_is_rejected():
    with pytest.raises(models.UnsupportedModelError, match="mixture-of-experts.*dense SwiGLU"):
        models.gate_modules(build_tiny_moe())


def test_fused_gate_up_is_rejected():
    mlp = nn.Module()
    mlp.gate_up_proj, mlp.down_proj, mlp.activation_fn = nn.Linear(4, 12), nn.Linear(6, 4), nn.SiLU()
    with pytest.raises(models.UnsupportedModelError, match="fused `gate_up_proj`.*unsupported"):
        models.gate_modules(_stack([mlp]))


def test_functional_act_and_missing_parts_are_rejected():
    mlp = _SwiGLU()
    del mlp.act_fn
    mlp.act_fn = torch.nn.functional.silu
    with pytest.raises(models.UnsupportedModelError, match="no `act_fn` submodule"):
        models.gate_modules(_stack([mlp]))
    mlp2 = _SwiGLU()
    del mlp2.up_proj
    with pytest.raises(models.UnsupportedModelError, match="up_proj"):
        models.gate_modules(_stack([mlp2]))
    with pytest.raises(models.UnsupportedModelError, match="no decoder layer list"):
        models.gate_modules(nn.Sequential(nn.Linear(2, 2)))


def test_check_swiglu_passes_on_real_mlp(tiny):
    model = tiny["audio-flamingo-3"]
    models.check_swiglu(model, tiny_inputs("audio-flamingo-3", model), layer=1)


# ---------------------------------------------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------------------------------------------


def test_adapter_registry_by_name_id_and_model(tiny):
    assert set(FAMILIES) | {"kimi-audio", "generic"} <= set(families.ADAPTERS)
    assert isinstance(families.get_adapter("qwen2-audio"), families.Qwen2AudioAdapter)
    assert isinstance(families.get_adapter("Qwen/Qwen2.5-Omni-7B"), families.Qwen25OmniAdapter)
    assert isinstance(families.get_adapter("nvidia/audio-flamingo-3-hf"), families.AudioFlamingo3Adapter)
    assert isinstance(families.get_adapter("mistralai/Voxtral-Mini-3B-2507"), families.VoxtralAdapter)
    assert families.get_adapter("moonshotai/Kimi-Audio-7B-Instruct").requires_remote_code
    for fam in FAMILIES:
        assert families.get_adapter(tiny[fam]).name == fam


def test_unknown_adapter_lists_known_names():
    with pytest.raises(families.UnknownAdapterError) as err:
        families.get_adapter("no-such-family")
    for name in ("qwen2-audio", "qwen2.5-omni", "audio-flamingo-3", "voxtral", "kimi-audio", "generic"):
        assert name in str(err.value)


def test_register_adapter():
    adapter = families.GenericAdapter(name="organism-test", model_classes=("_Nothing",))
    try:
        assert families.register_adapter("organism-test", adapter) is adapter
        assert families.get_adapter("organism-test") is adapter
        with pytest.raises(ValueError, match="already registered"):
            families.register_adapter("organism-test", adapter, overwrite=False)
    finally:
        families.ADAPTERS.pop("organism-test", None)


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_local_path_fails_fast(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(families.ModelNotAvailableError, match="does not exist"):
        families.get_adapter("qwen2-audio").load(tmp_path / "nope" / "Qwen2-Audio-7B-Instruct")
    with pytest.raises(families.ModelNotAvailableError, match="does not exist"):
        families.get_adapter("voxtral").load_processor("./models/not-here/voxtral")
    assert time.perf_counter() - t0 < 2.0


def test_uncached_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(families.ModelNotAvailableError) as err:
        families.get_adapter("qwen2-audio").load("esn-test-org/definitely-not-cached-qwen2-audio")
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and "hf download" in msg and "allow_hub=True" in msg


def test_remote_code_needs_opt_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(families.RemoteCodeNotAllowedError, match="trust_remote_code=True"):
        families.get_adapter("generic").load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(families.RemoteCodeNotAllowedError, match="trust_remote_code=True"):
        families.get_adapter("kimi-audio").load(tmp_path)


def test_load_roundtrip_from_local_folder(tiny, tmp_path):
    model = tiny["qwen2-audio"]
    model.save_pretrained(tmp_path)
    loaded = families.get_adapter("qwen2-audio").load(tmp_path, dtype=torch.float32, device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    inputs = tiny_inputs("qwen2-audio", model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


# ---------------------------------------------------------------------------------------------------------------------
# prompts and scoring
# ---------------------------------------------------------------------------------------------------------------------


def test_chat_prompts_carry_audio_placeholder():
    q = families.get_adapter("qwen2-audio").prompt_text("What emotion?")
    assert q == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat emotion?<|im_end|>\n<|im_start|>assistant\n"
    )
    omni = families.get_adapter("qwen2.5-omni").prompt_text("Q")
    assert "<|audio_bos|><|AUDIO|><|audio_eos|>Q<|im_end|>" in omni and "virtual human" in omni
    assert "<sound>Q<|im_end|>" in families.get_adapter("audio-flamingo-3").prompt_text("Q")
    assert families.get_adapter("voxtral").prompt_text("Q") == "<s>[INST][BEGIN_AUDIO][AUDIO]Q[/INST]"


def test_conversation_form():
    conv = families.get_adapter("qwen2-audio").conversation("Q", {"path": "a.wav"})
    assert conv[0]["role"] == "system"
    assert conv[1]["content"] == [{"type": "audio", "path": "a.wav"}, {"type": "text", "text": "Q"}]


def test_multiple_choice_shuffle_is_seeded_per_item():
    opts = ["angry", "happy", "neutral", "sad"]
    a = prompts.multiple_choice_prompt("Which emotion?", opts, seed=3, item_id="clip7")
    b = prompts.multiple_choice_prompt("Which emotion?", opts, seed=3, item_id="clip7")
    assert a == b and sorted(a.options) == opts and a.letters == ("A", "B", "C", "D")
    orders = {prompts.multiple_choice_prompt("Q", opts, seed=3, item_id=i).options for i in range(20)}
    assert len(orders) > 1
    assert prompts.multiple_choice_prompt("Q", opts, seed=4, item_id="clip7").options != a.options or len(orders) > 1
    for opt in opts:
        assert a.option_of(a.letter_of(opt)) == opt
        assert f"{a.letter_of(opt)}. {opt}" in a.text
    fixed = prompts.multiple_choice_prompt("Q", opts, shuffle=False)
    assert fixed.options == tuple(opts) and fixed.text.splitlines()[1] == "A. angry"


def test_label_prompt():
    text = prompts.label_word_prompt("How does the speaker feel?", ["angry", "sad"])
    assert text == "How does the speaker feel? Answer with one word from: angry, sad."


def test_score_is_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    cand = torch.tensor([4, 9, 17])
    out = prompts.score(logits, cand)
    torch.testing.assert_close(out, torch.log_softmax(logits, -1)[:, cand])
    per_row = torch.tensor([[1, 2], [3, 4], [5, 6]])
    torch.testing.assert_close(prompts.score(logits, per_row), torch.log_softmax(logits, -1).gather(-1, per_row))
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        prompts.score(logits[None], cand)
    with pytest.raises(ValueError, match="vocabulary"):
        prompts.score(logits, torch.tensor([50]))


def test_candidate_token_ids_with_fake_tokenizer():
    class Tok:
        vocab = {"angry": [5, 1], "happy": [6], "hap": [6, 2], " ": [9]}

        def encode(self, text, add_special_tokens=False):
            return list(self.vocab[text])

    assert prompts.candidate_token_ids(Tok(), ["angry", "happy"]).tolist() == [5, 6]
    with pytest.raises(ValueError, match="share a first token"):
        prompts.candidate_token_ids(Tok(), ["happy", "hap"])


def test_prepare_inputs_calls_processor_with_placeholder_prompts():
    calls = {}

    class Proc:
        def __call__(self, **kw):
            calls.update(kw)
            return {"ok": True}

    import numpy as np

    families.get_adapter("qwen2-audio").prepare_inputs(Proc(), [np.zeros(160)], ["Q"])
    assert calls["text"][0].count("<|AUDIO|>") == 1 and calls["audio"][0].shape == (160,)
    with pytest.raises(NotImplementedError, match="own"):
        families.get_adapter("kimi-audio").prepare_inputs(Proc(), [np.zeros(4)], ["Q"])


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_builders_are_deterministic(family):
    a, b = build_tiny(family, seed=3), build_tiny(family, seed=3)
    ia, ib = tiny_inputs(family, a, seed=2, ragged=True), tiny_inputs(family, b, seed=2, ragged=True)
    assert all(torch.equal(ia[k], ib[k]) for k in ia)
    with torch.no_grad():
        assert torch.equal(a(**ia).logits, b(**ib).logits)
