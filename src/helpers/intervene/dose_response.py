"""Dose-response curves: the deactivation effect against the number of neurons (k) and the steering
strength (alpha)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..core.models import gate_shape
from ..core.neuron_sets import as_pairs, random_sets
from ..core.subject import Subject
from ..metrics import summaries
from .conditions import Mode, Pairs, Selection, SteeringSettings, deactivate, identity, steer, steering_constants
from .deactivation import _truth, control_name
from .per_item import softmax_np
from .runner import DEFAULT_MAX_ROWS, run_conditions


def _prefix(pairs: Pairs, k: int, L: int, N: int, what: str) -> torch.Tensor:
    t = as_pairs(pairs, L, N, what=what)
    return t[: max(0, int(k))]


def dose_response_k(subject: Subject, df: pd.DataFrame, selection: Selection, ks: Iterable[int], *,
                    mode: Literal["deactivate", "steer"] = "deactivate", alpha: float = 1.0, selector: str = "",
                    random_seeds: Sequence[int] = (), match_layers: bool = False,
                    beyond: Literal["clamp", "skip"] = "clamp", batch_size: int = 32, positions: str = "all",
                    max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                    progress: bool = True) -> pd.DataFrame:
    """Effects as a function of the number of neurons ``k``: the top-``k`` prefix of each emotion's ranked set.

    ``mode="deactivate"`` zeroes them; ``"steer"`` scales them by ``1 + alpha``. ``k = 0`` is the empty set, i.e.
    the baseline (all effects 0). A set never gives more neurons than it holds: for ``k`` beyond a set's size,
    ``beyond="clamp"`` (default) uses the whole set (``k_effective`` < ``k``, ``clamped`` True) and
    ``beyond="skip"`` drops the row. Each ``random_seeds`` entry adds a random control of exactly the
    ``k_effective`` neurons the selector got (never more): with ``match_layers=False`` the prefixes of one random
    draw matched to the whole set (so the random sets are nested in ``k`` like the ranked ones); with
    ``match_layers=True`` a fresh draw per ``k`` with the same count per layer as the selector's prefix.

    Returns :func:`helpers.metrics.summaries.dose_response_table` (``param`` = k) with carried columns ``selector``,
    ``mode``, ``k_effective``, ``clamped``, ``control`` and ``seed`` (random rows).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    ks = [int(k) for k in ks]
    if any(k < 0 for k in ks):
        raise ValueError(f"k must be >= 0, got {ks}")
    if mode not in ("deactivate", "steer"):
        raise ValueError(f"mode must be 'deactivate' or 'steer', got {mode!r}")
    if beyond not in ("clamp", "skip"):
        raise ValueError(f"beyond must be 'clamp' or 'skip', got {beyond!r}")
    salt = f"{selector or 'set'}|dose"
    kind = "random(layer-matched)" if match_layers else "random"
    rname = control_name(selector, kind) if selector else ("random" if not match_layers else "random(layer-matched)")
    conds = [identity()]
    for target, pairs in selection.items():
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
        full = as_pairs(pairs, L, N, what=f"set {target!r}")
        size = int(full.shape[0])
        nested = {s: random_sets({target: full}, (L, N), seed=int(s), salt=salt)[target] for s in random_seeds}
        for k in ks:
            if k > size and beyond == "skip":
                continue
            k_eff = min(k, size)
            variants: list[tuple[int | None, torch.Tensor]] = [(None, full[:k_eff])]
            for s in random_seeds:
                if match_layers:
                    r = random_sets({target: full[:k_eff]}, (L, N), seed=int(s), salt=f"{salt}|k={k_eff}",
                                    match_layers=True)[target]
                else:
                    r = nested[s][:k_eff]
                variants.append((int(s), r))
            for rs, sub in variants:
                meta = {"target": target, "k": k, "k_effective": k_eff, "clamped": k > size,
                        "selector": selector if rs is None else rname}
                if rs is not None:
                    meta["seed"] = rs
                name = f"{mode}[{meta['selector']}:{target}:k={k}" + (f":seed{rs}]" if rs is not None else "]")
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
               "clamped": c.meta["clamped"], "control": "seed" in c.meta}
        if mode == "steer":
            rec["alpha"] = float(alpha)
        if "seed" in c.meta:
            rec["seed"] = c.meta["seed"]
        records.append(rec)
    return _dose_table(records, labels, "k", n_boot, seed)


def _dose_table(records: list[dict], labels: Sequence[str], param_key: str, n_boot: int, seed: int) -> pd.DataFrame:
    """:func:`helpers.metrics.summaries.dose_response_table` row by row (same seed, so rows share resamples), keeping a
    row whose flip rate is undefined in every resample (e.g. the baseline already predicts the target everywhere)
    with NaN intervals instead of failing the whole table."""
    import warnings

    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined flip rates (NaN) are expected for some rows
        for rec in records:
            try:
                part = summaries.dose_response_table([rec], labels, param_key=param_key, n_boot=n_boot, seed=seed,
                                                     stratify=True)
            except ValueError:
                if n_boot <= 0:
                    raise
                part = summaries.dose_response_table([rec], labels, param_key=param_key, n_boot=0, seed=seed)
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(summaries.DOSE_RESPONSE_COLUMNS))
    return pd.concat(parts, ignore_index=True)


def dose_response_alpha(subject: Subject, df: pd.DataFrame, selection: Selection, alphas: Iterable[float], *,
                        k: int | None = None, selector: str = "", mode: Mode = "multiply", stats: Any = None,
                        settings: SteeringSettings = SteeringSettings(), batch_size: int = 32, positions: str = "all",
                        max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                        progress: bool = True) -> pd.DataFrame:
    """Steering strength: steer each emotion's neurons (top-``k`` prefix if given) with
    :func:`~helpers.intervene.conditions.steer` in ``mode``
    (``stats``: the identification stats, needed for the ``add`` / ``patch_mean`` constants) on all items.

    ``alpha`` may be negative (attenuation; ``-1`` = deactivation in the multiply mode) or 0 (the baseline). Per
    (target, alpha) the row has the :func:`helpers.metrics.summaries.dose_response_table` columns (``param`` = alpha;
    ``flip_rate`` = share of items of *other* emotions, not already predicted as the target, that flip to it)
    and ``mode`` plus:

    * ``acc_others_base`` / ``acc_others_int``: accuracy on the items of the other emotions before / after;
    * ``acc_target_base`` / ``acc_target_int``: recall of the target emotion before / after;
    * ``p_target_shift``: mean change, over other-emotion items, of the target's softmax probability (label logits).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(a) for a in alphas]
    consts = steering_constants(stats, mode, settings)
    conds = [identity()]
    for target, pairs in selection.items():
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
        sub = _prefix(pairs, k, L, N, f"set {target!r}") if k is not None else pairs
        for a in alphas:
            conds.append(steer(sub, L, N, a, mode=mode, constant=None if consts is None else consts[target],
                               name=f"steer[{selector}:{target}:{mode}:alpha={a:g}]",
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
            "y_int": preds[j], "selector": selector, "mode": mode, "n_neurons": c.meta["n_neurons"],
            "acc_others_base": float((preds[0][others] == y_true[others]).mean()) if others.any() else math.nan,
            "acc_others_int": float((preds[j][others] == y_true[others]).mean()) if others.any() else math.nan,
            "acc_target_base": float((preds[0][~others] == t).mean()) if (~others).any() else math.nan,
            "acc_target_int": float((preds[j][~others] == t).mean()) if (~others).any() else math.nan,
            "p_target_shift": float((prob[j][others, t] - prob[0][others, t]).mean()) if others.any() else math.nan,
        }
        records.append(rec)
    return _dose_table(records, labels, "alpha", n_boot, seed)


__all__ = [
    "dose_response_alpha",
    "dose_response_k",
]
