"""Asking a subject model the emotion question over a table of items, optionally with gate edits.

One function, ``predict``, serves every stage: it batches the items, builds the model inputs, runs the forward
pass (through the gate-edit hook path when an edit is requested) and reads the answer by constrained scoring.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.subject import Subject


def label_indices(labels_col: Collection[str], labels: Sequence[str]) -> np.ndarray:
    """Map label names to indices, refusing labels the model was not asked about."""
    index = {lbl: i for i, lbl in enumerate(labels)}
    unknown = sorted(set(labels_col) - set(index))
    if unknown:
        raise ValueError(f"items carry label(s) {unknown} that are not in the label set {list(labels)}; "
                         "filter them out or add them to `labels`")
    return np.array([index[lbl] for lbl in labels_col])


def batches(df: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    return [df.iloc[i : i + batch_size] for i in range(0, len(df), batch_size)]


@torch.no_grad()
def label_logits(org: Subject, df: pd.DataFrame, *, batch_size: int = 64, scale_all: float | None = None,
                 progress: bool = True) -> torch.Tensor:
    """[n_items, n_labels] label-word logits; ``scale_all`` multiplies every decoder gate (0 = all zeroed)."""
    from ..core.hooks import run_with_gate_edits
    from ..core.models import gate_shape

    out = []
    n_layers, n_neurons = gate_shape(org.model)
    for rows in tqdm(batches(df, batch_size), desc="predict", disable=not progress, mininterval=2.0):
        batch = org.batch_inputs(rows)
        if scale_all is None:
            logits = org.model(**batch.inputs).logits
        else:
            scale = torch.full((len(rows), n_layers, n_neurons), float(scale_all))
            logits = run_with_gate_edits(org.model, batch.inputs, scale=scale)
        out.append(org.label_logits(batch, logits).float())
    return torch.cat(out)


def predict(org: Subject, df: pd.DataFrame, **kwargs) -> np.ndarray:
    """Predicted label index per item (argmax of the label-word logits)."""
    return label_logits(org, df, **kwargs).argmax(-1).numpy()


def accuracy(labels_col: Sequence[str], pred: np.ndarray, labels: Sequence[str]) -> float:
    return float((label_indices(labels_col, labels) == np.asarray(pred)).mean())


def confusion(labels_col: Sequence[str], pred: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Row-normalised confusion matrix (rows: true emotion, columns: predicted)."""
    y = label_indices(labels_col, labels)
    m = np.zeros((len(labels), len(labels)))
    np.add.at(m, (y, np.asarray(pred)), 1)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    return pd.DataFrame(m, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))

