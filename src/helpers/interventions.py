"""The Intervene stage: gate-edit *conditions*, a batched runner, and the experiments the notebooks report.

A :class:`Condition` is one edit of the SwiGLU gates ``a = act_fn(gate_proj x)`` of every decoder MLP,
``a <- a * scale + add`` with ``scale``/``add`` of shape ``[L, N]`` (layers x neurons). The constructors build the
edits of the paper:

* :func:`deactivate` — scale 0 on an emotion's neurons (necessity test);
* :func:`steer` — scale ``1 + alpha`` on them (amplification for ``alpha > 0``, attenuation for ``-1 < alpha < 0``;
  ``alpha = -1`` equals deactivation);
* :func:`joint` — scale ``1 + alpha`` on the *union* of several emotions' sets (a neuron in two sets is scaled once);
* :func:`combine` — several conditions applied one after the other;
* :func:`label_free` — the per-item strategies ``two_pass``, ``union`` and ``mix`` (defined there) that need no
  target emotion;
* :func:`identity` — no edit (the baseline).

:func:`run_conditions` evaluates many conditions on the same items with as few forward passes as possible: for
each batch of items the inputs are tiled over a chunk of conditions (rows = conditions x items, at most
``max_rows``) and ONE :func:`~helpers.hooks.run_with_gate_edits` call applies a different edit to every row.
Identity conditions reuse one plain forward. :func:`run_conditions_sequential` runs the same conditions one forward
per condition and batch; it exists to check the batched runner (tests) and to measure its speedup (``helpers.bench``).

The experiments (:func:`deactivation_experiment`, :func:`dose_response_k`, :func:`dose_response_alpha`,
:func:`steering_experiment`, :func:`non_additivity`) build the conditions, run them in one batched sweep and turn
the label logits into tidy tables with :mod:`helpers.metrics`, so the notebooks stay a few lines each.

Neuron sets everywhere are ``{label: LongTensor[m, 2]}`` of ``(layer, neuron)`` pairs, as returned by
:func:`helpers.selectors.select` (best first, which :func:`dose_response_k` relies on).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics as M
from .evaluation import label_indices
from .hooks import NonFiniteEditError, run_with_gate_edits, tile_inputs
from .models import gate_shape
from .subject import Subject

Pairs = Any  # LongTensor[m, 2] | ndarray | nested list of (layer, neuron)
Selection = Mapping[str, Pairs]
Strategy = Literal["targeted", "two_pass", "union", "mix"]

#: The steering strategies of :func:`steering_experiment`, in report order.
STRATEGIES: tuple[str, ...] = ("targeted", "two_pass", "union", "mix")
#: The label-free strategies (no target emotion needed), see :func:`label_free`.
LABEL_FREE: tuple[str, ...] = ("two_pass", "union", "mix")

_DTYPE = torch.float32

#: Default cap on rows (conditions x items) per forward pass of :func:`run_conditions`. Measured on CPU
#: (``helpers.bench``): the cost per row is flat or *rises* beyond a few dozen rows (activations fall out of the
#: caches), so tiling only pays where per-call overhead dominates (small item batches, GPUs). Raise it on a GPU
#: with memory to spare (rows x sequence length x MLP width activations must fit).
DEFAULT_MAX_ROWS = 32


# ====================================================================================================================
# Conditions
# ====================================================================================================================


@dataclass(frozen=True, eq=False)
class ItemScale:
    """An item-dependent scale: ``scale[i] = 1 + coef[i] @ basis``, i.e. ``1 + sum_k coef[i, k] * basis[k]``.

    ``basis`` [K, L, N] float (e.g. one 0/1 mask per emotion), ``coef`` [n_items, K] float, one row per item of the
    table the condition is run on, in table order. Only the rows of the current batch are ever expanded to
    ``[B, L, N]``, so a per-item edit costs no more memory than a shared one.
    """

    basis: torch.Tensor
    coef: torch.Tensor

    def __post_init__(self) -> None:
        if self.basis.ndim != 3 or self.coef.ndim != 2 or self.coef.shape[1] != self.basis.shape[0]:
            raise ValueError(
                f"ItemScale needs basis [K, L, N] and coef [n_items, K]; got {tuple(self.basis.shape)} and "
                f"{tuple(self.coef.shape)}"
            )
        if not bool(torch.isfinite(self.coef).all()):
            raise ValueError("per-item scale coefficients contain NaN/inf (alpha too large?)")

    @property
    def n_items(self) -> int:
        return int(self.coef.shape[0])

    def rows(self, index: np.ndarray | Sequence[int]) -> torch.Tensor:
        """``[b, L, N]`` scales of the items at ``index`` (positions in the table)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        c = self.coef.index_select(0, idx).to(_DTYPE)
        out = 1.0 + torch.einsum("bk,kln->bln", c, self.basis.to(_DTYPE))
        if not bool(torch.isfinite(out).all()):
            raise ValueError("a per-item gate scale is NaN/inf in float32 (alpha too large)")
        return out


@dataclass(frozen=True, eq=False)
class Condition:
    """One gate edit ``gate <- gate * scale + add``.

    ``scale`` / ``add``: ``[L, N]`` float tensors or None (= 1 / 0 everywhere). ``meta``: free-form record of what
    the condition is (``selector``, ``target``, ``alpha``, ``k``, ``seed``...) copied into result tables.
    ``per_item`` (optional, :class:`ItemScale`): an item-dependent scale used *instead of* ``scale``.
    """

    name: str
    scale: torch.Tensor | None = None
    add: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    per_item: ItemScale | None = None

    def __post_init__(self) -> None:
        if self.per_item is not None and self.scale is not None:
            raise ValueError(f"condition {self.name!r}: give either scale or per_item, not both")
        for what in ("scale", "add"):
            x = getattr(self, what)
            if x is None:
                continue
            x = torch.as_tensor(x, dtype=_DTYPE)
            if x.ndim != 2:
                raise ValueError(f"condition {self.name!r}: {what} must be [L, N], got shape {tuple(x.shape)}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"condition {self.name!r}: {what} contains NaN/inf values")
            object.__setattr__(self, what, x)
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def shape(self) -> tuple[int, int] | None:
        """``(L, N)`` of the edit, or None for a shapeless identity."""
        for x in (self.scale, self.add):
            if x is not None:
                return int(x.shape[0]), int(x.shape[1])
        if self.per_item is not None:
            return int(self.per_item.basis.shape[1]), int(self.per_item.basis.shape[2])
        return None

    @property
    def is_identity(self) -> bool:
        """True when the edit changes nothing (scale all 1, add all 0, per-item coefficients all 0)."""
        if self.scale is not None and not bool((self.scale == 1).all()):
            return False
        if self.add is not None and not bool((self.add == 0).all()):
            return False
        return not (
            self.per_item is not None
            and bool((self.per_item.coef != 0).any())
            and bool((self.per_item.basis != 0).any())
        )

    def scale_for(self, index: np.ndarray | Sequence[int]) -> torch.Tensor | None:
        """Scale for the items at ``index``: ``[b, L, N]`` (per-item), ``[1, L, N]`` (shared) or None."""
        if self.per_item is not None:
            return self.per_item.rows(index)
        return None if self.scale is None else self.scale.unsqueeze(0)

    def add_for(self, index: np.ndarray | Sequence[int]) -> torch.Tensor | None:
        return None if self.add is None else self.add.unsqueeze(0)

    def __repr__(self) -> str:
        kinds = [k for k in ("scale", "add", "per_item") if getattr(self, k) is not None]
        return f"Condition({self.name!r}, edits={kinds or 'none'}, shape={self.shape}, meta={self.meta})"


def pairs_tensor(pairs: Pairs, n_layers: int, n_neurons: int, *, what: str = "neuron set") -> torch.Tensor:
    """Validate ``(layer, neuron)`` pairs against the model's ``L x N`` gates; returns LongTensor [m, 2].

    An empty set (``[]``, shape ``[0]`` or ``[0, 2]``) is valid. Out-of-range indices raise a ``ValueError`` that
    names the valid range and the model shape (the usual cause: a neuron set identified on another model).
    """
    t = torch.as_tensor(pairs) if not isinstance(pairs, torch.Tensor) else pairs
    if t.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        if t.dtype.is_floating_point and bool((t == t.round()).all()):
            t = t.long()
        else:
            raise TypeError(f"{what}: (layer, neuron) pairs must be integers, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"{what}: expected (layer, neuron) pairs of shape [m, 2], got {tuple(t.shape)}")
    t = t.long().cpu()
    bad = (t[:, 0] < 0) | (t[:, 0] >= n_layers) | (t[:, 1] < 0) | (t[:, 1] >= n_neurons)
    if bool(bad.any()):
        first = tuple(t[bad][0].tolist())
        raise ValueError(
            f"{what}: {int(bad.sum())} (layer, neuron) pair(s) out of range, first {first}; layers must be in "
            f"[0, {n_layers}) and neurons in [0, {n_neurons}) for this model's {n_layers} x {n_neurons} gates "
            "(a neuron set identified on another model?)"
        )
    return t


def pairs_mask(pairs: Pairs, n_layers: int, n_neurons: int, *, what: str = "neuron set") -> torch.Tensor:
    """Bool mask ``[L, N]`` of a validated set of pairs (duplicates collapse)."""
    t = pairs_tensor(pairs, n_layers, n_neurons, what=what)
    mask = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
    if t.numel():
        mask[t[:, 0], t[:, 1]] = True
    return mask


def _check_alpha(alpha: float, what: str) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: alpha must be a number, got {alpha!r}") from None
    s = torch.tensor(1.0 + a, dtype=_DTYPE) if math.isfinite(a) else torch.tensor(float("nan"))
    if not math.isfinite(a) or not bool(torch.isfinite(s)):
        raise ValueError(
            f"{what}: alpha={alpha!r} makes the gate scale 1 + alpha non-finite in float32; "
            "use a finite alpha (the paper's range is about -1 .. 10)"
        )
    return a


def identity(name: str = "baseline", meta: Mapping | None = None) -> Condition:
    """The no-op condition (the un-intervened model)."""
    return Condition(name, meta={"kind": "identity", **dict(meta or {})})


def deactivate(pairs: Pairs, n_layers: int, n_neurons: int, *, name: str | None = None,
               meta: Mapping | None = None) -> Condition:
    """Zero the gates of ``pairs`` (scale 0) at every edited position; an empty set is a valid no-op."""
    mask = pairs_mask(pairs, n_layers, n_neurons, what=name or "deactivate")
    scale = torch.ones(n_layers, n_neurons, dtype=_DTYPE)
    scale[mask] = 0.0
    return Condition(name or "deactivate", scale=scale,
                     meta={"kind": "deactivate", "n_neurons": int(mask.sum()), **dict(meta or {})})


def steer(pairs: Pairs, n_layers: int, n_neurons: int, alpha: float, *, name: str | None = None,
          meta: Mapping | None = None) -> Condition:
    """Scale the gates of ``pairs`` by ``1 + alpha`` (``alpha < 0`` attenuates, ``-1`` zeroes them)."""
    a = _check_alpha(alpha, name or "steer")
    mask = pairs_mask(pairs, n_layers, n_neurons, what=name or "steer")
    scale = torch.ones(n_layers, n_neurons, dtype=_DTYPE)
    scale[mask] = 1.0 + a
    return Condition(name or f"steer(alpha={a:g})", scale=scale,
                     meta={"kind": "steer", "alpha": a, "n_neurons": int(mask.sum()), **dict(meta or {})})


def joint(sets: Mapping[str, Pairs] | Sequence[Pairs], n_layers: int, n_neurons: int, alpha: float, *,
          name: str | None = None, meta: Mapping | None = None) -> Condition:
    """Joint amplification: scale ``1 + alpha`` on the union of several sets (shared neurons scaled once)."""
    a = _check_alpha(alpha, name or "joint")
    items = sets.items() if isinstance(sets, Mapping) else enumerate(sets)
    mask = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
    keys = []
    for key, pairs in items:
        mask |= pairs_mask(pairs, n_layers, n_neurons, what=f"set {key!r}")
        keys.append(str(key))
    scale = torch.ones(n_layers, n_neurons, dtype=_DTYPE)
    scale[mask] = 1.0 + a
    return Condition(name or f"joint({'+'.join(keys)}, alpha={a:g})", scale=scale,
                     meta={"kind": "joint", "alpha": a, "members": "+".join(keys), "n_neurons": int(mask.sum()),
                           **dict(meta or {})})


def combine(*conditions: Condition, name: str | None = None, meta: Mapping | None = None) -> Condition:
    """Apply several shared (not per-item) conditions in order: ``(g * s1 + a1) * s2 + a2 = g * s1 s2 + a1 s2 + a2``."""
    if not conditions:
        return identity(name or "combine()")
    shapes = {c.shape for c in conditions} - {None}
    if len(shapes) > 1:
        raise ValueError(f"cannot combine conditions for different gate shapes {sorted(shapes)}")
    if any(c.per_item is not None for c in conditions):
        raise ValueError("combine() takes shared conditions only (no per-item scales)")
    scale = add = None
    for c in conditions:
        if c.scale is not None:
            scale = c.scale.clone() if scale is None else scale * c.scale
            add = None if add is None else add * c.scale
        if c.add is not None:
            add = c.add.clone() if add is None else add + c.add
    return Condition(name or "+".join(c.name for c in conditions), scale=scale, add=add,
                     meta={"kind": "combine", "parts": [c.name for c in conditions], **dict(meta or {})})


def label_masks(sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int) -> torch.Tensor:
    """``[C, L, N]`` float 0/1 masks of each label's set, in ``labels`` order (a label absent from ``sets`` = empty)."""
    unknown = sorted(set(sets) - set(labels))
    if unknown:
        raise ValueError(f"neuron sets for {unknown} which are not among the labels {list(labels)}")
    return torch.stack([
        pairs_mask(sets.get(lbl, []), n_layers, n_neurons, what=f"set {lbl!r}").to(_DTYPE) for lbl in labels
    ])


def softmax_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def label_free(strategy: str, sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int, alpha: float,
               *, first_pass: np.ndarray | torch.Tensor | None = None, name: str | None = None,
               meta: Mapping | None = None) -> Condition:
    """A steering condition that needs no target emotion. With ``S_e`` the set of emotion ``e`` (mask ``m_e``):

    * ``"union"``: scale ``1 + alpha`` on ``∪_e S_e``, the same for every item (a neuron in several sets is
      scaled once, as in :func:`joint`).
    * ``"two_pass"``: run the model once (the baseline, ``first_pass`` = its label logits ``[n_items, C]``); for
      item ``i`` with first-pass prediction ``ê_i = argmax first_pass[i]``, scale ``1 + alpha`` on ``S_{ê_i}``
      only, i.e. ``scale_i = 1 + alpha * m_{ê_i}``.
    * ``"mix"``: with ``p_i = softmax(first_pass[i])`` over the labels (constrained-scoring probabilities),
      ``scale_i = 1 + alpha * sum_e p_{i,e} * m_e``: every emotion's neurons are amplified in proportion to the
      first pass's belief in it; a neuron in several sets gets the sum of their weights.

    ``first_pass`` rows are the items of the table the condition will be run on, in order.
    """
    a = _check_alpha(alpha, name or strategy)
    masks = label_masks(sets, labels, n_layers, n_neurons)
    base_meta = {"kind": "label_free", "strategy": strategy, "alpha": a, **dict(meta or {})}
    if strategy == "union":
        scale = torch.where(masks.amax(0) > 0, torch.tensor(1.0 + a, dtype=_DTYPE), torch.tensor(1.0, dtype=_DTYPE))
        return Condition(name or f"union(alpha={a:g})", scale=scale, meta=base_meta)
    if strategy not in ("two_pass", "mix"):
        raise ValueError(f"unknown label-free strategy {strategy!r}; choose one of {list(LABEL_FREE)}")
    if first_pass is None:
        raise ValueError(f"strategy {strategy!r} needs first_pass, the baseline label logits [n_items, {len(labels)}]")
    fp = first_pass.detach().cpu().numpy() if isinstance(first_pass, torch.Tensor) else np.asarray(first_pass)
    if fp.ndim != 2 or fp.shape[1] != len(labels):
        raise ValueError(f"first_pass must be [n_items, {len(labels)}] label logits, got shape {fp.shape}")
    if strategy == "two_pass":
        w = np.eye(len(labels), dtype=np.float64)[fp.argmax(1)]
    else:
        w = softmax_np(fp.astype(np.float64), axis=1)
    coef = torch.from_numpy(a * w).to(_DTYPE)
    return Condition(name or f"{strategy}(alpha={a:g})", per_item=ItemScale(basis=masks, coef=coef), meta=base_meta)


# ====================================================================================================================
# Running conditions
# ====================================================================================================================


def _positions_for(subject: Subject, inputs: Mapping[str, Any], positions: str) -> torch.Tensor | None:
    if positions == "all":
        return None
    masks = subject.position_masks(inputs["input_ids"])
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


def _label_logits(subject: Subject, logits: torch.Tensor) -> np.ndarray:
    return subject.label_logits(logits).detach().float().cpu().numpy()


def _forward(subject: Subject, inputs: Mapping[str, Any], scale, add, positions, names: Sequence[str]) -> np.ndarray:
    try:
        logits = run_with_gate_edits(subject.model, inputs, scale=scale, add=add, positions=positions, logits="last")
    except NonFiniteEditError as err:
        raise NonFiniteEditError(f"{err} (conditions in this forward pass: {list(names)})") from err
    return _label_logits(subject, logits)


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
            tiled = tile_inputs(inputs, k) if k > 1 else inputs
            p = pos.repeat(k, 1) if pos is not None else None
            ll = _forward(subject, tiled, scale, add, p, [conds[j].name for j in chunk])
            out[chunk, start : start + b] = ll.reshape(k, b, n_labels)
    return out


def run_conditions_sequential(subject: Subject, df: pd.DataFrame, conditions: Sequence[Condition], *,
                              batch_size: int = 32, positions: str = "all", progress: bool = True) -> np.ndarray:
    """Same result as :func:`run_conditions`, one forward pass per (condition, batch of items).

    The inputs of a batch are built once and reused by every condition (so a comparison with the batched runner
    measures forward passes, not input preparation); identity conditions are run like any other.
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
            out[j, start : start + len(rows)] = _forward(subject, inputs, c.scale_for(idx), c.add_for(idx), pos,
                                                         [c.name])
    return out


# ====================================================================================================================
# Experiments
# ====================================================================================================================


def _truth(subject: Subject, df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    labels = list(subject.labels)
    return labels, label_indices(df["label"], labels)


def _placeholder_stats(labels: Sequence[str], n_layers: int, n_neurons: int):
    """Minimal ActivationStats of the model's shape: random selections depend only on shape, labels and seed."""
    from .stats import ActivationStats

    c = len(labels)
    zeros = torch.zeros(n_layers, n_neurons, c)
    return ActivationStats(labels=list(labels), tokens=torch.ones(c), items=torch.ones(c), active=zeros,
                           total=zeros, total_sq=zeros, meta={"placeholder": "shape only, for random selections"})


def random_like(selection: Selection, n_layers: int, n_neurons: int, seed: int, *,
                stats=None) -> dict[str, torch.Tensor]:
    """``select(stats, "random", like=selection, seed=seed)``: per label, uniform random neurons of the same count.

    ``stats`` (an :class:`~helpers.stats.ActivationStats`) is only used for its shape and labels; without it a
    placeholder of the model's shape is used, which draws the same neurons.
    """
    from .selectors import select

    labels = list(selection)
    use = stats is not None and list(stats.labels) == labels
    st = stats if use else _placeholder_stats(labels, n_layers, n_neurons)
    if (st.n_layers, st.n_neurons) != (n_layers, n_neurons):
        raise ValueError(
            f"stats are for {st.n_layers} x {st.n_neurons} gates but the model has {n_layers} x {n_neurons}"
        )
    return select(st, "random", like={k: torch.as_tensor(v).reshape(-1, 2) for k, v in selection.items()}, seed=seed)


def _effect_cis(yt, yb, yi, t, labels, n_boot, seed) -> dict[str, tuple[float, float]]:
    """Stratified paired bootstrap intervals of SE/CE/gap (the flip variant that is always defined)."""
    if n_boot <= 0:
        return {k: (math.nan, math.nan) for k in ("self_effect", "cross_effect", "gap", "flip_rate")}
    return M.bootstrap_effects(yt, yb, yi, t, labels=labels, n_boot=n_boot, seed=seed, stratify=True,
                               among="all_non_target")


@dataclass
class DeactivationResult:
    """Output of :func:`deactivation_experiment`.

    * ``table``: one row per condition — ``selector`` (``"lape"``, or ``"random(lape)"`` for the size-matched
      random control), ``target``, ``seed`` (random rows only), ``n_neurons``, ``self_effect``, ``cross_effect``,
      ``gap`` with bootstrap intervals (``*_ci_low``/``*_ci_high``), ``uar_base``, ``uar_int`` and the per-class
      recall changes ``delta_<label>``.
    * ``comparison``: per (selector, target) the selector's gap next to the random control's mean/std over seeds.
    * ``matrices``: ``{selector: effect matrix}`` (rows: deactivated emotion, columns: evaluated class; random
      controls averaged over seeds).
    * ``summary``: ``{selector: mean gap over emotions}`` (:func:`helpers.metrics.summarise_gaps`).
    * ``logits`` [n_conditions, n_items, C], ``conditions``, ``y_true``, ``y_base`` for further analysis.
    """

    table: pd.DataFrame
    comparison: pd.DataFrame
    matrices: dict[str, pd.DataFrame]
    summary: dict[str, float]
    logits: np.ndarray
    conditions: list[Condition]
    y_true: np.ndarray
    y_base: np.ndarray


def deactivation_experiment(subject: Subject, df: pd.DataFrame, sets: Mapping[str, Selection], *,
                            random_seeds: Sequence[int] = (0, 1, 2, 3, 4), stats=None, batch_size: int = 32,
                            positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                            progress: bool = True) -> DeactivationResult:
    """Necessity test: zero each emotion's neurons (per selector) and measure per-class recall changes.

    ``sets``: ``{selector: {label: pairs}}``. For every selector and every seed in ``random_seeds`` a random
    control draws, per emotion, as many uniformly random neurons as that selector chose for it
    (``select(stats, "random", like=sets[selector], seed=seed)``). All conditions plus the baseline run in one
    batched sweep. Effects (self/cross/gap, paired stratified bootstrap CIs with ``n_boot`` resamples) come from
    :mod:`helpers.metrics`; a successful deactivation has a negative gap (the target loses more than the rest).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    conds: list[Condition] = [identity()]
    for sel_name, selection in sets.items():
        sel_name = str(sel_name)
        draws: list[tuple[str, int | None, Selection]] = [(sel_name, None, selection)]
        draws += [(f"random({sel_name})", int(s), random_like(selection, L, N, int(s), stats=stats))
                  for s in random_seeds]
        for name, s, sel in draws:
            for target, pairs in sel.items():
                if target not in labels:
                    raise ValueError(f"selector {sel_name!r} has a set for {target!r}, not one of the labels {labels}")
                meta = {"selector": name, "like": sel_name, "target": target}
                if s is not None:
                    meta["seed"] = s
                cname = f"deactivate[{name}:{target}" + (f":seed{s}]" if s is not None else "]")
                conds.append(deactivate(pairs, L, N, name=cname, meta=meta))
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress)
    preds = logits.argmax(-1)
    y_base = preds[0]
    uar_base = M.uar(y_true, y_base, labels=labels)
    rows = []
    by_selector: dict[str, dict[str, list[np.ndarray]]] = {}
    for j, c in enumerate(conds[1:], start=1):
        m = c.meta
        t = labels.index(m["target"])
        eff = M.effects(y_true, y_base, preds[j], t, labels=labels)
        iv = _effect_cis(y_true, y_base, preds[j], t, labels, n_boot, seed)
        row = {
            "selector": m["selector"], "like": m["like"], "target": m["target"], "seed": m.get("seed"),
            "control": "seed" in m, "n_neurons": m["n_neurons"],
            "self_effect": eff.self_effect, "cross_effect": eff.cross_effect, "gap": eff.gap,
            "gap_ci_low": iv["gap"][0], "gap_ci_high": iv["gap"][1],
            "self_ci_low": iv["self_effect"][0], "self_ci_high": iv["self_effect"][1],
            "cross_ci_low": iv["cross_effect"][0], "cross_ci_high": iv["cross_effect"][1],
            "uar_base": uar_base, "uar_int": M.uar(y_true, preds[j], labels=labels), "n_items": len(y_true),
        }
        for lbl, d in zip(labels, eff.per_class_delta, strict=True):
            row[f"delta_{lbl}"] = float(d)
        rows.append(row)
        by_selector.setdefault(m["selector"], {}).setdefault(m["target"], []).append(preds[j])
    table = pd.DataFrame(rows)
    if len(table):
        table["seed"] = table["seed"].astype("Int64")

    matrices: dict[str, pd.DataFrame] = {}
    for sel_name, per_target in by_selector.items():
        n_draws = max(len(v) for v in per_target.values())
        mats = [M.effect_matrix(y_true, y_base, {t: v[i] for t, v in per_target.items() if i < len(v)}, labels)
                for i in range(n_draws)]
        matrices[sel_name] = sum(mats[1:], mats[0]) / len(mats) if len(mats) > 1 else mats[0]

    comp = []
    for sel_name in (str(s) for s in sets):
        real = table[(table["selector"] == sel_name)]
        for _, r in real.iterrows():
            ctrl = table[(table["selector"] == f"random({sel_name})") & (table["target"] == r["target"])]
            recs = ctrl[["self_effect", "cross_effect", "gap"]].to_dict("records")
            agg = M.aggregate_random(recs) if recs else {}
            g = agg.get("gap", {"mean": math.nan, "std": math.nan})
            comp.append({
                "selector": sel_name, "target": r["target"], "n_neurons": r["n_neurons"], "gap": r["gap"],
                "gap_ci_low": r["gap_ci_low"], "gap_ci_high": r["gap_ci_high"],
                "random_gap_mean": g["mean"], "random_gap_std": g["std"], "n_seeds": len(ctrl),
                "gap_minus_random": r["gap"] - g["mean"],
            })
    summary = M.summarise_gaps(table[["selector", "target", "gap"]]) if len(table) else {}
    return DeactivationResult(table=table, comparison=pd.DataFrame(comp), matrices=matrices, summary=summary,
                              logits=logits, conditions=conds, y_true=y_true, y_base=y_base)


def _prefix(pairs: Pairs, k: int, L: int, N: int, what: str) -> torch.Tensor:
    t = pairs_tensor(pairs, L, N, what=what)
    return t[: max(0, int(k))]


def dose_response_k(subject: Subject, df: pd.DataFrame, selection: Selection, ks: Iterable[int], *,
                    mode: Literal["deactivate", "steer"] = "deactivate", alpha: float = 1.0, selector: str = "",
                    random_seeds: Sequence[int] = (), batch_size: int = 32, positions: str = "all",
                    max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                    progress: bool = True) -> pd.DataFrame:
    """Effects as a function of the number of neurons ``k``: the top-``k`` prefix of each emotion's ranked set.

    ``mode="deactivate"`` zeroes them; ``"steer"`` scales them by ``1 + alpha``. ``k = 0`` is the empty set, i.e.
    the baseline (all effects 0). When ``k`` exceeds a set's size the whole set is used (``k_effective``). Each
    ``random_seeds`` entry adds a random control: per emotion one random permutation of all neurons whose top-``k``
    prefixes are used, so the random sets are nested in ``k`` just like the ranked ones.

    Returns :func:`helpers.metrics.dose_response_table` (``param`` = k) with carried columns ``selector``,
    ``mode``, ``k_effective``, ``control`` and ``seed`` (random rows).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    ks = [int(k) for k in ks]
    if any(k < 0 for k in ks):
        raise ValueError(f"k must be >= 0, got {ks}")
    if mode not in ("deactivate", "steer"):
        raise ValueError(f"mode must be 'deactivate' or 'steer', got {mode!r}")
    perms = {}
    for s in random_seeds:
        gen = torch.Generator().manual_seed(int(s))
        perms[int(s)] = {lbl: torch.randperm(L * N, generator=gen) for lbl in selection}
    conds = [identity()]
    for target, pairs in selection.items():
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
        variants: list[tuple[int | None, Pairs]] = [(None, pairs)]
        variants += [(s, torch.stack((p // N, p % N), 1)) for s, pp in perms.items() for p in [pp[target]]]
        for s, src in variants:
            for k in ks:
                sub = _prefix(src, k, L, N, f"set {target!r}")
                meta = {"target": target, "k": k, "k_effective": int(sub.shape[0]),
                        "selector": selector if s is None else f"random({selector})" if selector else "random"}
                if s is not None:
                    meta["seed"] = s
                name = f"{mode}[{meta['selector']}:{target}:k={k}" + (f":seed{s}]" if s is not None else "]")
                c = deactivate(sub, L, N, name=name, meta=meta) if mode == "deactivate" else steer(
                    sub, L, N, alpha, name=name, meta=meta)
                conds.append(c)
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress)
    preds = logits.argmax(-1)
    records = []
    for j, c in enumerate(conds[1:], start=1):
        rec = {"target": c.meta["target"], "k": c.meta["k"], "y_true": y_true, "y_base": preds[0], "y_int": preds[j],
               "selector": c.meta["selector"], "mode": mode, "k_effective": c.meta["k_effective"],
               "control": "seed" in c.meta}
        if mode == "steer":
            rec["alpha"] = float(alpha)
        if "seed" in c.meta:
            rec["seed"] = c.meta["seed"]
        records.append(rec)
    return _dose_table(records, labels, "k", n_boot, seed)


def _dose_table(records: list[dict], labels: Sequence[str], param_key: str, n_boot: int, seed: int) -> pd.DataFrame:
    """:func:`helpers.metrics.dose_response_table` row by row (same seed, so rows share resamples), keeping a row
    whose flip rate is undefined in every resample (e.g. the baseline already predicts the target everywhere)
    with NaN intervals instead of failing the whole table."""
    import warnings

    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined flip rates (NaN) are expected for some rows
        for rec in records:
            try:
                part = M.dose_response_table([rec], labels, param_key=param_key, n_boot=n_boot, seed=seed,
                                             stratify=True)
            except ValueError:
                if n_boot <= 0:
                    raise
                part = M.dose_response_table([rec], labels, param_key=param_key, n_boot=0, seed=seed)
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(M.DOSE_RESPONSE_COLUMNS))
    return pd.concat(parts, ignore_index=True)


def dose_response_alpha(subject: Subject, df: pd.DataFrame, selection: Selection, alphas: Iterable[float], *,
                        k: int | None = None, selector: str = "", batch_size: int = 32, positions: str = "all",
                        max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                        progress: bool = True) -> pd.DataFrame:
    """Steering strength: scale each emotion's neurons (top-``k`` prefix if given) by ``1 + alpha`` on all items.

    ``alpha`` may be negative (attenuation; ``-1`` = deactivation) or 0 (the baseline). Per (target, alpha) the
    row has the :func:`helpers.metrics.dose_response_table` columns (``param`` = alpha; ``flip_rate`` = share of
    items of *other* emotions, not already predicted as the target, that flip to it) and:

    * ``acc_others_base`` / ``acc_others_int``: accuracy on the items of the other emotions before / after;
    * ``acc_target_base`` / ``acc_target_int``: recall of the target emotion before / after;
    * ``p_target_shift``: mean change, over other-emotion items, of the target's softmax probability (label logits).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(a) for a in alphas]
    conds = [identity()]
    for target, pairs in selection.items():
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
        sub = _prefix(pairs, k, L, N, f"set {target!r}") if k is not None else pairs
        for a in alphas:
            conds.append(steer(sub, L, N, a, name=f"steer[{selector}:{target}:alpha={a:g}]",
                               meta={"target": target, "selector": selector}))
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress)
    preds = logits.argmax(-1)
    prob = softmax_np(logits.astype(np.float64))
    records = []
    for j, c in enumerate(conds[1:], start=1):
        t = labels.index(c.meta["target"])
        others = y_true != t
        rec = {
            "target": c.meta["target"], "alpha": c.meta["alpha"], "y_true": y_true, "y_base": preds[0],
            "y_int": preds[j], "selector": selector, "n_neurons": c.meta["n_neurons"],
            "acc_others_base": float((preds[0][others] == y_true[others]).mean()) if others.any() else math.nan,
            "acc_others_int": float((preds[j][others] == y_true[others]).mean()) if others.any() else math.nan,
            "acc_target_base": float((preds[0][~others] == t).mean()) if (~others).any() else math.nan,
            "acc_target_int": float((preds[j][~others] == t).mean()) if (~others).any() else math.nan,
            "p_target_shift": float((prob[j][others, t] - prob[0][others, t]).mean()) if others.any() else math.nan,
        }
        records.append(rec)
    return _dose_table(records, labels, "alpha", n_boot, seed)


def _rate_ci(hits: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of a proportion over the eligible items (NaN if none or n_boot = 0)."""
    if n_boot <= 0 or hits.size == 0:
        return math.nan, math.nan
    return M.bootstrap_ci(lambda h: h.mean(axis=1), hits.astype(np.float64), n_boot=n_boot, seed=seed, batched=True)


def intervention_outcomes(y_true: np.ndarray, y_base: np.ndarray, y_int: np.ndarray, labels: Sequence[str]
                          ) -> dict[str, float]:
    """Label-free summary of one intervention: accuracy/UAR change, corrections and damage.

    * ``corrections``: among items the baseline got wrong, the share now predicted as their TRUE emotion (the
      flip rate toward the true label; this is what ``flip_rate`` means for the label-free strategies).
    * ``damage``: among items the baseline got right, the share now predicted as something else.
    """
    yt, yb, yi = (np.asarray(x) for x in (y_true, y_base, y_int))
    wrong, right = yb != yt, yb == yt
    return {
        "acc_base": float(right.mean()), "acc_int": float((yi == yt).mean()),
        "uar_base": M.uar(yt, yb, labels=labels), "uar_int": M.uar(yt, yi, labels=labels),
        "corrections": float((yi[wrong] == yt[wrong]).mean()) if wrong.any() else math.nan,
        "damage": float((yi[right] != yt[right]).mean()) if right.any() else math.nan,
        "n_wrong_base": int(wrong.sum()), "n_right_base": int(right.sum()),
    }


def steering_experiment(subject: Subject, df: pd.DataFrame, selection: Selection, alphas: Iterable[float], *,
                        strategies: Sequence[str] = STRATEGIES, k: int | None = None, batch_size: int = 32,
                        positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                        progress: bool = True) -> pd.DataFrame:
    """Targeted steering vs the label-free strategies of :func:`label_free`, over ``alphas``.

    One row per (strategy, alpha, target). ``target`` is the steered emotion for ``targeted`` rows, plus one
    ``target="mean"`` row per alpha averaging them; label-free rows have ``target="all"``. Columns:

    * ``flip_rate`` — **targeted**: among items whose true emotion is not the target and whose baseline prediction
      is not the target, the share predicted as the target after steering (:func:`helpers.metrics.flip_rate`).
      **label-free** (our definition, as these strategies have no target): the share of the items the baseline
      MISCLASSIFIED that are now predicted as their TRUE emotion, i.e. equal to ``corrections``.
    * ``corrections``, ``damage``, ``acc_base``, ``acc_int``, ``uar_base``, ``uar_int``, ``uar_change`` — see
      :func:`intervention_outcomes` (for targeted rows computed on all items as well).
    * ``flip_ci_low`` / ``flip_ci_high`` — bootstrap interval of ``flip_rate`` over its eligible items (NaN for
      the ``mean`` rows); ``n_eligible`` — how many items the flip rate is computed over.

    The two-pass and mix strategies use the baseline of this same sweep as their first pass (computed first, then
    the per-item scales are built from it). :func:`steering_metrics` turns the table into ``metrics.json`` form.
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(a) for a in alphas]
    strategies = list(strategies)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    sel = {lbl: (_prefix(p, k, L, N, f"set {lbl!r}") if k is not None else p) for lbl, p in selection.items()}
    kw = {"batch_size": batch_size, "positions": positions, "max_rows": max_rows, "progress": progress}
    base_logits = run_conditions(subject, df, [identity()], **kw)[0]
    y_base = base_logits.argmax(-1)
    conds: list[Condition] = []
    for a in alphas:
        for strat in strategies:
            if strat == "targeted":
                for target, pairs in sel.items():
                    if target not in labels:
                        raise ValueError(f"set for {target!r} is not one of the labels {labels}")
                    conds.append(steer(pairs, L, N, a, name=f"targeted[{target}:alpha={a:g}]",
                                       meta={"strategy": "targeted", "target": target}))
            else:
                conds.append(label_free(strat, sel, labels, L, N, a, first_pass=base_logits))
    logits = run_conditions(subject, df, conds, **kw)
    preds = logits.argmax(-1)
    rows = []
    for j, c in enumerate(conds):
        strat, a = c.meta["strategy"], c.meta["alpha"]
        out = intervention_outcomes(y_true, y_base, preds[j], labels)
        if strat == "targeted":
            t = labels.index(c.meta["target"])
            elig = (y_true != t) & (y_base != t)
            hits = preds[j][elig] == t
            target = c.meta["target"]
        else:
            elig = y_base != y_true
            hits = preds[j][elig] == y_true[elig]
            target = "all"
        lo, hi = _rate_ci(hits, n_boot, seed)
        rows.append({"strategy": strat, "alpha": a, "target": target,
                     "flip_rate": float(hits.mean()) if hits.size else math.nan,
                     "flip_ci_low": lo, "flip_ci_high": hi, "n_eligible": int(elig.sum()), **out,
                     "uar_change": out["uar_int"] - out["uar_base"], "n_items": len(y_true)})
    table = pd.DataFrame(rows)
    if "targeted" in strategies and len(table):
        tg = table[table["strategy"] == "targeted"]
        num = [c for c in tg.columns if c not in ("strategy", "alpha", "target")]
        mean = tg.groupby("alpha", sort=False)[num].mean().reset_index()
        mean["strategy"], mean["target"] = "targeted", "mean"
        mean[["flip_ci_low", "flip_ci_high"]] = math.nan
        table = pd.concat([table, mean[table.columns]], ignore_index=True)
    order = {s: i for i, s in enumerate(STRATEGIES)}
    table["_o"] = table["strategy"].map(order)
    table = table.sort_values(["_o", "alpha"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return table


def steering_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """``{"alpha": [...], "flip_rate": {strategy: [...]}}`` from :func:`steering_experiment` (targeted = the mean
    over target emotions; label-free = corrections, see there). Missing values become ``None`` (valid JSON)."""
    alphas = sorted(table["alpha"].unique().tolist())
    out: dict[str, Any] = {"alpha": [float(a) for a in alphas], "flip_rate": {}}
    for strat in [s for s in STRATEGIES if s in set(table["strategy"])]:
        sub = table[(table["strategy"] == strat) & table["target"].isin(["mean", "all"])].set_index("alpha")
        vals = [sub["flip_rate"].get(a, math.nan) for a in alphas]
        out["flip_rate"][strat] = [None if (v is None or not math.isfinite(float(v))) else float(v) for v in vals]
    return out


def non_additivity(subject: Subject, df: pd.DataFrame, selection: Selection, *,
                   pairs: Sequence[tuple[str, str]] | None = None, alpha: float = 1.0,
                   on: Literal["all", "non_target"] = "all", k: int | None = None, batch_size: int = 32,
                   positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                   progress: bool = True) -> pd.DataFrame:
    """Is amplifying two emotions' neurons together the sum of amplifying each alone?

    For each pair ``(a, b)`` (default: every pair of labels with a set) three conditions run: ``steer(S_a)``,
    ``steer(S_b)`` and the joint ``joint([S_a, S_b])`` (union, scale ``1 + alpha``). For each target ``t in (a, b)``
    and each measure — ``logprob`` (log-softmax of the label logits at ``t``) and ``prob`` (softmax probability of
    ``t``) — the shift from the baseline is averaged over the items (``on="all"``, or ``"non_target"``: items whose
    true emotion is neither a nor b). Columns: ``pair, target, measure, effect_a, effect_b, additive`` (= a + b),
    ``joint, interaction`` (= joint − additive, with a paired item-bootstrap ``ci_low``/``ci_high``), ``ratio``
    (joint / additive), ``n_overlap`` (neurons in both sets) and ``n_items``.
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    sel = {lbl: (_prefix(p, k, L, N, f"set {lbl!r}") if k is not None else pairs_tensor(p, L, N, what=f"set {lbl!r}"))
           for lbl, p in selection.items()}
    if pairs is None:
        pairs = list(itertools.combinations([lbl for lbl in labels if lbl in sel], 2))
    for a_, b_ in pairs:
        for x in (a_, b_):
            if x not in sel:
                raise ValueError(f"no neuron set for {x!r} (sets: {sorted(sel)})")
    singles = sorted({x for p in pairs for x in p}, key=labels.index)
    conds = [identity()]
    conds += [steer(sel[x], L, N, alpha, name=f"steer[{x}]", meta={"members": x}) for x in singles]
    conds += [joint({a_: sel[a_], b_: sel[b_]}, L, N, alpha, name=f"joint[{a_}+{b_}]") for a_, b_ in pairs]
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress).astype(np.float64)
    logp = log_softmax_np(logits)
    measures = {"logprob": logp, "prob": np.exp(logp)}
    index = {c.name: j for j, c in enumerate(conds)}
    rows = []
    rng_seed = seed
    for a_, b_ in pairs:
        ia, ib, ij = index[f"steer[{a_}]"], index[f"steer[{b_}]"], index[f"joint[{a_}+{b_}]"]
        keep = np.ones(len(y_true), bool)
        if on == "non_target":
            keep = (y_true != labels.index(a_)) & (y_true != labels.index(b_))
        elif on != "all":
            raise ValueError(f"on must be 'all' or 'non_target', got {on!r}")
        overlap = int((pairs_mask(sel[a_], L, N) & pairs_mask(sel[b_], L, N)).sum())
        for target in (a_, b_):
            t = labels.index(target)
            for mname, v in measures.items():
                da = v[ia, keep, t] - v[0, keep, t]
                db = v[ib, keep, t] - v[0, keep, t]
                dj = v[ij, keep, t] - v[0, keep, t]
                inter = dj - (da + db)
                lo, hi = (math.nan, math.nan)
                if n_boot > 0 and inter.size:
                    lo, hi = M.bootstrap_ci(lambda x: x.mean(axis=1), inter, n_boot=n_boot, seed=rng_seed,
                                            batched=True)
                add = float(da.mean() + db.mean()) if inter.size else math.nan
                jm = float(dj.mean()) if inter.size else math.nan
                rows.append({
                    "pair": f"{a_}+{b_}", "target": target, "measure": mname,
                    "effect_a": float(da.mean()) if inter.size else math.nan,
                    "effect_b": float(db.mean()) if inter.size else math.nan,
                    "additive": add, "joint": jm, "interaction": jm - add, "ci_low": lo, "ci_high": hi,
                    "ratio": jm / add if add not in (0.0,) and math.isfinite(add) else math.nan,
                    "alpha": float(alpha), "n_overlap": overlap, "n_items": int(keep.sum()),
                })
    return pd.DataFrame(rows)


__all__ = [
    "DEFAULT_MAX_ROWS",
    "LABEL_FREE",
    "STRATEGIES",
    "Condition",
    "DeactivationResult",
    "ItemScale",
    "combine",
    "deactivate",
    "deactivation_experiment",
    "dose_response_alpha",
    "dose_response_k",
    "identity",
    "intervention_outcomes",
    "joint",
    "label_free",
    "label_masks",
    "non_additivity",
    "pairs_mask",
    "pairs_tensor",
    "random_like",
    "run_conditions",
    "run_conditions_sequential",
    "steer",
    "steering_experiment",
    "steering_metrics",
]
