"""Neuron sets on disk: ``{selector: {label: [[layer, neuron], ...]}}`` as JSON, with the model's gate shape.

Recording the shape lets a later stage refuse a set that was identified on another model, instead of silently
editing the wrong neurons.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from .io import atomic_write_text

Selection = dict[str, torch.Tensor]


def save_sets(path: str | Path, sets: Mapping[str, Selection], *, n_layers: int, n_neurons: int,
              meta: Mapping | None = None) -> Path:
    payload = {
        "n_layers": n_layers, "n_neurons": n_neurons, "meta": dict(meta or {}),
        "sets": {sel: {lbl: t.tolist() for lbl, t in by_label.items()} for sel, by_label in sets.items()},
    }
    return atomic_write_text(path, json.dumps(payload) + "\n")


def load_sets(path: str | Path, *, n_layers: int | None = None, n_neurons: int | None = None
              ) -> dict[str, Selection]:
    """Read neuron sets; with ``n_layers``/``n_neurons`` given, refuse sets from a model of another shape."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no neuron sets at {p}: run stage 02_selectors for this run first")
    payload = json.loads(p.read_text())
    if n_layers is not None and (payload["n_layers"], payload["n_neurons"]) != (n_layers, n_neurons):
        raise ValueError(
            f"neuron sets in {p} were identified on a model with {payload['n_layers']} x {payload['n_neurons']} "
            f"gates, but this model has {n_layers} x {n_neurons}: a neuron set from another model cannot be used"
        )
    return {sel: {lbl: torch.tensor(pairs, dtype=torch.long).reshape(-1, 2) for lbl, pairs in by_label.items()}
            for sel, by_label in payload["sets"].items()}
