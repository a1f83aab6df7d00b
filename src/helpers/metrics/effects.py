"""Effect metrics for neuron interventions: per-class recall, self/cross effects, flip rates, bootstrap CIs.

Why per-class recall everywhere: the paper judges an intervention on emotion *e* by how accuracy on the targeted
class moves compared with how accuracy on the other classes moves. Recall per class (rather than overall accuracy)
keeps a frequent class from hiding what happened to a rare one, and the unweighted mean (UAR) is the standard
speech-emotion summary for the same reason.

Conventions shared by every function here:

* ``y_true`` holds class indices into ``labels`` (``0 .. n_classes-1``); ``y_base`` / ``y_int`` hold the
  baseline and intervened predictions for the *same items in the same order*. A prediction outside
  ``0 .. n_classes-1`` (e.g. ``-1`` for an answer the parser could not map to a label) simply counts as wrong.
* Inputs may be lists, numpy arrays or torch tensors; results are floats, numpy arrays or DataFrames.
* A class with no evaluation items makes its recall undefined; rather than propagating NaN into every average,
  the functions raise a :class:`ValueError` naming the class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

FlipAmong = Literal["baseline_non_target", "all_non_target"]


# --------------------------------------------------------------------------------------------------- input checks
def _as_int_array(x: Any, name: str) -> np.ndarray:
    """1-D int64 numpy view of labels/predictions; torch tensors are moved to CPU without importing torch."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape {arr.shape}.")
    if arr.dtype.kind == "b":
        raise ValueError(f"{name} is boolean; pass class indices (ints), not a correctness mask.")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer floats.")
    elif arr.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer class indices (dtype {arr.dtype} given); map label names to indices first."
        )
    return arr.astype(np.int64, copy=False)


def _n_classes(n_classes: int | None, labels: Sequence[str] | None) -> int:
    """Number of classes from ``n_classes`` or ``labels``; both may be given but must agree."""
    if n_classes is not None and labels is not None and int(n_classes) != len(labels):
        raise ValueError(f"n_classes={n_classes} disagrees with {len(labels)} labels {list(labels)}.")
    if n_classes is not None:
        k = int(n_classes)
    elif labels is not None:
        k = len(labels)
    else:
        raise ValueError("give n_classes or labels so the number of classes is known.")
    if k < 1:
        raise ValueError(f"n_classes must be >= 1, got {k}.")
    return k


def _class_name(c: int, labels: Sequence[str] | None) -> str:
    return f"{labels[c]!r} (index {c})" if labels is not None else f"index {c}"


def _check_true(y_true: np.ndarray, n_classes: int) -> None:
    if y_true.size == 0:
        raise ValueError("y_true is empty: there are no evaluation items.")
    bad = (y_true < 0) | (y_true >= n_classes)
    if bad.any():
        raise ValueError(
            f"y_true holds {np.unique(y_true[bad]).tolist()} outside 0..{n_classes - 1}; "
            "true labels must be indices into labels."
        )


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must describe the same items in the same order, got lengths {lengths}.")


def _require_all_classes(counts: np.ndarray, labels: Sequence[str] | None) -> None:
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = ", ".join(_class_name(int(c), labels) for c in empty)
        raise ValueError(
            f"class {names} has no items in y_true, so its recall is undefined; "
            "add evaluation items for it (or drop the class from labels)."
        )


def _target_index(target: int | str, n_classes: int, labels: Sequence[str] | None) -> int:
    """Accept a target emotion as index or label name (the latter needs ``labels``)."""
    if isinstance(target, str):
        if labels is None:
            raise ValueError(f"target {target!r} is a label name; pass labels to map it to an index.")
        if target not in labels:
            raise ValueError(f"target {target!r} is not one of the labels {list(labels)}.")
        return list(labels).index(target)
    t = int(target)
    if not 0 <= t < n_classes:
        raise ValueError(f"target index {t} outside 0..{n_classes - 1}.")
    return t


# --------------------------------------------------------------------------------------------------- point metrics
def recall_per_class(
    y_true: Any, y_pred: Any, n_classes: int | None = None, *, labels: Sequence[str] | None = None
) -> np.ndarray:
    """Recall (accuracy within class) for every class: ``#(y=c and ŷ=c) / #(y=c)``.

    The paper reads interventions through per-class accuracy, so this is the primitive every effect builds on.
    Raises ``ValueError`` naming the class when some class has no items (its recall would be undefined).
    """
    k = _n_classes(n_classes, labels)
    yt, yp = _as_int_array(y_true, "y_true"), _as_int_array(y_pred, "y_pred")
    _check_same_length(y_true=yt, y_pred=yp)
    _check_true(yt, k)
    counts = np.bincount(yt, minlength=k)
    _require_all_classes(counts, labels)
    hits = np.bincount(yt, weights=(yt == yp).astype(np.float64), minlength=k)
    return hits / counts


def uar(y_true: Any, y_pred: Any, n_classes: int | None = None, *, labels: Sequence[str] | None = None) -> float:
    """Unweighted average recall: the plain mean of per-class recalls, so every emotion counts equally."""
    return float(recall_per_class(y_true, y_pred, n_classes, labels=labels).mean())


@dataclass(frozen=True)
class Effects:
    """Effect of one intervention targeting class ``target`` (all numbers are recall differences in [-1, 1]).

    * ``self_effect``  SE(e) = recall_e(intervened) − recall_e(baseline): what happened to the targeted emotion.
    * ``cross_effect`` CE(e) = mean over c≠e of (recall_c(intervened) − recall_c(baseline)): collateral change.
    * ``gap``          SE(e) − CE(e): specificity. Negative for a successful deactivation (the target lost more
      than the others), positive for successful steering toward e.
    * ``per_class_delta`` recall_c(intervened) − recall_c(baseline) for every class c (one row of the effect
      matrix).
    * ``flip_rate`` see :func:`flip_rate` (default ``among="baseline_non_target"``).
    """

    target: int
    self_effect: float
    cross_effect: float
    gap: float
    flip_rate: float
    per_class_delta: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``per_class_delta`` as a list)."""
        d = asdict(self)
        d["per_class_delta"] = [float(v) for v in self.per_class_delta]
        return d


def _se_ce(delta: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """SE and CE from per-class deltas along the last axis (works for one row or a batch of resamples)."""
    k = delta.shape[-1]
    se = delta[..., target]
    ce = (delta.sum(axis=-1) - se) / (k - 1)
    return se, ce


def effects(
    y_true: Any,
    y_base: Any,
    y_int: Any,
    target: int | str,
    n_classes: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    among: FlipAmong = "baseline_non_target",
) -> Effects:
    """Self effect, cross effect, gap and flip rate of one intervention on emotion ``target``.

    Needs at least two classes (the cross effect averages over the non-target ones) and items in every class.
    ``among`` picks the flip-rate variant (see :func:`flip_rate`).
    """
    k = _n_classes(n_classes, labels)
    if k < 2:
        raise ValueError("effects need at least two classes: the cross effect averages over the non-target ones.")
    t = _target_index(target, k, labels)
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    delta = recall_per_class(yt, yi, k, labels=labels) - recall_per_class(yt, yb, k, labels=labels)
    se, ce = _se_ce(delta, t)
    return Effects(
        target=t,
        self_effect=float(se),
        cross_effect=float(ce),
        gap=float(se - ce),
        flip_rate=flip_rate(yt, yb, yi, t, k, labels=labels, among=among),
        per_class_delta=delta,
    )


def _flip_masks(
    yt: np.ndarray, yb: np.ndarray, yi: np.ndarray, t: int, among: FlipAmong
) -> tuple[np.ndarray, np.ndarray]:
    """(eligible, flipped) item masks for the flip rate toward ``t``."""
    if among == "baseline_non_target":
        eligible = (yt != t) & (yb != t)
    elif among == "all_non_target":
        eligible = yt != t
    else:
        raise ValueError(f"among must be 'baseline_non_target' or 'all_non_target', got {among!r}.")
    return eligible, eligible & (yi == t)


def flip_rate(
    y_true: Any,
    y_base: Any,
    y_int: Any,
    target: int | str,
    n_classes: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    among: FlipAmong = "baseline_non_target",
) -> float:
    """Fraction of eligible items predicted as ``target`` after the intervention (how far steering pushes).

    * ``among="baseline_non_target"`` (default): eligible items have y≠e **and** a baseline prediction ≠e, so
      the rate counts only predictions the intervention actually flipped to e (items the model already called e,
      rightly or wrongly, are excluded).
    * ``among="all_non_target"``: eligible items are all items with y≠e, i.e. the post-intervention rate of
      predicting e on non-e items, including false positives that were already there before the intervention.

    Returns NaN with a ``RuntimeWarning`` when no item is eligible (e.g. the baseline already predicts e
    everywhere): a degenerate but legitimate outcome, unlike an empty class.
    """
    k = _n_classes(n_classes, labels) if (n_classes is not None or labels is not None) else None
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    if k is None:
        if isinstance(target, str):
            raise ValueError(f"target {target!r} is a label name; pass labels to map it to an index.")
        t = int(target)
    else:
        _check_true(yt, k)
        t = _target_index(target, k, labels)
    eligible, flipped = _flip_masks(yt, yb, yi, t, among)
    n = int(eligible.sum())
    if n == 0:
        warnings.warn(
            f"flip rate toward {_class_name(t, labels)} is undefined: no item is eligible (among={among!r}).",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    return float(flipped.sum() / n)


def effect_matrix(
    y_true: Any, y_base: Any, y_int_by_target: Mapping[int | str, Any], labels: Sequence[str]
) -> pd.DataFrame:
    """Matrix ``M[e, c] = recall_c(intervened for e) − recall_c(baseline)`` as a labelled DataFrame.

    Rows are the targeted emotions (in ``labels`` order, only those present in ``y_int_by_target``), columns the
    evaluated classes. A specific intervention shows up as a dominant diagonal; off-diagonal mass is collateral.
    """
    k = len(labels)
    yt, yb = _as_int_array(y_true, "y_true"), _as_int_array(y_base, "y_base")
    base = recall_per_class(yt, yb, k, labels=labels)
    rows: dict[int, np.ndarray] = {}
    for key, y_int in y_int_by_target.items():
        t = _target_index(key, k, labels)
        if t in rows:
            raise ValueError(f"target {_class_name(t, labels)} appears twice in y_int_by_target.")
        yi = _as_int_array(y_int, f"y_int[{key!r}]")
        _check_same_length(y_true=yt, y_int=yi)
        rows[t] = recall_per_class(yt, yi, k, labels=labels) - base
    order = sorted(rows)
    return pd.DataFrame(
        np.stack([rows[t] for t in order]) if order else np.empty((0, k)),
        index=pd.Index([labels[t] for t in order], name="target"),
        columns=pd.Index(list(labels), name="evaluated"),
    )


def _outcome_arrays(y_true: Any, y_base: Any, y_int: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yt = _as_int_array(y_true, "y_true")
    yb, yi = _as_int_array(y_base, "y_base"), _as_int_array(y_int, "y_int")
    _check_same_length(y_true=yt, y_base=yb, y_int=yi)
    return yt, yb, yi


def flip_eligible(y_true: Any, y_base: Any, target: Any, *, exclude_true_target: bool = True) -> np.ndarray:
    """Items that can flip toward ``target`` (an index for every item, or one per item as an array): the baseline
    does not already answer the target and, with ``exclude_true_target``, the item's true label is not the target
    either (a flip to the true label is a correction, counted by :func:`~helpers.metrics.corrections.corrections`). The
    oracle condition
    (target = the true label) needs ``exclude_true_target=False``; its flip rate then equals its corrections."""
    yt, yb = _as_int_array(y_true, "y_true"), _as_int_array(y_base, "y_base")
    _check_same_length(y_true=yt, y_base=yb)
    tg = np.broadcast_to(np.asarray(target, dtype=np.int64), yt.shape)
    elig = yb != tg
    if exclude_true_target:
        elig &= yt != tg
    return elig


def flip_rate_to_target(y_true: Any, y_base: Any, y_int: Any, target: Any, *,
                        exclude_true_target: bool = True) -> float:
    """Share of the eligible items (:func:`flip_eligible`) whose answer becomes the target after the intervention.

    With one target index and ``exclude_true_target=True`` this is :func:`flip_rate` with
    ``among="baseline_non_target"``. NaN (no warning) when no item is eligible."""
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    elig = flip_eligible(yt, yb, target, exclude_true_target=exclude_true_target)
    tg = np.broadcast_to(np.asarray(target, dtype=np.int64), yt.shape)
    return float((yi[elig] == tg[elig]).mean()) if elig.any() else math.nan

