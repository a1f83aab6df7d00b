"""What every stage needs from the model under study, whether the organism or a real LALM.

A *subject* wraps a model with its prompt and answer reading, so stages never care which family it is:
``batch_inputs`` turns rows of the unified schema into model inputs, ``label_logits`` reads the answer by
constrained scoring, and ``position_masks`` says which token positions are audio, text or the answer position.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import pandas as pd
import torch
from torch import nn


@runtime_checkable
class Subject(Protocol):
    model: nn.Module
    labels: tuple[str, ...]

    def batch_inputs(self, rows: pd.DataFrame) -> dict[str, torch.Tensor]:
        """Model inputs for the items in ``rows`` (unified schema)."""
        ...

    def label_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, n_labels] answer scores from the model's logits ([B, T, V] or the answer position's [B, V])."""
        ...

    def position_masks(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Bool [B, T] masks named ``all``, ``audio``, ``text`` and ``last`` (the answer position)."""
        ...
