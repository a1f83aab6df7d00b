"""Per-item outcomes of an intervention against the baseline: corrections, damage, change of UAR."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .effects import _outcome_arrays, flip_eligible, flip_rate_to_target, uar

# --------------------------------------------------------------------------------------------------- outcomes
# One function per outcome, so targeted, oracle and label-free steering are scored by the same code and every
# outcome has its own key: a rate over baseline errors (corrections) is never mixed with a rate over the items
# eligible to flip toward a target (flip rate).


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

