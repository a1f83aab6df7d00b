"""The steering experiment (targeted, oracle and label-free strategies; multiply / add / patch_mean modes),
its metrics, and the non-additivity of joint steering."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from ..core.models import gate_shape
from ..core.neuron_sets import as_mask, as_pairs
from ..core.subject import Subject
from ..metrics import bootstrap, corrections, effects
from .conditions import MODES, Condition, Selection, SteeringSettings, identity, joint, steer, steering_constants
from .deactivation import _truth
from .dose_response import _prefix
from .per_item import label_free, log_softmax_np, oracle
from .runner import DEFAULT_MAX_ROWS, run_conditions

Strategy = Literal["targeted", "oracle", "two_pass", "union", "mix"]


#: The steering strategies of :func:`steering_experiment`, in report order.
STRATEGIES: tuple[str, ...] = ("targeted", "oracle", "two_pass", "union", "mix")


def _rate_ci(hits: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of a proportion over the eligible items (NaN if none or n_boot = 0)."""
    if n_boot <= 0 or hits.size == 0:
        return math.nan, math.nan
    return bootstrap.bootstrap_ci(lambda h: h.mean(axis=1), hits.astype(np.float64), n_boot=n_boot, seed=seed,
                                  batched=True)


def steering_experiment(subject: Subject, df: pd.DataFrame, selection: Selection, alphas: Iterable[float], *,
                        strategies: Sequence[str] = STRATEGIES, settings: SteeringSettings = SteeringSettings(),
                        stats: Any = None, k: int | None = None, batch_size: int = 32, positions: str = "all",
                        max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                        progress: bool = True) -> pd.DataFrame:
    """Targeted, oracle-targeted and label-free steering (:func:`~helpers.intervene.per_item.label_free`), over
    ``alphas`` and the steering
    modes ``settings.modes`` (``stats``: the identification stats, for the ``add`` / ``patch_mean`` constants).

    One row per (mode, strategy, alpha, target): ``target`` is the steered emotion for ``targeted`` rows, plus
    one ``target="mean"`` row per (mode, alpha) averaging them; ``oracle`` rows (each item toward its own true
    emotion, :func:`~helpers.intervene.per_item.oracle`) have ``target="true"``, label-free rows ``target="all"``. Every
    row is scored by
    the same outcome functions of :mod:`helpers.metrics`, each under its own key:

    * ``corrections`` — share of the baseline's errors now correct (all items; for a targeted row most errors are
      of other emotions, which steering toward e cannot fix: see ``corrections_target_class`` and the oracle);
    * ``damage`` — share of the baseline's correct answers now wrong;
    * ``delta_uar`` — UAR change;
    * ``flip_rate_to_target`` — targeted: among items whose true emotion and baseline answer are not the target,
      the share now answered as the target; oracle: the target is the true label, so it equals ``corrections``;
      label-free: NaN (no target);
    * ``corrections_target_class`` (targeted only) — the baseline's errors on the target emotion's own items
      that are now correct;
    * intervals ``flip_ci_*`` (over the flip-eligible items) and ``corrections_ci_*`` (over the baseline's
      errors), counts ``n_eligible``, ``n_errors_base``, ``n_correct_base``, and ``acc_*``, ``uar_*``.

    The two-pass and mix strategies use the baseline of this same sweep as their first pass. :func:`steering_metrics`
    turns the table into ``metrics.json`` form.
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(a) for a in alphas]
    strategies = list(strategies)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    sel = {lbl: (_prefix(p, k, L, N, f"set {lbl!r}") if k is not None else p) for lbl, p in selection.items()}
    for target in sel:
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
    kw: dict[str, Any] = {"batch_size": batch_size, "positions": positions, "max_rows": max_rows, "progress": progress}
    base_logits = run_conditions(subject, df, [identity()], **kw)[0]
    y_base = base_logits.argmax(-1)
    conds: list[Condition] = []
    for mode in settings.modes:
        consts = steering_constants(stats, mode, settings)
        for a in alphas:
            for strat in strategies:
                if strat == "targeted":
                    for target, pairs in sel.items():
                        const = None if consts is None else consts[target]
                        conds.append(steer(pairs, L, N, a, mode=mode, constant=const,
                                           name=f"targeted[{target}:{mode}:alpha={a:g}]",
                                           meta={"strategy": "targeted", "target": target}))
                elif strat == "oracle":
                    conds.append(oracle(sel, labels, L, N, a, y_true, mode=mode, constants=consts))
                else:
                    conds.append(label_free(strat, sel, labels, L, N, a, first_pass=base_logits, mode=mode,
                                            constants=consts))
    logits = run_conditions(subject, df, conds, **kw)
    preds = logits.argmax(-1)
    rows = []
    for j, c in enumerate(conds):
        strat, a, mode = c.meta["strategy"], c.meta["alpha"], c.meta["mode"]
        yi = preds[j]
        extra: dict[str, Any] = {}
        if strat == "targeted":
            t = labels.index(c.meta["target"])
            out = corrections.outcomes(y_true, y_base, yi, labels, target=t)
            elig = effects.flip_eligible(y_true, y_base, t)
            flip_hits = yi[elig] == t
            own = (y_true == t) & (y_base != t)
            extra["corrections_target_class"] = float((yi[own] == t).mean()) if own.any() else math.nan
            target = c.meta["target"]
        elif strat == "oracle":
            out = corrections.outcomes(y_true, y_base, yi, labels, target=y_true, exclude_true_target=False)
            elig = y_base != y_true
            flip_hits = yi[elig] == y_true[elig]
            target = "true"
        else:
            out = corrections.outcomes(y_true, y_base, yi, labels)
            flip_hits = np.zeros(0, dtype=bool)
            target = "all"
        wrong = y_base != y_true
        lo, hi = _rate_ci(flip_hits, n_boot, seed)
        clo, chi = _rate_ci(yi[wrong] == y_true[wrong], n_boot, seed)
        rows.append({"mode": mode, "strategy": strat, "alpha": a, "target": target, **out,
                     "corrections_target_class": extra.get("corrections_target_class", math.nan),
                     "flip_ci_low": lo, "flip_ci_high": hi, "corrections_ci_low": clo, "corrections_ci_high": chi,
                     "acc_base": float((y_base == y_true).mean()), "acc_int": float((yi == y_true).mean()),
                     "uar_base": effects.uar(y_true, y_base, labels=labels), "uar_int": effects.uar(y_true, yi,
                                                                                                    labels=labels),
                     "n_items": len(y_true)})
    table = pd.DataFrame(rows)
    if "targeted" in strategies and len(table):
        tg = table[table["strategy"] == "targeted"]
        num = [c for c in tg.columns if c not in ("mode", "strategy", "alpha", "target")]
        mean = tg.groupby(["mode", "alpha"], sort=False)[num].mean().reset_index()
        mean["strategy"], mean["target"] = "targeted", "mean"
        for col in ("flip_ci_low", "flip_ci_high", "corrections_ci_low", "corrections_ci_high"):
            mean[col] = math.nan
        table = pd.concat([table, mean[table.columns]], ignore_index=True)
    table["_m"] = table["mode"].map({m: i for i, m in enumerate(MODES)})
    table["_o"] = table["strategy"].map({s: i for i, s in enumerate(STRATEGIES)})
    table = table.sort_values(["_m", "_o", "alpha"], kind="stable").drop(columns=["_m", "_o"]).reset_index(drop=True)
    return table


def _json_list(values: Iterable[Any]) -> list[float | None]:
    out = []
    for v in values:
        f = None if v is None else float(v)
        out.append(f if f is not None and math.isfinite(f) else None)
    return out


def steering_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """``metrics.json`` form of :func:`steering_experiment`, every list aligned with ``alpha``:

    * ``flip_rate``: ``{mode: [...]}`` — targeted steering's ``flip_rate_to_target`` (mean over targets);
    * ``corrections`` / ``damage`` / ``delta_uar``: ``{strategy: [...]}`` in the first mode of the table (the
      paper's ``multiply`` when it was run; ``targeted`` = the mean over targets);
    * ``by_mode``: ``{mode: {measure: {strategy: [...]}}}`` for every mode and the four measures.

    Missing values become ``None`` (valid JSON)."""
    alphas = sorted(table["alpha"].unique().tolist())
    modes = [m for m in MODES if m in set(table["mode"])]
    summary = table[table["target"].isin(["mean", "all", "true"])]
    by_mode: dict[str, dict[str, dict[str, list]]] = {}
    for mode in modes:
        sub = summary[summary["mode"] == mode]
        by_mode[mode] = {}
        for measure in corrections.OUTCOME_KEYS:
            by_mode[mode][measure] = {}
            for strat in [s for s in STRATEGIES if s in set(sub["strategy"])]:
                col = sub[sub["strategy"] == strat].set_index("alpha")[measure]
                by_mode[mode][measure][strat] = _json_list(col.get(a, math.nan) for a in alphas)
    out: dict[str, Any] = {"alpha": [float(a) for a in alphas],
                           "flip_rate": {m: by_mode[m]["flip_rate_to_target"].get("targeted", [None] * len(alphas))
                                         for m in modes}}
    first = modes[0] if modes else None
    for measure in ("corrections", "damage", "delta_uar"):
        out[measure] = by_mode[first][measure] if first else {}
    out["by_mode"] = by_mode
    return out


def non_additivity(subject: Subject, df: pd.DataFrame, selection: Selection, *,
                   pairs: Sequence[tuple[str, str]] | None = None, alpha: float | Sequence[float] = 1.0,
                   on: Literal["all", "non_target"] = "all", k: int | None = None, batch_size: int = 32,
                   positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                   progress: bool = True) -> pd.DataFrame:
    """Is amplifying two emotions' neurons together the sum of amplifying each alone? At one or several ``alpha``.

    For each pair ``(a, b)`` (default: every pair of labels with a set) and each alpha three conditions run:
    ``steer(S_a)``, ``steer(S_b)`` and the joint ``joint([S_a, S_b])`` (union, scale ``1 + alpha``). For each
    target ``t in (a, b)`` and each measure — ``logprob`` (log-softmax of the label logits at ``t``) and ``prob``
    (softmax probability of ``t``) — the shift from the baseline is averaged over the items (``on="all"``, or
    ``"non_target"``: items whose true emotion is neither a nor b). Columns: ``pair, target, measure, alpha,
    effect_a, effect_b, additive`` (= a + b), ``joint, interaction`` (= joint − additive, with a paired
    item-bootstrap ``ci_low``/``ci_high``), ``ratio`` (joint / additive), ``n_overlap`` (neurons in both sets) and
    ``n_items``. All alphas run in one batched sweep.
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(alpha)] if isinstance(alpha, numbers.Real) else [float(a) for a in cast(Iterable[float], alpha)]
    if not alphas:
        raise ValueError("give at least one alpha")
    if on not in ("all", "non_target"):
        raise ValueError(f"on must be 'all' or 'non_target', got {on!r}")
    sel = {lbl: (_prefix(p, k, L, N, f"set {lbl!r}") if k is not None else as_pairs(p, L, N, what=f"set {lbl!r}"))
           for lbl, p in selection.items()}
    if pairs is None:
        pairs = list(itertools.combinations([lbl for lbl in labels if lbl in sel], 2))
    for a_, b_ in pairs:
        for x in (a_, b_):
            if x not in sel:
                raise ValueError(f"no neuron set for {x!r} (sets: {sorted(sel)})")
    singles = sorted({x for p in pairs for x in p}, key=labels.index)
    conds = [identity()]
    for al in alphas:
        conds += [steer(sel[x], L, N, al, name=f"steer[{x}:alpha={al:g}]", meta={"members": x}) for x in singles]
        conds += [joint({a_: sel[a_], b_: sel[b_]}, L, N, al, name=f"joint[{a_}+{b_}:alpha={al:g}]")
                  for a_, b_ in pairs]
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress).astype(np.float64)
    logp = log_softmax_np(logits)
    measures = {"logprob": logp, "prob": np.exp(logp)}
    index = {c.name: j for j, c in enumerate(conds)}
    rows = []
    for al in alphas:
        for a_, b_ in pairs:
            ia, ib = index[f"steer[{a_}:alpha={al:g}]"], index[f"steer[{b_}:alpha={al:g}]"]
            ij = index[f"joint[{a_}+{b_}:alpha={al:g}]"]
            keep = np.ones(len(y_true), bool)
            if on == "non_target":
                keep = (y_true != labels.index(a_)) & (y_true != labels.index(b_))
            overlap = int((as_mask(sel[a_], L, N) & as_mask(sel[b_], L, N)).sum())
            for target in (a_, b_):
                t = labels.index(target)
                for mname, v in measures.items():
                    da = v[ia, keep, t] - v[0, keep, t]
                    db = v[ib, keep, t] - v[0, keep, t]
                    dj = v[ij, keep, t] - v[0, keep, t]
                    inter = dj - (da + db)
                    lo, hi = (math.nan, math.nan)
                    if n_boot > 0 and inter.size:
                        lo, hi = bootstrap.bootstrap_ci(lambda x: x.mean(axis=1), inter, n_boot=n_boot, seed=seed,
                                                        batched=True)
                    add = float(da.mean() + db.mean()) if inter.size else math.nan
                    jm = float(dj.mean()) if inter.size else math.nan
                    rows.append({
                        "pair": f"{a_}+{b_}", "target": target, "measure": mname, "alpha": al,
                        "effect_a": float(da.mean()) if inter.size else math.nan,
                        "effect_b": float(db.mean()) if inter.size else math.nan,
                        "additive": add, "joint": jm, "interaction": jm - add, "ci_low": lo, "ci_high": hi,
                        "ratio": jm / add if add != 0.0 and math.isfinite(add) else math.nan,
                        "n_overlap": overlap, "n_items": int(keep.sum()),
                    })
    return pd.DataFrame(rows)


__all__ = [
    "STRATEGIES",
    "non_additivity",
    "steering_experiment",
    "steering_metrics",
]
