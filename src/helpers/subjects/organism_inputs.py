"""The organism's inputs: its prompt words with the per-item letter order, and the audio (waves, the cache of
encoder outputs, their merge into the prompt)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.prompts import shuffled_options
from ..data.corpus import SAMPLE_RATE
from .organism_model import ANSWER, AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN, LETTERS, option_token

# ----------------------------------------------------------------------------------------------- prompts


def option_order(labels: Sequence[str], key: Any, seed: int, answer_format: str) -> list[str]:
    """The labels in the order the prompt lists them: shuffled per ``key`` (the item's matched set) or fixed."""
    return shuffled_options(labels, seed, key) if answer_format == "shuffled_letters" else list(labels)


def prompt_words(context: str, order: Sequence[str], answer_format: str, n_audio: int) -> list[str]:
    """The prompt as words (``AUDIO_TOKEN`` repeated ``n_audio`` times); every prompt has the same length."""
    words = context.split()
    if len(words) != 3:
        raise ValueError(f"organism context phrases have exactly 3 words (fixed prompt length); got {context!r}")
    if answer_format == "shuffled_letters":
        options = [option_token(letter, lbl) for letter, lbl in zip(LETTERS, order, strict=False)]
    else:
        options = list(order)
    return [AUDIO_BOS, *[AUDIO_TOKEN] * n_audio, AUDIO_EOS, "context", ":", *words, ".", "options", ":",
            *options, ".", *ANSWER.split()]


def _shuffle_key(rows: pd.DataFrame) -> list[Any]:
    for col in ("matched_id", "clip_id", "path"):
        if col in rows.columns:
            return rows[col].tolist()
    raise ValueError("items need a `matched_id`, `clip_id` or `path` column to seed their option order")


# ----------------------------------------------------------------------------------------------- audio


def load_waves(paths: Sequence[str]) -> list[np.ndarray]:
    from ..data.audio import load_audio

    return [load_audio(p, SAMPLE_RATE) for p in paths]


class AudioCache:
    """The frozen tower's output per audio file, computed once and reused; the trained projector is applied on
    every read, so training the projector never leaves the cache stale.

    Why: Whisper is most of a forward pass and no decoder-gate edit can change its output, so every condition
    of a sweep (and every stage of a run) would recompute the same thing. Bounded (least recently used out;
    25 x 384 floats, 38 KB, per clip); keyed by path, so it assumes audio files do not change while a subject is
    alive.
    """

    def __init__(self, max_items: int = 6000, enabled: bool = True) -> None:
        """``enabled=False`` keeps nothing: every read runs the tower (the uncached reference of ``make bench``)."""
        self.max_items = max_items
        self.enabled = enabled
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: str) -> torch.Tensor | None:
        out = self._store.get(key)
        if out is not None:
            self._store.move_to_end(key)
            self.hits += 1
        return out

    def put(self, key: str, value: torch.Tensor) -> None:
        self.misses += 1
        self._store[key] = value
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)


@torch.no_grad()
def encoder_outputs(model: Any, feats: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The frozen tower's output (before the trained projector): what the caches hold. The projector on top
    gives the audio-token embeddings exactly as ``Qwen2AudioModel.forward`` computes them (full mask).

    ``model`` (here and in the other functions taking ``model: Any``) is the organism's transformers
    ``Qwen2AudioForConditionalGeneration``, reached by duck typing (``model.model.audio_tower``), which
    ``nn.Module.__getattr__`` would type ``Tensor | Module``."""
    tower = model.model.audio_tower
    return torch.cat([tower(feats[i : i + batch]).last_hidden_state for i in range(0, len(feats), batch)])


def merge_audio(model: Any, input_ids: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
    """Text embeddings with the audio placeholders replaced by ``audio_emb`` (what the model's forward does)."""
    embeds = model.model.get_input_embeddings()(input_ids)
    mask = (input_ids == model.config.audio_token_id).unsqueeze(-1)
    return embeds.masked_scatter(mask, audio_emb.reshape(-1, audio_emb.shape[-1]).to(embeds.dtype))

