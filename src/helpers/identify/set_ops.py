"""Set utilities on selections ``{label: LongTensor[m, 2]}``: masks, per-layer counts, Jaccard overlap."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from helpers.core.neuron_sets import as_pairs, selection_masks


def to_mask(selection: Mapping[str, torch.Tensor], n_layers: int, n_neurons: int) -> torch.Tensor:
    """Selection as a bool mask ``[C, L, N]`` (C in the selection's label order): an alias of
    :func:`helpers.core.neuron_sets.selection_masks`, kept for existing callers."""
    return selection_masks(selection, n_layers, n_neurons)


def layer_counts(selection: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, list[int]]:
    """How many selected neurons fall in each layer, per label (the layer-wise clustering plots)."""
    out = {}
    for label, pairs in selection.items():
        pairs = _check_pairs(pairs, label, n_layers, None)
        out[label] = torch.bincount(pairs[:, 0], minlength=n_layers).tolist()
    return out


def jaccard(a: torch.Tensor | Mapping[str, torch.Tensor], b: torch.Tensor | Mapping[str, torch.Tensor]):
    """Jaccard overlap ``|A & B| / |A | B|`` of two neuron sets (``[m, 2]`` pairs), order ignored.

    Given two selections (dicts), returns ``{label: overlap}`` for their common labels, e.g. to compare
    selectors or data sets emotion by emotion. Two empty sets are identical: 1.0.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return {label: jaccard(a[label], b[label]) for label in a if label in b}
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        raise TypeError("jaccard needs two pair tensors or two selections, not one of each")
    set_a = {tuple(x) for x in torch.as_tensor(a).reshape(-1, 2).tolist()}
    set_b = {tuple(x) for x in torch.as_tensor(b).reshape(-1, 2).tolist()}
    union = set_a | set_b
    return 1.0 if not union else len(set_a & set_b) / len(union)


def _check_pairs(pairs: torch.Tensor, label: str, n_layers: int, n_neurons: int | None) -> torch.Tensor:
    """:func:`helpers.core.neuron_sets.as_pairs`; without ``n_neurons`` only the layer range is checked."""
    if n_neurons is None:
        t = torch.as_tensor(np.array(pairs)) if not isinstance(pairs, torch.Tensor) else pairs
        n_neurons = int(t.reshape(-1, 2)[:, 1].max()) + 1 if t.numel() else 1
    return as_pairs(pairs, n_layers, n_neurons, what=f"selection {label!r}")
