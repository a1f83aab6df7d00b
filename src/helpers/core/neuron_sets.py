"""Neuron sets on disk: ``{selector: {label: [[layer, neuron], ...]}}`` as JSON, with the model's gate shape.

Recording the shape lets a later stage refuse a set that was identified on another model, instead of silently
editing the wrong neurons.

Also the package's one pairs <-> mask converter (:func:`as_pairs`, :func:`as_mask`, :func:`selection_masks`) and
its one seeded random-set generator (:func:`random_sets`).
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


def load_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` a set file was saved with (e.g. the budget and the selector specs that produced the sets, so
    a later stage can re-select with the same options)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no neuron sets at {p}: run stage 02_selectors for this run first")
    return dict(json.loads(p.read_text()).get("meta") or {})


# ---------------------------------------------------------------------------------------- pairs <-> masks
def as_pairs(neurons: Any, n_layers: int, n_neurons: int, *, what: str = "neuron set") -> torch.Tensor:
    """A neuron set as validated ``(layer, neuron)`` pairs, ``LongTensor[m, 2]`` on the CPU (order kept).

    Accepts integer pairs (tensor, array or nested list; ``[]``, shape ``[0]`` or ``[0, 2]`` is the empty set) or
    a bool mask ``[L, N]`` (returned in flat order ``layer * N + neuron``). Raises ``TypeError`` for float,
    complex or bool pairs (a float ``3.0`` is refused, not rounded: it usually means a table column lost its
    dtype) and ``ValueError`` naming the first bad pair and the model shape for out-of-range indices.
    """
    t = neurons if isinstance(neurons, torch.Tensor) else torch.as_tensor(np.array(neurons))
    if t.dtype == torch.bool:
        if tuple(t.shape) != (n_layers, n_neurons):
            raise ValueError(
                f"{what}: bool neuron mask has shape {tuple(t.shape)} but the model has {n_layers} x {n_neurons} "
                "gates (a mask for another model?)"
            )
        return t.cpu().nonzero().long()
    if t.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{what}: (layer, neuron) pairs must be integers, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"{what}: expected (layer, neuron) pairs of shape [m, 2], got {tuple(t.shape)}")
    t = t.long().cpu()
    bad = (t[:, 0] < 0) | (t[:, 0] >= n_layers) | (t[:, 1] < 0) | (t[:, 1] >= n_neurons)
    if bool(bad.any()):
        first = tuple(t[bad][0].tolist())
        raise ValueError(
            f"{what}: {int(bad.sum())} (layer, neuron) pair(s) out of range, first {first}; layers must be in "
            f"[0, {n_layers}) and neurons in [0, {n_neurons}) for this model's {n_layers} x {n_neurons} gates "
            "(a neuron set identified on another model?)"
        )
    return t


def as_mask(neurons: Any, n_layers: int, n_neurons: int, *, what: str = "neuron set") -> torch.Tensor:
    """A neuron set as a bool mask ``[L, N]`` (duplicates collapse); accepts what :func:`as_pairs` accepts.

    This (with :func:`as_pairs`) is the one pairs <-> mask converter of the package: every module validates neuron
    sets through it, so a set from another model fails the same way everywhere.
    """
    pairs = as_pairs(neurons, n_layers, n_neurons, what=what)
    mask = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
    if pairs.numel():
        mask[pairs[:, 0], pairs[:, 1]] = True
    return mask


def selection_masks(selection: Mapping[str, Any], n_layers: int, n_neurons: int,
                    labels: Sequence[str] | None = None) -> torch.Tensor:
    """``[C, L, N]`` bool masks of a selection, in ``labels`` order (default: the selection's own order; a label
    absent from the selection is an empty set)."""
    order = list(selection) if labels is None else list(labels)
    unknown = sorted(set(selection) - set(order))
    if unknown:
        raise ValueError(f"neuron sets for {unknown} which are not among the labels {order}")
    if not order:
        return torch.zeros(0, n_layers, n_neurons, dtype=torch.bool)
    return torch.stack([as_mask(selection.get(lbl, []), n_layers, n_neurons, what=f"set {lbl!r}") for lbl in order])


# ---------------------------------------------------------------------------------------- random controls
def all_gates(labels: Sequence[str], n_layers: int, n_neurons: int) -> dict[str, torch.Tensor]:
    """Every gate neuron of every layer, as each label's set: the ceiling of what any gate edit can do (chapter
    04 steers it to ask whether the gates are a sufficient handle on the answer at all)."""
    layer, neuron = torch.meshgrid(torch.arange(n_layers), torch.arange(n_neurons), indexing="ij")
    pairs = torch.stack((layer.reshape(-1), neuron.reshape(-1)), 1)
    return {str(lbl): pairs.clone() for lbl in labels}


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across processes and Python versions (sha256, not
    ``hash()``, which is salted per process for strings)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_sets(reference: Mapping[str, Any], shape: tuple[int, int], *, seed: int, salt: str,
                match_layers: bool = False, exclude: Any = None) -> dict[str, torch.Tensor]:
    """Random neuron sets matched to ``reference`` (``{label: pairs or [L, N] mask}``): the package's one
    random-set generator (selectors' ``random``, deactivation and dose-response controls, grounding controls).

    * Size: per label, as many distinct neurons as the reference set holds (duplicates count once); a reference
      value may also be a bare count.
    * ``match_layers``: also the same number per layer as the reference (the right control when a selector
      concentrates in some layers); otherwise drawn uniformly from all ``L * N`` neurons.
    * ``exclude`` (pairs or mask): neurons never drawn (e.g. the selected neurons themselves).
    * Draws are without replacement within a label and returned in random order, so a prefix of a returned set
      is itself a uniform random subset of it (nested random controls for a dose-response).
    * Independence: each label draws from its own ``torch.Generator`` seeded with
      :func:`stable_seed(seed, salt, label) <stable_seed>`; pass the selector's name as ``salt`` so that two
      selectors with equal sizes do not get the same "random" neurons, and adding a label never changes another
      label's draw.
    """
    n_layers, n_neurons = (int(shape[0]), int(shape[1]))
    if not isinstance(salt, str):
        raise TypeError(f"salt must be a string (e.g. the selector's name), got {type(salt).__name__}")
    allowed = torch.ones(n_layers, n_neurons, dtype=torch.bool)
    if exclude is not None:
        allowed &= ~as_mask(exclude, n_layers, n_neurons, what="exclude")
    out: dict[str, torch.Tensor] = {}
    for label, ref in reference.items():
        gen = torch.Generator().manual_seed(stable_seed(int(seed), salt, label))
        if isinstance(ref, numbers.Integral) and not isinstance(ref, bool):
            if match_layers:
                raise ValueError(f"set {label!r}: a bare size ({ref}) has no layer profile to match")
            mask = None
        else:
            mask = as_mask(ref, n_layers, n_neurons, what=f"reference set {label!r}")
        if mask is not None and match_layers:
            parts = []
            for layer in range(n_layers):
                k = int(mask[layer].sum())
                if k == 0:
                    continue
                pool = allowed[layer].nonzero().squeeze(1)
                if pool.numel() < k:
                    raise ValueError(f"set {label!r}, layer {layer}: cannot draw {k} random neurons from the "
                                     f"{pool.numel()} allowed ones")
                pick = pool[torch.randperm(pool.numel(), generator=gen)[:k]]
                parts.append(torch.stack((torch.full_like(pick, layer), pick), 1))
            pairs = torch.cat(parts) if parts else torch.zeros(0, 2, dtype=torch.long)
            pairs = pairs[torch.randperm(pairs.shape[0], generator=gen)]
        else:
            k = int(ref) if mask is None else int(mask.sum())
            pool = allowed.flatten().nonzero().squeeze(1)
            if pool.numel() < k:
                raise ValueError(f"set {label!r}: cannot draw {k} random neurons from the {pool.numel()} allowed ones")
            flat = pool[torch.randperm(pool.numel(), generator=gen)[:k]]
            pairs = torch.stack((flat // n_neurons, flat % n_neurons), 1)
        out[str(label)] = pairs.long()
    return out
