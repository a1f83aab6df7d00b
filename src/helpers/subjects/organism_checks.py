"""Chapter 00's checks that the organism is a valid testbed: where its decision lives, and which side of the
input drives it at each level of the audio-reliability dial.

Every check goes through the one batched runner (:func:`helpers.intervene.runner.run_conditions`), so an ablation
here is the same gate edit the later chapters make.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.models import gate_shape
from ..core.subject import Subject
from ..intervene.conditions import Condition
from ..intervene.evaluation import label_indices
from ..intervene.runner import run_conditions


def ablation_conditions(n_layers: int, n_neurons: int) -> list[Condition]:
    """The unedited model, every gate zeroed, each layer's gates zeroed alone, and all layers but the first."""

    def zero(layers: Sequence[int], name: str) -> Condition:
        scale = torch.ones(n_layers, n_neurons)
        scale[list(layers)] = 0.0
        return Condition(name, scale=scale, meta={"zeroed_layers": list(layers)})

    conds = [Condition("base"), zero(range(n_layers), "all gates zeroed")]
    conds += [zero([layer], f"layer {layer} zeroed") for layer in range(n_layers)]
    conds.append(zero(range(1, n_layers), "all but first layer zeroed"))
    return conds


def layer_ablation(subject: Subject, df: pd.DataFrame, *, batch_size: int = 64,
                   progress: bool = True) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Accuracy of every :func:`ablation_conditions` condition on ``df``, and the predictions behind it."""
    n_layers, n_neurons = gate_shape(subject.model)
    conds = ablation_conditions(n_layers, n_neurons)
    logits = run_conditions(subject, df, conds, batch_size=batch_size, progress=progress)
    y = label_indices(df["label"], subject.labels)
    preds = {c.name: logits[j].argmax(-1) for j, c in enumerate(conds)}
    table = pd.DataFrame([
        {"condition": c.name, "zeroed_layers": c.meta.get("zeroed_layers", []),
         "accuracy": float((preds[c.name] == y).mean())}
        for c in conds
    ]).set_index("condition")
    return table, preds


def reliability_curve(df: pd.DataFrame, pred: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Per reliability level (in the order the corpus lists them, clearest first): accuracy without a hint, with
    a congruent hint, and on conflicting hints the share of answers that follow the audio vs the text."""
    y = label_indices(df["label"], labels)
    index = {lbl: i for i, lbl in enumerate(labels)}
    text = np.array([index.get(c, -1) for c in df["context_label"]])
    pred = np.asarray(pred)
    rows = []
    for level in dict.fromkeys(df["reliability"]):
        at = (df["reliability"] == level).to_numpy()
        row: dict[str, object] = {"reliability": level, "intensity": float(df.loc[at, "intensity"].iloc[0])}
        for kind in ("none", "congruent", "conflict"):
            sel = at & (df["context"] == kind).to_numpy()
            if sel.any():
                row[f"accuracy_{kind}"] = float((pred[sel] == y[sel]).mean())
        conf = at & (df["context"] == "conflict").to_numpy()
        if conf.any():
            row["conflict_follows_audio"] = float((pred[conf] == y[conf]).mean())
            row["conflict_follows_text"] = float((pred[conf] == text[conf]).mean())
            row["conflict_items"] = int(conf.sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("reliability")


def is_monotone(values: Sequence[float], *, decreasing: bool = True, tolerance: float = 0.05) -> bool:
    """True when the sequence never moves the wrong way by more than ``tolerance``."""
    v = np.asarray(values, dtype=float)
    steps = np.diff(v) if decreasing else -np.diff(v)
    return bool((steps <= tolerance).all())
