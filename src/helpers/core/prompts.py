"""Prompt building (pure string functions) and constrained scoring of the answer candidates."""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# --------------------------------------------------------------------------------------------------------------------
# Prompt building (pure string functions) and constrained scoring
# --------------------------------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class MCPrompt:
    """A multiple-choice question with its (shuffled) option order; ``letters[i]`` labels ``options[i]``."""

    text: str
    letters: tuple[str, ...]
    options: tuple[str, ...]

    def letter_of(self, option: str) -> str:
        return self.letters[self.options.index(option)]

    def option_of(self, letter: str) -> str:
        return self.options[self.letters.index(letter)]


def shuffled_options(options: Sequence[str], seed: int, item_id: Any) -> list[str]:
    """Options in an order fixed by ``(seed, item_id)``: shuffled per item so that letter position cannot carry the
    answer, yet reproducible run to run (string seeding is stable across processes, unlike ``hash``)."""
    order = list(options)
    random.Random(f"{seed}:{item_id}").shuffle(order)
    return order


def multiple_choice_prompt(
    question: str,
    options: Sequence[str],
    *,
    seed: int = 0,
    item_id: Any = 0,
    shuffle: bool = True,
    instruction: str = "Answer with the letter of the correct option only.",
) -> MCPrompt:
    """``question`` + lettered options (shuffled per item when ``shuffle``) + an answer instruction."""
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
    if len(set(options)) != len(options):
        raise ValueError(f"options must be distinct, got {list(options)}")
    opts = shuffled_options(options, seed, item_id) if shuffle else list(options)
    letters = tuple(LETTERS[: len(opts)])
    lines = [question.strip()] + [f"{ltr}. {opt}" for ltr, opt in zip(letters, opts, strict=True)]
    if instruction:
        lines.append(instruction)
    return MCPrompt(text="\n".join(lines), letters=letters, options=tuple(opts))


def label_word_prompt(
    question: str, labels: Sequence[str], *, instruction: str = "Answer with one word from: {labels}."
) -> str:
    """``question`` + the allowed label words, for scoring the label words' first tokens directly."""
    text = question.strip()
    if instruction:
        text += " " + instruction.format(labels=", ".join(labels))
    return text


def candidate_token_ids(tokenizer: Any, words: Sequence[str], *, prefix: str = "") -> torch.Tensor:
    """First token id of each answer word (as it would follow ``prefix``); refuses words sharing a first token.

    Why: constrained scoring compares the next-token probability of each answer; two answers starting with the same
    token would be indistinguishable.
    """
    ids = []
    for w in words:
        toks = tokenizer.encode(prefix + w, add_special_tokens=False)
        if prefix:
            pre = tokenizer.encode(prefix, add_special_tokens=False)
            toks = toks[len(pre) :] if toks[: len(pre)] == pre else toks
        if not toks:
            raise ValueError(f"answer {w!r} encodes to no tokens")
        ids.append(int(toks[0]))
    if len(set(ids)) != len(ids):
        clash = {w: i for w, i in zip(words, ids, strict=True)}
        raise ValueError(f"answers share a first token, constrained scoring cannot tell them apart: {clash}")
    return torch.tensor(ids, dtype=torch.long)


def score(logits_last: torch.Tensor, candidate_token_ids: torch.Tensor) -> torch.Tensor:
    """Constrained scoring: log-softmax over the whole vocabulary (float32), then the candidates' entries.

    ``logits_last``: [B, V]; ``candidate_token_ids``: [K] (shared) or [B, K] (per row, e.g. shuffled letters).
    Returns [B, K] log-probabilities; their argmax is the model's answer among the candidates.
    """
    if logits_last.ndim != 2:
        raise ValueError(f"logits_last must be [B, V], got shape {tuple(logits_last.shape)} (take logits[:, -1])")
    cand = torch.as_tensor(candidate_token_ids, device=logits_last.device).long()
    if cand.ndim == 1:
        cand = cand.unsqueeze(0).expand(logits_last.shape[0], -1)
    if cand.ndim != 2 or cand.shape[0] != logits_last.shape[0]:
        raise ValueError(f"candidate ids must be [K] or [B={logits_last.shape[0]}, K], got {tuple(cand.shape)}")
    if (cand < 0).any() or (cand >= logits_last.shape[-1]).any():
        raise ValueError(f"candidate ids out of the vocabulary range [0, {logits_last.shape[-1]})")
    return torch.log_softmax(logits_last.float(), dim=-1).gather(-1, cand)


def chatml_prompt(user_text: str, *, audio: str | None, system: str | None, audio_first: bool = True) -> str:
    """A ChatML (``<|im_start|>``) single-turn prompt with the audio placeholder, ending at the assistant turn."""
    parts = []
    if system:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    body = user_text if audio is None else (audio + user_text if audio_first else user_text + audio)
    parts.append(f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)


def _wav_base64(wave: Any, sampling_rate: int) -> str:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), sampling_rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode("ascii")

