"""What every stage needs from the model under study, whether the organism or a real LALM.

A *subject* wraps a model with its prompt and answer reading, so stages never care which family it is:
``batch_inputs`` turns rows of the unified schema into a :class:`Batch` (model inputs, each row's answer tokens,
its position masks); ``label_logits(batch, logits)`` reads the answer by constrained scoring and
``position_masks(batch)`` says which token positions are audio, text or the answer position.

The subject is **stateless**: everything that belongs to a batch (the shuffled option letters of a
multiple-choice prompt above all) travels in the batch, so preparing a second batch before reading the first
one's answers (as patching does with a base and a counterfactual batch) cannot mix them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import torch
from torch import nn

#: The position kinds every subject provides (bool [B, T] masks).
MASK_KINDS: tuple[str, ...] = ("all", "audio", "text", "last")


def _tile(x: Any, n: int) -> Any:
    return torch.cat([x] * n) if isinstance(x, torch.Tensor) and x.ndim > 0 else x


@dataclass(frozen=True)
class Batch:
    """One batch of items, self-contained.

    ``inputs`` are the model's keyword arguments; ``candidates[i, k]`` is the answer token id of label ``k`` in
    row ``i`` (rows differ when option letters are shuffled per item); ``masks`` are bool ``[B, T]`` position
    masks (:data:`MASK_KINDS`). ``meta`` holds per-batch extras a subject wants to keep with it.
    """

    inputs: dict[str, Any]
    candidates: torch.Tensor
    masks: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.candidates.shape[0]
        for k, m in self.masks.items():
            if m.shape[0] != n:
                raise ValueError(f"mask {k!r} has {m.shape[0]} rows but the batch has {n} candidate rows")

    def __len__(self) -> int:
        return int(self.candidates.shape[0])

    @property
    def input_ids(self) -> torch.Tensor | None:
        ids = self.inputs.get("input_ids")
        return ids if isinstance(ids, torch.Tensor) else self.meta.get("input_ids")

    def tile(self, n: int) -> Batch:
        """The whole batch repeated ``n`` times along dim 0 (rows ``[x0..xB-1, x0..xB-1, ...]``), so ``n``
        conditions run in one forward pass. Tiling (not interleaving) keeps every family's audio-to-row
        correspondence even where ``input_features`` has one row per 30-s chunk (Voxtral, Audio Flamingo 3)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if n == 1:
            return self
        return Batch(
            inputs={k: _tile(v, n) for k, v in self.inputs.items()},
            candidates=_tile(self.candidates, n),
            masks={k: _tile(v, n) for k, v in self.masks.items()},
            meta={k: _tile(v, n) for k, v in self.meta.items()},
        )


def last_position_logits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[B, V]`` logits at each row's answer position (``batch.masks['last']``); ``[B, V]`` passes through."""
    if logits.ndim == 2:
        return logits
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, V] or [B, T, V], got shape {tuple(logits.shape)}")
    last = batch.masks["last"].to(logits.device)
    if last.shape[1] != logits.shape[1] or last.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits of shape {tuple(logits.shape[:2])} do not match the batch's {tuple(last.shape)} positions"
        )
    idx = last.int().argmax(-1)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx]


def candidate_logits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[B, n_labels]`` logits of each row's answer tokens, in label order."""
    last = last_position_logits(logits, batch)
    cand = batch.candidates.to(last.device)
    if cand.shape[0] != last.shape[0]:
        raise ValueError(f"logits have {last.shape[0]} rows but the batch has {cand.shape[0]}")
    return last.gather(-1, cand)


@runtime_checkable
class Subject(Protocol):
    model: nn.Module
    labels: tuple[str, ...]

    def batch_inputs(self, rows: pd.DataFrame) -> Batch:
        """A self-contained batch for the items in ``rows`` (unified schema)."""
        ...

    def label_logits(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """[B, n_labels] answer scores of ``batch`` from the model's logits ([B, T, V] or the answer position's
        [B, V])."""
        ...

    def position_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Bool [B, T] masks named ``all``, ``audio``, ``text`` and ``last`` (the answer position)."""
        ...
