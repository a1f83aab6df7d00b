"""The deactivation experiment (necessity) with its random controls, and the variability of its result over
the identification sample.

The experiments (:func:`deactivation_experiment`, :func:`~helpers.intervene.dose_response.dose_response_k`,
:func:`~helpers.intervene.dose_response.dose_response_alpha`,
:func:`~helpers.intervene.steering.steering_experiment`, :func:`~helpers.intervene.steering.non_additivity`) build the
conditions, run them in one batched sweep and turn
the label logits into tidy tables with :mod:`helpers.metrics`, so the notebooks stay a few lines each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.models import gate_shape
from ..core.neuron_sets import as_pairs, random_sets
from ..core.subject import Subject
from ..metrics import bootstrap, effects, summaries
from .conditions import Condition, Selection, deactivate, identity
from .evaluation import label_indices
from .runner import DEFAULT_MAX_ROWS, run_conditions

#: The random controls of :func:`deactivation_experiment` (uniform over all neurons; same count per layer).
CONTROLS: tuple[str, ...] = ("random", "random(layer-matched)")


def _truth(subject: Subject, df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    labels = list(subject.labels)
    return labels, label_indices(df["label"], labels)


def control_name(selector: str, kind: str) -> str:
    """Name of a random control in result tables: ``random(mad)``, ``random(mad, layer-matched)``."""
    if kind not in CONTROLS:
        raise ValueError(f"unknown control {kind!r}; choose from {list(CONTROLS)}")
    inner = selector or "set"
    return f"random({inner})" if kind == "random" else f"random({inner}, layer-matched)"


def _control_draw(selection: Selection, shape: tuple[int, int], kind: str, seed: int, salt: str
                  ) -> dict[str, torch.Tensor]:
    lm = kind == "random(layer-matched)"
    return random_sets(selection, shape, seed=seed, salt=salt + ("|layers" if lm else ""), match_layers=lm)


def _effect_cis(yt, yb, yi, t, labels, n_boot, seed) -> dict[str, tuple[float, float]]:
    """Stratified paired bootstrap intervals of SE/CE/gap (the flip variant that is always defined)."""
    if n_boot <= 0:
        return {k: (math.nan, math.nan) for k in ("self_effect", "cross_effect", "gap", "flip_rate")}
    return bootstrap.bootstrap_effects(yt, yb, yi, t, labels=labels, n_boot=n_boot, seed=seed, stratify=True,
                                       among="all_non_target")


@dataclass
class DeactivationResult:
    """Output of :func:`deactivation_experiment`.

    * ``table``: one row per condition — ``selector`` (``"lape"``, or :func:`control_name` for a random control:
      ``"random(lape)"``, ``"random(lape, layer-matched)"``), ``like`` (the selector a control is matched to),
      ``control`` (bool), ``control_kind`` (:data:`CONTROLS` or None), ``target``, ``seed`` (controls only),
      ``n_neurons``, ``self_effect``, ``cross_effect``, ``gap`` with per-condition bootstrap intervals
      (``*_ci_low``/``*_ci_high``), ``uar_base``, ``uar_int`` and the per-class recall changes ``delta_<label>``.
    * ``comparison``: per (selector, target) the selector's gap next to each control's mean/std over seeds.
    * ``matrices``: ``{selector: effect matrix}`` (rows: deactivated emotion, columns: evaluated class; random
      controls averaged over seeds).
    * ``summary``: ``{name: mean gap over emotions}`` for every selector and control, plus the pooled controls
      ``"random"`` and ``"random(layer-matched)"`` (the mean over selectors of their controls' mean gaps): the
      ``gap`` table of ``metrics.json``.
    * ``gap_ci``: ``{name: (low, high)}`` for the same names, the joint stratified bootstrap of the mean gap
      (:func:`helpers.metrics.bootstrap.bootstrap_mean_gap`; NaN with ``n_boot = 0``).
    * ``logits`` [n_conditions, n_items, C], ``conditions``, ``y_true``, ``y_base`` for further analysis.
    """

    table: pd.DataFrame
    comparison: pd.DataFrame
    matrices: dict[str, pd.DataFrame]
    summary: dict[str, float]
    gap_ci: dict[str, tuple[float, float]]
    logits: np.ndarray
    conditions: list[Condition]
    y_true: np.ndarray
    y_base: np.ndarray

    def layer_counts(self, seed: int | None = None) -> dict[str, dict[str, list[int]]]:
        """``{selector or control: {target: [zeroed neurons per layer]}}`` read off the conditions that were run
        (controls: the draw of ``seed``, default the first seed), e.g. to show that a layer-matched control has
        its selector's layer profile."""
        seeds = [c.meta["seed"] for c in self.conditions[1:] if "seed" in c.meta]
        pick = seeds[0] if seed is None and seeds else seed
        out: dict[str, dict[str, list[int]]] = {}
        for c in self.conditions[1:]:
            if "seed" in c.meta and c.meta["seed"] != pick:
                continue
            zeroed = (c.scale == 0) if c.scale is not None else torch.zeros(0, 0, dtype=torch.bool)
            out.setdefault(c.meta["selector"], {})[c.meta["target"]] = [int(v) for v in zeroed.sum(1).tolist()]
        return out


def deactivation_experiment(subject: Subject, df: pd.DataFrame, sets: Mapping[str, Selection], *,
                            random_seeds: Sequence[int] = (0, 1, 2, 3, 4), controls: Sequence[str] = CONTROLS,
                            batch_size: int = 32, positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS,
                            n_boot: int = 1000, seed: int = 0, progress: bool = True) -> DeactivationResult:
    """Necessity test: zero each emotion's neurons (per selector) and measure per-class recall changes.

    ``sets``: ``{selector: {label: pairs}}``. Controls (``controls``, see :data:`CONTROLS`): for every selector,
    every kind and every seed in ``random_seeds``, :func:`helpers.core.neuron_sets.random_sets` draws per emotion as
    many random neurons as that selector chose for it — uniformly over all neurons (``"random"``) or with the same
    count in every layer (``"random(layer-matched)"``) — salted with the selector's name, so two selectors with
    equal sizes get independent draws. All conditions plus the baseline run in one batched sweep. Effects
    (self/cross/gap, paired stratified bootstrap CIs with ``n_boot`` resamples) come from
    :mod:`helpers.metrics`; a successful deactivation has a negative gap (the target loses more than the
    rest). The mean gap's interval is a joint stratified bootstrap over items (``gap_ci``).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise ValueError(f"unknown controls {bad}; choose from {list(CONTROLS)}")
    conds: list[Condition] = [identity()]
    for sel_name, selection in sets.items():
        sel_name = str(sel_name)
        unknown = sorted(set(selection) - set(labels))
        if unknown:
            raise ValueError(f"selector {sel_name!r} has sets for {unknown}, not among the labels {labels}")
        draws: list[tuple[str, str | None, int | None, Selection]] = [(sel_name, None, None, selection)]
        for kind in controls:
            draws += [(control_name(sel_name, kind), kind, int(s), _control_draw(selection, (L, N), kind, int(s),
                                                                                 sel_name))
                      for s in random_seeds]
        for name, control, s, sel in draws:
            for target, pairs in sel.items():
                meta: dict[str, Any] = {"selector": name, "like": sel_name, "target": target, "control_kind": control}
                if s is not None:
                    meta["seed"] = s
                cname = f"deactivate[{name}:{target}" + (f":seed{s}]" if s is not None else "]")
                conds.append(deactivate(pairs, L, N, name=cname, meta=meta))
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress)
    preds = logits.argmax(-1)
    y_base = preds[0]
    uar_base = effects.uar(y_true, y_base, labels=labels)
    rows = []
    by_selector: dict[str, dict[str, list[np.ndarray]]] = {}
    for j, c in enumerate(conds[1:], start=1):
        m = c.meta
        t = labels.index(m["target"])
        eff = effects.effects(y_true, y_base, preds[j], t, labels=labels)
        iv = _effect_cis(y_true, y_base, preds[j], t, labels, n_boot, seed)
        row = {
            "selector": m["selector"], "like": m["like"], "target": m["target"], "seed": m.get("seed"),
            "control": m["control_kind"] is not None, "control_kind": m["control_kind"], "n_neurons": m["n_neurons"],
            "self_effect": eff.self_effect, "cross_effect": eff.cross_effect, "gap": eff.gap,
            "gap_ci_low": iv["gap"][0], "gap_ci_high": iv["gap"][1],
            "self_ci_low": iv["self_effect"][0], "self_ci_high": iv["self_effect"][1],
            "cross_ci_low": iv["cross_effect"][0], "cross_ci_high": iv["cross_effect"][1],
            "uar_base": uar_base, "uar_int": effects.uar(y_true, preds[j], labels=labels), "n_items": len(y_true),
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
        mats = [effects.effect_matrix(y_true, y_base, {t: v[i] for t, v in per_target.items() if i < len(v)}, labels)
                for i in range(n_draws)]
        matrices[sel_name] = sum(mats[1:], mats[0]) / len(mats) if len(mats) > 1 else mats[0]

    comp = []
    for sel_name in (str(s) for s in sets):
        real = table[(table["selector"] == sel_name)]
        for _, r in real.iterrows():
            rec = {"selector": sel_name, "target": r["target"], "n_neurons": r["n_neurons"], "gap": r["gap"],
                   "gap_ci_low": r["gap_ci_low"], "gap_ci_high": r["gap_ci_high"]}
            for kind, prefix in (("random", "random"), ("random(layer-matched)", "layer_random")):
                if kind not in controls:
                    continue
                ctrl = table[(table["selector"] == control_name(sel_name, kind)) & (table["target"] == r["target"])]
                recs = ctrl[["self_effect", "cross_effect", "gap"]].to_dict("records")
                g = (summaries.aggregate_random(recs) if recs else {}).get("gap", {"mean": math.nan, "std": math.nan})
                rec.update({f"{prefix}_gap_mean": g["mean"], f"{prefix}_gap_std": g["std"],
                            f"gap_minus_{prefix}": r["gap"] - g["mean"]})
                rec["n_seeds"] = len(ctrl)
            comp.append(rec)
    summary = summaries.summarise_gaps(table[["selector", "target", "gap"]]) if len(table) else {}
    for kind in controls:
        vals = [summary[control_name(str(s), kind)] for s in sets if control_name(str(s), kind) in summary]
        if vals:
            summary[kind] = float(np.mean(vals))
    gap_ci = _gap_intervals(y_true, y_base, by_selector, sets, controls, labels, n_boot, seed)
    return DeactivationResult(table=table, comparison=pd.DataFrame(comp), matrices=matrices, summary=summary,
                              gap_ci=gap_ci, logits=logits, conditions=conds, y_true=y_true, y_base=y_base)


def _gap_intervals(y_true: np.ndarray, y_base: np.ndarray, by_selector: Mapping[str, Mapping[str, list]],
                   sets: Mapping[str, Any], controls: Sequence[str], labels: Sequence[str], n_boot: int, seed: int
                   ) -> dict[str, tuple[float, float]]:
    """Joint stratified bootstrap interval of the mean gap for every selector, control and pooled control."""
    groups: dict[str, dict[str, list[np.ndarray]]] = {name: dict(v) for name, v in by_selector.items()}
    for kind in controls:
        pooled: dict[str, list[np.ndarray]] = {}
        for s in sets:
            for t, draws in by_selector.get(control_name(str(s), kind), {}).items():
                pooled.setdefault(t, []).extend(draws)
        if pooled:
            groups[kind] = pooled
    out: dict[str, tuple[float, float]] = {}
    for name, per_target in groups.items():
        if n_boot <= 0 or not per_target:
            out[name] = (math.nan, math.nan)
            continue
        stacked = {t: np.stack(v) for t, v in per_target.items()}
        out[name] = bootstrap.bootstrap_mean_gap(y_true, y_base, stacked, labels=labels, n_boot=n_boot, seed=seed)
    return out


def identification_variability(subject: Subject, df: pd.DataFrame, replicates: Sequence[Mapping[str, Selection]], *,
                               reference: Mapping[str, Selection] | None = None, ci: float = 0.95,
                               batch_size: int = 32, positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS,
                               progress: bool = True) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Variability over the identification sample: deactivate every replicate's sets (from
    :func:`helpers.identify.resampling.identification_resamples`: the identify split resampled, stats re-accumulated,
    neurons re-selected) on the same evaluation items ``df``, in one batched sweep.

    Returns ``(table, summary)``: ``table`` has one row per (replicate, selector) with the mean gap over emotions,
    the mean set size and, with ``reference`` (the sets found on the full identify split), the mean Jaccard
    overlap with them; ``summary`` is ``{selector: {"mean", "ci_low", "ci_high", "n_replicates"}}``, the
    percentile interval over replicates — the selection-variance interval to show next to the item bootstrap
    (which keeps the sets fixed).
    """
    from ..identify.set_ops import jaccard

    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    conds = [identity()]
    for r, sets in enumerate(replicates):
        for sel_name, selection in sets.items():
            for target, pairs in selection.items():
                if target not in labels:
                    raise ValueError(f"replicate {r}, selector {sel_name!r}: {target!r} is not one of {labels}")
                conds.append(deactivate(pairs, L, N, name=f"deactivate[r{r}:{sel_name}:{target}]",
                                        meta={"replicate": r, "selector": str(sel_name), "target": target}))
    preds = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                           progress=progress).argmax(-1)
    groups: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    sizes: dict[tuple[int, str], list[int]] = {}
    for j, c in enumerate(conds[1:], start=1):
        key = (c.meta["replicate"], c.meta["selector"])
        groups.setdefault(key, {})[c.meta["target"]] = preds[j]
        sizes.setdefault(key, []).append(c.meta["n_neurons"])
    rows = []
    for (r, sel_name), per_target in groups.items():
        row = {"replicate": r, "selector": sel_name,
               "gap": bootstrap.mean_gap(y_true, preds[0], per_target, labels=labels),
               "n_neurons": float(np.mean(sizes[(r, sel_name)]))}
        if reference is not None and sel_name in reference:
            overlap = jaccard({t: as_pairs(p, L, N) for t, p in replicates[r][sel_name].items()},
                              {t: as_pairs(p, L, N) for t, p in reference[sel_name].items()})
            row["jaccard_to_reference"] = float(np.mean(list(overlap.values()))) if overlap else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    alpha = (1.0 - ci) / 2.0
    summary = {}
    for sel_name, g in table.groupby("selector", sort=False) if len(table) else []:
        q = np.quantile(g["gap"], [alpha, 1 - alpha])
        summary[str(sel_name)] = {"mean": float(g["gap"].mean()), "ci_low": float(q[0]), "ci_high": float(q[1]),
                                  "n_replicates": len(g)}
    return table, summary


__all__ = [
    "CONTROLS",
    "DeactivationResult",
    "control_name",
    "deactivation_experiment",
    "identification_variability",
]
