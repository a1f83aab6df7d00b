"""The Log stage: one nnsight trace per batch reads every decoder gate and streams per-class statistics.

Raw activations never leave the forward pass: inside the trace each layer's gate is reduced to per-row sums over
the counted positions (:func:`helpers.log.stats.row_sums`); once the answer is known, only the rows the model
answered correctly (by default) are folded into the :class:`~helpers.log.stats.StatsAccumulator`. Memory is
O(layers × neurons × classes), whatever the number of items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.hooks import trace_gates
from ..core.models import gate_shape
from ..core.subject import Subject
from ..intervene.evaluation import batches, label_indices
from .stats import ActivationStats, StatsAccumulator, row_sums

#: Which token positions count. "last" is the position where the answer is read; "audio" the audio tokens;
#: "text" the context words; "all" every position of the prompt.
POSITION_KINDS: tuple[str, ...] = ("all", "audio", "text", "last")


@dataclass
class LogResult:
    stats: ActivationStats
    items: pd.DataFrame  # one row per item: id, label, prediction, correct, counted


def check_position_kind(kind: str) -> str:
    if kind not in POSITION_KINDS:
        raise ValueError(f"unknown token-position kind {kind!r}; choose one of {list(POSITION_KINDS)}")
    return kind


@dataclass
class GateBatch:
    """One batch of the logging pass: the rows, their offset in the table, per-row gate sums over the counted
    positions (one ``[3, B, N]`` tensor per layer), the counted-token counts, predictions and true labels."""

    offset: int
    rows: pd.DataFrame
    sums: list[torch.Tensor]
    n_tokens: torch.Tensor
    pred: torch.Tensor
    y: torch.Tensor


def gate_batches(org: Subject, df: pd.DataFrame, *, positions: str = "last", batch_size: int = 64,
                 progress: bool = True, desc: str | None = None) -> Iterator[GateBatch]:
    """The one logging loop (a trace per batch, gate sums reduced inside it, the answer read at the same time);
    :func:`log_activations` and the bootstrap's :func:`helpers.identify.resampling.log_resampled_stats` fold its
    batches."""
    check_position_kind(positions)
    y_all = label_indices(df["label"], list(org.labels))
    offset = 0
    for rows in tqdm(batches(df, batch_size), desc=desc or f"logging ({positions} positions)",
                     disable=not progress, mininterval=2.0):
        batch = org.batch_inputs(rows)
        mask = org.position_masks(batch)[positions]

        def reduce(_i: int, g: torch.Tensor, m: torch.Tensor = mask) -> torch.Tensor:
            return row_sums(g, m)

        logits, sums = trace_gates(org.model, batch.inputs, reduce=reduce, logits="last")
        pred = org.label_logits(batch, cast(torch.Tensor, logits)).argmax(-1).cpu()  # logits="last": a tensor
        yield GateBatch(offset, rows, sums, mask.sum(1), pred, torch.from_numpy(y_all[offset : offset + len(rows)]))
        offset += len(rows)


#: Columns of the per-item table the Log stage returns.
ITEM_COLUMNS = ("clip_id", "label", "pred", "correct", "counted")


def counted(gb: GateBatch, only_correct: bool) -> torch.Tensor:
    """Which rows of a batch count: those answered correctly (``only_correct``) or all."""
    correct = gb.pred == gb.y
    return correct if only_correct else torch.ones_like(correct)


def item_records(gb: GateBatch, labels: Sequence[str], only_correct: bool) -> pd.DataFrame:
    """The per-item table rows (:data:`ITEM_COLUMNS`) of one batch."""
    rows = gb.rows
    return pd.DataFrame({
        "clip_id": rows["clip_id"].to_numpy() if "clip_id" in rows else rows["path"].to_numpy(),
        "label": rows["label"].to_numpy(), "pred": [labels[i] for i in gb.pred.tolist()],
        "correct": (gb.pred == gb.y).numpy(), "counted": counted(gb, only_correct).numpy(),
    })


@torch.no_grad()
def log_activations(org: Subject, df: pd.DataFrame, *, positions: str = "last", only_correct: bool = True,
                    batch_size: int = 64, progress: bool = True) -> LogResult:
    """Stream gate statistics of ``df``'s items through the model (one trace per batch).

    ``positions`` chooses the counted token positions (:data:`POSITION_KINDS`); ``only_correct`` counts only
    items the un-intervened model answers correctly, as the paper does.
    """
    labels = list(org.labels)
    n_layers, n_neurons = gate_shape(org.model)
    acc = StatsAccumulator(n_layers, n_neurons, labels)
    records = []
    for gb in gate_batches(org, df, positions=positions, batch_size=batch_size, progress=progress):
        acc.update_rows(gb.sums, gb.n_tokens, gb.y, counted(gb, only_correct))
        records.append(item_records(gb, labels, only_correct))
    stats = acc.result(meta={"positions": positions, "only_correct": only_correct})
    check_counted(stats, df, labels, only_correct)
    items = pd.concat(records, ignore_index=True) if records else pd.DataFrame(columns=list(ITEM_COLUMNS))
    return LogResult(stats=stats, items=items)


def check_counted(stats: ActivationStats, df: pd.DataFrame, labels: Sequence[str], only_correct: bool) -> None:
    """Refuse statistics in which some class has no counted token, saying whether its items were missing from
    ``df`` or all answered wrongly (selectors would otherwise divide by zero or rank noise)."""
    labels = list(labels)
    empty = stats.empty_classes()
    present = set(df["label"])
    no_items = [lbl for lbl in empty if lbl not in present]
    if no_items:
        raise ValueError(
            f"no counted tokens for class(es) {empty}: there are no items of {no_items} among the {len(df)} items "
            f"given (labels present: {sorted(present)}; the subject's labels: {labels}); check the split and `labels` "
            "in the config (they must be the subject's labels), or add items of those emotions to the dataset"
        )
    if empty:
        raise ValueError(
            f"no counted tokens for class(es) {empty}: the model answered none of their items correctly "
            f"({'only_correct=True' if only_correct else 'check the token mask'}); add identification items, "
            "use a different token-position kind, or set only_correct=False"
        )


def layer_profile(stats: ActivationStats) -> pd.DataFrame:
    """Per layer and class: mean activation probability and mean activation over neurons (for a first look)."""
    prob, mean = stats.prob.mean(1), stats.mean.mean(1)  # [L, C]
    rows = []
    for c, label in enumerate(stats.labels):
        for layer in range(stats.n_layers):
            rows.append({"layer": layer, "label": label, "p_active": float(prob[layer, c]),
                         "mean_activation": float(mean[layer, c])})
    return pd.DataFrame(rows)


class _TokenizedSubject(Subject, Protocol):
    """A subject with a tokenizer (the organism and :class:`~helpers.subjects.adapters.AdapterSubject` both have
    one)."""

    @property
    def tokenizer(self) -> Any: ...


def one_item_gates(org: _TokenizedSubject, row: pd.DataFrame) -> tuple[np.ndarray, Sequence[str]]:
    """Raw gate values of one item, [L, T, N], with the token strings — only for showing what is hooked."""
    batch = org.batch_inputs(row.head(1))
    _, gates = trace_gates(org.model, batch.inputs, logits="none")
    ids = batch.input_ids
    assert ids is not None, "the subject's batch carries no token ids"
    tokens = org.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return torch.stack([g[0] for g in gates]).float().numpy(), tokens
