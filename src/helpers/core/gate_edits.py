"""Gate edits for the tracer: per-row ``a <- a * scale + add`` edits, patches and gate functions, validated and
planned per layer before a trace opens."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nnsight
import torch
from torch import nn

from .models import decoder_mlps, gate_modules, gate_shape
from .nnsight_wrap import _batch_size, _envoys, nnsight_model

#: An input-dependent gate edit of :func:`~helpers.core.hooks.run_with_gate_edits`: ``fn(gate [B, T, N], positions [B|1,
#: T] | None)``.
GateFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class NonFiniteEditError(FloatingPointError):
    """A gate edit produced NaN/inf logits (typically an amplification alpha far too large for the dtype)."""


def _as_edit(x: torch.Tensor | None, what: str, batch: int, n_layers: int, n_neurons: int) -> torch.Tensor | None:
    """Validate a [B|1, L, N] (or [L, N]) edit tensor; clear errors for wrong models and non-finite values."""
    if x is None:
        return None
    x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or tuple(x.shape[1:]) != (n_layers, n_neurons):
        raise ValueError(
            f"edit `{what}` has shape {tuple(x.shape)} but the model has {n_layers} x {n_neurons} gates "
            "(a neuron set from another model?); expected [B, L, N], [1, L, N] or [L, N]"
        )
    if x.shape[0] not in (1, batch):
        raise ValueError(
            f"edit `{what}` has batch dimension {x.shape[0]} but the inputs have {batch} rows "
            "(use 1 to apply one edit to every row)"
        )
    if what == "patch_mask":
        if x.dtype != torch.bool:
            raise TypeError(f"`patch_mask` must be a bool tensor, got {x.dtype}")
    elif not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[:3].tolist()
        raise ValueError(f"edit `{what}` contains NaN/inf values (first at [row, layer, neuron] = {bad})")
    return x


def _as_positions(positions: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    if positions is None:
        return None
    p = torch.as_tensor(positions)
    if p.dtype != torch.bool:
        raise TypeError(f"`positions` must be a bool tensor [B, T], got {p.dtype}")
    if p.ndim == 1:
        p = p.unsqueeze(0)
    if p.ndim != 2 or p.shape[0] not in (1, batch):
        raise ValueError(f"`positions` must be [B={batch} or 1, T], got shape {tuple(p.shape)}")
    return p


def _as_patch(patch: Any, n_layers: int) -> dict[int, torch.Tensor]:
    if patch is None:
        return {}
    items = patch.items() if isinstance(patch, Mapping) else enumerate(patch)
    out = {}
    for layer, src in items:
        if src is None:
            continue
        layer = int(layer)
        if not 0 <= layer < n_layers:
            raise ValueError(f"patch given for layer {layer} but the model has {n_layers} layers")
        out[layer] = torch.as_tensor(src)
    if not isinstance(patch, Mapping) and len(patch) != n_layers:
        raise ValueError(f"patch list has {len(patch)} entries but the model has {n_layers} layers (use a dict)")
    return out


def apply_gate_edit(
    gate: torch.Tensor,
    scale: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    source: torch.Tensor | None = None,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """The edit rule for one layer, as a pure function of tensors.

    ``gate`` [B, T, N]; ``scale``/``add`` [B|1, 1, N]; ``positions`` [B|1, T, 1] bool; ``source`` [B|1, T, N] with
    neuron selection ``select`` [B|1, 1, N] bool (every neuron when None). First the selected neurons are
    *patched* to ``source``, then ``gate * scale + add`` is applied; both only at ``positions`` (all positions when
    None).
    """
    if positions is not None and positions.shape[1] != gate.shape[1]:
        raise ValueError(
            f"`positions` covers {positions.shape[1]} positions but the gate activations have T={gate.shape[1]} "
            "(positions must index the sequence the language model sees, audio tokens included)"
        )
    new = gate
    if source is not None:
        if source.shape[1] != gate.shape[1] or source.shape[2] != gate.shape[2]:
            raise ValueError(f"patch source has shape {tuple(source.shape)} but the gate is {tuple(gate.shape)}")
        if select is None:  # no neuron selection: patch every neuron, as run_with_gate_edits does without patch_mask
            select = torch.ones(1, 1, gate.shape[2], dtype=torch.bool, device=gate.device)
        sel = select if positions is None else select & positions
        new = torch.where(sel, source.to(gate.dtype), new)
    if scale is not None or add is not None:
        edited = new
        if scale is not None:
            edited = edited * scale
        if add is not None:
            edited = edited + add
        new = edited if positions is None else torch.where(positions, edited, new)
    return new


def _plan(
    model: Any,
    inputs: Mapping[str, Any],
    modules: Sequence[nn.Module] | None,
    scale: Any,
    add: Any,
    positions: Any,
    patch: Any,
    patch_mask: Any,
) -> tuple[list[nnsight.Envoy], list[tuple[int, dict[str, torch.Tensor | None]]], nnsight.NNsight]:
    """Validate the edit and precompute per-layer tensors on each layer's device/dtype; skip no-op layers."""
    n_layers, n_neurons = gate_shape(model)
    mods = list(modules) if modules is not None else gate_modules(model)
    if len(mods) != n_layers:
        raise ValueError(f"got {len(mods)} gate modules for a model with {n_layers} layers")
    batch = _batch_size(inputs)
    scale_t = _as_edit(scale, "scale", batch, n_layers, n_neurons)
    add_t = _as_edit(add, "add", batch, n_layers, n_neurons)
    pos_t = _as_positions(positions, batch)
    patches = _as_patch(patch, n_layers)
    mask_t = _as_edit(patch_mask, "patch_mask", batch, n_layers, n_neurons) if patch_mask is not None else None
    if mask_t is not None and not patches:
        raise ValueError("`patch_mask` given without `patch` source activations")

    mlps = decoder_mlps(model)
    plan: list[tuple[int, dict[str, torch.Tensor | None]]] = []
    for i in range(n_layers):
        w: torch.Tensor = mlps[i].gate_proj.weight
        dev, dt = w.device, (w.dtype if w.dtype.is_floating_point else torch.float32)
        s = scale_t[:, i] if scale_t is not None and not bool((scale_t[:, i] == 1).all()) else None
        a = add_t[:, i] if add_t is not None and bool((add_t[:, i] != 0).any()) else None
        src = patches.get(i)
        sel = None
        if src is not None:
            sel = mask_t[:, i] if mask_t is not None else torch.ones(1, n_neurons, dtype=torch.bool)
            if not bool(sel.any()):
                src, sel = None, None
            else:
                if src.ndim != 3 or src.shape[0] not in (1, batch) or src.shape[2] != n_neurons:
                    raise ValueError(
                        f"patch source for layer {i} has shape {tuple(src.shape)}; expected [B|1, T, {n_neurons}]"
                    )
                src = src.to(dev)
                sel = sel[:, None, :].to(dev)
        if s is None and a is None and src is None:
            continue
        plan.append(
            (
                i,
                {
                    "scale": s[:, None, :].to(dev, dt) if s is not None else None,
                    "add": a[:, None, :].to(dev, dt) if a is not None else None,
                    "positions": pos_t[:, :, None].to(dev) if pos_t is not None else None,
                    "source": src,
                    "select": sel,
                },
            )
        )
    root = nnsight_model(model)
    envoys = _envoys(root, mods)
    return envoys, plan, root


def _as_gate_fns(gate_fns: Mapping[int, GateFn] | None, n_layers: int) -> dict[int, GateFn]:
    out: dict[int, GateFn] = {}
    for layer, fn in (gate_fns or {}).items():
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"gate_fns given for layer {layer} but the model has {n_layers} layers")
        if not callable(fn):
            raise TypeError(f"gate_fns[{layer}] must be callable (gate, positions) -> gate, got {type(fn).__name__}")
        out[int(layer)] = fn
    return out


def _edit_layer(gate: torch.Tensor, edit: dict[str, torch.Tensor | None] | None, fn: GateFn | None,
                positions: torch.Tensor | None) -> torch.Tensor:
    """One layer's edit: the tensor edit of :func:`apply_gate_edit`, then the input-dependent ``fn``."""
    new = apply_gate_edit(gate, **edit) if edit is not None else gate
    return fn(new, positions.to(new.device) if positions is not None else None) if fn is not None else new


def tile_inputs(inputs: Mapping[str, Any], n: int) -> dict[str, Any]:
    """Repeat a whole batch ``n`` times along dim 0 (rows ``[x0..xB-1, x0..xB-1, ...]``).

    Tiling (not interleaving) keeps every family's audio-to-row correspondence even where ``input_features`` has one
    row per 30-s chunk rather than per prompt (Voxtral, Audio Flamingo 3): chunks stay in prompt order.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    return {k: torch.cat([v] * n) if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in inputs.items()}


__all__ = [
    "NonFiniteEditError",
    "apply_gate_edit",
    "tile_inputs",
]
