"""Linear probes: how linearly available a property is in a representation.

Used in chapter 00 to ask how much of the emotion decision the organism's frozen audio encoder (Whisper
tiny.en) already makes — a multinomial logistic regression on its mean- and std-pooled output — versus what the
decoder adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ..intervene.evaluation import label_indices
from .organism import Organism


@torch.no_grad()
def pooled_encoder_output(org: Organism, df: pd.DataFrame, batch: int = 128) -> torch.Tensor:
    """Mean and standard deviation over time of the frozen tower's output, ``[n_clips, 2 * d_model]``."""
    paths = df["path"].tolist()
    out = []
    for i in range(0, len(paths), batch):
        h = org.clip_encodings(paths[i : i + batch])
        out.append(torch.cat([h.mean(1), h.std(1)], dim=-1))
    return torch.cat(out)


def fit_linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, n_classes: int, *, epochs: int = 300,
                     lr: float = 0.05, weight_decay: float = 1e-3, seed: int = 0) -> torch.nn.Linear:
    """Full-batch multinomial logistic regression on standardised features (deterministic from ``seed``)."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x_train.shape[1], n_classes)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(probe(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe


def encoder_probe(org: Organism, train: pd.DataFrame, test: pd.DataFrame, labels: Sequence[str], *,
                  epochs: int = 300, seed: int = 0) -> float:
    """Test accuracy of a linear probe for the emotion on the encoder's mean+std-pooled output."""
    train = train.drop_duplicates("clip_id") if "clip_id" in train else train
    x_tr, x_te = pooled_encoder_output(org, train), pooled_encoder_output(org, test)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    y_tr = torch.from_numpy(label_indices(train["label"], labels))
    y_te = label_indices(test["label"], labels)
    with torch.enable_grad():
        probe = fit_linear_probe((x_tr - mu) / sd, y_tr, len(labels), epochs=epochs, seed=seed)
    pred = probe((x_te - mu) / sd).argmax(-1).numpy()
    return float((pred == y_te).mean())
