"""Variability over the identification sample: resample the identify split, re-accumulate the stats, re-select.

The item bootstrap of chapter 03 keeps the neuron sets fixed and resamples the *evaluation* items. How much the
sets themselves depend on which identification items were drawn is a second source of variance. Here each
replicate ``r`` resamples the identify items with replacement *within each true class* (class sizes fixed) as
integer weights ``w[r, i]`` (how often item ``i`` is drawn), and the gate statistics of all replicates are
accumulated in ONE pass over the items: an item's per-row sums (:func:`helpers.log.stats.row_sums`) are added to
replicate ``r`` with weight ``w[r, i]``. That is exactly the stats a separate logging run over the resampled
items would give, at the cost of one logging run plus ``R`` accumulators (``R x 3 x L x N x C`` float64: 20
replicates of a 28 x 18944-gate model with 4 classes take about 1 GB).

:func:`identification_resamples` re-selects every replicate's neurons;
:func:`helpers.intervene.deactivation.identification_variability` deactivates them on the evaluation items.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.models import gate_shape
from ..core.subject import Subject
from ..intervene.evaluation import label_indices
from ..log.activation_log import check_position_kind, gate_batches
from ..log.stats import ActivationStats
from .selection import SelectionShortfall, select

Selection = dict[str, torch.Tensor]


def stratified_weights(classes: Sequence[int] | np.ndarray, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n_items]`` integer weights: per replicate, each class's items drawn with replacement as
    many times as the class has items (a stratified bootstrap), recorded as how often each item was drawn."""
    y = np.asarray(classes)
    if y.ndim != 1:
        raise ValueError(f"classes must be 1-D, got shape {y.shape}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    rng = np.random.default_rng(seed)
    w = np.zeros((n_resamples, y.size), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        w[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n_resamples)
    return w


class ResampledStatsAccumulator:
    """Like :class:`helpers.log.stats.StatsAccumulator` (``update_rows``), for ``R`` weighted replicates at once.

    ``weights`` [R, n_items]: replicate ``r`` counts item ``i`` ``weights[r, i]`` times (from
    :func:`stratified_weights`). With all weights 1 and ``R = 1`` the result equals the plain accumulator's.
    """

    def __init__(self, n_layers: int, n_neurons: int, labels: Sequence[str], weights: np.ndarray | torch.Tensor,
                 device: str | torch.device = "cpu") -> None:
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if w.ndim != 2 or w.shape[0] < 1:
            raise ValueError(f"weights must be [n_resamples, n_items], got shape {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise ValueError("weights must be >= 0")
        self.labels = list(labels)
        self.n_layers, self.n_neurons, self.n_classes = int(n_layers), int(n_neurons), len(self.labels)
        self.device = torch.device(device)
        self.weights = w.to(self.device)
        r = int(w.shape[0])
        kw: dict[str, Any] = {"dtype": torch.float64, "device": self.device}
        self.tokens = torch.zeros(r, self.n_classes, **kw)
        self.items = torch.zeros(r, self.n_classes, **kw)
        shape = (r, self.n_layers, self.n_neurons, self.n_classes)
        self.active, self.total, self.total_sq = (torch.zeros(shape, **kw) for _ in range(3))

    @property
    def n_resamples(self) -> int:
        return int(self.weights.shape[0])

    def update_rows(self, layer_rows: Sequence[torch.Tensor], n_tokens: torch.Tensor, class_idx: torch.Tensor,
                    item_index: Sequence[int] | np.ndarray | torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Add one batch: per-layer row sums ``[3, B, N]``, tokens counted per row ``[B]``, classes ``[B]``, the
        rows' positions in the weights' item axis ``[B]`` and which rows count at all (e.g. answered correctly)."""
        if len(layer_rows) != self.n_layers:
            raise ValueError(f"got row sums for {len(layer_rows)} layers, expected {self.n_layers}")
        class_idx = torch.as_tensor(class_idx).long().cpu()
        idx = torch.as_tensor(np.asarray(item_index), dtype=torch.long)
        if idx.shape != class_idx.shape:
            raise ValueError(f"item_index has shape {tuple(idx.shape)} for {class_idx.shape[0]} rows")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.weights.shape[1]):
            raise ValueError(f"item_index outside the {self.weights.shape[1]} weighted items")
        n_tokens = torch.as_tensor(n_tokens).to(torch.float64).cpu()
        keep_t = torch.ones_like(class_idx, dtype=torch.bool) if keep is None else torch.as_tensor(keep).bool().cpu()
        keep_t = keep_t & (n_tokens > 0)
        onehot = torch.nn.functional.one_hot(class_idx, self.n_classes).to(torch.float64)  # [B, C]
        w = self.weights[:, idx].cpu() * keep_t[None].to(torch.float64)  # [R, B]
        coef = w[:, :, None] * onehot[None]  # [R, B, C]
        self.items += coef.sum(1).to(self.device)
        self.tokens += (coef * n_tokens[None, :, None]).sum(1).to(self.device)
        for layer, rows in enumerate(layer_rows):
            if tuple(rows.shape) != (3, class_idx.shape[0], self.n_neurons):
                raise ValueError(f"layer {layer} row sums have shape {tuple(rows.shape)}, expected "
                                 f"(3, {class_idx.shape[0]}, {self.n_neurons})")
            c = coef.to(rows.device)
            r = rows.to(torch.float64)
            self.active[:, layer] += torch.einsum("rbc,bn->rnc", c, r[0]).to(self.device)
            self.total[:, layer] += torch.einsum("rbc,bn->rnc", c, r[1]).to(self.device)
            self.total_sq[:, layer] += torch.einsum("rbc,bn->rnc", c, r[2]).to(self.device)

    def results(self, meta: dict | None = None) -> list[ActivationStats]:
        """One :class:`~helpers.log.stats.ActivationStats` per replicate (CPU)."""
        return [
            ActivationStats(labels=list(self.labels), tokens=self.tokens[r].cpu(), items=self.items[r].cpu(),
                            active=self.active[r].cpu(), total=self.total[r].cpu(), total_sq=self.total_sq[r].cpu(),
                            meta={**dict(meta or {}), "replicate": r})
            for r in range(self.n_resamples)
        ]


@torch.no_grad()
def log_resampled_stats(subject: Subject, df: pd.DataFrame, *, n_resamples: int = 20, seed: int = 0,
                        weights: np.ndarray | None = None, positions: str = "last", only_correct: bool = True,
                        batch_size: int = 64, progress: bool = True) -> list[ActivationStats]:
    """The Log stage (:func:`helpers.log.activation_log.log_activations`: same positions, same only-correct rule)
    for ``n_resamples`` stratified bootstrap replicates of the identify items ``df`` in one pass.

    ``weights`` [R, len(df)] overrides the drawn ones (:func:`stratified_weights` of the true labels, ``seed``).
    Returns one ActivationStats per replicate; a replicate in which some class has no counted token still comes
    back (its selectors will refuse it with a message naming the class)."""
    check_position_kind(positions)
    labels = list(subject.labels)
    y_all = label_indices(df["label"], labels)
    w = stratified_weights(y_all, n_resamples, seed) if weights is None else np.asarray(weights)
    if w.ndim != 2 or w.shape[1] != len(df):
        raise ValueError(f"weights must be [n_resamples, {len(df)}], got shape {w.shape}")
    n_layers, n_neurons = gate_shape(subject.model)
    acc = ResampledStatsAccumulator(n_layers, n_neurons, labels, w)
    for gb in gate_batches(subject, df, positions=positions, batch_size=batch_size, progress=progress,
                           desc=f"logging {w.shape[0]} resamples"):
        keep = gb.pred == gb.y if only_correct else torch.ones_like(gb.y, dtype=torch.bool)
        acc.update_rows(gb.sums, gb.n_tokens, gb.y, np.arange(gb.offset, gb.offset + len(gb.rows)), keep)
    return acc.results(meta={"positions": positions, "only_correct": only_correct, "seed": seed})


def identification_resamples(replicates: Sequence[ActivationStats] | Callable[[int], ActivationStats],
                             methods: Mapping[str, Mapping[str, Any]], *, n_resamples: int | None = None
                             ) -> list[dict[str, Selection]]:
    """Re-select every replicate's neurons: ``[{name: selection}]``, one dict per replicate.

    ``replicates``: the replicate stats (:func:`log_resampled_stats`) or a callable ``r -> ActivationStats``
    (e.g. one that re-logs a resampled table; then ``n_resamples`` says how many). ``methods``: ``{name:
    select() keyword arguments}``, e.g. ``{"lap": {"fraction": 0.005}, "cas(mean)": {"method": "cas", "k": 20,
    "on": "mean"}}`` (``method`` defaults to the name). Shortfall warnings of the replicates are collected into
    one :class:`~helpers.identify.selection.SelectionShortfall` warning naming the replicates."""
    if callable(replicates):
        if n_resamples is None:
            raise ValueError("with a callable, give n_resamples")
        get, n = replicates, int(n_resamples)
    else:
        reps = list(replicates)
        get, n = reps.__getitem__, len(reps)
    out: list[dict[str, Selection]] = []
    short: dict[str, list[int]] = {}
    for r in range(n):
        stats = get(r)
        sets = {}
        for name, kw in methods.items():
            kw = dict(kw)
            method = kw.pop("method", name)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SelectionShortfall)
                sets[name] = select(stats, method, **kw)
            if any(issubclass(c.category, SelectionShortfall) for c in caught):
                short.setdefault(name, []).append(r)
        out.append(sets)
    if short:
        warnings.warn("selectors fell short of their budget in some replicates: "
                      + "; ".join(f"{k}: replicates {v}" for k, v in short.items()), SelectionShortfall, stacklevel=2)
    return out


__all__ = [
    "ResampledStatsAccumulator",
    "identification_resamples",
    "log_resampled_stats",
    "stratified_weights",
]
