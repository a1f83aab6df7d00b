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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

FlipAmong = Literal["baseline_non_target", "all_non_target"]

#: Resamples x items gathered at once by the vectorised bootstrap (~16 MB per int64 index chunk; larger is no faster).
MAX_BOOT_ELEMENTS: int = 2_000_000

#: Computed columns of :func:`dose_response_table`, in order (carried record keys follow).
DOSE_RESPONSE_COLUMNS: tuple[str, ...] = (
    *("param", "target", "self_effect", "cross_effect", "gap", "flip_rate", "ci_low", "ci_high"),
    *("self_ci_low", "self_ci_high", "cross_ci_low", "cross_ci_high", "flip_ci_low", "flip_ci_high"),
    *("uar_base", "uar_int", "n_items"),
)

#: Keys of a dose-response record that hold data rather than condition parameters.
_RECORD_DATA_KEYS: frozenset[str] = frozenset({"y_true", "y_base", "y_int", "target"})


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


# --------------------------------------------------------------------------------------------------- outcomes
# One function per outcome, so targeted, oracle and label-free steering are scored by the same code and every
# outcome has its own key: a rate over baseline errors (corrections) is never mixed with a rate over the items
# eligible to flip toward a target (flip rate).


def _outcome_arrays(y_true: Any, y_base: Any, y_int: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yt = _as_int_array(y_true, "y_true")
    yb, yi = _as_int_array(y_base, "y_base"), _as_int_array(y_int, "y_int")
    _check_same_length(y_true=yt, y_base=yb, y_int=yi)
    return yt, yb, yi


def corrections(y_true: Any, y_base: Any, y_int: Any) -> float:
    """Share of the baseline's errors that the intervention fixes: ``#(ŷ_base ≠ y and ŷ_int = y) / #(ŷ_base ≠ y)``.

    NaN when the baseline makes no error (nothing to correct)."""
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    wrong = yb != yt
    return float((yi[wrong] == yt[wrong]).mean()) if wrong.any() else math.nan


def damage(y_true: Any, y_base: Any, y_int: Any) -> float:
    """Share of the baseline's correct answers that the intervention breaks: ``#(ŷ_base = y and ŷ_int ≠ y) /
    #(ŷ_base = y)``. NaN when the baseline gets nothing right."""
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    right = yb == yt
    return float((yi[right] != yt[right]).mean()) if right.any() else math.nan


def delta_uar(y_true: Any, y_base: Any, y_int: Any, n_classes: int | None = None, *,
              labels: Sequence[str] | None = None) -> float:
    """``UAR(intervened) − UAR(baseline)``: the change of unweighted average recall."""
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    return uar(yt, yi, n_classes, labels=labels) - uar(yt, yb, n_classes, labels=labels)


def flip_eligible(y_true: Any, y_base: Any, target: Any, *, exclude_true_target: bool = True) -> np.ndarray:
    """Items that can flip toward ``target`` (an index for every item, or one per item as an array): the baseline
    does not already answer the target and, with ``exclude_true_target``, the item's true label is not the target
    either (a flip to the true label is a correction, counted by :func:`corrections`). The oracle condition
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


#: Keys of :func:`outcomes`, in report order.
OUTCOME_KEYS: tuple[str, ...] = ("corrections", "damage", "delta_uar", "flip_rate_to_target")


def outcomes(y_true: Any, y_base: Any, y_int: Any, labels: Sequence[str], *, target: Any = None,
             exclude_true_target: bool = True) -> dict[str, float]:
    """All four outcomes of one intervention (:data:`OUTCOME_KEYS`) plus the counts they are rates over
    (``n_errors_base``, ``n_correct_base``, ``n_eligible``). ``target`` None (a label-free strategy has no target):
    ``flip_rate_to_target`` is NaN and ``n_eligible`` 0."""
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    out = {"corrections": corrections(yt, yb, yi), "damage": damage(yt, yb, yi),
           "delta_uar": delta_uar(yt, yb, yi, labels=labels), "flip_rate_to_target": math.nan}
    n_elig = 0
    if target is not None:
        out["flip_rate_to_target"] = flip_rate_to_target(yt, yb, yi, target, exclude_true_target=exclude_true_target)
        n_elig = int(flip_eligible(yt, yb, target, exclude_true_target=exclude_true_target).sum())
    out.update({"n_errors_base": int((yb != yt).sum()), "n_correct_base": int((yb == yt).sum()),
                "n_eligible": n_elig})
    return out


# --------------------------------------------------------------------------------------------------- bootstrap
def _resample_chunks(
    rng: np.random.Generator, n: int, n_boot: int, strata: np.ndarray | None, max_elements: int
) -> Iterator[np.ndarray]:
    """Yield index arrays ``[chunk, n]`` of resampled items; stratified resampling keeps each stratum's size."""
    chunk = max(1, max_elements // max(n, 1))
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)] if strata is not None else None
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if groups is None:
            yield rng.integers(0, n, size=(b, n))
        else:
            yield np.concatenate([g[rng.integers(0, len(g), size=(b, len(g)))] for g in groups], axis=1)


def _percentile_interval(stats: np.ndarray, ci: float, name: str) -> tuple[float, float]:
    """Percentile interval ignoring NaN resamples (warned about, since they shrink the effective n_boot)."""
    finite = stats[~np.isnan(stats)]
    dropped = stats.size - finite.size
    if finite.size == 0:
        raise ValueError(
            f"every bootstrap resample left {name} undefined (a class was always empty); "
            "use stratify=True or add evaluation items."
        )
    if dropped:
        warnings.warn(
            f"{dropped}/{stats.size} bootstrap resamples left {name} undefined (a class or the flip-eligible set "
            "was empty) and were dropped; consider stratify=True.",
            RuntimeWarning,
            stacklevel=3,
        )
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _check_boot_args(n_boot: int, ci: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}.")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}.")


def bootstrap_ci(
    stat_fn: Callable[..., Any],
    *arrays: Any,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    batched: bool = False,
    strata: Any = None,
    max_elements: int = MAX_BOOT_ELEMENTS,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat_fn(*arrays)`` over items, resampled with replacement.

    Resampling is *paired*: one set of item indices is applied to every array, so baseline and intervened
    predictions of the same item stay together and their difference keeps its within-item correlation.

    * ``batched=False``: ``stat_fn`` gets 1-D arrays and returns a scalar (a Python loop over resamples: general
      but slow; prefer :func:`bootstrap_effects` for the built-in statistics).
    * ``batched=True``: ``stat_fn`` gets arrays of shape ``[chunk, n_items]`` and returns ``[chunk]`` values; the
      resamples are drawn as index arrays in chunks of at most ``max_elements`` elements.
    * ``strata`` (e.g. ``y_true``): resample within each stratum so class sizes stay fixed and no class empties.

    Resamples whose statistic is NaN are dropped with a warning.
    """
    _check_boot_args(n_boot, ci)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample.")
    arrs = [np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"arrays must have the same number of items, got {[len(a) for a in arrs]}.")
    if n == 0:
        raise ValueError("cannot bootstrap zero items.")
    st = None if strata is None else np.asarray(strata.detach().cpu().numpy() if hasattr(strata, "detach") else strata)
    if st is not None and len(st) != n:
        raise ValueError(f"strata has {len(st)} entries for {n} items.")
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for idx in _resample_chunks(rng, n, n_boot, st, max_elements):
        if batched:
            vals = np.asarray(stat_fn(*(a[idx] for a in arrs)), dtype=np.float64).reshape(-1)
            if vals.size != idx.shape[0]:
                raise ValueError(f"batched stat_fn returned {vals.size} values for {idx.shape[0]} resamples.")
        else:
            vals = np.array([float(stat_fn(*(a[row] for a in arrs))) for row in idx])
        out.append(vals)
    return _percentile_interval(np.concatenate(out), ci, getattr(stat_fn, "__name__", "statistic"))


def _batched_recalls(yt_b: np.ndarray, correct_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (counts, hits) for a batch of resamples ``[b, n]`` with one bincount over offset labels."""
    b = yt_b.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * k + yt_b).ravel()
    counts = np.bincount(flat, minlength=b * k).reshape(b, k)
    hits = np.bincount(flat, weights=correct_b.ravel().astype(np.float64), minlength=b * k).reshape(b, k)
    return counts, hits


def bootstrap_effects(
    y_true: Any,
    y_base: Any,
    y_int: Any,
    target: int | str,
    n_classes: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    stratify: bool = False,
    among: FlipAmong = "baseline_non_target",
    max_elements: int = MAX_BOOT_ELEMENTS,
) -> dict[str, tuple[float, float]]:
    """Paired percentile bootstrap intervals for ``self_effect``, ``cross_effect``, ``gap`` and ``flip_rate``.

    Vectorised: resamples are index arrays ``[chunk, n_items]`` and per-class counts come from a single
    ``np.bincount`` per chunk, so 1000 resamples of a few thousand items take milliseconds. The same indices
    serve baseline and intervened predictions (paired), so identical predictions give an interval of exactly
    ``(0, 0)`` for every effect. With plain resampling a rare class can vanish from a resample; such resamples are
    dropped with a warning, and ``stratify=True`` (resample within each true class) avoids them altogether.
    """
    _check_boot_args(n_boot, ci)
    k = _n_classes(n_classes, labels)
    if k < 2:
        raise ValueError("effects need at least two classes: the cross effect averages over the non-target ones.")
    t = _target_index(target, k, labels)
    yt, yb, yi = _outcome_arrays(y_true, y_base, y_int)
    _check_true(yt, k)
    _require_all_classes(np.bincount(yt, minlength=k), labels)
    eligible, flipped = _flip_masks(yt, yb, yi, t, among)
    correct_b, correct_i = yb == yt, yi == yt

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"self_effect": [], "cross_effect": [], "gap": [], "flip_rate": []}
    for idx in _resample_chunks(rng, len(yt), n_boot, yt if stratify else None, max_elements):
        yt_b = yt[idx]
        counts, hits_b = _batched_recalls(yt_b, correct_b[idx], k)
        _, hits_i = _batched_recalls(yt_b, correct_i[idx], k)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = (hits_i - hits_b) / counts  # NaN where a class is empty in this resample
            n_elig = eligible[idx].sum(axis=1)
            fr = np.where(n_elig > 0, flipped[idx].sum(axis=1) / np.maximum(n_elig, 1), np.nan)
        delta[(counts == 0).any(axis=1)] = np.nan
        se, ce = _se_ce(delta, t)
        parts["self_effect"].append(se)
        parts["cross_effect"].append(ce)
        parts["gap"].append(se - ce)
        parts["flip_rate"].append(fr)
    return {name: _percentile_interval(np.concatenate(v), ci, name) for name, v in parts.items()}


@dataclass(frozen=True)
class BootstrapSettings:
    """How bootstrap intervals are drawn (one object passed through an experiment instead of three arguments)."""

    n_boot: int = 1000
    """Number of resamples; 0 skips the bootstrap (intervals are NaN)."""
    ci: float = 0.95
    """Coverage of the percentile interval, strictly between 0 and 1."""
    seed: int = 0
    """Seed of the resampling generator; the same seed gives every condition over the same items the same
    resamples, so their intervals are comparable."""

    def __post_init__(self) -> None:
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 0:
            raise ValueError(f"n_boot must be an integer >= 0, got {self.n_boot!r}")
        if not 0.0 < float(self.ci) < 1.0:
            raise ValueError(f"ci must lie strictly between 0 and 1, got {self.ci!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


def _draws_by_target(y_int_by_target: Mapping[Any, Any], k: int, labels: Sequence[str] | None, n: int
                     ) -> list[tuple[int, np.ndarray]]:
    out = []
    for key, y in y_int_by_target.items():
        arr = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
        arr = arr.reshape(1, -1) if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] == 0:
            raise ValueError(f"predictions for target {key!r} must be [n_items] or [n_draws, n_items] with "
                             f"n_items = {n}, got shape {arr.shape}")
        draws = np.stack([_as_int_array(row, f"y_int[{key!r}]") for row in arr])
        out.append((_target_index(key, k, labels), draws))
    if not out:
        raise ValueError("need predictions for at least one target")
    return out


def mean_gap(y_true: Any, y_base: Any, y_int_by_target: Mapping[Any, Any], n_classes: int | None = None, *,
             labels: Sequence[str] | None = None) -> float:
    """Mean over targets of the gap SE − CE; a target with several draws (``[n_draws, n_items]``, e.g. random
    controls over seeds) contributes the mean over its draws, so every emotion weighs the same."""
    k = _n_classes(n_classes, labels)
    yt, yb = _as_int_array(y_true, "y_true"), _as_int_array(y_base, "y_base")
    gaps = [np.mean([effects(yt, yb, d, t, k, labels=labels).gap for d in draws])
            for t, draws in _draws_by_target(y_int_by_target, k, labels, len(yt))]
    return float(np.mean(gaps))


def bootstrap_mean_gap(
    y_true: Any,
    y_base: Any,
    y_int_by_target: Mapping[Any, Any],
    n_classes: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    max_elements: int = MAX_BOOT_ELEMENTS,
) -> tuple[float, float]:
    """Joint stratified percentile bootstrap of :func:`mean_gap`.

    Each replicate resamples the items *within each true class* (so no class empties and class sizes stay
    fixed) and applies the same resample to the baseline and to every target's (and every draw's) predictions,
    then computes the mean-over-emotions gap. The interval is the percentile interval of these replicate means.
    This is the interval of the mean gap; averaging per-emotion interval endpoints is not (it ignores that the
    emotions' errors partly cancel and is too wide, and has no coverage guarantee). With one target it equals
    :func:`bootstrap_effects`'s ``stratify=True`` gap interval for the same seed.
    """
    _check_boot_args(n_boot, ci)
    k = _n_classes(n_classes, labels)
    if k < 2:
        raise ValueError("effects need at least two classes: the cross effect averages over the non-target ones.")
    yt, yb = _as_int_array(y_true, "y_true"), _as_int_array(y_base, "y_base")
    _check_same_length(y_true=yt, y_base=yb)
    _check_true(yt, k)
    _require_all_classes(np.bincount(yt, minlength=k), labels)
    targets = _draws_by_target(y_int_by_target, k, labels, len(yt))
    correct_b = yb == yt
    rng = np.random.default_rng(seed)
    reps: list[np.ndarray] = []
    for idx in _resample_chunks(rng, len(yt), n_boot, yt, max_elements):
        yt_b = yt[idx]
        counts, hits_b = _batched_recalls(yt_b, correct_b[idx], k)
        per_target = []
        for t, draws in targets:
            g = np.zeros(idx.shape[0])
            for d in draws:
                _, hits_i = _batched_recalls(yt_b, (d == yt)[idx], k)
                se, ce = _se_ce((hits_i - hits_b) / counts, t)
                g += se - ce
            per_target.append(g / len(draws))
        reps.append(np.mean(per_target, axis=0))
    return _percentile_interval(np.concatenate(reps), ci, "mean gap")


# --------------------------------------------------------------------------------------------------- aggregation
_AGG_KEYS: tuple[str, ...] = ("self_effect", "cross_effect", "gap", "flip_rate")


def _effect_value(e: Effects | Mapping[str, Any], key: str) -> float | None:
    if isinstance(e, Effects):
        return float(getattr(e, key))
    v = e.get(key)
    return None if v is None else float(v)


def aggregate_random(
    results: Sequence[Effects | Mapping[str, Any]] | Mapping[Any, Effects | Mapping[str, Any]],
) -> dict:
    """Mean, std and per-seed values of SE/CE/gap/flip rate over random-mask controls.

    Why: a real selector's gap only means something next to the spread of gaps from random masks of the same
    size. ``results`` is a list of :class:`Effects` (or dicts with those keys), or a ``{seed: Effects}`` mapping
    whose keys are kept as ``"seeds"``. ``std`` is the sample standard deviation (ddof=1); it is NaN for a
    single seed, since one draw says nothing about spread. NaN values (e.g. undefined flip rates) are ignored.
    """
    seeds: list[Any] | None
    if isinstance(results, Mapping) and not isinstance(results, Effects):
        seeds, items = list(results.keys()), list(results.values())
    else:
        seeds, items = None, list(results)
    if not items:
        raise ValueError("aggregate_random needs at least one random-mask result.")
    out: dict[str, Any] = {"n_seeds": len(items), "seeds": seeds}
    for key in _AGG_KEYS:
        vals = [_effect_value(e, key) for e in items]
        if all(v is None for v in vals):
            continue
        arr = np.array([math.nan if v is None else v for v in vals], dtype=np.float64)
        finite = arr[~np.isnan(arr)]
        out[key] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "values": [float(v) for v in arr],
        }
    return out


# --------------------------------------------------------------------------------------------------- tables
def dose_response_table(
    records: Iterable[Mapping[str, Any]],
    labels: Sequence[str],
    *,
    param_key: str = "param",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    stratify: bool = False,
    among: FlipAmong = "baseline_non_target",
) -> pd.DataFrame:
    """One tidy row per intervention condition, ready for seaborn (``x="param", hue="target"``).

    Each record holds ``target`` (index or label name), ``y_true``, ``y_base``, ``y_int`` and the condition's
    parameter under ``param_key`` (e.g. ``"alpha"`` or ``"k"``, copied to the ``param`` column). Every other
    scalar key (``selector``, ``mode``, ``seed``...) is carried through as a column.

    Columns: ``param, target, self_effect, cross_effect, gap, flip_rate, ci_low, ci_high`` (``ci_*`` = interval
    of the gap), then ``self_ci_*``, ``cross_ci_*``, ``flip_ci_*``, ``uar_base``, ``uar_int``, ``n_items`` and the
    carried keys. ``n_boot=0`` skips the bootstrap (interval columns are NaN). Every row uses the same ``seed``,
    so rows over the same items share resamples and stay comparable.
    """
    rows: list[dict[str, Any]] = []
    extra_cols: list[str] = []
    for i, rec in enumerate(records):
        missing = [key for key in (*_RECORD_DATA_KEYS, param_key) if key not in rec]
        if missing:
            raise ValueError(
                f"record {i} lacks key(s) {missing}; each needs target, y_true, y_base, y_int, "
                f"and the swept parameter {param_key!r}."
            )
        eff = effects(rec["y_true"], rec["y_base"], rec["y_int"], rec["target"], labels=labels, among=among)
        row: dict[str, Any] = {
            "param": rec[param_key],
            "target": labels[eff.target],
            "self_effect": eff.self_effect,
            "cross_effect": eff.cross_effect,
            "gap": eff.gap,
            "flip_rate": eff.flip_rate,
        }
        if n_boot > 0:
            iv = bootstrap_effects(
                rec["y_true"],
                rec["y_base"],
                rec["y_int"],
                eff.target,
                labels=labels,
                n_boot=n_boot,
                ci=ci,
                seed=seed,
                stratify=stratify,
                among=among,
            )
        else:
            iv = {key: (math.nan, math.nan) for key in _AGG_KEYS}
        row["ci_low"], row["ci_high"] = iv["gap"]
        row["self_ci_low"], row["self_ci_high"] = iv["self_effect"]
        row["cross_ci_low"], row["cross_ci_high"] = iv["cross_effect"]
        row["flip_ci_low"], row["flip_ci_high"] = iv["flip_rate"]
        row["uar_base"] = uar(rec["y_true"], rec["y_base"], labels=labels)
        row["uar_int"] = uar(rec["y_true"], rec["y_int"], labels=labels)
        row["n_items"] = len(_as_int_array(rec["y_true"], "y_true"))
        for key, v in rec.items():
            if key in _RECORD_DATA_KEYS or key == param_key or not np.isscalar(v):
                continue
            if key in row:
                raise ValueError(f"record key {key!r} clashes with a computed column; rename it.")
            if key not in extra_cols:
                extra_cols.append(key)
            row[key] = v
        rows.append(row)
    return pd.DataFrame(rows, columns=[*DOSE_RESPONSE_COLUMNS, *extra_cols])


def summarise_gaps(
    records: pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    selector_key: str = "selector",
    labels: Sequence[str] | None = None,
) -> dict[str, float]:
    """``{selector: mean over target emotions of gap}`` for the stage's ``metrics.json``.

    ``records`` is a DataFrame (e.g. from :func:`dose_response_table`) or an iterable of mappings, each with the
    selector under ``selector_key``, a ``target`` and either a ``gap`` or the raw ``y_true``/``y_base``/``y_int``
    (then ``labels`` is needed to compute it). Several rows for one (selector, target), e.g. random seeds, are
    averaged first so that every emotion weighs the same in the selector's mean.
    """
    if isinstance(records, pd.DataFrame):
        recs = cast(list[Mapping[str, Any]], records.to_dict("records"))  # column names are str
    else:
        recs = list(records)
    rows = []
    for i, rec in enumerate(recs):
        if selector_key not in rec or "target" not in rec:
            raise ValueError(f"record {i} lacks {selector_key!r} or 'target'.")
        if "gap" in rec and rec["gap"] is not None:
            gap = float(rec["gap"])
        elif all(key in rec for key in ("y_true", "y_base", "y_int")):
            if labels is None:
                raise ValueError(f"record {i} has predictions but no gap; pass labels to compute it.")
            gap = effects(rec["y_true"], rec["y_base"], rec["y_int"], rec["target"], labels=labels).gap
        else:
            raise ValueError(f"record {i} needs a 'gap' or the predictions y_true, y_base, y_int.")
        rows.append({"selector": rec[selector_key], "target": rec["target"], "gap": gap})
    if not rows:
        return {}
    df = pd.DataFrame(rows)
    per_target = df.groupby(["selector", "target"], sort=False)["gap"].mean()
    per_selector = per_target.groupby(level="selector", sort=False).mean()
    return {str(sel): float(v) for sel, v in per_selector.items()}
