"""Tiny, randomly initialised instances of the real audio-language model classes, plus valid inputs for them.

Why: the hook and intervention code must be tested against the *actual* transformers classes (module paths, audio
placeholder merging, position ids) without downloading any weights. Every builder here constructs the genuine class
from a miniature config (2 decoder layers, hidden 32, intermediate 64, vocab 256, 1-layer audio encoder) in a few
milliseconds, and `tiny_inputs` produces input_ids with exactly the number of audio placeholder tokens the model's
forward expects, so a real forward pass *with audio* runs.

Audio-token arithmetic (verified against transformers 5.23 forward code):

* Qwen2-Audio, Audio Flamingo 3, Qwen2.5-Omni: valid mel frames ``L`` -> ``((L - 1) // 2 + 1 - 2) // 2 + 1`` tokens
  (conv stride 2, then avg-pool 2). Qwen2-Audio and AF3 additionally require the mel axis padded to exactly
  ``2 * max_source_positions`` frames; the mask (``feature_attention_mask`` / ``input_features_mask``) marks the valid
  frames. Qwen2.5-Omni takes any padded length (it chunks by ``2 * n_window`` frames).
* Voxtral: no mask; each ``2 * max_source_positions``-frame chunk gives
  ``max_source_positions * d_model / intermediate_size`` tokens (frames are concatenated 4-to-1 in the real model).
  In the real processors one ``input_features`` row is one 30-s window, so AF3/Voxtral rows need not match prompt rows.
* Qwen2.5-Omni: the placeholders sit between ``audio_start_token_id`` and ``audio_end_token_id`` (its 3-D rope index
  reads ``vision_start_token_id`` too, which the tiny config therefore sets).

Also: ``build_qwen25_omni_full`` (full Omni model, thinker only), ``build_tiny_moe`` (must be rejected),
``build_tiny_text_lm`` (plain decoder for the generic adapter), ``text_only_inputs``.

Usage::

    from tiny_models import build_tiny, tiny_inputs  # tests/ is on sys.path under pytest
    model = build_tiny("qwen2-audio")
    inputs = tiny_inputs("qwen2-audio", model, batch=2)
    logits = model(**inputs).logits
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VOCAB = 256
HIDDEN = 32
INTERMEDIATE = 64
N_LAYERS = 2
N_MELS = 16
MAX_SOURCE_POSITIONS = 16  # -> Qwen2-Audio / AF3 / Voxtral need exactly 32 mel frames

# Special token ids, kept inside the tiny vocabulary; ordinary text tokens are drawn from [TEXT_LO, TEXT_HI).
PAD_ID = 0
AUDIO_ID = 250
IMAGE_ID = 251
VIDEO_ID = 252
AUDIO_BOS_ID = 248
AUDIO_EOS_ID = 249
VISION_BOS_ID = 247
TEXT_LO, TEXT_HI = 3, 240

FAMILIES = ("qwen2-audio", "qwen2.5-omni", "audio-flamingo-3", "voxtral")


def _text_config(model_type: str | None = "qwen2", **extra) -> dict:
    cfg = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
        **extra,
    )
    if model_type is not None:
        cfg["model_type"] = model_type
    return cfg


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and eager attention so tiny-model numerics are deterministic across batch compositions."""
    model.eval()
    model.config._attn_implementation = "eager"
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = "eager"
    return model


def build_qwen2_audio(seed: int = 0):
    """Qwen2AudioForConditionalGeneration: gates at model.model.language_model.layers[i].mlp.act_fn."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    cfg = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            d_model=HIDDEN,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            encoder_layers=1,
            num_mel_bins=N_MELS,
            max_source_positions=MAX_SOURCE_POSITIONS,
        ),
        text_config=_text_config("qwen2"),
        audio_token_index=AUDIO_ID,
    )
    torch.manual_seed(seed)
    return _finish(Qwen2AudioForConditionalGeneration(cfg))


def _omni_thinker_config():
    from transformers import Qwen2_5OmniThinkerConfig

    return Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            d_model=HIDDEN,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            encoder_layers=1,
            num_mel_bins=N_MELS,
            max_source_positions=64,
            n_window=8,
            output_dim=HIDDEN,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=HIDDEN,
            fullatt_block_indexes=[0],
        ),
        text_config=_text_config(
            None, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])
        ),
        audio_token_index=AUDIO_ID,
        image_token_index=IMAGE_ID,
        video_token_index=VIDEO_ID,
        audio_start_token_id=AUDIO_BOS_ID,
        audio_end_token_id=AUDIO_EOS_ID,
        # Not a declared field in 5.23 but read by get_rope_index (the released config.json carries it).
        vision_start_token_id=VISION_BOS_ID,
    )


def build_qwen25_omni_thinker(seed: int = 0):
    """Qwen2_5OmniThinkerForConditionalGeneration. Its vision tower also has `mlp.act_fn` modules (must be ignored)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(seed)
    return _finish(Qwen2_5OmniThinkerForConditionalGeneration(_omni_thinker_config()))


def build_qwen25_omni_full(seed: int = 0):
    """The full Qwen2_5OmniForConditionalGeneration without talker/token2wav (``enable_audio_output=False``):
    gates at ``thinker.model.language_model.layers[i].mlp.act_fn``. It has no text forward of its own."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the default talker config's token ids exceed its tiny default vocab: noise only
    try:
        cfg = Qwen2_5OmniConfig(thinker_config=_omni_thinker_config().to_dict(), enable_audio_output=False)
    finally:
        logging.set_verbosity(verbosity)
    torch.manual_seed(seed)
    return _finish(Qwen2_5OmniForConditionalGeneration(cfg))


def build_audio_flamingo3(seed: int = 0):
    """AudioFlamingo3ForConditionalGeneration (Whisper-style encoder + Qwen2 decoder)."""
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration

    cfg = AudioFlamingo3Config(
        audio_config=dict(
            hidden_size=HIDDEN,
            num_attention_heads=2,
            intermediate_size=64,
            num_hidden_layers=1,
            num_mel_bins=N_MELS,
            max_source_positions=MAX_SOURCE_POSITIONS,
        ),
        text_config=_text_config("qwen2"),
        audio_token_id=AUDIO_ID,
    )
    torch.manual_seed(seed)
    return _finish(AudioFlamingo3ForConditionalGeneration(cfg))


def build_voxtral(seed: int = 0):
    """VoxtralForConditionalGeneration (Whisper-style encoder + Llama decoder).

    The projector consumes `intermediate_size`-wide rows, i.e. intermediate/d_model encoder frames per audio token:
    here 128/32 = 4, like the real 5120/1280.
    """
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    cfg = VoxtralConfig(
        audio_config=dict(
            hidden_size=HIDDEN,
            num_attention_heads=2,
            intermediate_size=4 * HIDDEN,
            num_hidden_layers=1,
            num_mel_bins=N_MELS,
            max_source_positions=MAX_SOURCE_POSITIONS,
        ),
        text_config=_text_config("llama", head_dim=8),
        audio_token_id=AUDIO_ID,
    )
    torch.manual_seed(seed)
    return _finish(VoxtralForConditionalGeneration(cfg))


BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {
    "qwen2-audio": build_qwen2_audio,
    "qwen2.5-omni": build_qwen25_omni_thinker,
    "audio-flamingo-3": build_audio_flamingo3,
    "voxtral": build_voxtral,
}


def build_tiny(family: str, seed: int = 0) -> torch.nn.Module:
    """Build the tiny model for a family name (see FAMILIES)."""
    return BUILDERS[family](seed=seed)


def audio_tokens_for_frames(n_frames: int) -> int:
    """Placeholder tokens for `n_frames` valid mel frames (Qwen2-Audio, AF3, Qwen2.5-Omni): conv /2 then pool /2."""
    return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def _voxtral_tokens_per_chunk(model) -> int:
    a = model.config.audio_config
    return a.max_source_positions * a.hidden_size // a.intermediate_size


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad so that position -1 is every row's last real token (what last-token scoring reads)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def tiny_inputs(
    family: str,
    model: torch.nn.Module | None = None,
    *,
    batch: int = 2,
    text_len: int = 5,
    seed: int = 0,
    ragged: bool = False,
) -> dict[str, torch.Tensor]:
    """Valid forward kwargs for the tiny model of `family`: one audio clip per row, text before and after it.

    `ragged=True` gives rows different audio lengths (hence different numbers of audio tokens and left padding),
    except for Voxtral, whose encoder has no frame mask. Deterministic in `seed`.
    """
    g = torch.Generator().manual_seed(seed)
    n_pad_frames = 2 * MAX_SOURCE_POSITIONS

    def text(n: int) -> list[int]:
        return torch.randint(TEXT_LO, TEXT_HI, (n,), generator=g).tolist()

    frames = [n_pad_frames - (3 * i if ragged else 0) for i in range(batch)]
    if family == "voxtral":
        if model is None:
            raise ValueError("voxtral inputs need the model (tokens per chunk depend on its config)")
        n_tok = _voxtral_tokens_per_chunk(model)
        rows = [text(2) + [AUDIO_ID] * n_tok + text(text_len) for _ in range(batch)]
        ids, mask = _left_pad(rows)
        feats = torch.randn(batch, N_MELS, n_pad_frames, generator=g)
        return {"input_ids": ids, "attention_mask": mask, "input_features": feats}

    feats = torch.randn(batch, N_MELS, n_pad_frames, generator=g)
    fmask = torch.zeros(batch, n_pad_frames, dtype=torch.long)
    for i, f in enumerate(frames):
        fmask[i, :f] = 1
        feats[i, :, f:] = 0.0
    if family == "qwen2.5-omni":
        rows = [
            text(2) + [AUDIO_BOS_ID] + [AUDIO_ID] * audio_tokens_for_frames(f) + [AUDIO_EOS_ID] + text(text_len)
            for f in frames
        ]
    else:
        rows = [text(2) + [AUDIO_ID] * audio_tokens_for_frames(f) + text(text_len) for f in frames]
    ids, mask = _left_pad(rows)
    out = {"input_ids": ids, "attention_mask": mask, "input_features": feats}
    if family == "audio-flamingo-3":
        out["input_features_mask"] = fmask
    elif family in ("qwen2-audio", "qwen2.5-omni"):
        out["feature_attention_mask"] = fmask
    else:
        raise KeyError(f"unknown family {family!r}; known: {FAMILIES}")
    return out


def text_only_inputs(batch: int = 2, seq: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Text-only inputs (every family accepts them), for tests that do not need the audio path."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(TEXT_LO, TEXT_HI, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build_tiny_moe(seed: int = 0) -> torch.nn.Module:
    """A tiny mixture-of-experts causal LM (Qwen2-MoE): its layers have `mlp.experts`, so it must be rejected."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(seed)
    return _finish(Qwen2MoeForCausalLM(cfg))


def build_tiny_text_lm(seed: int = 0) -> torch.nn.Module:
    """A plain tiny Qwen2ForCausalLM: the generic adapter should handle it (model.model.layers)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return _finish(Qwen2ForCausalLM(Qwen2Config(**_text_config(None))))


class TinySubject:
    """What the tests' Subjects over a tiny model share (subclasses set ``model``, ``labels``, ``label_ids`` and
    build the inputs): each label's answer token ``label_ids[k]`` is read at the last position (constrained
    scoring), and a batch's masks come from its token ids (audio = the audio placeholders)."""

    labels: tuple[str, ...]
    label_ids: torch.Tensor

    def make_batch(self, inputs: dict[str, torch.Tensor], text: torch.Tensor | None = None):
        """A :class:`helpers.core.subject.Batch` of ``inputs``; ``text`` marks the text positions (default: not
        audio)."""
        from helpers.core.subject import Batch

        ids = inputs["input_ids"]
        audio = ids == AUDIO_ID
        last = torch.zeros_like(audio)
        last[:, -1] = True
        masks = {"all": torch.ones_like(audio), "audio": audio, "text": ~audio if text is None else text, "last": last}
        return Batch(inputs=inputs, candidates=self.label_ids.expand(len(ids), -1).clone(), masks=masks)

    def label_logits(self, batch, logits: torch.Tensor) -> torch.Tensor:
        from helpers.core.subject import candidate_logits

        return candidate_logits(logits, batch)

    def position_masks(self, batch) -> dict[str, torch.Tensor]:
        return batch.masks
