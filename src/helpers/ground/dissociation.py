"""Dissociation: deactivate audio- vs text-grounded sets on conflict items and compare what the answer
follows (the causal test of the grounding coefficient)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.models import gate_shape
from ..core.neuron_sets import as_mask, random_sets
from ..core.subject import Subject
from .cluster_masks import union_mask
from .pairing import GroundingDataError, require_columns


# -------------------------------------------------------------------------------------------- double dissociation
@dataclass
class DissociationResult:
    """Output of :func:`dissociation`.

    * ``table``: one row per condition (``baseline``, ``text_sets``, ``audio_sets`` and their random controls per
      seed) with ``n_neurons``, ``follows_text``, ``follows_audio`` and the changes against the baseline
      ``delta_text_following`` / ``delta_audio_following`` with paired bootstrap intervals.
    * ``summary``: ``{"text_sets": {...}, "audio_sets": {...}, "double_dissociation": bool}``; per set
      ``text_following`` and ``audio_following`` (the Δs), their ``*_ci``, the random controls' mean Δs
      (``random_text_following`` / ``random_audio_following``), the set minus its control with intervals
      (``*_minus_random``, ``*_minus_random_ci``) and ``n_neurons``. ``double_dissociation``: the text sets lower
      text-following more than audio-following and the audio sets lower audio-following more than text-following.
    * ``predictions``: ``[n_conditions, n_items]`` predicted label indices.
    """

    table: pd.DataFrame
    summary: dict[str, Any]
    predictions: np.ndarray


def _union(neurons: Any, n_layers: int, n_neurons: int) -> torch.Tensor:
    if isinstance(neurons, Mapping):
        return union_mask(neurons, n_layers, n_neurons)
    return as_mask(neurons, n_layers, n_neurons)


def dissociation(subject: Subject, conflict: pd.DataFrame, text_sets: Any, audio_sets: Any, *,
                 random_seeds: Sequence[int] = (0, 1, 2, 3, 4), positions: str = "all", batch_size: int = 32,
                 n_boot: int = 1000, ci: float = 0.95, seed: int = 0, progress: bool = True) -> DissociationResult:
    """Double dissociation on conflict items (the audio says one emotion, the text another).

    Deactivates (gate × 0) the text-grounded neurons (``text_sets``: a set, a mask or ``{name: set}`` whose union
    is used) and, separately, the audio-grounded ones, and measures the change of text-following (the share of
    conflict items answered with the text's emotion) and of audio-following (answered with the audio's
    emotion) against the unedited model. Controls: per seed, random sets with the same per-layer counts
    (:func:`helpers.core.neuron_sets.random_sets`, salted per set so the two controls are independent). Intervals:
    paired percentile bootstrap over items, stratified by the audio emotion. If the grounding coefficient
    means what it says, the text sets lower text-following more than audio-following and the audio sets the
    reverse (``summary["double_dissociation"]``).
    """
    from ..intervene.conditions import deactivate, identity
    from ..intervene.runner import run_conditions
    from ..metrics.bootstrap import bootstrap_ci

    require_columns(conflict, ("label", "context_label"), "the dissociation analysis (grounding)")
    if conflict.empty:
        raise GroundingDataError("no conflict items")
    model = subject.model
    n_layers, n_neurons = gate_shape(model)
    masks = {"text_sets": _union(text_sets, n_layers, n_neurons), "audio_sets": _union(audio_sets, n_layers, n_neurons)}
    df = conflict.reset_index(drop=True)
    pos = {lbl: i for i, lbl in enumerate(subject.labels)}
    y_audio = np.array([pos.get(x, -1) for x in df["label"]])
    y_text = np.array([pos.get(x, -1) for x in df["context_label"]])
    conds = [identity()]
    for name, mask in masks.items():
        conds.append(deactivate(mask, n_layers, n_neurons, name=name, meta={"set": name}))
        for s in random_seeds:
            r = random_sets({name: mask}, (n_layers, n_neurons), seed=int(s), salt=f"dissociation|{name}",
                            match_layers=True)[name]
            conds.append(deactivate(r, n_layers, n_neurons, name=f"random({name})#{s}",
                                    meta={"set": f"random({name})", "seed": int(s)}))
    preds = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, progress=progress
                           ).argmax(-1)
    ft = (preds == y_text[None]).astype(np.float64)
    fa = (preds == y_audio[None]).astype(np.float64)

    def interval(x: np.ndarray) -> tuple[float, float]:
        if n_boot <= 0:
            return (np.nan, np.nan)
        return bootstrap_ci(lambda v: v.mean(axis=1), x, n_boot=n_boot, ci=ci, seed=seed, batched=True,
                            strata=y_audio)

    rows = []
    for j, c in enumerate(conds):
        dt_, da_ = ft[j] - ft[0], fa[j] - fa[0]
        row = {"condition": c.name, "set": c.meta.get("set", "baseline"), "seed": c.meta.get("seed"),
               "n_neurons": int(c.meta.get("n_neurons", 0)), "follows_text": ft[j].mean(),
               "follows_audio": fa[j].mean(), "delta_text_following": dt_.mean(),
               "delta_audio_following": da_.mean()}
        if j and "seed" not in c.meta:
            row["text_ci_low"], row["text_ci_high"] = interval(dt_)
            row["audio_ci_low"], row["audio_ci_high"] = interval(da_)
        rows.append(row)
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {}
    for name in masks:
        j = next(i for i, c in enumerate(conds) if c.name == name)
        ctrl = [i for i, c in enumerate(conds) if c.meta.get("set") == f"random({name})"]
        out: dict[str, Any] = {"n_neurons": int(conds[j].meta["n_neurons"])}
        for key, follow in (("text_following", ft), ("audio_following", fa)):
            d = follow[j] - follow[0]
            out[key] = float(d.mean())
            out[f"{key}_ci"] = list(interval(d))
            if ctrl:
                dr = follow[ctrl].mean(0) - follow[0]
                out[f"random_{key}"] = float(dr.mean())
                out[f"{key}_minus_random"] = float((d - dr).mean())
                out[f"{key}_minus_random_ci"] = list(interval(d - dr))
        summary[name] = out
    summary["double_dissociation"] = bool(
        summary["text_sets"]["text_following"] < summary["text_sets"]["audio_following"]
        and summary["audio_sets"]["audio_following"] < summary["audio_sets"]["text_following"]
    )
    return DissociationResult(table=table, summary=summary, predictions=preds)


def dissociation_by_group(result: DissociationResult, conflict: pd.DataFrame, labels: Sequence[str], column: str
                          ) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`dissociation`'s Δs within each value of a column of the conflict items (e.g. the reliability
    level), from the predictions it already made: ``{group: {"baseline": {"follows_text", "follows_audio"},
    "text_sets": {"text_following", "audio_following", "random_text_following", "random_audio_following"},
    "audio_sets": {...}, "n_items": n}}``. ``conflict`` and ``labels`` must be those the result was computed on."""
    df = conflict.reset_index(drop=True)
    if column not in df.columns:
        raise ValueError(f"cannot group by {column!r}: not a column of the conflict items")
    if len(df) != result.predictions.shape[1]:
        raise ValueError(f"{len(df)} conflict items but the result has predictions for {result.predictions.shape[1]}")
    pos = {lbl: i for i, lbl in enumerate(labels)}
    y_audio = np.array([pos.get(x, -1) for x in df["label"]])
    y_text = np.array([pos.get(x, -1) for x in df["context_label"]])
    ft = (result.predictions == y_text[None]).astype(np.float64)
    fa = (result.predictions == y_audio[None]).astype(np.float64)
    sets_of = result.table["set"].tolist()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for g in pd.unique(df[column]):
        sel = (df[column] == g).to_numpy()
        entry: dict[str, Any] = {"baseline": {"follows_text": float(ft[0, sel].mean()),
                                              "follows_audio": float(fa[0, sel].mean())}, "n_items": int(sel.sum())}
        for name in ("text_sets", "audio_sets"):
            j = sets_of.index(name)
            ctrl = [i for i, s in enumerate(sets_of) if s == f"random({name})"]
            d = {"text_following": float((ft[j, sel] - ft[0, sel]).mean()),
                 "audio_following": float((fa[j, sel] - fa[0, sel]).mean())}
            if ctrl:
                d["random_text_following"] = float((ft[ctrl][:, sel].mean(0) - ft[0, sel]).mean())
                d["random_audio_following"] = float((fa[ctrl][:, sel].mean(0) - fa[0, sel]).mean())
            entry[name] = d
        out[str(g)] = entry
    return out


__all__ = [
    "DissociationResult",
    "dissociation",
    "dissociation_by_group",
]
