"""An item's prompt for a real model: the prompt styles (shuffled multiple choice, label words), the answer
strings and the candidate token matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.prompts import LETTERS, label_word_prompt, multiple_choice_prompt

#: ``multiple_choice``: lettered options shuffled per item, letters scored **[later]**; ``label_words``: the
#: label words listed in a fixed order and their first tokens scored.
PROMPT_STYLES: tuple[str, ...] = ("multiple_choice", "label_words")


DEFAULT_QUESTION = "What emotion does the speaker express in this audio?"


#: A string no tokenizer or template contains; used to split a chat template around the user text.
_USER_MARK = "\u2063ESN-USER-TEXT\u2063"


# ---------------------------------------------------------------------------------------------------------------------
# Prompts and candidates (pure)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemPrompt:
    """The user text of one item and, for each label in label order, the answer string that means it."""

    text: str
    answers: tuple[str, ...]


def _check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {list(PROMPT_STYLES)}")
    return style


def item_prompt(
    labels: Sequence[str],
    *,
    style: str = "multiple_choice",
    question: str = DEFAULT_QUESTION,
    seed: int = 0,
    item_id: Any = 0,
    context: str | None = None,
    context_format: str | None = None,
) -> ItemPrompt:
    """User text (without chat template) for one item, and the answer for each label.

    ``context_format`` (e.g. ``"Transcript: {text}\\n"``) puts the row's text before the question when given and
    the text is not empty: the grounding chapter needs prompts whose text can agree or conflict with the audio.
    """
    _check_style(style)
    prefix = context_format.format(text=context) if context_format and context else ""
    if style == "multiple_choice":
        mc = multiple_choice_prompt(prefix + question, labels, seed=seed, item_id=item_id)
        return ItemPrompt(mc.text, tuple(mc.letter_of(lbl) for lbl in labels))
    return ItemPrompt(label_word_prompt(prefix + question, labels), tuple(labels))


def answer_strings(labels: Sequence[str], style: str) -> list[str]:
    """Every answer a prompt of ``style`` can ask for: letters ``A..`` or the label words."""
    _check_style(style)
    return list(LETTERS[: len(labels)]) if style == "multiple_choice" else list(labels)


def candidate_matrix(prompts: Sequence[ItemPrompt], answer_ids: Mapping[str, int]) -> torch.Tensor:
    """``[B, n_labels]`` token ids: row b, column j = the token answering ``labels[j]`` in prompt b.

    Gathering with this matrix *is* the un-shuffling: scores come back in label order whatever the letter order.
    """
    if not prompts:
        raise ValueError("no prompts")
    missing = sorted({a for p in prompts for a in p.answers} - set(answer_ids))
    if missing:
        raise KeyError(f"no token id for answer(s) {missing}")
    return torch.tensor([[int(answer_ids[a]) for a in p.answers] for p in prompts], dtype=torch.long)


__all__ = [
    "DEFAULT_QUESTION",
    "PROMPT_STYLES",
    "ItemPrompt",
    "answer_strings",
    "candidate_matrix",
    "item_prompt",
]
