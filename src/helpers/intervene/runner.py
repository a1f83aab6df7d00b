"""The one batched runner: many gate-edit conditions on the same items in as few forward passes as possible.

:func:`run_conditions` evaluates many conditions on the same items with as few forward passes as possible: for
each batch of items the inputs are tiled over a chunk of conditions (rows = conditions x items, at most
``max_rows``) and ONE :func:`~helpers.core.hooks.run_with_gate_edits` call applies a different edit to every row.
Identity conditions reuse one plain forward. :func:`run_conditions_sequential` runs the same conditions one forward
per condition and batch; it exists to check the batched runner (tests) and to measure its speedup
(``bench/benchmarks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.gate_edits import NonFiniteEditError
from ..core.hooks import run_with_gate_edits
from ..core.models import gate_shape
from ..core.subject import Batch, Subject
from .conditions import _DTYPE, Condition

#: Default cap on rows (conditions x items) per forward pass of :func:`run_conditions`. Measured on CPU
#: (``bench/benchmarks.py``): the cost per row is flat or *rises* beyond a few dozen rows (activations fall out of the
#: caches), so tiling only pays where per-call overhead dominates (small item batches, GPUs). Raise it on a GPU
#: with memory to spare (rows x sequence length x MLP width activations must fit).
DEFAULT_MAX_ROWS = 32


def _positions_for(subject: Subject, batch: Batch, positions: str) -> torch.Tensor | None:
    if positions == "all":
        return None
    masks = subject.position_masks(batch)
    if positions not in masks:
        raise ValueError(f"unknown position kind {positions!r}; this subject provides {sorted(masks)}")
    return masks[positions].bool()


def _check_conditions(conditions: Sequence[Condition], shape: tuple[int, int], n_items: int) -> None:
    for c in conditions:
        if not isinstance(c, Condition):
            raise TypeError(f"expected Condition objects, got {type(c).__name__}")
        if c.shape is not None and c.shape != shape:
            raise ValueError(
                f"condition {c.name!r} edits {c.shape[0]} x {c.shape[1]} gates but the model has "
                f"{shape[0]} x {shape[1]} (a neuron set from another model?)"
            )
        if c.per_item is not None and c.per_item.n_items != n_items:
            raise ValueError(
                f"condition {c.name!r} has per-item scales for {c.per_item.n_items} items but the table has {n_items}"
            )


def _stack_edits(parts: list[torch.Tensor | None], b: int, fill: float, shape: tuple[int, int]) -> torch.Tensor | None:
    """Rows of several conditions (each [1|b, L, N] or None) as one [len(parts) * b, L, N] tensor (None if none)."""
    if all(p is None for p in parts):
        return None
    out = torch.full((len(parts), b, *shape), fill, dtype=_DTYPE)
    for j, p in enumerate(parts):
        if p is not None:
            out[j] = p  # broadcasts a shared [1, L, N]
    return out.reshape(len(parts) * b, *shape)


def _forward(subject: Subject, batch: Batch, scale, add, positions, names: Sequence[str]) -> np.ndarray:
    try:
        logits = run_with_gate_edits(subject.model, batch.inputs, scale=scale, add=add, positions=positions,
                                     logits="last")
    except NonFiniteEditError as err:
        raise NonFiniteEditError(f"{err} (conditions in this forward pass: {list(names)})") from err
    return subject.label_logits(batch, cast(torch.Tensor, logits)).detach().float().cpu().numpy()  # logits="last"


def run_conditions(subject: Subject, df: pd.DataFrame, conditions: Sequence[Condition], *, batch_size: int = 32,
                   positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS, reuse_identity: bool = True,
                   progress: bool = True) -> np.ndarray:
    """Label logits ``[n_conditions, n_items, n_labels]`` of every condition on every item of ``df``, batched.

    For each batch of ``batch_size`` items the inputs are built once, tiled over a chunk of conditions
    (``chunk * batch <= max_rows`` rows, at least one condition per chunk) and run in ONE forward pass whose row
    ``j * batch + i`` carries condition ``j``'s edit for item ``i``. Identity conditions (``is_identity``) share a
    single plain forward per batch when ``reuse_identity``. ``positions``: ``"all"`` edits every position; any other
    name is a kind of ``subject.position_masks`` (``"audio"``, ``"text"``, ``"last"``), outside which gates are
    left untouched. The answer is read at each row's last attended position (``logits="last"``) by
    ``subject.label_logits``.
    """
    conds = list(conditions)
    shape = gate_shape(subject.model)
    n = len(df)
    _check_conditions(conds, shape, n)
    n_labels = len(subject.labels)
    out = np.zeros((len(conds), n, n_labels), dtype=np.float32)
    if not conds or n == 0:
        return out
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size and max_rows must be >= 1, got {batch_size} and {max_rows}")
    ident = [j for j, c in enumerate(conds) if reuse_identity and c.is_identity]
    edited = [j for j in range(len(conds)) if j not in set(ident)]
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=f"{len(conds)} conditions", disable=not progress, mininterval=2.0):
        rows = df.iloc[start : start + batch_size]
        b = len(rows)
        idx = np.arange(start, start + b)
        inputs = subject.batch_inputs(rows)
        pos = _positions_for(subject, inputs, positions)
        if ident:
            ll = _forward(subject, inputs, None, None, None, [conds[j].name for j in ident])
            out[ident, start : start + b] = ll[None]
        per_chunk = max(1, max_rows // b)
        for c0 in range(0, len(edited), per_chunk):
            chunk = edited[c0 : c0 + per_chunk]
            k = len(chunk)
            scale = _stack_edits([conds[j].scale_for(idx) for j in chunk], b, 1.0, shape)
            add = _stack_edits([conds[j].add_for(idx) for j in chunk], b, 0.0, shape)
            tiled = inputs.tile(k)
            p = pos.repeat(k, 1) if pos is not None else None
            ll = _forward(subject, tiled, scale, add, p, [conds[j].name for j in chunk])
            out[chunk, start : start + b] = ll.reshape(k, b, n_labels)
    return out


def run_conditions_sequential(subject: Subject, df: pd.DataFrame, conditions: Sequence[Condition], *,
                              batch_size: int = 32, positions: str = "all", reuse_inputs: bool = True,
                              progress: bool = True) -> np.ndarray:
    """Same result as :func:`run_conditions`, one forward pass per (condition, batch of items).

    With ``reuse_inputs`` the inputs of a batch (for the organism: cached audio through the projector) are built
    once and reused by every condition, so a comparison with the batched runner measures forward passes; without
    it each condition builds them again -- with a subject that caches nothing, the whole model (audio tower
    included) runs once per condition, the reference of ``make bench``'s sweep. Identity conditions are run like
    any other.
    """
    conds = list(conditions)
    shape = gate_shape(subject.model)
    n = len(df)
    _check_conditions(conds, shape, n)
    out = np.zeros((len(conds), n, len(subject.labels)), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc=f"{len(conds)} conditions (sequential)", disable=not progress,
                      mininterval=2.0):
        rows = df.iloc[start : start + batch_size]
        idx = np.arange(start, start + len(rows))
        inputs = subject.batch_inputs(rows)
        pos = _positions_for(subject, inputs, positions)
        for j, c in enumerate(conds):
            if j and not reuse_inputs:
                inputs = subject.batch_inputs(rows)
            out[j, start : start + len(rows)] = _forward(subject, inputs, c.scale_for(idx), c.add_for(idx), pos,
                                                         [c.name])
    return out


__all__ = [
    "DEFAULT_MAX_ROWS",
    "run_conditions",
    "run_conditions_sequential",
]
