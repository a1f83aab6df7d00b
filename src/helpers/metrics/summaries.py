"""Result tables from effect records: random controls aggregated, dose-response tables, gap summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from .bootstrap import bootstrap_effects
from .effects import Effects, FlipAmong, _as_int_array, effects, uar

#: Computed columns of :func:`dose_response_table`, in order (carried record keys follow).
DOSE_RESPONSE_COLUMNS: tuple[str, ...] = (
    *("param", "target", "self_effect", "cross_effect", "gap", "flip_rate", "ci_low", "ci_high"),
    *("self_ci_low", "self_ci_high", "cross_ci_low", "cross_ci_high", "flip_ci_low", "flip_ci_high"),
    *("uar_base", "uar_int", "n_items"),
)


#: Keys of a dose-response record that hold data rather than condition parameters.
_RECORD_DATA_KEYS: frozenset[str] = frozenset({"y_true", "y_base", "y_int", "target"})


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
    size. ``results`` is a list of :class:`~helpers.metrics.effects.Effects` (or dicts with those keys), or a ``{seed:
    Effects}`` mapping
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

