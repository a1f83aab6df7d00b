"""Per-item conditions: the label-free steering strategies (no target emotion needed) and the oracle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch

from ..core.neuron_sets import selection_masks
from .conditions import _DTYPE, Condition, ItemScale, Mode, Selection, _check_alpha, _check_mode, _mode_bases

#: The label-free strategies (no target emotion needed), see :func:`label_free`.
LABEL_FREE: tuple[str, ...] = ("two_pass", "union", "mix")


def softmax_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def label_masks(sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int) -> torch.Tensor:
    """``[C, L, N]`` float 0/1 masks of each label's set, in ``labels`` order (a label absent from ``sets`` = empty)."""
    return selection_masks(sets, n_layers, n_neurons, labels).to(_DTYPE)


def _label_constants(constants: Mapping[str, Any] | None, labels: Sequence[str], mode: str, n_layers: int,
                     n_neurons: int, what: str) -> torch.Tensor | None:
    if mode == "multiply":
        return None
    if constants is None:
        raise ValueError(f"{what}: mode {mode!r} needs constants {{label: [L, N]}} (see steering_constants)")
    missing = [lbl for lbl in labels if lbl not in constants]
    if missing:
        raise ValueError(f"{what}: no steering constant for {missing}")
    # not "multiply" here, so _check_mode returns a tensor
    return torch.stack([cast(torch.Tensor, _check_mode(mode, constants[lbl], n_layers, n_neurons, what))
                        for lbl in labels])


def _per_item(masks: torch.Tensor, weights: np.ndarray, alpha: float, mode: str, consts: torch.Tensor | None,
              name: str, meta: dict) -> Condition:
    sb, ab = _mode_bases(masks, mode, consts)
    coef = torch.from_numpy(alpha * weights).to(_DTYPE)
    return Condition(name, per_item=ItemScale(basis=sb, coef=coef, add_basis=ab), meta=meta)


def label_free(strategy: str, sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int, alpha: float,
               *, first_pass: np.ndarray | torch.Tensor | None = None, mode: Mode = "multiply",
               constants: Mapping[str, Any] | None = None, name: str | None = None,
               meta: Mapping | None = None) -> Condition:
    """A steering condition that needs no target emotion. With ``S_e`` the set of emotion ``e`` (mask ``m_e``) and,
    in ``mode="multiply"`` (the other modes: the same weights on :func:`~helpers.intervene.conditions.steer`'s edit of
    each set):

    * ``"union"``: scale ``1 + alpha`` on ``∪_e S_e``, the same for every item (a neuron in several sets is
      scaled once, as in :func:`~helpers.intervene.conditions.joint`; in the other modes it gets the mean of its sets'
      edits).
    * ``"two_pass"``: run the model once (the baseline, ``first_pass`` = its label logits ``[n_items, C]``); for
      item ``i`` with first-pass prediction ``ê_i = argmax first_pass[i]``, scale ``1 + alpha`` on ``S_{ê_i}``
      only, i.e. ``scale_i = 1 + alpha * m_{ê_i}``.
    * ``"mix"``: with ``p_i = softmax(first_pass[i])`` over the labels (constrained-scoring probabilities),
      ``scale_i = 1 + alpha * sum_e p_{i,e} * m_e``: every emotion's neurons are amplified in proportion to the
      first pass's belief in it; a neuron in several sets gets the sum of their weights.

    ``first_pass`` rows are the items of the table the condition will be run on, in order. ``constants``:
    ``{label: [L, N]}`` for the ``add`` / ``patch_mean`` modes
    (:func:`~helpers.intervene.conditions.steering_constants`).
    """
    what = name or strategy
    a = _check_alpha(alpha, what)
    masks = label_masks(sets, labels, n_layers, n_neurons)
    consts = _label_constants(constants, labels, mode, n_layers, n_neurons, what)
    base_meta = {"kind": "label_free", "strategy": strategy, "mode": mode, "alpha": a, **dict(meta or {})}
    suffix = f"alpha={a:g}" if mode == "multiply" else f"{mode}, alpha={a:g}"
    if strategy == "union":
        covered = masks.amax(0) > 0
        if mode == "multiply":
            scale: torch.Tensor | None = torch.where(covered, torch.tensor(1.0 + a, dtype=_DTYPE),
                                                     torch.tensor(1.0, dtype=_DTYPE))
            return Condition(name or f"union({suffix})", scale=scale, meta=base_meta)
        sb, ab = _mode_bases(masks, mode, consts)
        count = masks.sum(0).clamp(min=1.0)
        scale = None if sb is None else 1.0 + a * sb.sum(0) / count
        add = None if ab is None else a * ab.sum(0) / count
        return Condition(name or f"union({suffix})", scale=scale, add=add, meta=base_meta)
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
    return _per_item(masks, w, a, mode, consts, name or f"{strategy}({suffix})", base_meta)


def oracle(sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int, alpha: float,
           y_true: Sequence[int] | np.ndarray, *, mode: Mode = "multiply", constants: Mapping[str, Any] | None = None,
           name: str | None = None, meta: Mapping | None = None) -> Condition:
    """Oracle-targeted steering: item ``i`` is steered toward its *true* emotion ``y_i``
    (:func:`~helpers.intervene.conditions.steer` on
    ``S_{y_i}``). Not a usable method (it needs the answer) but the upper bound of targeted steering: it shows
    how many errors the sets could fix if the target were always right. ``y_true``: label indices, table order."""
    what = name or "oracle"
    a = _check_alpha(alpha, what)
    y = np.asarray(y_true, dtype=np.int64)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= len(labels))):
        raise ValueError(f"{what}: y_true must be label indices in [0, {len(labels)})")
    masks = label_masks(sets, labels, n_layers, n_neurons)
    consts = _label_constants(constants, labels, mode, n_layers, n_neurons, what)
    w = np.eye(len(labels), dtype=np.float64)[y]
    suffix = f"alpha={a:g}" if mode == "multiply" else f"{mode}, alpha={a:g}"
    return _per_item(masks, w, a, mode, consts, name or f"oracle({suffix})",
                     {"kind": "oracle", "strategy": "oracle", "mode": mode, "alpha": a, **dict(meta or {})})


__all__ = [
    "LABEL_FREE",
    "label_free",
    "label_masks",
    "oracle",
]
