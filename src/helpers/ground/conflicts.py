"""Conflict analysis: on conflict items (the audio says one emotion, the text another), which one the answer
follows, and how deactivating each neuron set shifts that."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from ..core.hooks import run_with_gate_edits
from ..core.models import gate_shape
from ..core.neuron_sets import as_mask
from ..core.subject import Subject
from .pairing import GroundingDataError, require_columns


# ------------------------------------------------------------------------------------------------ conflict analysis
@dataclass
class ConflictResult:
    """Answers on conflict items (the audio says one emotion, the text another) under each deactivation.

    ``table``: one row per condition with the fractions following the audio / the text / neither, bootstrap
    intervals, and the shift of each fraction against the baseline (paired over items). ``predictions``: the
    predicted label per item (rows) and condition (columns).
    """

    table: pd.DataFrame
    predictions: pd.DataFrame


def conflict_analysis(
    subject: Subject,
    df_conflict: pd.DataFrame,
    sets: Mapping[str, Any],
    *,
    batch_size: int = 32,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    baseline: str = "baseline",
) -> ConflictResult:
    """Which modality wins on conflict items, and how deactivating (gate × 0 at every position) each neuron set
    shifts that. ``sets``: ``{name: mask [L, N] or (layer, neuron) pairs}``, e.g.
    :func:`~helpers.ground.grounding_tables.grounded_sets` plus a
    :func:`~helpers.ground.cluster_masks.random_mask_like` control."""
    from ..metrics.bootstrap import bootstrap_ci

    require_columns(df_conflict, ("label", "context_label"), "the conflict analysis (grounding)")
    if df_conflict.empty:
        raise GroundingDataError("no conflict items")
    if baseline in sets:
        raise ValueError(f"a set is named {baseline!r}, which is reserved for the unedited run")
    model = subject.model
    n_layers, n_neurons = gate_shape(model)
    masks = {name: as_mask(s, n_layers, n_neurons) for name, s in sets.items()}
    df = df_conflict.reset_index(drop=True)
    pos = {lbl: i for i, lbl in enumerate(subject.labels)}
    y_audio = np.array([pos.get(x, -1) for x in df["label"]])
    y_text = np.array([pos.get(x, -1) for x in df["context_label"]])
    conds = [baseline, *masks]
    preds: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    probs: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    for start in range(0, len(df), batch_size):
        rows = df.iloc[start : start + batch_size]
        batch = subject.batch_inputs(rows)
        for c in conds:
            scale = None if c == baseline else (~masks[c]).float()[None]
            lg = run_with_gate_edits(model, batch.inputs, scale=scale, logits="last")
            p = torch.softmax(subject.label_logits(batch, cast(torch.Tensor, lg)).float(), -1).cpu().numpy()
            preds[c].append(p.argmax(-1))
            probs[c].append(p)
    pred = {c: np.concatenate(preds[c]) for c in conds}
    prob = {c: np.concatenate(probs[c]) for c in conds}
    n = len(df)
    ia, it = np.flatnonzero(y_audio >= 0), np.flatnonzero(y_text >= 0)

    def frac(x: np.ndarray) -> float:
        return float(np.mean(x))

    def mean_b(x: np.ndarray) -> np.ndarray:
        return x.mean(axis=-1)

    table = []
    base_a, base_t = pred[baseline] == y_audio, pred[baseline] == y_text
    for c in conds:
        fa, ft = pred[c] == y_audio, pred[c] == y_text
        neither = ~(fa | ft)
        row: dict[str, Any] = {"condition": c, "n_neurons": 0 if c == baseline else int(masks[c].sum()), "n_items": n,
                               "follows_audio": frac(fa), "follows_text": frac(ft), "follows_neither": frac(neither)}
        row["p_audio"] = float(np.mean(prob[c][ia, y_audio[ia]])) if len(ia) else np.nan
        row["p_text"] = float(np.mean(prob[c][it, y_text[it]])) if len(it) else np.nan
        if n_boot > 0:
            for key, arr in (("follows_audio", fa), ("follows_text", ft)):
                lo, hi = bootstrap_ci(mean_b, arr.astype(float), n_boot=n_boot, ci=ci, seed=seed, batched=True)
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = lo, hi
        row["shift_audio"] = frac(fa) - frac(base_a)
        row["shift_text"] = frac(ft) - frac(base_t)
        if n_boot > 0 and c != baseline:
            for key, arr in (("shift_audio", fa.astype(float) - base_a), ("shift_text", ft.astype(float) - base_t)):
                lo, hi = bootstrap_ci(mean_b, arr, n_boot=n_boot, ci=ci, seed=seed, batched=True)
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = lo, hi
        table.append(row)
    lab = np.array(subject.labels)
    predictions = pd.DataFrame({c: lab[pred[c]] for c in conds})
    predictions.insert(0, "text_emotion", df["context_label"].to_numpy())
    predictions.insert(0, "audio_emotion", df["label"].to_numpy())
    return ConflictResult(table=pd.DataFrame(table), predictions=predictions)


__all__ = [
    "ConflictResult",
    "conflict_analysis",
]
