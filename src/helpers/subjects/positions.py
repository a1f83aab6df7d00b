"""Position masks of a real model's batch (audio tokens, text, answer) from its token ids and chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.families import Adapter
from ..core.models import forward_model
from .item_prompts import _USER_MARK

# ---------------------------------------------------------------------------------------------------------------------
# Token positions (pure)
# ---------------------------------------------------------------------------------------------------------------------


def position_masks_from(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    audio_ids: Sequence[int] = (),
    special_ids: Sequence[int] = (),
    after_audio: int = 0,
    suffix: int = 0,
) -> dict[str, torch.Tensor]:
    """Bool ``[B, T]`` masks ``all`` / ``audio`` / ``text`` / ``last`` for a padded batch of prompts.

    * ``all``: attended positions (padding excluded).
    * ``audio``: the audio placeholder positions (one per audio frame embedding).
    * ``text``: the user's text — positions after the last audio token plus ``after_audio`` template tokens
      (e.g. ``<|audio_eos|>`` and a newline) and up to the last attended position minus ``suffix`` template tokens
      (e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``), minus audio and special tokens. A row without audio starts
      at its first attended token.
    * ``last``: each row's last attended position, where the answer is read (left or right padding).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    b, t = input_ids.shape
    dev = input_ids.device
    att = torch.ones(b, t, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.to(dev).bool()
    if att.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(att.shape)} does not match input_ids {tuple(input_ids.shape)}")
    pos = torch.arange(t, device=dev).expand(b, t)
    audio = torch.isin(input_ids, torch.as_tensor(list(audio_ids), dtype=input_ids.dtype, device=dev)) & att
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=dev))
    last_idx = t - 1 - att.flip(-1).int().argmax(-1)
    first_idx = att.int().argmax(-1)
    has_audio = audio.any(-1)
    last_audio = torch.where(audio, pos, torch.full_like(pos, -1)).max(-1).values
    start = torch.where(has_audio, last_audio + 1 + int(after_audio), first_idx)
    end = last_idx - int(suffix)
    text = att & ~audio & ~special & (pos >= start[:, None]) & (pos <= end[:, None])
    last = torch.zeros_like(att)
    last[torch.arange(b, device=dev), last_idx] = True
    last &= att.any(-1, keepdim=True)
    return {"all": att, "audio": audio, "text": text, "last": last}


def audio_token_ids(model: Any) -> tuple[int, ...]:
    """The audio placeholder id(s) from the (forward) model's config (``audio_token_id`` / ``audio_token_index``)."""
    cfg = getattr(forward_model(model), "config", None)
    ids: list[int] = []
    for c in (cfg, getattr(cfg, "thinker_config", None)):
        for key in ("audio_token_id", "audio_token_index"):
            v = getattr(c, key, None) if c is not None else None
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return tuple(ids)


def special_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Special and added-special token ids (chat-template markers, audio brackets), never counted as text."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return tuple(sorted(ids))


def _n_tokens(tokenizer: Any, text: str) -> int:
    if not text:
        return 0
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is not None:  # one control token such as "[/INST]" (some tokenizers would not encode it as one)
        try:
            tid = convert(text)
        except Exception:  # noqa: BLE001 - any failure just means "not a single token"
            tid = None
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            return 1
    return len(tokenizer.encode(text, add_special_tokens=False))


def template_lengths(adapter: Adapter, tokenizer: Any, audio_token: str | None) -> tuple[int, int]:
    """``(after_audio, suffix)`` token counts of the chat template around the user text, for the text mask.

    Found by rendering the adapter's template around a marker: what follows the audio token inside the audio
    placeholder (``<|audio_eos|>\\n`` for Qwen2-Audio) and what follows the user text (the assistant turn header).
    """
    prompt = adapter.prompt_text(_USER_MARK)
    if _USER_MARK not in prompt:
        return 0, 0
    suffix = prompt.split(_USER_MARK, 1)[1]
    placeholder = adapter.audio_placeholder or ""
    after = placeholder.split(audio_token)[-1] if audio_token and audio_token in placeholder else ""
    return _n_tokens(tokenizer, after), _n_tokens(tokenizer, suffix)


__all__ = [
    "audio_token_ids",
    "position_masks_from",
    "special_token_ids",
    "template_lengths",
]
