"""Layer clusters (early / middle / late) and the neuron masks restricted to them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core.neuron_sets import as_mask, random_sets

# ------------------------------------------------------------------------------------------------- layer clusters
_CLUSTER_NAMES = {1: ("all",), 2: ("early", "late"), 3: ("early", "middle", "late")}


def layer_clusters(n_layers: int, n_clusters: int = 3) -> dict[str, list[int]]:
    """Contiguous, near-equal layer ranges: ``{"early": [...], "middle": [...], "late": [...]}`` for 3 clusters
    (earlier clusters get the extra layer when ``n_layers`` does not divide); ``c0, c1, ...`` beyond 3."""
    if n_clusters < 1 or n_layers < n_clusters:
        raise ValueError(f"cannot split {n_layers} layers into {n_clusters} non-empty clusters")
    names = _CLUSTER_NAMES.get(n_clusters, tuple(f"c{i}" for i in range(n_clusters)))
    parts = np.array_split(np.arange(n_layers), n_clusters)
    return {name: [int(x) for x in part] for name, part in zip(names, parts, strict=True)}


def cluster_of_layers(n_layers: int, clusters: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Cluster name of every layer (``""`` for a layer in no cluster)."""
    out = np.full(n_layers, "", dtype=object)
    for name, layers in clusters.items():
        out[list(layers)] = name
    return out


# ---------------------------------------------------------------------------------------------------- neuron sets
def union_mask(sets: Mapping[str, Any], n_layers: int, n_neurons: int) -> torch.Tensor:
    """Union of several neuron sets as one mask [L, N] (e.g. the ``read`` mask covering every set)."""
    out = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
    for s in sets.values():
        out |= as_mask(s, n_layers, n_neurons)
    return out


def restrict_to_layers(mask: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """The part of a neuron mask [L, N] that lies in ``layers``."""
    keep = torch.zeros(mask.shape[0], dtype=torch.bool)
    keep[list(layers)] = True
    return mask & keep[:, None]


def split_by_cluster(
    sets: Mapping[str, Any], clusters: Mapping[str, Sequence[int]], n_layers: int, n_neurons: int, sep: str = "/"
) -> dict[str, torch.Tensor]:
    """``{f"{set}{sep}{cluster}": mask}`` for every non-empty part of every set (per-cluster grounding)."""
    out = {}
    for name, s in sets.items():
        m = as_mask(s, n_layers, n_neurons)
        for cname, layers in clusters.items():
            part = restrict_to_layers(m, layers)
            if part.any():
                out[f"{name}{sep}{cname}"] = part
    return out


def random_mask_like(mask: torch.Tensor, seed: int = 0, exclude: torch.Tensor | None = None, *,
                     salt: str = "grounding") -> torch.Tensor:
    """A random neuron set with the same number of neurons per layer as ``mask`` (avoiding ``exclude``), drawn by
    :func:`helpers.core.neuron_sets.random_sets` (``match_layers=True``; give each compared set its own ``salt``).

    Why: the audio- and text-grounded sets differ in size and layer profile; deactivating a size- and layer-matched
    random set tells how much of a shift any deactivation of that size causes.
    """
    n_layers, n_neurons = mask.shape
    pairs = random_sets({"set": mask}, (n_layers, n_neurons), seed=seed, salt=salt, match_layers=True,
                        exclude=exclude)["set"]
    return as_mask(pairs, n_layers, n_neurons)


__all__ = [
    "cluster_of_layers",
    "layer_clusters",
    "random_mask_like",
    "restrict_to_layers",
    "split_by_cluster",
    "union_mask",
]
