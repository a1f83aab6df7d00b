"""The SAEs' training data: the gate vector at the answer position (``positions="last"``, as chapter 01 logs) of
correctly answered identification items, streamed from the one logging loop
(:func:`helpers.log.activation_log.gate_batches`) into a bounded :class:`Reservoir` (never the activations of
every position)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..core.models import gate_shape
from ..core.subject import Subject
from ..log.activation_log import counted, gate_batches


class Reservoir:
    """A uniform sample of at most ``capacity`` rows of a stream (Vitter's algorithm R), each with a label.

    Memory is ``capacity x shape`` whatever the stream's length; with a capacity at least the stream's length
    it keeps every row, in order. Seeded: the same stream and seed keep the same rows.
    """

    def __init__(self, capacity: int, shape: Sequence[int], *, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ValueError(f"reservoir capacity must be a positive integer, got {capacity!r}")
        self.capacity: int = int(capacity)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.rows: torch.Tensor = torch.zeros(self.capacity, *self.shape)
        self.labels: torch.Tensor = torch.zeros(self.capacity, dtype=torch.long)
        self.seen: int = 0
        self._gen: torch.Generator = torch.Generator().manual_seed(int(seed))

    def add(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        rows, labels = torch.as_tensor(rows).float(), torch.as_tensor(labels).long()
        if tuple(rows.shape[1:]) != self.shape or len(labels) != len(rows):
            raise ValueError(f"rows must be [B, {list(self.shape)}] with B labels, got {tuple(rows.shape)} and "
                             f"{len(labels)} labels")
        for r, y in zip(rows, labels, strict=True):
            if self.seen < self.capacity:
                slot = self.seen
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,), generator=self._gen))
            if slot < self.capacity:
                self.rows[slot], self.labels[slot] = r, y
            self.seen += 1

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows [n, *shape], labels [n])`` kept so far."""
        return self.rows[: len(self)], self.labels[: len(self)]


@dataclass
class AnswerGates:
    """Answer-position gates of a pass over items: the reservoir of counted rows (``[n, L, N]`` + labels) and
    each item's true label and prediction (the un-intervened model's, for the baseline of an intervention)."""

    reservoir: Reservoir
    y_true: np.ndarray
    y_pred: np.ndarray


@torch.no_grad()
def answer_gates(subject: Subject, df: pd.DataFrame, *, capacity: int, seed: int = 0, only_correct: bool = True,
                 batch_size: int = 64, progress: bool = False) -> AnswerGates:
    """Stream the gates at the answer position (``positions="last"``) into a bounded reservoir.

    Uses chapter 01's logging loop: with one counted position per row its per-row sums *are* the gate values, so
    no other trace is needed; rows the model answers wrongly are left out when ``only_correct``.
    """
    n_layers, n_neurons = gate_shape(subject.model)
    res = Reservoir(capacity, (n_layers, n_neurons), seed=seed)
    y_true, y_pred = [], []
    for gb in gate_batches(subject, df, positions="last", batch_size=batch_size, progress=progress,
                           desc="answer-position gates"):
        if not bool((gb.n_tokens == 1).all()):
            raise ValueError("the 'last' position mask must count exactly one position per row")
        keep = counted(gb, only_correct)
        rows = torch.stack([s[1] for s in gb.sums], dim=1)  # [B, L, N]: the sums over one position
        res.add(rows[keep], gb.y[keep])
        y_true.append(gb.y.numpy())
        y_pred.append(gb.pred.numpy())
    return AnswerGates(res, np.concatenate(y_true), np.concatenate(y_pred))


__all__ = ["AnswerGates", "Reservoir", "answer_gates"]
